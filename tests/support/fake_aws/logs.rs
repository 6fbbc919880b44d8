//! The fake's CloudWatch Logs: groups of streams of `(timestamp_ms, message)` events, read with
//! GetLogEvents' token protocol (JSON 1.1, `POST /` with `x-amz-target: Logs_20140328.<op>`).
//!
//! Tokens: `f/<56 digits>` reads forward from a position, `b/<56 digits>` backward. At the end of
//! the data GetLogEvents answers the SAME `nextForwardToken` it was sent, as CloudWatch does; an
//! injected empty page answers a different token for the same position.

use serde_json::{json, Value};
use wiremock::{Request, ResponseTemplate};

use super::{now_ms, State};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

#[derive(Debug, Default)]
pub(super) struct LogStream {
    pub(super) events: Vec<(i64, String)>,
    /// Each event's ingestion time and event id, assigned when a reader first could see it
    /// (events are appended under the lock, so that is when it was ingested).
    ingested: Vec<(i64, u64)>,
    pub(super) pending: Vec<Pending>,
    /// GetLogEvents calls served so far.
    reads: usize,
    /// GetLogEvents calls still to answer "does not exist".
    pub(super) missing_reads: usize,
    created: i64,
}

/// Lines held back until their release.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) release: Release,
    pub(super) lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Release {
    /// Once this job has ended.
    JobDone(String),
    /// Once the stream has been read this many times.
    AfterReads(usize),
}

/// The operation a Logs request calls, and its body.
pub(super) fn operation(req: &Request) -> (String, Value) {
    let target = req
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let op = target.strip_prefix("Logs_20140328.").unwrap_or(target);
    (
        op.to_owned(),
        serde_json::from_slice(&req.body).unwrap_or(Value::Null),
    )
}

/// A Logs error: HTTP status and `{"__type": code, "message": ...}`.
pub(super) fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        serde_json::to_vec(&json!({"__type": code, "message": message})).expect("serializes"),
        CONTENT_TYPE,
    )
}

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_raw(serde_json::to_vec(&body).expect("serializes"), CONTENT_TYPE)
}

fn not_found(what: &str) -> ResponseTemplate {
    error(
        400,
        "ResourceNotFoundException",
        &format!("The specified {what} does not exist."),
    )
}

fn invalid(message: &str) -> ResponseTemplate {
    error(400, "InvalidParameterException", message)
}

fn filter_token((t, i, id): (i64, i64, u64)) -> String {
    format!("flt/{t}/{i}/{id}")
}

fn parse_filter_token(token: &str) -> Option<(i64, i64, u64)> {
    let mut parts = token.strip_prefix("flt/")?.split('/');
    let key = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(key)
}

fn token(direction: char, salt: u64, position: usize) -> String {
    format!("{direction}/{salt:016}{position:040}")
}

fn parse_token(token: &str) -> Option<(char, u64, usize)> {
    let (direction, digits) = token.split_once('/')?;
    let direction = match direction {
        "f" => 'f',
        "b" => 'b',
        _ => return None,
    };
    if digits.len() != 56 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        direction,
        digits[..16].parse().ok()?,
        digits[16..].parse().ok()?,
    ))
}

impl LogStream {
    /// Gives every event appended since the last look its ingestion time (now: events are
    /// appended under the lock, so that is when they became readable) and event id.
    pub(super) fn ingest(&mut self, next_id: &mut u64) {
        let now = now_ms();
        while self.ingested.len() < self.events.len() {
            *next_id += 1;
            self.ingested.push((now, *next_id));
        }
    }
}

impl State {
    /// Appends events to a stream, ingested now (readable at once, as a writer's lines are).
    pub(super) fn append(&mut self, group: &str, stream: &str, events: Vec<(i64, String)>) {
        let mut next_id = self.next_event_id;
        let s = self.stream_mut(group, stream);
        s.events.extend(events);
        s.ingest(&mut next_id);
        self.next_event_id = next_id;
    }

    pub(super) fn stream_mut(&mut self, group: &str, stream: &str) -> &mut LogStream {
        self.log_groups
            .entry(group.to_owned())
            .or_default()
            .entry(stream.to_owned())
            .or_insert_with(|| LogStream {
                created: now_ms(),
                ..Default::default()
            })
    }

    /// Makes pending lines whose release matches visible, timestamped now.
    pub(super) fn release(
        &mut self,
        group: &str,
        stream: &str,
        matches: impl Fn(&Release) -> bool,
    ) {
        let Some(s) = self
            .log_groups
            .get_mut(group)
            .and_then(|g| g.get_mut(stream))
        else {
            return;
        };
        let (due, kept): (Vec<Pending>, Vec<Pending>) =
            s.pending.drain(..).partition(|p| matches(&p.release));
        s.pending = kept;
        let lines: Vec<String> = due.into_iter().flat_map(|p| p.lines).collect();
        let events: Vec<(i64, String)> =
            lines.into_iter().map(|l| (self.next_log_ms(), l)).collect();
        self.stream_mut(group, stream).events.extend(events);
    }

    pub(super) fn logs(&mut self, op: &str, body: &Value) -> ResponseTemplate {
        match op {
            "GetLogEvents" => self.get_log_events(body),
            "FilterLogEvents" => self.filter_log_events(body),
            "DescribeLogStreams" => self.describe_log_streams(body),
            other => error(
                400,
                "UnknownOperationException",
                &format!("the fake does not implement {other}"),
            ),
        }
    }

    fn get_log_events(&mut self, body: &Value) -> ResponseTemplate {
        let group = body["logGroupName"]
            .as_str()
            .or_else(|| body["logGroupIdentifier"].as_str())
            .unwrap_or_default()
            .to_owned();
        let name = body["logStreamName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let limit = match body["limit"].as_i64() {
            None => 10_000,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => return invalid("limit must be between 1 and 10000"),
        }
        .min(self.log_page_size);
        let sent_token = body["nextToken"].as_str().map(str::to_owned);
        let parsed = match &sent_token {
            Some(t) => match parse_token(t) {
                Some(p) => Some(p),
                None => return invalid("The specified nextToken is invalid."),
            },
            None => None,
        };
        let start_from_head = body["startFromHead"].as_bool().unwrap_or(false);
        let (start_time, end_time) = (body["startTime"].as_i64(), body["endTime"].as_i64());

        match self
            .log_groups
            .get_mut(&group)
            .and_then(|g| g.get_mut(&name))
        {
            None => return not_found("log stream"),
            Some(s) if s.missing_reads > 0 => {
                s.missing_reads -= 1;
                return not_found("log stream");
            }
            Some(_) => {}
        }
        let reads = self.log_groups[&group][&name].reads;
        self.release(
            &group,
            &name,
            |r| matches!(r, Release::AfterReads(n) if reads >= *n),
        );
        let empty_every = self.empty_log_page_every;
        let mut next_id = self.next_event_id;
        let stream = self.stream_mut(&group, &name);
        stream.ingest(&mut next_id);
        stream.reads += 1;
        let stream_events = stream.events.len();
        let _ = stream_events;
        self.next_event_id = next_id;
        let stream = self.stream_mut(&group, &name);
        let events: Vec<&(i64, String)> = stream
            .events
            .iter()
            .filter(|(t, _)| start_time.is_none_or(|s| *t >= s) && end_time.is_none_or(|e| *t < e))
            .collect();
        let len = events.len();

        let (direction, salt, position) = match parsed {
            Some(p) => p,
            None if start_from_head => ('f', 0, 0),
            // No token, not from the head: the newest page.
            None => ('b', 0, len),
        };
        let position = position.min(len);
        let (from, to) = match direction {
            'f' => (position, (position + limit).min(len)),
            _ => (position.saturating_sub(limit), position),
        };
        let page: Vec<Value> = events[from..to]
            .iter()
            .map(|(t, m)| json!({"timestamp": t, "message": m, "ingestionTime": t}))
            .collect();
        let had_data = !page.is_empty();
        let forward_read = direction == 'f' && parsed.is_some();
        if forward_read && had_data && empty_every > 0 {
            self.forward_data_reads += 1;
            if self.forward_data_reads.is_multiple_of(empty_every) {
                // An empty page although data remains: a new token for the same position.
                return ok(json!({
                    "events": [],
                    "nextForwardToken": token('f', salt + 1, position),
                    "nextBackwardToken": token('b', salt + 1, position),
                }));
            }
        }
        let (next_forward, next_backward) = match direction {
            'f' if !had_data => (
                sent_token
                    .clone()
                    .unwrap_or_else(|| token('f', salt, position)),
                token('b', salt, position),
            ),
            'f' => (token('f', 0, to), token('b', 0, from)),
            _ if !had_data => (
                token('f', salt, position),
                sent_token
                    .clone()
                    .unwrap_or_else(|| token('b', salt, position)),
            ),
            _ => (token('f', 0, to), token('b', 0, from)),
        };
        ok(json!({
            "events": page,
            "nextForwardToken": next_forward,
            "nextBackwardToken": next_backward,
        }))
    }

    /// FilterLogEvents over named streams (≤100; one missing name fails the whole call, as on
    /// AWS) or a name prefix, between `startTime` and `endTime` (both inclusive), sorted by
    /// timestamp, ingestion time and event id. The token is the sort key of the last event
    /// returned, so pages stay right while events are appended.
    fn filter_log_events(&mut self, body: &Value) -> ResponseTemplate {
        let group = body["logGroupName"]
            .as_str()
            .or_else(|| body["logGroupIdentifier"].as_str())
            .unwrap_or_default()
            .to_owned();
        let names: Option<Vec<String>> = body["logStreamNames"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        });
        let prefix = body["logStreamNamePrefix"].as_str().map(str::to_owned);
        if names.is_some() && prefix.is_some() {
            return invalid("logStreamNames and logStreamNamePrefix are mutually exclusive");
        }
        if names
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 100)
        {
            return invalid("logStreamNames takes 1 to 100 names");
        }
        let limit = match body["limit"].as_i64() {
            None => 10_000,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => return invalid("limit must be between 1 and 10000"),
        }
        .min(self.log_page_size);
        let after: Option<(i64, i64, u64)> = match body["nextToken"].as_str() {
            None => None,
            Some(t) => match parse_filter_token(t) {
                Some(k) => Some(k),
                None => return invalid("The specified nextToken is invalid."),
            },
        };
        let (start, end) = (body["startTime"].as_i64(), body["endTime"].as_i64());
        let Some(streams) = self.log_groups.get_mut(&group) else {
            return not_found("log group");
        };
        if let Some(names) = &names {
            for name in names {
                match streams.get_mut(name) {
                    Some(s) if s.missing_reads == 0 => {}
                    Some(s) => {
                        s.missing_reads -= 1;
                        return not_found("log stream");
                    }
                    None => return not_found("log stream"),
                }
            }
        }
        let mut matching: Vec<(i64, i64, u64, &str, &str)> = Vec::new();
        let next_id = &mut self.next_event_id;
        for (name, s) in streams.iter_mut() {
            s.ingest(next_id);
            // A prefix read counts as a read of a stream that does not exist yet, too.
            if names.is_none() && s.missing_reads > 0 {
                let wanted = prefix.as_deref().is_none_or(|p| name.starts_with(p));
                if wanted {
                    s.missing_reads -= 1;
                }
            }
        }
        for (name, s) in streams.iter() {
            let wanted = match (&names, &prefix) {
                (Some(names), _) => names.contains(name),
                (None, Some(p)) => name.starts_with(p.as_str()),
                (None, None) => true,
            };
            if !wanted || s.missing_reads > 0 {
                continue;
            }
            for ((t, m), (ingested, id)) in s.events.iter().zip(&s.ingested) {
                if start.is_some_and(|st| *t < st) || end.is_some_and(|e| *t > e) {
                    continue;
                }
                let key = (*t, *ingested, *id);
                if after.is_some_and(|a| key <= a) {
                    continue;
                }
                matching.push((*t, *ingested, *id, name.as_str(), m.as_str()));
            }
        }
        matching.sort_by_key(|(t, i, id, _, _)| (*t, *i, *id));
        self.filter_calls += 1;
        let empty_every = self.empty_filter_page_every;
        if empty_every > 0 && !matching.is_empty() && self.filter_calls.is_multiple_of(empty_every)
        {
            // An empty page while more data remains, with a token that resumes where it was.
            let mut out = json!({ "events": [], "searchedLogStreams": [] });
            out["nextToken"] = json!(match after {
                Some(k) => filter_token(k),
                None => filter_token((i64::MIN, i64::MIN, 0)),
            });
            return ok(out);
        }
        let more = matching.len() > limit;
        let page: Vec<Value> = matching
            .iter()
            .take(limit)
            .map(|(t, ingested, id, stream, message)| {
                json!({
                    "logStreamName": stream,
                    "timestamp": t,
                    "message": message,
                    "ingestionTime": ingested,
                    "eventId": format!("{id:056}"),
                })
            })
            .collect();
        let mut out = json!({ "events": page, "searchedLogStreams": [] });
        if more {
            let (t, i, id, _, _) = matching[limit - 1];
            out["nextToken"] = json!(filter_token((t, i, id)));
        }
        ok(out)
    }

    fn describe_log_streams(&self, body: &Value) -> ResponseTemplate {
        let group = body["logGroupName"]
            .as_str()
            .or_else(|| body["logGroupIdentifier"].as_str())
            .unwrap_or_default();
        let Some(streams) = self.log_groups.get(group) else {
            return not_found("log group");
        };
        let prefix = body["logStreamNamePrefix"].as_str().unwrap_or_default();
        let limit = body["limit"].as_u64().unwrap_or(50).clamp(1, 50) as usize;
        let start: usize = body["nextToken"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let mut matching: Vec<(&String, &LogStream)> = streams
            .iter()
            .filter(|(name, s)| name.starts_with(prefix) && s.missing_reads == 0)
            .collect();
        if body["orderBy"] == "LastEventTime" {
            matching.sort_by_key(|(_, s)| s.events.last().map(|e| e.0).unwrap_or(s.created));
        }
        if body["descending"].as_bool().unwrap_or(false) {
            matching.reverse();
        }
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(limit)
            .map(|(name, s)| {
                let mut v = json!({
                    "logStreamName": name,
                    "creationTime": s.created,
                    "arn": format!("arn:aws:logs:us-east-1:123456789012:log-group:{group}:log-stream:{name}"),
                    "storedBytes": 0,
                });
                if let (Some(first), Some(last)) = (s.events.first(), s.events.last()) {
                    v["firstEventTimestamp"] = json!(first.0);
                    v["lastEventTimestamp"] = json!(last.0);
                    v["lastIngestionTime"] = json!(last.0);
                }
                v
            })
            .collect();
        let mut out = json!({ "logStreams": page });
        if start + limit < matching.len() {
            out["nextToken"] = json!((start + limit).to_string());
        }
        ok(out)
    }
}
