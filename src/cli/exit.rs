//! The exit codes of `mfbatch`, all in one table (also in the README).
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success: the job SUCCEEDED (or was submitted, with `--detach`); `doctor`: no check failed |
//! | N | the job FAILED and its container exited with code N (1–255) |
//! | 1 | the job FAILED without an exit code, or mfbatch itself failed (AWS error, I/O); `doctor`: a check failed; a question answered no |
//! | 2 | usage or configuration error (including no AWS credentials): nothing was uploaded, registered or submitted |
//! | 130 | interrupted (Ctrl-C or SIGTERM) |

pub const SUCCESS: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const INTERRUPTED: u8 = 130;

/// The code for a job that failed: its container's exit code when it had a usable one.
pub fn for_failed_job(container_exit_code: Option<i32>) -> u8 {
    match container_exit_code {
        Some(code) if (1..=255).contains(&code) => code as u8,
        _ => FAILURE,
    }
}
