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
    let mut token: Option<String> = None;
    let mut interval = config.log_min_interval;
    let mut done_at: Option<Instant> = *job_done.borrow();
    let started = Instant::now();
    let mut last_data: Option<Instant> = None;
    let mut records = EndRecords::default();
    loop {
        let mut had_data = false;
        budget.acquire().await;
        let mut request = client
            .get_log_events()
            .log_group_name(&stream.group)
            .log_stream_name(&stream.stream)
            .start_from_head(true)
            .set_next_token(token.clone());
        if token.is_none() {
            request = request.set_start_time(stream.start_time_ms);
        }
        let at_end = match request.send().await {
            Ok(page) => {
                budget.succeeded();
                let got = page.events().len();
                for e in page.events() {
                    let message = e.message().unwrap_or_default();
                    if let Some(record) = stream
                        .end_nonce
                        .as_deref()
                        .and_then(|nonce| EndRecord::parse(message, nonce))
                    {
                        records.add(record);
                        continue;
                    }
                    events(Event::Log {
                        job_id: stream.job_id.clone(),
                        job_name: stream.job_name.clone(),
                        attempt: stream.attempt,
                        timestamp_ms: e.timestamp().unwrap_or_default(),
                        message: message.to_owned(),
                    });
                }
                // Lines after a record in the same page were shown above; the stream is over.
                if let Some(end) = records.complete() {
                    return FollowEnd::Complete(end);
                }
                let next = page.next_forward_token().map(str::to_owned);
                let same_token = next.is_some() && next == token;
                if next.is_some() {
                    token = next;
                }
                if got > 0 {
                    // A page with data: more is likely waiting, read on at once.
                    had_data = true;
                    last_data = Some(Instant::now());
                    interval = Duration::ZERO;
                    false
                } else if same_token {
                    // The end of what is there now: back off while the stream stays idle.
                    interval = idle_interval(last_data.unwrap_or(started), &config, &budget);
                    true
                } else {
                    // An empty page with a new token: more may follow right away.
                    interval = Duration::ZERO;
                    false
                }
            }
            Err(err) => {
                let err = AwsError::from_sdk(Service::Logs, "GetLogEvents", err);
                match err.kind {
                    // The stream appears a little after the attempt starts.
                    AwsErrorKind::NotFound => {
                        interval = idle_interval(started, &config, &budget);
                        true
                    }
                    AwsErrorKind::Throttled => {
                        budget.throttled();
                        interval = interval.max(config.log_min_interval);
                        false
                    }
                    AwsErrorKind::AccessDenied | AwsErrorKind::Credentials => {
                        return FollowEnd::Failed(err)
                    }
                    _ => {
                        // Retried with the same token; back off so a failing endpoint is not
                        // hammered.
                        interval =
                            (interval * 2).clamp(config.log_min_interval, config.log_max_interval);
                        false
                    }
                }
            }
        };
        if once && at_end {
            return FollowEnd::Drained;
        }
        if let Some(done) = done_at {
            let quiet_since = last_data.map_or(done, |d| d.max(done));
            if at_end && quiet_since.elapsed() >= config.drain_quiet {
                return FollowEnd::Drained;
            }
            // The limit is for waiting on lines that may never come, not for cutting off a
            // backlog that is still being read.
            if done.elapsed() >= config.drain_max && !had_data {
                return FollowEnd::Drained;
            }
            // While draining, look again soon enough to end near the quiet window's end.
            interval = interval.min(config.drain_quiet / 2);
        }
        if interval.is_zero() {
            if done_at.is_none() {
                done_at = *job_done.borrow();
            }
        } else if done_at.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = job_done.changed() => {
                    done_at = if changed.is_err() { Some(Instant::now()) } else { *job_done.borrow() };
                }
            }
        } else {
            tokio::time::sleep(interval).await;
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
