//! Array jobs followed as one thing, at the wire against the fake AWS (which has what moto
//! lacks: a parent that fails, a lagging `statusSummary`, ListJobs paging, cascading stops):
//! the parent alone is polled, failures come from ListJobs pages, only the first K failed
//! children's logs are read, and the exit code is the children's common one. Also the CLI:
//! rendering, JSON events, `<parent>:<i>` ids and Ctrl-C.

mod support;

use std::io::BufReader;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mfbatch::event::{Event, EventSink, JobStatus};
use mfbatch::track::array::ArrayFollow;
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};
use serde_json::Value;
use support::cli::{interrupt_and_finish, read_until, Cli};
use support::*;

fn fast_config() -> TrackerConfig {
    support::fast_tracker_config()
}

/// A child that runs `runs` describes, prints two lines and exits with `code`.
fn child(index: usize, runs: usize, code: i32) -> Timeline {
    Timeline::new()
        .status(JobStatus::Runnable, 1)
        .running(runs)
        .logs(&[
            &format!("child {index} working"),
            &format!("child {index} done"),
        ])
        .exit(code)
}

/// Follows the array, collecting every event (with when it arrived).
async fn follow(
    fake: &FakeAws,
    id: &str,
    config: TrackerConfig,
    follow: ArrayFollow,
) -> (Vec<(Instant, Event)>, mfbatch::event::Outcome) {
    let events: Arc<Mutex<Vec<(Instant, Event)>>> = Arc::default();
    let sink: EventSink = {
        let events = events.clone();
        Arc::new(move |e| events.lock().unwrap().push((Instant::now(), e)))
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let request = FollowRequest {
        array: Some(follow),
        ..FollowRequest::new(id)
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        tracker.follow_with(request, sink).wait(),
    )
    .await
    .expect("the array is followed to its end")
    .expect("no tracking error");
    let events = events.lock().unwrap().clone();
    (events, outcome)
}

fn failed_children(events: &[(Instant, Event)]) -> Vec<(usize, Option<i32>)> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChildFailed {
                index, exit_code, ..
            } => Some((*index, *exit_code)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_parent_pending_then_failed_with_mixed_exit_codes() {
    let fake = FakeAws::start().await;
    let script = ArrayScript::each(6, |i| match i {
        1 | 4 => child(i, 2, 3),
        5 => Timeline::new()
            .running(3)
            .logs(&["allocating"])
            .without_end_records()
            .failed(AttemptEnd::reason(
                "OutOfMemoryError: Container killed due to memory usage",
            )),
        _ => child(i, 1 + i, 0),
    });
    let id = fake.submit_array(6, script).await;
    let (events, outcome) = follow(
        &fake,
        &id,
        fast_config(),
        ArrayFollow {
            show_failed: 2,
            ..Default::default()
        },
    )
    .await;

    let statuses: Vec<JobStatus> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Status { job_id, status, .. } if *job_id == id => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        [JobStatus::Submitted, JobStatus::Pending, JobStatus::Failed]
    );
    let mut failed = failed_children(&events);
    failed.sort();
    assert_eq!(failed, [(1, Some(3)), (4, Some(3)), (5, None)]);
    let tails: Vec<(usize, Vec<String>)> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChildLogTail { index, lines, .. } => Some((*index, lines.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tails,
        [
            (1, vec!["child 1 working".into(), "child 1 done".into()]),
            (4, vec!["child 4 working".into(), "child 4 done".into()]),
        ],
        "the first two failed children's last lines, without end records"
    );
    let done = events
        .iter()
        .find_map(|(_, e)| match e {
            Event::ArrayDone { failed, counts, .. } => Some((failed.clone(), counts.clone())),
            _ => None,
        })
        .expect("array_done");
    assert_eq!(done.1[&JobStatus::Succeeded], 3);
    assert_eq!(done.0[0].indexes, "1,4");
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.exit_code, None, "mixed: exit 1 for the CLI");
    assert!(
        outcome
            .summary
            .as_deref()
            .unwrap()
            .contains("3 of 6 children failed: exit 3 × 2 (1,4) · OutOfMemoryError × 1 (5)"),
        "{outcome:?}"
    );
    // Never a follower per child: the only log reads are the two tails, the only child
    // descriptions the one call for them.
    assert_eq!(fake.calls("GetLogEvents"), 2);
    let child_describes = fake
        .requests("DescribeJobs")
        .iter()
        .filter(|b| b["jobs"][0].as_str().unwrap().contains(':'))
        .count();
    assert_eq!(child_describes, 1);
}

#[tokio::test]
async fn failures_sharing_one_exit_code_give_it_as_the_arrays() {
    let fake = FakeAws::start().await;
    let script = ArrayScript::each(4, |i| child(i, 1, if i % 2 == 1 { 7 } else { 0 }));
    let id = fake.submit_array(4, script).await;
    let (_, outcome) = follow(&fake, &id, fast_config(), ArrayFollow::default()).await;
    assert_eq!(outcome.exit_code, Some(7));

    let all_good = ArrayScript::each(3, |i| child(i, 1, 0));
    let id = fake.submit_array(3, all_good).await;
    let (events, outcome) = follow(&fake, &id, fast_config(), ArrayFollow::default()).await;
    assert!(outcome.succeeded());
    assert_eq!(outcome.exit_code, Some(0));
    assert!(failed_children(&events).is_empty());
    assert_eq!(
        fake.calls("ListJobs"),
        1,
        "only the array with failures is listed"
    );
}

#[tokio::test]
async fn children_no_environment_places_are_warned_about_and_the_array_cancelled() {
    let fake = FakeAws::start().await;
    let stuck = ArrayScript::each(4, |_| {
        Timeline::new()
            .status(JobStatus::Runnable, 100_000)
            .succeeded()
    });
    let id = fake.submit_array(4, stuck).await;
    let (sink, events) = recording_sink();
    let config = TrackerConfig {
        runnable_warning: Duration::from_millis(100),
        runnable_timeout: Some(Duration::from_millis(400)),
        ..fast_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let request = FollowRequest {
        array: Some(ArrayFollow::default()),
        ..FollowRequest::new(&id)
    };
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        tracker.follow_with(request, sink).wait(),
    )
    .await
    .expect("the follow ends");
    assert!(
        matches!(
            &result,
            Err(mfbatch::track::TrackError::RunnableTimeout { job_id, .. }) if *job_id == id
        ),
        "{result:?}"
    );
    let stuck_warnings = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Warning(mfbatch::event::Warning::StuckRunnable { .. })
            )
        })
        .count();
    assert_eq!(stuck_warnings, 1);
    let cancels = fake.requests("CancelJob");
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0]["jobId"], id, "the parent, and so every child");

    // Children that started and now wait for room are queued, not stuck.
    let busy = ArrayScript::each(3, |i| match i {
        0 => child(0, 2, 0),
        // Long enough to outlast the timeout: stopped, were they counted as stuck.
        _ => Timeline::new()
            .status(JobStatus::Runnable, 100)
            .running(1)
            .exit(0),
    });
    let id = fake.submit_array(3, busy).await;
    let config = TrackerConfig {
        runnable_warning: Duration::from_millis(300),
        runnable_timeout: Some(Duration::from_millis(300)),
        ..fast_config()
    };
    let (_, outcome) = follow(&fake, &id, config, ArrayFollow::default()).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(fake.requests("CancelJob").len(), 1, "no second cancel");
}

#[tokio::test]
async fn a_status_summary_lagging_behind_the_children() {
    let fake = FakeAws::start().await;
    let mut script = ArrayScript::each(8, |i| child(i, 1 + i % 3, if i == 6 { 2 } else { 0 }));
    script.summary_lag = 4;
    script.parent_end_lag = 3;
    let id = fake.submit_array(8, script).await;
    let (events, outcome) = follow(&fake, &id, fast_config(), ArrayFollow::default()).await;
    assert_eq!(failed_children(&events), [(6, Some(2))]);
    assert_eq!(outcome.exit_code, Some(2));
    // Counts only ever grow toward the end: the lag delays them, it never invents children.
    let mut last_ended = 0;
    for (_, e) in &events {
        if let Event::ArrayProgress { counts, size, .. } = e {
            assert_eq!(*size, 8);
            let count = |s| counts.get(&s).copied().unwrap_or(0);
            let ended = count(JobStatus::Succeeded) + count(JobStatus::Failed);
            assert!(ended >= last_ended && ended <= 8, "{counts:?}");
            last_ended = ended;
        }
    }
}

#[tokio::test]
async fn list_jobs_is_paged_and_each_failure_is_reported_once() {
    let fake = FakeAws::start().await;
    let script = ArrayScript::each(300, |i| child(i, 1 + i % 5, if i % 6 < 5 { 1 } else { 0 }));
    let id = fake.submit_array(300, script).await;
    let (events, outcome) = follow(&fake, &id, fast_config(), ArrayFollow::default()).await;
    let mut failed = failed_children(&events);
    failed.sort();
    failed.dedup();
    assert_eq!(failed.len(), 250);
    assert_eq!(failed_children(&events).len(), 250, "each exactly once");
    assert_eq!(outcome.exit_code, Some(1));
    let tokens = fake
        .requests("ListJobs")
        .iter()
        .filter(|b| b.get("nextToken").is_some())
        .count();
    assert!(tokens >= 2, "250 failures take three pages");
    assert!(fake
        .requests("ListJobs")
        .iter()
        .all(|b| b["maxResults"] == 100 && b["jobStatus"] == "FAILED"));
}

/// 10,000 children, time compressed 60×: correct counts, each failure once, and the calls made
/// (the measured figures are in `examples/follow_array.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_children_are_followed_with_a_few_calls() {
    let fake = FakeAws::start().await;
    let script = ArrayScript::each(10_000, |i| {
        let code = if i % 1000 == 999 { 4 } else { 0 };
        Timeline::new()
            .status(JobStatus::Runnable, 1 + i / 2000)
            .running(1 + i % 7)
            .exit(code)
    });
    let id = fake.submit_array(10_000, script).await;
    let started = Instant::now();
    let (events, outcome) = follow(&fake, &id, fast_config(), ArrayFollow::default()).await;
    let elapsed = started.elapsed();
    let mut failed = failed_children(&events);
    failed.sort();
    assert_eq!(failed.len(), 10);
    assert!(failed.iter().all(|(i, c)| i % 1000 == 999 && *c == Some(4)));
    assert_eq!(outcome.exit_code, Some(4));
    let describes = fake.calls("DescribeJobs");
    eprintln!(
        "10,000 children: {elapsed:.1?}, DescribeJobs {describes}, ListJobs {}, GetLogEvents {}",
        fake.calls("ListJobs"),
        fake.calls("GetLogEvents")
    );
    assert_eq!(
        fake.calls("GetLogEvents"),
        3,
        "tails of the first three failures only"
    );
}

// ---- the CLI -------------------------------------------------------------------------------

fn project(fake: &FakeAws) -> Cli {
    let mut cli = Cli::new(fake);
    cli.write("step.py", "print('hi')\n");
    cli.set_env("MFBATCH_POLL_MIN_MS", "5");
    cli.set_env("MFBATCH_DRAIN_QUIET_MS", "100");
    cli
}

#[tokio::test]
async fn run_array_renders_counts_failures_and_exits_with_the_common_code() {
    let fake = FakeAws::start().await;
    fake.script_next_array(ArrayScript::each(5, |i| {
        child(i, 1 + i, if i == 3 { 9 } else { 0 })
    }));
    let cli = project(&fake);
    let out = cli.run(&["run", "step.py", "--array", "5", "--follow-index", "0"]);
    assert_eq!(out.code, Some(9), "{}", out.render());
    assert_eq!(
        out.stdout, "tester-step[0] | child 0 working\ntester-step[0] | child 0 done\n",
        "only the followed child's lines on stdout"
    );
    assert!(out.stderr.contains("tester-step [5]: "), "{}", out.render());
    assert!(
        out.stderr.contains("failed children: exit 9 × 1 (3)"),
        "{}",
        out.render()
    );
    assert!(out.stderr.contains("  | child 3 done"), "{}", out.render());
    assert!(
        out.stderr
            .contains("1 of 5 children failed: exit 9 × 1 (3)"),
        "{}",
        out.render()
    );
    // The parent's id is printed; children are ordinary ids for status, logs and kill.
    let parent = fake.jobs()[0].id.clone();
    let status = cli.run(&["status", &format!("{parent}:3"), &format!("{parent}:0")]);
    assert_eq!(status.code, Some(0), "{}", status.render());
    assert!(status.stdout.contains(&format!("{parent}:3  FAILED")));
    let status = cli.run(&["status", &parent]);
    assert!(
        status.stdout.contains("array of 5: SUCCEEDED 4 · FAILED 1"),
        "{}",
        status.render()
    );
    let logs = cli.run(&["logs", &format!("{parent}:3")]);
    assert_eq!(
        logs.stdout,
        "child 3 working\nchild 3 done\n",
        "{}",
        logs.render()
    );
}

#[tokio::test]
async fn json_output_has_progress_child_failed_and_array_done_events() {
    let fake = FakeAws::start().await;
    fake.script_next_array(ArrayScript::each(3, |i| {
        child(i, 1, if i == 0 { 0 } else { 5 })
    }));
    let cli = project(&fake);
    let out = cli.run(&["--output", "json", "run", "step.py", "--array", "3"]);
    assert_eq!(out.code, Some(5), "{}", out.render());
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"array_progress"), "{kinds:?}");
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "child_failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["exit_code"], 5);
    let done = events.iter().find(|e| e["event"] == "array_done").unwrap();
    assert_eq!(done["size"], 3);
    assert_eq!(done["failed"][0]["indexes"], "1-2");
    assert_eq!(done["counts"]["SUCCEEDED"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_terminates_the_parent_and_so_every_child() {
    let fake = FakeAws::start().await;
    fake.script_next_array(ArrayScript::each(4, |i| {
        Timeline::new()
            .running(100_000)
            .logs(&[&format!("child {i} up")])
            .succeeded()
    }));
    let mut cli = project(&fake);
    cli.set_env("MFBATCH_POLL_MIN_MS", "20");
    let mut child = cli.spawn(&["run", "step.py", "--array", "4"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = tokio::task::block_in_place(|| read_until(&mut stderr, "RUNNING 4"));
    let (code, rest) = interrupt_and_finish(&mut child, &mut stderr);
    assert_eq!(code, Some(130), "{seen}{rest}");
    let parent = fake.jobs()[0].id.clone();
    let stops: Vec<Value> = fake.requests("TerminateJob");
    assert_eq!(stops.len(), 1, "one call for the whole array");
    assert_eq!(stops[0]["jobId"], parent.as_str());
    for i in 0..4 {
        let child = fake.job(&format!("{parent}:{i}")).unwrap();
        assert_eq!(child.status, JobStatus::Failed, "child {i} stopped");
    }
}

#[tokio::test]
async fn aborting_the_follow_of_an_array_stops_its_streamed_children() {
    let fake = FakeAws::start().await;
    let script = ArrayScript::each(3, |i| child(i, 400, 0));
    let id = fake.submit_array(3, script).await;
    let (sink, events) = recording_sink();
    let tracker = Tracker::new(&fake.clients(), fast_config());
    let request = FollowRequest {
        array: Some(ArrayFollow {
            follow_indexes: vec![1],
            ..ArrayFollow::default()
        }),
        ..FollowRequest::new(&id)
    };
    let handle = tracker.follow_with(request, sink);
    // child 1's first line.
    wait_for_event(&events, |e| matches!(e, Event::Log { .. })).await;
    handle.abort_handle().abort();
    let _ = handle.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (describes, reads) = (fake.calls("DescribeJobs"), fake.calls("GetLogEvents"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (fake.calls("DescribeJobs"), fake.calls("GetLogEvents")),
        (describes, reads),
        "nothing of the array is polled or read after the abort"
    );
}
