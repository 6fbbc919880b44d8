//! Follows one array of 10,000 children through one [`Tracker`] against the test suite's fake
//! AWS and reports what it cost: AWS calls per simulated minute by API, the follower's peak
//! memory, and the time from a child failing to its `child_failed` event (what becomes its line
//! in `run`'s output).
//!
//! Time is compressed as in `follow_many`: every interval of the default [`TrackerConfig`] is
//! divided by `--speedup` (default 60) and the budgets multiplied by it. The fake serves from a
//! child process, so the memory is the follower's own. Children move on one step each time the
//! parent is described; 1% of them fail (exit 1, or 137 without an end record).
//!
//! `cargo run --release --example follow_array -- [--children 10000] [--speedup 60]`

#[path = "../benches/support/mod.rs"]
mod measure;

#[path = "../tests/support/fake_aws/mod.rs"]
#[allow(dead_code, unused_imports)]
mod fake_aws;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_aws::{ArrayScript, AttemptEnd, FakeAws, Timeline};
use measure::{arg, peak_rss_kib};
use mfbatch::event::{Event, EventSink, JobStatus};
use mfbatch::track::array::ArrayFollow;
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let children = arg("--children", 10_000);
    if std::env::args().any(|a| a == "--serve") {
        serve(children).await;
    } else {
        follow(children, arg("--speedup", 60) as u32).await;
    }
}

/// The child: the fake with one array submitted; reports its calls and failure times on demand.
async fn serve(children: usize) {
    let fake = FakeAws::start().await;
    let mut rng = fastrand::Rng::with_seed(11);
    let script = ArrayScript::each(children, |i| {
        let timeline = Timeline::new()
            .status(JobStatus::Runnable, rng.usize(1..60))
            .running(rng.usize(3..90))
            .logs(&[&format!("child {i} starting"), &format!("child {i} step 1")]);
        match rng.usize(0..200) {
            0 => timeline.exit(1),
            1 => timeline
                .without_end_records()
                .failed(AttemptEnd::reason("OutOfMemoryError: Container killed")),
            _ => timeline.exit(0),
        }
    });
    let id = fake.submit_array(children as i32, script).await;
    let setup = fake.total_calls();
    println!("{}", json!({"uri": fake.uri(), "id": id}));
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    for call in &fake.call_log()[setup..] {
        *calls.entry(call.op.clone()).or_default() += 1;
    }
    println!(
        "{}",
        json!({"calls": calls, "failed_at": fake.children_failed_at(&id)})
    );
}

/// The parent: follows the array and reports.
async fn follow(children: usize, speedup: u32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve", "--children", &children.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fake");
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    from_child.read_line(&mut first).unwrap();
    let hello: Value = serde_json::from_str(&first).expect("the fake's address");
    let id = hello["id"].as_str().unwrap().to_owned();
    let config = FakeAws::sdk_config_for(hello["uri"].as_str().unwrap());
    let clients = mfbatch::aws::Clients::from_sdk_config(&config, &Default::default()).unwrap();
    let rss_before = peak_rss_kib();

    let seen: Arc<Mutex<BTreeMap<usize, i64>>> = Arc::default();
    let record = seen.clone();
    let sink: EventSink = Arc::new(move |event| {
        if let Event::ChildFailed { index, .. } = event {
            record.lock().unwrap().insert(index, epoch_ms());
        }
    });
    let tracker = Tracker::new(
        &clients,
        TrackerConfig {
            // Children wait in RUNNABLE by design here: no stuck-job warnings.
            runnable_warning: Duration::from_secs(3600),
            ..measure::scaled(TrackerConfig::default(), speedup)
        },
    );
    let request = FollowRequest {
        array: Some(ArrayFollow::default()),
        ..FollowRequest::new(id)
    };
    let start = Instant::now();
    let outcome = tracker.follow_with(request, sink).wait().await.unwrap();
    let real = start.elapsed();
    let rss_after = peak_rss_kib();

    let mut to_child = child.stdin.take().unwrap();
    writeln!(to_child, "report").unwrap();
    let mut report = String::new();
    from_child.read_line(&mut report).unwrap();
    let _ = child.wait();
    let report: Value = serde_json::from_str(&report).expect("the fake's report");
    let calls: BTreeMap<String, usize> = serde_json::from_value(report["calls"].clone()).unwrap();
    let failed_at: BTreeMap<usize, i64> =
        serde_json::from_value(report["failed_at"].clone()).unwrap();

    let simulated = real.as_secs_f64() * f64::from(speedup) / 60.0;
    println!(
        "children: {children}, failed: {}, exit code {:?}; simulated {simulated:.1} min ({:.1} s real, speedup {speedup})",
        failed_at.len(),
        outcome.exit_code,
        real.as_secs_f64()
    );
    for (op, n) in &calls {
        println!(
            "{op:>14}: {n:>5} calls = {:>6.1}/min",
            *n as f64 / simulated
        );
    }
    let seen = seen.lock().unwrap();
    let mut latencies: Vec<f64> = failed_at
        .iter()
        .filter_map(|(i, t)| Some((seen.get(i)? - t) as f64 * f64::from(speedup) / 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    if !latencies.is_empty() {
        println!(
            "child failed → child_failed event (simulated s, from the parent describe that first shows it): median {:.1}, p90 {:.1}, max {:.1}; {} of {} reported",
            pick(0.5),
            pick(0.9),
            pick(1.0),
            seen.len(),
            failed_at.len()
        );
    }
    println!(
        "peak RSS of the following process: {} MiB with clients built, {} MiB after following",
        rss_before / 1024,
        rss_after / 1024
    );
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
