//! `mfbatch config` and `run --show-config`: every setting, its value and its origin.

use std::collections::BTreeMap;

use mfbatch::settings::{self, Key, Settings, Sources};

use super::args::Output;
use super::failure::Failure;
use super::style::Style;
use super::Global;

/// Resolves the settings from this process (no flags) and prints them.
pub fn show(global: Global) -> Result<(), Failure> {
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()))?;
    warn_ignored_files(&settings, global);
    print(&settings, global.output);
    Ok(())
}

/// Says on stderr which project files were not trusted, and why.
pub fn warn_ignored_files(settings: &Settings, global: Global) {
    if global.quiet {
        return;
    }
    for ignored in &settings.ignored_files {
        eprintln!("{} {ignored}", global.style.warning("warning:"));
    }
}

/// Says on stderr which settings a project file chose: it may sit in a directory that others
/// share, and it can change where the code goes and what image runs it.
pub fn note_project_settings(settings: &Settings, style: Style, quiet: bool) {
    let from_project = settings.from_project_file();
    let Some((_, path)) = from_project.first() else {
        return;
    };
    if quiet {
        return;
    }
    let keys: Vec<&str> = from_project.iter().map(|(k, _)| k.name()).collect();
    eprintln!(
        "{} {}",
        style.dim(&format!("Settings from project file {}:", path.display())),
        keys.join(", ")
    );
}

/// Prints resolved settings on stdout, secrets redacted.
pub fn print(settings: &Settings, output: Output) {
    let shown = |key: Key, value: &str| settings::redact(key.name(), value);
    match output {
        Output::Json => {
            let mut map = serde_json::Map::new();
            for (key, resolved) in settings.entries() {
                let entry = match resolved {
                    Some(r) => {
                        serde_json::json!({"value": shown(key, &r.value), "origin": r.origin.to_string()})
                    }
                    None => serde_json::json!({"value": null, "origin": null}),
                };
                map.insert(key.name().to_owned(), entry);
            }
            println!("{}", serde_json::Value::Object(map));
        }
        Output::Text => {
            let width = Key::every().map(|k| k.name().len()).max().unwrap_or(0);
            for (key, resolved) in settings.entries() {
                match resolved {
                    Some(r) => println!(
                        "{:width$}  {}  ({})",
                        key.name(),
                        shown(key, &r.value),
                        r.origin
                    ),
                    None => println!("{:width$}  (not set)", key.name()),
                }
            }
        }
    }
}
