//! Runs the real `mfbatch` binary as a user does: a temporary HOME and working directory, the
//! environment cleared and set to talk to the fake, a deadline; plus the filters that make its
//! output snapshot-stable (port, temp paths, job ids, hashes).

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fake_aws::FakeAws;

/// A spawned binary longer than this is a hang, not a slow test.
const DEADLINE: Duration = Duration::from_secs(60);

/// One `mfbatch` invocation's result.
#[derive(Debug)]
pub struct Output {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Exit code, stdout and stderr as one text, for a snapshot.
    pub fn render(&self) -> String {
        let code = self
            .code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "killed".into());
        format!(
            "exit code: {code}\n----- stdout -----\n{}----- stderr -----\n{}",
            self.stdout, self.stderr
        )
    }
}

/// A user's machine for the binary: HOME and a working directory, and its environment.
pub struct Cli {
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Cli {
    /// A fresh HOME and working directory, with [`FakeAws::cli_env`] as the environment.
    pub fn new(fake: &FakeAws) -> Self {
        let home = tempfile::Builder::new()
            .prefix("mfbatch-home-")
            .tempdir()
            .expect("temp HOME");
        let work = tempfile::Builder::new()
            .prefix("mfbatch-work-")
            .tempdir()
            .expect("temp work dir");
        let env = fake.cli_env(home.path()).into_iter().collect();
        Cli { home, work, env }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn work(&self) -> &Path {
        self.work.path()
    }

    pub fn set_env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn remove_env(&mut self, key: &str) -> &mut Self {
        self.env.remove(key);
        self
    }

    /// Writes a file under the working directory.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        super::write_file(self.work(), rel, contents)
    }

    /// Writes a file under HOME.
    pub fn write_home(&self, rel: &str, contents: &str) -> PathBuf {
        super::write_file(self.home(), rel, contents)
    }

    /// Starts `mfbatch ARGS` as [`Cli::run`] does, without waiting: for tests that read its
    /// output as it comes and signal it.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mfbatch"));
        command
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.spawn().expect("spawn mfbatch")
    }

    /// Runs `mfbatch ARGS` in the working directory with exactly this environment (plus PATH).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self.spawn(args);
        let read = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                pipe.read_to_string(&mut text).expect("utf-8 output");
                text
            })
        };
        let stdout = read(Box::new(child.stdout.take().expect("piped")));
        let stderr = read(Box::new(child.stderr.take().expect("piped")));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for mfbatch") {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mfbatch {args:?} did not exit within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Output {
            code: status.code(),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Regex → placeholder pairs for snapshots: temp paths, the fake's address, job ids, hashes.
    pub fn filters(&self) -> Vec<(String, String)> {
        let mut filters = Vec::new();
        for (dir, name) in [(self.work(), "[WORK]"), (self.home(), "[HOME]")] {
            if let Ok(canonical) = dir.canonicalize() {
                filters.push((escape(&canonical.display().to_string()), name.to_owned()));
            }
            filters.push((escape(&dir.display().to_string()), name.to_owned()));
        }
        for (regex, replacement) in [
            (r"127\.0\.0\.1:\d+", "[FAKE]"),
            (
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "[JOB_ID]",
            ),
            (r"[0-9a-f]{64}", "[SHA256]"),
            (r"mfbatch-[0-9a-f]{16}", "mfbatch-[DEFHASH]"),
            (r"sha256 [0-9a-f]{12}", "sha256 [SHA256_12]"),
            // Local metadata run ids are microsecond timestamps.
            (r"Flow/\d{16}/", "Flow/[RUN_ID]/"),
        ] {
            filters.push((regex.to_owned(), replacement.to_owned()));
        }
        filters
    }
}

/// Escapes regex metacharacters, for literal paths in filters.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Reads lines until one contains `needle` (30 s at most); returns them all.
pub fn read_until(reader: &mut impl BufRead, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read output") == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("never saw {needle:?}; output so far:\n{seen}");
}

/// Ctrl-C, as the terminal sends it to the process.
pub fn interrupt(child: &Child) {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
}

/// Sends SIGINT, waits for the exit (20 s at most) and returns the code and the rest of stderr.
pub fn interrupt_and_finish(child: &mut Child, stderr: &mut impl BufRead) -> (Option<i32>, String) {
    interrupt(child);
    let code = tokio::task::block_in_place(|| wait_with_deadline(child, Duration::from_secs(20)));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (code, rest)
}

/// The exit code, or a panic when the process outlives `limit`.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mfbatch did not exit within {limit:?} of the interrupt");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
