//! The follow path at the wire: the shared poller and the log followers against the fake AWS —
//! every line exactly once and in order (through empty pages, repeated end tokens, throttling,
//! server errors, late streams, lines after the end, retries), outcomes explained, and many jobs
//! batched into few DescribeJobs calls.

mod support;

use std::time::Duration;

use mfbatch::event::{DecidedBy, Event, FailureKind, JobStatus};
use mfbatch::track::{FollowRequest, Tracker, TrackerConfig};
use support::{AttemptEnd, FakeAws, Timeline};

/// Fast intervals so tests take milliseconds, and budgets that do not get in the way.
fn fast_config() -> TrackerConfig {
    support::fast_tracker_config()
}

type Followed = (
    Vec<String>,
    Vec<JobStatus>,
    mfbatch::event::Outcome,
    Vec<usize>,
);

/// Follows one job to the end, collecting its log messages and status sequence.
async fn follow_one(fake: &FakeAws, id: &str) -> Followed {
    follow_with_clients(fake.clients(), id).await
}

/// Clients whose calls are tried once: every fault reaches mfbatch's own code, not the SDK's
/// retries.
fn clients_without_retries(fake: &FakeAws) -> mfbatch::aws::Clients {
    let options = mfbatch::aws::ClientOptions {
        max_attempts: Some(1),
        ..Default::default()
    };
    mfbatch::aws::Clients::from_sdk_config(&fake.sdk_config(), &options).unwrap()
}

async fn follow_with_clients(clients: mfbatch::aws::Clients, id: &str) -> Followed {
    let tracker = Tracker::new(&clients, fast_config());
    let mut handle = tracker.follow(FollowRequest::new(id));
    let (mut lines, mut statuses, mut attempts) = (Vec::new(), Vec::new(), Vec::new());
    for event in all_events(&mut handle).await {
        match event {
            Event::Log {
                message, attempt, ..
            } => {
                lines.push(message);
                attempts.push(attempt);
            }
            Event::Status { status, .. } => statuses.push(status),
            _ => {}
        }
    }
    let outcome = handle.wait().await.expect("followed to the end");
    (lines, statuses, outcome, attempts)
}

/// Every event of a handle until it ends (a minute at most between two events).
async fn all_events(handle: &mut mfbatch::track::JobHandle) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), handle.next_event())
        .await
        .expect("events keep coming")
    {
        events.push(event);
    }
    events
}

/// The messages of a handle's log events, in order.
async fn log_lines(handle: &mut mfbatch::track::JobHandle) -> Vec<String> {
    all_events(handle)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Log { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

fn numbered(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} line {i:05} ✓")).collect()
}

fn refs(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn twenty_thousand_lines_arrive_exactly_once_in_order() {
    let fake = FakeAws::start().await;
    fake.set_log_page_size(997);
    fake.set_empty_log_page_every(3);
    let early = numbered(15_000, "early");
    let late = numbered(5_000, "late");
    let timeline = Timeline::new()
        .status(JobStatus::Runnable, 2)
        .running(4)
        .logs(&refs(&early))
        .logs_when_done(&refs(&late))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let (lines, statuses, outcome, _) = follow_one(&fake, &ids[0]).await;
    let expected: Vec<String> = early.into_iter().chain(late).collect();
    assert_eq!(lines.len(), expected.len());
    assert!(lines == expected, "lines differ from what the job wrote");
    assert_eq!(statuses.last(), Some(&JobStatus::Succeeded));
    assert!(outcome.succeeded());
}

#[tokio::test]
async fn throttling_and_server_errors_lose_and_repeat_nothing() {
    let fake = FakeAws::start_with_seed(11).await;
    fake.set_log_page_size(500);
    fake.set_empty_log_page_every(4);
    fake.set_random_faults(0.30, 0.05, &["GetLogEvents", "DescribeJobs"]);
    let expected = numbered(20_000, "x");
    let timeline = Timeline::new()
        .running(6)
        .logs(&refs(&expected))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let (lines, _, outcome, _) = follow_with_clients(clients_without_retries(&fake), &ids[0]).await;
    assert_eq!(lines.len(), expected.len());
    assert!(lines == expected, "lines differ under faults");
    assert!(outcome.succeeded());
    // The faults really happened: more GetLogEvents calls than the 40 pages of data need.
    assert!(
        fake.calls("GetLogEvents") > 45,
        "calls: {}",
        fake.calls("GetLogEvents")
    );
}

#[tokio::test]
async fn a_stream_that_appears_late_and_lines_after_the_end_are_read() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(3)
        .stream_missing_for(4)
        .logs(&["first", "second"])
        .logs_when_done(&["written just before exit"])
        .succeeded()
        .hidden_for(2);
    let ids = fake.submit_jobs(vec![timeline]).await;
    let (lines, _, outcome, _) = follow_one(&fake, &ids[0]).await;
    assert_eq!(lines, ["first", "second", "written just before exit"]);
    assert!(outcome.succeeded());
}

#[tokio::test]
async fn every_attempt_has_its_stream_followed() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(2)
        .logs(&["attempt one"])
        .attempt_failed(
            AttemptEnd::exit(137).status_reason("Host EC2 (instance i-0abc) terminated."),
        )
        .status(JobStatus::Runnable, 1)
        .running(2)
        .logs(&["attempt two"])
        .exit(0);
    let ids = fake.submit_jobs(vec![timeline]).await;
    let (lines, _, outcome, attempts) = follow_one(&fake, &ids[0]).await;
    assert_eq!(lines, ["attempt one", "attempt two"]);
    assert_eq!(attempts, [1, 2]);
    assert_eq!(outcome.attempts, 2);
    assert!(outcome.succeeded());
}

#[tokio::test]
async fn failures_are_explained() {
    let fake = FakeAws::start().await;
    let timelines = vec![
        Timeline::new().running(1).logs(&["boom"]).exit(3),
        Timeline::new().running(1).failed(AttemptEnd::reason(
            "OutOfMemoryError: Container killed due to memory usage",
        )),
        Timeline::new()
            .running(1)
            .failed(AttemptEnd::exit(1).status_reason("Host EC2 (instance i-123) terminated.")),
        // The step's own 121 (its end record says so) is not the bootstrap's…
        Timeline::new().running(1).exit(121),
        // …nor is a 121 with no record to tell whose it is.
        Timeline::new().running(1).exit(121).without_end_records(),
        Timeline::new()
            .failed_without_attempt("CannotPullContainerError: pull access denied for nope"),
    ];
    let ids = fake.submit_jobs(timelines).await;
    let expected = [
        (
            Some(3),
            FailureKind::ExitCode,
            "the step exited with code 3",
        ),
        (None, FailureKind::OutOfMemory, "out of memory"),
        (Some(1), FailureKind::SpotReclaimed, "reclaimed"),
        (
            Some(121),
            FailureKind::ExitCode,
            "the step exited with code 121",
        ),
        (
            Some(121),
            FailureKind::ExitCode,
            "the container exited with code 121",
        ),
        (None, FailureKind::ImagePull, "could not be pulled"),
    ];
    for (id, (code, kind, summary)) in ids.iter().zip(expected) {
        // Decided by Batch's status or by the end records, whichever came first.
        let (_, _, outcome, _) = follow_one(&fake, id).await;
        assert_eq!(outcome.status, JobStatus::Failed);
        assert_eq!(outcome.exit_code, code, "{outcome:?}");
        assert_eq!(outcome.failure, Some(kind.clone()), "{outcome:?}");
        assert!(
            outcome
                .summary
                .as_deref()
                .unwrap_or_default()
                .contains(summary),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn the_bootstraps_own_failure_is_told_by_its_end_record() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(3)
        .logs(&[
            "mfbatch-bootstrap: cannot download s3://b/k: HTTP 403 AccessDenied",
            "@end:stdout:121:bootstrap",
            "@end:stderr:121:bootstrap",
        ])
        .exit(121);
    let ids = fake.submit_jobs(vec![timeline]).await;
    let (lines, _, outcome, _) = follow_one(&fake, &ids[0]).await;
    assert_eq!(lines.len(), 1, "records are not lines: {lines:?}");
    assert_eq!(outcome.failure, Some(FailureKind::Bootstrap), "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(121));
    assert_eq!(outcome.decided_by, DecidedBy::EndRecord);
}

#[tokio::test]
async fn many_jobs_share_batched_describe_calls() {
    let fake = FakeAws::start().await;
    let jobs = 250;
    let timelines = (0..jobs)
        .map(|i| {
            Timeline::each_status_for(2)
                .running(1)
                .logs(&[&format!("job {i}")])
                .succeeded()
        })
        .collect();
    let ids = fake.submit_jobs(timelines).await;
    let tracker = Tracker::new(&fake.clients(), fast_config());
    let handles: Vec<_> = ids
        .iter()
        .map(|id| tracker.follow(FollowRequest::new(id.clone())))
        .collect();
    for handle in handles {
        let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
            .await
            .expect("in time")
            .expect("followed");
        assert!(outcome.succeeded());
    }
    let describes = fake.requests("DescribeJobs");
    let sizes: Vec<usize> = describes
        .iter()
        .map(|b| b["jobs"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(
        sizes.iter().all(|&n| n <= 100),
        "a call carried more than 100 ids"
    );
    assert_eq!(
        sizes.iter().copied().max(),
        Some(100),
        "no call was filled: {sizes:?}"
    );
    // Each job needs about 9 polls to pass its 9 describes; one call per job per poll would be
    // over 2,000 calls.
    assert!(
        describes.len() < 250,
        "{} DescribeJobs calls for {jobs} jobs",
        describes.len()
    );
}

#[tokio::test]
async fn several_followers_of_one_job_share_its_polls() {
    let fake = FakeAws::start().await;
    let lines = numbered(50, "shared");
    let timeline = Timeline::new()
        .status(JobStatus::Runnable, 2)
        .running(6)
        .logs(&refs(&lines))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let tracker = Tracker::new(&fake.clients(), fast_config());
    let follow = || tracker.follow(FollowRequest::new(ids[0].clone()));
    let (mut a, mut b, gone) = (follow(), follow(), follow());
    // A follower that leaves takes nothing from the others.
    gone.abort_handle().abort();
    let (from_a, from_b) = tokio::join!(log_lines(&mut a), log_lines(&mut b));
    assert_eq!(from_a, lines);
    assert_eq!(from_b, lines);
    for handle in [a, b] {
        let outcome = handle.wait().await.expect("followed");
        assert!(outcome.succeeded());
    }
    // One poll serves every follower: the job is never named twice in a call, and it took no
    // more calls than its timeline's 9 describes and the few after its end.
    let describes = fake.requests("DescribeJobs");
    assert!(describes
        .iter()
        .all(|r| r["jobs"].as_array().unwrap().len() == 1));
    assert!(
        describes.len() <= 9 + 3,
        "{} DescribeJobs calls",
        describes.len()
    );
}

#[tokio::test]
async fn stopping_a_job_terminates_it_with_the_reason() {
    let fake = FakeAws::start().await;
    let ids = fake
        .submit_jobs(vec![Timeline::new().running(100_000).succeeded()])
        .await;
    let tracker = Tracker::new(&fake.clients(), fast_config());
    let handle = tracker.follow(FollowRequest::new(ids[0].clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    tracker
        .stop(&ids[0], Some(JobStatus::Running), "stopped by the test")
        .await
        .expect("stop");
    let outcome = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("ends after stop")
        .expect("followed");
    assert_eq!(outcome.status, JobStatus::Failed);
    let terminate = fake.requests("TerminateJob");
    assert_eq!(terminate.len(), 1);
    assert_eq!(terminate[0]["jobId"], ids[0].as_str());
    assert_eq!(terminate[0]["reason"], "stopped by the test");
    assert_eq!(
        fake.calls("CancelJob"),
        0,
        "a running job is terminated, not cancelled"
    );
}

#[tokio::test]
async fn an_unknown_job_is_an_error_after_the_grace_period() {
    let fake = FakeAws::start().await;
    let config = TrackerConfig {
        not_found_grace: Duration::from_millis(100),
        ..fast_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let result = tracker
        .follow(FollowRequest::new("no-such-job"))
        .wait()
        .await;
    assert!(
        matches!(result, Err(mfbatch::track::TrackError::NotFound { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_job_stuck_in_runnable_is_reported_then_stopped_on_timeout() {
    let fake = FakeAws::start().await;
    let stuck = Timeline::new()
        .status(JobStatus::Runnable, 1_000_000)
        .reason("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is higher than that can be met by the CE(s) attached to the job queue.")
        .succeeded();
    let ids = fake.submit_jobs(vec![stuck]).await;
    let config = TrackerConfig {
        runnable_warning: Duration::from_millis(100),
        runnable_timeout: Some(Duration::from_millis(400)),
        ..fast_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let mut handle = tracker.follow(FollowRequest::new(ids[0].clone()));
    let warnings: Vec<_> = all_events(&mut handle)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Warning(w) => Some(w),
            _ => None,
        })
        .collect();
    let result = handle.wait().await;
    assert!(
        matches!(
            result,
            Err(mfbatch::track::TrackError::RunnableTimeout { .. })
        ),
        "{result:?}"
    );
    let [mfbatch::event::Warning::StuckRunnable { reason, detail, .. }] = warnings.as_slice()
    else {
        panic!("one stuck warning expected: {warnings:?}");
    };
    assert!(reason
        .as_deref()
        .unwrap()
        .starts_with("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"));
    let detail = detail.as_deref().unwrap();
    assert!(
        detail.contains("test-queue") && detail.contains("max 256 vCPU"),
        "{detail}"
    );
    assert_eq!(
        fake.requests("CancelJob").len(),
        1,
        "a RUNNABLE job is cancelled"
    );
}

#[tokio::test]
async fn dropped_connections_lose_and_repeat_nothing() {
    let fake = FakeAws::start_with_seed(5).await;
    fake.set_log_page_size(400);
    fake.set_random_faults(0.2, 0.05, &["GetLogEvents", "DescribeJobs"]);
    let proxy = support::flaky_proxy::FlakyProxy::start(&fake.uri(), 0.2, 9).await;
    let expected = numbered(8_000, "y");
    let timeline = Timeline::new()
        .running(5)
        .logs(&refs(&expected))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let config = fake
        .sdk_config()
        .to_builder()
        .endpoint_url(proxy.uri())
        .build();
    let options = mfbatch::aws::ClientOptions {
        max_attempts: Some(2),
        ..Default::default()
    };
    let clients = mfbatch::aws::Clients::from_sdk_config(&config, &options).unwrap();
    let tracker = Tracker::new(&clients, fast_config());
    let mut handle = tracker.follow(FollowRequest::new(ids[0].clone()));
    let lines = log_lines(&mut handle).await;
    assert!(handle.wait().await.expect("followed").succeeded());
    assert!(
        proxy.dropped() >= 3,
        "the proxy dropped {} connections",
        proxy.dropped()
    );
    assert_eq!(lines.len(), expected.len());
    assert!(lines == expected, "lines differ after dropped connections");
}

#[tokio::test]
async fn the_drain_limit_never_cuts_off_a_backlog_being_read() {
    let fake = FakeAws::start().await;
    fake.set_log_page_size(100);
    let expected = numbered(5_000, "backlog");
    let timeline = Timeline::new()
        .running(1)
        .logs_when_done(&refs(&expected))
        .succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    let config = TrackerConfig {
        drain_max: Duration::from_millis(1),
        ..fast_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let mut handle = tracker.follow(FollowRequest::new(ids[0].clone()));
    let lines = log_lines(&mut handle).await;
    assert_eq!(lines.len(), expected.len(), "the backlog was cut off");
    assert!(lines == expected);
}

#[tokio::test]
async fn sustained_describe_failures_are_reported_then_end_the_follow() {
    let fake = FakeAws::start().await;
    let ids = fake.submit_jobs(vec![Timeline::default()]).await;
    fake.fail_always("DescribeJobs", support::Fault::ServerError);
    let tracker = Tracker::new(&clients_without_retries(&fake), fast_config());
    let mut handle = tracker.follow(FollowRequest::new(&ids[0]));
    let events = all_events(&mut handle).await;
    let warned = events.iter().any(|e| {
        matches!(e, Event::Warning(mfbatch::event::Warning::StatusUnavailable { job_id, .. }) if *job_id == ids[0])
    });
    assert!(warned, "a warning while still trying: {events:?}");
    let err = handle.wait().await.expect_err("following gives up");
    assert!(
        matches!(err, mfbatch::track::TrackError::StatusUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("DescribeJobs has failed"), "{err}");
}

#[tokio::test]
async fn an_id_the_user_typed_is_reported_unknown_within_its_short_grace() {
    let fake = FakeAws::start().await;
    let config = TrackerConfig {
        not_found_grace: Duration::from_secs(600),
        ..fast_config()
    };
    let tracker = Tracker::new(&fake.clients(), config);
    let handle = tracker.follow(FollowRequest {
        not_found_grace: Some(Duration::from_millis(100)),
        ..FollowRequest::new("no-such-job")
    });
    let result = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("reported long before the 600 s grace of just-submitted ids");
    assert!(matches!(
        result,
        Err(mfbatch::track::TrackError::NotFound { .. })
    ));
}

#[tokio::test]
async fn logs_that_cannot_be_read_are_reported_while_the_job_runs() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new().running(1_000_000).logs(&["x"]).succeeded();
    let ids = fake.submit_jobs(vec![timeline]).await;
    fake.fail_always("GetLogEvents", support::Fault::AccessDenied);
    let tracker = Tracker::new(&fake.clients(), fast_config());
    let mut handle = tracker.follow(FollowRequest::new(&ids[0]));
    let warning = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = handle.next_event().await {
            if let Event::Warning(mfbatch::event::Warning::LogsUnavailable { reason, .. }) = event {
                return reason;
            }
        }
        panic!("no warning before the events ended");
    })
    .await
    .expect("warned while the job still runs");
    assert!(warning.contains("AccessDenied"), "{warning}");
    assert_ne!(fake.job(&ids[0]).unwrap().status, JobStatus::Succeeded);
}

#[tokio::test]
async fn a_job_that_ended_long_ago_is_not_drained_again() {
    let fake = FakeAws::start().await;
    let timeline = Timeline::new()
        .running(1)
        .logs(&["old news"])
        .succeeded()
        .without_end_records();
    let ids = fake.submit_jobs(vec![timeline]).await;
    // Let it end, then move its history an hour back.
    let clients = fake.clients();
    for _ in 0..3 {
        clients
            .batch
            .describe_jobs()
            .jobs(&ids[0])
            .send()
            .await
            .unwrap();
    }
    assert_eq!(fake.job(&ids[0]).unwrap().status, JobStatus::Succeeded);
    fake.age_job(&ids[0], 3_600_000);
    let config = TrackerConfig {
        drain_quiet: Duration::from_secs(600),
        drain_max: Duration::from_secs(600),
        ..fast_config()
    };
    let tracker = Tracker::new(&clients, config);
    let mut handle = tracker.follow(FollowRequest::new(&ids[0]));
    let events = tokio::time::timeout(Duration::from_secs(20), all_events(&mut handle))
        .await
        .expect("no 600 s drain for a job that stopped an hour ago");
    let lines: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lines, ["old news"]);
}
