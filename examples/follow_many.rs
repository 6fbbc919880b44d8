//! Follows 1,000 jobs at once through one [`Tracker`] against the test suite's fake AWS, for a
//! simulated hour, and reports the AWS calls it made against the one-DescribeJobs-per-job-per-
//! second approach (Metaflow's `@batch`) and a per-job `aws logs tail`-style GetLogEvents loop.
//!
//! Time is compressed: every interval of the default [`TrackerConfig`] is divided by `--speedup`
//! (default 60, so one real second is one simulated minute) and the call budgets are multiplied
//! by it, so the calls per simulated minute are what a real process would make.
//!
//! `cargo run --release --example follow_many -- [--jobs 1000] [--speedup 60] [--minutes 60]`

#[path = "../benches/support/mod.rs"]
mod measure;

#[path = "../tests/support/fake_aws/mod.rs"]
#[allow(dead_code, unused_imports)]
mod fake_aws;

use std::time::{Duration, Instant};

use fake_aws::{FakeAws, Timeline};
use measure::{arg, peak_rss_kib};
use mfbatch::event::{Event, JobStatus};
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};

#[tokio::main]
async fn main() {
    let (jobs, speedup, minutes) = (
        arg("--jobs", 1000),
        arg("--speedup", 60) as u32,
        arg("--minutes", 60),
    );

    let fake = FakeAws::start().await;
    let clients = fake.clients();
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
    let submits = fake.total_calls();
    let rss_after_setup = peak_rss_kib();

    let defaults = TrackerConfig::default();
    let config = TrackerConfig {
        batch_calls_per_second: defaults.batch_calls_per_second * f64::from(speedup),
        logs_calls_per_second: defaults.logs_calls_per_second * f64::from(speedup),
        poll_min: defaults.poll_min / speedup,
        poll_max: defaults.poll_max / speedup,
        log_min_interval: defaults.log_min_interval / speedup,
        log_max_interval: defaults.log_max_interval / speedup,
        drain_quiet: defaults.drain_quiet / speedup,
        drain_max: defaults.drain_max / speedup,
        not_found_grace: defaults.not_found_grace / speedup,
        runnable_warning: defaults.runnable_warning / speedup,
        runnable_timeout: None,
    };
    let tracker = Tracker::new(&clients, config);
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = lines.clone();
    let sink: mfbatch::event::EventSink = std::sync::Arc::new(move |event| {
        if let Event::Log { .. } = event {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    let simulated_minutes = real.as_secs_f64() * f64::from(speedup) / 60.0;

    let calls = fake.call_log();
    let describes: Vec<usize> = fake
        .requests("DescribeJobs")
        .iter()
        .map(|b| b["jobs"].as_array().map_or(0, Vec::len))
        .collect();
    let get_logs = fake.calls("GetLogEvents");
    let per_min = |n: usize| n as f64 / simulated_minutes;
    // The baseline polls every job once a second while it lives, and reads each log stream once a
    // second while the job runs (what one `aws logs tail --follow` per job does).
    let baseline_describes = jobs as f64 * 60.0;
    println!(
        "jobs: {jobs}, finished: {finished}, log lines delivered: {}",
        lines.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "simulated time: {simulated_minutes:.1} min ({:.1} s real, speedup {speedup})",
        real.as_secs_f64()
    );
    println!(
        "DescribeJobs:  {:>6} calls = {:>8.1}/min  (baseline {:>8.0}/min, ratio {:.4}); largest batch {} ids, mean {:.1}",
        describes.len(),
        per_min(describes.len()),
        baseline_describes,
        per_min(describes.len()) / baseline_describes,
        describes.iter().max().unwrap_or(&0),
        describes.iter().sum::<usize>() as f64 / describes.len().max(1) as f64
    );
    println!(
        "GetLogEvents:  {:>6} calls = {:>8.1}/min  (baseline {:>8.0}/min, ratio {:.4})",
        get_logs,
        per_min(get_logs),
        baseline_describes,
        per_min(get_logs) / baseline_describes
    );
    println!(
        "all calls while following: {} (plus {submits} to set up); tracker budget grants: {:?}",
        calls.len() - submits,
        tracker.calls()
    );
    // The fake runs in this process too (its state and call log grow as it answers), so the
    // growth while following is an upper bound of what the tracker itself needs.
    println!(
        "peak RSS: {} MiB after setting up the fake and jobs, {} MiB after following",
        rss_after_setup / 1024,
        peak_rss_kib() / 1024
    );
}
