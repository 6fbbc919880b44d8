//! What one DescribeJobs answer says about a job, reduced to what following it needs, and how a
//! finished job's outcome is explained to a user.

use aws_sdk_batch::types::JobDetail;

use crate::bootstrap::explain_exit_code;
use crate::event::{FailureKind, JobStatus, Outcome};

/// The default CloudWatch log group of Batch jobs.
pub const DEFAULT_LOG_GROUP: &str = "/aws/batch/job";

/// One job as DescribeJobs saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub job_id: String,
    pub job_name: String,
    pub status: JobStatus,
    pub status_reason: Option<String>,
    pub queue: String,
    pub log_group: String,
    pub attempts: Vec<AttemptSnapshot>,
    /// The current (or last) attempt's container.
    pub container: AttemptSnapshot,
    pub vcpus: Option<String>,
    pub memory_mib: Option<String>,
}

/// One attempt's container, and why it stopped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptSnapshot {
    pub log_stream: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub status_reason: Option<String>,
}

impl JobSnapshot {
    pub fn from_detail(detail: &JobDetail) -> Option<Self> {
        let status = JobStatus::parse(detail.status()?.as_str())?;
        let container = detail.container();
        let log_group = container
            .and_then(|c| c.log_configuration())
            .and_then(|l| l.options())
            .and_then(|o| o.get("awslogs-group"))
            .cloned()
            .unwrap_or_else(|| DEFAULT_LOG_GROUP.to_owned());
        let requirement = |kind: &str| {
            container?
                .resource_requirements()
                .iter()
                .find(|r| r.r#type().is_some_and(|t| t.as_str() == kind))
                .and_then(|r| r.value().map(str::to_owned))
        };
        let attempts = detail
            .attempts()
            .iter()
            .map(|a| AttemptSnapshot {
                log_stream: a
                    .container()
                    .and_then(|c| c.log_stream_name())
                    .map(str::to_owned),
                exit_code: a.container().and_then(|c| c.exit_code()),
                reason: a.container().and_then(|c| c.reason()).map(str::to_owned),
                status_reason: a.status_reason().map(str::to_owned),
            })
            .collect();
        Some(JobSnapshot {
            job_id: detail.job_id()?.to_owned(),
            job_name: detail.job_name().unwrap_or_default().to_owned(),
            status,
            status_reason: detail.status_reason().map(str::to_owned),
            queue: detail.job_queue().unwrap_or_default().to_owned(),
            log_group,
            attempts,
            container: AttemptSnapshot {
                log_stream: container
                    .and_then(|c| c.log_stream_name())
                    .map(str::to_owned),
                exit_code: container.and_then(|c| c.exit_code()),
                reason: container.and_then(|c| c.reason()).map(str::to_owned),
                status_reason: None,
            },
            vcpus: requirement("VCPU"),
            memory_mib: requirement("MEMORY"),
        })
    }

    /// Log streams by attempt (1-based), oldest first; the current attempt's stream may only be
    /// on `container` while the attempt is running.
    pub fn log_streams(&self) -> Vec<(usize, String)> {
        let mut streams: Vec<(usize, String)> = self
            .attempts
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.log_stream.clone().map(|s| (i + 1, s)))
            .collect();
        if let Some(current) = &self.container.log_stream {
            if !streams.iter().any(|(_, s)| s == current) {
                let attempt = if self.status.is_terminal() {
                    self.attempts.len().max(1)
                } else {
                    self.attempts.len() + 1
                };
                streams.push((attempt, current.clone()));
            }
        }
        streams
    }

    /// A job still running, as an outcome: its status and nothing decided yet.
    pub fn outcome_so_far(&self) -> Outcome {
        Outcome {
            job_id: self.job_id.clone(),
            status: self.status,
            exit_code: None,
            failure: None,
            summary: None,
            reason: self.status_reason.clone(),
            attempts: self.attempts.len(),
        }
    }

    /// The outcome of a finished job, explained.
    pub fn outcome(&self) -> Outcome {
        let last = self.attempts.last().cloned().unwrap_or_default();
        let exit_code = last.exit_code.or(self.container.exit_code);
        let container_reason = last
            .reason
            .clone()
            .or_else(|| self.container.reason.clone());
        let attempt_reason = last.status_reason.clone();
        let reasons: Vec<String> = [
            self.status_reason.clone(),
            attempt_reason.clone(),
            container_reason.clone(),
        ]
        .into_iter()
        .flatten()
        .filter(|r| !r.is_empty())
        .fold(Vec::new(), |mut acc, r| {
            if !acc.contains(&r) {
                acc.push(r);
            }
            acc
        });
        let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        let mut outcome = Outcome {
            job_id: self.job_id.clone(),
            status: self.status,
            exit_code,
            failure: None,
            summary: None,
            reason: reason.clone(),
            attempts: self.attempts.len(),
        };
        if self.status == JobStatus::Succeeded {
            return outcome;
        }
        let all = reasons.join(" ");
        let (kind, summary) = if container_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("OutOfMemoryError"))
        {
            (
                FailureKind::OutOfMemory,
                "out of memory: the container used more than its --memory".to_owned(),
            )
        } else if all.contains("CannotPullContainerError") || all.contains("CannotPullImage") {
            (
                FailureKind::ImagePull,
                "the container image could not be pulled (check --image and registry access)"
                    .to_owned(),
            )
        } else if attempt_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("Host EC2"))
        {
            (
                FailureKind::SpotReclaimed,
                "the instance was reclaimed (spot interruption or host termination)".to_owned(),
            )
        } else if all.contains("Job attempt duration exceeded timeout") {
            (
                FailureKind::Timeout,
                "the attempt ran longer than its timeout (--timeout)".to_owned(),
            )
        } else if let Some(text) = exit_code.and_then(explain_exit_code) {
            (
                FailureKind::Bootstrap,
                format!("{text} (exit code {})", exit_code.unwrap_or_default()),
            )
        } else if let Some(code) = exit_code.filter(|c| *c != 0) {
            let signal = match code {
                137 => " (killed: SIGKILL)",
                143 => " (terminated: SIGTERM)",
                _ => "",
            };
            (
                FailureKind::ExitCode,
                format!("the step exited with code {code}{signal}"),
            )
        } else if self.status_reason.as_deref().is_some_and(is_user_stop) {
            (
                FailureKind::TerminatedByUser,
                "stopped by a user".to_owned(),
            )
        } else {
            (
                FailureKind::Unknown,
                "the job failed without an exit code".to_owned(),
            )
        };
        // A user's stop wins over the exit code it caused (143 after TerminateJob).
        let (kind, summary) = if kind == FailureKind::ExitCode
            && self.status_reason.as_deref().is_some_and(is_user_stop)
        {
            (
                FailureKind::TerminatedByUser,
                format!("stopped by a user; {summary}"),
            )
        } else {
            (kind, summary)
        };
        outcome.failure = Some(kind);
        outcome.summary = Some(summary);
        outcome
    }
}

/// Stop reasons mfbatch and users give; Batch passes them through as `statusReason`.
fn is_user_stop(reason: &str) -> bool {
    let lower = reason.to_ascii_lowercase();
    lower.contains("mfbatch")
        || lower.contains("terminated by")
        || lower.contains("cancelled by")
        || lower.contains("user")
}
