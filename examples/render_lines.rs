//! Renders 100,000 log lines through the real `mfbatch logs` (fake AWS, pages of 10,000 events as
//! CloudWatch serves them) and compares with `cat` of the same text into the same kind of pipe.
//!
//! `cargo build --release && cargo run --release --example render_lines -- [--lines N] [--runs R]`

#[path = "../benches/support/mod.rs"]
mod measure;

#[path = "../tests/support/fake_aws/mod.rs"]
#[allow(dead_code, unused_imports)]
mod fake_aws;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_aws::{FakeAws, Timeline};
use measure::{arg, median, ms};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (count, runs) = (arg("--lines", 100_000), arg("--runs", 5));
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("mfbatch"))
        .filter(|p| p.exists())
        .expect("build the binary first: cargo build --release");

    let mut rng = fastrand::Rng::with_seed(3);
    let lines: Vec<String> = (0..count)
        .map(|i| {
            let width = rng.usize(20..160);
            let body: String = (0..width).map(|_| rng.alphanumeric()).collect();
            format!("{i:06} INFO step: {body}")
        })
        .collect();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();

    let fake = FakeAws::start().await;
    fake.set_log_page_size(10_000);
    let home = tempfile::tempdir().unwrap();
    let clients = fake.clients();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let timeline = Timeline::new().running(1).logs(&refs).succeeded();
    let job_id = fake.submit_jobs(vec![timeline]).await.remove(0);
    // Let the job reach its end so `logs` reads a finished stream.
    let mut snapshot = None;
    for _ in 0..4 {
        snapshot = Some(
            clients
                .batch
                .describe_jobs()
                .jobs(&job_id)
                .send()
                .await
                .unwrap(),
        );
    }
    let snapshot = snapshot.unwrap();

    // What the fake and the SDK alone cost: the same pages read in-process.
    let start = Instant::now();
    let stream = snapshot.jobs()[0]
        .container()
        .unwrap()
        .log_stream_name()
        .unwrap()
        .to_owned();
    let mut token: Option<String> = None;
    let mut events = 0;
    loop {
        let page = clients
            .logs
            .get_log_events()
            .log_group_name("/aws/batch/job")
            .log_stream_name(&stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        events += page.events().len();
        let next = page.next_forward_token().map(str::to_owned);
        if next == token {
            break;
        }
        token = next;
    }
    let sdk_alone = start.elapsed();
    assert_eq!(events, count);
    let time_command = |mut command: Command| {
        let start = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = Vec::with_capacity(text.len());
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        assert!(child.wait().unwrap().success());
        (start.elapsed(), out)
    };
    let mut ours = Vec::new();
    let mut cat = Vec::new();
    for _ in 0..runs {
        let mut command = Command::new(&binary);
        command
            .args(["logs", &job_id, "--no-follow"])
            .env_clear()
            .envs(fake.cli_env(home.path()))
            .env("MFBATCH_DRAIN_QUIET_MS", "0");
        let (elapsed, out) = tokio::task::block_in_place(|| time_command(command));
        assert!(
            out == text.as_bytes(),
            "mfbatch logs printed something else"
        );
        ours.push(elapsed);
        let mut command = Command::new("cat");
        command.arg(file.path());
        let (elapsed, out) = tokio::task::block_in_place(|| time_command(command));
        assert_eq!(out.len(), text.len());
        cat.push(elapsed);
    }
    let (ours, cat) = (median(&mut ours), median(&mut cat));
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    println!(
        "{count} lines, {:.1} MiB, median of {runs}",
        text.len() as f64 / 1048576.0
    );
    println!(
        "mfbatch logs (fake AWS, 10 pages): {:>8.1} ms  {:>12.0} lines/s",
        ms(ours),
        rate(ours)
    );
    println!(
        "cat (local file):                  {:>8.1} ms  {:>12.0} lines/s",
        ms(cat),
        rate(cat)
    );
    println!(
        "ratio (mfbatch / cat time): {:.1}",
        ours.as_secs_f64() / cat.as_secs_f64()
    );
    println!(
        "the same pages read in-process with the SDK alone: {:.1} ms",
        ms(sdk_alone)
    );
    println!("GetLogEvents calls: {}", fake.calls("GetLogEvents"));
}
