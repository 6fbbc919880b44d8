//! One followed job's task: turns snapshots into status events, starts a log follower for each
//! attempt's stream, warns about (or stops) a job stuck in RUNNABLE, and reports the outcome:
//! as soon as the step's end records decide it (no retry can follow), else once Batch reports
//! the end and the logs have drained.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::budget::RateBudget;
use super::logs::{self, FollowEnd, StreamRef};
use super::poller::{self, Update};
use super::runnable::RunnableWatch;
use super::snapshot::JobSnapshot;
use super::{FollowRequest, TrackError, TrackerConfig};
use crate::bootstrap::end_record::StepEnd;
use crate::event::{Event, EventSink, JobStatus, Outcome, Warning};

pub struct Context {
    pub batch: aws_sdk_batch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub config: TrackerConfig,
    pub batch_budget: Arc<RateBudget>,
    pub logs_budget: Arc<RateBudget>,
    pub sweeper: super::sweep::Sweeper,
    pub poller: mpsc::UnboundedSender<poller::Command>,
}

pub async fn run(
    ctx: Context,
    request: FollowRequest,
    mut updates: mpsc::UnboundedReceiver<Update>,
    events: EventSink,
) -> Result<Outcome, TrackError> {
    // When the job ended (from its `stoppedAt`), for the followers' drain window.
    let (done_tx, done_rx) = watch::channel(None::<Instant>);
    let mut followers: JoinSet<FollowEnd> = JoinSet::new();
    let mut job = FollowedJob {
        ctx: &ctx,
        request: &request,
        events: &events,
        job_id: request.job_id.clone(),
        followed: HashSet::new(),
        status: None,
        status_since: Instant::now(),
        runnable: RunnableWatch::default(),
        last: None,
        ended: false,
        step_end: None,
    };
    loop {
        tokio::select! {
            // Batch's own word first, when both are there.
            biased;
            update = updates.recv(), if !job.ended => {
                let Some(snapshot) = job.snapshot_from(update)? else {
                    continue;
                };
                job.on_snapshot(&snapshot, &mut followers, &done_rx).await?;
                if snapshot.status.is_terminal() || request.once {
                    job.ended = true;
                    let _ = done_tx.send(Some(ended_at(&snapshot)));
                } else if let Some(outcome) =
                    job.step_end.and_then(|end| snapshot.outcome_from_step_end(end))
                {
                    return Ok(job.finish(outcome));
                }
                job.last = Some(snapshot);
            }
            Some(joined) = followers.join_next(), if !followers.is_empty() => {
                if let Some(outcome) = job.on_follower_end(joined) {
                    return Ok(job.finish(outcome));
                }
            }
        }
        if job.ended && followers.is_empty() {
            break;
        }
    }
    let snapshot = job.last.take().expect("a snapshot ended the job");
    if !snapshot.status.is_terminal() {
        // `once` on a live job: there is no outcome yet.
        return Ok(snapshot.outcome_so_far());
    }
    if job.runnable.stopped() {
        return Err(RunnableWatch::timeout(&ctx, job.job_id));
    }
    Ok(job.finish(snapshot.outcome(job.step_end)))
}

/// Reads a stream in the sweeps; back to per-stream reading when FilterLogEvents is denied
/// before anything was delivered (one path per stream otherwise, so no line comes twice).
async fn follow_batched(
    sweeper: super::sweep::Sweeper,
    client: aws_sdk_cloudwatchlogs::Client,
    budget: Arc<RateBudget>,
    config: TrackerConfig,
    stream: StreamRef,
    done: watch::Receiver<Option<Instant>>,
    events: EventSink,
) -> FollowEnd {
    match sweeper
        .follow(stream.clone(), done.clone(), events.clone())
        .await
    {
        super::sweep::SweepEnd::Ended(end) => end,
        super::sweep::SweepEnd::UsePerStream => {
            // Boxed: only the streams that fall back pay for the per-stream follower's size.
            Box::pin(logs::follow(
                client, budget, config, stream, done, events, false,
            ))
            .await
        }
    }
}

/// The `Status` event of `snapshot`'s status when it is not `previous` (seen since `since`);
/// Batch's reason comes with RUNNABLE, where it says why the job waits.
pub(super) fn status_change(
    job_id: &str,
    snapshot: &JobSnapshot,
    previous: Option<JobStatus>,
    since: Instant,
) -> Option<Event> {
    let reason = snapshot
        .status_reason
        .clone()
        .filter(|_| snapshot.status == JobStatus::Runnable);
    (previous != Some(snapshot.status)).then(|| Event::Status {
        job_id: job_id.to_owned(),
        job_name: snapshot.job_name.clone(),
        status: snapshot.status,
        previous,
        previous_ms: previous.map(|_| since.elapsed().as_millis() as u64),
        reason,
    })
}

/// An AWS error in one line, with the service's own message.
pub(super) fn describe_error(err: &crate::error::AwsError) -> String {
    match &err.message {
        Some(message) => format!("{err} ({message})"),
        None => err.to_string(),
    }
}

/// When the job ended, as an instant of this process: from its `stoppedAt`, so that following a
/// job that ended long ago does not wait out a drain window for lines that came long since.
fn ended_at(snapshot: &JobSnapshot) -> Instant {
    let now = Instant::now();
    let ago = snapshot.stopped_at_ms.map_or(0, |stopped| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        (now_ms - stopped).clamp(0, 24 * 3600 * 1000) as u64
    });
    now.checked_sub(std::time::Duration::from_millis(ago))
        .unwrap_or(now)
}

/// The snapshot in a poller update; `None` for a warning (sent on as an event); the end of
/// following when the poller gave up on the job.
pub(super) fn snapshot_from(
    job_id: &str,
    update: Option<Update>,
    events: &EventSink,
) -> Result<Option<JobSnapshot>, TrackError> {
    let job_id = job_id.to_owned();
    match update {
        Some(Update::Snapshot(s)) => Ok(Some(*s)),
        Some(Update::NotFound) => Err(TrackError::NotFound { job_id }),
        Some(Update::Failed(source)) => Err(TrackError::Aws { job_id, source }),
        Some(Update::GaveUp(source, waited)) => Err(TrackError::StatusUnavailable {
            job_id,
            waited,
            source,
        }),
        Some(Update::Failing(source, waited)) => {
            events(Event::Warning(Warning::StatusUnavailable {
                job_id,
                seconds: waited.as_secs(),
                reason: describe_error(&source),
            }));
            Ok(None)
        }
        // The poller went away: the runtime is shutting down.
        None => Err(TrackError::NotFound { job_id }),
    }
}

/// What one job's task remembers between snapshots.
struct FollowedJob<'a> {
    ctx: &'a Context,
    request: &'a FollowRequest,
    events: &'a EventSink,
    job_id: String,
    followed: HashSet<String>,
    status: Option<JobStatus>,
    status_since: Instant,
    runnable: RunnableWatch,
    /// The latest snapshot, whether Batch reported the end, and what the last step end said.
    last: Option<JobSnapshot>,
    ended: bool,
    step_end: Option<StepEnd>,
}

impl FollowedJob<'_> {
    /// Whether a new stream goes to the sweeps: by the mode, and in `auto` once the per-stream
    /// path already serves as many streams as its budget can read in time. `once` reads are
    /// always per stream (they stop at the current end).
    fn batched(&self) -> bool {
        let config = &self.ctx.config;
        // A consumer that gives credit (`serve`) is read per stream, where the credit gates
        // each read; the sweeps read for every stream at once.
        !self.request.once
            && self.request.log_credit.is_none()
            && match config.log_mode {
                super::LogMode::PerStream => false,
                super::LogMode::Batched => true,
                super::LogMode::Auto => self.ctx.logs_budget.users() >= config.batched_above,
            }
    }

    /// The snapshot in a poller update; `None` for a warning (sent on as an event).
    fn snapshot_from(&self, update: Option<Update>) -> Result<Option<JobSnapshot>, TrackError> {
        snapshot_from(&self.job_id, update, self.events)
    }

    /// A log follower ended: the step's end (which may decide the outcome), a stream we may
    /// not read (said now, not when the job ends), or a drained stream.
    fn on_follower_end(
        &mut self,
        joined: Result<FollowEnd, tokio::task::JoinError>,
    ) -> Option<Outcome> {
        match joined {
            Ok(FollowEnd::Complete(end)) => {
                (self.events)(Event::StepExited {
                    job_id: self.job_id.clone(),
                    job_name: self
                        .last
                        .as_ref()
                        .map(|s| s.job_name.clone())
                        .unwrap_or_default(),
                    end,
                });
                if self.step_end.is_none_or(|e| e.attempt <= end.attempt) {
                    self.step_end = Some(end);
                }
                // Batch reports the end tens of seconds after it on AWS; look often.
                let _ = self.ctx.poller.send(poller::Command::Hurry {
                    job_id: self.job_id.clone(),
                });
                if self.ended {
                    return None;
                }
                self.last.as_ref()?.outcome_from_step_end(end)
            }
            Ok(FollowEnd::Failed(err)) => {
                (self.events)(Event::Warning(Warning::LogsUnavailable {
                    job_id: self.job_id.clone(),
                    reason: describe_error(&err),
                }));
                None
            }
            Ok(FollowEnd::Drained) | Err(_) => None,
        }
    }

    fn finish(&self, outcome: Outcome) -> Outcome {
        (self.events)(Event::Exited(outcome.clone()));
        outcome
    }

    /// Status events, a follower per new stream, and the RUNNABLE watch.
    async fn on_snapshot(
        &mut self,
        snapshot: &JobSnapshot,
        followers: &mut JoinSet<FollowEnd>,
        done: &watch::Receiver<Option<Instant>>,
    ) -> Result<(), TrackError> {
        let events = self.events;
        let job_id = &self.job_id;
        if let Some(event) = status_change(job_id, snapshot, self.status, self.status_since) {
            events(event);
            self.status = Some(snapshot.status);
            self.status_since = Instant::now();
        }
        if !self.request.without_logs {
            for (attempt, stream) in snapshot.log_streams() {
                if self.request.attempt.is_some_and(|a| a != attempt)
                    || !self.followed.insert(stream.clone())
                {
                    continue;
                }
                events(Event::AttemptStarted {
                    job_id: job_id.clone(),
                    attempt,
                    log_group: snapshot.log_group.clone(),
                    log_stream: stream.clone(),
                });
                let stream = StreamRef {
                    job_id: job_id.clone(),
                    job_name: snapshot.job_name.clone(),
                    attempt,
                    group: snapshot.log_group.clone(),
                    stream,
                    start_time_ms: self.request.logs_since_ms,
                    end_nonce: snapshot.end_nonce.clone(),
                    started_at_ms: snapshot.started_at_ms,
                    credit: self.request.log_credit.clone(),
                };
                if self.batched() {
                    followers.spawn(follow_batched(
                        self.ctx.sweeper.clone(),
                        self.ctx.logs.clone(),
                        self.ctx.logs_budget.clone(),
                        self.ctx.config.clone(),
                        stream,
                        done.clone(),
                        events.clone(),
                    ));
                } else {
                    followers.spawn(logs::follow(
                        self.ctx.logs.clone(),
                        self.ctx.logs_budget.clone(),
                        self.ctx.config.clone(),
                        stream,
                        done.clone(),
                        events.clone(),
                        self.request.once,
                    ));
                }
            }
        }
        if snapshot.status == JobStatus::Runnable {
            // Boxed: rare, and its AWS calls would make every job's task as large as they are.
            let waited = self.status_since.elapsed();
            Box::pin(self.runnable.check(self.ctx, snapshot, waited, self.events)).await?;
        }
        Ok(())
    }
}
