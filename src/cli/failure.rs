//! A command's failure: the error to render, its hint, and the exit code it maps to.

use std::error::Error;

use mfbatch::error::ConfigError;
use mfbatch::launch::LaunchError;

use super::exit;
use super::report::print_error;
use super::Global;

#[derive(Debug)]
pub struct Failure {
    error: Box<dyn Error + Send + Sync>,
    hint: Option<String>,
    code: u8,
}

/// A failure with only a message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl Failure {
    pub fn usage_message(message: &str, hint: Option<String>) -> Self {
        Failure {
            error: Box::new(Message(message.to_owned())),
            hint,
            code: exit::USAGE,
        }
    }

    pub fn new(error: impl Error + Send + Sync + 'static, hint: Option<String>, code: u8) -> Self {
        Failure {
            error: Box::new(error),
            hint,
            code,
        }
    }

    /// Renders the error once and returns the exit code.
    pub fn report(self, global: &Global) -> u8 {
        print_error(global, self.error.as_ref(), self.hint);
        self.code
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        let hint = e.hint();
        Failure::new(e, hint, exit::USAGE)
    }
}

impl From<LaunchError> for Failure {
    fn from(e: LaunchError) -> Self {
        let mut hint = e.hint();
        // AWS-side trouble: the doctor checks every piece and names the broken one.
        if matches!(
            e,
            LaunchError::Aws(_)
                | LaunchError::Store(_)
                | LaunchError::QueueNotFound { .. }
                | LaunchError::QueueDisabled { .. }
        ) {
            let doctor = "`mfbatch doctor` checks the whole setup";
            hint = Some(match hint {
                Some(h) => format!("{h}; {doctor}"),
                None => doctor.to_owned(),
            });
        }
        let code = if e.is_usage() {
            exit::USAGE
        } else {
            exit::FAILURE
        };
        Failure::new(e, hint, code)
    }
}
