//! The launch path (`launch::prepare` → `plan` → `execute`) against the fake AWS, asserted at the
//! wire: which calls were made, with which bodies, and what AWS holds afterwards.

#[path = "../support/mod.rs"]
mod support;

mod definition;
mod queue;
mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mfbatch::error::{AwsErrorKind, ConfigError, PackageError};
use mfbatch::event::{Event, EventSink};
use mfbatch::launch::store::StoreError;
use mfbatch::launch::{self, LaunchError, Submitted};
use mfbatch::settings::resolve;
use mfbatch::spec::JobSpec;
use mfbatch::spec::{build_spec, RunOptions};
use serde_json::Value;
use support::*;

const DEF_ARN_PREFIX: &str = "arn:aws:batch:us-east-1:123456789012:job-definition/";

/// A project directory with a step and a sibling module.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "step.py",
        "from helper import greet\nprint(greet())\n",
    );
    write_file(dir.path(), "helper.py", "def greet():\n    return 'hi'\n");
    dir
}

fn spec(root: &Path) -> JobSpec {
    test_spec(root, &[], RunOptions::default())
}

/// Runs prepare → plan → execute, collecting the events.
async fn launch(fake: &FakeAws, spec: JobSpec) -> (Result<Submitted, LaunchError>, Vec<Event>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink: EventSink = {
        let events = events.clone();
        Arc::new(move |e| events.lock().unwrap().push(e))
    };
    let clients = fake.clients();
    let result = async {
        let prepared = launch::prepare(spec, &sink).await?;
        let plan = launch::plan(&clients, &prepared).await?;
        launch::execute(&clients, &prepared, plan, &sink).await
    }
    .await;
    let events = events.lock().unwrap().clone();
    (result, events)
}

/// `containerOverrides.environment` of a SubmitJob body, as a map.
fn environment(submit: &Value) -> BTreeMap<String, String> {
    name_values(&submit["containerOverrides"]["environment"])
        .into_iter()
        .collect()
}

fn resources(submit: &Value) -> Vec<(String, String)> {
    name_values(&submit["containerOverrides"]["resourceRequirements"])
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// The S3 key of an `s3://test-bucket/...` URL.
fn key_of(url: &str) -> &str {
    url.strip_prefix(&format!("s3://{BUCKET}/"))
        .expect("in the test bucket")
}

#[tokio::test]
async fn cold_run_uploads_registers_and_submits() {
    let fake = FakeAws::start().await;
    let dir = project();
    let spec = test_spec(
        dir.path(),
        &[],
        RunOptions {
            cpu: Some("4".into()),
            memory: Some("16000".into()),
            env: vec!["GREETING=hello world".into(), "EMPTY=".into()],
            tags: vec!["team=ml".into()],
            args: vec!["--alpha".into(), "1".into()],
            ..Default::default()
        },
    );
    let (result, events) = launch(&fake, spec).await;
    let submitted = result.expect("the launch succeeds");

    // Read-only lookups first, then exactly one upload, one registration, one submission.
    assert_eq!(fake.calls("DescribeJobQueues"), 1);
    assert_eq!(fake.calls("HeadObject"), 1);
    let mut mutating = fake.mutating_calls();
    assert_eq!(
        mutating.pop().as_deref(),
        Some("SubmitJob"),
        "submitted last"
    );
    mutating.sort();
    assert_eq!(mutating, ["PutObject", "RegisterJobDefinition"]);

    // The job as AWS holds it.
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.id, submitted.job_id);
    assert_eq!(
        (job.name.as_str(), job.queue.as_str()),
        ("tester-step", QUEUE)
    );
    assert_eq!(job.definition, submitted.job_definition.arn);
    let submit = &fake.requests("SubmitJob")[0];
    assert_eq!(
        submit["jobDefinition"],
        Value::String(submitted.job_definition.arn.clone())
    );
    assert!(submitted
        .job_definition
        .arn
        .starts_with(&format!("{DEF_ARN_PREFIX}mfbatch-")));
    assert!(submitted.job_definition.arn.ends_with(":1"));
    assert!(submitted.job_definition.newly_registered);

    // Overrides: VCPU as %g, MEMORY in MiB, no GPU asked, no GPU sent.
    assert_eq!(
        resources(submit),
        pairs(&[("VCPU", "4"), ("MEMORY", "16000")])
    );

    // The environment tells the bootstrap where the package is; the user's --env is there too.
    let env = environment(submit);
    let url = &env["MFBATCH_PACKAGE_URL"];
    let sha = &env["MFBATCH_PACKAGE_SHA256"];
    assert_eq!(
        *url,
        format!("s3://{BUCKET}/metaflow/mfbatch/packages/{sha}.tgz")
    );
    assert_eq!(*url, submitted.package_url);
    assert_eq!(env["MFBATCH_SCRIPT"], "step.py");
    assert_eq!(env["MFBATCH_ARGS"], r#"["--alpha","1"]"#);
    assert_eq!(env["AWS_DEFAULT_REGION"], REGION);
    assert_eq!(env["METAFLOW_DATASTORE_SYSROOT_S3"], SYSROOT);
    assert_eq!(env["METAFLOW_DATATOOLS_S3ROOT"], format!("{SYSROOT}/data"));
    assert_eq!(env["GREETING"], "hello world");
    assert_eq!(env["EMPTY"], "");

    // The object's bytes are what the URL's hash says.
    let object = fake
        .object(BUCKET, key_of(url))
        .expect("the package was uploaded");
    assert_eq!(sha256_hex(&object), *sha);
    assert_eq!(fake.object_keys(BUCKET), [key_of(url)]);

    // The end records' nonce, and the file count the bootstrap checks the archive against.
    assert_eq!(env["MFBATCH_END_NONCE"].len(), 32);
    assert_eq!(env["MFBATCH_PACKAGE_FILES"], "2");

    // Tags: mfbatch's own and the user's, propagated to the ECS task; the request id is random.
    let mut tags: BTreeMap<String, String> =
        serde_json::from_value(submit["tags"].clone()).unwrap();
    let request_id = tags
        .remove(mfbatch::launch::submit::REQUEST_ID_TAG)
        .expect("a request id");
    assert_eq!(request_id.len(), 32);
    assert_ne!(request_id, env["MFBATCH_END_NONCE"]);
    let want: BTreeMap<String, String> = [
        ("mfbatch.script", "step.py"),
        ("mfbatch.user", "tester"),
        ("mfbatch.version", env!("CARGO_PKG_VERSION")),
        ("team", "ml"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(tags, want);
    assert_eq!(submit["propagateTags"], Value::Bool(true));

    // The definition: the bootstrap command, the role and image, EC2 only.
    let definitions = fake.definitions();
    assert_eq!(definitions.len(), 1);
    let (name, revision, body) = &definitions[0];
    assert_eq!(
        (name.as_str(), *revision),
        (submitted.job_definition.name.as_str(), 1)
    );
    let props = &body["containerProperties"];
    assert_eq!(props["image"], IMAGE);
    assert_eq!(props["jobRoleArn"], ROLE);
    assert_eq!(props["command"][0], "sh");
    assert_eq!(props["environment"][0]["name"], "MFBATCH_BOOTSTRAP");
    assert_eq!(body["platformCapabilities"], serde_json::json!(["EC2"]));
    assert!(props.get("networkConfiguration").is_none());
    assert!(props.get("executionRoleArn").is_none());

    // The events tell the same story.
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::Packaged { .. } => "packaged",
            Event::UploadStarted { .. } => "upload_started",
            Event::UploadProgress { .. } => "upload_progress",
            Event::Uploaded { .. } => "uploaded",
            Event::JobDefinition {
                registered: true, ..
            } => "registered",
            Event::JobDefinition {
                registered: false, ..
            } => "reused",
            Event::Submitted { .. } => "submitted",
            _ => "other",
        })
        .filter(|k| *k != "upload_progress")
        .collect();
    assert_eq!(
        kinds,
        [
            "packaged",
            "upload_started",
            "uploaded",
            "registered",
            "submitted"
        ]
    );
}

#[tokio::test]
async fn warm_run_reuses_the_package_and_the_definition() {
    let fake = FakeAws::start().await;
    let dir = project();
    let (first, _) = launch(&fake, spec(dir.path())).await;
    let first = first.unwrap();
    let (second, events) = launch(&fake, spec(dir.path())).await;
    let second = second.unwrap();

    assert_eq!(
        fake.calls("PutObject"),
        1,
        "the same package is not uploaded twice"
    );
    assert_eq!(
        fake.calls("RegisterJobDefinition"),
        1,
        "the same definition is not registered twice"
    );
    assert_eq!(fake.calls("SubmitJob"), 2);
    assert_eq!(second.package_url, first.package_url);
    assert_eq!(second.job_definition.arn, first.job_definition.arn);
    assert!(!second.job_definition.newly_registered);
    let submits = fake.requests("SubmitJob");
    assert_eq!(submits[1]["jobDefinition"], submits[0]["jobDefinition"]);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::UploadSkipped { .. })));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::JobDefinition {
            registered: false,
            ..
        }
    )));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::UploadStarted { .. })));

    // Changed code: a new package, still the same definition (code travels in the overrides).
    write_file(
        dir.path(),
        "helper.py",
        "def greet():\n    return 'changed'\n",
    );
    let (third, _) = launch(&fake, spec(dir.path())).await;
    let third = third.unwrap();
    assert_ne!(third.package_url, first.package_url);
    assert_eq!(fake.calls("PutObject"), 2);
    assert_eq!(fake.calls("RegisterJobDefinition"), 1);
    assert_eq!(third.job_definition.arn, first.job_definition.arn);
    assert_eq!(fake.object_keys(BUCKET).len(), 2);
}

#[tokio::test]
async fn resource_overrides_table() {
    let fake = FakeAws::start().await;
    let dir = project();
    // (cpu, memory, gpu) as typed → the resourceRequirements SubmitJob sends.
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 5] = [
        ("1", "4096", None, &[("VCPU", "1"), ("MEMORY", "4096")]),
        (
            "4.0",
            "16000",
            Some("0"),
            &[("VCPU", "4"), ("MEMORY", "16000")],
        ),
        ("3", "512", None, &[("VCPU", "3"), ("MEMORY", "512")]),
        (
            "2.00",
            "1024",
            Some("1"),
            &[("VCPU", "2"), ("MEMORY", "1024"), ("GPU", "1")],
        ),
        (
            " 8 ",
            "30000",
            Some("4"),
            &[("VCPU", "8"), ("MEMORY", "30000"), ("GPU", "4")],
        ),
    ];
    for (i, (cpu, memory, gpu, want)) in cases.iter().enumerate() {
        let options = RunOptions {
            cpu: Some((*cpu).into()),
            memory: Some((*memory).into()),
            gpu: gpu.map(Into::into),
            ..Default::default()
        };
        let (result, _) = launch(&fake, test_spec(dir.path(), &[], options)).await;
        result.unwrap();
        let submit = &fake.requests("SubmitJob")[i];
        assert_eq!(
            resources(submit),
            pairs(want),
            "--cpu {cpu:?} --memory {memory:?} --gpu {gpu:?}"
        );
    }
    // EC2 queues take whole vCPUs: a fraction is a usage error before anything changes.
    let before = fake.mutating_calls().len();
    let options = RunOptions {
        cpu: Some("0.5".into()),
        ..Default::default()
    };
    let (result, _) = launch(&fake, test_spec(dir.path(), &[], options)).await;
    assert!(
        matches!(
            result,
            Err(LaunchError::Config(ConfigError::InvalidFlag {
                flag: "--cpu",
                ..
            }))
        ),
        "{result:?}"
    );
    assert_eq!(fake.mutating_calls().len(), before);
}

#[tokio::test]
async fn plan_alone_changes_nothing() {
    let fake = FakeAws::start().await;
    let dir = project();
    let clients = fake.clients();
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    assert!(!plan.package_present);
    assert!(plan.existing_definition.is_none());
    assert_eq!(plan.package_sha256, prepared.package.sha256);
    assert!(
        fake.mutating_calls().is_empty(),
        "{:?}",
        fake.mutating_calls()
    );
    let mut ops: Vec<String> = fake.call_log().into_iter().map(|c| c.op).collect();
    ops.sort();
    assert_eq!(
        ops,
        [
            "DescribeComputeEnvironments",
            "DescribeJobDefinitions",
            "DescribeJobQueues",
            "HeadObject"
        ]
    );
}

#[tokio::test]
async fn throttled_submit_is_retried_and_submits_once() {
    let fake = FakeAws::start().await;
    fake.fail_next("SubmitJob", 2, Fault::Throttle);
    let dir = project();
    let (result, _) = launch(&fake, spec(dir.path())).await;
    let submitted = result.expect("the SDK retries throttling");
    assert_eq!(fake.calls("SubmitJob"), 3);
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1, "throttled attempts created no job");
    assert_eq!(jobs[0].id, submitted.job_id);
}

#[tokio::test]
async fn access_denied_on_submit_names_the_iam_action() {
    let fake = FakeAws::start().await;
    fake.fail_always("SubmitJob", Fault::AccessDenied);
    let dir = project();
    let (result, _) = launch(&fake, spec(dir.path())).await;
    let err = result.unwrap_err();
    let LaunchError::Aws(aws) = &err else {
        panic!("unexpected error: {err:?}");
    };
    assert_eq!(aws.call, "SubmitJob");
    assert_eq!(aws.kind, AwsErrorKind::AccessDenied);
    assert_eq!(aws.code.as_deref(), Some("AccessDeniedException"));
    let hint = err.hint().expect("a hint");
    assert!(hint.contains("batch:SubmitJob"), "{hint}");
    assert!(!err.is_usage());
    assert_eq!(fake.calls("SubmitJob"), 1, "access denied is not retried");
    assert!(fake.jobs().is_empty());
}

#[tokio::test]
async fn random_throttling_and_server_errors_leave_exactly_one_of_everything() {
    let fake = FakeAws::start_with_seed(11).await;
    fake.set_random_faults(0.25, 0.1, &[]);
    let dir = project();
    let (result, _) = launch(&fake, spec(dir.path())).await;
    let submitted = result.expect("five attempts get through");
    assert!(
        fake.call_log().iter().any(|c| c.faulted),
        "the seed injected no fault"
    );
    assert_eq!(fake.jobs().len(), 1);
    assert_eq!(fake.definitions().len(), 1);
    let object = fake.object(BUCKET, key_of(&submitted.package_url)).unwrap();
    assert_eq!(fake.object_keys(BUCKET).len(), 1);
    assert!(submitted.package_url.contains(&sha256_hex(&object)));
}

#[tokio::test]
async fn a_script_the_package_leaves_out_is_a_usage_error_found_before_aws() {
    let fake = FakeAws::start().await;
    let dir = project();
    for script in [".hidden_step.py", "__pycache__/step.py", "step.sh"] {
        let path = write_file(dir.path(), script, "print(1)\n");
        // With the project as the root (without --root the script's own directory is the root).
        let options = RunOptions {
            script: path,
            root: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let (result, _) = launch(&fake, test_spec(dir.path(), &[], options)).await;
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Package(PackageError::ScriptExcluded { .. })
            ),
            "{script}: {err:?}"
        );
        assert!(err.is_usage(), "{script}: the user's input, exit code 2");
    }
    assert_eq!(fake.total_calls(), 0);
}

/// Every AWS call of a run, by API, sorted.
fn ops(fake: &FakeAws) -> Vec<String> {
    let mut ops: Vec<String> = fake.call_log().into_iter().map(|c| c.op).collect();
    ops.sort();
    ops
}

#[tokio::test]
async fn a_cold_run_makes_seven_calls_and_a_warm_one_five() {
    let fake = FakeAws::start().await;
    let dir = project();
    let (result, _) = launch(&fake, spec(dir.path())).await;
    result.unwrap();
    assert_eq!(
        ops(&fake),
        [
            "DescribeComputeEnvironments",
            "DescribeJobDefinitions",
            "DescribeJobQueues",
            "HeadObject",
            "PutObject",
            "RegisterJobDefinition",
            "SubmitJob"
        ]
    );
    let before = fake.call_log().len();
    let (result, _) = launch(&fake, spec(dir.path())).await;
    result.unwrap();
    let mut warm: Vec<String> = fake.call_log()[before..]
        .iter()
        .map(|c| c.op.clone())
        .collect();
    warm.sort();
    assert_eq!(
        warm,
        [
            "DescribeComputeEnvironments",
            "DescribeJobDefinitions",
            "DescribeJobQueues",
            "HeadObject",
            "SubmitJob"
        ]
    );
}

#[tokio::test]
async fn retries_retry_a_lost_instance_unless_told_to_retry_any_failure() {
    let fake = FakeAws::start().await;
    let dir = project();
    let with = |retries: Option<&str>, any: bool| RunOptions {
        retries: retries.map(Into::into),
        retry_any_failure: any,
        ..Default::default()
    };
    for options in [
        with(None, false),
        with(Some("2"), false),
        with(Some("1"), true),
    ] {
        let (result, _) = launch(&fake, test_spec(dir.path(), &[], options)).await;
        result.unwrap();
    }
    let submits = fake.requests("SubmitJob");
    assert!(submits[0].get("retryStrategy").is_none(), "{}", submits[0]);
    assert_eq!(
        submits[1]["retryStrategy"],
        serde_json::json!({"attempts": 3, "evaluateOnExit": [
            {"onStatusReason": "Host EC2*", "action": "RETRY"},
            {"onStatusReason": "*", "action": "EXIT"}
        ]})
    );
    assert_eq!(submits[2]["retryStrategy"]["attempts"], 2);
    assert!(
        submits[2]["retryStrategy"].get("evaluateOnExit").is_none(),
        "any failure: no rules"
    );
}

#[tokio::test]
async fn the_dry_run_bodies_are_exactly_what_is_sent() {
    let fake = FakeAws::start().await;
    let dir = project();
    let options = RunOptions {
        cpu: Some("2".into()),
        gpu: Some("1".into()),
        env: vec!["A=1".into()],
        tags: vec!["team=ml".into()],
        args: vec!["--x".into()],
        retries: Some("3".into()),
        timeout_seconds: Some("600".into()),
        ..Default::default()
    };
    let clients = fake.clients();
    let prepared = launch::prepare(
        test_spec(dir.path(), &[], options),
        &mfbatch::event::discard(),
    )
    .await
    .unwrap();
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    let mut planned_submit = serde_json::to_value(&plan.submit_job).unwrap();
    let planned_definition = serde_json::to_value(&plan.job_definition).unwrap();
    let submitted = launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    // The plan names the definition; the real request carries the ARN it got once registered.
    planned_submit["jobDefinition"] = submitted.job_definition.arn.clone().into();
    assert_eq!(fake.requests("SubmitJob")[0], planned_submit);
    assert_eq!(
        fake.requests("RegisterJobDefinition")[0],
        planned_definition
    );
}
