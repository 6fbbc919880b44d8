//! Following a multi-node parallel (MNP) job as one thing: the main node `<job>#<main>` is
//! followed live by the ordinary single-job follower (its stream, its end records, its attempts
//! decide the outcome and the exit code, as Batch's do); the other nodes are only watched in the
//! shared poller, so the parent and every node share the batched DescribeJobs calls (≤100 ids per
//! call), and their statuses are counted. A failed non-main node is reported with its last lines
//! and does nothing to the job, as in Batch.
//!
//! Without node records (moto: no `#n` ids, every node writes to the parent's own stream) the
//! parent is followed as an ordinary job.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::job::{describe_error, snapshot_from, status_change};
use super::poller::{self, Update};
use super::runnable::RunnableWatch;
use super::snapshot::{self, JobSnapshot};
use super::{FollowRequest, TrackError, Tracker, MAX_IDS_PER_CALL};
use crate::bootstrap::end_record;
use crate::event::{Event, EventSink, JobStatus, Outcome, Warning};

/// How to follow a multi-node job (see [`FollowRequest::nodes`]).
#[derive(Debug, Clone)]
pub struct NodeFollow {
    /// Show the last lines of the first this many failed nodes.
    pub show_failed: usize,
    /// How many last lines of a failed node to show.
    pub tail_lines: usize,
}

impl Default for NodeFollow {
    fn default() -> Self {
        NodeFollow {
            show_failed: 3,
            tail_lines: 20,
        }
    }
}

/// What the node watches and the main node's follower tell the job's task.
enum NodeNote {
    /// A poller update for non-main node `index`.
    Polled(usize, Update),
    /// The main node's status, from its follower.
    Main(JobStatus),
    /// The main node started another attempt: Batch retries the whole job, every node anew.
    Retry,
}

/// `<job>#<index>`.
pub fn node_id(job_id: &str, index: usize) -> String {
    format!("{job_id}#{index}")
}

/// The multi-node job a node id `<job>#<index>` belongs to; `None` for any other id. A node is
/// not stopped alone: Batch ends the job with its main node, and a dead node does nothing to it.
pub fn job_of_node(id: &str) -> Option<&str> {
    id.split_once('#').map(|(job, _)| job)
}

pub(super) async fn run(
    tracker: Tracker,
    request: FollowRequest,
    mut updates: mpsc::UnboundedReceiver<Update>,
    events: EventSink,
) -> Result<Outcome, TrackError> {
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let mut job = FollowedNodes::new(&tracker, &request, &events);
    let snapshot = match job.until_started(&mut updates).await? {
        Start::Started(snapshot) => snapshot,
        Start::Fallback(snapshot) => {
            return fallback(&tracker, request, snapshot, updates, events).await
        }
    };
    let main = job.follow_main(&request, &notes_tx);
    let main_abort = main.abort_handle();
    let _main_guard = super::AbortOnDrop(main.abort_handle());
    let mut main_wait = Box::pin(main.wait());
    job.watch_nodes(&notes_tx, job.other_nodes());
    let mut last = snapshot;
    let mut parent_ended = last.status.is_terminal();
    let mut main_result = None;
    while main_result.is_none() || !parent_ended {
        tokio::select! {
            update = updates.recv(), if !parent_ended => {
                let Some(snapshot) = snapshot_from(&job.job_id, update, &events)? else {
                    continue;
                };
                let orphan = !job.main_seen && never_ran(&snapshot);
                if orphan || job.without_node_records(&snapshot) {
                    main_abort.abort();
                    return fallback(&tracker, request, snapshot, updates, events).await;
                }
                job.on_parent(&snapshot);
                parent_ended = snapshot.status.is_terminal();
                last = snapshot;
            }
            Some(note) = notes.recv() => job.on_note(note, &notes_tx).await,
            result = &mut main_wait, if main_result.is_none() => match result {
                Err(TrackError::NotFound { .. }) if !job.main_seen => {
                    return fallback(&tracker, request, last, updates, events).await;
                }
                result => {
                    // Batch ends the job once the main node exited: look often.
                    let _ = tracker.inner.poller.send(poller::Command::Hurry {
                        job_id: job.job_id.clone(),
                    });
                    main_result = Some(result);
                }
            },
        }
    }
    drop(updates);
    let mut outcome = main_result.expect("the loop waits for it")?;
    // Its end records may have decided it before its follower saw Batch's status.
    job.set_status(job.main_node, outcome.status);
    job.final_sweep().await;
    outcome.job_id.clone_from(&job.job_id);
    (events)(Event::Exited(outcome.clone()));
    Ok(outcome)
}

/// Ended without ever starting (cancelled, or failed to start): there is no node to follow. A
/// job that ran is left to its main node's follower, whichever of the two answers comes first.
fn never_ran(snapshot: &JobSnapshot) -> bool {
    snapshot.status.is_terminal() && snapshot.started_at_ms.is_none()
}

/// Follows the parent as an ordinary job, from this snapshot on. Every node's end records land
/// on its one stream, where they cannot say which node ended: they are not shown (and, with no
/// nonce in the parent's description, never decide the outcome: Batch's status does).
async fn fallback(
    tracker: &Tracker,
    request: FollowRequest,
    snapshot: JobSnapshot,
    updates: mpsc::UnboundedReceiver<Update>,
    events: EventSink,
) -> Result<Outcome, TrackError> {
    let updates = super::prepend(Update::Snapshot(Box::new(snapshot)), updates);
    let sink: EventSink = Arc::new(move |event| match &event {
        Event::Log { message, .. } if message.starts_with(end_record::PREFIX) => {}
        _ => events(event),
    });
    super::job::run(tracker.job_context(), request, updates, sink).await
}

/// The main node's events as the job's: its lines and attempts go on (lines keep the node's id);
/// its status feeds the counts (the parent's is shown) and its outcome becomes the job's.
fn main_sink(
    events: EventSink,
    parent_id: String,
    notes: mpsc::UnboundedSender<NodeNote>,
) -> EventSink {
    Arc::new(move |mut event| {
        match &mut event {
            Event::Status { status, .. } => {
                let _ = notes.send(NodeNote::Main(*status));
                return;
            }
            Event::Exited(_) => return,
            Event::AttemptStarted {
                job_id, attempt, ..
            } => {
                if *attempt > 1 {
                    let _ = notes.send(NodeNote::Retry);
                }
                job_id.clone_from(&parent_id);
            }
            Event::StepExited { job_id, .. } => job_id.clone_from(&parent_id),
            _ => {}
        }
        events(event)
    })
}

/// What following one multi-node job remembers.
struct FollowedNodes {
    tracker: Tracker,
    events: EventSink,
    follow: NodeFollow,
    job_id: String,
    job_name: String,
    num_nodes: usize,
    main_node: usize,
    status: Option<JobStatus>,
    status_since: Instant,
    /// Each node's last status, as far as seen.
    nodes: BTreeMap<usize, JobStatus>,
    counts: BTreeMap<JobStatus, usize>,
    /// Failures reported, by node and attempt (a retried job's node may fail again).
    failed: BTreeSet<(usize, usize)>,
    tails_shown: usize,
    /// Whether the main node's record was ever found.
    main_seen: bool,
}

/// How the wait for the main node ended.
enum Start {
    /// The job is STARTING or later: its nodes exist.
    Started(JobSnapshot),
    /// Followed as an ordinary job from this snapshot (no node records, or it never ran).
    Fallback(JobSnapshot),
}

impl FollowedNodes {
    fn new(tracker: &Tracker, request: &FollowRequest, events: &EventSink) -> Self {
        FollowedNodes {
            follow: request.nodes.clone().unwrap_or_default(),
            job_id: request.job_id.clone(),
            job_name: String::new(),
            num_nodes: 0,
            main_node: 0,
            status: None,
            status_since: Instant::now(),
            nodes: BTreeMap::new(),
            counts: BTreeMap::new(),
            failed: BTreeSet::new(),
            tails_shown: 0,
            main_seen: false,
            tracker: tracker.clone(),
            events: events.clone(),
        }
    }

    /// Until the main node may run, only the parent is watched (node records may not exist
    /// yet); a parent no compute environment places is warned about and stopped like any job.
    async fn until_started(
        &mut self,
        updates: &mut mpsc::UnboundedReceiver<Update>,
    ) -> Result<Start, TrackError> {
        let ctx = self.tracker.job_context();
        let mut runnable = RunnableWatch::default();
        loop {
            let Some(snapshot) = snapshot_from(&self.job_id, updates.recv().await, &self.events)?
            else {
                continue;
            };
            if runnable.stopped() && snapshot.status.is_terminal() {
                self.on_parent(&snapshot);
                return Err(RunnableWatch::timeout(&ctx, self.job_id.clone()));
            }
            if self.without_node_records(&snapshot) || never_ran(&snapshot) {
                return Ok(Start::Fallback(snapshot));
            }
            self.on_parent(&snapshot);
            if snapshot.status == JobStatus::Runnable {
                let waited = self.status_since.elapsed();
                Box::pin(runnable.check(&ctx, &snapshot, waited, &self.events)).await?;
            }
            if snapshot.status >= JobStatus::Starting {
                return Ok(Start::Started(snapshot));
            }
        }
    }

    /// Not a multi-node parent after all, or one whose nodes share its own stream (moto).
    fn without_node_records(&self, snapshot: &JobSnapshot) -> bool {
        !self.main_seen && (!snapshot.is_multinode_parent() || !snapshot.log_streams().is_empty())
    }

    /// The parent's status as an event when it changes; its node count and main node.
    fn on_parent(&mut self, snapshot: &JobSnapshot) {
        self.job_name.clone_from(&snapshot.job_name);
        if let Some(nodes) = &snapshot.nodes {
            self.num_nodes = nodes.num_nodes.unwrap_or(self.num_nodes);
            self.main_node = nodes.main_node.unwrap_or(self.main_node);
        }
        if let Some(event) = status_change(&self.job_id, snapshot, self.status, self.status_since) {
            (self.events)(event);
            self.status = Some(snapshot.status);
            self.status_since = Instant::now();
        }
    }

    /// The main node, followed as an ordinary job (its logs as the request asks). Not with the
    /// grace of an id the user typed (the node's record may come later than its job's), and
    /// never stopped alone for waiting in RUNNABLE (the job is, while it waits as a whole).
    fn follow_main(
        &self,
        request: &FollowRequest,
        notes: &mpsc::UnboundedSender<NodeNote>,
    ) -> super::JobHandle {
        let mut ctx = self.tracker.job_context();
        ctx.config.runnable_timeout = None;
        ctx.config.runnable_warning = std::time::Duration::MAX;
        self.tracker.follow_part(
            FollowRequest {
                attempt: request.attempt,
                logs_since_ms: request.logs_since_ms,
                without_logs: request.without_logs,
                log_credit: request.log_credit.clone(),
                ..FollowRequest::new(node_id(&self.job_id, self.main_node))
            },
            main_sink(self.events.clone(), self.job_id.clone(), notes.clone()),
            ctx,
        )
    }

    /// Every node but the main one.
    fn other_nodes(&self) -> Vec<usize> {
        (0..self.num_nodes)
            .filter(|i| *i != self.main_node)
            .collect()
    }

    /// Watches every node but the main one in the shared poller, status only.
    fn watch_nodes(&self, notes: &mpsc::UnboundedSender<NodeNote>, indexes: Vec<usize>) {
        let inner = &self.tracker.inner;
        for index in indexes {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let _ = inner.poller.send(poller::Command::Watch {
                job_id: node_id(&self.job_id, index),
                updates: tx,
                not_found_grace: inner.config.not_found_grace,
            });
            let notes = notes.clone();
            // Ends when the job's task does, so the poller drops the watch at once.
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        update = rx.recv() => {
                            let Some(u) = update else { return };
                            // An ended node is polled no more: every watch due soon rides in
                            // each call, so one ended node would keep the calls frequent.
                            let ended = matches!(&u, Update::Snapshot(s) if s.status.is_terminal());
                            if notes.send(NodeNote::Polled(index, u)).is_err() || ended {
                                return;
                            }
                        }
                        _ = notes.closed() => return,
                    }
                }
            });
        }
    }

    async fn on_note(&mut self, note: NodeNote, notes: &mpsc::UnboundedSender<NodeNote>) {
        match note {
            NodeNote::Main(status) => {
                self.main_seen = true;
                self.set_status(self.main_node, status);
            }
            // The ended nodes run again: watched again (their watches ended with them).
            NodeNote::Retry => {
                let ended: Vec<usize> = self
                    .other_nodes()
                    .into_iter()
                    .filter(|i| self.nodes.get(i).is_some_and(|s| s.is_terminal()))
                    .collect();
                self.watch_nodes(notes, ended);
            }
            NodeNote::Polled(index, Update::Snapshot(node)) => self.on_node(index, &node).await,
            // A node's record missing or unreadable says nothing about the job.
            NodeNote::Polled(..) => {}
        }
    }

    /// A non-main node's snapshot: the counts, and its failure with its last lines.
    async fn on_node(&mut self, index: usize, node: &JobSnapshot) {
        self.set_status(index, node.status);
        let attempt = node.attempts.len().max(1);
        if node.status != JobStatus::Failed || !self.failed.insert((index, attempt)) {
            return;
        }
        let last = node.attempts.last().unwrap_or(&node.container);
        (self.events)(Event::NodeFailed {
            job_id: self.job_id.clone(),
            node_id: node.job_id.clone(),
            node_index: index,
            exit_code: node.container.exit_code.or(last.exit_code),
            reason: node.container.reason.clone().or(last.reason.clone()),
            status_reason: node.status_reason.clone(),
        });
        if self.tails_shown >= self.follow.show_failed {
            return;
        }
        self.tails_shown += 1;
        let Some((_, stream)) = node.log_streams().pop() else {
            return;
        };
        match super::array::last_lines(&self.tracker, node, &stream, self.follow.tail_lines).await {
            Ok(lines) => (self.events)(Event::NodeLogTail {
                job_id: self.job_id.clone(),
                node_id: node.job_id.clone(),
                node_index: index,
                log_stream: stream,
                lines,
            }),
            Err(e) => (self.events)(Event::Warning(Warning::LogsUnavailable {
                job_id: node.job_id.clone(),
                reason: describe_error(&e),
            })),
        }
    }

    /// A node's status; the counts as an event when they change.
    fn set_status(&mut self, index: usize, status: JobStatus) {
        if self.nodes.insert(index, status) == Some(status) {
            return;
        }
        let mut counts = BTreeMap::new();
        for status in self.nodes.values() {
            *counts.entry(*status).or_insert(0) += 1;
        }
        if counts != self.counts {
            self.counts.clone_from(&counts);
            (self.events)(Event::NodesProgress {
                job_id: self.job_id.clone(),
                job_name: self.job_name.clone(),
                num_nodes: self.num_nodes,
                counts,
            });
        }
    }

    /// Once the job ended: the non-main nodes not yet seen ended, described in batched calls
    /// (they stop with the main node; their failures before it still count).
    async fn final_sweep(&mut self) {
        let open: Vec<String> = (0..self.num_nodes)
            .filter(|i| *i != self.main_node)
            .filter(|i| !self.nodes.get(i).is_some_and(|s| s.is_terminal()))
            .map(|i| node_id(&self.job_id, i))
            .collect();
        for chunk in open.chunks(MAX_IDS_PER_CALL) {
            let inner = &self.tracker.inner;
            inner.batch_budget.acquire().await;
            match snapshot::describe(&inner.batch, chunk).await {
                Ok(nodes) => {
                    for node in nodes {
                        if let Some(index) = node_index_of(&node) {
                            self.on_node(index, &node).await;
                        }
                    }
                }
                Err(e) => {
                    return (self.events)(Event::Warning(Warning::Notice {
                        message: format!(
                            "warning: cannot read the nodes of {}: {}",
                            self.job_id,
                            describe_error(&e)
                        ),
                    }))
                }
            }
        }
    }
}

/// A node's index: from its `nodeDetails`, else the `#<index>` suffix of its id.
fn node_index_of(node: &JobSnapshot) -> Option<usize> {
    node.nodes
        .as_ref()
        .and_then(|n| n.node_index)
        .or_else(|| node.job_id.rsplit_once('#')?.1.parse().ok())
}
