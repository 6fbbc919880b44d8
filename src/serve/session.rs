//! One connection: reads requests line by line, answers each (a bad line gets an error and the
//! connection goes on), and at its end detaches, drains or kills its jobs as asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::Notify;

use super::daemon::{now_ms, Accepted};
use super::follow::{self, Sub};
use super::launcher::{self, Launch, LaunchParams};
use super::lines::{next_line, Line};
use super::outbox::Outbox;
use super::protocol::*;
use super::Daemon;
use crate::track::array::ArrayFollow;
use crate::track::nodes::NodeFollow;

/// How long an ending connection waits for its launches already in SubmitJob.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// One client's connection.
pub struct Connection {
    pub(crate) daemon: Arc<Daemon>,
    pub(crate) outbox: Arc<Outbox>,
    subs: Mutex<Vec<Arc<Sub>>>,
    launches: Mutex<Vec<Arc<Launch>>>,
    greeted: AtomicBool,
    on_eof: Mutex<EndMode>,
    ending: AtomicBool,
    shutdown: Mutex<Option<(Value, ShutdownParams)>>,
    shutdown_asked: Notify,
    /// A wrong token: the connection ends, so it cannot try another.
    refused: Notify,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownParams {
    #[serde(default)]
    pub mode: EndMode,
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowParams {
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default = "yes")]
    logs: bool,
    /// Accepted as before and ignored: an array's parent is followed as one anyway (its first
    /// description tells), and anything else as what it is.
    #[serde(default, rename = "array")]
    _array: bool,
    /// An array's or a multi-node job's first this many failures get their last lines.
    #[serde(default)]
    show_failed: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRef {
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn yes() -> bool {
    true
}

/// Serves one connection until its input ends, it asks for `shutdown`, or the daemon stops.
/// Returns the end mode when the connection asked the daemon to shut down.
pub async fn serve_connection<R, W>(daemon: Arc<Daemon>, reader: R, writer: W) -> Option<EndMode>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = &daemon.config;
    let outbox = Outbox::new(config.connection_log_window, config.job_log_window);
    let conn = Arc::new(Connection {
        daemon: daemon.clone(),
        outbox: outbox.clone(),
        subs: Mutex::default(),
        launches: Mutex::default(),
        greeted: AtomicBool::new(false),
        on_eof: Mutex::default(),
        ending: AtomicBool::new(false),
        shutdown: Mutex::default(),
        shutdown_asked: Notify::new(),
        refused: Notify::new(),
    });
    let mut writer_task = tokio::spawn(async move { outbox.run_writer(writer).await });
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut stop = daemon.stopping();
    let mut writer_done = false;
    let (mode, timeout) = loop {
        tokio::select! {
            line = next_line(&mut reader, MAX_LINE_BYTES) => match line {
                Ok(Some(Line::Text(bytes))) => conn.clone().dispatch(&bytes).await,
                Ok(Some(Line::TooLong(n))) => conn.outbox.answer(response(
                    &Value::Null,
                    Err(RpcError::new(INVALID_REQUEST, format!(
                        "line of {n} bytes is over the limit of {MAX_LINE_BYTES}"
                    ))),
                )),
                Ok(None) | Err(_) => break (*conn.on_eof.lock().expect("lock"), None),
            },
            mode = async {
                let mode = stop.wait_for(Option::is_some).await;
                mode.map(|m| m.unwrap_or_default()).unwrap_or_default()
            } => break (mode, None),
            _ = conn.refused.notified() => break (EndMode::Detach, None),
            _ = conn.shutdown_asked.notified() => {
                let params = conn.shutdown.lock().expect("lock").as_ref().map(|s| s.1.clone());
                let params = params.unwrap_or_default();
                break (params.mode, params.timeout_s.map(Duration::from_secs));
            }
            // The reader of our output is gone (EPIPE): as end of input.
            _ = &mut writer_task, if !writer_done => {
                writer_done = true;
                break (*conn.on_eof.lock().expect("lock"), None);
            }
        }
    };
    conn.end(mode, timeout).await;
    // The answer to `shutdown` comes after every event of the jobs it waited for.
    while !conn.outbox.is_empty() && !writer_task.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shutdown = conn.shutdown.lock().expect("lock").take();
    if let Some((id, params)) = &shutdown {
        conn.outbox
            .answer(response(id, Ok(json!({"mode": params.mode_name()}))));
    }
    conn.outbox.close();
    if !writer_done {
        let _ = writer_task.await;
    }
    shutdown.map(|(_, params)| params.mode)
}

impl ShutdownParams {
    fn mode_name(&self) -> &'static str {
        match self.mode {
            EndMode::Detach => "detach",
            EndMode::Drain => "drain",
            EndMode::Kill => "kill",
        }
    }
}

impl Connection {
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    fn add_sub(&self, sub: &Arc<Sub>) {
        let mut subs = self.subs.lock().expect("subs lock");
        subs.retain(|s| !s.is_done());
        subs.push(sub.clone());
    }

    fn sub_for_key(&self, key: &str) -> bool {
        let subs = self.subs.lock().expect("subs lock");
        subs.iter()
            .any(|s| !s.is_done() && s.key.as_deref() == Some(key))
    }

    fn sub_for(&self, job_id: &str) -> Option<Arc<Sub>> {
        let subs = self.subs.lock().expect("subs lock");
        subs.iter()
            .find(|s| !s.is_done() && s.job_id().as_deref() == Some(job_id))
            .cloned()
    }

    /// Answers one line; requests that may wait on AWS run on their own task.
    async fn dispatch(self: Arc<Self>, line: &[u8]) {
        let request = match parse_line(line) {
            Ok(request) => request,
            Err((id, error)) => return self.outbox.answer(response(&id, Err(error))),
        };
        if request.method == "hello" {
            let result = self.hello(&request.params);
            let refused = matches!(&result, Err(e) if e.code == UNAUTHORIZED);
            self.reply(request.id, result);
            if refused {
                self.refused.notify_one();
            }
            return;
        }
        if !self.greeted.load(Ordering::Acquire) {
            let error = RpcError::new(NOT_INITIALIZED, "send hello first");
            return self.reply(request.id, Err(error));
        }
        tokio::spawn(async move {
            let id = request.id.clone();
            let result = match request.method.as_str() {
                "ping" => Ok(json!({"t": now_ms()})),
                "launch" => self.launch(&request.params).await,
                "follow" => self.follow(&request.params),
                "unfollow" => self.unfollow(&request.params),
                "kill" => self.kill(&request.params).await,
                "status" => Ok(self.status()),
                "shutdown" => match params::<ShutdownParams>(&request.params) {
                    Ok(p) => {
                        let id = id.unwrap_or(Value::Null);
                        *self.shutdown.lock().expect("lock") = Some((id, p));
                        self.shutdown_asked.notify_one();
                        return;
                    }
                    Err(e) => Err(e),
                },
                other => Err(RpcError::new(
                    METHOD_NOT_FOUND,
                    format!("unknown method {other:?}"),
                )),
            };
            self.reply(id, result);
        });
    }

    fn reply(&self, id: Option<Value>, result: Result<Value, RpcError>) {
        // A notification gets no answer, not even an error.
        if let Some(id) = id {
            self.outbox.answer(response(&id, result));
        }
    }

    fn hello(self: &Arc<Self>, raw: &Value) -> Result<Value, RpcError> {
        let hello: HelloParams = params(raw)?;
        if let Some(expected) = &self.daemon.config.token {
            let given = hello.token.as_deref().unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(RpcError::new(UNAUTHORIZED, "wrong or missing token"));
            }
        }
        if !hello.protocols.contains(&PROTOCOL) {
            return Err(
                RpcError::new(UNSUPPORTED_PROTOCOL, "no protocol version in common")
                    .with_data(json!({"supported": [PROTOCOL]})),
            );
        }
        *self.on_eof.lock().expect("lock") = hello.on_eof;
        if !self.greeted.swap(true, Ordering::AcqRel) && hello.heartbeat_s > 0 {
            self.start_heartbeats(Duration::from_secs(hello.heartbeat_s));
        }
        Ok(json!({
            "protocol": PROTOCOL,
            "server_version": env!("CARGO_PKG_VERSION"),
            "capabilities": ["launch", "follow", "unfollow", "kill", "status", "ping", "shutdown"],
            "recovered": self.daemon.recovered(),
            "limits": {
                "max_line_bytes": MAX_LINE_BYTES,
                "max_pending_launches": self.daemon.config.limits.max_pending,
                "submits_per_second": self.daemon.config.limits.submits_per_second,
            },
        }))
    }

    fn start_heartbeats(self: &Arc<Self>, every: Duration) {
        let conn = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(conn) = conn.upgrade().filter(|c| !c.is_ending()) else {
                    return;
                };
                let following = conn
                    .subs
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|s| !s.is_done())
                    .count();
                conn.outbox.event(json!({
                    "event": "heartbeat", "t": now_ms(), "following": following,
                    "budget": conn.daemon.budget(), "backlog": conn.outbox.backlog(),
                }));
            }
        });
    }

    async fn launch(self: &Arc<Self>, raw: &Value) -> Result<Value, RpcError> {
        let launch: LaunchParams = params(raw)?;
        let how = launch.follow.then(|| follow::How {
            logs: launch.logs,
            array: launch.array_follow(),
            nodes: launch.node_follow(),
        });
        let accepted = self.daemon.accept_launch(&launch).await?;
        let key = Some(launch.key.clone());
        match accepted {
            Accepted::Known(job_id) => {
                if let Some(how) = how.filter(|_| self.sub_for(&job_id).is_none()) {
                    let sub = Sub::new(self, key, Some(job_id.clone()));
                    self.add_sub(&sub);
                    follow::start(self, &sub, job_id.clone(), how, Default::default());
                }
                Ok(json!({"key": launch.key, "deduplicated": true, "job_id": job_id}))
            }
            Accepted::InProgress(existing) => {
                if self.sub_for_key(&launch.key) {
                    // This connection gets the launch's events already.
                    return Ok(json!({"key": launch.key, "deduplicated": true, "job_id": null}));
                }
                let sub = Sub::new(self, key, None);
                self.add_sub(&sub);
                follow::after_launch(self, &sub, existing, how);
                Ok(json!({"key": launch.key, "deduplicated": true, "job_id": null}))
            }
            Accepted::New(new, spec, intent, admitted) => {
                let sub = Sub::new(self, key, None);
                self.add_sub(&sub);
                self.launches.lock().expect("lock").push(new.clone());
                let replayed = intent.replayed;
                let events = follow::sink(self, &sub);
                follow::after_launch(self, &sub, new.clone(), how);
                let daemon = self.daemon.clone();
                tokio::spawn(launcher::run(daemon, new, *spec, intent, admitted, events));
                Ok(
                    json!({"key": launch.key, "deduplicated": false, "job_id": null, "replayed": replayed}),
                )
            }
        }
    }

    fn follow(self: &Arc<Self>, raw: &Value) -> Result<Value, RpcError> {
        let p: FollowParams = params(raw)?;
        let (job_id, key) = self.resolve(p.job_id, p.key)?;
        let cursor = match p.cursor.as_deref() {
            None => Default::default(),
            Some(text) => Cursor::parse(text)
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("bad cursor {text:?}")))?,
        };
        let mut how = follow::How {
            logs: p.logs,
            ..Default::default()
        };
        // The tracker's first description says which of the two (if any) the job is.
        if let Some(show_failed) = p.show_failed {
            how.array = Some(ArrayFollow {
                show_failed,
                ..ArrayFollow::default()
            });
            how.nodes = Some(NodeFollow {
                show_failed,
                ..NodeFollow::default()
            });
        }
        if let Some(old) = self.sub_for(&job_id) {
            old.unfollow();
        }
        let sub = Sub::new(self, key.clone(), Some(job_id.clone()));
        follow::start(self, &sub, job_id.clone(), how, cursor);
        self.add_sub(&sub);
        Ok(json!({"job_id": job_id, "key": key}))
    }

    /// The job id and key of a request naming either.
    fn resolve(
        &self,
        job_id: Option<String>,
        key: Option<String>,
    ) -> Result<(String, Option<String>), RpcError> {
        match (job_id, key) {
            (Some(job_id), _) => {
                let key = self.daemon.key_of(&job_id);
                Ok((job_id, key))
            }
            (None, Some(key)) => match self.daemon.journal_key(&key).and_then(|k| k.job_id) {
                Some(job_id) => Ok((job_id, Some(key))),
                None => Err(RpcError::new(
                    UNKNOWN_JOB,
                    format!("no job for key {key:?}"),
                )),
            },
            (None, None) => Err(RpcError::new(INVALID_PARAMS, "give job_id or key")),
        }
    }

    fn unfollow(&self, raw: &Value) -> Result<Value, RpcError> {
        let p: JobRef = params(raw)?;
        let (job_id, _) = self.resolve(p.job_id, p.key)?;
        match self.sub_for(&job_id) {
            Some(sub) => {
                sub.unfollow();
                Ok(json!({}))
            }
            None => Err(RpcError::new(
                UNKNOWN_JOB,
                format!("not following {job_id}"),
            )),
        }
    }

    async fn kill(&self, raw: &Value) -> Result<Value, RpcError> {
        let p: JobRef = params(raw)?;
        // As `mfbatch kill` refuses it.
        if let Some(job) = p
            .job_id
            .as_deref()
            .and_then(crate::track::nodes::job_of_node)
        {
            let id = p.job_id.as_deref().unwrap_or_default();
            return Err(RpcError::new(
                INVALID_PARAMS,
                format!("{id} is a node of multi-node job {job}; nodes are not stopped alone"),
            )
            .with_data(json!({
                "kind": "usage",
                "job_id": job,
                "hint": format!("kill {{\"job_id\": \"{job}\"}} stops every node"),
            })));
        }
        let reason = p
            .reason
            .unwrap_or_else(|| "stopped through mfbatch serve".into());
        if let Some(launch) = p
            .key
            .as_deref()
            .and_then(|k| self.daemon.launch_in_progress(k))
        {
            launch.cancelled.store(true, Ordering::Release);
            if !launch.submitting.load(Ordering::Acquire) {
                return Ok(json!({"state": "cancelled_before_submit"}));
            }
            let mut settled = launch.settled.subscribe();
            let _ = settled.wait_for(Option::is_some).await;
        }
        let (job_id, _) = self.resolve(p.job_id, p.key)?;
        let status = self.daemon.status_of(&job_id);
        if status.is_some_and(|s| s.is_terminal()) {
            return Ok(json!({"state": "already_done", "job_id": job_id}));
        }
        self.daemon
            .tracker
            .stop(&job_id, status, &reason)
            .await
            .map_err(|e| {
                RpcError::new(AWS, e.to_string())
                    .with_data(json!({"kind": "aws", "hint": e.hint()}))
            })?;
        Ok(json!({"state": "terminating", "job_id": job_id}))
    }

    fn status(&self) -> Value {
        let subs = self.subs.lock().expect("lock");
        let following: Vec<Value> = subs
            .iter()
            .filter(|s| !s.is_done())
            .map(|s| {
                let job_id = s.job_id();
                let status = job_id.as_deref().and_then(|id| self.daemon.status_of(id));
                json!({"key": s.key, "job_id": job_id, "status": status, "log_bytes_queued": s.credit.used()})
            })
            .collect();
        json!({
            "following": following,
            "jobs": self.daemon.recovered(),
            "budget": self.daemon.budget(),
            "backlog": self.outbox.backlog(),
        })
    }

    /// Ends the connection's work: launches not yet in SubmitJob are dropped, those in it are
    /// let finish (and journaled); then the jobs are left, waited for, or stopped.
    async fn end(&self, mode: EndMode, timeout: Option<Duration>) {
        let launches: Vec<_> = self.launches.lock().expect("lock").drain(..).collect();
        if mode != EndMode::Drain {
            // Drain lets launches go on to their jobs' end; the others drop what is unsent.
            self.ending.store(true, Ordering::Release);
            for launch in &launches {
                launch.cancelled.store(true, Ordering::Release);
            }
        }
        let settle = async {
            for launch in &launches {
                let _ = launch.settled.subscribe().wait_for(Option::is_some).await;
            }
        };
        let _ = tokio::time::timeout(SETTLE_WAIT, settle).await;
        let subs: Vec<_> = self.subs.lock().expect("lock").clone();
        if mode == EndMode::Kill {
            for sub in subs.iter().filter(|s| !s.is_done()) {
                let Some(job_id) = sub.job_id() else { continue };
                let status = self.daemon.status_of(&job_id);
                let reason = "mfbatch serve: the client asked to kill its jobs";
                let _ = self.daemon.tracker.stop(&job_id, status, reason).await;
            }
        }
        if mode != EndMode::Detach {
            let all_done = async {
                for sub in &subs {
                    let _ = sub.done.subscribe().wait_for(|d| *d).await;
                }
            };
            let limit = timeout.unwrap_or(Duration::from_secs(24 * 3600));
            let _ = tokio::time::timeout(limit, all_done).await;
        }
        self.ending.store(true, Ordering::Release);
        for sub in &subs {
            sub.unfollow();
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
