//! One connection's output: a control lane (answers, connection events) served first, and a
//! queue per followed job, served round-robin, written by one task that owns the stream.
//!
//! A job's events keep their order in its queue, so its `exited` never overtakes its last line.
//! Nothing is dropped or merged: log lines are held back before they are read instead (each job's
//! queue has a [`LogCredit`] that its log followers wait for), and everything else is bounded by
//! construction (a few events per job and one answer per request).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::protocol::event_line;
use crate::track::LogCredit;

/// Identifies one job's queue within a connection.
pub type QueueId = u64;

/// How many messages the writer takes per lock.
const BATCH: usize = 256;

/// An event waiting to be written, with the log credit it holds.
struct Queued {
    event: Value,
    credit: Option<(Arc<LogCredit>, u64)>,
}

enum Message {
    /// A complete message (an answer).
    Answer(Value),
    /// An event; its `seq` is given when written.
    Event(Queued),
}

#[derive(Default)]
struct State {
    control: VecDeque<Message>,
    jobs: HashMap<QueueId, VecDeque<Queued>>,
    /// Queues with something to write, in turn.
    ready: VecDeque<QueueId>,
    next_queue: QueueId,
    closed: bool,
    queued: usize,
}

/// A connection's pending output.
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    /// The connection's whole log window; each job's credit is within it.
    pub credit: Arc<LogCredit>,
    per_job_window: u64,
}

/// Counters for heartbeats and `status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Backlog {
    pub queued_events: usize,
    pub queued_log_bytes: u64,
}

impl Outbox {
    pub fn new(window: u64, per_job_window: u64) -> Arc<Self> {
        Arc::new(Outbox {
            state: Mutex::default(),
            wake: Notify::new(),
            credit: LogCredit::new(window, None),
            per_job_window,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }

    /// A new job queue and the credit its log followers wait for.
    pub fn open_queue(&self) -> (QueueId, Arc<LogCredit>) {
        let mut state = self.lock();
        state.next_queue += 1;
        let id = state.next_queue;
        state.jobs.insert(id, VecDeque::new());
        (
            id,
            LogCredit::new(self.per_job_window, Some(self.credit.clone())),
        )
    }

    pub fn answer(&self, message: Value) {
        self.push_control(Message::Answer(message));
    }

    /// An event of the connection itself (heartbeat, error).
    pub fn event(&self, event: Value) {
        self.push_control(Message::Event(Queued {
            event,
            credit: None,
        }));
    }

    fn push_control(&self, message: Message) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.control.push_back(message);
        state.queued += 1;
        drop(state);
        self.wake.notify_one();
    }

    /// A job's event; a log line counts `log_bytes` against `credit` until written.
    pub fn job_event(&self, queue: QueueId, event: Value, credit: Option<(Arc<LogCredit>, u64)>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if let Some((credit, bytes)) = &credit {
            credit.take(*bytes);
        }
        let State {
            jobs,
            ready,
            queued,
            ..
        } = &mut *state;
        let Some(jobs_queue) = jobs.get_mut(&queue) else {
            return;
        };
        if jobs_queue.is_empty() {
            ready.push_back(queue);
        }
        jobs_queue.push_back(Queued { event, credit });
        *queued += 1;
        drop(state);
        self.wake.notify_one();
    }

    /// Forgets a job queue once what it holds was written.
    pub fn close_queue(&self, queue: QueueId) {
        let mut state = self.lock();
        if state.jobs.get(&queue).is_some_and(VecDeque::is_empty) {
            state.jobs.remove(&queue);
        }
    }

    /// No more messages are taken; the writer ends once the queues are empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    pub fn backlog(&self) -> Backlog {
        Backlog {
            queued_events: self.lock().queued,
            queued_log_bytes: self.credit.used(),
        }
    }

    /// Whether everything queued was written.
    pub fn is_empty(&self) -> bool {
        self.lock().queued == 0
    }

    /// Up to [`BATCH`] messages: the control lane first, then one event per job queue in turn.
    fn take(&self, out: &mut Vec<Message>) -> bool {
        let mut state = self.lock();
        let State {
            control,
            jobs,
            ready,
            queued,
            closed,
            ..
        } = &mut *state;
        while out.len() < BATCH {
            if let Some(message) = control.pop_front() {
                out.push(message);
                continue;
            }
            let Some(id) = ready.pop_front() else { break };
            let Some(queue) = jobs.get_mut(&id) else {
                continue;
            };
            if let Some(item) = queue.pop_front() {
                out.push(Message::Event(item));
            }
            if !queue.is_empty() {
                ready.push_back(id);
            }
        }
        *queued -= out.len();
        !out.is_empty() || !*closed
    }

    /// Writes until closed and empty, or until the stream fails (the reader is gone).
    pub async fn run_writer<W: AsyncWrite + Unpin>(&self, writer: W) -> std::io::Result<()> {
        let mut writer = tokio::io::BufWriter::with_capacity(64 * 1024, writer);
        let mut seq = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let waiting = self.wake.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            if !self.take(&mut batch) {
                writer.flush().await?;
                return Ok(());
            }
            if batch.is_empty() {
                writer.flush().await?;
                waiting.await;
                continue;
            }
            for message in batch.drain(..) {
                let (line, credit) = match message {
                    Message::Answer(value) => (value, None),
                    Message::Event(queued) => {
                        seq += 1;
                        (event_line(seq, queued.event), queued.credit)
                    }
                };
                let mut bytes = serde_json::to_vec(&line).expect("serializes");
                bytes.push(b'\n');
                writer.write_all(&bytes).await?;
                if let Some((credit, n)) = credit {
                    credit.give(n);
                }
            }
        }
    }
}
