//! Deciding and explaining how a job ended: from Batch's terminal status, or earlier from the
//! step's end records when no retry can follow; and why it failed, in words a user can act on.

use crate::bootstrap::end_record::{Origin, StepEnd};
use crate::bootstrap::exit_code;
use crate::event::{DecidedBy, FailureKind, JobStatus, Outcome};

use super::snapshot::{AttemptSnapshot, JobSnapshot, RetryPolicy};

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

impl JobSnapshot {
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
        let facts = Facts::of(self, step_end);
        let mut outcome = Outcome {
            job_id: self.job_id.clone(),
            status: self.status,
            exit_code: facts.exit_code,
            failure: None,
            summary: None,
            reason: (!facts.reasons.is_empty()).then(|| facts.reasons.join("; ")),
            attempts: self.attempts.len(),
            decided_by: DecidedBy::BatchStatus,
            step_end,
        };
        if self.status != JobStatus::Succeeded {
            let (kind, summary) = facts.explain();
            outcome.failure = Some(kind);
            outcome.summary = Some(summary);
        }
        outcome
    }
}

/// What a finished job's last attempt says about why it ended.
struct Facts {
    exit_code: Option<i32>,
    container_reason: Option<String>,
    attempt_reason: Option<String>,
    job_reason: Option<String>,
    /// The distinct non-empty reasons, job's first.
    reasons: Vec<String>,
    step_end: Option<StepEnd>,
}

impl Facts {
    fn of(snapshot: &JobSnapshot, step_end: Option<StepEnd>) -> Facts {
        let last = snapshot.attempts.last().cloned().unwrap_or_default();
        let container_reason = last
            .reason
            .clone()
            .or_else(|| snapshot.container.reason.clone());
        let attempt_reason = last.status_reason.clone();
        let mut reasons: Vec<String> = Vec::new();
        for r in [
            snapshot.status_reason.clone(),
            attempt_reason.clone(),
            container_reason.clone(),
        ]
        .into_iter()
        .flatten()
        {
            if !r.is_empty() && !reasons.contains(&r) {
                reasons.push(r);
            }
        }
        Facts {
            exit_code: last.exit_code.or(snapshot.container.exit_code),
            container_reason,
            attempt_reason,
            job_reason: snapshot.status_reason.clone(),
            reasons,
            step_end,
        }
    }

    /// The failure's kind and a sentence for the user. A user's stop wins over the exit code it
    /// caused (143 after TerminateJob).
    fn explain(&self) -> (FailureKind, String) {
        let (kind, summary) = self.classify();
        let stopped_by_user = self.job_reason.as_deref().is_some_and(is_user_stop);
        if kind == FailureKind::ExitCode && stopped_by_user {
            return (
                FailureKind::TerminatedByUser,
                format!("stopped by a user; {summary}"),
            );
        }
        (kind, summary)
    }

    fn classify(&self) -> (FailureKind, String) {
        let all = self.reasons.join(" ");
        let starts =
            |r: &Option<String>, prefix: &str| r.as_deref().is_some_and(|r| r.starts_with(prefix));
        if starts(&self.container_reason, "OutOfMemoryError") {
            return (
                FailureKind::OutOfMemory,
                "out of memory: the container used more than its --memory".to_owned(),
            );
        }
        if all.contains("CannotPullContainerError") || all.contains("CannotPullImage") {
            return (
                FailureKind::ImagePull,
                "the container image could not be pulled (check --image and registry access)"
                    .to_owned(),
            );
        }
        if starts(&self.attempt_reason, "Host EC2") {
            return (
                FailureKind::SpotReclaimed,
                "the instance was reclaimed (spot interruption or host termination)".to_owned(),
            );
        }
        if all.contains("Job attempt duration exceeded timeout") {
            return (
                FailureKind::Timeout,
                "the attempt ran longer than its timeout (--timeout)".to_owned(),
            );
        }
        let origin = self.step_end.map(|e| e.origin);
        if let Some(text) = self
            .exit_code
            .filter(|_| origin == Some(Origin::Bootstrap))
            .and_then(explain_exit_code)
        {
            let code = self.exit_code.unwrap_or_default();
            return (FailureKind::Bootstrap, format!("{text} (exit code {code})"));
        }
        if let Some(code) = self.exit_code.filter(|c| *c != 0) {
            let signal = match code {
                137 => " (killed: SIGKILL)",
                143 => " (terminated: SIGTERM)",
                _ => "",
            };
            // Without the end records, a code may also be the bootstrap's (121–123, 127).
            let summary = match origin {
                Some(Origin::Stopped) => {
                    format!("the step was stopped and exited with code {code}{signal}")
                }
                Some(_) => format!("the step exited with code {code}{signal}"),
                None => format!("the container exited with code {code}{signal}"),
            };
            return (FailureKind::ExitCode, summary);
        }
        if self.job_reason.as_deref().is_some_and(is_user_stop) {
            return (
                FailureKind::TerminatedByUser,
                "stopped by a user".to_owned(),
            );
        }
        (
            FailureKind::Unknown,
            "the job failed without an exit code".to_owned(),
        )
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

/// Describes what an exit code of the container means, when the bootstrap set it.
pub fn explain_exit_code(code: i32) -> Option<&'static str> {
    match code {
        exit_code::PACKAGE_UNAVAILABLE => Some("the container could not download the code package"),
        exit_code::PACKAGE_CORRUPT => Some("the code package was corrupt or unsafe to extract"),
        exit_code::BAD_ENVIRONMENT => Some("the container's bootstrap environment was incomplete"),
        exit_code::NO_PYTHON => Some("the image has neither python3 nor python"),
        _ => None,
    }
}
