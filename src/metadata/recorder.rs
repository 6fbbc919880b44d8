//! Turns one job's events into Metaflow records: the run, step and task before SubmitJob, the
//! `aws-batch-*` metadata when the job is submitted and each attempt starts, and `attempt_ok` /
//! `attempt-done` as each attempt ends. Records go through the spool; the sender works in the
//! background, and the run's heartbeat is sent while the job is followed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::model::{Datum, Op, TaskRecord};
use super::spool::{self, Backoff, DrainEnd, Entry, Shared, Sink, SpoolFile, Target};
use super::{Backend, MetadataError};
use crate::event::{Event, EventSink};

/// What is known of the job before it is submitted.
#[derive(Debug, Clone)]
pub struct JobFacts {
    pub script: String,
    pub queue: String,
    pub region: String,
    /// `AWS_ECS_EC2` or `AWS_ECS_FARGATE`.
    pub execution_env: String,
    /// The queue's compute environment, when it has only one.
    pub compute_environment: Option<String>,
    pub package_sha256: String,
    pub package_url: String,
}

/// The task's first records, in Metaflow's order: flow, run, step, task, system metadata.
pub fn initial_ops(record: &TaskRecord, facts: &JobFacts) -> Vec<Op> {
    let code = serde_json::json!({
        "ds_type": "s3",
        "sha": facts.package_sha256,
        "location": facts.package_url,
        "metadata": "{\"format\": \"mfbatch-tgz\"}",
    });
    let data = vec![
        Datum::new("runtime", "mfbatch", 0),
        Datum::new("user", record.user.clone(), 0),
        Datum::new("script-name", facts.script.clone(), 0),
        Datum::new("code-package", code.to_string(), 0),
    ];
    vec![Op::Flow, Op::Run, Op::Step, Op::Task, Op::Metadata { data }]
}

/// The system tags of runs and tasks. `metaflow_version:` lets the service show the run's
/// heartbeat (it only does for versions from 2.2.12 on).
pub fn system_tags(user: &str) -> Vec<String> {
    vec![
        "runtime:mfbatch".to_owned(),
        format!("user:{user}"),
        format!(
            "metaflow_version:2.19.0+mfbatch.{}",
            env!("CARGO_PKG_VERSION")
        ),
    ]
}

/// How the records of a run ended up.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `FLOW/RUN/STEP/TASK`, `?` for ids not assigned yet.
    pub pathspec: String,
    pub backend: String,
    /// Records still in the spool.
    pub pending: usize,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    job_id: Option<String>,
    /// Metaflow attempts (0-based) started and not yet ended.
    open: BTreeSet<u32>,
}

/// Records one job.
pub struct Recorder {
    file: Shared,
    more: Arc<Notify>,
    sink: Sink,
    backend: Backend,
    facts: JobFacts,
    state: Mutex<State>,
    sender: Mutex<Option<JoinHandle<DrainEnd>>>,
}

impl Recorder {
    /// Writes the task's first records to the spool and starts sending them.
    pub fn start(
        backend: &Backend,
        spool_dir: &Path,
        record: TaskRecord,
        facts: JobFacts,
        backoff: Backoff,
    ) -> Result<Arc<Recorder>, MetadataError> {
        let entry = Entry {
            target: Target::of(backend),
            ops: initial_ops(&record, &facts).into(),
            record,
            closed: false,
        };
        let file = Arc::new(Mutex::new(SpoolFile::create(spool_dir, entry)?));
        let sink = match backend {
            Backend::Service(s) => Sink::Service(Box::new(super::service::ServiceClient::new(
                &s.url,
                s.headers.clone(),
            )?)),
            Backend::Local(root) => Sink::Local(super::local::LocalWriter { root: root.clone() }),
        };
        let more = Arc::new(Notify::new());
        let sender = tokio::spawn(spool::drain(
            file.clone(),
            sink.clone(),
            more.clone(),
            backoff,
        ));
        Ok(Arc::new(Recorder {
            file,
            more,
            sink,
            backend: backend.clone(),
            facts,
            state: Mutex::default(),
            sender: Mutex::new(Some(sender)),
        }))
    }

    /// The task's record, with the ids assigned so far.
    pub fn record(&self) -> TaskRecord {
        self.file.lock().expect("spool lock").entry.record.clone()
    }

    /// What the job's environment needs for the bootstrap's task heartbeat and for Metaflow
    /// inside the step: empty unless the service already assigned the task's id (never waited
    /// for: the job does not wait on the service).
    pub fn job_environment(&self) -> Vec<(String, String)> {
        let Backend::Service(service) = &self.backend else {
            return Vec::new();
        };
        let record = self.record();
        let (Some(run), Some(task)) = (&record.run_id, &record.task_id) else {
            return Vec::new();
        };
        let mut env = vec![
            ("METAFLOW_DEFAULT_METADATA".to_owned(), "service".to_owned()),
            (
                "METAFLOW_SERVICE_URL".to_owned(),
                service.internal_url.clone(),
            ),
            (
                "MFBATCH_TASK_HEARTBEAT_URL".to_owned(),
                format!(
                    "{}/flows/{}/runs/{run}/steps/{}/tasks/{task}/heartbeat",
                    service.internal_url, record.flow, record.step
                ),
            ),
        ];
        if !service.headers.is_empty() {
            let headers = serde_json::to_string(&service.headers).expect("strings serialize");
            env.push(("METAFLOW_SERVICE_HEADERS".to_owned(), headers));
        }
        env
    }

    /// An event sink that records what `inner` is given, then passes it on.
    pub fn sink(self: &Arc<Self>, inner: EventSink) -> EventSink {
        let recorder = self.clone();
        Arc::new(move |event| {
            recorder.observe(&event);
            inner(event)
        })
    }

    /// Records what an event says about the job.
    pub fn observe(&self, event: &Event) {
        let data = {
            let mut state = self.state.lock().expect("recorder lock");
            match event {
                Event::Submitted { job_id, .. } => {
                    state.job_id = Some(job_id.clone());
                    self.submitted(job_id)
                }
                Event::AttemptStarted {
                    attempt,
                    log_group,
                    log_stream,
                    job_id,
                } => self.attempt_started(&mut state, job_id, *attempt, log_group, log_stream),
                Event::Exited(outcome) => {
                    let last = outcome.attempts.max(1) as u32 - 1;
                    let mut data = close_before(&mut state, last);
                    data.extend(attempt_end(last, outcome.succeeded()));
                    state.open.clear();
                    data
                }
                _ => return,
            }
        };
        self.push(Op::Metadata { data });
    }

    fn submitted(&self, job_id: &str) -> Vec<Datum> {
        let mut data = vec![
            Datum::new("aws-batch-job-id", job_id, 0),
            Datum::new("aws-batch-jq-name", self.facts.queue.clone(), 0),
            Datum::new(
                "aws-batch-execution-env",
                self.facts.execution_env.clone(),
                0,
            ),
            Datum::new("aws-batch-awslogs-region", self.facts.region.clone(), 0),
        ];
        if let Some(ce) = &self.facts.compute_environment {
            data.push(Datum::new("aws-batch-ce-name", ce.clone(), 0));
        }
        data
    }

    fn attempt_started(
        &self,
        state: &mut State,
        job_id: &str,
        batch_attempt: usize,
        group: &str,
        stream: &str,
    ) -> Vec<Datum> {
        let attempt = batch_attempt.max(1) as u32 - 1;
        let mut data = close_before(state, attempt);
        state.open.insert(attempt);
        data.extend([
            Datum::new("attempt", attempt.to_string(), attempt),
            Datum::new("aws-batch-job-attempt", batch_attempt.to_string(), attempt),
            Datum::new("aws-batch-awslogs-group", group, attempt),
            Datum::new("aws-batch-awslogs-stream", stream, attempt),
        ]);
        if attempt > 0 {
            // Each attempt carries the facts Metaflow shows per attempt.
            data.extend(self.submitted(job_id).into_iter().map(|mut d| {
                d.attempt = attempt;
                d
            }));
        }
        data
    }

    fn push(&self, op: Op) {
        let mut file = self.file.lock().expect("spool lock");
        if let Err(e) = file.push(op) {
            file.last_error = Some(spool::error_line(&e));
        }
        drop(file);
        self.more.notify_one();
    }

    /// Sends the run's heartbeat until dropped (abort the task), as Metaflow's scheduler does.
    pub async fn run_heartbeats(self: Arc<Self>) {
        let Sink::Service(client) = &self.sink else {
            return;
        };
        loop {
            let record = self.record();
            let wait = match &record.run_id {
                Some(run) if record.task_id.is_some() => client
                    .heartbeat(&format!("/flows/{}/runs/{run}/heartbeat", record.flow))
                    .await
                    .unwrap_or(super::service::DEFAULT_HEARTBEAT),
                _ => Duration::from_secs(1),
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// No more records: waits up to `wait` for the sender, then leaves the rest in the spool.
    pub async fn finish(&self, wait: Duration) -> Summary {
        if let Err(e) = self.file.lock().expect("spool lock").close() {
            self.file.lock().expect("spool lock").last_error = Some(spool::error_line(&e));
        }
        self.more.notify_one();
        let sender = self.sender.lock().expect("sender lock").take();
        if let Some(mut sender) = sender {
            if tokio::time::timeout(wait, &mut sender).await.is_err() {
                sender.abort();
                let _ = sender.await; // gone for sure, with its hold on the spool file
            }
        }
        let file = self.file.lock().expect("spool lock");
        Summary {
            pathspec: file.entry.record.pathspec(),
            backend: self.backend.describe(),
            pending: file.entry.pending(),
            last_error: file.last_error.clone(),
        }
    }

    /// Gives up before SubmitJob: records not yet sent are dropped (there is no job).
    pub fn abandon(&self) {
        if let Some(sender) = self.sender.lock().expect("sender lock").take() {
            sender.abort();
        }
        self.file.lock().expect("spool lock").discard();
    }
}

/// Ends the attempts before `attempt` that are still open: they failed (Batch started another).
fn close_before(state: &mut State, attempt: u32) -> Vec<Datum> {
    let ended: Vec<u32> = state.open.range(..attempt).copied().collect();
    ended
        .into_iter()
        .flat_map(|a| {
            state.open.remove(&a);
            attempt_end(a, false)
        })
        .collect()
}

/// `attempt_ok` (how Metaflow's UI tells success) and `attempt-done`.
fn attempt_end(attempt: u32, ok: bool) -> Vec<Datum> {
    let ok = if ok { "True" } else { "False" };
    vec![
        Datum::typed("attempt_ok", "internal_attempt_status", ok, attempt),
        Datum::typed("attempt-done", "attempt-done", attempt.to_string(), attempt),
    ]
}

/// What `--dry-run` shows: the records in the order they would be sent, ids not yet assigned
/// written as `<assigned>`.
pub fn dry_run_records(record: &TaskRecord, facts: &JobFacts) -> serde_json::Value {
    let run = record.run_id.clone().unwrap_or_else(|| "<assigned>".into());
    let task = "<assigned>";
    let ops = initial_ops(record, facts);
    let records: Vec<serde_json::Value> = ops
        .iter()
        .map(|op| match op {
            Op::Flow => serde_json::json!({"flow": record.flow_body()}),
            Op::Run => serde_json::json!({"run": record.run_body(record.run_id.is_some())}),
            Op::Step => serde_json::json!({"step": record.step_body(&run)}),
            Op::Task => serde_json::json!({"task": record.task_body(&run, None)}),
            Op::Metadata { data } => serde_json::json!({"metadata": data
                .iter()
                .map(|d| record.datum_body(&run, task, d))
                .collect::<Vec<_>>()}),
        })
        .collect();
    serde_json::Value::Array(records)
}
