//! One followed job's task: turns snapshots into status events, starts a log follower for each
//! attempt's stream, warns about (or stops) a job stuck in RUNNABLE, and once the job ends waits
//! for its logs to drain before reporting the outcome.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::budget::RateBudget;
use super::logs::{self, FollowEnd, StreamRef};
use super::poller::{self, Update};
use super::snapshot::JobSnapshot;
use super::{stop_job, FollowRequest, TrackError, TrackerConfig};
use crate::event::{Event, EventSink, JobStatus, Outcome, Warning};
use crate::queue;

pub struct Context {
    pub batch: aws_sdk_batch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub config: TrackerConfig,
    pub batch_budget: Arc<RateBudget>,
    pub logs_budget: Arc<RateBudget>,
    pub poller: mpsc::UnboundedSender<poller::Command>,
}

pub async fn run(
    ctx: Context,
    request: FollowRequest,
    mut updates: mpsc::UnboundedReceiver<Update>,
    events: EventSink,
) -> Result<Outcome, TrackError> {
    let job_id = request.job_id.clone();
    let (done_tx, done_rx) = watch::channel(false);
    let mut followers = JoinSet::new();
    let mut followed: HashSet<String> = HashSet::new();
    let mut status: Option<JobStatus> = None;
    let mut status_since = Instant::now();
    let mut runnable_warned = false;
    let mut stopped_for_runnable = false;

    while let Some(update) = updates.recv().await {
        let snapshot = match update {
            Update::Snapshot(s) => *s,
            Update::NotFound => return Err(TrackError::NotFound { job_id }),
            Update::Failed(source) => return Err(TrackError::Aws { job_id, source }),
        };
        if status != Some(snapshot.status) {
            let now = Instant::now();
            events(Event::Status {
                job_id: job_id.clone(),
                job_name: snapshot.job_name.clone(),
                status: snapshot.status,
                previous: status,
                previous_ms: status.map(|_| (now - status_since).as_millis() as u64),
                reason: snapshot
                    .status_reason
                    .clone()
                    .filter(|_| snapshot.status == JobStatus::Runnable),
            });
            status = Some(snapshot.status);
            status_since = now;
        }
        if !request.without_logs {
            for (attempt, stream) in snapshot.log_streams() {
                if request.attempt.is_some_and(|a| a != attempt) || !followed.insert(stream.clone())
                {
                    continue;
                }
                let stream = StreamRef {
                    job_id: job_id.clone(),
                    job_name: snapshot.job_name.clone(),
                    attempt,
                    group: snapshot.log_group.clone(),
                    stream,
                    start_time_ms: request.logs_since_ms,
                };
                followers.spawn(logs::follow(
                    ctx.logs.clone(),
                    ctx.logs_budget.clone(),
                    ctx.config.clone(),
                    stream,
                    done_rx.clone(),
                    events.clone(),
                    request.once,
                ));
            }
        }
        if snapshot.status == JobStatus::Runnable {
            let waited = status_since.elapsed();
            if !runnable_warned && waited >= ctx.config.runnable_warning {
                runnable_warned = true;
                let detail = runnable_detail(&ctx, &snapshot).await;
                events(Event::Warning(Warning::StuckRunnable {
                    job_id: job_id.clone(),
                    seconds: waited.as_secs(),
                    reason: snapshot.status_reason.clone(),
                    detail,
                }));
            }
            if let Some(limit) = ctx.config.runnable_timeout {
                if waited >= limit && !stopped_for_runnable {
                    stopped_for_runnable = true;
                    let reason = format!("mfbatch: RUNNABLE for longer than {}s", limit.as_secs());
                    events(Event::Terminating {
                        job_id: job_id.clone(),
                        reason: reason.clone(),
                    });
                    if let Err(e) =
                        stop_job(&ctx.batch, &ctx.batch_budget, &job_id, status, &reason).await
                    {
                        return Err(TrackError::Aws {
                            job_id,
                            source: Arc::new(e),
                        });
                    }
                    let _ = ctx.poller.send(poller::Command::PollSoon {
                        job_id: job_id.clone(),
                    });
                }
            }
        }
        if snapshot.status.is_terminal() || request.once {
            let _ = done_tx.send(true);
            while let Some(end) = followers.join_next().await {
                if let Ok(FollowEnd::Failed(err)) = end {
                    // Status is known; a log stream we may not read must not hide the outcome.
                    events(Event::Warning(Warning::LogsUnavailable {
                        job_id: job_id.clone(),
                        reason: err.to_string(),
                    }));
                }
            }
            if !snapshot.status.is_terminal() {
                // `once` on a live job: there is no outcome yet.
                return Ok(snapshot.outcome_so_far());
            }
            if stopped_for_runnable {
                return Err(TrackError::RunnableTimeout {
                    job_id,
                    waited: ctx.config.runnable_timeout.unwrap_or_default(),
                });
            }
            let outcome = snapshot.outcome();
            events(Event::Exited(outcome.clone()));
            return Ok(outcome);
        }
    }
    // The poller went away: the runtime is shutting down.
    Err(TrackError::NotFound { job_id })
}

/// What can be said about why a job is not placed: its request against the queue's capacity.
async fn runnable_detail(ctx: &Context, snapshot: &JobSnapshot) -> Option<String> {
    let requested = format!(
        "requested {} vCPU and {} MiB",
        snapshot.vcpus.as_deref().unwrap_or("?"),
        snapshot.memory_mib.as_deref().unwrap_or("?")
    );
    ctx.batch_budget.acquire().await;
    let info = queue::describe(&ctx.batch, &snapshot.queue)
        .await
        .ok()
        .flatten();
    let Some(info) = info else {
        return Some(requested);
    };
    let environments: Vec<String> = info
        .compute_environments
        .iter()
        .map(|ce| {
            format!(
                "{} ({}{}, max {} vCPU)",
                ce.name,
                if ce.resource_type.is_empty() {
                    "unmanaged"
                } else {
                    &ce.resource_type
                },
                if ce.state == "ENABLED" || ce.state.is_empty() {
                    String::new()
                } else {
                    format!(", {}", ce.state)
                },
                ce.max_vcpus.map_or("?".into(), |v| v.to_string())
            )
        })
        .collect();
    Some(format!(
        "{requested}; queue {} ({}) uses {}",
        info.name,
        info.state,
        if environments.is_empty() {
            "no compute environment".into()
        } else {
            environments.join(", ")
        }
    ))
}
