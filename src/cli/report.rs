//! Renders an error once: `error:` with the message, each cause on its own line, then `hint:`.

use std::error::Error;

use super::style::Style;

/// Links of the AWS SDK's error chains that carry no information of their own.
const SAYS_NOTHING: [&str; 4] = ["service error", "dispatch failure", "other", "io error"];

/// Writes the error, its cause chain and a hint to stderr.
pub fn print_error(style: &Style, err: &(dyn Error + 'static), hint: Option<String>) {
    let mut out = format!("{} {}\n", style.error("error:"), err);
    let mut last = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // SDK wrappers repeat or say nothing ("service error"); show only what adds information.
        if !text.is_empty() && !SAYS_NOTHING.contains(&text.as_str()) && !last.contains(&text) {
            out.push_str(&format!("  caused by: {text}\n"));
            last = text;
        }
        source = cause.source();
    }
    if let Some(hint) = hint {
        out.push_str(&format!("{} {hint}\n", style.hint("hint:")));
    }
    eprint!("{out}");
}
