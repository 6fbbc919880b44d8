//! `mfbatch serve --listen` against the fake AWS: a unix socket in a private (0700) directory and
//! a loopback TCP port behind a token file (0600), each serving several connections with the
//! stdio protocol; a wrong or missing token is refused while others are served; an open socket
//! directory, an open token file, an empty or short token file, a missing token file and a
//! non-loopback address stop the daemon at startup with exit 2, having bound nothing.

#[path = "serve/client.rs"]
#[allow(dead_code)]
mod client;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use client::Machine;
use serde_json::{json, Value};
use support::{FakeAws, JobStatus, Timeline};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

/// One connection to a listening daemon.
struct Conn<R, W> {
    lines: Lines<BufReader<R>>,
    writer: W,
    next_id: u64,
    events: Vec<Value>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    fn new(reader: R, writer: W) -> Self {
        Conn {
            lines: BufReader::new(reader).lines(),
            writer,
            next_id: 0,
            events: Vec::new(),
        }
    }

    /// The answer to a request; events before it are kept. `None` when the daemon hung up.
    async fn call(&mut self, method: &str, params: Value) -> Option<Value> {
        self.next_id += 1;
        let line =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        loop {
            let line = self.next().await?;
            if line["id"] == json!(self.next_id) {
                return Some(line);
            }
        }
    }

    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .ok()??;
        let value: Value = serde_json::from_str(&line).expect("JSON line");
        if value["method"] == "event" {
            self.events.push(value["params"].clone());
        }
        Some(value)
    }

    async fn hello(&mut self, token: Option<&str>) -> Option<Value> {
        let mut params = json!({"protocols": [1], "heartbeat_s": 0});
        if let Some(token) = token {
            params["token"] = json!(token);
        }
        self.call("hello", params).await
    }

    /// Launches a job and reads its events to `exited`; returns its exit code.
    async fn run_job(&mut self, key: &str, script: &str) -> Value {
        let answer = self
            .call("launch", json!({"key": key, "script": script}))
            .await
            .expect("an answer");
        assert_eq!(answer["result"]["deduplicated"], false, "{answer}");
        loop {
            if let Some(exited) = self
                .events
                .iter()
                .find(|e| e["key"] == json!(key) && e["event"] == "exited")
            {
                return exited.clone();
            }
            self.next().await.expect("the job's events");
        }
    }
}

fn quick_job() -> Timeline {
    Timeline::new()
        .status(JobStatus::Submitted, 1)
        .running(2)
        .logs(&["hi"])
        .succeeded()
}

fn daemon(machine: &Machine, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mfbatch"))
        .arg("serve")
        .args(args)
        .arg("--state-dir")
        .arg(machine.state_dir())
        .env_clear()
        .envs(machine.env.iter().cloned())
        .current_dir(machine.work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mfbatch serve")
}

/// The daemon's stderr lines up to the one that says where it listens; that address.
async fn listening(child: &mut Child) -> String {
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(WAIT, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(at) = line.strip_prefix("mfbatch serve: listening on ") {
                return at.to_owned();
            }
        }
        panic!("the daemon ended without listening");
    })
    .await
    .expect("listening in time");
    // Keep draining stderr so the daemon never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    address
}

/// Runs a daemon that must refuse to start; returns its stderr.
async fn refused(machine: &Machine, args: &[&str]) -> String {
    let out = tokio::time::timeout(WAIT, daemon(machine, args).wait_with_output())
        .await
        .expect("exits in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("listening on"), "{args:?}: {stderr}");
    stderr
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn stop(mut child: Child) {
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap();
    assert_eq!(status.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_in_a_private_directory_serves_several_connections() {
    let fake = FakeAws::start().await;
    fake.set_default_timeline(quick_job());
    let machine = Machine::new(&fake);
    let dir = machine.home.path().join("run/mfbatch");
    let socket = dir.join("sock");
    let address = format!("unix:{}", socket.display());
    let mut child = daemon(&machine, &["--listen", &address]);
    assert_eq!(listening(&mut child).await, address);
    assert_eq!(mode(&dir), 0o700, "the socket's directory is made private");

    let connect = || async {
        let (r, w) = tokio::net::UnixStream::connect(&socket)
            .await
            .unwrap()
            .into_split();
        Conn::new(r, w)
    };
    let (mut one, mut two) = (connect().await, connect().await);
    assert!(one.hello(None).await.unwrap().get("result").is_some());
    assert!(two.hello(None).await.unwrap().get("result").is_some());
    let script = machine.script();
    // A second daemon (another state directory) does not take the live socket over.
    let other = Machine::new(&fake);
    let stderr = refused(&other, &["--listen", &address]).await;
    assert!(stderr.contains("another daemon listens"), "{stderr}");
    let (a, b) = tokio::join!(one.run_job("a", &script), two.run_job("b", &script));
    assert_eq!(
        (a["exit_code"].clone(), b["exit_code"].clone()),
        (json!(0), json!(0))
    );
    // Each connection gets its own jobs' events only.
    assert!(one.events.iter().all(|e| e["key"] != "b"));
    assert!(two.events.iter().all(|e| e["key"] != "a"));
    stop(child).await;
    assert!(!socket.exists(), "the socket is removed at exit");

    // A directory others may enter is refused, and nothing is bound in it.
    let open = machine.home.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = format!("unix:{}", open.join("sock").display());
    let stderr = refused(&machine, &["--listen", &sock]).await;
    assert!(stderr.contains("0700"), "{stderr}");
    assert!(!open.join("sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_the_token_and_a_wrong_one_does_not_stop_the_others() {
    let fake = FakeAws::start().await;
    fake.set_default_timeline(quick_job());
    let machine = Machine::new(&fake);
    let token_file = machine.home.path().join("token");
    let token_arg = token_file.display().to_string();
    let mut child = daemon(
        &machine,
        &["--listen", "127.0.0.1:0", "--token-file", &token_arg],
    );
    let address = listening(&mut child).await;
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert_eq!(
        mode(&token_file),
        0o600,
        "the token file is created private"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().len() >= 32, "{token:?}");

    let connect = || async {
        let (r, w) = tokio::net::TcpStream::connect(&address)
            .await
            .unwrap()
            .into_split();
        Conn::new(r, w)
    };
    let mut good = connect().await;
    assert!(good
        .hello(Some(token.trim()))
        .await
        .unwrap()
        .get("result")
        .is_some());
    for wrong in [None, Some("nope"), Some(&token.trim()[1..])] {
        let mut bad = connect().await;
        let answer = bad.hello(wrong).await.expect("an answer");
        assert_eq!(answer["error"]["code"], 8, "{wrong:?}: {answer}");
        // Refused: the daemon hangs up, so the connection cannot try another token.
        assert_eq!(bad.call("ping", json!({})).await, None, "{wrong:?}");
    }
    let exited = good.run_job("t", &machine.script()).await;
    assert_eq!(exited["exit_code"], 0, "{exited}");
    let mut late = connect().await;
    assert!(late
        .hello(Some(token.trim()))
        .await
        .unwrap()
        .get("result")
        .is_some());
    assert!(late.call("ping", json!({})).await.unwrap()["result"]["t"].is_i64());
    stop(child).await;
    assert_eq!(fake.calls("SubmitJob"), 1);

    // The token file is reused, and refused once others may read it.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused(
        &machine,
        &["--listen", "127.0.0.1:0", "--token-file", &token_arg],
    )
    .await;
    assert!(stderr.contains("0600"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_with_a_token_file_is_listened_on() {
    let fake = FakeAws::start().await;
    let machine = Machine::new(&fake);
    let token_file = machine.home.path().join("token");
    let token = token_file.display().to_string();
    for address in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7700", "localhost:7700"] {
        let stderr = refused(&machine, &["--listen", address, "--token-file", &token]).await;
        assert!(stderr.contains("127.0.0.1"), "{address}: {stderr}");
    }
    let stderr = refused(&machine, &["--listen", "127.0.0.1:0"]).await;
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(!token_file.exists(), "no token made for a refused address");
    let stderr = refused(&machine, &["--stdio", "--listen", "127.0.0.1:0"]).await;
    assert!(!stderr.is_empty());
    assert_eq!(fake.mutating_calls(), Vec::<String>::new());
}

/// A token file that exists but holds no token (touched with 0600, or left empty by a failed
/// write) would make the empty token the password: a hello without any token would get in. Such
/// a file, and one with a short token, stop the daemon at startup, having bound nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_short_token_file_is_refused_at_startup() {
    let fake = FakeAws::start().await;
    let machine = Machine::new(&fake);
    let token_file = machine.home.path().join("token");
    let token_arg = token_file.display().to_string();
    for (text, why) in [("", "empty"), ("\n  \n", "empty"), ("short-token\n", "32")] {
        std::fs::write(&token_file, text).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let stderr = refused(
            &machine,
            &["--listen", "127.0.0.1:0", "--token-file", &token_arg],
        )
        .await;
        assert!(stderr.contains("--token-file"), "{text:?}: {stderr}");
        assert!(stderr.contains(why), "{text:?}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(&token_file).unwrap(),
            text,
            "the file is left as it was"
        );
    }
    // A long enough token is taken as it is.
    std::fs::write(&token_file, format!("{}\n", "k".repeat(32))).unwrap();
    let mut child = daemon(
        &machine,
        &["--listen", "127.0.0.1:0", "--token-file", &token_arg],
    );
    let address = listening(&mut child).await;
    let (r, w) = tokio::net::TcpStream::connect(&address)
        .await
        .unwrap()
        .into_split();
    let mut anyone = Conn::new(r, w);
    let answer = anyone.hello(None).await.expect("an answer");
    assert_eq!(answer["error"]["code"], 8, "{answer}");
    let (r, w) = tokio::net::TcpStream::connect(&address)
        .await
        .unwrap()
        .into_split();
    let mut client = Conn::new(r, w);
    let answer = client
        .hello(Some(&"k".repeat(32)))
        .await
        .expect("an answer");
    assert!(answer["result"].is_object(), "{answer}");
    stop(child).await;
    assert_eq!(fake.mutating_calls(), Vec::<String>::new());
}

fn messages(events: &[Value], job_id: &Value) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["job_id"] == *job_id && e["event"] == "log")
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads until the job's `exited`; asserts it is the job's last event.
async fn to_exit<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    conn: &mut Conn<R, W>,
    job_id: &Value,
) {
    let done = |c: &Conn<R, W>| {
        c.events
            .iter()
            .any(|e| e["job_id"] == *job_id && e["event"] == "exited")
    };
    while !done(conn) {
        conn.next().await.expect("the job's events");
    }
    let last = conn
        .events
        .iter()
        .rfind(|e| e["job_id"] == *job_id)
        .unwrap();
    assert_eq!(last["event"], "exited", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_follow_one_job_with_one_status_poll() {
    let fake = FakeAws::start().await;
    let lines = client::thirty_lines_text();
    fake.set_default_timeline(client::thirty_lines(15, 4));
    let machine = Machine::new(&fake);
    let socket = machine.home.path().join("run/sock");
    let mut child = daemon(
        &machine,
        &["--listen", &format!("unix:{}", socket.display())],
    );
    listening(&mut child).await;
    let connect = || async {
        let (r, w) = tokio::net::UnixStream::connect(&socket)
            .await
            .unwrap()
            .into_split();
        let mut conn = Conn::new(r, w);
        assert!(conn.hello(None).await.unwrap().get("result").is_some());
        conn
    };
    let (mut one, mut two, mut three) = (connect().await, connect().await, connect().await);
    let launch = json!({"key": "shared", "script": machine.script()});
    one.call("launch", launch).await.unwrap();
    let job_id = loop {
        if let Some(s) = one.events.iter().find(|e| e["event"] == "submitted") {
            break s["job_id"].clone();
        }
        one.next().await.expect("submitted");
    };
    // A dashboard, and a connection that leaves after its first line.
    for conn in [&mut two, &mut three] {
        let answer = conn
            .call("follow", json!({"job_id": job_id}))
            .await
            .unwrap();
        assert_eq!(answer["result"]["key"], "shared", "{answer}");
    }
    while messages(&three.events, &job_id).is_empty() {
        three.next().await.expect("a line");
    }
    drop(three);
    to_exit(&mut one, &job_id).await;
    to_exit(&mut two, &job_id).await;
    for (name, conn) in [("launcher", &one), ("follower", &two)] {
        assert_eq!(
            messages(&conn.events, &job_id),
            lines,
            "{name}: every line once, in order"
        );
        let exited = conn
            .events
            .iter()
            .rfind(|e| e["event"] == "exited")
            .unwrap();
        assert_eq!(exited["log_lines"]["1"], 30, "{name}: {exited}");
        assert_eq!(exited["exit_code"], 0, "{name}: {exited}");
    }
    // One status poll for the job, however many follow it: never twice in a call, and no more
    // calls naming it than its timeline has describes (17) plus the answers after its end.
    let describes: Vec<Value> = fake.requests("DescribeJobs");
    let naming: Vec<&Value> = describes
        .iter()
        .filter(|r| r["jobs"].as_array().unwrap().contains(&job_id))
        .collect();
    for request in &naming {
        let ids = request["jobs"].as_array().unwrap();
        assert_eq!(
            ids.iter().filter(|id| **id == job_id).count(),
            1,
            "{request}"
        );
    }
    assert!(
        naming.len() <= 41 + 3,
        "{} DescribeJobs name the job",
        naming.len()
    );
    stop(child).await;
    assert_eq!(fake.calls("SubmitJob"), 1);
}
