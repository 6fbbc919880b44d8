//! `mfbatch serve` under load, against the fake AWS: thousands of launches over one connection
//! (AWS calls by API reported, SubmitJob within its rate), and a client that stops reading while
//! a hundred jobs print (nothing lost, the daemon's memory reported). Figures go to stderr.

#[path = "serve/client.rs"]
#[allow(dead_code)]
mod client;
mod support;

use std::time::{Duration, Instant};

use client::{of, Machine};
use serde_json::json;
use support::{FakeAws, JobStatus, Timeline};

#[ignore = "a load measurement of minutes on two cores: cargo test --release --test serve_load -- --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_launches_over_one_connection() {
    let launches: usize = std::env::var("SERVE_LAUNCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let fake = FakeAws::start().await;
    fake.add_queue(support::QueueSpec::new("big").compute_environment("big-ce", "EC2", 100_000));
    let machine = Machine::new(&fake);
    let rate = 50.0;
    let mut serve = machine.start(&["--submit-rate", "50"]);
    serve.hello(json!({})).await;
    let started = Instant::now();
    for i in 0..launches {
        let params = json!({"key": format!("k{i}"), "script": machine.script(),
                            "follow": false, "settings": {"queue": "big"}});
        serve.send("launch", params).await;
    }
    serve
        .until(Duration::from_secs(600), |e| {
            // Counted only when one may have just come: a count per line is quadratic.
            let ends =
                |e: &serde_json::Value| e["event"] == "submitted" || e["event"] == "launch_failed";
            e.last().is_some_and(ends) && e.iter().filter(|e| ends(e)).count() >= launches
        })
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        serve
            .events
            .iter()
            .filter(|e| e["event"] == "launch_failed")
            .count(),
        0
    );
    assert_eq!(fake.jobs().len(), launches);
    let mut by_api = std::collections::BTreeMap::new();
    for call in fake.call_log() {
        *by_api.entry(call.op).or_insert(0usize) += 1;
    }
    let per_second = launches as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{launches} launches in {:.1} s ({per_second:.1} SubmitJob/s, budget {rate}/s); calls by API: {by_api:?}; daemon peak RSS {} MiB",
        elapsed.as_secs_f64(),
        serve.peak_rss_kib() / 1024
    );
    // The budget allows one second's burst above the rate.
    assert!(
        per_second <= rate * 1.1 + rate / elapsed.as_secs_f64(),
        "{per_second}/s"
    );
    assert_eq!(by_api["SubmitJob"], launches);
    assert!(
        by_api.get("DescribeJobQueues").copied().unwrap_or(0) <= 10,
        "{by_api:?}"
    );
    serve.close_stdin();
    assert_eq!(serve.exit(Duration::from_secs(60)).await, Some(0));
}

#[ignore = "a load measurement of minutes on two cores: cargo test --release --test serve_load -- --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_loses_nothing_and_the_daemon_stays_small() {
    let jobs = 100;
    let lines_per_job = 2000;
    let fake = FakeAws::start().await;
    let text: Vec<String> = (0..lines_per_job)
        .map(|n| format!("line {n:05} {}", "x".repeat(200)))
        .collect();
    let refs: Vec<&str> = text.iter().map(String::as_str).collect();
    fake.set_default_timeline(
        Timeline::new()
            .status(JobStatus::Submitted, 1)
            .running(30)
            .logs(&refs)
            .succeeded(),
    );
    let machine = Machine::new(&fake);
    let mut serve = machine.start(&[]);
    serve.hello(json!({})).await;
    for i in 0..jobs {
        serve
            .call(
                "launch",
                json!({"key": format!("j{i}"), "script": machine.script()}),
            )
            .await;
    }
    serve.paused.send_replace(true);
    let reads_at_stall = fake.calls("GetLogEvents");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let reads_while_stalled = fake.calls("GetLogEvents") - reads_at_stall;
    let rss_stalled = serve.peak_rss_kib();
    serve.paused.send_replace(false);
    serve
        .until(Duration::from_secs(600), |e| {
            // Counted only after an `exited`: a count per line is quadratic in 200,000 lines.
            e.last().is_some_and(|l| l["event"] == "exited")
                && e.iter().filter(|e| e["event"] == "exited").count() >= jobs
        })
        .await;
    for i in 0..jobs {
        let key = format!("j{i}");
        let got: Vec<&str> = of(&serve.events, &key, "log")
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert_eq!(got, refs, "every line of {key} once, in order");
        let events: Vec<_> = serve
            .events
            .iter()
            .filter(|e| e["key"] == json!(key))
            .collect();
        assert_eq!(
            events.last().unwrap()["event"],
            "exited",
            "exited is last for {key}"
        );
    }
    let total_mib = (jobs * lines_per_job * 210) as f64 / 1048576.0;
    eprintln!(
        "{jobs} jobs x {lines_per_job} lines ({total_mib:.0} MiB of log text): {reads_while_stalled} GetLogEvents during the 30 s stall; daemon peak RSS {} MiB while stalled, {} MiB at the end",
        rss_stalled / 1024,
        serve.peak_rss_kib() / 1024
    );
    assert!(
        rss_stalled / 1024 < 200,
        "bounded: {} MiB",
        rss_stalled / 1024
    );
    serve.close_stdin();
    assert_eq!(serve.exit(Duration::from_secs(60)).await, Some(0));
}
