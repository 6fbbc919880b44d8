//! End records at the wire: the follower stops an attempt's stream once both of the bootstrap's
//! end records were read (in any order, across pages, with lines in between), never shows them,
//! shows look-alikes with another nonce as output, falls back to the drain when one is missing,
//! and decides the outcome from them when no retry can follow.
//!
//! Scripted lines `@end:PIPE:CODE[:ORIGIN]` become the job's real end records in the fake.

mod support;

use std::time::Duration;

use mfbatch::bootstrap::end_record::Origin;
use mfbatch::event::{DecidedBy, Event, JobStatus, Outcome};
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};
use support::{AttemptEnd, FakeAws, Timeline};

/// Fast polls, and a drain window far longer than any test may take: a test that ends in time
/// ended on its records, not on the drain.
fn records_only_config() -> TrackerConfig {
    TrackerConfig {
        drain_quiet: Duration::from_secs(600),
        drain_max: Duration::from_secs(600),
        ..support::fast_tracker_config()
    }
}

/// The same with a short drain, for the fallback.
fn draining_config() -> TrackerConfig {
    TrackerConfig {
        drain_quiet: Duration::from_millis(150),
        drain_max: Duration::from_secs(10),
        ..records_only_config()
    }
}

struct Followed {
    lines: Vec<String>,
    statuses: Vec<JobStatus>,
    step_exits: Vec<(usize, i32, Origin)>,
    outcome: Outcome,
}

async fn follow(fake: &FakeAws, id: &str, config: TrackerConfig) -> Followed {
    let tracker = Tracker::new(&fake.clients(), config);
    let mut handle = tracker.follow(FollowRequest::new(id));
    let mut followed = Followed {
        lines: Vec::new(),
        statuses: Vec::new(),
        step_exits: Vec::new(),
        outcome: Outcome {
            job_id: String::new(),
            status: JobStatus::Submitted,
            exit_code: None,
            failure: None,
            summary: None,
            reason: None,
            attempts: 0,
            decided_by: DecidedBy::BatchStatus,
            step_end: None,
        },
    };
    let collect = async {
        while let Some(event) = handle.next_event().await {
            match event {
                Event::Log { message, .. } => followed.lines.push(message),
                Event::Status { status, .. } => followed.statuses.push(status),
                Event::StepExited { end, .. } => {
                    followed
                        .step_exits
                        .push((end.attempt, end.exit_code, end.origin))
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("the follow ended on the records, not on the 600 s drain");
    followed.outcome = handle.wait().await.expect("followed to the end");
    followed
}

#[tokio::test]
async fn records_end_the_stream_decide_the_outcome_and_are_never_shown() {
    let fake = FakeAws::start().await;
    // Batch would report the end only after 200 more polls.
    let timeline = Timeline::new()
        .running(200)
        .logs(&["one", "two", "@end:stdout:0", "@end:stderr:0"])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], records_only_config()).await;
    assert_eq!(got.lines, ["one", "two"]);
    assert_eq!(got.step_exits, [(1, 0, Origin::Step)]);
    assert_eq!(got.outcome.decided_by, DecidedBy::EndRecord);
    assert_eq!(got.outcome.status, JobStatus::Succeeded);
    assert_eq!(got.outcome.exit_code, Some(0));
    assert_eq!(got.statuses.last(), Some(&JobStatus::Running));
    assert!(
        fake.calls("DescribeJobs") < 20,
        "{}",
        fake.calls("DescribeJobs")
    );
}

#[tokio::test]
async fn a_failed_step_without_retries_decides_at_once_with_its_code() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(200)
        .logs(&["Traceback", "@end:stderr:3", "@end:stdout:3"])
        .exit(3);
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], records_only_config()).await;
    assert_eq!(got.lines, ["Traceback"]);
    assert_eq!(got.outcome.decided_by, DecidedBy::EndRecord);
    assert_eq!(got.outcome.status, JobStatus::Failed);
    assert_eq!(got.outcome.exit_code, Some(3));
    assert!(
        got.outcome
            .summary
            .as_deref()
            .unwrap()
            .contains("the step exited with code 3"),
        "{:?}",
        got.outcome
    );
}

#[tokio::test]
async fn records_split_across_pages_in_either_order() {
    let fake = FakeAws::start().await;
    fake.set_log_page_size(1);
    let timeline = Timeline::new()
        .running(200)
        .logs(&["a", "@end:stderr:0", "b", "@end:stdout:0", "after both"])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], records_only_config()).await;
    // Lines between and after the records (in the last page read) are still output.
    assert_eq!(got.lines, ["a", "b"]);
    assert_eq!(got.outcome.decided_by, DecidedBy::EndRecord);
}

#[tokio::test]
async fn a_record_read_before_the_other_pipes_earlier_lines_waits_for_them() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(200)
        .logs(&["out 1", "@end:stdout:0"])
        // stderr's last lines and its record are ingested a few reads later.
        .logs_after_reads(3, &["err 1", "err 2", "@end:stderr:0"])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], records_only_config()).await;
    assert_eq!(got.lines, ["out 1", "err 1", "err 2"]);
    assert_eq!(got.outcome.decided_by, DecidedBy::EndRecord);
}

#[tokio::test]
async fn a_look_alike_with_another_nonce_is_the_steps_output() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(2)
        .logs(&[
            "@end-foreign:stdout:0",
            "@end-foreign:stderr:0",
            "still running",
        ])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], draining_config()).await;
    assert_eq!(got.lines.len(), 3, "{:?}", got.lines);
    assert!(got.lines[0].starts_with("mfbatch-end:v1:0123456789abcdef"));
    assert_eq!(got.lines[2], "still running");
    // Its real records came at the end (written by the fake's "bootstrap").
    assert_eq!(got.step_exits, [(1, 0, Origin::Step)]);
}

#[tokio::test]
async fn a_missing_stderr_record_falls_back_to_the_drain() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(3)
        .logs(&["a", "@end:stdout:0"])
        .logs_when_done(&["b"])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], draining_config()).await;
    assert_eq!(got.lines, ["a", "b"]);
    assert!(got.step_exits.is_empty());
    assert_eq!(got.outcome.decided_by, DecidedBy::BatchStatus);
    assert_eq!(got.statuses.last(), Some(&JobStatus::Succeeded));
}

#[tokio::test]
async fn no_records_at_all_fall_back_to_the_drain() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(2)
        .logs(&["a"])
        .logs_when_done(&["late"])
        .exit(137)
        .without_end_records();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], draining_config()).await;
    assert_eq!(got.lines, ["a", "late"]);
    assert_eq!(got.outcome.decided_by, DecidedBy::BatchStatus);
    assert_eq!(got.outcome.exit_code, Some(137));
}

#[tokio::test]
async fn each_attempt_has_its_own_records_and_a_stopped_step_waits_for_batch() {
    let fake = FakeAws::start().await;
    // Attempt 1 loses its host: ECS stops the container, the bootstrap forwards SIGTERM and
    // says "stopped"; only Batch knows it retries. Attempt 2 exits 0 by itself.
    let timeline = Timeline::new()
        .running(3)
        .logs(&["attempt one"])
        .attempt_failed(
            AttemptEnd::exit(143).status_reason("Host EC2 (instance i-0abc) terminated."),
        )
        .status(JobStatus::Runnable, 2)
        .running(200)
        .logs(&["attempt two", "@end:stdout:0", "@end:stderr:0"])
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let got = follow(&fake, &ids[0], records_only_config()).await;
    assert_eq!(got.lines, ["attempt one", "attempt two"]);
    assert_eq!(
        got.step_exits,
        [(1, 143, Origin::Stopped), (2, 0, Origin::Step)]
    );
    assert_eq!(got.outcome.decided_by, DecidedBy::EndRecord);
    assert_eq!(got.outcome.attempts, 2);
    assert!(got.outcome.succeeded());
}

#[tokio::test]
async fn a_failure_that_batch_may_retry_is_left_to_batch() {
    let fake = FakeAws::start().await;
    // Submitted with a retry strategy that retries any failure, three attempts.
    let timeline = Timeline::new()
        .running(3)
        .logs(&["try 1"])
        .attempt_failed(AttemptEnd::exit(3))
        .status(JobStatus::Runnable, 1)
        .running(3)
        .logs(&["try 2"])
        .exit(0);
    let ids = fake.submit_jobs_with_retries(vec![timeline], 3).await;
    let got = follow(&fake, &ids[0], records_only_config()).await;
    assert_eq!(got.lines, ["try 1", "try 2"]);
    assert_eq!(got.step_exits, [(1, 3, Origin::Step), (2, 0, Origin::Step)]);
    // Attempt 1's exit 3 decided nothing (a retry followed); attempt 2's exit 0 did.
    assert!(got.outcome.succeeded());
    assert_eq!(got.outcome.attempts, 2);
    assert!(got.statuses.contains(&JobStatus::Runnable));
}
