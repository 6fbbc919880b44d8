//! `mfbatch run` following its job, `logs`, `status` and `kill`, run as a user runs them (the
//! real binary, a temporary HOME, the fake AWS): stdout is the job's output alone, the exit code
//! is the job's, and Ctrl-C terminates the job it submitted.

mod support;

use std::io::BufReader;
use std::time::{Duration, Instant};

use support::cli::{interrupt, interrupt_and_finish, read_until, wait_with_deadline, Cli};
use support::{AttemptEnd, FakeAws, JobStatus, Timeline};

/// A user's session whose polls and log drain are fast enough for tests.
fn cli(fake: &FakeAws) -> Cli {
    let mut cli = Cli::new(fake);
    cli.set_env("MFBATCH_POLL_MIN_MS", "20")
        .set_env("MFBATCH_DRAIN_QUIET_MS", "150");
    cli.write("step.py", "print('hello')\n");
    cli
}

/// The next job prints "working" and stays RUNNING until it is stopped.
fn script_job_that_runs_on(fake: &FakeAws) {
    fake.script_next_job(
        Timeline::new()
            .running(1_000_000)
            .logs(&["working"])
            .succeeded(),
    );
}

/// Runs the (blocking) binary without stalling the runtime that serves the fake.
async fn run(cli: &Cli, args: &[&str]) -> support::cli::Output {
    tokio::task::block_in_place(|| cli.run(args))
}

/// Snapshots stderr with the runner's filters plus one for timings.
fn assert_stderr_snapshot(cli: &Cli, name: &str, stderr: &str) {
    let mut settings = insta::Settings::clone_current();
    for (regex, replacement) in cli.filters() {
        settings.add_filter(&regex, replacement);
    }
    settings.add_filter(r"\(after [^)]*\)", "(after [TIME])");
    settings.bind(|| insta::assert_snapshot!(name, stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_only_the_job_output_and_exits_with_its_code() {
    let fake = FakeAws::start().await;
    fake.script_next_job(
        Timeline::new()
            .status(JobStatus::Runnable, 2)
            .running(3)
            .logs(&["hello from the job", "naïve ✓ unicode", ""])
            .logs_when_done(&["the last line"])
            .succeeded(),
    );
    let cli = cli(&fake);
    let out = run(&cli, &["run", "step.py", "--cpu", "2"]).await;
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert_eq!(
        out.stdout,
        "hello from the job\nnaïve ✓ unicode\n\nthe last line\n"
    );
    assert_stderr_snapshot(&cli, "run_follow_success_stderr", &out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_gives_its_exit_code_and_the_reason() {
    let fake = FakeAws::start().await;
    fake.script_next_job(
        Timeline::new()
            .running(1)
            .logs(&["Traceback: boom"])
            .exit(3),
    );
    let cli = cli(&fake);
    let out = run(&cli, &["run", "step.py"]).await;
    assert_eq!(out.code, Some(3), "{}", out.render());
    assert_eq!(out.stdout, "Traceback: boom\n");
    assert!(
        out.stderr.contains("the step exited with code 3"),
        "{}",
        out.stderr
    );

    fake.script_next_job(Timeline::new().running(1).failed(AttemptEnd::reason(
        "OutOfMemoryError: Container killed due to memory usage",
    )));
    let out = run(&cli, &["run", "step.py"]).await;
    assert_eq!(out.code, Some(1), "no exit code: 1\n{}", out.render());
    assert!(out.stderr.contains("out of memory"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("OutOfMemoryError: Container killed due to memory usage"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_one_event_per_line() {
    let fake = FakeAws::start().await;
    fake.script_next_job(Timeline::new().running(1).logs(&["a", "b"]).succeeded());
    let cli = cli(&fake);
    let out = run(&cli, &["run", "step.py", "--output", "json"]).await;
    assert_eq!(out.code, Some(0), "{}", out.render());
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"submitted"), "{kinds:?}");
    // The job's last event, then where its Metaflow records went.
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["exited", "metadata"],
        "{kinds:?}"
    );
    let metadata = events.last().unwrap();
    assert_eq!(metadata["pending"], 0, "{metadata}");
    assert!(
        metadata["pathspec"].as_str().unwrap().contains('/'),
        "{metadata}"
    );
    assert!(
        !out.stderr.contains("Recorded as"),
        "not as text too: {}",
        out.stderr
    );
    let logs: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "log")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(logs, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_terminates_the_submitted_job_and_exits_130() {
    let fake = FakeAws::start().await;
    script_job_that_runs_on(&fake);
    let cli = cli(&fake);
    let mut child = cli.spawn(&["run", "step.py"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = tokio::task::block_in_place(|| read_until(&mut stderr, "RUNNING"));
    let (code, rest) = interrupt_and_finish(&mut child, &mut stderr);
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    let job_id = fake.jobs()[0].id.clone();
    let terminated = fake.requests("TerminateJob");
    assert_eq!(terminated.len(), 1, "stderr:\n{seen}{rest}");
    assert_eq!(terminated[0]["jobId"], job_id.as_str());
    assert!(rest.contains("Stopping job"), "{rest}");
    // The step's end records (exit 143 after the forwarded SIGTERM) show it stopped.
    assert!(
        rest.contains(&format!("Stopped: {job_id} (step exited 143)")),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_returns_within_the_grace_even_when_the_job_is_not_seen_to_stop() {
    let fake = FakeAws::start().await;
    script_job_that_runs_on(&fake);
    fake.fail_always("TerminateJob", support::Fault::AccessDenied);
    let cli = cli(&fake);
    let mut child = cli.spawn(&["run", "step.py"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = tokio::task::block_in_place(|| read_until(&mut stderr, "RUNNING"));
    let (code, rest) = interrupt_and_finish(&mut child, &mut stderr);
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    let job_id = fake.jobs()[0].id.clone();
    assert!(
        rest.contains("TerminateJob"),
        "the failed stop is reported:\n{rest}"
    );
    assert!(
        rest.contains("Not yet seen to stop after 5s"),
        "stderr:\n{seen}{rest}"
    );
    assert!(
        rest.contains(&format!("watch with: mfbatch status {job_id}")),
        "stderr:\n{seen}{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_does_not_wait_for_a_hanging_stop() {
    let fake = FakeAws::start().await;
    script_job_that_runs_on(&fake);
    fake.fail_always(
        "TerminateJob",
        support::Fault::Hang(Duration::from_secs(30)),
    );
    let cli = cli(&fake);
    let mut child = cli.spawn(&["run", "step.py"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = tokio::task::block_in_place(|| read_until(&mut stderr, "RUNNING"));
    interrupt(&child);
    seen += &tokio::task::block_in_place(|| read_until(&mut stderr, "Ctrl-C again"));
    let started = Instant::now();
    interrupt(&child);
    let code =
        tokio::task::block_in_place(|| wait_with_deadline(&mut child, Duration::from_secs(20)));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "left while TerminateJob was still held ({:?})",
        started.elapsed()
    );
    assert!(rest.contains("Left without waiting"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_logs_leaves_the_job_running() {
    let fake = FakeAws::start().await;
    script_job_that_runs_on(&fake);
    let cli = cli(&fake);
    let out = run(&cli, &["run", "step.py", "--detach"]).await;
    let job_id = out.stdout.trim().to_owned();
    let mut child = cli.spawn(&["logs", &job_id]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    tokio::task::block_in_place(|| read_until(&mut stdout, "working"));
    interrupt(&child);
    let code =
        tokio::task::block_in_place(|| wait_with_deadline(&mut child, Duration::from_secs(20)));
    assert_eq!(code, Some(130));
    assert_eq!(fake.calls("TerminateJob") + fake.calls("CancelJob"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_status_and_kill_work_on_earlier_jobs() {
    let fake = FakeAws::start().await;
    fake.script_next_job(Timeline::new().running(1).logs(&["one", "two"]).succeeded());
    fake.script_next_job(Timeline::new().running(1).logs(&["three"]).exit(4));
    fake.script_next_job(
        Timeline::new()
            .status(JobStatus::Runnable, 1_000_000)
            .succeeded(),
    );
    let cli = cli(&fake);
    let a = run(&cli, &["run", "step.py", "--detach", "--name", "alpha"])
        .await
        .stdout
        .trim()
        .to_owned();
    let b = run(&cli, &["run", "step.py", "--detach", "--name", "beta"])
        .await
        .stdout
        .trim()
        .to_owned();
    let c = run(&cli, &["run", "step.py", "--detach", "--name", "gamma"])
        .await
        .stdout
        .trim()
        .to_owned();

    let out = run(&cli, &["logs", &a]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "one\ntwo\n"),
        "{}",
        out.render()
    );

    let out = run(&cli, &["logs", &a, &b]).await;
    assert_eq!(out.code, Some(4), "the failed job's code: {}", out.render());
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["alpha | one", "alpha | two", "beta | three"]);

    let out = run(&cli, &["status", &a, &b, &c]).await;
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(
        out.stdout.contains(&format!("{a}  SUCCEEDED")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("{b}  FAILED")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("exited with code 4"), "{}", out.stdout);

    let out = run(&cli, &["kill", &c, "--reason", "not needed"]).await;
    assert_eq!(out.code, Some(0), "{}", out.render());
    let cancels = fake.requests("CancelJob");
    assert_eq!(cancels.len(), 1, "a RUNNABLE job is cancelled");
    assert_eq!(cancels[0]["reason"], "not needed");

    let out = run(&cli, &["status", "no-such-job"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("job no-such-job is not known to AWS Batch")
            && out.stderr.contains("hint: check the job id and the region"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_pick_an_attempt_and_show_timestamps() {
    let fake = FakeAws::start().await;
    fake.script_next_job(
        Timeline::new()
            .running(1)
            .logs(&["first try"])
            .attempt_failed(
                AttemptEnd::exit(1).status_reason("Host EC2 (instance i-1) terminated."),
            )
            .status(JobStatus::Runnable, 1)
            .running(1)
            .logs(&["second try"])
            .succeeded(),
    );
    let cli = cli(&fake);
    let id = run(&cli, &["run", "step.py", "--detach"])
        .await
        .stdout
        .trim()
        .to_owned();

    let out = run(&cli, &["logs", &id]).await;
    assert_eq!(out.stdout, "first try\nsecond try\n", "{}", out.render());
    let out = run(&cli, &["logs", &id, "--attempt", "2"]).await;
    assert_eq!(out.stdout, "second try\n", "{}", out.render());
    let out = run(&cli, &["logs", &id, "--attempt", "1", "--timestamps"]).await;
    let line = out.stdout.trim_end();
    let (stamp, message) = line.split_once(' ').expect("a timestamp, then the line");
    assert_eq!(message, "first try");
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "RFC 3339 UTC with milliseconds: {stamp}"
    );
    let out = run(&cli, &["logs", &id, "--attempt", "0"]).await;
    assert_eq!(out.code, Some(2), "{}", out.render());
    let out = run(&cli, &["logs", &id, "--since", "soon"]).await;
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(out.stderr.contains("--since"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_before_submitting_creates_no_job() {
    let fake = FakeAws::start().await;
    let cli = cli(&fake);
    // Big enough that the upload is still going when the interrupt comes.
    support::write_file(
        cli.work(),
        "weights.py",
        support::incompressible(96 << 20, 1),
    );
    let mut child = cli.spawn(&["run", "step.py"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = tokio::task::block_in_place(|| read_until(&mut stderr, "Uploading"));
    let (code, rest) = interrupt_and_finish(&mut child, &mut stderr);
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    assert!(rest.contains("no job was created"), "{rest}");
    assert_eq!(fake.calls("SubmitJob"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tuning_value_is_a_usage_error_naming_it() {
    let fake = FakeAws::start().await;
    let mut cli = cli(&fake);
    cli.set_env("MFBATCH_DRAIN_QUIET_MS", "soon");
    let out = run(&cli, &["logs", "some-job"]).await;
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(
        out.stderr.contains("MFBATCH_DRAIN_QUIET_MS"),
        "{}",
        out.stderr
    );
    assert_eq!(fake.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_leaves_at_once_and_says_how_to_follow_later() {
    let fake = FakeAws::start().await;
    script_job_that_runs_on(&fake);
    // The stop cannot get through, so the job keeps running after the first Ctrl-C.
    fake.fail_always("TerminateJob", support::Fault::AccessDenied);
    let cli = cli(&fake);
    let mut child = cli.spawn(&["run", "step.py"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = tokio::task::block_in_place(|| read_until(&mut stderr, "RUNNING"));
    interrupt(&child);
    seen += &tokio::task::block_in_place(|| read_until(&mut stderr, "Ctrl-C again"));
    let (code, rest) = interrupt_and_finish(&mut child, &mut stderr);
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    let job_id = fake.jobs()[0].id.clone();
    assert!(
        rest.contains(&format!("mfbatch logs {job_id}")),
        "stderr:\n{seen}{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_is_a_setup_error_with_a_hint() {
    let fake = FakeAws::start().await;
    let mut cli = cli(&fake);
    cli.remove_env("AWS_ACCESS_KEY_ID")
        .remove_env("AWS_SECRET_ACCESS_KEY");
    let out = run(&cli, &["run", "step.py"]).await;
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(
        out.stderr.contains("no credentials found"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: no usable AWS credentials"),
        "{}",
        out.stderr
    );
    assert_eq!(fake.total_calls(), 0, "nothing reached AWS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_output_an_error_is_an_event_on_stdout() {
    let fake = FakeAws::start().await;
    let cli = cli(&fake);
    let out = run(
        &cli,
        &["--output", "json", "run", "--cpu", "abc", "step.py"],
    )
    .await;
    assert_eq!(out.code, Some(2), "{}", out.render());
    let event: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is one JSON event ({e}):\n{}", out.render()));
    assert_eq!(event["event"], "error");
    assert!(
        event["message"].as_str().unwrap().contains("--cpu"),
        "{event}"
    );
    assert!(out.stderr.is_empty(), "{}", out.render());
    assert_eq!(fake.total_calls(), 0);
}
