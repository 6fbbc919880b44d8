//! A wire-level client of `mfbatch serve --stdio` for tests: spawns the real binary against the
//! fake AWS, writes raw lines, and reads every stdout line (each must be JSON), with a switch to
//! stop reading (a stalled client).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};

use crate::support::{FakeAws, JobStatus, Timeline};

pub struct Serve {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    pub paused: watch::Sender<bool>,
    next_id: u64,
    /// Answers that came before they were waited for.
    answers: HashMap<u64, Value>,
    pub events: Vec<Value>,
}

/// A machine for the daemon: HOME, a step script, a state directory.
pub struct Machine {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Machine {
    pub fn new(fake: &FakeAws) -> Self {
        let home = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("step.py"), "print('hello')\n").unwrap();
        let mut env = fake.cli_env(home.path());
        env.push(("MFBATCH_POLL_MIN_MS".into(), "50".into()));
        env.push(("MFBATCH_DRAIN_QUIET_MS".into(), "500".into()));
        Machine { home, work, env }
    }

    pub fn script(&self) -> String {
        self.work.path().join("step.py").display().to_string()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.home.path().join("state")
    }

    pub fn start(&self, args: &[&str]) -> Serve {
        Serve::spawn(&self.env, &self.state_dir(), self.work.path(), args)
    }
}

impl Serve {
    pub fn spawn(env: &[(String, String)], state: &Path, cwd: &Path, args: &[&str]) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mfbatch"));
        command
            .args(["serve", "--stdio", "--state-dir"])
            .arg(state)
            .args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn mfbatch serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let (paused, mut paused_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(4096, stdout);
            let mut line = String::new();
            loop {
                let _ = paused_rx.wait_for(|p| !*p).await;
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let value: Value = serde_json::from_str(&line)
                            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
                        let _ = tx.send(value);
                    }
                }
            }
        });
        Serve {
            stdin: child.stdin.take(),
            child,
            lines,
            paused,
            next_id: 0,
            answers: HashMap::new(),
            events: Vec::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Sends a request; returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let line =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        self.send_raw(format!("{line}\n").as_bytes()).await;
        self.next_id
    }

    /// The next line from the daemon, or `None` at its end or after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.lines.recv()).await.ok()??;
        if line["method"] == "event" {
            self.events.push(line["params"].clone());
        } else if let Some(id) = line["id"].as_u64() {
            self.answers.insert(id, line.clone());
        }
        Some(line)
    }

    /// Waits for the answer to `id`, keeping the events that come first.
    pub async fn answer(&mut self, id: u64) -> Value {
        loop {
            if let Some(answer) = self.answers.remove(&id) {
                return answer;
            }
            let Some(line) = self.next(Duration::from_secs(60)).await else {
                let last: Vec<_> = self.events.iter().rev().take(5).collect();
                panic!("no answer to {id}; last events: {last:?}");
            };
            if line["id"] == json!(id) {
                self.answers.remove(&id);
                return line;
            }
        }
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.answer(id).await
    }

    pub async fn hello(&mut self, extra: Value) -> Value {
        let mut params = json!({"protocols": [1], "client": "tests/serve", "heartbeat_s": 0});
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let answer = self.call("hello", params).await;
        answer["result"].clone()
    }

    /// Reads until `done` holds for the events so far (or panics after `wait`).
    pub async fn until(&mut self, wait: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(&self.events) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.next(left).await.is_none() {
                panic!("timed out; {} events so far", self.events.len());
            }
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads to the end of output and waits for the exit code.
    pub async fn exit(&mut self, wait: Duration) -> Option<i32> {
        while self.next(wait).await.is_some() {}
        let status = tokio::time::timeout(wait, self.child.wait())
            .await
            .expect("exits")
            .unwrap();
        status.code()
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn sigkill(&mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
    }

    /// The daemon's peak resident memory (KiB), from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Events of a kind, for one key.
pub fn of<'a>(events: &'a [Value], key: &str, kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["key"] == json!(key) && e["event"] == kind)
        .collect()
}

/// A job that prints `line 0` to `line 29`: ten at once, twenty once its stream was read
/// `reads` times (a follower is mid-stream when they come), RUNNING for `running` describes.
pub fn thirty_lines(running: usize, reads: usize) -> Timeline {
    let lines = thirty_lines_text();
    let early: Vec<&str> = lines[..10].iter().map(String::as_str).collect();
    let late: Vec<&str> = lines[10..].iter().map(String::as_str).collect();
    Timeline::new()
        .status(JobStatus::Submitted, 1)
        .running(running)
        .logs(&early)
        .logs_after_reads(reads, &late)
        .succeeded()
}

/// What [`thirty_lines`] prints.
pub fn thirty_lines_text() -> Vec<String> {
    (0..30).map(|i| format!("line {i}")).collect()
}
