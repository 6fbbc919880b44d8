//! The one status poller of a process: it batches every followed job into DescribeJobs calls of
//! up to 100 ids, polls each job at an interval suited to its state, and hands snapshots to the
//! job's own task. Several tasks may watch one job (e.g. two `serve` connections following it):
//! the job is still polled once, and each snapshot goes to every watcher.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::budget::RateBudget;
use super::snapshot::{self, JobSnapshot};
use super::TrackerConfig;
use crate::error::{AwsError, AwsErrorKind};
use crate::event::JobStatus;

/// How soon after the step's end to ask Batch: it needs a moment to notice the container exited.
const POLL_AFTER_STEP_END: Duration = Duration::from_millis(200);

/// DescribeJobs takes at most this many ids.
pub const MAX_IDS_PER_CALL: usize = 100;

/// What the poller tells a job's task.
#[derive(Debug, Clone)]
pub enum Update {
    Snapshot(Box<JobSnapshot>),
    /// DescribeJobs has not known the id for longer than the grace period.
    NotFound,
    /// DescribeJobs keeps failing for a reason retrying will not fix (e.g. access denied).
    Failed(Arc<AwsError>),
    /// DescribeJobs has been failing this long; still trying.
    Failing(Arc<AwsError>, Duration),
    /// DescribeJobs failed for longer than the limit: following the job ends.
    GaveUp(Arc<AwsError>, Duration),
}

/// Requests to the poller.
pub enum Command {
    Watch {
        job_id: String,
        updates: mpsc::UnboundedSender<Update>,
        not_found_grace: Duration,
    },
    /// Poll this job at the next opportunity (e.g. right after stopping it).
    PollSoon { job_id: String },
    /// The job's step has exited: poll it at the fastest rate until Batch reports the end.
    Hurry { job_id: String },
}

struct Watch {
    /// Every task following the job.
    updates: Vec<mpsc::UnboundedSender<Update>>,
    next_due: Instant,
    /// When the job entered its current status, as first seen here.
    status_since: Instant,
    status: Option<JobStatus>,
    first_missing: Option<Instant>,
    not_found_grace: Duration,
    /// Its step has exited: Batch's terminal status is due any moment.
    hurried: bool,
    /// DescribeJobs calls for it have failed since then (and whether that was reported).
    failing_since: Option<Instant>,
    failure_reported: bool,
}

/// Runs until every handle to the poller is gone and no job is watched.
pub async fn run(
    client: aws_sdk_batch::Client,
    budget: Arc<RateBudget>,
    config: TrackerConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut poller = Poller {
        watches: HashMap::new(),
        config,
        rng: fastrand::Rng::new(),
    };
    let mut open = true;
    loop {
        // Drop jobs whose task has finished (it closed its receiver).
        poller.watches.retain(|_, w| {
            w.updates.retain(|u| !u.is_closed());
            !w.updates.is_empty()
        });
        if !open && poller.watches.is_empty() {
            return;
        }
        let now = Instant::now();
        let next_due = poller.watches.values().map(|w| w.next_due).min();
        if next_due.is_none_or(|due| due > now) {
            let wake = next_due.unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                command = commands.recv(), if open => match command {
                    Some(command) => apply(&mut poller.watches, command),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            continue;
        }
        while let Ok(command) = commands.try_recv() {
            apply(&mut poller.watches, command);
        }
        for batch in choose_batches(&poller.watches, now) {
            budget.acquire().await;
            let result = snapshot::describe(&client, &batch).await;
            let now = Instant::now();
            match result {
                Ok(snapshots) => {
                    budget.succeeded();
                    poller.on_snapshots(&batch, snapshots, now);
                }
                Err(err) => {
                    if err.kind == AwsErrorKind::Throttled {
                        budget.throttled();
                    }
                    poller.on_error(&batch, err, now);
                }
            }
        }
    }
}

/// The watched jobs and what to do with each answer.
struct Poller {
    watches: HashMap<String, Watch>,
    config: TrackerConfig,
    rng: fastrand::Rng,
}

impl Poller {
    /// Hands each snapshot to its job and schedules its next poll; ids missing from the answer
    /// are given their grace, then reported not found.
    fn on_snapshots(&mut self, batch: &[String], snapshots: Vec<JobSnapshot>, now: Instant) {
        let mut seen = std::collections::HashSet::new();
        for snapshot in snapshots {
            let Some(watch) = self.watches.get_mut(&snapshot.job_id) else {
                continue;
            };
            seen.insert(snapshot.job_id.clone());
            watch.first_missing = None;
            watch.failing_since = None;
            watch.failure_reported = false;
            if watch.status != Some(snapshot.status) {
                watch.status = Some(snapshot.status);
                watch.status_since = now;
            }
            // An array's parent waits in PENDING while its children run: poll it like a
            // running job, so failed children are noticed within seconds, not half a minute.
            let status = if snapshot.is_array_parent() && !snapshot.status.is_terminal() {
                JobStatus::Running
            } else {
                snapshot.status
            };
            let interval = if watch.hurried {
                self.config.poll_min
            } else {
                poll_interval(&self.config, status, now - watch.status_since)
            };
            watch.next_due = now + jitter(&mut self.rng, interval);
            watch.send(Update::Snapshot(Box::new(snapshot)));
        }
        for id in batch.iter().filter(|id| !seen.contains(*id)) {
            let Some(watch) = self.watches.get_mut(id) else {
                continue;
            };
            // Just submitted ids can be missing for a moment (eventual consistency).
            watch.failing_since = None;
            let since = *watch.first_missing.get_or_insert(now);
            if now - since > watch.not_found_grace {
                watch.send(Update::NotFound);
                self.watches.remove(id);
            } else {
                watch.next_due = now + self.config.poll_min;
            }
        }
    }

    /// A failed DescribeJobs: a denial ends following at once; anything else is tried again,
    /// reported once it lasts, and given up past the limit.
    fn on_error(&mut self, batch: &[String], err: AwsError, now: Instant) {
        let fatal = matches!(
            err.kind,
            AwsErrorKind::AccessDenied | AwsErrorKind::Credentials
        );
        let err = Arc::new(err);
        let mut gave_up = Vec::new();
        for id in batch {
            let Some(watch) = self.watches.get_mut(id) else {
                continue;
            };
            if fatal {
                watch.send(Update::Failed(err.clone()));
                gave_up.push(id.clone());
                continue;
            }
            let failing = now - *watch.failing_since.get_or_insert(now);
            if failing >= self.config.status_failure_limit {
                watch.send(Update::GaveUp(err.clone(), failing));
                gave_up.push(id.clone());
                continue;
            }
            if failing >= self.config.status_failure_warning && !watch.failure_reported {
                watch.failure_reported = true;
                watch.send(Update::Failing(err.clone(), failing));
            }
            // The job's state is not lost by waiting.
            watch.next_due = now
                + jitter(
                    &mut self.rng,
                    self.config.poll_max.min(Duration::from_secs(5)),
                );
        }
        for id in gave_up {
            self.watches.remove(&id);
        }
    }
}

impl Watch {
    fn send(&self, update: Update) {
        for watcher in &self.updates {
            let _ = watcher.send(update.clone());
        }
    }
}

fn apply(watches: &mut HashMap<String, Watch>, command: Command) {
    match command {
        Command::Watch {
            job_id,
            updates,
            not_found_grace,
        } => {
            let now = Instant::now();
            if let Some(watch) = watches.get_mut(&job_id) {
                // Another follower of a watched job: the same polls; it hears from the next one.
                watch.updates.push(updates);
                watch.not_found_grace = watch.not_found_grace.max(not_found_grace);
                watch.next_due = watch.next_due.min(now);
                // The newcomer gets its whole grace and failure limit, counted from now.
                if watch.first_missing.is_some() {
                    watch.first_missing = Some(now);
                }
                if watch.failing_since.is_some() {
                    watch.failing_since = Some(now);
                    watch.failure_reported = false;
                }
                return;
            }
            watches.insert(
                job_id,
                Watch {
                    updates: vec![updates],
                    next_due: now,
                    status_since: now,
                    status: None,
                    first_missing: None,
                    not_found_grace,
                    hurried: false,
                    failing_since: None,
                    failure_reported: false,
                },
            );
        }
        Command::PollSoon { job_id } => {
            if let Some(watch) = watches.get_mut(&job_id) {
                watch.next_due = Instant::now();
            }
        }
        Command::Hurry { job_id } => {
            if let Some(watch) = watches.get_mut(&job_id) {
                watch.hurried = true;
                watch.next_due = watch.next_due.min(Instant::now() + POLL_AFTER_STEP_END);
            }
        }
    }
}

/// The ids to poll now, in calls of at most 100: every due job, then jobs due within the next
/// 10 s to fill the calls (a piggybacked id costs no extra call).
fn choose_batches(watches: &HashMap<String, Watch>, now: Instant) -> Vec<Vec<String>> {
    let mut due: Vec<(&String, Instant)> = watches
        .iter()
        .filter(|(_, w)| w.next_due <= now)
        .map(|(id, w)| (id, w.next_due))
        .collect();
    due.sort_by_key(|(_, at)| *at);
    let slots = due.len().div_ceil(MAX_IDS_PER_CALL) * MAX_IDS_PER_CALL;
    if due.len() < slots {
        let mut soon: Vec<(&String, Instant)> = watches
            .iter()
            .filter(|(_, w)| w.next_due > now && w.next_due <= now + Duration::from_secs(10))
            .map(|(id, w)| (id, w.next_due))
            .collect();
        soon.sort_by_key(|(_, at)| *at);
        due.extend(soon.into_iter().take(slots - due.len()));
    }
    due.chunks(MAX_IDS_PER_CALL)
        .map(|chunk| chunk.iter().map(|(id, _)| (*id).clone()).collect())
        .collect()
}

/// Short right after a change, longer the longer a job waits; RUNNING jobs are polled often
/// enough to notice their end promptly (their logs come through the log followers anyway).
pub fn poll_interval(config: &TrackerConfig, status: JobStatus, in_status: Duration) -> Duration {
    let scaled = match status {
        JobStatus::Starting => config.poll_min,
        JobStatus::Running => (in_status / 10).clamp(config.poll_min * 2, config.poll_max / 3),
        _ => (in_status / 5).clamp(config.poll_min, config.poll_max),
    };
    scaled.max(config.poll_min)
}

/// ±10%, so thousands of jobs submitted together do not poll in lockstep.
fn jitter(rng: &mut fastrand::Rng, interval: Duration) -> Duration {
    interval.mul_f64(0.9 + rng.f64() * 0.2)
}
