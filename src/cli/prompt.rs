//! Questions on the terminal: one line read from stdin per answer, the question on stderr. When
//! stdin is not a terminal nothing is asked: the caller turns that into a usage error naming the
//! flag that answers instead.

use std::io::{BufRead, IsTerminal, Write};

use super::failure::Failure;

/// Whether questions can be asked.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks for a value; an empty answer keeps `default`. `None` at end of input.
pub fn ask(question: &str, default: Option<&str>, secret_default: bool) -> Option<String> {
    let shown = match default.filter(|d| !d.is_empty()) {
        Some(_) if secret_default => " [********]".to_owned(),
        Some(d) => format!(" [{d}]"),
        None => String::new(),
    };
    eprint!("{question}{shown}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            let answer = line.trim();
            Some(if answer.is_empty() {
                default.unwrap_or_default().to_owned()
            } else {
                answer.to_owned()
            })
        }
    }
}

/// A yes/no question whose default is no. `yes` (from `--yes`) answers it without asking; with
/// no terminal and no `--yes`, it is a usage error: nothing is overwritten or deleted unasked.
pub fn confirm(question: &str, yes: bool) -> Result<bool, Failure> {
    if yes {
        return Ok(true);
    }
    if !interactive() {
        return Err(Failure::usage_message(
            &format!("{question} (stdin is not a terminal, so mfbatch cannot ask)"),
            Some("pass --yes to agree in advance".into()),
        ));
    }
    let answer = ask(&format!("{question} [y/N]"), None, false).unwrap_or_default();
    Ok(matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes"))
}
