//! Wire-level contract of the metadata client against the real service's shapes (which
//! metaflow-local-service does not have): integer run and task ids, a 409 on an existing flow
//! (then read), `x-api-key` on every call, `/ping`'s version header, the double-encoded
//! heartbeat reply; and the spool when the service is down for the whole run, then up.

use std::collections::BTreeMap;
use std::time::Duration;

use mfbatch::event::{DecidedBy, Event, JobStatus, Outcome};
use mfbatch::metadata::model::TaskRecord;
use mfbatch::metadata::recorder::{JobFacts, Recorder};
use mfbatch::metadata::service::ServiceClient;
use mfbatch::metadata::spool::{self, Backoff};
use mfbatch::metadata::{Backend, ServiceConfig};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "k-secret";

fn backend(url: &str) -> Backend {
    Backend::Service(ServiceConfig {
        url: url.to_owned(),
        internal_url: url.to_owned(),
        headers: BTreeMap::from([("x-api-key".to_owned(), KEY.to_owned())]),
    })
}

fn record() -> TaskRecord {
    TaskRecord {
        flow: "TrainFlow".into(),
        step: "train".into(),
        user: "jane".into(),
        run_id: None,
        task_id: None,
        ts_epoch: 1_700_000_000_000,
        tags: vec![],
        system_tags: vec!["runtime:mfbatch".into()],
    }
}

fn facts() -> JobFacts {
    JobFacts {
        script: "train.py".into(),
        queue: "q".into(),
        region: "us-east-1".into(),
        execution_env: "AWS_ECS_EC2".into(),
        compute_environment: Some("ce".into()),
        package_sha256: "ab".repeat(32),
        package_url: "s3://b/p.tgz".into(),
    }
}

/// The real service: every route needs the key; flows exist (409); ids are integers.
async fn real_service() -> MockServer {
    let server = MockServer::start().await;
    let key = || header("x-api-key", KEY);
    let routes: Vec<(&str, &str, ResponseTemplate)> = vec![
        (
            "GET",
            "/ping",
            ResponseTemplate::new(200)
                .set_body_string("pong")
                .insert_header("METADATA_SERVICE_VERSION", "2.5.1"),
        ),
        (
            "POST",
            "/flows/TrainFlow",
            ResponseTemplate::new(409).set_body_json(json!({})),
        ),
        (
            "GET",
            "/flows/TrainFlow",
            ResponseTemplate::new(200).set_body_json(json!({"flow_id": "TrainFlow"})),
        ),
        (
            "POST",
            "/flows/TrainFlow/run",
            ResponseTemplate::new(200)
                .set_body_json(json!({"flow_id": "TrainFlow", "run_number": 12, "run_id": null})),
        ),
        (
            "POST",
            "/flows/TrainFlow/runs/12/steps/train/step",
            ResponseTemplate::new(200)
                .set_body_json(json!({"step_name": "train", "run_number": 12})),
        ),
        (
            "POST",
            "/flows/TrainFlow/runs/12/steps/train/task",
            ResponseTemplate::new(200).set_body_json(json!({"task_id": 34, "run_number": 12})),
        ),
        (
            "POST",
            "/flows/TrainFlow/runs/12/steps/train/tasks/34/metadata",
            ResponseTemplate::new(200).set_body_json(json!({"metadata_created": 1})),
        ),
        (
            "POST",
            "/flows/TrainFlow/runs/12/heartbeat",
            ResponseTemplate::new(200).set_body_json(json!("{\"wait_time_in_seconds\": 10}")),
        ),
    ];
    for (m, p, reply) in routes {
        Mock::given(method(m))
            .and(path(p))
            .and(key())
            .respond_with(reply)
            .mount(&server)
            .await;
    }
    server
}

fn events(job_id: &str) -> Vec<Event> {
    vec![
        Event::Submitted {
            job_id: job_id.into(),
            job_name: "n".into(),
            queue: "q".into(),
        },
        Event::AttemptStarted {
            job_id: job_id.into(),
            attempt: 1,
            log_group: "/aws/batch/job".into(),
            log_stream: "s/1".into(),
        },
        Event::AttemptStarted {
            job_id: job_id.into(),
            attempt: 2,
            log_group: "/aws/batch/job".into(),
            log_stream: "s/2".into(),
        },
        Event::Exited(Outcome {
            job_id: job_id.into(),
            status: JobStatus::Succeeded,
            exit_code: Some(0),
            failure: None,
            summary: None,
            reason: None,
            attempts: 2,
            decided_by: DecidedBy::BatchStatus,
            step_end: None,
        }),
    ]
}

/// Every metadatum sent, as (field, value, attempt tag).
async fn metadata_sent(server: &MockServer) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for r in server.received_requests().await.unwrap_or_default() {
        if r.url.path().ends_with("/metadata") {
            let list: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
            for d in list {
                out.push((
                    d["field_name"].as_str().unwrap().to_owned(),
                    d["value"].as_str().unwrap().to_owned(),
                    d["tags"][0].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn records_a_job_the_way_the_real_service_expects() {
    let server = real_service().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(
        &backend(&server.uri()),
        spool_dir.path(),
        record(),
        facts(),
        Backoff::default(),
    )
    .unwrap();
    for event in events("job-1") {
        recorder.observe(&event);
    }
    let summary = recorder.finish(Duration::from_secs(10)).await;
    assert_eq!(summary.pending, 0, "{summary:?}");
    assert_eq!(summary.pathspec, "TrainFlow/12/train/34");
    assert_eq!(
        std::fs::read_dir(spool_dir.path()).unwrap().count(),
        0,
        "spool emptied"
    );

    let requests = server.received_requests().await.unwrap();
    assert!(
        requests
            .iter()
            .all(|r| r.headers.get("x-api-key").is_some_and(|v| v == KEY)),
        "x-api-key on every call"
    );
    let calls: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect();
    assert_eq!(
        &calls[..5],
        [
            "POST /flows/TrainFlow",
            "GET /flows/TrainFlow",
            "POST /flows/TrainFlow/run",
            "POST /flows/TrainFlow/runs/12/steps/train/step",
            "POST /flows/TrainFlow/runs/12/steps/train/task",
        ],
        "{calls:#?}"
    );
    // The run body carries no run_number: the service assigns it.
    let run: Value = serde_json::from_slice(&requests[2].body).unwrap();
    assert!(
        run.get("run_number").is_none() && run["user_name"] == "jane",
        "{run}"
    );

    let sent = metadata_sent(&server).await;
    let has = |f: &str, v: &str, a: u32| {
        sent.iter()
            .any(|(ff, vv, t)| ff == f && vv == v && *t == format!("attempt_id:{a}"))
    };
    assert!(has("aws-batch-job-id", "job-1", 0), "{sent:#?}");
    assert!(has("aws-batch-awslogs-stream", "s/1", 0) && has("aws-batch-awslogs-stream", "s/2", 1));
    assert!(
        has("attempt_ok", "False", 0) && has("attempt-done", "0", 0),
        "first attempt failed: {sent:#?}"
    );
    assert!(has("attempt_ok", "True", 1) && has("attempt-done", "1", 1));
    assert!(has(
        "code-package",
        &sent.iter().find(|s| s.0 == "code-package").unwrap().1,
        0
    ));
    // Nothing twice.
    let mut unique = sent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), sent.len());
}

#[tokio::test]
async fn ping_version_and_double_encoded_heartbeat() {
    let server = real_service().await;
    let headers = BTreeMap::from([("x-api-key".to_owned(), KEY.to_owned())]);
    let client = ServiceClient::new(&server.uri(), headers).unwrap();
    assert_eq!(client.ping().await.unwrap().as_deref(), Some("2.5.1"));
    let wait = client
        .heartbeat("/flows/TrainFlow/runs/12/heartbeat")
        .await
        .unwrap();
    assert_eq!(wait, Duration::from_secs(10));
    // Without the key the real service (API Gateway) refuses: the error says so, no secret in it.
    let bare = ServiceClient::new(&server.uri(), BTreeMap::new()).unwrap();
    let err = bare.ping().await.unwrap_err();
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn service_down_for_the_run_then_up_sends_the_spool_once() {
    // A port with nothing listening: connection refused on every call.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}");
    let spool_dir = tempfile::tempdir().unwrap();
    let fast = Backoff {
        first: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let recorder =
        Recorder::start(&backend(&url), spool_dir.path(), record(), facts(), fast).unwrap();
    for event in events("job-2") {
        recorder.observe(&event);
    }
    let summary = recorder.finish(Duration::from_millis(300)).await;
    assert_eq!(
        summary.pending,
        4 + 4 + 5 + 4 + (2 + 4 + 5) + 2,
        "objects and every metadatum pending: {summary:?}"
    );
    assert!(
        summary
            .last_error
            .as_deref()
            .is_some_and(|e| !e.contains(KEY)),
        "{summary:?}"
    );
    drop(recorder); // the process that wrote the spool is gone: its lock with it

    let listener = std::net::TcpListener::bind(addr).unwrap();
    let server = MockServer::builder().listener(listener).start().await;
    mount_real_routes(&server).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = spool::sync_dir(spool_dir.path(), Some(&backend(&url)), deadline, fast).await;
    assert_eq!((report.sent, report.pending), (1, 0), "{report:?}");
    assert_eq!(std::fs::read_dir(spool_dir.path()).unwrap().count(), 0);
    let sent = metadata_sent(&server).await;
    let mut unique = sent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), sent.len(), "nothing recorded twice");
    assert!(sent
        .iter()
        .any(|(f, v, _)| f == "aws-batch-job-id" && v == "job-2"));
    // A second sync has nothing left to send.
    let again = spool::sync_dir(spool_dir.path(), Some(&backend(&url)), deadline, fast).await;
    assert_eq!((again.sent, again.pending), (0, 0));
}

async fn mount_real_routes(server: &MockServer) {
    let routes: Vec<(&str, &str, Value)> = vec![
        ("GET", "/flows/TrainFlow", json!({"flow_id": "TrainFlow"})),
        ("POST", "/flows/TrainFlow/run", json!({"run_number": 12})),
        (
            "POST",
            "/flows/TrainFlow/runs/12/steps/train/step",
            json!({"step_name": "train"}),
        ),
        (
            "POST",
            "/flows/TrainFlow/runs/12/steps/train/task",
            json!({"task_id": 34}),
        ),
        (
            "POST",
            "/flows/TrainFlow/runs/12/steps/train/tasks/34/metadata",
            json!({"metadata_created": 1}),
        ),
    ];
    Mock::given(method("POST"))
        .and(path("/flows/TrainFlow"))
        .respond_with(ResponseTemplate::new(409))
        .mount(server)
        .await;
    for (m, p, body) in routes {
        Mock::given(method(m))
            .and(path(p))
            .and(header("x-api-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(server)
            .await;
    }
}
