//! The end record: the last line the container bootstrap writes on stdout and on stderr once the
//! step has exited, so a follower knows the output is complete without waiting for the log
//! stream to go quiet, and knows the step's exit code before Batch reports it.
//!
//! The line is `mfbatch-end:v1:<nonce>:<attempt>:<exit code>:<origin>:<stream>`, the origin
//! being `step`, `bootstrap` or `stopped`. The nonce is a
//! random value mfbatch puts in the job's environment ([`NONCE_ENV`]) at submit, so a step's own
//! output cannot match by accident (or by copying an old job's line). Docker copies stdout and
//! stderr separately, so either record may arrive first: the output is complete once both came.

use serde::Serialize;

/// The environment variable that carries the nonce into the container.
pub const NONCE_ENV: &str = "MFBATCH_END_NONCE";

/// The fixed start of every end record.
pub const PREFIX: &str = "mfbatch-end:v1:";

/// Who set the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The step ran and exited with this code (128+N when a signal N killed it).
    Step,
    /// The bootstrap failed before the step ran (package download, corrupt package, no Python…).
    Bootstrap,
    /// The step exited after the container was told to stop (TerminateJob, a timeout, a lost
    /// host): only Batch knows why, and whether it retries.
    Stopped,
}

/// Which of the container's two pipes the record was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// One end record, as read from the log stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct EndRecord {
    /// Batch's attempt number (1-based, `AWS_BATCH_JOB_ATTEMPT`).
    pub attempt: usize,
    pub exit_code: i32,
    pub origin: Origin,
    pub pipe: Pipe,
}

impl EndRecord {
    /// Reads `line` as an end record of the job whose nonce is `nonce`; `None` for any other line
    /// (including a well-formed record with another nonce: that is the step's own output).
    pub fn parse(line: &str, nonce: &str) -> Option<EndRecord> {
        let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(PREFIX)?;
        let mut fields = rest.split(':');
        if fields.next()? != nonce || nonce.is_empty() {
            return None;
        }
        let attempt = fields.next()?.parse().ok()?;
        let exit_code = fields.next()?.parse().ok()?;
        let origin = match fields.next()? {
            "step" => Origin::Step,
            "bootstrap" => Origin::Bootstrap,
            "stopped" => Origin::Stopped,
            _ => return None,
        };
        let pipe = match fields.next()? {
            "stdout" => Pipe::Stdout,
            "stderr" => Pipe::Stderr,
            _ => return None,
        };
        if fields.next().is_some() {
            return None;
        }
        Some(EndRecord {
            attempt,
            exit_code,
            origin,
            pipe,
        })
    }

    /// The line the bootstrap writes (tests and the local backend use it too).
    pub fn line(&self, nonce: &str) -> String {
        format!(
            "{PREFIX}{nonce}:{}:{}:{}:{}",
            self.attempt,
            self.exit_code,
            match self.origin {
                Origin::Step => "step",
                Origin::Bootstrap => "bootstrap",
                Origin::Stopped => "stopped",
            },
            match self.pipe {
                Pipe::Stdout => "stdout",
                Pipe::Stderr => "stderr",
            }
        )
    }
}

/// How one attempt's step ended, as its end records said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct StepEnd {
    pub attempt: usize,
    pub exit_code: i32,
    pub origin: Origin,
}

impl From<EndRecord> for StepEnd {
    fn from(r: EndRecord) -> Self {
        StepEnd {
            attempt: r.attempt,
            exit_code: r.exit_code,
            origin: r.origin,
        }
    }
}

/// Both records of one attempt, gathered as they are read.
#[derive(Debug, Clone, Default)]
pub struct EndRecords {
    stdout: Option<EndRecord>,
    stderr: Option<EndRecord>,
}

impl EndRecords {
    pub fn add(&mut self, record: EndRecord) {
        match record.pipe {
            Pipe::Stdout => self.stdout = Some(record),
            Pipe::Stderr => self.stderr = Some(record),
        }
    }

    /// The step's end, once both pipes said it (their output is then complete).
    pub fn complete(&self) -> Option<StepEnd> {
        match (self.stdout, self.stderr) {
            (Some(out), Some(_)) => Some(out.into()),
            _ => None,
        }
    }

    /// Whatever record came first, complete or not.
    pub fn any(&self) -> Option<StepEnd> {
        self.stdout.or(self.stderr).map(StepEnd::from)
    }
}

/// A fresh random nonce: 128 bits as hex. Not a secret (it is visible in DescribeJobs), only
/// unguessable enough that no ordinary output matches it.
pub fn new_nonce() -> String {
    // fastrand's generator is seeded from the OS-randomized std hasher, per thread.
    let mut rng = fastrand::Rng::new();
    format!("{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_only_with_its_nonce() {
        let record = EndRecord {
            attempt: 2,
            exit_code: 143,
            origin: Origin::Step,
            pipe: Pipe::Stderr,
        };
        let line = record.line("abc123");
        assert_eq!(line, "mfbatch-end:v1:abc123:2:143:step:stderr");
        assert_eq!(EndRecord::parse(&line, "abc123"), Some(record));
        assert_eq!(
            EndRecord::parse(&format!("{line}\r\n"), "abc123"),
            Some(record)
        );
        assert_eq!(EndRecord::parse(&line, "abc124"), None);
        assert_eq!(EndRecord::parse(&line, ""), None);
    }

    #[test]
    fn malformed_records_are_ordinary_lines() {
        for line in [
            "mfbatch-end:v1:n:1:0:step",
            "mfbatch-end:v1:n:1:0:step:stdout:extra",
            "mfbatch-end:v1:n:x:0:step:stdout",
            "mfbatch-end:v1:n:1:zero:step:stdout",
            "mfbatch-end:v1:n:1:0:user:stdout",
            "mfbatch-end:v2:n:1:0:step:stdout",
            " mfbatch-end:v1:n:1:0:step:stdout",
        ] {
            assert_eq!(EndRecord::parse(line, "n"), None, "{line}");
        }
    }

    #[test]
    fn output_is_complete_once_both_pipes_ended() {
        let mut records = EndRecords::default();
        let out = EndRecord {
            attempt: 1,
            exit_code: 0,
            origin: Origin::Step,
            pipe: Pipe::Stdout,
        };
        records.add(EndRecord {
            pipe: Pipe::Stderr,
            ..out
        });
        assert_eq!(records.complete(), None);
        assert_eq!(records.any(), Some(out.into()));
        records.add(out);
        assert_eq!(records.complete(), Some(out.into()));
    }

    #[test]
    fn nonces_differ() {
        let a = new_nonce();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_nonce());
    }
}
