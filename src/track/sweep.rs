//! Reading many log streams at once with FilterLogEvents sweeps, when per-stream GetLogEvents
//! polling cannot serve them all within the latency target (its quota is 10-25 calls/s for the
//! whole account and cannot be raised).
//!
//! One task per tracker sweeps every batched stream of a log group every `sweep_interval`:
//! - streams already caught up ("live") with one query by stream-name prefix when they share one
//!   (mfbatch's streams all start `mfbatch-<hash>/`), else in batches of up to 100 names;
//! - new streams in their own name batches from their start, so they do not drag the live
//!   window back, and join the live set after one complete sweep — or, when their job started
//!   near the live window, in the live query from the start.
//!
//! A query reads from each stream's cursor less an overlap (late-ingested lines come back) up to
//! the sweep's start, every page; cursors move only after a query read to its end. Events are
//! deduplicated per stream by event id over the overlap window, so every line is delivered
//! exactly once, in each stream's order. A name batch refused because one stream does not exist
//! yet is halved until the missing one is found; it is retried on the next sweep. A stream ends
//! on its end records, or with the same drain rule as the per-stream follower.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::FilteredLogEvent;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::budget::RateBudget;
use super::logs::{FollowEnd, StreamRef};
use super::TrackerConfig;
use crate::bootstrap::end_record::{EndRecord, EndRecords};
use crate::error::{AwsError, AwsErrorKind, Service};
use crate::event::{Event, EventSink};

/// FilterLogEvents takes at most this many stream names.
const MAX_NAMES: usize = 100;
/// A shared prefix at least this long is specific enough to sweep by (`mfbatch-` and more).
const MIN_PREFIX: usize = "mfbatch-".len();
/// How many event ids a page may carry.
const PAGE_LIMIT: i32 = 10_000;
/// Queries read events time-stamped up to this far past the sweep's start: a container's clock
/// may run ahead of ours, and a line read early is simply not read again (its id is kept). The
/// cursor itself never passes the sweep's start, so nothing ingested later is skipped.
const FUTURE_ALLOWANCE_MS: i64 = 5 * 60 * 1000;
/// A new stream that starts at most this long before the live window joins the live query.
const JOIN_WINDOW_MS: i64 = 10_000;
/// New streams that all started within this long catch up in one prefix query.
const PREFIX_CATCH_UP_MS: i64 = 5 * 60 * 1000;
/// A stream's lines are read from this long before its job's `startedAt` (clock skew).
const START_MARGIN_MS: i64 = 5_000;
/// The most a query reads again for late-ingested lines.
const MAX_OVERLAP: Duration = Duration::from_secs(120);
/// A page failing this many times in a row ends the sweep (its cursors stay for the next).
const MAX_PAGE_FAILURES: u32 = 8;
/// Lagging is reported at most this often.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(30);

/// How a batched stream ended.
#[derive(Debug)]
pub enum SweepEnd {
    Ended(FollowEnd),
    /// FilterLogEvents is not allowed (IAM): nothing was delivered, read it per stream.
    UsePerStream,
}

/// What the sweeps are doing, for statistics and heartbeats.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SweepStats {
    /// Streams read by sweeps now.
    pub streams: usize,
    /// How far behind now the oldest live stream's cursor was at the end of the last sweep.
    pub lag_ms: u64,
    /// The overlap each query reads again, for late-ingested lines.
    pub overlap_ms: u64,
    /// Sweeps completed.
    pub sweeps: u64,
}

/// A handle to the tracker's sweeper task (started on first use).
#[derive(Clone)]
pub struct Sweeper {
    registrations: mpsc::UnboundedSender<Registration>,
    stats: Arc<Mutex<SweepStats>>,
}

struct Registration {
    stream: StreamRef,
    done: watch::Receiver<Option<Instant>>,
    events: EventSink,
    end: oneshot::Sender<SweepEnd>,
}

impl Sweeper {
    pub fn start(
        client: aws_sdk_cloudwatchlogs::Client,
        budget: Arc<RateBudget>,
        config: TrackerConfig,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(SweepStats {
            overlap_ms: config.sweep_overlap.as_millis() as u64,
            ..Default::default()
        }));
        let state = SweepState {
            client,
            budget,
            overlap: config.sweep_overlap,
            config,
            groups: HashMap::new(),
            stats: stats.clone(),
            last_lag_report: None,
        };
        tokio::spawn(state.run(rx));
        Sweeper {
            registrations: tx,
            stats,
        }
    }

    /// Reads `stream` in the sweeps until it ends.
    pub async fn follow(
        &self,
        stream: StreamRef,
        done: watch::Receiver<Option<Instant>>,
        events: EventSink,
    ) -> SweepEnd {
        let (end, ended) = oneshot::channel();
        let registration = Registration {
            stream,
            done,
            events,
            end,
        };
        if self.registrations.send(registration).is_err() {
            return SweepEnd::UsePerStream;
        }
        ended.await.unwrap_or(SweepEnd::UsePerStream)
    }

    pub fn stats(&self) -> SweepStats {
        self.stats.lock().expect("stats lock").clone()
    }
}

/// One batched stream.
struct Swept {
    stream: StreamRef,
    events: EventSink,
    done: watch::Receiver<Option<Instant>>,
    end: Option<oneshot::Sender<SweepEnd>>,
    /// Events from `cursor - overlap` on are read again by the next query.
    cursor_ms: i64,
    /// Caught up: read by the live query.
    live: bool,
    /// This sweep takes its events from here on (its cursor less the overlap once live): a
    /// query that starts earlier for other streams' sake must not hand it lines it already
    /// delivered and no longer remembers.
    read_from_ms: i64,
    /// Delivered event ids (hashed: 10,000 busy streams keep hundreds of thousands of them)
    /// and their timestamps, within the overlap window.
    seen: HashMap<u64, i64>,
    records: EndRecords,
    last_data: Option<Instant>,
    /// When the last query that read this stream to its end started.
    swept_at: Option<Instant>,
    /// Something was delivered (a denial afterwards cannot hand it to another path).
    delivered: bool,
}

impl Swept {
    fn finish(&mut self, end: SweepEnd) {
        if let Some(tx) = self.end.take() {
            let _ = tx.send(end);
        }
    }

    fn finished(&self) -> bool {
        self.end.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

/// One query of a sweep.
enum Query {
    Prefix(String),
    Names(Vec<String>),
}

struct SweepState {
    client: aws_sdk_cloudwatchlogs::Client,
    budget: Arc<RateBudget>,
    config: TrackerConfig,
    overlap: Duration,
    /// Streams by group, then by name.
    groups: HashMap<String, HashMap<String, Swept>>,
    stats: Arc<Mutex<SweepStats>>,
    last_lag_report: Option<Instant>,
}

impl SweepState {
    async fn run(mut self, mut registrations: mpsc::UnboundedReceiver<Registration>) {
        loop {
            if self.groups.is_empty() {
                match registrations.recv().await {
                    Some(r) => self.add(r),
                    None => return,
                }
            }
            while let Ok(r) = registrations.try_recv() {
                self.add(r);
            }
            let started = Instant::now();
            let groups: Vec<String> = self.groups.keys().cloned().collect();
            for group in groups {
                self.sweep_group(&group).await;
            }
            self.end_streams();
            self.report(started);
            tokio::time::sleep_until(started + self.config.sweep_interval).await;
        }
    }

    fn add(&mut self, r: Registration) {
        let swept = Swept {
            // From `--since`, else from a little before the job started (clocks differ), else
            // from the stream's beginning.
            cursor_ms: r
                .stream
                .start_time_ms
                .or(r.stream.started_at_ms.map(|t| t - START_MARGIN_MS))
                .unwrap_or(0),
            stream: r.stream,
            events: r.events,
            done: r.done,
            end: Some(r.end),
            live: false,
            read_from_ms: 0,
            seen: HashMap::new(),
            records: EndRecords::default(),
            last_data: None,
            swept_at: None,
            delivered: false,
        };
        self.groups
            .entry(swept.stream.group.clone())
            .or_default()
            .insert(swept.stream.stream.clone(), swept);
    }

    /// The live query (by prefix or names), then the catch-up of new streams. A new stream
    /// whose job started near the live window joins the live query; many new streams that
    /// share a prefix and started recently catch up in one prefix query rather than in
    /// batches of 100 names. Each stream only takes events from its own window (see
    /// [`Swept::read_from_ms`]), whatever window its query had to read.
    async fn sweep_group(&mut self, group: &str) {
        let (end_ms, started) = (epoch_ms(), Instant::now());
        let overlap = self.overlap.as_millis() as i64;
        let Some(streams) = self.groups.get_mut(group) else {
            return;
        };
        let live_start = streams
            .values()
            .filter(|s| s.live && !s.finished())
            .map(|s| s.cursor_ms - overlap)
            .min();
        let mut live: Vec<(String, i64)> = Vec::new();
        let mut catching: Vec<(String, i64)> = Vec::new();
        for (name, s) in streams.iter_mut().filter(|(_, s)| !s.finished()) {
            let joins = s.stream.started_at_ms.is_some()
                && live_start.is_none_or(|start| s.cursor_ms >= start - JOIN_WINDOW_MS);
            s.read_from_ms = if s.live {
                s.cursor_ms - overlap
            } else {
                s.cursor_ms
            };
            if s.live || joins {
                live.push((name.clone(), s.read_from_ms));
            } else {
                catching.push((name.clone(), s.read_from_ms));
            }
        }
        for (query, names, start) in queries(live) {
            self.sweep(group, query, &names, (start, end_ms, started))
                .await;
        }
        let recent = catching
            .iter()
            .all(|(_, from)| *from >= end_ms - PREFIX_CATCH_UP_MS);
        if catching.len() > MAX_NAMES && recent {
            for (query, names, start) in queries(catching) {
                self.sweep(group, query, &names, (start, end_ms, started))
                    .await;
            }
        } else {
            catching.sort_by_key(|(_, from)| *from);
            for chunk in catching.chunks(MAX_NAMES) {
                let start = chunk.iter().map(|(_, from)| *from).min().unwrap_or(0);
                let names: Vec<String> = chunk.iter().map(|(n, _)| n.clone()).collect();
                self.sweep(
                    group,
                    Query::Names(names.clone()),
                    &names,
                    (start, end_ms, started),
                )
                .await;
            }
        }
    }

    /// Runs one query to its end and moves the covered streams' cursors; a name batch refused
    /// for a missing stream is halved until the missing one is alone (it is tried again on
    /// the next sweep).
    async fn sweep(
        &mut self,
        group: &str,
        query: Query,
        covered: &[String],
        (start_ms, end_ms, started): (i64, i64, Instant),
    ) {
        let mut pending = vec![(query, covered.to_vec())];
        while let Some((query, covered)) = pending.pop() {
            let set: HashSet<&str> = covered.iter().map(String::as_str).collect();
            let by_prefix = matches!(query, Query::Prefix(_));
            match self.read(group, &query, start_ms, end_ms, &set).await {
                Ok(()) => self.advance(group, &covered, (end_ms, started), by_prefix),
                Err(err) if err.kind == AwsErrorKind::NotFound => {
                    if let Query::Names(names) = &query {
                        if names.len() > 1 {
                            let (a, b) = names.split_at(names.len() / 2);
                            pending.push((Query::Names(a.to_vec()), a.to_vec()));
                            pending.push((Query::Names(b.to_vec()), b.to_vec()));
                        }
                    }
                }
                Err(err)
                    if matches!(
                        err.kind,
                        AwsErrorKind::AccessDenied | AwsErrorKind::Credentials
                    ) =>
                {
                    self.denied(group, &covered, err);
                }
                // Throttling, a 5xx, the network: the cursors stay, the next sweep reads again.
                Err(err) => {
                    if err.kind == AwsErrorKind::Throttled {
                        self.budget.throttled();
                    }
                }
            }
        }
    }

    /// Every page of one query, delivered as it comes.
    async fn read(
        &mut self,
        group: &str,
        query: &Query,
        start_ms: i64,
        end_ms: i64,
        covered: &HashSet<&str>,
    ) -> Result<(), AwsError> {
        let mut token: Option<String> = None;
        let mut failures = 0;
        loop {
            self.budget.acquire().await;
            let mut request = self
                .client
                .filter_log_events()
                .log_group_name(group)
                .start_time(start_ms.max(0))
                .end_time(end_ms + FUTURE_ALLOWANCE_MS)
                .limit(PAGE_LIMIT)
                .set_next_token(token.clone());
            request = match query {
                Query::Prefix(prefix) => request.log_stream_name_prefix(prefix),
                Query::Names(names) => request.set_log_stream_names(Some(names.clone())),
            };
            let page = match request.send().await {
                Ok(page) => page,
                Err(e) => {
                    let err = AwsError::from_sdk(Service::Logs, "FilterLogEvents", e);
                    // Throttling and 5xx: the same page again (the budget slows down), so a
                    // sweep of many pages still ends under heavy throttling.
                    let retryable =
                        matches!(err.kind, AwsErrorKind::Throttled | AwsErrorKind::Other);
                    failures += 1;
                    if !retryable || failures > MAX_PAGE_FAILURES {
                        return Err(err);
                    }
                    if err.kind == AwsErrorKind::Throttled {
                        self.budget.throttled();
                    }
                    continue;
                }
            };
            failures = 0;
            self.budget.succeeded();
            self.deliver(group, page.events(), covered);
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(());
            }
        }
    }

    /// Hands a page's events to their streams: once each, records kept apart, in order.
    fn deliver(&mut self, group: &str, page: &[FilteredLogEvent], covered: &HashSet<&str>) {
        let Some(streams) = self.groups.get_mut(group) else {
            return;
        };
        let now = Instant::now();
        let mut max_lag_ms: i64 = 0;
        for e in page {
            // A query delivers to the streams it is for: the live query never gets ahead of a
            // stream still catching up from its start (nor serves another process's stream
            // under the same prefix).
            let Some(name) = e.log_stream_name().filter(|n| covered.contains(n)) else {
                continue;
            };
            let Some(s) = streams.get_mut(name) else {
                continue;
            };
            let timestamp = e.timestamp().unwrap_or_default();
            if s.finished() || s.records.complete().is_some() || timestamp < s.read_from_ms {
                continue;
            }
            let timestamp = e.timestamp().unwrap_or_default();
            if s.seen
                .insert(id_hash(e.event_id().unwrap_or_default()), timestamp)
                .is_some()
            {
                continue;
            }
            if let Some(ingested) = e.ingestion_time() {
                // How late lines become readable decides how much each query reads again.
                max_lag_ms = max_lag_ms.max(ingested - timestamp);
            }
            let message = e.message().unwrap_or_default();
            if let Some(record) = s
                .stream
                .end_nonce
                .as_deref()
                .and_then(|nonce| EndRecord::parse(message, nonce))
            {
                s.records.add(record);
                continue;
            }
            s.last_data = Some(now);
            s.delivered = true;
            (s.events)(Event::Log {
                job_id: s.stream.job_id.clone(),
                job_name: s.stream.job_name.clone(),
                attempt: s.stream.attempt,
                timestamp_ms: timestamp,
                message: message.to_owned(),
            });
        }
        for s in streams.values_mut() {
            if let Some(end) = s.records.complete() {
                s.finish(SweepEnd::Ended(FollowEnd::Complete(end)));
            }
        }
        self.widen_overlap(max_lag_ms);
    }

    /// The overlap covers twice the worst ingestion lag seen lately plus 5 s (CloudWatch makes
    /// lines readable 5-20 s after they were written), within the configured minimum and 2 min;
    /// it shrinks back slowly when lines come faster again.
    fn widen_overlap(&mut self, lag_ms: i64) {
        let wanted = Duration::from_millis((2 * lag_ms.max(0) + 5_000) as u64)
            .clamp(self.config.sweep_overlap, MAX_OVERLAP);
        self.overlap = if wanted > self.overlap {
            wanted
        } else {
            // Back towards what the lines need, by 1% a page.
            self.overlap
                .mul_f64(0.99)
                .max(wanted)
                .max(self.config.sweep_overlap)
        };
    }

    /// A query read to its end: its streams are read up to `end_ms`, and ids older than the
    /// next query's window are forgotten.
    fn advance(
        &mut self,
        group: &str,
        covered: &[String],
        (end_ms, started): (i64, Instant),
        by_prefix: bool,
    ) {
        // Ids stay as long as a later query can return their events again.
        let keep_from = end_ms - self.overlap.as_millis() as i64 - 1_000;
        let Some(streams) = self.groups.get_mut(group) else {
            return;
        };
        for name in covered {
            if let Some(s) = streams.get_mut(name) {
                // A prefix query does not say whether a stream exists: one that joined it and
                // got nothing may appear later with older lines, so it is read by name from its
                // start until it has delivered something.
                if by_prefix && !s.live && !s.delivered {
                    continue;
                }
                s.cursor_ms = s.cursor_ms.max(end_ms);
                s.swept_at = Some(started);
                s.live = true;
                s.seen.retain(|_, t| *t >= keep_from);
            }
        }
    }

    /// FilterLogEvents is denied: streams that got nothing go back to per-stream reading;
    /// the others end with the error (their lines so far were delivered).
    fn denied(&mut self, group: &str, covered: &[String], err: AwsError) {
        let Some(streams) = self.groups.get_mut(group) else {
            return;
        };
        let err = Arc::new(err);
        for name in covered {
            if let Some(s) = streams.get_mut(name) {
                if s.delivered {
                    let copy = AwsError {
                        service: err.service,
                        call: err.call,
                        code: err.code.clone(),
                        message: err.message.clone(),
                        kind: err.kind,
                        source: Box::new(std::io::Error::other(err.to_string())),
                    };
                    s.finish(SweepEnd::Ended(FollowEnd::Failed(copy)));
                } else {
                    s.finish(SweepEnd::UsePerStream);
                }
            }
        }
    }

    /// Drains streams whose job ended and that have been quiet long enough (no end records
    /// came), and forgets the streams that ended.
    fn end_streams(&mut self) {
        let (quiet, max) = (self.config.drain_quiet, self.config.drain_max);
        for streams in self.groups.values_mut() {
            for s in streams.values_mut() {
                let Some(done) = *s.done.borrow() else {
                    continue;
                };
                let quiet_since = s.last_data.map_or(done, |d| d.max(done));
                // Quiet means a complete sweep that started after the quiet window found nothing
                // (failed sweeps prove nothing). A stream that never appeared is given up at the
                // drain limit.
                let proven_quiet = s.swept_at.is_some_and(|at| at >= quiet_since + quiet);
                if proven_quiet || done.elapsed() >= max {
                    s.finish(SweepEnd::Ended(FollowEnd::Drained));
                }
            }
            streams.retain(|_, s| !s.finished());
        }
        self.groups.retain(|_, streams| !streams.is_empty());
    }

    /// Statistics, and a `lagging` event when the live streams' cursors fall behind the
    /// latency target (a log volume beyond what the read quota allows).
    fn report(&mut self, _started: Instant) {
        let now_ms = epoch_ms();
        let oldest = self
            .groups
            .values()
            .flat_map(|g| g.values())
            .filter(|s| s.live)
            .map(|s| s.cursor_ms)
            .min();
        let lag_ms = oldest.map_or(0, |c| (now_ms - c).max(0) as u64);
        let streams = self.groups.values().map(HashMap::len).sum();
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.streams = streams;
            stats.lag_ms = lag_ms;
            stats.overlap_ms = self.overlap.as_millis() as u64;
            stats.sweeps += 1;
        }
        let behind = Duration::from_millis(lag_ms);
        let due = self
            .last_lag_report
            .is_none_or(|t| t.elapsed() >= LAG_REPORT_EVERY);
        if behind <= self.config.latency_target || !due {
            return;
        }
        self.last_lag_report = Some(Instant::now());
        let mut told: Vec<*const ()> = Vec::new();
        for s in self.groups.values().flat_map(|g| g.values()) {
            let key = Arc::as_ptr(&s.events) as *const ();
            if told.contains(&key) {
                continue;
            }
            told.push(key);
            (s.events)(Event::Lagging {
                behind_seconds: behind.as_secs(),
                streams,
            });
        }
    }
}

/// A 64-bit hash of an event id: ids are per stream, so a collision is as unlikely as 64 bits
/// make it, and the set stays small.
fn id_hash(id: &str) -> u64 {
    use std::hash::Hasher;
    // Fixed keys: the same id always hashes the same.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(id.as_bytes());
    h.finish()
}

/// The queries that read `streams` (name, read-from): one by their common prefix when they
/// have one, else batches of up to 100 names; each with the earliest read-from of its streams.
fn queries(streams: Vec<(String, i64)>) -> Vec<(Query, Vec<String>, i64)> {
    let Some(start) = streams.iter().map(|(_, from)| *from).min() else {
        return Vec::new();
    };
    let names: Vec<String> = streams.iter().map(|(n, _)| n.clone()).collect();
    if let Some(prefix) = common_prefix(&names).filter(|p| p.len() >= MIN_PREFIX) {
        return vec![(Query::Prefix(prefix), names, start)];
    }
    streams
        .chunks(MAX_NAMES)
        .map(|chunk| {
            let names: Vec<String> = chunk.iter().map(|(n, _)| n.clone()).collect();
            let start = chunk.iter().map(|(_, from)| *from).min().unwrap_or(start);
            (Query::Names(names.clone()), names, start)
        })
        .collect()
}

/// The longest prefix every name shares.
fn common_prefix(names: &[String]) -> Option<String> {
    let first = names.first()?;
    let mut len = first.len();
    for name in &names[1..] {
        len = first
            .bytes()
            .zip(name.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    // Never cut a UTF-8 character.
    while !first.is_char_boundary(len) {
        len -= 1;
    }
    Some(first[..len].to_owned())
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_prefix_of_stream_names() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            common_prefix(&names(&["mfbatch-ab/default/1", "mfbatch-ab/default/2"])).unwrap(),
            "mfbatch-ab/default/"
        );
        assert_eq!(
            common_prefix(&names(&["mfbatch-ab/default/1", "mfbatch-cd/default/2"])).unwrap(),
            "mfbatch-"
        );
        assert_eq!(common_prefix(&names(&["a", "b"])).unwrap(), "");
        assert_eq!(common_prefix(&names(&["ü1", "ü2"])).unwrap(), "ü");
        assert_eq!(common_prefix(&[]), None);
    }
}
