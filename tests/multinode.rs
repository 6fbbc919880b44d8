//! Multi-node parallel jobs followed as one thing, at the wire against the fake AWS (which has
//! what moto lacks: `#n` node records with their own streams, node statuses on a timeline, a
//! parent that ends with its main node): the main node's lines live, the other nodes counted and
//! their failures shown with their last lines, the outcome from the main node, every node in
//! the shared DescribeJobs batches; moto's shape (no node records) followed through the parent.
//! Also the CLI: `run --nodes`, `logs`/`status`/`kill` of `<job>` and `<job>#<n>`, Ctrl-C, and
//! `logs` of an array's parent.

mod support;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mfbatch::event::{Event, EventSink, JobStatus, Outcome};
use mfbatch::track::nodes::NodeFollow;
use mfbatch::track::{FollowRequest, Tracker};
use serde_json::Value;
use support::cli::{interrupt_and_finish, read_until, Cli};
use support::*;

/// A node that runs `runs` describes, prints two lines and exits with `code`.
fn node(index: usize, runs: usize, code: i32) -> Timeline {
    Timeline::new()
        .status(JobStatus::Runnable, 1)
        .running(runs)
        .logs(&[
            &format!("node {index} working"),
            &format!("node {index} done"),
        ])
        .exit(code)
}

/// `num_nodes` nodes: the main one (0) runs long enough for the others to end first; node
/// `failing` exits with 7.
fn script(num_nodes: usize, main_code: i32, failing: Option<usize>) -> NodesScript {
    script_with(60, num_nodes, main_code, failing)
}

/// The same with the main node running `main_runs` describes (the CLI's polls slow down as a
/// job runs on, so its tests keep jobs short).
fn script_with(
    main_runs: usize,
    num_nodes: usize,
    main_code: i32,
    failing: Option<usize>,
) -> NodesScript {
    NodesScript::each(num_nodes, |i| match i {
        0 => node(0, main_runs, main_code),
        i if Some(i) == failing => node(i, 2, 7),
        i => node(i, 3, 0),
    })
}

/// Follows the job (as `request` says), collecting every event.
async fn follow(fake: &FakeAws, request: FollowRequest) -> (Vec<Event>, Outcome) {
    let (sink, events) = recording_sink();
    let tracker = Tracker::new(&fake.clients(), fast_tracker_config());
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        tracker.follow_with(request, sink).wait(),
    )
    .await
    .expect("the job is followed to its end")
    .expect("no tracking error");
    let events = events.lock().unwrap().clone();
    (events, outcome)
}

fn nodes_request(id: &str) -> FollowRequest {
    FollowRequest {
        nodes: Some(NodeFollow::default()),
        ..FollowRequest::new(id)
    }
}

fn log_lines(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Log {
                job_id, message, ..
            } => Some((job_id.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

fn last_counts(events: &[Event]) -> BTreeMap<JobStatus, usize> {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::NodesProgress { counts, .. } => Some(counts.clone()),
            _ => None,
        })
        .expect("nodes_progress events")
}

#[tokio::test]
async fn a_failing_node_is_shown_and_the_main_node_decides_the_job() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(4, script(4, 0, Some(2))).await;
    let (events, outcome) = follow(&fake, nodes_request(&id)).await;

    let main = format!("{id}#0");
    assert_eq!(
        log_lines(&events),
        [
            (main.clone(), "node 0 working".to_owned()),
            (main, "node 0 done".to_owned())
        ],
        "only the main node is streamed"
    );
    let failed: Vec<(String, usize, Option<i32>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::NodeFailed {
                node_id,
                node_index,
                exit_code,
                ..
            } => Some((node_id.clone(), *node_index, *exit_code)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(format!("{id}#2"), 2, Some(7))]);
    let tails: Vec<(usize, Vec<String>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::NodeLogTail {
                node_index, lines, ..
            } => Some((*node_index, lines.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tails,
        [(2, vec!["node 2 working".into(), "node 2 done".into()])],
        "the failed node's last lines, without end records"
    );
    assert_eq!(
        last_counts(&events),
        BTreeMap::from([(JobStatus::Succeeded, 3), (JobStatus::Failed, 1)])
    );
    assert_eq!(outcome.job_id, id);
    assert_eq!(outcome.status, JobStatus::Succeeded);
    assert_eq!(outcome.exit_code, Some(0), "the main node's code");
    let statuses: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Status { job_id, .. } => Some(job_id),
            _ => None,
        })
        .collect();
    assert!(
        statuses.iter().all(|j| **j == id),
        "the job's status only: {statuses:?}"
    );
    let exited: Vec<&Outcome> = events
        .iter()
        .filter_map(|e| match e {
            Event::Exited(o) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(exited.len(), 1, "one outcome, the job's");
    assert_eq!(exited[0].job_id, id);
}

#[tokio::test]
async fn the_main_node_failing_fails_the_job_with_its_code() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(3, script(3, 3, None)).await;
    let (events, outcome) = follow(&fake, nodes_request(&id)).await;
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.job_id, id);
    assert!(
        !events.iter().any(|e| matches!(e, Event::NodeFailed { .. })),
        "the main node is no 'other node'"
    );
    assert_eq!(fake.job(&id).unwrap().status, JobStatus::Failed);
}

#[tokio::test]
async fn the_parent_and_every_node_share_the_describe_calls() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(16, script(16, 0, None)).await;
    let (_, outcome) = follow(&fake, nodes_request(&id)).await;
    assert_eq!(outcome.exit_code, Some(0));
    let calls: Vec<Vec<String>> = fake
        .requests("DescribeJobs")
        .iter()
        .map(|r| {
            r["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert!(
        calls
            .iter()
            .any(|c| c.contains(&id) && c.iter().filter(|j| j.contains('#')).count() == 16),
        "the job and its 16 nodes in one call"
    );
    // The other nodes are watched together until each ends, so every call that describes any
    // of them also describes the one watched longest: as many calls as that node's describes.
    let main = format!("{id}#0");
    let others = |c: &Vec<String>| c.iter().filter(|j| j.contains('#') && **j != main).count();
    let calls_with_others = calls.iter().filter(|c| others(c) > 0).count();
    let longest = (1..16)
        .map(|i| {
            let node = format!("{id}#{i}");
            calls.iter().filter(|c| c.contains(&node)).count()
        })
        .max()
        .unwrap();
    let described: usize = calls.iter().map(others).sum();
    assert_eq!(
        calls_with_others, longest,
        "{described} describes of the other nodes in {calls_with_others} calls: batched, not one by one"
    );
    assert!(described > 2 * calls_with_others);
}

#[tokio::test]
async fn a_hundred_nodes_take_calls_of_at_most_a_hundred_ids() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(100, script(100, 0, Some(57))).await;
    let (events, outcome) = follow(&fake, nodes_request(&id)).await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(
        last_counts(&events),
        BTreeMap::from([(JobStatus::Succeeded, 99), (JobStatus::Failed, 1)])
    );
    // The fake refuses more than 100 ids per call; none was refused.
    assert!(fake
        .requests("DescribeJobs")
        .iter()
        .all(|r| r["jobs"].as_array().unwrap().len() <= 100));
}

#[tokio::test]
async fn without_node_records_the_parent_is_followed() {
    let fake = FakeAws::start().await;
    let id = fake
        .submit_nodes(
            2,
            NodesScript {
                nodes: vec![Timeline::new()
                    .running(2)
                    // Both nodes' end records on the one stream, as on moto.
                    .logs(&[
                        "node 0 up",
                        "@end:stdout:0",
                        "@end:stderr:0",
                        "node 1 up",
                        "@end:stdout:4",
                        "@end:stderr:4",
                    ])
                    .exit(4)],
                without_node_records: true,
            },
        )
        .await;
    // Known to be multi-node (as `run --nodes`), and found out from its description.
    for request in [nodes_request(&id), FollowRequest::new(id.clone())] {
        let (events, outcome) = follow(&fake, request).await;
        let lines: Vec<String> = log_lines(&events).into_iter().map(|(_, l)| l).collect();
        assert_eq!(lines, ["node 0 up", "node 1 up"], "no end records");
        assert_eq!(outcome.exit_code, Some(4));
        assert_eq!(outcome.job_id, id);
    }
}

#[tokio::test]
async fn a_job_stopped_before_it_started_ends_without_looking_for_nodes() {
    let fake = FakeAws::start().await;
    let id = fake
        .submit_nodes(
            2,
            NodesScript::each(2, |_| {
                Timeline::new()
                    .status(JobStatus::Runnable, 10_000)
                    .succeeded()
            }),
        )
        .await;
    fake.clients()
        .batch
        .terminate_job()
        .job_id(&id)
        .reason("not needed")
        .send()
        .await
        .unwrap();
    let (_, outcome) = follow(&fake, nodes_request(&id)).await;
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(outcome.reason.as_deref(), Some("not needed"));
    let main = format!("{id}#0");
    assert!(
        fake.requests("DescribeJobs")
            .iter()
            .all(|r| !r["jobs"].as_array().unwrap().contains(&main.clone().into())),
        "no node is looked for: {:?}",
        fake.requests("DescribeJobs")
    );
}

#[tokio::test]
async fn a_job_no_environment_places_is_warned_about_and_cancelled_as_a_whole() {
    let fake = FakeAws::start().await;
    let id = fake
        .submit_nodes(
            3,
            NodesScript::each(3, |_| {
                Timeline::new()
                    .status(JobStatus::Runnable, 100_000)
                    .succeeded()
            }),
        )
        .await;
    let (sink, events) = recording_sink();
    let config = mfbatch::track::TrackerConfig {
        runnable_warning: Duration::from_millis(100),
        runnable_timeout: Some(Duration::from_millis(400)),
        ..fast_tracker_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        tracker.follow_with(nodes_request(&id), sink).wait(),
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
    let stuck = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Warning(mfbatch::event::Warning::StuckRunnable { job_id, .. }) if *job_id == id))
        .count();
    assert_eq!(stuck, 1, "one warning, about the job");
    let cancels = fake.requests("CancelJob");
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0]["jobId"], id, "the job, not a node, is cancelled");
    assert!(
        fake.requests("TerminateJob")
            .iter()
            .all(|r| r["jobId"] == id),
        "no node id is stopped"
    );
}

#[tokio::test]
async fn a_job_is_followed_the_way_its_description_calls_for() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(3, script(3, 0, Some(1))).await;
    let (events, outcome) = follow(&fake, FollowRequest::new(id.clone())).await;
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::NodesProgress { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::NodeFailed { node_index: 1, .. })));
    assert_eq!(outcome.exit_code, Some(0));

    // One node, as an ordinary job.
    let (events, outcome) = follow(&fake, FollowRequest::new(format!("{id}#1"))).await;
    let lines: Vec<String> = log_lines(&events).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["node 1 working", "node 1 done"]);
    assert_eq!(outcome.exit_code, Some(7));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::NodesProgress { .. })));

    // An array's parent, as an array.
    let parent = fake
        .submit_array(
            3,
            ArrayScript::each(3, |i| {
                Timeline::new().running(1).logs(&["x"]).exit(i as i32)
            }),
        )
        .await;
    let (events, outcome) = follow(&fake, FollowRequest::new(parent)).await;
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ArrayDone { size: 3, .. })));
    assert_eq!(outcome.status, JobStatus::Failed);
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
async fn run_nodes_streams_the_main_node_and_shows_a_failed_nodes_last_lines() {
    let fake = FakeAws::start().await;
    fake.script_next_nodes(script_with(20, 4, 0, Some(2)));
    let cli = project(&fake);
    let out = cli.run(&["run", "step.py", "--nodes", "4"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert_eq!(
        out.stdout, "node 0 working\nnode 0 done\n",
        "the main node's lines"
    );
    let id = fake.jobs()[0].id.clone();
    assert!(
        out.stderr
            .contains(&format!("node 2 ({id}#2) failed: exit 7")),
        "{}",
        out.render()
    );
    assert!(
        out.stderr.contains("  [#2] | node 2 done"),
        "{}",
        out.render()
    );
    assert!(out.stderr.contains("nodes [4]: "), "{}", out.render());

    // Nodes are ordinary ids for logs and status; a node is not stopped alone.
    let logs = cli.run(&["logs", &format!("{id}#2")]);
    assert_eq!(
        logs.stdout,
        "node 2 working\nnode 2 done\n",
        "{}",
        logs.render()
    );
    let status = cli.run(&["status", &format!("{id}#2")]);
    assert!(
        status.stdout.contains(&format!("{id}#2  FAILED")),
        "{}",
        status.render()
    );
    let kill = cli.run(&["kill", &format!("{id}#1")]);
    assert_eq!(kill.code, Some(1), "{}", kill.render());
    assert!(
        kill.stderr.contains(&format!("mfbatch kill {id}")),
        "{}",
        kill.render()
    );
    assert!(
        fake.requests("TerminateJob")
            .iter()
            .all(|r| r["jobId"] == id),
        "no node id is stopped"
    );

    // `--no-follow` reads what there is: the main node's stream.
    let logs = cli.run(&["logs", "--no-follow", &id]);
    assert_eq!(
        logs.stdout,
        "node 0 working\nnode 0 done\n",
        "{}",
        logs.render()
    );

    // `logs` of the job follows it as one thing again.
    let logs = cli.run(&["logs", &id]);
    assert_eq!(logs.code, Some(0), "{}", logs.render());
    assert_eq!(
        logs.stdout,
        "node 0 working\nnode 0 done\n",
        "{}",
        logs.render()
    );
    assert!(
        logs.stderr.contains("  [#2] | node 2 done"),
        "{}",
        logs.render()
    );
}

#[tokio::test]
async fn run_nodes_exits_with_the_main_nodes_code() {
    let fake = FakeAws::start().await;
    fake.script_next_nodes(script_with(20, 3, 3, None));
    let cli = project(&fake);
    let out = cli.run(&["run", "step.py", "--nodes", "3"]);
    assert_eq!(out.code, Some(3), "{}", out.render());
}

#[tokio::test]
async fn json_output_has_nodes_progress_node_failed_and_tail_events() {
    let fake = FakeAws::start().await;
    fake.script_next_nodes(script_with(20, 3, 0, Some(1)));
    let cli = project(&fake);
    let out = cli.run(&["--output", "json", "run", "step.py", "--nodes", "3"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let progress = events
        .iter()
        .rev()
        .find(|e| e["event"] == "nodes_progress")
        .expect("nodes_progress");
    assert_eq!(progress["num_nodes"], 3);
    assert_eq!(progress["counts"]["SUCCEEDED"], 2);
    let failed = events
        .iter()
        .find(|e| e["event"] == "node_failed")
        .expect("node_failed");
    assert_eq!(failed["node_index"], 1);
    assert_eq!(failed["exit_code"], 7);
    let tail = events
        .iter()
        .find(|e| e["event"] == "node_log_tail")
        .expect("node_log_tail");
    assert_eq!(tail["lines"][1], "node 1 done");
}

#[tokio::test]
async fn logs_of_an_arrays_parent_follows_the_array() {
    let fake = FakeAws::start().await;
    let parent = fake
        .submit_array(
            4,
            ArrayScript::each(4, |i| {
                Timeline::new()
                    .running(1)
                    .logs(&[&format!("child {i} done")])
                    .exit(if i == 2 { 6 } else { 0 })
            }),
        )
        .await;
    let cli = project(&fake);
    let logs = cli.run(&["logs", &parent]);
    assert_eq!(logs.code, Some(6), "{}", logs.render());
    assert!(logs.stderr.contains("sweep [4]: "), "{}", logs.render());
    assert!(
        logs.stderr.contains("  | child 2 done"),
        "{}",
        logs.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_terminates_the_job_and_so_every_node() {
    let fake = FakeAws::start().await;
    fake.script_next_nodes(NodesScript::each(3, |i| {
        Timeline::new()
            .running(100_000)
            .logs(&[&format!("node {i} up")])
            .succeeded()
    }));
    let mut cli = project(&fake);
    cli.set_env("MFBATCH_POLL_MIN_MS", "20");
    let mut child = cli.spawn(&["run", "step.py", "--nodes", "3"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = tokio::task::block_in_place(|| read_until(&mut stderr, "RUNNING 3"));
    let (code, rest) = interrupt_and_finish(&mut child, &mut stderr);
    assert_eq!(code, Some(130), "{seen}{rest}");
    let id = fake.jobs()[0].id.clone();
    let stops: Vec<Value> = fake.requests("TerminateJob");
    assert_eq!(stops.len(), 1, "one call for the whole job");
    assert_eq!(stops[0]["jobId"], id.as_str());
    for i in 0..3 {
        let node = fake.job(&format!("{id}#{i}")).unwrap();
        assert_eq!(node.status, JobStatus::Failed, "node {i} stopped");
    }
}

/// DescribeJobs calls naming this id.
fn describes_of(fake: &FakeAws, id: &str) -> usize {
    fake.requests("DescribeJobs")
        .iter()
        .filter(|r| {
            r["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j.as_str() == Some(id))
        })
        .count()
}

#[tokio::test]
async fn aborting_the_follow_of_a_multi_node_job_stops_its_main_nodes_follower() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(3, script_with(400, 3, 0, None)).await;
    let (sink, events) = recording_sink();
    let tracker = Tracker::new(&fake.clients(), fast_tracker_config());
    let handle = tracker.follow_with(FollowRequest::new(&id), sink);
    // the main node's first line.
    wait_for_event(&events, |e| matches!(e, Event::Log { .. })).await;
    // What `serve`'s unfollow and an embedder's abort do.
    handle.abort_handle().abort();
    let _ = handle.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let main = format!("{id}#0");
    let before = (describes_of(&fake, &id), describes_of(&fake, &main));
    let logs_before = fake.calls("GetLogEvents");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (describes_of(&fake, &id), describes_of(&fake, &main)),
        before,
        "neither the job nor its main node is polled after the abort"
    );
    assert_eq!(
        fake.calls("GetLogEvents"),
        logs_before,
        "nor its stream read"
    );
}

#[tokio::test]
async fn describe_jobs_failing_at_first_still_finds_a_multi_node_job() {
    let fake = FakeAws::start().await;
    let id = fake.submit_nodes(3, script_with(60, 3, 0, Some(2))).await;
    fake.fail_next("DescribeJobs", 30, Fault::ServerError);
    let (sink, events) = recording_sink();
    let config = mfbatch::track::TrackerConfig {
        // The failures outlast the warning, never the limit.
        status_failure_warning: Duration::from_millis(20),
        status_failure_limit: Duration::from_secs(60),
        ..fast_tracker_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        tracker.follow_with(FollowRequest::new(&id), sink).wait(),
    )
    .await
    .expect("followed to the end")
    .expect("no tracking error");
    let events = events.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Warning(mfbatch::event::Warning::StatusUnavailable { .. })
        )),
        "the failures were reported while they lasted"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::NodeFailed { node_index: 2, .. })),
        "followed as a multi-node job: {events:?}"
    );
    assert_eq!(
        log_lines(&events).len(),
        2,
        "the main node's lines: {events:?}"
    );
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.attempts, 1);
}

#[tokio::test]
async fn a_retried_job_reports_its_last_attempt_and_watches_its_ended_nodes_again() {
    let fake = Arc::new(FakeAws::start().await);
    // Node 1 fails long before the main node's first attempt does, however busy the machine.
    let main = Timeline::new()
        .status(JobStatus::Runnable, 1)
        .running(60)
        .logs(&["main, first try"])
        .attempt_failed(AttemptEnd::exit(1))
        .status(JobStatus::Runnable, 1)
        .running(12)
        .logs(&["main, second try"])
        .exit(0);
    let script = NodesScript::each(3, |i| match i {
        0 => main.clone(),
        1 => node(1, 2, 7),
        i => node(i, 3, 0),
    });
    let id = fake.submit_nodes_with_attempts(3, Some(2), script).await;
    let node1 = format!("{id}#1");
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    // How often node 1 was described when its failure was reported: its watch ends there.
    let at_failure: Arc<Mutex<Option<usize>>> = Arc::default();
    let sink: EventSink = {
        let (events, at_failure, fake, node1) = (
            events.clone(),
            at_failure.clone(),
            fake.clone(),
            node1.clone(),
        );
        Arc::new(move |e| {
            if matches!(e, Event::NodeFailed { node_index: 1, .. }) {
                *at_failure.lock().unwrap() = Some(describes_of(&fake, &node1));
            }
            events.lock().unwrap().push(e)
        })
    };
    let tracker = Tracker::new(&fake.clients(), fast_tracker_config());
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        tracker.follow_with(nodes_request(&id), sink).wait(),
    )
    .await
    .expect("followed to the end")
    .expect("no tracking error");
    let events = events.lock().unwrap().clone();
    assert_eq!(outcome.status, JobStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    assert_eq!(
        log_lines(&events)
            .into_iter()
            .map(|(_, line)| line)
            .collect::<Vec<_>>(),
        ["main, first try", "main, second try"]
    );
    let failures = events
        .iter()
        .filter(|e| matches!(e, Event::NodeFailed { node_index: 1, .. }))
        .count();
    assert_eq!(failures, 1, "one failure of one attempt, reported once");
    let at_failure = at_failure.lock().unwrap().expect("node 1's failure");
    assert!(
        describes_of(&fake, &node1) > at_failure,
        "node 1 is watched again once the job runs again"
    );
}
