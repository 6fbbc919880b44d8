//! The library's only output: typed events while work happens, and the outcome of a job.
//!
//! The library never prints; a CLI or an embedding program decides what to show. Every type here
//! serializes to the JSON that `--output json` writes, one event per line.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::bootstrap::end_record::StepEnd;
use crate::launch::package::Skipped;

/// A Batch job's status, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Submitted,
    Pending,
    Runnable,
    Starting,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "SUBMITTED" => JobStatus::Submitted,
            "PENDING" => JobStatus::Pending,
            "RUNNABLE" => JobStatus::Runnable,
            "STARTING" => JobStatus::Starting,
            "RUNNING" => JobStatus::Running,
            "SUCCEEDED" => JobStatus::Succeeded,
            "FAILED" => JobStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Submitted => "SUBMITTED",
            JobStatus::Pending => "PENDING",
            JobStatus::Runnable => "RUNNABLE",
            JobStatus::Starting => "STARTING",
            JobStatus::Running => "RUNNING",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something worth telling the user that does not stop the work.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "warning", rename_all = "snake_case")]
pub enum Warning {
    /// The walk left a file or link out of the package.
    Skipped(Skipped),
    /// The package is large enough to slow every job start.
    LargePackage { bytes: u64 },
    /// Something to tell the user, in a sentence.
    Notice { message: String },
    /// A job's logs could not be read (its status still is).
    LogsUnavailable { job_id: String, reason: String },
    /// The job has waited in RUNNABLE for long.
    StuckRunnable {
        job_id: String,
        seconds: u64,
        reason: Option<String>,
        detail: Option<String>,
    },
    /// DescribeJobs has been failing for this job (still retrying).
    StatusUnavailable {
        job_id: String,
        seconds: u64,
        reason: String,
    },
}

/// Why a job ended the way it did, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The container exited with a non-zero code.
    ExitCode,
    OutOfMemory,
    ImagePull,
    SpotReclaimed,
    Timeout,
    TerminatedByUser,
    /// mfbatch's own bootstrap could not start the step (package missing, corrupt…).
    Bootstrap,
    Unknown,
}

/// What decided a job's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// Batch's terminal status (SUCCEEDED / FAILED), as DescribeJobs reported it.
    BatchStatus,
    /// The step's end records, when no retry could follow: Batch will report the same status
    /// a little later (`status` holds the status Batch is expected to report).
    EndRecord,
}

/// How a followed job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub job_id: String,
    pub status: JobStatus,
    /// The last attempt's container exit code, when there was one.
    pub exit_code: Option<i32>,
    pub failure: Option<FailureKind>,
    /// A sentence for the user ("out of memory", "exit code 3", …).
    pub summary: Option<String>,
    /// The raw reasons Batch gave, for the record.
    pub reason: Option<String>,
    pub attempts: usize,
    pub decided_by: DecidedBy,
    /// What the last attempt's end records said, when they were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_end: Option<StepEnd>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.status == JobStatus::Succeeded
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Packaged {
        files: usize,
        bytes: u64,
        sha256: String,
    },
    Warning(Warning),
    UploadStarted {
        url: String,
        bytes: u64,
    },
    UploadProgress {
        sent: u64,
        total: u64,
    },
    /// The package was already stored (same content hash): nothing uploaded.
    UploadSkipped {
        url: String,
    },
    Uploaded {
        url: String,
        bytes: u64,
    },
    JobDefinition {
        name: String,
        arn: String,
        registered: bool,
    },
    Submitted {
        job_id: String,
        job_name: String,
        queue: String,
    },
    Status {
        job_id: String,
        job_name: String,
        status: JobStatus,
        previous: Option<JobStatus>,
        /// Time spent in `previous`, as far as this process saw it.
        previous_ms: Option<u64>,
        reason: Option<String>,
    },
    Log {
        job_id: String,
        job_name: String,
        attempt: usize,
        timestamp_ms: i64,
        message: String,
    },
    Terminating {
        job_id: String,
        reason: String,
    },
    /// An attempt's log stream appeared (the attempt runs); Metaflow's metadata records it.
    AttemptStarted {
        job_id: String,
        /// Batch's attempt, 1-based.
        attempt: usize,
        log_group: String,
        log_stream: String,
    },
    /// An attempt's step exited and its output has all been read (both end records came).
    StepExited {
        job_id: String,
        job_name: String,
        #[serde(flatten)]
        end: StepEnd,
    },
    Exited(Outcome),
    /// The log sweeps are this far behind: the account's read quota cannot keep up with the log
    /// volume (lines are late, never dropped).
    Lagging {
        behind_seconds: u64,
        streams: usize,
    },
    /// What the tracker is doing (`--output json` writes one now and then).
    Heartbeat(crate::track::TrackerStats),
    /// CloudFormation did something to a stack's resource (`mfbatch stack deploy|delete`).
    Stack(crate::stack::StackEvent),
    /// An array's children by status, when the counts change (the parent's `statusSummary`).
    ArrayProgress {
        job_id: String,
        job_name: String,
        size: usize,
        counts: BTreeMap<JobStatus, usize>,
    },
    /// A child of an array failed (seen in ListJobs, so its exit code is known when it had one).
    ChildFailed {
        job_id: String,
        child_id: String,
        index: usize,
        exit_code: Option<i32>,
        /// `container.reason`, e.g. `OutOfMemoryError: …`.
        reason: Option<String>,
        status_reason: Option<String>,
    },
    /// The last lines of a failed child's log stream (`--show-failed K`: the first K failures).
    ChildLogTail {
        job_id: String,
        child_id: String,
        index: usize,
        log_stream: String,
        lines: Vec<String>,
    },
    /// The array ended: its counts and its failures grouped by exit code.
    ArrayDone {
        job_id: String,
        job_name: String,
        size: usize,
        counts: BTreeMap<JobStatus, usize>,
        failed: Vec<FailureGroup>,
    },
    /// A multi-node job's nodes by status, when the counts change (main node included).
    NodesProgress {
        job_id: String,
        job_name: String,
        num_nodes: usize,
        counts: BTreeMap<JobStatus, usize>,
    },
    /// A node other than the main one failed; the job runs on (only the main node decides it).
    NodeFailed {
        job_id: String,
        /// `<job>#<n>`, an ordinary job id for `logs`, `status`.
        node_id: String,
        node_index: usize,
        exit_code: Option<i32>,
        reason: Option<String>,
        status_reason: Option<String>,
    },
    /// The last lines of a failed node's log stream (the first `show_failed` failures).
    NodeLogTail {
        job_id: String,
        node_id: String,
        node_index: usize,
        log_stream: String,
        lines: Vec<String>,
    },
}

/// Failed children that share an exit code (or, without one, a reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub count: usize,
    /// Their indexes as compressed ranges: `2,5-7,9`.
    pub indexes: String,
}

/// Where events go: a callback shared by everything working for one caller.
pub type EventSink = std::sync::Arc<dyn Fn(Event) + Send + Sync>;

/// A sink that drops everything, for callers that only want results.
pub fn discard() -> EventSink {
    std::sync::Arc::new(|_| {})
}
