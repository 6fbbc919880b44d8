//! Following one attempt's CloudWatch log stream: every event exactly once, in order.
//!
//! GetLogEvents pages forward from the head with the forward token. An empty page can come
//! while more data exists; the end of the stream returns the token that was sent. A failed call
//! is retried with the same token, so nothing is lost or repeated. Streams with data are polled
//! often, idle ones less and less.
//!
//! The stream is complete once both end records of the bootstrap were read (see
//! [`crate::bootstrap::end_record`]); they are never shown as lines. When they never come (an OOM kill, an
//! image that bypasses the bootstrap, a job mfbatch did not launch), the stream is drained after
//! the job ends until it has been quiet for a while, because the log driver delivers the last
//! lines seconds late.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::budget::RateBudget;
use super::TrackerConfig;
use crate::bootstrap::end_record::{EndRecord, EndRecords, StepEnd};
use crate::error::{AwsError, AwsErrorKind, Service};
use crate::event::{Event, EventSink};

/// Which stream, for which job.
#[derive(Debug, Clone)]
pub struct StreamRef {
    pub job_id: String,
    pub job_name: String,
    pub attempt: usize,
    pub group: String,
    pub stream: String,
    /// Only events at or after this time (epoch ms).
    pub start_time_ms: Option<i64>,
    /// The nonce of the attempt's end records, when mfbatch launched the job.
    pub end_nonce: Option<String>,
    /// When the job started (epoch ms): no line of the stream is older.
    pub started_at_ms: Option<i64>,
    /// Waited for before each read (see [`super::credit`]).
    pub credit: Option<Arc<super::LogCredit>>,
}

/// Why a follower stopped.
#[derive(Debug)]
pub enum FollowEnd {
    /// Both end records were read: every line of the attempt has been delivered.
    Complete(StepEnd),
    /// The job ended and the stream stayed quiet (or `once` reached its end).
    Drained,
    /// A failure that retrying will not fix (e.g. access denied to the log group).
    Failed(AwsError),
}

/// Follows the stream until both end records were read, or until the job has ended (`job_done`
/// holds when) and the stream has been quiet for the drain window (or the drain limit passes).
/// With `once`, reads to the current end and stops.
pub async fn follow(
    client: aws_sdk_cloudwatchlogs::Client,
    budget: Arc<RateBudget>,
    config: TrackerConfig,
    stream: StreamRef,
    mut job_done: watch::Receiver<Option<Instant>>,
    events: EventSink,
    once: bool,
) -> FollowEnd {
    let _user = budget.register();
    let mut follower = Follower {
        interval: config.log_min_interval,
        done_at: *job_done.borrow(),
        started: Instant::now(),
        token: None,
        last_data: None,
        records: EndRecords::default(),
        client,
        budget,
        config,
        stream,
        events,
    };
    loop {
        let read = match follower.read().await {
            Ok(read) => read,
            Err(end) => return end,
        };
        if once && read.at_end {
            return FollowEnd::Drained;
        }
        if follower.drained(&read) {
            return FollowEnd::Drained;
        }
        follower.wait(&mut job_done).await;
    }
}

/// What one read found.
struct Read {
    /// The stream had nothing more just now.
    at_end: bool,
    /// The page carried events.
    had_data: bool,
}

/// One stream's reading state: where it is, how often to look, and what it has seen.
struct Follower {
    client: aws_sdk_cloudwatchlogs::Client,
    budget: Arc<RateBudget>,
    config: TrackerConfig,
    stream: StreamRef,
    events: EventSink,
    token: Option<String>,
    interval: Duration,
    /// When the job ended, once known.
    done_at: Option<Instant>,
    started: Instant,
    last_data: Option<Instant>,
    records: EndRecords,
}

impl Follower {
    /// One GetLogEvents call; `Err` when following this stream is over.
    async fn read(&mut self) -> Result<Read, FollowEnd> {
        if let Some(credit) = &self.stream.credit {
            credit.ready().await;
        }
        self.budget.acquire().await;
        let mut request = self
            .client
            .get_log_events()
            .log_group_name(&self.stream.group)
            .log_stream_name(&self.stream.stream)
            .start_from_head(true)
            .set_next_token(self.token.clone());
        if self.token.is_none() {
            request = request.set_start_time(self.stream.start_time_ms);
        }
        // Boxed: the SDK's call is a large future, and a follower waits far more often than it
        // calls; inline, every one of thousands of followers would carry its size all along.
        match Box::pin(request.send()).await {
            Ok(page) => {
                self.budget.succeeded();
                self.deliver(page.events());
                // Lines after a record in the same page were shown above; the stream is over.
                if let Some(end) = self.records.complete() {
                    return Err(FollowEnd::Complete(end));
                }
                Ok(self.advance(page.events().len(), page.next_forward_token()))
            }
            Err(err) => self.failed(AwsError::from_sdk(Service::Logs, "GetLogEvents", err)),
        }
    }

    /// Emits a page's events as lines, keeping the end records apart.
    fn deliver(&mut self, page: &[aws_sdk_cloudwatchlogs::types::OutputLogEvent]) {
        for e in page {
            let message = e.message().unwrap_or_default();
            if let Some(record) = self
                .stream
                .end_nonce
                .as_deref()
                .and_then(|nonce| EndRecord::parse(message, nonce))
            {
                self.records.add(record);
                continue;
            }
            (self.events)(Event::Log {
                job_id: self.stream.job_id.clone(),
                job_name: self.stream.job_name.clone(),
                attempt: self.stream.attempt,
                timestamp_ms: e.timestamp().unwrap_or_default(),
                message: message.to_owned(),
            });
        }
    }

    /// Moves the token on and chooses the next wait from what the page held.
    fn advance(&mut self, got: usize, next: Option<&str>) -> Read {
        let next = next.map(str::to_owned);
        let same_token = next.is_some() && next == self.token;
        if next.is_some() {
            self.token = next;
        }
        if got > 0 {
            // A page with data: more is likely waiting, read on at once.
            self.last_data = Some(Instant::now());
            self.interval = Duration::ZERO;
            Read {
                at_end: false,
                had_data: true,
            }
        } else if same_token {
            // The end of what is there now: back off while the stream stays idle.
            self.interval = idle_interval(
                self.last_data.unwrap_or(self.started),
                &self.config,
                &self.budget,
            );
            Read {
                at_end: true,
                had_data: false,
            }
        } else {
            // An empty page with a new token: more may follow right away.
            self.interval = Duration::ZERO;
            Read {
                at_end: false,
                had_data: false,
            }
        }
    }

    /// A failed call is retried with the same token, so nothing is lost or repeated; only a
    /// denial ends following.
    fn failed(&mut self, err: AwsError) -> Result<Read, FollowEnd> {
        let at_end = match err.kind {
            // The stream appears a little after the attempt starts.
            AwsErrorKind::NotFound => {
                self.interval = idle_interval(self.started, &self.config, &self.budget);
                true
            }
            AwsErrorKind::Throttled => {
                self.budget.throttled();
                self.interval = self.interval.max(self.config.log_min_interval);
                false
            }
            AwsErrorKind::AccessDenied | AwsErrorKind::Credentials => {
                return Err(FollowEnd::Failed(err))
            }
            _ => {
                // Back off so a failing endpoint is not hammered.
                self.interval = (self.interval * 2)
                    .clamp(self.config.log_min_interval, self.config.log_max_interval);
                false
            }
        };
        Ok(Read {
            at_end,
            had_data: false,
        })
    }

    /// After the job ended: whether the stream has been quiet long enough (the fallback when no
    /// end records come).
    fn drained(&mut self, read: &Read) -> bool {
        let Some(done) = self.done_at else {
            return false;
        };
        let quiet_since = self.last_data.map_or(done, |d| d.max(done));
        if read.at_end && quiet_since.elapsed() >= self.config.drain_quiet {
            return true;
        }
        // The limit is for waiting on lines that may never come, not for cutting off a
        // backlog that is still being read.
        if done.elapsed() >= self.config.drain_max && !read.had_data {
            return true;
        }
        // While draining, look again soon enough to end near the quiet window's end.
        self.interval = self.interval.min(self.config.drain_quiet / 2);
        false
    }

    /// Waits for the next read, waking early when the job ends.
    async fn wait(&mut self, job_done: &mut watch::Receiver<Option<Instant>>) {
        if self.interval.is_zero() {
            if self.done_at.is_none() {
                self.done_at = *job_done.borrow();
            }
        } else if self.done_at.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                changed = job_done.changed() => {
                    self.done_at = if changed.is_err() {
                        Some(Instant::now())
                    } else {
                        *job_done.borrow()
                    };
                }
            }
        } else {
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// The next wait of an idle stream: a tenth of how long it has been idle, within the configured
/// bounds, so a stream that just went quiet (a step about to exit) is read again within a second
/// while one quiet for minutes costs few calls — and no shorter than lets all idle streams
/// together use half the budget, so that with thousands of streams the ones that have data
/// still get their calls.
fn idle_interval(idle_since: Instant, config: &TrackerConfig, budget: &RateBudget) -> Duration {
    let ceiling = config
        .log_max_interval
        .max(budget.interval_for_share(IDLE_SHARE));
    let floor = config
        .log_min_interval
        .max(budget.interval_for_share(IDLE_SHARE));
    (idle_since.elapsed() / 10).clamp(floor, ceiling)
}

/// The part of the Logs budget that idle streams may use between them.
const IDLE_SHARE: f64 = 0.5;

/// How long ago `since` was, as an epoch-ms start time for `--since`.
pub fn start_time_for(since: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(since).as_millis() as i64
}
