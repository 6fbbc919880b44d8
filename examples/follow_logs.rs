//! Follows the logs of many running jobs, each writing a line a second, through one tracker
//! against the fake AWS in a child process, and reports per scenario: the delay from a line's
//! ingestion to its delivery (p50, p99), calls per second by API against the strictest Region's
//! quotas, lines lost and duplicated, and the follower's peak memory — for the Region-aware
//! default (`auto`: sweeps beyond a few dozen streams) and, as the baseline in the same run, the
//! per-stream GetLogEvents path.
//!
//! Time is compressed by `--speedup` (intervals divided, budgets multiplied); delays and rates
//! are reported in uncompressed seconds. Each scenario writes for `--seconds`, then gives the
//! follower `--grace` to deliver what was written; a line still missing then counts as lost.
//!
//! `cargo run --release --example follow_logs -- [--speedup 2] [--seconds 40] [--grace 30]
//!  [--scenario 1k|10k|10k-idle|all] [--faults] [--auto-only]`

#[path = "../benches/support/mod.rs"]
mod measure;

#[path = "../tests/support/fake_aws/mod.rs"]
#[allow(dead_code, unused_imports)]
mod fake_aws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_aws::{FakeAws, Timeline, BATCH_LOG_GROUP};
use measure::{arg, peak_rss_kib};
use mfbatch::event::{Event, EventSink};
use mfbatch::track::{FollowRequest, LogMode, Tracker, TrackerConfig};
use serde_json::{json, Value};

/// The strictest Region for both read APIs: GetLogEvents 10/s, FilterLogEvents 5/s.
const STRICTEST_REGION: &str = "eu-central-1";
const GET_QUOTA: f64 = 10.0;
const FILTER_QUOTA: f64 = 5.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Three processes of one binary: the parent, a follower per scenario, and its fake.
    if args.iter().any(|a| a == "--follow-child") {
        runtime.block_on(follow_child(&args));
        return;
    }
    if args.iter().any(|a| a == "--serve") {
        let jobs = arg("--jobs", 1000);
        let busy = arg("--busy", jobs);
        let speedup = arg("--speedup", 2) as u32;
        let faults = args.iter().any(|a| a == "--faults");
        runtime.block_on(serve(jobs, busy, speedup, faults));
        return;
    }
    let speedup = arg("--speedup", 2) as u32;
    let seconds = arg("--seconds", 40) as u64;
    let grace = arg("--grace", 30) as u64;
    let faults = args.iter().any(|a| a == "--faults");
    let scenario = value("--scenario").unwrap_or_else(|| "all".into());
    let scenarios: Vec<(&str, usize, usize)> = [
        ("1k", 1_000, 1_000),
        ("10k", 10_000, 10_000),
        ("10k-idle", 10_000, 100),
    ]
    .into_iter()
    .filter(|(name, _, _)| scenario == "all" || scenario == *name)
    .collect();
    println!(
        "speedup {speedup}, {seconds} s of writing + {grace} s of grace (uncompressed), Region {STRICTEST_REGION} budgets{}",
        if faults { ", 30% throttling + 5% HTTP 500 on every API" } else { "" }
    );
    println!(
        "{:<9} {:<10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>6} {:>5} {:>8}",
        "scenario",
        "mode",
        "p50 s",
        "p99 s",
        "GLE/s",
        "FLE/s",
        "DJ/s",
        "lines",
        "lost",
        "dup",
        "RSS MiB"
    );
    for (name, jobs, busy) in scenarios {
        let modes: &[LogMode] = if args.iter().any(|a| a == "--auto-only") {
            &[LogMode::Auto]
        } else {
            &[LogMode::Auto, LogMode::PerStream]
        };
        for &mode in modes {
            let report = run_scenario(jobs, busy, mode, speedup, seconds, grace, faults);
            println!(
                "{name:<9} {:<10} {:>8.1} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>6} {:>5} {:>8}",
                match mode {
                    LogMode::Auto => "auto",
                    LogMode::PerStream => "per-stream",
                    LogMode::Batched => "batched",
                },
                report.p50,
                report.p99,
                report.get_per_s,
                report.filter_per_s,
                report.describe_per_s,
                report.delivered,
                report.lost,
                report.duplicated,
                report.rss_mib
            );
        }
    }
    println!("quotas in {STRICTEST_REGION}: GetLogEvents {GET_QUOTA}/s, FilterLogEvents {FILTER_QUOTA}/s (neither can be raised)");
}

struct Report {
    p50: f64,
    p99: f64,
    get_per_s: f64,
    filter_per_s: f64,
    describe_per_s: f64,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    rss_mib: u64,
}

/// One scenario in a fresh child process (so each peak RSS is its own).
fn run_scenario(
    jobs: usize,
    busy: usize,
    mode: LogMode,
    speedup: u32,
    seconds: u64,
    grace: u64,
    faults: bool,
) -> Report {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--follow-child", "--jobs", &jobs.to_string()])
        .args([
            "--busy",
            &busy.to_string(),
            "--speedup",
            &speedup.to_string(),
        ])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--grace",
            &grace.to_string(),
        ])
        .arg(if mode == LogMode::PerStream {
            "--per-stream"
        } else {
            "--auto"
        })
        .stdout(Stdio::piped());
    if faults {
        command.arg("--faults");
    }
    let out = command.output().expect("run the follower");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or("{}")).expect("a report");
    Report {
        p50: v["p50"].as_f64().unwrap_or(f64::NAN),
        p99: v["p99"].as_f64().unwrap_or(f64::NAN),
        get_per_s: v["get_per_s"].as_f64().unwrap_or(0.0),
        filter_per_s: v["filter_per_s"].as_f64().unwrap_or(0.0),
        describe_per_s: v["describe_per_s"].as_f64().unwrap_or(0.0),
        delivered: v["delivered"].as_u64().unwrap_or(0) as usize,
        lost: v["lost"].as_u64().unwrap_or(0) as usize,
        duplicated: v["duplicated"].as_u64().unwrap_or(0) as usize,
        rss_mib: v["rss_mib"].as_u64().unwrap_or(0),
    }
}

/// The fake: `jobs` jobs RUNNING until told to stop, `busy` of them writing a line every
/// (compressed) second; prints its address and the ids, then the lines written per job when
/// asked.
async fn serve(jobs: usize, busy: usize, speedup: u32, faults: bool) {
    let fake = Arc::new(FakeAws::start().await);
    fake.set_log_page_size(10_000);
    let timelines = (0..jobs)
        .map(|_| Timeline::new().running(usize::MAX / 2).succeeded())
        .collect();
    let ids = fake.submit_jobs(timelines).await;
    // Enter RUNNING now, so every stream exists before the writing starts.
    let clients = fake.clients();
    for chunk in ids.chunks(100) {
        clients
            .batch
            .describe_jobs()
            .set_jobs(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
    }
    let streams: Vec<String> = ids
        .iter()
        .map(|id| fake.job(id).unwrap().log_streams[0].clone())
        .collect();
    if faults {
        fake.set_random_faults(0.3, 0.05, &[]);
    }
    println!("{}", json!({"uri": fake.uri(), "ids": ids}));
    // The jobs start writing once the follower has found every stream (it says `start`).
    let mut line = String::new();
    let line = tokio::task::spawn_blocking(move || {
        let _ = std::io::stdin().read_line(&mut line);
        line
    })
    .await
    .unwrap();
    assert_eq!(line.trim(), "start");
    let ops = ["GetLogEvents", "FilterLogEvents", "DescribeJobs"];
    let setup: HashMap<&str, usize> = ops.into_iter().map(|op| (op, fake.calls(op))).collect();
    let written = Arc::new(Mutex::new(vec![0usize; jobs]));
    let writer = {
        let (fake, written) = (fake.clone(), written.clone());
        tokio::spawn(async move {
            let period = Duration::from_secs(1) / speedup;
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let mut written = written.lock().unwrap();
                for (i, stream) in streams.iter().enumerate().take(busy) {
                    let n = written[i];
                    fake.add_log_lines(BATCH_LOG_GROUP, stream, &[&format!("{i} {n}")]);
                    written[i] = n + 1;
                }
            }
        })
    };
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    writer.abort();
    let written = written.lock().unwrap().clone();
    fake.clear_faults();
    let calls: HashMap<&str, usize> = ops
        .into_iter()
        .map(|op| (op, fake.calls(op) - setup[op]))
        .collect();
    println!("{}", json!({ "written": written, "calls": calls }));
    // Keep serving the grace period's reads until the parent closes stdin.
    let mut rest = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut rest)).await;
}

/// The follower process of one scenario: starts the fake, follows every job, reports JSON.
async fn follow_child(args: &[String]) {
    let jobs = arg("--jobs", 1000);
    let busy = arg("--busy", jobs);
    let speedup = arg("--speedup", 2) as u32;
    let seconds = arg("--seconds", 40) as u64;
    let grace = arg("--grace", 30) as u64;
    let per_stream = args.iter().any(|a| a == "--per-stream");
    let mut serve = Command::new(std::env::current_exe().unwrap());
    serve
        .args([
            "--serve",
            "--jobs",
            &jobs.to_string(),
            "--busy",
            &busy.to_string(),
        ])
        .args(["--speedup", &speedup.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if args.iter().any(|a| a == "--faults") {
        serve.arg("--faults");
    }
    let mut child = serve.spawn().expect("start the fake");
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    from_child.read_line(&mut first).unwrap();
    let hello: Value = serde_json::from_str(&first).expect("the fake's address and ids");
    let ids: Vec<String> = serde_json::from_value(hello["ids"].clone()).unwrap();
    let sdk = FakeAws::sdk_config_for(hello["uri"].as_str().unwrap());
    let clients = mfbatch::aws::Clients::from_sdk_config(&sdk, &Default::default()).unwrap();

    let mut config = measure::scaled(TrackerConfig::for_region(STRICTEST_REGION), speedup);
    if per_stream {
        config.log_mode = LogMode::PerStream;
    }
    let tracker = Tracker::new(&clients, config);
    let index: HashMap<String, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i))
        .collect();
    let seen = Arc::new(Mutex::new(Seen {
        next: vec![0; ids.len()],
        delays_ms: Vec::new(),
        duplicated: 0,
    }));
    let sink: EventSink = {
        let seen = seen.clone();
        Arc::new(move |event| {
            if let Event::Log {
                job_id,
                timestamp_ms,
                message,
                ..
            } = event
            {
                let now = fake_aws::now_ms();
                let n: usize = message
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX);
                let mut seen = seen.lock().unwrap();
                let i = index[&job_id];
                if n < seen.next[i] {
                    seen.duplicated += 1;
                } else {
                    seen.next[i] = n + 1;
                }
                seen.delays_ms
                    .push(((now - timestamp_ms).max(0) as u64) * u64::from(speedup));
            }
        })
    };
    let _handles: Vec<_> = ids
        .iter()
        .map(|id| tracker.follow_with(FollowRequest::new(id.clone()), sink.clone()))
        .collect();
    // Attach first (every job is RUNNING, its stream found), then the jobs write: the delays
    // are those of following running jobs, not of catching up on history.
    let attach = Instant::now();
    loop {
        let stats = tracker.stats();
        if stats.per_stream_streams + stats.sweeps.streams >= ids.len()
            || attach.elapsed() > Duration::from_secs(120)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5) / speedup).await;
    let mut to_child = child.stdin.take().unwrap();
    writeln!(to_child, "start").unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds) / speedup).await;
    let at_stop = tracker.stats();
    writeln!(to_child, "stop").unwrap();
    let mut report = String::new();
    from_child.read_line(&mut report).unwrap();
    let report: Value = serde_json::from_str(&report).unwrap();
    let written: Vec<usize> = serde_json::from_value(report["written"].clone()).unwrap();
    // Calls as the server received them while the lines were written (the budgets count
    // reservations, which run ahead when many callers wait).
    let received = |op: &str| report["calls"][op].as_u64().unwrap_or(0);
    let writing = started.elapsed();
    // The grace period: what was written by now must arrive.
    let deadline = Instant::now() + Duration::from_secs(grace) / speedup;
    loop {
        let caught_up = {
            let seen = seen.lock().unwrap();
            seen.next
                .iter()
                .zip(&written)
                .all(|(got, want)| got >= want)
        };
        if caught_up || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = at_stop;
    let seen = seen.lock().unwrap();
    let lost: usize = seen
        .next
        .iter()
        .zip(&written)
        .map(|(got, want)| want.saturating_sub(*got))
        .sum();
    let untouched = seen.next.iter().filter(|n| **n == 0).count();
    let partial = seen
        .next
        .iter()
        .zip(&written)
        .filter(|(got, want)| **got > 0 && got < want)
        .count();
    eprintln!("streams with nothing delivered: {untouched}; with part delivered: {partial}");
    let mut delays = seen.delays_ms.clone();
    delays.sort_unstable();
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1)))
            .map_or(f64::NAN, |ms| *ms as f64 / 1000.0)
    };
    let uncompressed = writing.as_secs_f64() * f64::from(speedup);
    let per_s = |calls: u64| calls as f64 / uncompressed;
    println!(
        "{}",
        json!({
            "p50": pct(0.5),
            "p99": pct(0.99),
            "get_per_s": per_s(received("GetLogEvents")),
            "filter_per_s": per_s(received("FilterLogEvents")),
            "describe_per_s": per_s(received("DescribeJobs")),
            "lag_ms": stats.sweeps.lag_ms,
            "delivered": delays.len(),
            "lost": lost,
            "duplicated": seen.duplicated,
            "rss_mib": peak_rss_kib() / 1024,
        })
    );
    drop(to_child);
    let _ = child.kill();
    let _ = child.wait();
}

struct Seen {
    /// The next line number expected per job.
    next: Vec<usize>,
    delays_ms: Vec<u64>,
    duplicated: usize,
}
