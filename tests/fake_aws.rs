//! The fake AWS itself, driven through the real SDK clients: if the SDK cannot parse an answer,
//! or the fake's semantics (timelines, log tokens, faults) drift from AWS's, it shows here first.

mod support;

use aws_sdk_batch::types::{ContainerProperties, JobDefinitionType};
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use mfbatch::aws::Clients;
use support::*;

async fn register(clients: &Clients, name: &str) -> String {
    clients
        .batch
        .register_job_definition()
        .job_definition_name(name)
        .r#type(JobDefinitionType::Container)
        .container_properties(ContainerProperties::builder().image(IMAGE).build())
        .send()
        .await
        .expect("register")
        .job_definition_arn()
        .expect("an ARN")
        .to_owned()
}

async fn submit(clients: &Clients, definition: &str) -> String {
    clients
        .batch
        .submit_job()
        .job_name("fake-test")
        .job_queue(QUEUE)
        .job_definition(definition)
        .send()
        .await
        .expect("submit")
        .job_id()
        .expect("an id")
        .to_owned()
}

/// One DescribeJobs call for one job: `(status, container.logStreamName)`, or `None` if absent.
async fn describe(clients: &Clients, id: &str) -> Option<aws_sdk_batch::types::JobDetail> {
    let out = clients
        .batch
        .describe_jobs()
        .jobs(id)
        .send()
        .await
        .expect("describe");
    out.jobs().first().cloned()
}

fn status(job: &aws_sdk_batch::types::JobDetail) -> &str {
    job.status().expect("a status").as_str()
}

#[tokio::test]
async fn default_queue_has_one_ec2_environment() {
    let fake = FakeAws::start().await;
    let queue = mfbatch::launch::queue::describe(&fake.clients().batch, QUEUE)
        .await
        .unwrap()
        .expect("the default queue");
    assert_eq!(queue.state, "ENABLED");
    assert_eq!(queue.platform(), mfbatch::launch::jobdef::Platform::Ec2);
    assert_eq!(queue.max_vcpus(), Some(256));
    assert!(
        mfbatch::launch::queue::describe(&fake.clients().batch, "nope")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_job_walks_the_default_timeline_one_step_per_describe() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    let arn = register(&clients, "def").await;
    assert_eq!(
        arn,
        "arn:aws:batch:us-east-1:123456789012:job-definition/def:1"
    );
    let id = submit(&clients, "def").await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let job = describe(&clients, &id).await.expect("visible");
        let stream = job
            .container()
            .and_then(|c| c.log_stream_name())
            .map(str::to_owned);
        seen.push((status(&job).to_owned(), stream.is_some()));
    }
    let want = [
        ("SUBMITTED", false),
        ("RUNNABLE", false),
        ("STARTING", false),
        ("RUNNING", true),
        ("SUCCEEDED", true),
        ("SUCCEEDED", true),
    ];
    assert_eq!(seen, want.map(|(s, l)| (s.to_owned(), l)));
    let job = describe(&clients, &id).await.unwrap();
    let stream = job.container().unwrap().log_stream_name().unwrap();
    let (prefix, task) = stream.rsplit_once('/').unwrap();
    assert_eq!(prefix, "def/default");
    assert!(
        task.len() == 32 && task.bytes().all(|b| b.is_ascii_hexdigit()),
        "{task}"
    );
    assert_eq!(job.container().unwrap().exit_code(), Some(0));
    assert_eq!(job.attempts().len(), 1);
    // Only DescribeJobs moves a job; it does not move while nobody looks.
    assert_eq!(fake.job(&id).unwrap().status, JobStatus::Succeeded);
}

#[tokio::test]
async fn scripted_timeline_hides_retries_and_fails() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    register(&clients, "def").await;
    fake.script_next_job(
        Timeline::new()
            .hidden_for(2)
            .status(JobStatus::Runnable, 2)
            .running(1)
            .logs(&["first try"])
            .attempt_failed(
                AttemptEnd::exit(137).status_reason("Host EC2 (instance i-123) terminated."),
            )
            .status(JobStatus::Runnable, 1)
            .running(1)
            .logs(&["second try"])
            .exit(3),
    );
    let id = submit(&clients, "def").await;
    assert!(
        describe(&clients, &id).await.is_none(),
        "hidden just after submit"
    );
    assert!(describe(&clients, &id).await.is_none());
    let mut statuses = Vec::new();
    let job = loop {
        let job = describe(&clients, &id).await.expect("visible now");
        statuses.push(status(&job).to_owned());
        if status(&job) == "FAILED" {
            break job;
        }
        assert!(statuses.len() < 20, "never ends: {statuses:?}");
    };
    assert_eq!(
        statuses,
        ["RUNNABLE", "RUNNABLE", "RUNNING", "RUNNABLE", "RUNNING", "FAILED"]
    );
    let attempts = job.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[0].status_reason(),
        Some("Host EC2 (instance i-123) terminated.")
    );
    assert_eq!(attempts[0].container().unwrap().exit_code(), Some(137));
    assert_eq!(attempts[1].container().unwrap().exit_code(), Some(3));
    let streams: Vec<&str> = attempts
        .iter()
        .map(|a| a.container().unwrap().log_stream_name().unwrap())
        .collect();
    assert_ne!(streams[0], streams[1]);
    assert_eq!(job.container().unwrap().exit_code(), Some(3));
    assert_eq!(
        job.status_reason(),
        Some("Essential container in task exited")
    );
    let lines = |s: &str| {
        fake.log_events(BATCH_LOG_GROUP, s)
            .into_iter()
            .map(|e| e.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(streams[0]), ["first try"]);
    assert_eq!(lines(streams[1]), ["second try"]);
}

#[tokio::test]
async fn out_of_memory_has_a_reason_and_no_exit_code() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    register(&clients, "def").await;
    let oom = "OutOfMemoryError: Container killed due to memory usage";
    fake.script_next_job(Timeline::new().running(1).failed(AttemptEnd::reason(oom)));
    let id = submit(&clients, "def").await;
    assert_eq!(status(&describe(&clients, &id).await.unwrap()), "RUNNING");
    let job = describe(&clients, &id).await.unwrap();
    assert_eq!(status(&job), "FAILED");
    let container = job.container().unwrap();
    assert_eq!(
        (container.exit_code(), container.reason()),
        (None, Some(oom))
    );
}

#[tokio::test]
async fn terminate_and_cancel() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    register(&clients, "def").await;
    fake.set_default_timeline(
        Timeline::new()
            .status(JobStatus::Runnable, 1)
            .running(100)
            .succeeded(),
    );
    let running = submit(&clients, "def").await;
    let runnable = submit(&clients, "def").await;
    describe(&clients, &running).await;
    assert_eq!(
        status(&describe(&clients, &running).await.unwrap()),
        "RUNNING"
    );

    // CancelJob does nothing to a RUNNING job (and still succeeds), as in AWS.
    clients
        .batch
        .cancel_job()
        .job_id(&running)
        .reason("no")
        .send()
        .await
        .unwrap();
    assert_eq!(fake.job(&running).unwrap().status, JobStatus::Running);
    clients
        .batch
        .terminate_job()
        .job_id(&running)
        .reason("stopped by test")
        .send()
        .await
        .unwrap();
    let job = describe(&clients, &running).await.unwrap();
    assert_eq!(
        (status(&job), job.status_reason()),
        ("FAILED", Some("stopped by test"))
    );
    assert_eq!(
        job.attempts()[0].container().unwrap().exit_code(),
        Some(143)
    );

    clients
        .batch
        .cancel_job()
        .job_id(&runnable)
        .reason("cancelled by test")
        .send()
        .await
        .unwrap();
    let job = describe(&clients, &runnable).await.unwrap();
    assert_eq!(
        (status(&job), job.status_reason()),
        ("FAILED", Some("cancelled by test"))
    );
    assert!(job.attempts().is_empty());
    assert_eq!(
        fake.mutating_calls(),
        [
            "RegisterJobDefinition",
            "SubmitJob",
            "SubmitJob",
            "CancelJob",
            "TerminateJob",
            "CancelJob"
        ]
    );
}

#[tokio::test]
async fn list_jobs_filters_by_status_and_name() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    register(&clients, "def").await;
    let id = submit(&clients, "def").await;
    let list = |status: &'static str| {
        let clients = clients.clone();
        async move {
            let out = clients
                .batch
                .list_jobs()
                .job_queue(QUEUE)
                .job_status(status.into())
                .send()
                .await
                .unwrap();
            out.job_summary_list()
                .iter()
                .map(|j| j.job_id().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("SUBMITTED").await, [id]);
    assert!(list("RUNNING").await.is_empty());
    let out = clients
        .batch
        .list_jobs()
        .job_queue(QUEUE)
        .filters(
            aws_sdk_batch::types::KeyValuesPair::builder()
                .name("JOB_NAME")
                .values("fake-*")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.job_summary_list().len(), 1);
}

async fn read_all(clients: &Clients, stream: &str) -> (Vec<String>, Vec<usize>) {
    let mut token: Option<String> = None;
    let mut lines = Vec::new();
    let mut pages = Vec::new();
    for _ in 0..100 {
        let out = clients
            .logs
            .get_log_events()
            .log_group_name(BATCH_LOG_GROUP)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("get log events");
        pages.push(out.events().len());
        lines.extend(out.events().iter().map(|e| e.message().unwrap().to_owned()));
        let next = out.next_forward_token().map(str::to_owned);
        if next == token {
            return (lines, pages);
        }
        token = next;
    }
    panic!("the token never repeated");
}

#[tokio::test]
async fn get_log_events_pages_and_repeats_the_token_at_the_end() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    let many: Vec<String> = (0..2500).map(|i| format!("line {i}")).collect();
    fake.add_log_lines(
        BATCH_LOG_GROUP,
        "s",
        &many.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (lines, pages) = read_all(&clients, "s").await;
    assert_eq!(lines, many);
    assert_eq!(pages, [1000, 1000, 500, 0]);

    fake.set_log_page_size(300);
    fake.set_empty_log_page_every(2);
    let (lines, pages) = read_all(&clients, "s").await;
    assert_eq!(lines, many, "empty pages must not lose or repeat lines");
    assert!(
        pages[1..pages.len() - 1].contains(&0),
        "some empty pages while data remained: {pages:?}"
    );

    // Without startFromHead and a token: the newest page, as CloudWatch does.
    let out = clients
        .logs
        .get_log_events()
        .log_group_name(BATCH_LOG_GROUP)
        .log_stream_name("s")
        .limit(2)
        .send()
        .await
        .unwrap();
    let newest: Vec<&str> = out.events().iter().map(|e| e.message().unwrap()).collect();
    assert_eq!(newest, ["line 2498", "line 2499"]);
}

#[tokio::test]
async fn log_lines_can_arrive_late() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    fake.add_log_lines(BATCH_LOG_GROUP, "s", &["early"]);
    fake.add_log_lines_after_reads(BATCH_LOG_GROUP, "s", 2, &["late"]);
    assert_eq!(
        read_all(&clients, "s").await.0,
        ["early"],
        "two reads: not yet"
    );
    assert_eq!(read_all(&clients, "s").await.0, ["early", "late"]);

    register(&clients, "def").await;
    fake.script_next_job(
        Timeline::new()
            .running(1)
            .logs(&["during"])
            .logs_when_done(&["after"])
            .exit(0),
    );
    let id = submit(&clients, "def").await;
    describe(&clients, &id).await;
    let stream = fake.job(&id).unwrap().log_streams[0].clone();
    assert_eq!(read_all(&clients, &stream).await.0, ["during"]);
    describe(&clients, &id).await;
    assert_eq!(fake.job(&id).unwrap().status, JobStatus::Succeeded);
    assert_eq!(read_all(&clients, &stream).await.0, ["during", "after"]);
}

#[tokio::test]
async fn missing_streams_are_resource_not_found() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    let err = clients
        .logs
        .get_log_events()
        .log_group_name(BATCH_LOG_GROUP)
        .log_stream_name("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
    assert!(err.into_service_error().is_resource_not_found_exception());
    assert_eq!(fake.calls("GetLogEvents"), 1, "not retried");

    register(&clients, "def").await;
    fake.script_next_job(
        Timeline::new()
            .running(1)
            .logs(&["x"])
            .stream_missing_for(1)
            .exit(0),
    );
    let id = submit(&clients, "def").await;
    describe(&clients, &id).await;
    let stream = fake.job(&id).unwrap().log_streams[0].clone();
    let first = clients
        .logs
        .get_log_events()
        .log_group_name(BATCH_LOG_GROUP)
        .log_stream_name(&stream)
        .send()
        .await;
    assert_eq!(first.unwrap_err().code(), Some("ResourceNotFoundException"));
    assert_eq!(read_all(&clients, &stream).await.0, ["x"]);
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_and_changes_nothing() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    fake.fail_next("RegisterJobDefinition", 2, Fault::Throttle);
    fake.fail_next("GetLogEvents", 3, Fault::Throttle);
    fake.fail_next("PutObject", 1, Fault::ServerError);
    register(&clients, "def").await;
    assert_eq!(fake.calls("RegisterJobDefinition"), 3);
    assert_eq!(
        fake.definitions().len(),
        1,
        "throttled calls registered nothing"
    );
    fake.add_log_lines(BATCH_LOG_GROUP, "s", &["a"]);
    assert_eq!(read_all(&clients, "s").await.0, ["a"]);
    clients
        .s3
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .body(b"v".to_vec().into())
        .send()
        .await
        .unwrap();
    assert_eq!(fake.calls("PutObject"), 2);
    assert_eq!(fake.object(BUCKET, "k").as_deref(), Some(&b"v"[..]));

    // Random faults with a fixed seed: many calls, state exactly as without faults.
    fake.set_random_faults(0.2, 0.1, &[]);
    for _ in 0..10 {
        register(&clients, "many").await;
    }
    assert_eq!(
        fake.definitions().iter().filter(|d| d.0 == "many").count(),
        10
    );
    let faulted = fake.call_log().iter().filter(|c| c.faulted).count();
    assert!(faulted > 0, "the seed produced no fault at all");
}

#[tokio::test]
async fn s3_objects_conditional_put_and_chunked_bodies() {
    let fake = FakeAws::start().await;
    let clients = fake.clients();
    let store = mfbatch::launch::store::S3Store::new(
        clients.s3.clone(),
        mfbatch::s3url::S3Url::parse(SYSROOT).unwrap(),
    );
    use mfbatch::launch::store::PackageStore;
    assert!(!store.contains("abc").await.unwrap());
    fake.put_object(BUCKET, "metaflow/mfbatch/packages/abc.tgz", b"x");
    assert!(store.contains("abc").await.unwrap());

    let put = |body: &'static [u8]| {
        clients
            .s3
            .put_object()
            .bucket(BUCKET)
            .key("dir/a b+c.txt")
            .if_none_match("*")
            .body(body.to_vec().into())
            .send()
    };
    put(b"first").await.unwrap();
    let err = put(b"second").await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 412);
    assert_eq!(
        fake.object(BUCKET, "dir/a b+c.txt").as_deref(),
        Some(&b"first"[..])
    );

    // A client that sends checksums streams the body aws-chunked with a trailer.
    let config = aws_sdk_s3::config::Builder::from(&fake.sdk_config())
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenSupported)
        .build();
    let chunky = aws_sdk_s3::Client::from_conf(config);
    let file = tempfile::NamedTempFile::new().unwrap();
    let payload = incompressible(200_000, 1);
    std::fs::write(file.path(), &payload).unwrap();
    let body = aws_sdk_s3::primitives::ByteStream::from_path(file.path())
        .await
        .unwrap();
    chunky
        .put_object()
        .bucket(BUCKET)
        .key("chunked")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(fake.object(BUCKET, "chunked"), Some(payload.clone()));
    let sent = fake.requests("PutObject").last().unwrap()["bytes"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        sent > payload.len(),
        "the body went chunked ({sent} bytes on the wire)"
    );
    let got = clients
        .s3
        .get_object()
        .bucket(BUCKET)
        .key("chunked")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        payload
    );

    let err = clients
        .s3
        .get_object()
        .bucket("no-such-bucket")
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"));
}
