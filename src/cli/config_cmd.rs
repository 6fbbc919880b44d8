//! `mfbatch config` and `run --show-config`: every setting, its value and its origin.

use std::collections::BTreeMap;

use mfbatch::settings::{self, Key, Settings, Sources};

use super::args::Output;
use super::failure::Failure;
use super::Global;

/// Resolves the settings from this process (no flags) and prints them.
pub fn show(global: Global) -> Result<(), Failure> {
    let settings = settings::resolve(&Sources::from_process(BTreeMap::new()))?;
    print(&settings, global.output);
    Ok(())
}

/// Prints resolved settings on stdout, secrets redacted.
pub fn print(settings: &Settings, output: Output) {
    let shown = |key: Key, value: &str| -> String {
        if settings::is_secret(key.name()) {
            "********".into()
        } else {
            redact_url_password(value)
        }
    };
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
            let width = Key::ALL.iter().map(|k| k.name().len()).max().unwrap_or(0);
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

/// Hides the password in `scheme://user:password@host` URLs.
fn redact_url_password(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return value.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
        None => value.to_owned(),
    }
}
