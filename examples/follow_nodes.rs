//! Follows multi-node jobs (16 and 100 nodes by default) through one [`Tracker`] against the test
//! suite's fake AWS and reports what it cost, against a naive baseline run in the same process on
//! the same scripted jobs: DescribeJobs and GetLogEvents calls per simulated minute, and the time
//! from a non-main node failing to the event that shows it (`node_failed`; for the baseline, the
//! node's own FAILED status).
//!
//! - `nodes`: the job as one thing (`track::nodes`): main node streamed, other nodes counted,
//!   failed nodes' last lines.
//! - `naive`: one ordinary follower per node id `<job>#<n>` (every node's stream read live), as a
//!   client that treats nodes as jobs would do; it still shares the process's poller.
//!
//! Time is compressed as in `follow_array`: every interval of the default [`TrackerConfig`] is
//! divided by `--speedup` (default 60) and the budgets multiplied by it. The fake is clocked: its
//! jobs move on one step per simulated second whoever polls, so both modes see the same job for
//! the same time. The main node runs about 2 simulated minutes; the others end earlier, 1 in 8 of
//! them failing (exit 1).
//!
//! `cargo run --release --example follow_nodes -- [--nodes 16] [--nodes2 100] [--runs 3] [--speedup 60]`

#[path = "../benches/support/mod.rs"]
mod measure;

#[path = "../tests/support/fake_aws/mod.rs"]
#[allow(dead_code, unused_imports)]
mod fake_aws;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_aws::{FakeAws, NodesScript, Timeline};
use measure::arg;
use mfbatch::event::{Event, EventSink, JobStatus};
use mfbatch::track::nodes::NodeFollow;
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Nodes,
    Naive,
}

/// One run's figures: calls per simulated minute, and failure → event latencies (simulated s).
struct Figures {
    describe_per_min: f64,
    /// Ids described per minute: the DescribeJobs calls of a client that describes each node
    /// alone (as Metaflow's does).
    ids_per_min: f64,
    get_log_events_per_min: f64,
    latencies: Vec<f64>,
}

#[tokio::main]
async fn main() {
    let speedup = arg("--speedup", 60) as u32;
    let runs = arg("--runs", 3);
    for nodes in [arg("--nodes", 16), arg("--nodes2", 100)] {
        let mut by_mode: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
        for run in 0..runs {
            for mode in [Mode::Nodes, Mode::Naive] {
                let figures = measure_once(nodes, mode, speedup, run as u64).await;
                by_mode
                    .entry(if mode == Mode::Nodes {
                        "nodes"
                    } else {
                        "naive"
                    })
                    .or_default()
                    .push(figures);
            }
        }
        report(nodes, runs, speedup, &by_mode);
    }
}

fn script(nodes: usize, seed: u64) -> NodesScript {
    let mut rng = fastrand::Rng::with_seed(seed);
    NodesScript::each(nodes, |i| {
        let lines = [format!("node {i} starting"), format!("node {i} step 1")];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let timeline = Timeline::new()
            .status(JobStatus::Runnable, 1)
            // The main node moves on twice per tick (with the job, and itself).
            .running(if i == 0 { 240 } else { rng.usize(5..100) })
            .logs(&lines);
        if i > 0 && i % 8 == 3 {
            timeline.exit(1)
        } else {
            timeline.exit(0)
        }
    })
}

async fn measure_once(nodes: usize, mode: Mode, speedup: u32, seed: u64) -> Figures {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(nodes as i32, script(nodes, seed)).await;
    let setup = fake.total_calls();
    let setup_describes = fake.requests("DescribeJobs").len();
    let mut ids = vec![id.clone()];
    ids.extend((0..nodes).map(|i| format!("{id}#{i}")));
    let clock = {
        let clock = fake.clock();
        let second = Duration::from_secs(1) / speedup;
        tokio::spawn(async move {
            loop {
                clock.tick(&ids);
                tokio::time::sleep(second).await;
            }
        })
    };
    let seen: Arc<Mutex<BTreeMap<usize, i64>>> = Arc::default();
    let record = seen.clone();
    let job = id.clone();
    let sink: EventSink = Arc::new(move |event| {
        let index = match &event {
            Event::NodeFailed { node_index, .. } => Some(*node_index),
            Event::Status {
                job_id,
                status: JobStatus::Failed,
                ..
            } => job_id
                .strip_prefix(&format!("{job}#"))
                .and_then(|i| i.parse().ok()),
            // A node followed as a job may end by its end records before Batch says FAILED.
            Event::Exited(outcome) if !outcome.succeeded() => outcome
                .job_id
                .strip_prefix(&format!("{job}#"))
                .and_then(|i| i.parse().ok()),
            _ => None,
        };
        if let Some(index) = index {
            record.lock().unwrap().entry(index).or_insert_with(epoch_ms);
        }
    });
    let tracker = Tracker::new(
        &fake.clients(),
        TrackerConfig {
            runnable_warning: Duration::from_secs(3600),
            ..measure::scaled(TrackerConfig::default(), speedup)
        },
    );
    let start = Instant::now();
    match mode {
        Mode::Nodes => {
            let request = FollowRequest {
                nodes: Some(NodeFollow::default()),
                ..FollowRequest::new(id.clone())
            };
            tracker.follow_with(request, sink).wait().await.unwrap();
        }
        Mode::Naive => {
            let handles: Vec<_> = (0..nodes)
                .map(|i| tracker.follow_with(FollowRequest::new(format!("{id}#{i}")), sink.clone()))
                .collect();
            for handle in handles {
                handle.wait().await.unwrap();
            }
        }
    }
    let simulated_min = start.elapsed().as_secs_f64() * f64::from(speedup) / 60.0;
    clock.abort();
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    for call in &fake.call_log()[setup..] {
        *calls.entry(call.op.clone()).or_default() += 1;
    }
    let per_min = |op: &str| calls.get(op).copied().unwrap_or(0) as f64 / simulated_min;
    let ids: usize = fake.requests("DescribeJobs")[setup_describes..]
        .iter()
        .map(|r| r["jobs"].as_array().map_or(0, Vec::len))
        .sum();
    eprintln!(
        "{mode:?} {nodes}: {simulated_min:.2} simulated min, calls {calls:?}, {ids} ids described"
    );
    let stopped = fake.nodes_stopped_at(&id);
    let failed: Vec<usize> = (1..nodes).filter(|i| i % 8 == 3).collect();
    let seen = seen.lock().unwrap();
    let latencies = failed
        .iter()
        .filter_map(|i| Some((seen.get(i)? - stopped.get(i)?) as f64 * f64::from(speedup) / 1000.0))
        .collect();
    Figures {
        describe_per_min: per_min("DescribeJobs"),
        ids_per_min: ids as f64 / simulated_min,
        get_log_events_per_min: per_min("GetLogEvents"),
        latencies,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(nodes: usize, runs: usize, speedup: u32, by_mode: &BTreeMap<&str, Vec<Figures>>) {
    println!("{nodes} nodes, {runs} runs per mode, speedup {speedup} (medians over the runs):");
    let mut medians = BTreeMap::new();
    for (mode, figures) in by_mode {
        let describe = median(figures.iter().map(|f| f.describe_per_min).collect());
        let logs = median(figures.iter().map(|f| f.get_log_events_per_min).collect());
        let ids = median(figures.iter().map(|f| f.ids_per_min).collect());
        let latency = median(figures.iter().flat_map(|f| f.latencies.clone()).collect());
        let reported: usize = figures.iter().map(|f| f.latencies.len()).sum();
        println!(
            "  {mode:>5}: DescribeJobs {describe:>6.1}/min ({ids:>6.1} ids/min)  GetLogEvents {logs:>7.1}/min  node failed → event {latency:>4.1} s (median of {reported})"
        );
        medians.insert(*mode, (describe, logs, latency));
    }
    if let (Some(n), Some(b)) = (medians.get("nodes"), medians.get("naive")) {
        println!(
            "  naive / nodes: DescribeJobs ×{:.1}, GetLogEvents ×{:.1}, latency ×{:.2}",
            b.0 / n.0,
            b.1 / n.1,
            b.2 / n.2
        );
    }
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
