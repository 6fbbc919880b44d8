//! A connection's subscriptions: each followed job's events, with the client's key, the job id
//! and (for log lines) a cursor, into that job's queue of the connection's outbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::journal::Record;
use super::launcher::{Launch, Settled};
use super::outbox::QueueId;
use super::protocol::Cursor;
use super::session::Connection;
use crate::event::{Event, EventSink};
use crate::track::array::ArrayFollow;
use crate::track::nodes::NodeFollow;
use crate::track::{FollowRequest, LogCredit, TrackError};

/// Bytes a queued log line is counted for beyond its text (the envelope).
const LINE_OVERHEAD: u64 = 160;

/// One job (or launch) a connection follows.
pub struct Sub {
    pub key: Option<String>,
    pub job_id: Mutex<Option<String>>,
    pub queue: QueueId,
    pub credit: Arc<LogCredit>,
    abort: Mutex<Option<tokio::task::AbortHandle>>,
    /// Its terminal event was queued (or it was unfollowed).
    pub done: watch::Sender<bool>,
    /// Lines delivered per attempt, and how many to skip (a resumed cursor).
    lines: Mutex<(Cursor, Cursor)>,
    unfollowed: AtomicBool,
}

impl Sub {
    pub fn new(conn: &Connection, key: Option<String>, job_id: Option<String>) -> Arc<Self> {
        let (queue, credit) = conn.outbox.open_queue();
        Arc::new(Sub {
            key,
            job_id: Mutex::new(job_id),
            queue,
            credit,
            abort: Mutex::default(),
            done: watch::channel(false).0,
            lines: Mutex::default(),
            unfollowed: AtomicBool::new(false),
        })
    }

    pub fn job_id(&self) -> Option<String> {
        self.job_id.lock().expect("sub lock").clone()
    }

    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Stops following; nothing more is queued for it.
    pub fn unfollow(&self) {
        self.unfollowed.store(true, Ordering::Release);
        if let Some(abort) = self.abort.lock().expect("sub lock").take() {
            abort.abort();
        }
        self.done.send_replace(true);
    }

    /// Queues an event of this job, with its key and id.
    pub fn send(&self, conn: &Connection, mut event: Value, log_bytes: Option<u64>) {
        if self.unfollowed.load(Ordering::Acquire) {
            return;
        }
        if let Value::Object(fields) = &mut event {
            fields.insert("key".into(), json!(self.key));
            if !fields.contains_key("job_id") {
                fields.insert("job_id".into(), json!(self.job_id()));
            }
        }
        let credit = log_bytes.map(|n| (self.credit.clone(), n));
        conn.outbox.job_event(self.queue, event, credit);
    }

    /// Queues the job's last event and closes its queue.
    pub fn finish(&self, conn: &Connection, event: Value) {
        self.send(conn, event, None);
        self.done.send_replace(true);
        conn.outbox.close_queue(self.queue);
    }
}

/// The sink for one subscription: counts lines per attempt, skips those a cursor says were
/// delivered, adds the cursor to each line and the counts to `exited`.
pub fn sink(conn: &Arc<Connection>, sub: &Arc<Sub>) -> EventSink {
    let (conn, sub) = (conn.clone(), sub.clone());
    Arc::new(move |event: Event| {
        let mut value = serde_json::to_value(&event).expect("serializes");
        match &event {
            Event::Log {
                attempt, message, ..
            } => {
                let mut lines = sub.lines.lock().expect("sub lock");
                let (delivered, skip) = &mut *lines;
                let n = delivered.0.entry(*attempt).or_default();
                *n += 1;
                if *n <= skip.lines(*attempt) {
                    return;
                }
                value["cursor"] = json!(delivered.to_string());
                drop(lines);
                let bytes = message.len() as u64 + LINE_OVERHEAD;
                sub.send(&conn, value, Some(bytes));
            }
            Event::Status { job_id, status, .. } => {
                conn.daemon.set_status(job_id, *status);
                sub.send(&conn, value, None);
            }
            Event::Exited(outcome) => {
                conn.daemon.set_status(&outcome.job_id, outcome.status);
                let lines = sub.lines.lock().expect("sub lock").0.clone();
                value["log_lines"] = json!(lines.0);
                value["cursor"] = json!(lines.to_string());
                if let Some(key) = sub.key.clone() {
                    let daemon = conn.daemon.clone();
                    let record = Record::Exited {
                        key,
                        status: outcome.status.to_string(),
                        exit_code: outcome.exit_code,
                    };
                    tokio::spawn(async move { daemon.journal_append(record).await });
                }
                sub.finish(&conn, value);
            }
            // The launch's own `submitted` is sent when the launch settles, to every requester.
            Event::Submitted { .. } | Event::UploadProgress { .. } => {}
            _ => sub.send(&conn, value, None),
        }
    })
}

/// Follows `job_id` for the subscription, skipping what `cursor` says was delivered. Other
/// subscriptions (other connections) may follow the job too: its status polls are shared by
/// the tracker's poller; each reads the logs under its own credit (CloudWatch is the buffer).
pub fn start(conn: &Arc<Connection>, sub: &Arc<Sub>, job_id: String, how: How, cursor: Cursor) {
    *sub.job_id.lock().expect("sub lock") = Some(job_id.clone());
    sub.lines.lock().expect("sub lock").1 = cursor;
    let request = FollowRequest {
        without_logs: !how.logs,
        array: how.array,
        nodes: how.nodes,
        log_credit: Some(sub.credit.clone()),
        ..FollowRequest::new(job_id.clone())
    };
    let handle = conn.daemon.tracker.follow_with(request, sink(conn, sub));
    *sub.abort.lock().expect("sub lock") = Some(handle.abort_handle());
    let (conn, sub) = (conn.clone(), sub.clone());
    tokio::spawn(async move {
        match handle.wait().await {
            Ok(_) | Err(TrackError::Unfollowed { .. }) => {}
            Err(e) => {
                let event = json!({
                    "event": "follow_failed", "job_id": job_id,
                    "error": e.to_string(), "hint": e.hint(),
                });
                sub.finish(&conn, event);
            }
        }
        sub.done.send_replace(true);
    });
}

/// How to follow a job.
#[derive(Debug, Clone, Default)]
pub struct How {
    pub logs: bool,
    /// The job is an array's parent: its children's counts, failures and end.
    pub array: Option<ArrayFollow>,
    /// The job is a multi-node job: its main node's lines, the other nodes' counts and failures.
    /// Neither this nor `array`: the job's first description decides, with the default knobs.
    pub nodes: Option<NodeFollow>,
}

/// Once the launch settles: `submitted` then following (`how`, if any), or `launch_failed`.
pub fn after_launch(conn: &Arc<Connection>, sub: &Arc<Sub>, launch: Arc<Launch>, how: Option<How>) {
    let (conn, sub) = (conn.clone(), sub.clone());
    let mut settled = launch.settled.subscribe();
    tokio::spawn(async move {
        let outcome = match settled.wait_for(Option::is_some).await {
            Ok(s) => s.clone().expect("settled"),
            Err(_) => return,
        };
        match outcome {
            Settled::Submitted { job_id } => {
                *sub.job_id.lock().expect("sub lock") = Some(job_id.clone());
                sub.send(&conn, json!({"event": "submitted", "job_id": job_id}), None);
                match how.filter(|_| !conn.is_ending()) {
                    Some(how) => start(&conn, &sub, job_id, how, Cursor::default()),
                    None => {
                        sub.done.send_replace(true);
                        conn.outbox.close_queue(sub.queue);
                    }
                }
            }
            Settled::Failed { event } => sub.finish(&conn, event),
        }
    });
}
