//! `mfbatch run --local` as a user runs it: the step's environment is the job's (nothing of the
//! caller's MFBATCH_* leaks in), one Ctrl-C at the terminal reaches the step as one SIGTERM,
//! and a second one kills the step's whole process group and removes its work directory.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cli::Cli;
use support::FakeAws;

fn spawn_local(cli: &Cli, fake: &FakeAws, script: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mfbatch"));
    command
        .args(["run", "--local", script])
        .current_dir(cli.work())
        .env_clear()
        .envs(fake.cli_env(cli.home()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, like a shell job: a "terminal" Ctrl-C goes to the whole group.
        .process_group(0);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.spawn().expect("spawn mfbatch")
}

/// Ctrl-C as a terminal sends it: SIGINT to every process of the foreground group.
fn ctrl_c(child: &Child) {
    // SAFETY: signalling the process group of our own child.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, libc::SIGINT);
    }
}

fn next_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    line
}

fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "mfbatch did not exit in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) != 0 }
}

#[tokio::test]
async fn the_callers_mfbatch_variables_do_not_reach_the_step() {
    let fake = FakeAws::start().await;
    let mut cli = Cli::new(&fake);
    cli.write(
        "step.py",
        "import os, sys\nprint(sys.argv[1:])\nprint(sorted(k for k in os.environ if k.startswith('MFBATCH_')))\n",
    );
    cli.set_env("MFBATCH_ARGS", r#"["--from-the-caller"]"#)
        .set_env("MFBATCH_SCRIPT", "other.py");
    let out = cli.run(&["run", "--local", "step.py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert_eq!(
        out.stdout,
        "[]\n['MFBATCH_CPU', 'MFBATCH_LOCAL_JOB_ID', 'MFBATCH_MEMORY_MIB']\n",
        "{}",
        out.render()
    );
    assert!(
        !out.stdout.contains("mfbatch-end"),
        "records are not output"
    );
}

#[test]
fn one_ctrl_c_reaches_the_step_as_one_signal() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeAws::start());
    let cli = Cli::new(&fake);
    cli.write(
        "step.py",
        "import signal, sys, time\n\
         got = []\n\
         def on(n, f):\n    got.append(n); print('signal', n, flush=True)\n\
         for s in (signal.SIGINT, signal.SIGTERM):\n    signal.signal(s, on)\n\
         print('ready', flush=True)\n\
         deadline = time.time() + 20\n\
         while not got and time.time() < deadline:\n    time.sleep(0.05)\n\
         time.sleep(1)\n\
         sys.exit(3)\n",
    );
    let mut child = spawn_local(&cli, &fake, "step.py");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(next_line(&mut stdout), "ready\n");
    ctrl_c(&child);
    let code = wait(&mut child, Duration::from_secs(20));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(code, Some(130));
    assert_eq!(rest, "signal 15\n", "exactly one SIGTERM reached the step");
}

#[test]
fn a_second_ctrl_c_kills_the_steps_group_and_removes_its_work_dir() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeAws::start());
    let cli = Cli::new(&fake);
    // The step ignores SIGTERM and has a child of its own.
    cli.write(
        "step.py",
        "import os, signal, subprocess, sys, time\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n\
         print(os.getpid(), kid.pid, os.getcwd(), flush=True)\n\
         time.sleep(60)\n",
    );
    let mut child = spawn_local(&cli, &fake, "step.py");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = next_line(&mut stdout);
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [step, kid, workdir] = fields[..] else {
        panic!("unexpected line {line:?}");
    };
    let (step, kid): (i32, i32) = (step.parse().unwrap(), kid.parse().unwrap());
    assert!(std::path::Path::new(workdir).is_dir());
    ctrl_c(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!gone(step), "the step ignores SIGTERM and still runs");
    ctrl_c(&child);
    assert_eq!(wait(&mut child, Duration::from_secs(10)), Some(130));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(gone(step) && gone(kid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(step) && gone(kid), "the step's group was killed");
    assert!(
        !std::path::Path::new(workdir).exists(),
        "{workdir} was removed"
    );
}
