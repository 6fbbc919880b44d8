//! Following an array job as one thing, whatever its size: the parent alone is polled (one id in
//! the shared DescribeJobs batches; its `arrayProperties.statusSummary` gives the counts), and
//! failed children are found with `ListJobs(arrayJobId, jobStatus=FAILED)`, paged, through the
//! Batch budget, only when the failed count grows. Children's logs are read on demand: the last
//! lines of the first K failed ones, and live streams only for the `--follow-index` ones. Never
//! one follower per child.
//!
//! The array is done when the parent ends, or when the summary counts every child as ended (the
//! summary lags behind the children, never ahead of them; moto never ends a parent that has a
//! failed child).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::job::{describe_error, snapshot_from, status_change};
use super::poller::Update;
use super::runnable::RunnableWatch;
use super::snapshot::{self, JobSnapshot};
use super::{FollowRequest, TrackError, Tracker, MAX_IDS_PER_CALL};
use crate::bootstrap::end_record::EndRecord;
use crate::error::{AwsError, AwsErrorKind, Service};
use crate::event::{
    DecidedBy, Event, EventSink, FailureGroup, FailureKind, JobStatus, Outcome, Warning,
};

/// How to follow an array (see [`FollowRequest::array`]).
#[derive(Debug, Clone)]
pub struct ArrayFollow {
    /// Show the last lines of the first this many failed children.
    pub show_failed: usize,
    /// Children whose output is streamed live.
    pub follow_indexes: Vec<usize>,
    /// How many last lines of a failed child to show.
    pub tail_lines: usize,
}

impl Default for ArrayFollow {
    fn default() -> Self {
        ArrayFollow {
            show_failed: 3,
            follow_indexes: Vec::new(),
            tail_lines: 20,
        }
    }
}

/// A failed child, as ListJobs summarized it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FailedChild {
    exit_code: Option<i32>,
    reason: Option<String>,
}

/// ListJobs takes at most this many per page.
const PAGE: i32 = 100;
/// Final sweeps tried when the last one fails.
const FINAL_SWEEP_TRIES: u32 = 3;

pub(super) async fn run(
    tracker: Tracker,
    request: FollowRequest,
    mut updates: mpsc::UnboundedReceiver<Update>,
    events: EventSink,
) -> Result<Outcome, TrackError> {
    let mut array = FollowedArray {
        follow: request.array.clone().unwrap_or_default(),
        job_id: request.job_id.clone(),
        job_name: String::new(),
        size: 0,
        counts: BTreeMap::new(),
        status: None,
        status_since: Instant::now(),
        failed: BTreeMap::new(),
        tails_shown: 0,
        next_sweep: Instant::now(),
        children: JoinSet::new(),
        children_started: false,
        waiting_since: None,
        some_started: false,
        runnable: RunnableWatch::default(),
        tracker,
        events,
    };
    let last = loop {
        let update = updates.recv().await;
        let Some(snapshot) = snapshot_from(&array.job_id, update, &array.events)? else {
            continue;
        };
        array.on_snapshot(&snapshot);
        array.watch_waiting(&snapshot).await?;
        let done = snapshot.status.is_terminal() || array.all_children_ended();
        if array.failed.len() < array.failed_count() && Instant::now() >= array.next_sweep {
            if let Err(e) = array.sweep().await {
                array.warn(&e);
            }
        }
        if done {
            array.final_sweep().await;
            break snapshot;
        }
    };
    drop(updates);
    while array.children.join_next().await.is_some() {}
    let outcome = array.finish(&last);
    if array.runnable.stopped() {
        return Err(RunnableWatch::timeout(
            &array.tracker.job_context(),
            array.job_id,
        ));
    }
    Ok(outcome)
}

/// What following one array remembers.
struct FollowedArray {
    tracker: Tracker,
    events: EventSink,
    follow: ArrayFollow,
    job_id: String,
    job_name: String,
    size: usize,
    counts: BTreeMap<JobStatus, usize>,
    status: Option<JobStatus>,
    status_since: Instant,
    failed: BTreeMap<usize, FailedChild>,
    tails_shown: usize,
    /// ListJobs sweeps are spaced by the pages the last one took.
    next_sweep: Instant,
    children: JoinSet<()>,
    children_started: bool,
    /// Since when children wait and none ever started (no compute environment places them).
    waiting_since: Option<Instant>,
    some_started: bool,
    runnable: RunnableWatch,
}

impl FollowedArray {
    fn failed_count(&self) -> usize {
        self.counts.get(&JobStatus::Failed).copied().unwrap_or(0)
    }

    fn all_children_ended(&self) -> bool {
        let ended: usize = self
            .counts
            .iter()
            .filter(|(s, _)| s.is_terminal())
            .map(|(_, n)| n)
            .sum();
        self.size > 0 && ended >= self.size
    }

    /// The parent's status and the children's counts, as events when they change; the
    /// `--follow-index` children once children exist.
    fn on_snapshot(&mut self, snapshot: &JobSnapshot) {
        self.job_name.clone_from(&snapshot.job_name);
        if let Some(event) = status_change(&self.job_id, snapshot, self.status, self.status_since) {
            (self.events)(event);
            self.status = Some(snapshot.status);
            self.status_since = Instant::now();
        }
        let Some(array) = &snapshot.array else {
            return;
        };
        self.size = array.size.unwrap_or(self.size);
        if array.counts != self.counts && !array.counts.is_empty() {
            self.counts.clone_from(&array.counts);
            (self.events)(Event::ArrayProgress {
                job_id: self.job_id.clone(),
                job_name: self.job_name.clone(),
                size: self.size,
                counts: self.counts.clone(),
            });
        }
        // Children exist once the parent is PENDING (moto: once the summary counts them).
        let children_exist = snapshot.status >= JobStatus::Pending || !self.counts.is_empty();
        if children_exist && !self.children_started {
            self.children_started = true;
            self.follow_children();
        }
    }

    /// Children that all wait in RUNNABLE, none ever started, are warned about (and with a
    /// timeout, the array is stopped) as a single job waiting there would be.
    async fn watch_waiting(&mut self, snapshot: &JobSnapshot) -> Result<(), TrackError> {
        let started = self
            .counts
            .iter()
            .any(|(status, n)| *status >= JobStatus::Starting && *n > 0);
        self.some_started |= started;
        let runnable = self
            .counts
            .get(&JobStatus::Runnable)
            .is_some_and(|n| *n > 0);
        if self.some_started || !runnable || snapshot.status.is_terminal() {
            self.waiting_since = None;
            return Ok(());
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let ctx = self.tracker.job_context();
        Box::pin(
            self.runnable
                .check(&ctx, snapshot, since.elapsed(), &self.events),
        )
        .await
    }

    /// Streams the chosen children live with the ordinary single-job follower.
    fn follow_children(&mut self) {
        for index in self.follow.follow_indexes.clone() {
            let child_id = format!("{}:{index}", self.job_id);
            let sink = child_sink(self.events.clone(), format!("{}[{index}]", self.job_name));
            let handle = self
                .tracker
                .follow_with(FollowRequest::new(child_id.clone()), sink);
            let events = self.events.clone();
            // Aborted with the array's follow (the set aborts this task, the guard the child's).
            let guard = super::AbortOnDrop(handle.abort_handle());
            self.children.spawn(async move {
                let _guard = guard;
                if let Err(e) = handle.wait().await {
                    events(Event::Warning(Warning::Notice {
                        message: format!("warning: cannot follow child {child_id}: {e}"),
                    }));
                }
            });
        }
    }

    fn warn(&self, e: &AwsError) {
        (self.events)(Event::Warning(Warning::Notice {
            message: format!(
                "warning: cannot list the failed children of {} yet: {} (still trying)",
                self.job_id,
                describe_error(e)
            ),
        }));
    }

    /// Once the array is done: the failures not yet listed, retried a few times.
    async fn final_sweep(&mut self) {
        let parent_failed = self.status == Some(JobStatus::Failed);
        if self.failed.len() >= self.failed_count() && !(parent_failed && self.failed.is_empty()) {
            return;
        }
        let mut wait = self.tracker.inner.config.poll_min;
        for attempt in 1..=FINAL_SWEEP_TRIES {
            match self.sweep().await {
                Ok(()) => return,
                Err(e) if attempt == FINAL_SWEEP_TRIES => self.warn(&e),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    /// Pages through the failed children; reports the new ones and the first ones' last lines.
    async fn sweep(&mut self) -> Result<(), AwsError> {
        let inner = &self.tracker.inner;
        let mut token = None;
        let mut new = Vec::new();
        let mut pages = 0u32;
        loop {
            inner.batch_budget.acquire().await;
            pages += 1;
            let page = inner
                .batch
                .list_jobs()
                .array_job_id(&self.job_id)
                .job_status(aws_sdk_batch::types::JobStatus::Failed)
                .max_results(PAGE)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(Service::Batch, "ListJobs", e));
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    if e.kind == AwsErrorKind::Throttled {
                        inner.batch_budget.throttled();
                    }
                    return Err(e);
                }
            };
            inner.batch_budget.succeeded();
            for job in page.job_summary_list() {
                let Some(index) = child_index(job) else {
                    continue;
                };
                if self.failed.contains_key(&index) {
                    continue;
                }
                let child = FailedChild {
                    exit_code: job.container().and_then(|c| c.exit_code()),
                    reason: job.container().and_then(|c| c.reason()).map(str::to_owned),
                };
                self.failed.insert(index, child.clone());
                new.push((index, child, job.status_reason().map(str::to_owned)));
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        self.next_sweep = Instant::now() + inner.config.poll_min * (2 + pages);
        new.sort_by_key(|(index, _, _)| *index);
        for (index, child, status_reason) in &new {
            (self.events)(Event::ChildFailed {
                job_id: self.job_id.clone(),
                child_id: format!("{}:{index}", self.job_id),
                index: *index,
                exit_code: child.exit_code,
                reason: child.reason.clone(),
                status_reason: status_reason.clone(),
            });
        }
        let room = self.follow.show_failed.saturating_sub(self.tails_shown);
        let tails: Vec<usize> = new.iter().take(room).map(|(i, _, _)| *i).collect();
        self.tails_shown += tails.len();
        self.show_tails(&tails).await;
        Ok(())
    }

    /// The last lines of these failed children: DescribeJobs (for their streams), then one
    /// backward GetLogEvents each.
    async fn show_tails(&self, indexes: &[usize]) {
        let inner = &self.tracker.inner;
        let ids: Vec<String> = indexes
            .iter()
            .map(|i| format!("{}:{i}", self.job_id))
            .collect();
        for chunk in ids.chunks(MAX_IDS_PER_CALL) {
            inner.batch_budget.acquire().await;
            let snapshots = match snapshot::describe(&inner.batch, chunk).await {
                Ok(s) => s,
                Err(e) => return self.warn(&e),
            };
            for child in snapshots {
                let Some((_, stream)) = child.log_streams().pop() else {
                    continue;
                };
                let index = child_index_of(&child.job_id).unwrap_or_default();
                match self.tail(&child, &stream).await {
                    Ok(lines) => (self.events)(Event::ChildLogTail {
                        job_id: self.job_id.clone(),
                        child_id: child.job_id.clone(),
                        index,
                        log_stream: stream,
                        lines,
                    }),
                    Err(e) => (self.events)(Event::Warning(Warning::LogsUnavailable {
                        job_id: child.job_id.clone(),
                        reason: describe_error(&e),
                    })),
                }
            }
        }
    }

    async fn tail(&self, child: &JobSnapshot, stream: &str) -> Result<Vec<String>, AwsError> {
        last_lines(&self.tracker, child, stream, self.follow.tail_lines).await
    }

    /// The array's outcome: its exit code is 0 when every child succeeded, the failed
    /// children's code when they all share one, else none (the CLI exits 1).
    fn finish(&self, last: &JobSnapshot) -> Outcome {
        let groups = failure_groups(&self.failed);
        let failed = !self.failed.is_empty() || last.status == JobStatus::Failed;
        let exit_code = common_exit_code(&self.failed);
        (self.events)(Event::ArrayDone {
            job_id: self.job_id.clone(),
            job_name: self.job_name.clone(),
            size: self.size,
            counts: self.counts.clone(),
            failed: groups.clone(),
        });
        let summary = failed.then(|| {
            if self.failed.is_empty() {
                format!(
                    "the array failed before any child did{}",
                    last.status_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            } else {
                format!(
                    "{} of {} children failed: {}",
                    self.failed.len(),
                    self.size,
                    describe_groups(&groups)
                )
            }
        });
        let outcome = Outcome {
            job_id: self.job_id.clone(),
            status: if failed {
                JobStatus::Failed
            } else {
                JobStatus::Succeeded
            },
            exit_code: if failed { exit_code } else { Some(0) },
            failure: failed.then(|| {
                if exit_code.is_some() {
                    FailureKind::ExitCode
                } else {
                    FailureKind::Unknown
                }
            }),
            summary,
            reason: last.status_reason.clone().filter(|_| failed),
            attempts: 0,
            decided_by: DecidedBy::BatchStatus,
            step_end: None,
        };
        (self.events)(Event::Exited(outcome.clone()));
        outcome
    }
}

/// A stream's last `count` lines, without the bootstrap's end records: one backward
/// GetLogEvents through the Logs budget.
pub(super) async fn last_lines(
    tracker: &Tracker,
    job: &JobSnapshot,
    stream: &str,
    count: usize,
) -> Result<Vec<String>, AwsError> {
    let inner = &tracker.inner;
    inner.logs_budget.acquire().await;
    let page = inner
        .logs
        .get_log_events()
        .log_group_name(&job.log_group)
        .log_stream_name(stream)
        .start_from_head(false)
        // Room for the two end records, which are not shown.
        .limit(count as i32 + 2)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(Service::Logs, "GetLogEvents", e))?;
    let is_record = |m: &str| {
        job.end_nonce
            .as_deref()
            .is_some_and(|n| EndRecord::parse(m, n).is_some())
    };
    let lines: Vec<String> = page
        .events()
        .iter()
        .filter_map(|e| e.message())
        .filter(|m| !is_record(m))
        .map(str::to_owned)
        .collect();
    let skip = lines.len().saturating_sub(count);
    Ok(lines.into_iter().skip(skip).collect())
}

/// The code every failed child exited with, when they all share one (1-255).
fn common_exit_code(failed: &BTreeMap<usize, FailedChild>) -> Option<i32> {
    let mut codes = failed.values().map(|c| c.exit_code);
    let first = codes.next()??;
    ((1..=255).contains(&first) && codes.all(|c| c == Some(first))).then_some(first)
}

fn failure_groups(failed: &BTreeMap<usize, FailedChild>) -> Vec<FailureGroup> {
    group_failures(
        failed
            .iter()
            .map(|(i, c)| (*i, c.exit_code, c.reason.clone())),
    )
}

/// Failed children `(index, exit code, reason)` grouped by exit code (or, without one, by
/// reason), biggest group first.
pub fn group_failures(
    failed: impl IntoIterator<Item = (usize, Option<i32>, Option<String>)>,
) -> Vec<FailureGroup> {
    let mut groups: BTreeMap<(Option<i32>, Option<String>), Vec<usize>> = BTreeMap::new();
    for (index, exit_code, reason) in failed {
        let reason = reason.filter(|_| exit_code.is_none());
        groups.entry((exit_code, reason)).or_default().push(index);
    }
    let mut groups: Vec<FailureGroup> = groups
        .into_iter()
        .map(|((exit_code, reason), indexes)| FailureGroup {
            exit_code,
            reason,
            count: indexes.len(),
            indexes: compress_ranges(&indexes),
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    groups
}

/// `exit 1 × 60 (3,17-19,…) · OutOfMemoryError × 5 (88)`.
pub fn describe_groups(groups: &[FailureGroup]) -> String {
    groups
        .iter()
        .map(|g| {
            let what = match (g.exit_code, &g.reason) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(reason)) => {
                    reason.split(':').next().unwrap_or(reason).trim().to_owned()
                }
                (None, None) => "no exit code".to_owned(),
            };
            format!("{what} × {} ({})", g.count, g.indexes)
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Sorted indexes as ranges: `[1, 2, 3, 7, 9, 10]` → `1-3,7,9-10`.
pub fn compress_ranges(indexes: &[usize]) -> String {
    let mut sorted = indexes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// A child's index: from its summary, else the `:<index>` suffix of its id (moto gives none).
fn child_index(job: &aws_sdk_batch::types::JobSummary) -> Option<usize> {
    job.array_properties()
        .and_then(|a| a.index())
        .map(|i| i.max(0) as usize)
        .or_else(|| child_index_of(job.job_id()?))
}

fn child_index_of(child_id: &str) -> Option<usize> {
    child_id.rsplit_once(':')?.1.parse().ok()
}

/// Gives a followed child's events its own name, `<name>[<index>]`, so its lines can be told
/// from other children's.
fn child_sink(events: EventSink, name: String) -> EventSink {
    Arc::new(move |mut event| {
        match &mut event {
            Event::Log { job_name, .. }
            | Event::Status { job_name, .. }
            | Event::StepExited { job_name, .. } => job_name.clone_from(&name),
            _ => {}
        }
        events(event)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compressed() {
        assert_eq!(compress_ranges(&[9, 1, 2, 3, 7, 10]), "1-3,7,9-10");
        assert_eq!(compress_ranges(&[4]), "4");
        assert_eq!(compress_ranges(&[]), "");
    }

    #[test]
    fn exit_code_of_the_array() {
        let failed = |codes: &[Option<i32>]| -> BTreeMap<usize, FailedChild> {
            codes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        i,
                        FailedChild {
                            exit_code: *c,
                            reason: None,
                        },
                    )
                })
                .collect()
        };
        assert_eq!(common_exit_code(&failed(&[Some(3), Some(3)])), Some(3));
        assert_eq!(common_exit_code(&failed(&[Some(3), Some(4)])), None);
        assert_eq!(common_exit_code(&failed(&[Some(3), None])), None);
        assert_eq!(common_exit_code(&failed(&[None])), None);
        let groups = failure_groups(&failed(&[Some(1), Some(2), Some(1), Some(1)]));
        assert_eq!(
            describe_groups(&groups),
            "exit 1 × 3 (0,2-3) · exit 2 × 1 (1)"
        );
    }
}
