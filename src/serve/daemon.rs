//! The daemon's shared state: clients, the one tracker, the journal, admission, the launches
//! in progress by key and the last status seen of each job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::admission::{Admission, Admitted};
use super::journal::{Journal, KeyRecord, Record};
use super::launcher::{keyed_name, Intent, Launch, LaunchParams, Settled};
use super::protocol::{EndMode, RpcError, BUSY, INTERNAL, KEY_CONFLICT, SHUTTING_DOWN};
use super::{ServeConfig, ServeError};
use crate::aws::Clients;
use crate::event::JobStatus;
use crate::launch::cache::PlanCache;
use crate::settings::Sources;
use crate::spec::JobSpec;
use crate::track::Tracker;

/// The one daemon of a process.
pub struct Daemon {
    pub(crate) clients: Clients,
    pub(crate) tracker: Tracker,
    pub(crate) config: ServeConfig,
    pub(crate) cache: PlanCache,
    pub(crate) admission: Admission,
    journal: Arc<Mutex<Journal>>,
    launches: Mutex<HashMap<String, Arc<Launch>>>,
    statuses: Mutex<HashMap<String, JobStatus>>,
    stop: watch::Sender<Option<EndMode>>,
}

/// What a `launch` request found for its key.
pub enum Accepted {
    /// A new launch: run it.
    New(Arc<Launch>, Box<JobSpec>, Intent, Admitted),
    /// The key's launch is in progress.
    InProgress(Arc<Launch>),
    /// The key already has this job.
    Known(String),
}

impl Daemon {
    /// Opens the journal (locking the state directory) and starts the tracker.
    pub fn start(clients: &Clients, config: ServeConfig) -> Result<Arc<Self>, ServeError> {
        let journal = Journal::open(&config.state_dir)?;
        Ok(Arc::new(Daemon {
            clients: clients.clone(),
            tracker: Tracker::new(clients, config.tracker.clone()),
            cache: PlanCache::default(),
            admission: Admission::new(config.limits.clone()),
            journal: Arc::new(Mutex::new(journal)),
            launches: Mutex::default(),
            statuses: Mutex::default(),
            stop: watch::channel(None).0,
            config,
        }))
    }

    /// Asks every connection to end this way (SIGTERM: detach).
    pub fn stop(&self, mode: EndMode) {
        self.stop.send_replace(Some(mode));
    }

    pub fn stopping(&self) -> watch::Receiver<Option<EndMode>> {
        self.stop.subscribe()
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    pub(crate) async fn journal_append(&self, record: Record) -> Result<(), ServeError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.lock().expect("journal lock").append(record))
            .await
            .expect("journal writes do not panic")
    }

    pub(crate) fn journal_key(&self, key: &str) -> Option<KeyRecord> {
        self.journal.lock().expect("journal lock").get(key).cloned()
    }

    pub(crate) fn key_of(&self, job_id: &str) -> Option<String> {
        let journal = self.journal.lock().expect("journal lock");
        journal.key_of(job_id).map(str::to_owned)
    }

    /// Records the job id; the job exists whatever the journal says, so its id is returned.
    pub(crate) async fn journal_submitted<E>(
        &self,
        key: &str,
        job_id: String,
    ) -> Result<String, E> {
        let record = Record::Submitted {
            key: key.to_owned(),
            job_id: job_id.clone(),
        };
        // A failure here leaves the intent: a replay finds the job by name and request id.
        let _ = self.journal_append(record).await;
        Ok(job_id)
    }

    pub(crate) fn launch_settled(&self, launch: &Launch, settled: Settled) {
        launch.settled.send_replace(Some(settled));
        self.launches
            .lock()
            .expect("launches lock")
            .remove(&launch.key);
    }

    pub(crate) fn launch_in_progress(&self, key: &str) -> Option<Arc<Launch>> {
        self.launches
            .lock()
            .expect("launches lock")
            .get(key)
            .cloned()
    }

    pub(crate) fn set_status(&self, job_id: &str, status: JobStatus) {
        self.statuses
            .lock()
            .expect("status lock")
            .insert(job_id.to_owned(), status);
    }

    pub(crate) fn status_of(&self, job_id: &str) -> Option<JobStatus> {
        self.statuses
            .lock()
            .expect("status lock")
            .get(job_id)
            .copied()
    }

    /// Deduplicates by key, validates, admits and journals a launch, before any AWS write.
    pub async fn accept_launch(&self, params: &LaunchParams) -> Result<Accepted, RpcError> {
        if self.is_stopping() {
            return Err(RpcError::new(SHUTTING_DOWN, "the daemon is shutting down"));
        }
        let hash = params.hash();
        let conflict = || {
            RpcError::new(
                KEY_CONFLICT,
                format!("key {:?} was launched with other parameters", params.key),
            )
            .with_data(json!({"kind": "key_conflict", "key": params.key}))
        };
        if let Some(launch) = self.launch_in_progress(&params.key) {
            if launch.params_hash != hash {
                return Err(conflict());
            }
            return Ok(Accepted::InProgress(launch));
        }
        let known = self.journal_key(&params.key);
        if let Some(known) = &known {
            if known.params_hash != hash {
                return Err(conflict());
            }
            if let Some(job_id) = &known.job_id {
                return Ok(Accepted::Known(job_id.clone()));
            }
        }
        let sources = Sources {
            flags: Default::default(),
            env: self.config.env.clone(),
            cwd: self.config.cwd.clone(),
        };
        let spec = params.validate(&sources)?;
        let admitted = self.admission.admit().map_err(|retry_after_ms| {
            RpcError::new(BUSY, "too many launches in progress; try again later")
                .with_data(json!({"kind": "busy", "retry_after_ms": retry_after_ms}))
        })?;
        let intent = match known {
            // A launch that may have reached SubmitJob before a crash: same name, same id.
            Some(known) => Intent {
                request_id: known.request_id,
                job_name: known.job_name,
                t: known.t,
                replayed: true,
            },
            None => Intent {
                request_id: crate::bootstrap::end_record::new_nonce(),
                job_name: keyed_name(spec.name.as_str(), &params.key),
                t: now_ms(),
                replayed: false,
            },
        };
        let launch = match self.start_launch(&params.key, &hash) {
            Ok(launch) => launch,
            Err(first) => return Ok(Accepted::InProgress(first)),
        };
        if !intent.replayed {
            let record = Record::Intent {
                key: params.key.clone(),
                request_id: intent.request_id.clone(),
                job_name: intent.job_name.clone(),
                queue: spec.batch().map(|b| b.queue.clone()).unwrap_or_default(),
                params_hash: hash,
                t: intent.t,
            };
            if let Err(e) = self.journal_append(record).await {
                self.launches
                    .lock()
                    .expect("launches lock")
                    .remove(&params.key);
                return Err(RpcError::new(INTERNAL, e.to_string()));
            }
        }
        Ok(Accepted::New(launch, Box::new(spec), intent, admitted))
    }

    /// The key's launch, now in progress; or the one another request for the key started first.
    fn start_launch(&self, key: &str, hash: &str) -> Result<Arc<Launch>, Arc<Launch>> {
        let mut launches = self.launches.lock().expect("launches lock");
        // Two requests for one key can both get here (validation takes time).
        if let Some(launch) = launches.get(key) {
            return Err(launch.clone());
        }
        let launch = Arc::new(Launch {
            key: key.to_owned(),
            params_hash: hash.to_owned(),
            settled: watch::channel(None).0,
            cancelled: Default::default(),
            submitting: Default::default(),
        });
        launches.insert(key.to_owned(), launch.clone());
        Ok(launch)
    }

    /// The `hello` result's list: every key the journal knows.
    pub fn recovered(&self) -> Vec<Value> {
        let journal = self.journal.lock().expect("journal lock");
        journal
            .keys()
            .map(|k| {
                json!({
                    "key": k.key, "job_id": k.job_id, "job_name": k.job_name,
                    "status": k.status.clone().or_else(|| {
                        k.job_id.as_deref().and_then(|id| self.status_of(id)).map(|s| s.to_string())
                    }),
                    "exit_code": k.exit_code,
                })
            })
            .collect()
    }

    /// Calls and limits, for `status` and heartbeats.
    pub fn budget(&self) -> Value {
        let (batch, logs) = self.tracker.calls();
        json!({
            "batch_calls": batch,
            "logs_calls": logs,
            "submit_calls": self.admission.submit_budget.calls(),
            "launches_pending": self.admission.pending(),
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
