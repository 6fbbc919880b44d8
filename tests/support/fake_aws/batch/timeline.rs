//! A fake job's scripted life: statuses lasting so many describes, attempts, their log lines
//! and how each ends.

use super::super::logs::Pending;
use super::*;

/// How one attempt of a job ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptEnd {
    /// The container's exit code (none when it was killed without one, e.g. out of memory).
    pub exit_code: Option<i32>,
    /// `container.reason`, e.g. `OutOfMemoryError: Container killed due to memory usage`.
    pub reason: Option<String>,
    /// The attempt's `statusReason`, e.g. `Host EC2 (instance i-123) terminated.`.
    pub status_reason: Option<String>,
}

impl AttemptEnd {
    /// The container exited with `code`.
    pub fn exit(code: i32) -> Self {
        AttemptEnd {
            exit_code: Some(code),
            ..Default::default()
        }
    }

    /// The container was stopped with no exit code, Batch giving `container.reason`.
    pub fn reason(reason: &str) -> Self {
        AttemptEnd {
            reason: Some(reason.to_owned()),
            ..Default::default()
        }
    }

    /// Sets the attempt's `statusReason`.
    pub fn status_reason(mut self, text: &str) -> Self {
        self.status_reason = Some(text.to_owned());
        self
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub(super) status: JobStatus,
    /// DescribeJobs calls that show this phase before the job moves on (terminal: forever).
    pub(super) describes: usize,
    /// The job's `statusReason` while in this phase.
    pub(super) reason: Option<String>,
    /// RUNNING: lines written to the new attempt's stream as it starts.
    pub(super) logs: Vec<String>,
    /// RUNNING: lines released later.
    pub(super) pending: Vec<(PendingRelease, Vec<String>)>,
    /// RUNNING: GetLogEvents calls answered "stream does not exist" before it appears.
    pub(super) stream_missing_reads: usize,
    /// RUNNING: how the attempt ends when the job leaves this phase for a non-terminal one (a
    /// retry). Terminal: how the open attempt ends.
    pub(super) end: Option<AttemptEnd>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum PendingRelease {
    JobDone,
    AfterReads(usize),
}

/// A job's scripted life: its statuses, how long each lasts (in DescribeJobs calls that include
/// the job), its attempts, their logs and how they end.
///
/// The first phase starts at SubmitJob; each later one starts at the DescribeJobs call that first
/// shows it (a RUNNING phase's stream and lines exist from then on; lines held "until done"
/// appear with the call that first shows the job ended).
///
/// ```ignore
/// Timeline::new()
///     .status(JobStatus::Runnable, 3)
///     .running(2).logs(&["epoch 1", "epoch 2"])
///     .attempt_failed(AttemptEnd::exit(1).status_reason("Host EC2 (instance i-123) terminated."))
///     .status(JobStatus::Runnable, 1)
///     .running(1).logs(&["retry"])
///     .exit(3)
/// ```
#[derive(Debug, Clone)]
pub struct Timeline {
    pub(super) phases: Vec<Phase>,
    pub(super) hidden_for: usize,
    /// Whether a job launched with an end-record nonce gets both end records appended to its
    /// stream when an attempt ends with an exit code (as the bootstrap writes them).
    pub(super) auto_end_records: bool,
}

impl Default for Timeline {
    /// SUBMITTED → RUNNABLE → STARTING → RUNNING → SUCCEEDED, one DescribeJobs each.
    fn default() -> Self {
        Timeline::each_status_for(1)
    }
}

impl Timeline {
    /// No phases yet; a job given an empty timeline follows the default one.
    pub fn new() -> Self {
        Timeline {
            phases: Vec::new(),
            hidden_for: 0,
            auto_end_records: true,
        }
    }

    /// The default path to SUCCEEDED, each status shown by `describes` DescribeJobs calls.
    pub fn each_status_for(describes: usize) -> Self {
        Timeline::new()
            .status(JobStatus::Submitted, describes)
            .status(JobStatus::Runnable, describes)
            .status(JobStatus::Starting, describes)
            .running(describes)
            .succeeded()
    }

    /// Adds a phase; RUNNING starts a new attempt (with a new log stream). For terminal statuses
    /// use [`Timeline::succeeded`], [`Timeline::failed`] or [`Timeline::exit`].
    pub fn status(mut self, status: JobStatus, describes: usize) -> Self {
        assert!(!status.is_terminal(), "use succeeded() / failed() / exit()");
        assert!(describes > 0);
        self.phases.push(Phase {
            status,
            describes,
            reason: None,
            logs: Vec::new(),
            pending: Vec::new(),
            stream_missing_reads: 0,
            end: None,
        });
        self
    }

    /// A new attempt, RUNNING for `describes` DescribeJobs calls.
    pub fn running(self, describes: usize) -> Self {
        self.status(JobStatus::Running, describes)
    }

    /// The job's `statusReason` during the last phase added.
    pub fn reason(mut self, text: &str) -> Self {
        self.last_phase().reason = Some(text.to_owned());
        self
    }

    /// Lines the last attempt writes as soon as it is RUNNING.
    pub fn logs(mut self, lines: &[&str]) -> Self {
        let phase = self.last_running();
        phase.logs.extend(lines.iter().map(|l| (*l).to_owned()));
        self
    }

    /// Lines of the last attempt that show up only once the job has ended (CloudWatch lag).
    pub fn logs_when_done(mut self, lines: &[&str]) -> Self {
        let phase = self.last_running();
        phase.pending.push((
            PendingRelease::JobDone,
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ));
        self
    }

    /// Lines of the last attempt that show up after `reads` GetLogEvents calls on its stream.
    pub fn logs_after_reads(mut self, reads: usize, lines: &[&str]) -> Self {
        let phase = self.last_running();
        phase.pending.push((
            PendingRelease::AfterReads(reads),
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ));
        self
    }

    /// The last attempt's stream answers "does not exist" to its first `reads` GetLogEvents.
    pub fn stream_missing_for(mut self, reads: usize) -> Self {
        self.last_running().stream_missing_reads = reads;
        self
    }

    /// The last attempt ends this way and the job goes on (add a RUNNABLE phase and a new
    /// `running` for the retry).
    pub fn attempt_failed(mut self, end: AttemptEnd) -> Self {
        self.last_running().end = Some(end);
        self
    }

    /// Ends the job SUCCEEDED (the open attempt exits 0).
    pub fn succeeded(self) -> Self {
        self.terminal(JobStatus::Succeeded, Some(AttemptEnd::exit(0)))
    }

    /// Ends the job FAILED, the open attempt (or a new one, if none ran) ending with `end`.
    pub fn failed(self, end: AttemptEnd) -> Self {
        self.terminal(JobStatus::Failed, Some(end))
    }

    /// Ends the job FAILED before any attempt (no container ran).
    pub fn failed_without_attempt(self, reason: &str) -> Self {
        self.terminal(JobStatus::Failed, None).reason(reason)
    }

    /// SUCCEEDED for 0, else FAILED with this exit code.
    pub fn exit(self, code: i32) -> Self {
        if code == 0 {
            self.succeeded()
        } else {
            self.failed(AttemptEnd::exit(code))
        }
    }

    /// No end records are written for this job (an image that bypasses the bootstrap, an OOM
    /// kill): the follower falls back to draining. Lines `@end:PIPE:CODE[:ORIGIN]` in `logs` still
    /// place records by hand.
    pub fn without_end_records(mut self) -> Self {
        self.auto_end_records = false;
        self
    }

    /// The job is missing from the first `describes` DescribeJobs answers that should include it
    /// (eventual consistency just after SubmitJob).
    pub fn hidden_for(mut self, describes: usize) -> Self {
        self.hidden_for = describes;
        self
    }

    pub(super) fn terminal(mut self, status: JobStatus, end: Option<AttemptEnd>) -> Self {
        self.phases.push(Phase {
            status,
            describes: usize::MAX,
            reason: None,
            logs: Vec::new(),
            pending: Vec::new(),
            stream_missing_reads: 0,
            end,
        });
        self
    }

    pub(super) fn last_phase(&mut self) -> &mut Phase {
        self.phases.last_mut().expect("add a phase first")
    }

    pub(super) fn last_running(&mut self) -> &mut Phase {
        self.phases
            .iter_mut()
            .rev()
            .find(|p| p.status == JobStatus::Running)
            .expect("add a running() phase first")
    }
}
