//! The words for each event in text output: pure functions from an event to the line a user
//! reads (the renderer decides where and when it goes).

use std::time::Duration;

use mfbatch::event::{DecidedBy, Event, Outcome, Warning};
use mfbatch::launch::package::SkipReason;

use super::render::{human_bytes, human_duration};
use super::style::Style;

/// A warning's text (after `warning:`).
pub fn warning(warning: &Warning) -> String {
    match warning {
        Warning::Skipped(s) => match s.reason {
            SkipReason::LinkOutsideRoot => {
                format!("skipped {}: the link points outside the package root", s.path)
            }
            SkipReason::BrokenLink => format!("skipped {}: the link is broken or loops", s.path),
            other => format!("skipped {}: {}", s.path, other.describe()),
        },
        Warning::Notice { message } => message.clone(),
        Warning::LogsUnavailable { job_id, reason } => {
            format!("cannot read the logs of job {job_id}: {reason}")
        }
        Warning::StatusUnavailable {
            job_id,
            seconds,
            reason,
        } => format!(
            "cannot read the status of job {job_id} for {}: {reason} (still trying)",
            human_duration(Duration::from_secs(*seconds))
        ),
        Warning::LargePackage { bytes } => format!(
            "the package is {}; every job start downloads it (use --root or --package-suffixes to trim it)",
            human_bytes(*bytes)
        ),
        Warning::StuckRunnable {
            job_id,
            seconds,
            reason,
            detail,
        } => {
            let mut text = format!(
                "job {job_id} has been RUNNABLE for {}: no compute environment has placed it yet",
                human_duration(Duration::from_secs(*seconds))
            );
            if let Some(reason) = reason {
                text.push_str(&format!("\n  Batch says: {reason}"));
            }
            if let Some(detail) = detail {
                text.push_str(&format!("\n  {detail}"));
            }
            text
        }
    }
}

/// A status change, with the time spent in the previous status.
pub fn status(event: &Event, style: &Style) -> String {
    let Event::Status {
        job_name,
        status,
        previous,
        previous_ms,
        reason,
        ..
    } = event
    else {
        return String::new();
    };
    let mut line = format!("{job_name}: {status}");
    if let (Some(previous), Some(ms)) = (previous, previous_ms) {
        line.push_str(&style.dim(&format!(
            " (after {} in {previous})",
            human_duration(Duration::from_millis(*ms))
        )));
    }
    if let Some(reason) = reason {
        line.push_str(&format!(" — {reason}"));
    }
    line
}

/// `n noun`, with an `s` unless there is one.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The launch's progress lines (packaged, stored, registered, submitted, stopping).
pub fn progress(event: &Event) -> Option<String> {
    Some(match event {
        Event::Packaged {
            files,
            bytes,
            sha256,
        } => format!(
            "Packaged {} ({}), sha256 {}",
            count(*files, "file"),
            human_bytes(*bytes),
            &sha256[..12.min(sha256.len())]
        ),
        Event::UploadSkipped { url } => format!("Package already stored at {url}"),
        Event::JobDefinition {
            name,
            arn,
            registered,
        } => {
            let revision = arn.rsplit(':').next().unwrap_or("?");
            let verb = if *registered { "Registered" } else { "Reusing" };
            format!("{verb} job definition {name}:{revision}")
        }
        Event::Submitted {
            job_id,
            job_name,
            queue,
        } => format!("Submitted {job_name} ({job_id}) to {queue}"),
        Event::Terminating { job_id, reason } => format!("Stopping job {job_id} ({reason})"),
        Event::Lagging {
            behind_seconds,
            streams,
        } => format!(
            "warning: the log reads are {behind_seconds} s behind across {streams} streams: the account's CloudWatch Logs read quota cannot keep up (lines come late, none are lost)"
        ),
        _ => return None,
    })
}

/// An array's counts: `name (id) [10000]: SUCCEEDED 8123 · RUNNING 412 · FAILED 65`.
pub fn array_progress(
    job_name: &str,
    size: usize,
    counts: &std::collections::BTreeMap<mfbatch::event::JobStatus, usize>,
) -> String {
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("{job_name} [{size}]: {}", counts.join(" · "))
}

/// A failed child's last lines, under a header.
pub fn child_tail(child_id: &str, index: usize, lines: &[String], style: &Style) -> String {
    let mut text = style.dim(&format!("last lines of child {index} ({child_id}):"));
    if lines.is_empty() {
        text.push_str(" (none)");
    }
    for line in lines {
        text.push_str("\n  | ");
        text.push_str(line);
    }
    text
}

/// A multi-node job's nodes by status: `train nodes [16]: RUNNING 15 · FAILED 1`.
pub fn nodes_progress(
    job_name: &str,
    num_nodes: usize,
    counts: &std::collections::BTreeMap<mfbatch::event::JobStatus, usize>,
) -> String {
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("{job_name} nodes [{num_nodes}]: {}", counts.join(" · "))
}

/// A non-main node failed: `node 3 (<job>#3) failed: exit 7; the job goes on`.
pub fn node_failed(
    node_id: &str,
    node_index: usize,
    exit_code: Option<i32>,
    reason: Option<&str>,
    style: &Style,
) -> String {
    let what = match (exit_code, reason) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(reason)) => reason.to_owned(),
        (None, None) => "no exit code".to_owned(),
    };
    format!(
        "{} node {node_index} ({node_id}) failed: {what}; the main node decides the job",
        style.warning("warning:")
    )
}

/// A failed node's last lines, each prefixed with its index: `[#3] | line`.
pub fn node_tail(node_id: &str, node_index: usize, lines: &[String], style: &Style) -> String {
    let mut text = style.dim(&format!("last lines of node {node_index} ({node_id}):"));
    if lines.is_empty() {
        text.push_str(" (none)");
    }
    for line in lines {
        text.push_str(&format!("\n  [#{node_index}] | "));
        text.push_str(line);
    }
    text
}

/// How the job ended; when the step's end records decided it, that Batch's status follows.
pub fn exited(outcome: &Outcome, style: &Style) -> String {
    let batch_later = (outcome.decided_by == DecidedBy::EndRecord)
        .then(|| format!("; Batch will mark the job {}", outcome.status));
    if outcome.succeeded() {
        return match &batch_later {
            Some(later) => format!("Job {}: step exited 0{later}", outcome.job_id),
            None => format!("Job {} succeeded", outcome.job_id),
        };
    }
    let summary = outcome.summary.as_deref().unwrap_or("failed");
    let mut text = format!(
        "{} job {} failed: {summary}{}",
        style.error("error:"),
        outcome.job_id,
        batch_later.as_deref().unwrap_or_default()
    );
    if let Some(reason) = &outcome.reason {
        text.push_str(&format!("\n  Batch says: {reason}"));
    }
    text
}
