//! Following jobs to the end: one [`Tracker`] per process shares one status poller and one rate
//! budget per service among every followed job, so a thousand jobs cost a handful of calls per
//! second. Each job gets a [`JobHandle`]: its events, and an outcome to await.
//!
//! ```no_run
//! # async fn demo(clients: mfbatch::aws::Clients, ids: Vec<String>) {
//! use mfbatch::track::{Tracker, TrackerConfig, FollowRequest};
//! let tracker = Tracker::new(&clients, TrackerConfig::default());
//! let handles: Vec<_> = ids.into_iter().map(|id| tracker.follow(FollowRequest::new(id))).collect();
//! for handle in handles {
//!     let outcome = handle.wait().await;
//! }
//! # }
//! ```

pub mod array;
mod budget;
pub mod credit;
mod job;
pub mod list;
pub mod logs;
pub mod nodes;
mod outcome;
mod poller;
mod runnable;
pub mod snapshot;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use budget::RateBudget;
pub use credit::LogCredit;
pub use poller::{poll_interval, MAX_IDS_PER_CALL};

use crate::aws::Clients;
use crate::error::{AwsError, Service};
use crate::event::{Event, EventSink, JobStatus, Outcome};

/// How often and how fast to call AWS while following.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Batch calls per second for the whole process (account quota: about 50/s for all callers).
    pub batch_calls_per_second: f64,
    /// GetLogEvents calls per second for the whole process (account quota: 25/s; 10/s in several
    /// Regions; it cannot be raised).
    pub logs_calls_per_second: f64,
    /// FilterLogEvents calls per second for the whole process (account quota: 10/s; 25/s in
    /// us-east-1, 5/s in several Regions; it cannot be raised).
    pub filter_calls_per_second: f64,
    /// Which path reads a new log stream (one path for its whole life).
    pub log_mode: LogMode,
    /// With [`LogMode::Auto`]: streams beyond this many read per stream go to the sweeps.
    pub batched_above: usize,
    /// How often the sweeps read every batched stream.
    pub sweep_interval: Duration,
    /// How much of what a sweep read before the next one reads again, for late-ingested lines.
    pub sweep_overlap: Duration,
    /// Lines older than this when delivered make the sweeps report `lagging`.
    pub latency_target: Duration,
    /// Shortest and longest interval between status polls of one job.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Shortest and longest interval between reads of one log stream.
    pub log_min_interval: Duration,
    pub log_max_interval: Duration,
    /// After the job ends, stop reading a stream once it has been quiet this long…
    pub drain_quiet: Duration,
    /// …or once this long has passed since the end, whichever comes first.
    pub drain_max: Duration,
    /// How long a just-submitted id may be unknown to DescribeJobs.
    pub not_found_grace: Duration,
    /// DescribeJobs failing this long for a job is reported as a warning…
    pub status_failure_warning: Duration,
    /// …and this long as an error that ends following it.
    pub status_failure_limit: Duration,
    /// Warn when a job waits in RUNNABLE this long.
    pub runnable_warning: Duration,
    /// Stop and fail a job that waits in RUNNABLE this long.
    pub runnable_timeout: Option<Duration>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            batch_calls_per_second: 5.0,
            logs_calls_per_second: 10.0,
            filter_calls_per_second: 3.0,
            log_mode: LogMode::Auto,
            batched_above: 50,
            sweep_interval: Duration::from_secs(2),
            // The least overlap; widened to twice the ingestion lag the sweeps see, plus 5 s.
            sweep_overlap: Duration::from_secs(5),
            latency_target: Duration::from_secs(15),
            poll_min: Duration::from_millis(crate::settings::DEFAULT_POLL_MIN_MS),
            poll_max: Duration::from_secs(30),
            log_min_interval: Duration::from_millis(500),
            log_max_interval: Duration::from_secs(15),
            drain_quiet: Duration::from_millis(crate::settings::DEFAULT_DRAIN_QUIET_MS),
            drain_max: Duration::from_secs(60),
            not_found_grace: Duration::from_secs(30),
            status_failure_warning: crate::retry::STATUS_FAILURE_WARNING,
            status_failure_limit: crate::retry::STATUS_FAILURE_LIMIT,
            runnable_warning: Duration::from_secs(300),
            runnable_timeout: None,
        }
    }
}

/// Which path reads a log stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogMode {
    /// Per stream while few streams are followed, sweeps beyond [`TrackerConfig::batched_above`].
    Auto,
    /// GetLogEvents per stream, always (fine for a few jobs; slow for thousands).
    PerStream,
    /// FilterLogEvents sweeps, always.
    Batched,
}

impl LogMode {
    pub fn parse(text: &str) -> Option<LogMode> {
        Some(match text {
            "auto" => LogMode::Auto,
            "per-stream" => LogMode::PerStream,
            "batched" => LogMode::Batched,
            _ => return None,
        })
    }
}

impl TrackerConfig {
    /// The defaults with the Logs budgets at 60% of the Region's quotas (the account's other
    /// users share them): GetLogEvents 25/s (10/s or 30/s in some Regions), FilterLogEvents 10/s
    /// (25/s in us-east-1, 5/s in some). The per-stream path then serves about 5 s of its
    /// budget's worth of streams before new ones go to the sweeps.
    pub fn for_region(region: &str) -> TrackerConfig {
        let get_quota = match region {
            "us-west-2" | "eu-west-1" | "eu-central-1" | "ap-northeast-3" | "ap-southeast-3"
            | "ca-west-1" | "il-central-1" => 10.0,
            "eu-west-3" => 30.0,
            _ => 25.0,
        };
        let filter_quota = match region {
            "us-east-1" => 25.0,
            "eu-central-1" | "ap-northeast-3" | "ap-southeast-3" | "ca-west-1" | "il-central-1" => {
                5.0
            }
            _ => 10.0,
        };
        let logs_calls_per_second = get_quota * 0.6;
        TrackerConfig {
            logs_calls_per_second,
            filter_calls_per_second: filter_quota * 0.6,
            batched_above: (logs_calls_per_second * 5.0) as usize,
            ..TrackerConfig::default()
        }
    }
}

/// Why following a job failed (as opposed to the job failing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    #[error("job {job_id} is not known to AWS Batch (finished jobs are only kept for a few days)")]
    NotFound { job_id: String },
    #[error("cannot follow job {job_id}: DescribeJobs has failed for {} s", waited.as_secs())]
    StatusUnavailable {
        job_id: String,
        waited: Duration,
        #[source]
        source: Arc<AwsError>,
    },
    #[error("cannot follow job {job_id}")]
    Aws {
        job_id: String,
        #[source]
        source: Arc<AwsError>,
    },
    #[error("job {job_id} waited in RUNNABLE longer than {waited:?} and was stopped")]
    RunnableTimeout { job_id: String, waited: Duration },
    /// Following was stopped through [`JobHandle::abort_handle`] (the job runs on).
    #[error("stopped following job {job_id}")]
    Unfollowed { job_id: String },
}

impl TrackError {
    pub fn hint(&self) -> Option<String> {
        match self {
            TrackError::NotFound { .. } => Some("check the job id and the region (AWS_REGION)".into()),
            TrackError::Aws { source, .. } => source.hint(),
            TrackError::StatusUnavailable { source, .. } => source.hint(),
            TrackError::Unfollowed { .. } => None,
            TrackError::RunnableTimeout { .. } => Some(
                "no compute environment of the queue can place the job: compare --cpu/--memory with its instance types and maxvCpus"
                    .into(),
            ),
        }
    }
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct FollowRequest {
    pub job_id: String,
    /// Follow only this attempt's logs (1-based); `None`: every attempt.
    pub attempt: Option<usize>,
    /// Skip log events older than this (epoch ms).
    pub logs_since_ms: Option<i64>,
    /// Read what is there and stop, without waiting for the job to end.
    pub once: bool,
    /// Follow status only; no log calls at all.
    pub without_logs: bool,
    /// How long DescribeJobs may not know the id ([`TrackerConfig::not_found_grace`] when
    /// unset). Ids a user typed need no more than a moment: they are not just submitted.
    pub not_found_grace: Option<Duration>,
    /// How to follow the job if it is an array's parent ([`array`]; the defaults when unset).
    pub array: Option<array::ArrayFollow>,
    /// How to follow the job if it is a multi-node parallel job ([`nodes`]; the defaults when
    /// unset).
    ///
    /// The job's first description decides what it is: an array's parent or a multi-node job is
    /// followed as one thing (not with `once`), anything else as an ordinary job, whatever these
    /// two say.
    pub nodes: Option<nodes::NodeFollow>,
    /// Read logs only while this credit has room (a consumer that may fall behind).
    pub log_credit: Option<Arc<LogCredit>>,
}

impl FollowRequest {
    pub fn new(job_id: impl Into<String>) -> Self {
        FollowRequest {
            job_id: job_id.into(),
            attempt: None,
            logs_since_ms: None,
            once: false,
            without_logs: false,
            not_found_grace: None,
            array: None,
            nodes: None,
            log_credit: None,
        }
    }
}

/// Shared machinery for following many jobs.
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    batch: aws_sdk_batch::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    config: TrackerConfig,
    batch_budget: Arc<RateBudget>,
    logs_budget: Arc<RateBudget>,
    filter_budget: Arc<RateBudget>,
    sweeper: sweep::Sweeper,
    poller: mpsc::UnboundedSender<poller::Command>,
}

/// What a tracker is doing, for heartbeats and reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrackerStats {
    pub log_mode: LogMode,
    /// Log streams read per stream (GetLogEvents) now.
    pub per_stream_streams: usize,
    /// The sweeps (FilterLogEvents): streams, lag, overlap.
    pub sweeps: sweep::SweepStats,
    /// Calls so far and budgets (calls per second, after any slow-down for throttling), by API.
    pub describe_jobs_calls: u64,
    pub get_log_events_calls: u64,
    pub filter_log_events_calls: u64,
    pub get_log_events_per_second: f64,
    pub filter_log_events_per_second: f64,
}

impl Tracker {
    /// Starts the shared poller on the current tokio runtime.
    pub fn new(clients: &Clients, config: TrackerConfig) -> Self {
        let batch_budget = Arc::new(RateBudget::new(config.batch_calls_per_second));
        let logs_budget = Arc::new(RateBudget::new(config.logs_calls_per_second));
        let filter_budget = Arc::new(RateBudget::new(config.filter_calls_per_second));
        let sweeper =
            sweep::Sweeper::start(clients.logs.clone(), filter_budget.clone(), config.clone());
        let (poller_tx, poller_rx) = mpsc::unbounded_channel();
        tokio::spawn(poller::run(
            clients.batch.clone(),
            batch_budget.clone(),
            config.clone(),
            poller_rx,
        ));
        Tracker {
            inner: Arc::new(Inner {
                batch: clients.batch.clone(),
                logs: clients.logs.clone(),
                config,
                batch_budget,
                logs_budget,
                filter_budget,
                sweeper,
                poller: poller_tx,
            }),
        }
    }

    /// What the tracker is doing now: which path reads the logs, the sweeps' lag, calls by API.
    pub fn stats(&self) -> TrackerStats {
        let inner = &self.inner;
        TrackerStats {
            log_mode: inner.config.log_mode,
            per_stream_streams: inner.logs_budget.users(),
            sweeps: inner.sweeper.stats(),
            describe_jobs_calls: inner.batch_budget.calls(),
            get_log_events_calls: inner.logs_budget.calls(),
            filter_log_events_calls: inner.filter_budget.calls(),
            get_log_events_per_second: inner.logs_budget.rate(),
            filter_log_events_per_second: inner.filter_budget.rate(),
        }
    }

    /// Follows a job; its events go to the handle.
    pub fn follow(&self, request: FollowRequest) -> JobHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |event| {
            let _ = tx.send(event);
        });
        let mut handle = self.follow_with(request, sink);
        handle.events = Some(rx);
        handle
    }

    /// Follows a job; its events go to `sink` (which many jobs may share).
    pub fn follow_with(&self, request: FollowRequest, sink: EventSink) -> JobHandle {
        let updates = self.watch(&request);
        let job_id = request.job_id.clone();
        JobHandle {
            job_id,
            events: None,
            task: tokio::spawn(dispatch(self.clone(), request, updates, sink)),
        }
    }

    /// Follows a part of a larger job (a multi-node job's main node) as an ordinary job, with
    /// `ctx` (the part's own settings, e.g. no RUNNABLE stop of a single node).
    fn follow_part(&self, request: FollowRequest, sink: EventSink, ctx: job::Context) -> JobHandle {
        let updates = self.watch(&request);
        let job_id = request.job_id.clone();
        JobHandle {
            job_id,
            events: None,
            task: tokio::spawn(job::run(ctx, request, updates, sink)),
        }
    }

    /// The poller's updates about the request's job, from now on.
    fn watch(&self, request: &FollowRequest) -> mpsc::UnboundedReceiver<poller::Update> {
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let _ = self.inner.poller.send(poller::Command::Watch {
            job_id: request.job_id.clone(),
            updates: updates_tx,
            not_found_grace: request
                .not_found_grace
                .unwrap_or(self.inner.config.not_found_grace),
        });
        updates_rx
    }

    fn job_context(&self) -> job::Context {
        job::Context {
            batch: self.inner.batch.clone(),
            logs: self.inner.logs.clone(),
            config: self.inner.config.clone(),
            batch_budget: self.inner.batch_budget.clone(),
            logs_budget: self.inner.logs_budget.clone(),
            sweeper: self.inner.sweeper.clone(),
            poller: self.inner.poller.clone(),
        }
    }

    /// Stops a job: CancelJob while it waits, TerminateJob once it may be running.
    pub async fn stop(
        &self,
        job_id: &str,
        last_status: Option<JobStatus>,
        reason: &str,
    ) -> Result<(), AwsError> {
        stop_job(
            &self.inner.batch,
            &self.inner.batch_budget,
            job_id,
            last_status,
            reason,
        )
        .await?;
        let _ = self.inner.poller.send(poller::Command::PollSoon {
            job_id: job_id.to_owned(),
        });
        Ok(())
    }

    /// Calls made so far, per service (Batch, Logs), for reports and benchmarks.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.inner.batch_budget.calls(),
            self.inner.logs_budget.calls(),
        )
    }
}

/// Follows a job the way its first description calls for: an array's parent and a multi-node
/// job as one thing, anything else (an array child `<parent>:<i>`, a node `<job>#<n>`) as an
/// ordinary job.
async fn dispatch(
    tracker: Tracker,
    mut request: FollowRequest,
    mut updates: mpsc::UnboundedReceiver<poller::Update>,
    sink: EventSink,
) -> Result<Outcome, TrackError> {
    let first = first_description(&request.job_id, &mut updates, &sink).await;
    if let Some(poller::Update::Snapshot(snapshot)) = &first {
        let main_node = snapshot
            .nodes
            .as_ref()
            .filter(|_| snapshot.is_multinode_parent() && snapshot.log_streams().is_empty())
            .map(|n| n.main_node.unwrap_or(0));
        if request.once {
            // What there is to read now of a multi-node job is its main node's stream.
            if let Some(main) = main_node {
                drop(updates);
                request.job_id = nodes::node_id(&request.job_id, main);
                let main = tracker.follow_with(request, sink);
                let _guard = AbortOnDrop(main.abort_handle());
                return main.wait().await;
            }
            request.array = None;
            request.nodes = None;
        } else if snapshot.is_array_parent() {
            request.array.get_or_insert_with(Default::default);
            request.nodes = None;
        } else if snapshot.is_multinode_parent() {
            request.nodes.get_or_insert_with(Default::default);
            request.array = None;
        } else {
            request.array = None;
            request.nodes = None;
        }
    }
    let Some(first) = first else {
        return Err(TrackError::NotFound {
            job_id: request.job_id,
        });
    };
    let updates = prepend(first, updates);
    if request.array.is_some() {
        array::run(tracker, request, updates, sink).await
    } else if request.nodes.is_some() {
        Box::pin(nodes::run(tracker, request, updates, sink)).await
    } else {
        job::run(tracker.job_context(), request, updates, sink).await
    }
}

/// The first update that is not a DescribeJobs failure still being retried (those are passed on
/// as warnings): a description, or why there is none.
async fn first_description(
    job_id: &str,
    updates: &mut mpsc::UnboundedReceiver<poller::Update>,
    sink: &EventSink,
) -> Option<poller::Update> {
    loop {
        match updates.recv().await {
            Some(failing @ poller::Update::Failing(..)) => {
                // A failure still being retried is a warning, and no answer yet.
                let _ = job::snapshot_from(job_id, Some(failing), sink);
            }
            other => return other,
        }
    }
}

/// Aborts a task when the task holding this ends (returns, fails, or is aborted itself): a
/// follower started for a job's follow must not outlive it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `rest` with `first` put back in front. The forwarding ends with the reader, so the poller
/// sees the job's channel closed as soon as its task is done.
fn prepend(
    first: poller::Update,
    mut rest: mpsc::UnboundedReceiver<poller::Update>,
) -> mpsc::UnboundedReceiver<poller::Update> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                update = rest.recv() => {
                    let Some(u) = update else { return };
                    if tx.send(u).is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// CancelJob before the job can run, TerminateJob after (or when the state is unknown, since
/// TerminateJob also cancels jobs that have not started).
pub async fn stop_job(
    client: &aws_sdk_batch::Client,
    budget: &RateBudget,
    job_id: &str,
    last_status: Option<JobStatus>,
    reason: &str,
) -> Result<(), AwsError> {
    budget.acquire().await;
    let waiting = matches!(
        last_status,
        Some(JobStatus::Submitted | JobStatus::Pending | JobStatus::Runnable)
    );
    if waiting {
        client
            .cancel_job()
            .job_id(job_id)
            .reason(reason)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::Batch, "CancelJob", e))?;
    }
    // A job can move on between our last poll and the cancel; terminate to be sure it stops.
    client
        .terminate_job()
        .job_id(job_id)
        .reason(reason)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(Service::Batch, "TerminateJob", e))?;
    Ok(())
}

/// One followed job.
pub struct JobHandle {
    pub job_id: String,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    task: tokio::task::JoinHandle<Result<Outcome, TrackError>>,
}

impl JobHandle {
    /// The next event of this job (only for handles from [`Tracker::follow`]).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.as_mut()?.recv().await
    }

    /// Stops following when aborted (the job itself runs on); `wait` then says so.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Waits for the job to end and its logs to drain.
    pub async fn wait(self) -> Result<Outcome, TrackError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) if join.is_cancelled() => Err(TrackError::Unfollowed {
                job_id: self.job_id,
            }),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}
