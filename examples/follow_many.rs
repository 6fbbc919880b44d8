//! Follows 1,000 jobs at once through one [`Tracker`] against the test suite's fake AWS, for a
//! simulated hour, and reports the AWS calls it made against the one-DescribeJobs-per-job-per-
//! second approach (Metaflow's `@batch`) and a per-job `aws logs tail`-style GetLogEvents loop.
//!
//! Time is compressed: every interval of the default [`TrackerConfig`] is divided by `--speedup`
//! (default 60, so one real second is one simulated minute) and the call budgets are multiplied
//! by it, so the calls per simulated minute are what a real process would make. The fake serves
//! from a child process, so the peak memory reported is the follower's own.
//!
//! `cargo run --release --example follow_many -- [--jobs 1000] [--speedup 60] [--minutes 60]`

#[path = "../benches/support/mod.rs"]
mod measure;

#[path = "../tests/support/fake_aws/mod.rs"]
#[allow(dead_code, unused_imports)]
mod fake_aws;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_aws::{FakeAws, Timeline};
use measure::{arg, peak_rss_kib};
use mfbatch::event::{Event, EventSink, JobStatus};
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let jobs = arg("--jobs", 1000);
    if std::env::args().any(|a| a == "--serve") {
        serve(jobs).await;
    } else {
        follow(jobs, arg("--speedup", 60) as u32, arg("--minutes", 60)).await;
    }
}

/// The child: scripts and submits the jobs on a fake, prints its address and the ids, serves
/// until told to report its call counts.
async fn serve(jobs: usize) {
    let fake = FakeAws::start().await;
    // A mix of jobs: waiting for capacity, short and long runs, lines that arrive after the end.
    let mut rng = fastrand::Rng::with_seed(42);
    let timelines = (0..jobs)
        .map(|i| {
            let lines: Vec<String> = (0..20).map(|n| format!("job {i} line {n}")).collect();
            let more: Vec<String> = (0..20).map(|n| format!("job {i} later {n}")).collect();
            Timeline::new()
                .status(JobStatus::Submitted, 1)
                .status(JobStatus::Runnable, rng.usize(1..20))
                .status(JobStatus::Starting, 1)
                .running(rng.usize(5..200))
                .logs(&lines.iter().map(String::as_str).collect::<Vec<_>>())
                .logs_when_done(&more.iter().map(String::as_str).collect::<Vec<_>>())
                .exit(if rng.usize(0..10) == 0 { 1 } else { 0 })
        })
        .collect();
    let ids = fake.submit_jobs(timelines).await;
    let setup_calls = fake.total_calls();
    println!("{}", json!({"uri": fake.uri(), "ids": ids}));
    let mut line = String::new();
    let stdin = tokio::task::spawn_blocking(move || {
        let _ = std::io::stdin().read_line(&mut line);
    });
    let _ = stdin.await;
    let describes: Vec<usize> = fake
        .requests("DescribeJobs")
        .iter()
        .map(|b| b["jobs"].as_array().map_or(0, Vec::len))
        .collect();
    let report = json!({
        "describe_sizes": describes,
        "get_log_events": fake.calls("GetLogEvents"),
        "following_calls": fake.total_calls() - setup_calls,
    });
    println!("{report}");
}

/// The parent: follows every job through one tracker and reports.
async fn follow(jobs: usize, speedup: u32, minutes: usize) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve", "--jobs", &jobs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake");
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    from_child.read_line(&mut first).unwrap();
    let hello: Value = serde_json::from_str(&first).expect("the fake's address and job ids");
    let ids: Vec<String> = serde_json::from_value(hello["ids"].clone()).unwrap();
    let config = FakeAws::sdk_config_for(hello["uri"].as_str().unwrap());
    let clients = mfbatch::aws::Clients::from_sdk_config(&config, &Default::default()).unwrap();
    let rss_before = peak_rss_kib();

    let tracker = Tracker::new(&clients, measure::scaled(TrackerConfig::default(), speedup));
    let lines = Arc::new(AtomicUsize::new(0));
    let counter = lines.clone();
    let sink: EventSink = Arc::new(move |event| {
        if let Event::Log { .. } = event {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let handles: Vec<_> = ids
        .iter()
        .map(|id| tracker.follow_with(FollowRequest::new(id.clone()), sink.clone()))
        .collect();
    let limit = Duration::from_secs(60 * minutes as u64) / speedup;
    let mut finished = 0;
    for handle in handles {
        let left = limit.saturating_sub(start.elapsed());
        if let Ok(Ok(_)) = tokio::time::timeout(left, handle.wait()).await {
            finished += 1;
        }
    }
    let real = start.elapsed();
    let rss_after = peak_rss_kib();

    let mut to_child = child.stdin.take().unwrap();
    writeln!(to_child, "report").unwrap();
    let mut report = String::new();
    from_child.read_line(&mut report).unwrap();
    let _ = child.wait();
    let report: Value = serde_json::from_str(&report).expect("the fake's report");
    let describes: Vec<usize> = serde_json::from_value(report["describe_sizes"].clone()).unwrap();
    let get_logs = report["get_log_events"].as_u64().unwrap() as usize;

    let simulated_minutes = real.as_secs_f64() * f64::from(speedup) / 60.0;
    let per_min = |n: usize| n as f64 / simulated_minutes;
    // The baseline polls every job once a second, and reads each job's log stream once a second
    // (what one `aws logs tail --follow` per job does).
    let baseline = jobs as f64 * 60.0;
    println!(
        "jobs: {jobs}, finished: {finished}, log lines delivered: {}",
        lines.load(Ordering::Relaxed)
    );
    println!(
        "simulated time: {simulated_minutes:.1} min ({:.1} s real, speedup {speedup})",
        real.as_secs_f64()
    );
    println!(
        "DescribeJobs:  {:>6} calls = {:>8.1}/min  (baseline {baseline:>8.0}/min, ratio {:.4}); largest batch {} ids, mean {:.1}",
        describes.len(),
        per_min(describes.len()),
        per_min(describes.len()) / baseline,
        describes.iter().max().unwrap_or(&0),
        describes.iter().sum::<usize>() as f64 / describes.len().max(1) as f64
    );
    println!(
        "GetLogEvents:  {:>6} calls = {:>8.1}/min  (baseline {baseline:>8.0}/min, ratio {:.4})",
        get_logs,
        per_min(get_logs),
        per_min(get_logs) / baseline
    );
    println!(
        "all calls while following: {}; tracker budget grants (Batch, Logs): {:?}",
        report["following_calls"],
        tracker.calls()
    );
    println!(
        "peak RSS of the following process: {} MiB with clients built, {} MiB after following",
        rss_before / 1024,
        rss_after / 1024
    );
}
