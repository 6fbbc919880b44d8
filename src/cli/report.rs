//! Renders an error once: `error:` with the message, each cause on its own line, then `hint:` —
//! or, with `--output json`, one `error` event on stdout with the same parts.

use std::error::Error;
use std::io::Write;

use super::args::Output;
use super::Global;

/// Links of the AWS SDK's error chains that carry no information of their own.
const SAYS_NOTHING: [&str; 4] = ["service error", "dispatch failure", "other", "io error"];

/// Writes the error, its cause chain and a hint: as text to stderr, or as a JSON `error` event
/// to stdout.
pub fn print_error(global: &Global, err: &(dyn Error + 'static), hint: Option<String>) {
    let causes = causes(err);
    if global.output == Output::Json {
        let event = serde_json::json!({
            "event": "error",
            "message": err.to_string(),
            "causes": causes,
            "hint": hint,
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{event}");
        let _ = out.flush();
        return;
    }
    let style = &global.style;
    let mut out = format!("{} {}\n", style.error("error:"), err);
    for cause in causes {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    if let Some(hint) = hint {
        out.push_str(&format!("{} {hint}\n", style.hint("hint:")));
    }
    eprint!("{out}");
}

/// The cause chain, without links that repeat or say nothing (SDK wrappers: "service error").
fn causes(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !SAYS_NOTHING.contains(&text.as_str()) && !last.contains(&text) {
            out.push(text.clone());
            last = text;
        }
        source = cause.source();
    }
    out
}
