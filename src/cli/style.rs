//! Terminal styling decisions: colour only on a terminal and only without `NO_COLOR`.

use std::io::IsTerminal;

/// How stderr may be decorated.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
    /// Progress bars and spinners (a terminal, and not CI).
    pub live: bool,
}

impl Style {
    pub fn detect() -> Self {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let ci = std::env::var_os("CI").is_some();
        Style {
            color: tty && !no_color,
            live: tty && !ci,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn error(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    pub fn warning(&self, text: &str) -> String {
        self.paint("1;33", text)
    }

    pub fn hint(&self, text: &str) -> String {
        self.paint("1;36", text)
    }

    pub fn ok(&self, text: &str) -> String {
        self.paint("1;32", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}
