//! The spool: a job's records on local disk until they are recorded. A file per task, written
//! before SubmitJob and rewritten (atomically) as records are added and sent; removed once
//! everything was sent. A process holds a lock on the files it is still writing, so another
//! mfbatch (`metadata sync`, the next run) sends only what its owner left behind, never twice.
//!
//! The service's headers are not stored (they hold the API key): sync uses the configured ones.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::local::LocalWriter;
use super::model::{id_of, is_numeric, Op, TaskRecord};
use super::service::ServiceClient;
use super::{Backend, MetadataError};

/// Where a spool file's records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Service { url: String },
    Local { root: PathBuf },
}

impl Target {
    pub fn of(backend: &Backend) -> Target {
        match backend {
            Backend::Service(s) => Target::Service { url: s.url.clone() },
            Backend::Local(root) => Target::Local { root: root.clone() },
        }
    }
}

/// What a spool file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub target: Target,
    pub record: TaskRecord,
    pub ops: VecDeque<Op>,
    /// No more records will be added: the file goes once the ops are sent.
    pub closed: bool,
}

impl Entry {
    /// Records still to send: objects, plus each metadatum.
    pub fn pending(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Metadata { data } => data.len(),
                _ => 1,
            })
            .sum()
    }
}

/// The spool directory: `$XDG_CACHE_HOME/mfbatch/metadata-spool` (or `~/.cache/...`).
pub fn default_dir(env: &std::collections::BTreeMap<String, String>) -> Option<PathBuf> {
    crate::settings::cache_dir(env).map(|d| d.join("mfbatch").join("metadata-spool"))
}

/// One open spool file, locked by this process.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    _lock: File,
    lock_path: PathBuf,
    pub entry: Entry,
    /// The last failure to send, for the summary.
    pub last_error: Option<String>,
    removed: bool,
}

/// A spool file shared by the recorder (which adds) and the sender (which sends).
pub type Shared = Arc<Mutex<SpoolFile>>;

impl SpoolFile {
    /// Writes a new spool file in `dir`.
    pub fn create(dir: &Path, entry: Entry) -> Result<SpoolFile, MetadataError> {
        let io = |source| MetadataError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let name = format!(
            "{}-{}",
            super::model::now_ms(),
            &crate::bootstrap::end_record::new_nonce()[..12]
        );
        let path = dir.join(format!("{name}.json"));
        let (lock, lock_path) = lock(&dir.join(format!("{name}.lock")))?.ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "a new spool file is locked",
            ))
        })?;
        let file = SpoolFile {
            path,
            _lock: lock,
            lock_path,
            entry,
            last_error: None,
            removed: false,
        };
        file.persist()?;
        Ok(file)
    }

    /// Opens a spool file another process left; `None` while its owner still holds it.
    pub fn open(path: &Path) -> Result<Option<SpoolFile>, MetadataError> {
        let Some((lock, lock_path)) = lock(&path.with_extension("lock"))? else {
            return Ok(None);
        };
        let io = |source| MetadataError::Io {
            path: path.to_owned(),
            source,
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            // Sent and removed by its owner since the directory was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&lock_path);
                return Ok(None);
            }
            Err(e) => return Err(io(e)),
        };
        let mut entry: Entry = serde_json::from_slice(&text)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        entry.closed = true; // its owner is gone: nothing more will come
        Ok(Some(SpoolFile {
            path: path.to_owned(),
            _lock: lock,
            lock_path,
            entry,
            last_error: None,
            removed: false,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds records to send.
    pub fn push(&mut self, op: Op) -> Result<(), MetadataError> {
        self.entry.ops.push_back(op);
        self.persist()
    }

    /// No more records will come.
    pub fn close(&mut self) -> Result<(), MetadataError> {
        self.entry.closed = true;
        self.settle()
    }

    /// The front op was recorded; `record` has the ids it assigned.
    fn sent(&mut self, record: TaskRecord) -> Result<(), MetadataError> {
        self.entry.ops.pop_front();
        self.entry.record = record;
        self.last_error = None;
        self.settle()
    }

    /// Leaves the records to a later sync; when they were never sent, drops them instead (a
    /// run given up before SubmitJob has no job to record).
    pub fn discard(&mut self) {
        self.entry.ops.clear();
        self.entry.closed = true;
        let _ = self.settle();
    }

    fn settle(&mut self) -> Result<(), MetadataError> {
        if self.entry.closed && self.entry.ops.is_empty() {
            if !self.removed {
                self.removed = true;
                let _ = std::fs::remove_file(&self.path);
                let _ = std::fs::remove_file(&self.lock_path);
            }
            return Ok(());
        }
        self.persist()
    }

    fn persist(&self) -> Result<(), MetadataError> {
        let io = |source| MetadataError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().expect("a file in the spool");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let text = serde_json::to_vec(&self.entry).expect("an entry serializes");
        tmp.write_all(&text).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// Takes an exclusive lock on `path` (created if missing) without waiting.
fn lock(path: &Path) -> Result<Option<(File, PathBuf)>, MetadataError> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| MetadataError::Io {
            path: path.to_owned(),
            source,
        })?;
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((rc == 0).then(|| (file, path.to_owned())))
}

/// Where records are written.
#[derive(Clone)]
pub enum Sink {
    Service(Box<ServiceClient>),
    Local(LocalWriter),
}

impl Sink {
    /// The sink of a spool target; the service's headers come from `backend` when it is the
    /// same service.
    pub fn for_target(target: &Target, backend: Option<&Backend>) -> Result<Sink, MetadataError> {
        Ok(match target {
            Target::Local { root } => Sink::Local(LocalWriter { root: root.clone() }),
            Target::Service { url } => {
                let headers = match backend {
                    Some(Backend::Service(s)) if &s.url == url => s.headers.clone(),
                    _ => Default::default(),
                };
                Sink::Service(Box::new(ServiceClient::new(url, headers)?))
            }
        })
    }

    /// Records one op (once), assigning ids into `record`.
    pub async fn send(&self, record: &mut TaskRecord, op: &Op) -> Result<(), MetadataError> {
        match self {
            Sink::Local(writer) => writer.apply(record, op),
            Sink::Service(client) => send_to_service(client, record, op).await,
        }
    }
}

async fn send_to_service(
    client: &ServiceClient,
    record: &mut TaskRecord,
    op: &Op,
) -> Result<(), MetadataError> {
    let flow = format!("/flows/{}", record.flow);
    let run = record.run_id.clone().unwrap_or_default();
    let step = format!("{flow}/runs/{run}/steps/{}", record.step);
    let bad = |path: &str, reason: &str| MetadataError::BadReply {
        method: "POST",
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    match op {
        Op::Flow => client
            .create(&flow, &flow, &record.flow_body())
            .await
            .map(drop),
        Op::Run if record.run_id.is_some() => {
            // Joining a run: it may exist already (another job of the same run created it).
            let path = format!("{flow}/runs/{run}");
            if client.get(&path).await?.is_some() {
                return Ok(());
            }
            if is_numeric(&run) {
                return Err(MetadataError::NotFound {
                    what: format!("run {}/{run}", record.flow),
                    backend: format!("the metadata service {}", client.base()),
                });
            }
            let post = format!("{flow}/run");
            client
                .create(&post, &path, &record.run_body(true))
                .await
                .map(drop)
        }
        Op::Run => {
            let post = format!("{flow}/run");
            let reply = client
                .expect_ok("POST", &post, Some(&record.run_body(false)))
                .await?;
            let id = reply.json().and_then(|v| id_of(v.get("run_number")));
            record.run_id = Some(id.ok_or_else(|| bad(&post, "no run_number"))?);
            Ok(())
        }
        Op::Step => {
            let post = format!("{step}/step");
            client
                .create(&post, &step, &record.step_body(&run))
                .await
                .map(drop)
        }
        Op::Task => {
            let post = format!("{step}/task");
            let body = record.task_body(&run, None);
            let reply = client.expect_ok("POST", &post, Some(&body)).await?;
            let id = reply.json().and_then(|v| id_of(v.get("task_id")));
            record.task_id = Some(id.ok_or_else(|| bad(&post, "no task_id"))?);
            Ok(())
        }
        Op::Metadata { data } => {
            let task = record.task_id.clone().unwrap_or_default();
            let body: Vec<_> = data
                .iter()
                .map(|d| record.datum_body(&run, &task, d))
                .collect();
            let path = format!("{step}/tasks/{task}/metadata");
            client
                .expect_ok("POST", &path, Some(&serde_json::Value::Array(body)))
                .await
                .map(drop)
        }
    }
}

/// How a spool file's sender stopped.
#[derive(Debug)]
pub enum DrainEnd {
    /// Everything was recorded; the file is gone.
    Sent,
    /// A failure that retrying will not fix; the rest stays in the spool.
    Failed(MetadataError),
}

/// Back-off between tries of one record: doubling from `first`, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Sends the file's records in order, retrying each with back-off, until the file is closed and
/// empty. Wakes on `more` when the recorder adds records.
pub async fn drain(file: Shared, sink: Sink, more: Arc<Notify>, backoff: Backoff) -> DrainEnd {
    let mut wait = backoff.first;
    loop {
        let next = {
            let file = file.lock().expect("spool lock");
            match file.entry.ops.front() {
                Some(op) => Some((file.entry.record.clone(), op.clone())),
                None if file.entry.closed => return DrainEnd::Sent,
                None => None,
            }
        };
        let Some((mut record, op)) = next else {
            more.notified().await;
            continue;
        };
        match sink.send(&mut record, &op).await {
            Ok(()) => {
                wait = backoff.first;
                let mut file = file.lock().expect("spool lock");
                if let Err(e) = file.sent(record) {
                    file.last_error = Some(e.to_string());
                }
            }
            Err(e) if e.is_transient() => {
                file.lock().expect("spool lock").last_error = Some(error_line(&e));
                // Jitter, so many waiting processes do not come back at once.
                tokio::time::sleep(wait.mul_f64(fastrand::f64() * 0.5 + 0.5)).await;
                wait = (wait * 2).min(backoff.max);
            }
            Err(e) => {
                file.lock().expect("spool lock").last_error = Some(error_line(&e));
                return DrainEnd::Failed(e);
            }
        }
    }
}

/// An error and its causes, on one line.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// What a sync of the spool directory did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Spool files fully sent (and removed).
    pub sent: usize,
    /// Records still pending, in files that could not be sent (or are still being written).
    pub pending: usize,
    /// Files another mfbatch is writing now.
    pub busy: usize,
    pub errors: Vec<String>,
}

/// Sends every spool file no other process holds, each until it is sent, fails, or `deadline`.
pub async fn sync_dir(
    dir: &Path,
    backend: Option<&Backend>,
    deadline: tokio::time::Instant,
    backoff: Backoff,
) -> SyncReport {
    let mut report = SyncReport::default();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let file = match SpoolFile::open(&path) {
            Ok(Some(file)) => file,
            Ok(None) => {
                report.busy += usize::from(path.exists());
                continue;
            }
            Err(e) => {
                report.errors.push(error_line(&e));
                continue;
            }
        };
        let sink = match Sink::for_target(&file.entry.target, backend) {
            Ok(sink) => sink,
            Err(e) => {
                report.pending += file.entry.pending();
                report.errors.push(error_line(&e));
                continue;
            }
        };
        let shared: Shared = Arc::new(Mutex::new(file));
        let drained = tokio::time::timeout_at(
            deadline,
            drain(shared.clone(), sink, Arc::new(Notify::new()), backoff),
        )
        .await;
        let file = shared.lock().expect("spool lock");
        match drained {
            Ok(DrainEnd::Sent) => report.sent += 1,
            Ok(DrainEnd::Failed(e)) => {
                report.pending += file.entry.pending();
                report.errors.push(error_line(&e));
            }
            Err(_) => {
                report.pending += file.entry.pending();
                report.errors.extend(file.last_error.clone());
            }
        }
    }
    report
}
