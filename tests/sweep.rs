//! Batched log reading (FilterLogEvents sweeps) at the wire: every line exactly once and in each
//! stream's order through overlapping windows, empty pages, pages of 100 streams, a stream that
//! does not exist yet, throttling and 5xx bursts, late lines inside the overlap, identical lines
//! in one millisecond; end records end a stream; a denial falls back to per-stream reading.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mfbatch::event::{DecidedBy, Event, JobStatus};
use mfbatch::track::{FollowRequest, LogMode, Tracker, TrackerConfig};
use support::{FakeAws, Fault, Timeline, BATCH_LOG_GROUP};

fn batched_config() -> TrackerConfig {
    TrackerConfig {
        log_mode: LogMode::Batched,
        drain_quiet: Duration::from_millis(300),
        ..support::fast_tracker_config()
    }
}

/// Lines per job id, in delivery order, and each job's outcome.
struct Followed {
    lines: BTreeMap<String, Vec<String>>,
    outcomes: BTreeMap<String, mfbatch::event::Outcome>,
    events: Vec<Event>,
}

async fn follow_all(fake: &FakeAws, ids: &[String], config: TrackerConfig) -> Followed {
    follow_all_with(fake.clients(), ids, config).await
}

async fn follow_all_with(
    clients: mfbatch::aws::Clients,
    ids: &[String],
    config: TrackerConfig,
) -> Followed {
    let tracker = Tracker::new(&clients, config);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink: mfbatch::event::EventSink = std::sync::Arc::new(move |e| {
        let _ = tx.send(e);
    });
    let handles: Vec<_> = ids
        .iter()
        .map(|id| tracker.follow_with(FollowRequest::new(id), sink.clone()))
        .collect();
    drop(sink);
    let mut outcomes = BTreeMap::new();
    let waits = async {
        for handle in handles {
            let id = handle.job_id.clone();
            outcomes.insert(id, handle.wait().await.expect("followed to the end"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), waits)
        .await
        .expect("every job followed to its end");
    drop(tracker);
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Event::Log {
            job_id, message, ..
        } = &event
        {
            lines
                .entry(job_id.clone())
                .or_default()
                .push(message.clone());
        }
        events.push(event);
    }
    Followed {
        lines,
        outcomes,
        events,
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} line {i:05}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn many_streams_swept_together_deliver_every_line_once_in_order() {
    let fake = FakeAws::start().await;
    fake.set_log_page_size(50);
    let expected: Vec<Vec<String>> = (0..120).map(|j| numbered(&format!("job{j}"), 30)).collect();
    let timelines = expected
        .iter()
        .map(|lines| {
            Timeline::new()
                .running(40)
                .logs(&refs(&lines[..10]))
                .logs_when_done(&refs(&lines[10..]))
                .succeeded()
        })
        .collect();
    let ids = fake.submit_jobs(timelines).await;
    let got = follow_all(&fake, &ids, batched_config()).await;
    for (id, want) in ids.iter().zip(&expected) {
        assert_eq!(got.lines.get(id), Some(want), "job {id}");
        assert!(got.outcomes[id].succeeded());
    }
    assert_eq!(fake.calls("GetLogEvents"), 0, "one path: the sweeps");
    let filters = fake.requests("FilterLogEvents");
    assert!(!filters.is_empty());
    // 120 streams: more than one name batch, or one prefix query.
    assert!(
        filters.iter().all(|b| b["logStreamNames"]
            .as_array()
            .is_none_or(|n| n.len() <= 100)),
        "at most 100 names per call"
    );
    assert!(
        filters.iter().any(|b| b["logStreamNamePrefix"].is_string()),
        "streams that share a prefix are swept by it"
    );
}

#[tokio::test]
async fn end_records_end_a_batched_stream_and_decide_the_outcome() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(100_000)
        .logs(&["one", "two", "@end:stderr:0", "@end:stdout:0"])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let config = TrackerConfig {
        drain_quiet: Duration::from_secs(600),
        drain_max: Duration::from_secs(600),
        ..batched_config()
    };
    let got = follow_all(&fake, &ids, config).await;
    assert_eq!(got.lines[&ids[0]], ["one", "two"]);
    assert_eq!(got.outcomes[&ids[0]].decided_by, DecidedBy::EndRecord);
}

#[tokio::test]
async fn empty_pages_with_a_token_and_overlapping_windows_lose_and_repeat_nothing() {
    let fake = FakeAws::start().await;
    fake.set_log_page_size(7);
    fake.set_empty_filter_page_every(3);
    let lines = numbered("x", 200);
    let timeline = Timeline::new()
        .running(30)
        .logs(&refs(&lines[..100]))
        .logs_when_done(&refs(&lines[100..]))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow_all(&fake, &ids, batched_config()).await;
    assert_eq!(got.lines[&ids[0]], lines);
    // The 10 s overlap makes every sweep read the same events again: they were deduplicated.
    assert!(fake.calls("FilterLogEvents") > 10);
}

#[tokio::test]
async fn a_stream_that_does_not_exist_yet_does_not_blind_the_others() {
    let fake = FakeAws::start().await;
    let mut timelines: Vec<Timeline> = (0..5)
        .map(|i| {
            Timeline::new()
                .running(20)
                .logs(&[&format!("fine {i}")])
                .succeeded()
        })
        .collect();
    timelines.push(
        Timeline::new()
            .running(20)
            .stream_missing_for(3)
            .logs(&["late stream"])
            .succeeded(),
    );
    // Streams under two definitions share no prefix: they are read by name, and a missing name
    // fails the whole call (as on AWS) until the batch is halved down to it.
    let mut ids = fake.submit_jobs_under(timelines, "alpha-def").await;
    ids.extend(
        fake.submit_jobs_under(
            vec![Timeline::new().running(20).logs(&["other"]).succeeded()],
            "beta-def",
        )
        .await,
    );
    let got = follow_all(&fake, &ids, batched_config()).await;
    assert_eq!(got.lines[&ids[6]], ["other"]);
    for (i, id) in ids.iter().take(5).enumerate() {
        assert_eq!(got.lines[id], [format!("fine {i}")]);
    }
    assert_eq!(got.lines[&ids[5]], ["late stream"]);
    let refused = fake
        .call_log()
        .iter()
        .filter(|c| c.op == "FilterLogEvents" && c.body["logStreamNames"].is_array())
        .count();
    assert!(refused >= 1, "the missing stream was looked for by name");
}

#[tokio::test]
async fn throttling_and_server_errors_lose_and_repeat_nothing() {
    let fake = FakeAws::start_with_seed(5).await;
    let expected: Vec<Vec<String>> = (0..20).map(|j| numbered(&format!("j{j}"), 100)).collect();
    let timelines = expected
        .iter()
        .map(|lines| {
            Timeline::new()
                .running(30)
                .logs(&refs(&lines[..50]))
                .logs_when_done(&refs(&lines[50..]))
                .succeeded()
        })
        .collect();
    let ids = fake.submit_jobs(timelines).await;
    fake.set_log_page_size(13);
    fake.set_random_faults(0.3, 0.05, &["FilterLogEvents"]);
    let clients = mfbatch::aws::Clients::from_sdk_config(
        &fake.sdk_config(),
        &mfbatch::aws::ClientOptions {
            max_attempts: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let got = follow_all_with(clients, &ids, batched_config()).await;
    assert!(fake.call_log().iter().any(|c| c.faulted));
    for (id, want) in ids.iter().zip(&expected) {
        assert_eq!(got.lines.get(id), Some(want), "job {id}");
    }
}

#[tokio::test]
async fn a_late_line_older_than_the_cursor_but_inside_the_overlap_comes_once() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(1_000_000)
        .logs(&["first"])
        .succeeded()
        .without_end_records();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let tracker = Tracker::new(&fake.clients(), batched_config());
    let mut handle = tracker.follow(FollowRequest::new(&ids[0]));
    let mut lines = Vec::new();
    // Wait for the first line, so the sweeps' cursor has passed its time.
    while lines.is_empty() {
        if let Some(Event::Log { message, .. }) = handle.next_event().await {
            lines.push(message);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = fake.job(&ids[0]).unwrap().log_streams[0].clone();
    let two_seconds_ago = support::now_ms() - 2_000;
    fake.add_log_events(
        BATCH_LOG_GROUP,
        &stream,
        &[(two_seconds_ago, "late"), (two_seconds_ago, "late")],
    );
    fake.add_log_lines(BATCH_LOG_GROUP, &stream, &["same ms", "same ms"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lines.len() < 5 && tokio::time::Instant::now() < deadline {
        if let Ok(Some(Event::Log { message, .. })) =
            tokio::time::timeout(Duration::from_secs(1), handle.next_event()).await
        {
            lines.push(message);
        }
    }
    // Give a few more sweeps the chance to repeat anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(Event::Log { message, .. })) =
        tokio::time::timeout(Duration::from_millis(10), handle.next_event()).await
    {
        lines.push(message);
    }
    assert_eq!(lines, ["first", "late", "late", "same ms", "same ms"]);
}

#[tokio::test]
async fn twenty_thousand_lines_exactly_once_in_batched_mode() {
    let fake = FakeAws::start().await;
    fake.set_log_page_size(1_000);
    let lines = numbered("big", 20_000);
    let timeline = Timeline::new()
        .running(5)
        .logs(&refs(&lines[..10_000]))
        .logs_when_done(&refs(&lines[10_000..]))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow_all(&fake, &ids, batched_config()).await;
    assert_eq!(got.lines[&ids[0]].len(), 20_000);
    assert_eq!(got.lines[&ids[0]], lines);
}

#[tokio::test]
async fn a_denied_filter_log_events_falls_back_to_per_stream_reading() {
    let fake = FakeAws::start().await;
    fake.fail_always("FilterLogEvents", Fault::AccessDenied);
    let timeline = Timeline::new().running(3).logs(&["still read"]).succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow_all(&fake, &ids, batched_config()).await;
    assert_eq!(got.lines[&ids[0]], ["still read"]);
    assert!(fake.calls("GetLogEvents") >= 1);
    assert!(got.events.iter().all(|e| !matches!(e, Event::Warning(_))));
}

#[tokio::test]
async fn auto_mode_reads_the_first_streams_per_stream_and_the_rest_in_sweeps() {
    let fake = FakeAws::start().await;
    let timelines = (0..6)
        .map(|i| {
            Timeline::new()
                .status(JobStatus::Runnable, 1 + i)
                .running(10)
                .logs(&[&format!("job {i}")])
                .succeeded()
        })
        .collect();
    let ids = fake.submit_jobs(timelines).await;
    let config = TrackerConfig {
        log_mode: LogMode::Auto,
        batched_above: 2,
        ..batched_config()
    };
    let got = follow_all(&fake, &ids, config).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(got.lines[id], [format!("job {i}")]);
    }
    assert!(
        fake.calls("GetLogEvents") >= 1,
        "the first streams per stream"
    );
    assert!(fake.calls("FilterLogEvents") >= 1, "the rest in sweeps");
}
