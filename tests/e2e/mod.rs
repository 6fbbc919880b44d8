//! Harness for the end-to-end tests: one moto server per test binary (started on first use),
//! step files in a temp dir per test, and the real `mfbatch` binary run with a clean environment
//! against moto (AWS Batch) or with `--local`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long a whole `mfbatch` command may take before the test fails instead of hanging.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long serve.py may take to print its JSON line.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// serve.py's stderr lines kept for failure messages.
const SERVER_LOG_LINES: usize = 200;

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// AWS Batch, emulated by moto (jobs run as local processes started by serve.py).
    Batch,
    /// `mfbatch run --local`.
    Local,
}

/// What serve.py prints once it is ready.
#[derive(Debug, Clone, Deserialize)]
pub struct MotoInfo {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub queue: String,
    pub role_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The running server. It is never dropped (it lives in a static): when the test process
/// exits, the OS closes `_stdin`, serve.py reads EOF, kills its jobs and stops.
pub struct Moto {
    pub info: MotoInfo,
    pub python: PathBuf,
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Moto {
    /// The last lines serve.py wrote to stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let lines = self.log.lock().unwrap();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();

/// The shared moto server, started on first use; panics (fails the test) if it cannot start.
pub fn moto() -> &'static Moto {
    match MOTO.get_or_init(start_moto) {
        Ok(moto) => moto,
        Err(message) => panic!("the moto server is unavailable:\n{message}"),
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `MFBATCH_MOTO_PYTHON`, else the venv from tests/moto/setup-venv.sh (created when missing).
pub fn moto_python() -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("MFBATCH_MOTO_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(python));
    }
    let script = repo().join("tests/moto/setup-venv.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}); set MFBATCH_MOTO_PYTHON to a python with moto[server] to skip it:\n{stderr}{stdout}",
            script.display(),
            out.status
        ));
    }
    match stdout.lines().last().map(str::trim) {
        Some(python) if !python.is_empty() => Ok(PathBuf::from(python)),
        _ => Err(format!(
            "{} printed no python path:\n{stderr}",
            script.display()
        )),
    }
}

fn start_moto() -> Result<Moto, String> {
    let python = moto_python()?;
    let serve = repo().join("tests/moto/serve.py");
    let mut child = Command::new(&python)
        .arg(&serve)
        .args(["--port", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {} {}: {e}", python.display(), serve.display()))?;
    let stdin = child.stdin.take().expect("stdin is piped");

    // Keep reading stderr so serve.py never blocks on a full pipe; remember the tail.
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut lines = sink.lock().unwrap();
            if lines.len() == SERVER_LOG_LINES {
                lines.remove(0);
            }
            lines.push(line);
        }
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        lines.for_each(drop); // nothing else is expected; keep the pipe open and drained
    });
    let fail = |child: &mut Child, what: String| {
        let _ = child.kill();
        let _ = child.wait();
        thread::sleep(Duration::from_millis(200)); // let the stderr reader catch up
        format!(
            "{what}\nserve.py stderr:\n{}",
            log.lock().unwrap().join("\n")
        )
    };
    let line = match rx.recv_timeout(SERVER_START_TIMEOUT) {
        Ok(Some(Ok(line))) => line,
        Ok(_) => {
            return Err(fail(
                &mut child,
                "serve.py exited before printing its JSON line".into(),
            ))
        }
        Err(_) => {
            return Err(fail(
                &mut child,
                format!("serve.py printed nothing in {SERVER_START_TIMEOUT:?}"),
            ))
        }
    };
    let info: MotoInfo = match serde_json::from_str(&line) {
        Ok(info) => info,
        Err(e) => {
            return Err(fail(
                &mut child,
                format!("bad JSON line from serve.py ({e}): {line}"),
            ))
        }
    };
    Ok(Moto {
        info,
        python,
        _stdin: Mutex::new(stdin),
        _child: Mutex::new(child),
        log,
    })
}

/// A temp dir holding one test's step files (`step/`), its `HOME` and its local datastore.
pub struct StepDir {
    dir: tempfile::TempDir,
}

impl StepDir {
    /// Writes `files` (name, contents) into the step directory.
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mfbatch-e2e-")
            .tempdir()
            .expect("temp dir");
        for sub in ["step", "home"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        for (name, contents) in files {
            std::fs::write(dir.path().join("step").join(name), contents).expect("write step file");
        }
        StepDir { dir }
    }

    /// The `HOME` of the commands [`StepDir::mfbatch`] builds.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn script(&self, name: &str) -> PathBuf {
        self.dir.path().join("step").join(name)
    }

    /// `mfbatch ARGS` with a clean environment for `backend`, run in the step directory.
    pub fn mfbatch(&self, backend: Backend, args: &[&str]) -> Command {
        let home = self.home();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfbatch"));
        cmd.args(args)
            .env_clear()
            .current_dir(self.dir.path().join("step"))
            .env("HOME", &home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        match backend {
            Backend::Local => {
                cmd.env(
                    "METAFLOW_DATASTORE_SYSROOT_LOCAL",
                    self.dir.path().join("ds"),
                );
            }
            Backend::Batch => {
                let info = &moto().info;
                cmd.env("AWS_ENDPOINT_URL", &info.endpoint)
                    .env("METAFLOW_S3_ENDPOINT_URL", &info.endpoint)
                    .env("AWS_REGION", &info.region)
                    .env("AWS_ACCESS_KEY_ID", &info.access_key_id)
                    .env("AWS_SECRET_ACCESS_KEY", &info.secret_access_key)
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
                    .env(
                        "AWS_SHARED_CREDENTIALS_FILE",
                        home.join("no-aws-credentials"),
                    )
                    .env(
                        "METAFLOW_DATASTORE_SYSROOT_S3",
                        format!("s3://{}/metaflow", info.bucket),
                    )
                    .env("METAFLOW_BATCH_JOB_QUEUE", &info.queue)
                    .env("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", &info.role_arn)
                    .env("METAFLOW_BATCH_CONTAINER_IMAGE", "python:3.11")
                    .env("MFBATCH_DRAIN_QUIET_MS", "1000")
                    .env("MFBATCH_POLL_MIN_MS", "300");
            }
        }
        cmd
    }

    /// `mfbatch run [--local] SCRIPT <options>` (options may end with `--` and the script's args).
    pub fn run_command(&self, backend: Backend, script: &str, options: &[&str]) -> Command {
        let mut cmd = self.mfbatch(backend, &["run"]);
        if backend == Backend::Local {
            cmd.arg("--local");
        }
        cmd.arg(self.script(script)).args(options);
        cmd
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Run against moto (so serve.py's log belongs in failure messages).
    pub batch: bool,
}

impl Output {
    /// Everything worth seeing when an assertion fails.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "exit code {:?} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed,
            abbreviate(&self.stdout),
            self.stderr
        );
        if self.batch {
            text.push_str(&format!(
                "\n--- serve.py (last lines) ---\n{}",
                moto().log_tail()
            ));
        }
        text
    }

    /// Asserts the exit code and that stdout is exactly `lines`, each ending in a newline.
    #[track_caller]
    pub fn assert(&self, code: i32, lines: &[&str]) {
        let expected: String = lines.iter().map(|l| format!("{l}\n")).collect();
        assert!(
            self.code == Some(code) && self.stdout == expected,
            "expected exit code {code} and stdout {:?}\n{}",
            lines.iter().map(|l| abbreviate(l)).collect::<Vec<_>>(),
            self.describe()
        );
    }
}

/// Long lines shortened for messages.
pub fn abbreviate(text: &str) -> String {
    const KEEP: usize = 300;
    text.lines()
        .map(|line| {
            let chars = line.chars().count();
            if chars <= KEEP {
                line.to_owned()
            } else {
                let head: String = line.chars().take(KEEP).collect();
                format!("{head}… ({chars} chars)")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_all(mut reader: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8(bytes).unwrap_or_else(|e| {
            format!(
                "<not UTF-8> {}",
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            )
        })
    })
}

fn is_batch(cmd: &Command) -> bool {
    cmd.get_envs().any(|(key, _)| key == "AWS_ENDPOINT_URL")
}

/// Runs `cmd` to the end; fails the test (after killing it) if it takes over [`COMMAND_TIMEOUT`].
pub fn run(mut cmd: Command) -> Output {
    let batch = is_batch(&cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mfbatch");
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr = read_all(child.stderr.take().expect("piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mfbatch") {
            break status;
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = Output {
                code: None,
                stdout: stdout.join().unwrap(),
                stderr: stderr.join().unwrap(),
                elapsed: started.elapsed(),
                batch,
            };
            panic!(
                "{cmd:?} did not finish in {COMMAND_TIMEOUT:?}\n{}",
                out.describe()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: started.elapsed(),
        batch,
    }
}

/// A command whose stdout lines are read as they come.
pub struct Running {
    child: Child,
    started: Instant,
    batch: bool,
    lines: Receiver<String>,
    seen: Vec<String>,
    stdout_done: bool,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    pub fn start(mut cmd: Command) -> Self {
        let batch = is_batch(&cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mfbatch");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        let stderr = Some(read_all(child.stderr.take().expect("piped")));
        Running {
            child,
            started: Instant::now(),
            batch,
            lines,
            seen: Vec::new(),
            stdout_done: false,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next stdout line (with its newline), or `None` at EOF or after `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        if self.stdout_done {
            return None;
        }
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_done = true;
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; kills it and fails the test otherwise.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for mfbatch") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let out = Output {
            code: status.and_then(|s| s.code()),
            stdout: self.seen.concat(),
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            elapsed: self.started.elapsed(),
            batch: self.batch,
        };
        assert!(
            status.is_some(),
            "mfbatch did not exit within {timeout:?}\n{}",
            out.describe()
        );
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave mfbatch (and, through it, a job) running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A job as moto's DescribeJobs reports it, read with boto3 (not through mfbatch).
pub fn describe_job(job_id: &str) -> serde_json::Value {
    let moto = moto();
    let info = &moto.info;
    let code = "import boto3, json, sys\n\
                c = boto3.client('batch', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
                    aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])\n\
                print(json.dumps(c.describe_jobs(jobs=[sys.argv[5]])['jobs'], default=str))\n";
    let out = Command::new(&moto.python)
        .args(["-c", code])
        .args([
            &info.endpoint,
            &info.region,
            &info.access_key_id,
            &info.secret_access_key,
            job_id,
        ])
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run boto3");
    assert!(
        out.status.success(),
        "DescribeJobs via boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(jobs.len(), 1, "DescribeJobs({job_id}) returned {jobs:?}");
    jobs.into_iter().next().unwrap()
}

/// True once `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("Z")
        }
        Err(_) => true,
    }
}

/// Polls `condition` every 50 ms for up to `timeout`.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
