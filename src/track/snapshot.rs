//! What one DescribeJobs answer says about a job, reduced to what following it needs, and how a
//! finished job's outcome is explained to a user.

use aws_sdk_batch::types::JobDetail;

use crate::bootstrap::explain_exit_code;
use crate::end_record::{Origin, StepEnd, NONCE_ENV};
use crate::event::{DecidedBy, FailureKind, JobStatus, Outcome};

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
    /// The nonce of the job's end records, when mfbatch launched it.
    pub end_nonce: Option<String>,
    /// When the job stopped (epoch ms), once it has.
    pub stopped_at_ms: Option<i64>,
    /// The job's retry strategy, when it has one.
    pub retry: Option<RetryPolicy>,
}

/// A job's `retryStrategy`: how many attempts, and which exits Batch retries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryPolicy {
    pub attempts: usize,
    pub rules: Vec<ExitRule>,
}

/// One `evaluateOnExit` rule. Patterns match exactly, or by prefix when they end with `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitRule {
    pub on_status_reason: Option<String>,
    pub on_reason: Option<String>,
    pub on_exit_code: Option<String>,
    pub retry: bool,
}

/// What Batch says of an attempt whose container exited by itself.
const CONTAINER_EXITED: &str = "Essential container in task exited";

impl RetryPolicy {
    /// Whether Batch may start another attempt after `attempt` ended with the step exiting
    /// `exit_code` on its own (no host loss, no timeout). Batch retries when attempts remain and
    /// the first matching rule says RETRY, or when no rule matches.
    pub fn may_retry(&self, attempt: usize, exit_code: i32) -> bool {
        if exit_code == 0 || attempt >= self.attempts {
            return false;
        }
        let code = exit_code.to_string();
        for rule in &self.rules {
            let matches = [
                (&rule.on_status_reason, CONTAINER_EXITED),
                (&rule.on_reason, ""),
                (&rule.on_exit_code, code.as_str()),
            ]
            .iter()
            .all(|(pattern, value)| pattern.as_deref().is_none_or(|p| glob(p, value)));
            if matches {
                return rule.retry;
            }
        }
        true
    }
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
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
            end_nonce: container
                .map(|c| c.environment())
                .unwrap_or_default()
                .iter()
                .find(|kv| kv.name() == Some(NONCE_ENV))
                .and_then(|kv| kv.value())
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            stopped_at_ms: detail.stopped_at(),
            retry: detail.retry_strategy().map(|r| RetryPolicy {
                attempts: r.attempts().unwrap_or(1).max(1) as usize,
                rules: r
                    .evaluate_on_exit()
                    .iter()
                    .map(|e| ExitRule {
                        on_status_reason: e.on_status_reason().map(str::to_owned),
                        on_reason: e.on_reason().map(str::to_owned),
                        on_exit_code: e.on_exit_code().map(str::to_owned),
                        retry: e.action().map(|a| a.as_str()) == Some("RETRY"),
                    })
                    .collect(),
            }),
        })
    }

    /// The attempt that is running now (or ran last), 1-based.
    pub fn current_attempt(&self) -> usize {
        if self.status.is_terminal() || self.container.log_stream.is_none() {
            self.attempts.len().max(1)
        } else {
            self.attempts.len() + 1
        }
    }

    /// The outcome that the step's end records already decide, before Batch reports it: when
    /// the records are the current attempt's and no retry can follow.
    pub fn outcome_from_step_end(&self, end: StepEnd) -> Option<Outcome> {
        // A stopped step's code says nothing of why (a timeout, a lost host): Batch decides.
        if self.status.is_terminal()
            || end.attempt < self.current_attempt()
            || end.origin == Origin::Stopped
        {
            return None;
        }
        if self
            .retry
            .as_ref()
            .is_some_and(|r| r.may_retry(end.attempt, end.exit_code))
        {
            return None;
        }
        let status = if end.exit_code == 0 {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        let mut outcome = JobSnapshot {
            status,
            attempts: Vec::new(),
            container: AttemptSnapshot {
                exit_code: Some(end.exit_code),
                ..Default::default()
            },
            ..self.clone()
        }
        .outcome(Some(end));
        outcome.attempts = end.attempt;
        outcome.decided_by = DecidedBy::EndRecord;
        Some(outcome)
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
            decided_by: DecidedBy::BatchStatus,
            step_end: None,
        }
    }

    /// The outcome of a finished job, explained; `step_end` is what the last attempt's end
    /// records said, when they were read (it tells the bootstrap's exit codes from the step's).
    pub fn outcome(&self, step_end: Option<StepEnd>) -> Outcome {
        let step_end = step_end.filter(|e| e.attempt >= self.attempts.len());
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
            decided_by: DecidedBy::BatchStatus,
            step_end,
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
        } else if let Some(text) = exit_code
            .filter(|_| step_end.is_some_and(|e| e.origin == Origin::Bootstrap))
            .and_then(explain_exit_code)
        {
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
            // Without the end records, a code may also be the bootstrap's (121–123, 127).
            let summary = match step_end.map(|e| e.origin) {
                Some(Origin::Stopped) => {
                    format!("the step was stopped and exited with code {code}{signal}")
                }
                Some(_) => format!("the step exited with code {code}{signal}"),
                None => format!("the container exited with code {code}{signal}"),
            };
            (FailureKind::ExitCode, summary)
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
