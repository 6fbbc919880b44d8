//! The launch path (`launch::prepare` → `plan` → `execute`) against the fake AWS, asserted at the
//! wire: which calls were made, with which bodies, and what AWS holds afterwards.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mfbatch::error::{AwsErrorKind, ConfigError, PackageError};
use mfbatch::event::{Event, EventSink};
use mfbatch::launch::store::StoreError;
use mfbatch::launch::{self, LaunchError, Submitted};
use mfbatch::settings::{resolve, Sources};
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

/// The spec for `root/step.py` with the standard settings, `env` overriding them (`None`
/// removes a setting).
fn spec_with(root: &Path, env: &[(&str, Option<&str>)], options: RunOptions) -> JobSpec {
    let mut vars: BTreeMap<String, String> = [
        ("METAFLOW_DATASTORE_SYSROOT_S3", SYSROOT),
        ("METAFLOW_BATCH_JOB_QUEUE", QUEUE),
        ("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", ROLE),
        ("METAFLOW_BATCH_CONTAINER_IMAGE", IMAGE),
        ("METAFLOW_USER", "tester"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in env {
        match v {
            Some(v) => vars.insert((*k).to_owned(), (*v).to_owned()),
            None => vars.remove(*k),
        };
    }
    let sources = Sources {
        flags: BTreeMap::new(),
        env: vars,
        cwd: root.to_owned(),
    };
    let settings = resolve(&sources).expect("settings resolve");
    build_spec(
        &settings,
        &RunOptions {
            script: if options.script.as_os_str().is_empty() {
                root.join("step.py")
            } else {
                options.script.clone()
            },
            ..options
        },
    )
    .expect("a valid spec")
}

fn spec(root: &Path) -> JobSpec {
    spec_with(root, &[], RunOptions::default())
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
    let spec = spec_with(
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
        let (result, _) = launch(&fake, spec_with(dir.path(), &[], options)).await;
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
    let (result, _) = launch(&fake, spec_with(dir.path(), &[], options)).await;
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
async fn a_package_over_16_mib_goes_up_in_parts() {
    let fake = FakeAws::start().await;
    let dir = project();
    // Incompressible, so the .tgz stays over the threshold: 8 MiB + 8 MiB + the rest.
    write_file(dir.path(), "data/weights_a.py", incompressible(9 << 20, 1));
    write_file(dir.path(), "data/weights_b.py", incompressible(8 << 20, 2));
    let (result, events) = launch(&fake, spec(dir.path())).await;
    let submitted = result.expect("the launch succeeds");

    assert_eq!(fake.calls("PutObject"), 0);
    assert_eq!(fake.calls("CreateMultipartUpload"), 1);
    assert_eq!(fake.calls("UploadPart"), 3);
    assert_eq!(fake.calls("CompleteMultipartUpload"), 1);
    assert_eq!(fake.calls("AbortMultipartUpload"), 0);
    assert_eq!(fake.open_uploads(), 0);
    let parts: Vec<String> = fake
        .requests("UploadPart")
        .iter()
        .map(|r| r["query"]["partNumber"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(parts, ["1", "2", "3"]);

    let object = fake
        .object(BUCKET, key_of(&submitted.package_url))
        .expect("assembled");
    let sha = submitted
        .package_url
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".tgz")
        .to_owned();
    assert_eq!(
        sha256_hex(&object),
        sha,
        "the parts reassemble to the hashed package"
    );
    assert!(object.len() > 16 << 20);

    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::UploadProgress { sent, total } => Some((*sent, *total)),
            _ => None,
        })
        .collect();
    let total = object.len() as u64;
    assert_eq!(
        progress,
        [(8 << 20, total), (16 << 20, total), (total, total)]
    );
}

#[tokio::test]
async fn a_failed_part_aborts_the_upload_and_submits_nothing() {
    let fake = FakeAws::start().await;
    let dir = project();
    write_file(dir.path(), "big.py", incompressible(17 << 20, 3));
    fake.fail_always("UploadPart", Fault::AccessDenied);
    let (result, _) = launch(&fake, spec(dir.path())).await;
    match result.unwrap_err() {
        LaunchError::Store(StoreError::Aws(e)) => {
            assert_eq!((e.call, e.kind), ("UploadPart", AwsErrorKind::AccessDenied));
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert_eq!(fake.calls("AbortMultipartUpload"), 1);
    assert_eq!(fake.open_uploads(), 0, "no orphaned parts left behind");
    assert_eq!(fake.calls("SubmitJob"), 0);
    assert!(fake.object_keys(BUCKET).is_empty());
}

fn add_fargate_queue(fake: &FakeAws) {
    fake.add_queue(
        QueueSpec::new("fargate-queue")
            .compute_environment("fargate", "FARGATE", 64)
            .compute_environment("fargate-spot", "FARGATE_SPOT", 64),
    );
}

#[tokio::test]
async fn fargate_queue_gets_a_fargate_definition() {
    let fake = FakeAws::start().await;
    add_fargate_queue(&fake);
    let dir = project();
    let exec = "arn:aws:iam::123456789012:role/ecs-exec";
    let env = [
        ("METAFLOW_BATCH_JOB_QUEUE", Some("fargate-queue")),
        ("METAFLOW_ECS_FARGATE_EXECUTION_ROLE", Some(exec)),
    ];
    let options = RunOptions {
        cpu: Some("0.5".into()),
        memory: Some("1024".into()),
        ..Default::default()
    };
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, options)).await;
    result.expect("the launch succeeds");
    let (_, _, body) = &fake.definitions()[0];
    assert_eq!(body["platformCapabilities"], serde_json::json!(["FARGATE"]));
    let props = &body["containerProperties"];
    assert_eq!(props["networkConfiguration"]["assignPublicIp"], "ENABLED");
    assert_eq!(props["executionRoleArn"], exec);
    let submit = &fake.requests("SubmitJob")[0];
    assert_eq!(submit["jobQueue"], "fargate-queue");
    assert_eq!(
        resources(submit),
        pairs(&[("VCPU", "0.5"), ("MEMORY", "1024")])
    );
}

#[tokio::test]
async fn a_queue_with_any_ec2_environment_is_ec2() {
    let fake = FakeAws::start().await;
    fake.add_queue(
        QueueSpec::new("mixed")
            .compute_environment("fargate", "FARGATE", 64)
            .compute_environment("spot", "SPOT", 64),
    );
    let dir = project();
    let (result, _) = launch(
        &fake,
        spec_with(
            dir.path(),
            &[("METAFLOW_BATCH_JOB_QUEUE", Some("mixed"))],
            RunOptions::default(),
        ),
    )
    .await;
    result.expect("no execution role needed");
    assert_eq!(
        fake.definitions()[0].2["platformCapabilities"],
        serde_json::json!(["EC2"])
    );
}

#[tokio::test]
async fn fargate_without_an_execution_role_is_a_config_error_before_any_change() {
    let fake = FakeAws::start().await;
    add_fargate_queue(&fake);
    let dir = project();
    let env = [("METAFLOW_BATCH_JOB_QUEUE", Some("fargate-queue"))];
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, RunOptions::default())).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            LaunchError::Config(ConfigError::Missing {
                key: "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
                flag: Some("--execution-role")
            })
        ),
        "{err:?}"
    );
    assert!(err.is_usage());
    assert!(err.hint().unwrap().contains("--execution-role"));
    assert!(
        fake.mutating_calls().is_empty(),
        "{:?}",
        fake.mutating_calls()
    );
}

#[tokio::test]
async fn a_missing_queue_is_reported_before_any_change() {
    let fake = FakeAws::start().await;
    let dir = project();
    let env = [("METAFLOW_BATCH_JOB_QUEUE", Some("no-such-queue"))];
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, RunOptions::default())).await;
    let err = result.unwrap_err();
    match &err {
        LaunchError::QueueNotFound { queue, region } => {
            assert_eq!((queue.as_str(), region.as_str()), ("no-such-queue", REGION));
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(err.is_usage());
    assert!(err.hint().unwrap().contains("--queue"));
    assert!(
        fake.mutating_calls().is_empty(),
        "{:?}",
        fake.mutating_calls()
    );
}

#[tokio::test]
async fn a_disabled_queue_is_reported_before_any_change() {
    let fake = FakeAws::start().await;
    fake.add_queue(
        QueueSpec::new("off")
            .compute_environment("ce", "EC2", 8)
            .state("DISABLED"),
    );
    let dir = project();
    let env = [("METAFLOW_BATCH_JOB_QUEUE", Some("off"))];
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, RunOptions::default())).await;
    assert!(
        matches!(result.unwrap_err(), LaunchError::QueueDisabled { ref state, .. } if state == "DISABLED")
    );
    assert!(fake.mutating_calls().is_empty());
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
        let (result, _) = launch(&fake, spec_with(dir.path(), &[], options)).await;
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
async fn a_definition_not_yet_visible_to_submit_job_is_waited_for() {
    let fake = FakeAws::start().await;
    let dir = project();
    let not_found = Fault::Custom {
        status: 400,
        code: "ClientException".into(),
        message: "Job definition mfbatch-x:1 not found".into(),
    };
    fake.fail_next("SubmitJob", 1, not_found.clone());
    let (result, _) = launch(&fake, spec(dir.path())).await;
    result.expect("submitted on the second try");
    assert_eq!(fake.calls("SubmitJob"), 2);
    assert_eq!(fake.jobs().len(), 1);

    // A reused definition gets no such patience: the error is the user's to see.
    fake.fail_next("SubmitJob", 1, not_found);
    let (result, _) = launch(&fake, spec(dir.path())).await;
    let err = result.expect_err("not retried");
    assert!(
        matches!(err, LaunchError::Aws(ref e) if e.code.as_deref() == Some("ClientException")),
        "{err:?}"
    );
    assert_eq!(fake.calls("SubmitJob"), 3);
}

#[tokio::test]
async fn uploads_ask_for_the_configured_server_side_encryption() {
    let fake = FakeAws::start().await;
    let dir = project();
    let env = [("METAFLOW_S3_SERVER_SIDE_ENCRYPTION", Some("aws:kms"))];
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, RunOptions::default())).await;
    result.unwrap();
    let put = fake
        .call_log()
        .into_iter()
        .find(|c| c.op == "PutObject")
        .expect("an upload");
    assert_eq!(put.body["server_side_encryption"], "aws:kms");
    assert_eq!(put.body["if_none_match"], "*", "upload only if absent");

    // An unknown mode is a usage error before anything happens.
    let sources = Sources {
        flags: BTreeMap::new(),
        env: [
            ("METAFLOW_DATASTORE_SYSROOT_S3", SYSROOT),
            ("METAFLOW_BATCH_JOB_QUEUE", QUEUE),
            ("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", ROLE),
            ("METAFLOW_BATCH_CONTAINER_IMAGE", IMAGE),
            ("METAFLOW_S3_SERVER_SIDE_ENCRYPTION", "rot13"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        cwd: dir.path().to_owned(),
    };
    let options = RunOptions {
        script: dir.path().join("step.py"),
        ..Default::default()
    };
    let err = build_spec(&resolve(&sources).unwrap(), &options).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::InvalidSetting {
                key: "METAFLOW_S3_SERVER_SIDE_ENCRYPTION",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_gpu_on_a_fargate_queue_is_a_usage_error() {
    let fake = FakeAws::start().await;
    add_fargate_queue(&fake);
    let dir = project();
    let env = [
        ("METAFLOW_BATCH_JOB_QUEUE", Some("fargate-queue")),
        (
            "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
            Some("arn:aws:iam::123456789012:role/x"),
        ),
    ];
    let options = RunOptions {
        gpu: Some("1".into()),
        ..Default::default()
    };
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, options)).await;
    assert!(
        matches!(
            result,
            Err(LaunchError::Config(ConfigError::InvalidFlag {
                flag: "--gpu",
                ..
            }))
        ),
        "{result:?}"
    );
    assert!(fake.mutating_calls().is_empty());
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
        let (result, _) = launch(&fake, spec_with(dir.path(), &[], options)).await;
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
        spec_with(dir.path(), &[], options),
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

#[tokio::test]
async fn more_vcpus_than_any_compute_environment_has_is_a_usage_error_before_any_upload() {
    let fake = FakeAws::start().await;
    fake.add_queue(
        QueueSpec::new("small")
            .compute_environment("a", "EC2", 8)
            .compute_environment("b", "SPOT", 16),
    );
    let dir = project();
    let env = [("METAFLOW_BATCH_JOB_QUEUE", Some("small"))];
    let options = |cpu: &str| RunOptions {
        cpu: Some(cpu.into()),
        ..Default::default()
    };
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, options("32"))).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            &err,
            LaunchError::Config(ConfigError::InvalidFlag { flag: "--cpu", reason, .. })
                if reason.contains("16 vCPUs")
        ),
        "{err:?}"
    );
    assert!(err.is_usage());
    assert!(
        fake.mutating_calls().is_empty(),
        "{:?}",
        fake.mutating_calls()
    );

    // As much as the largest environment offers is fine.
    let (result, _) = launch(&fake, spec_with(dir.path(), &env, options("16"))).await;
    result.unwrap();
}

#[tokio::test]
async fn the_s3_endpoint_of_the_upload_is_given_to_the_job() {
    let fake = FakeAws::start().await;
    let dir = project();
    // The fake's clients have their endpoint from the SDK configuration (as AWS_ENDPOINT_URL
    // gives it), not from METAFLOW_S3_ENDPOINT_URL.
    let (result, _) = launch(&fake, spec(dir.path())).await;
    result.unwrap();
    let env = environment(&fake.requests("SubmitJob")[0]);
    assert_eq!(env["METAFLOW_S3_ENDPOINT_URL"], fake.uri());

    // A METAFLOW_S3_ENDPOINT_URL the user chose (setting or --env) is kept, once.
    let endpoints = |submit: &Value| -> Vec<String> {
        name_values(&submit["containerOverrides"]["environment"])
            .into_iter()
            .filter(|(n, _)| n == "METAFLOW_S3_ENDPOINT_URL")
            .map(|(_, v)| v)
            .collect()
    };
    let own = [(
        "METAFLOW_S3_ENDPOINT_URL",
        Some("http://own.example.com:9000"),
    )];
    let (result, _) = launch(&fake, spec_with(dir.path(), &own, RunOptions::default())).await;
    result.unwrap();
    let submit = fake.requests("SubmitJob").pop().unwrap();
    assert_eq!(endpoints(&submit), ["http://own.example.com:9000"]);
    let options = RunOptions {
        env: vec!["METAFLOW_S3_ENDPOINT_URL=http://from-env-flag:9000".into()],
        ..Default::default()
    };
    let (result, _) = launch(&fake, spec_with(dir.path(), &[], options)).await;
    result.unwrap();
    let submit = fake.requests("SubmitJob").pop().unwrap();
    assert_eq!(endpoints(&submit), ["http://from-env-flag:9000"]);
}

#[tokio::test]
async fn a_forbidden_head_object_means_unknown_and_the_conditional_put_decides() {
    let fake = FakeAws::start().await;
    // Without s3:ListBucket, HeadObject on a missing key answers 403.
    fake.fail_always("HeadObject", Fault::AccessDenied);
    let dir = project();
    let clients = fake.clients();
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let plan = launch::plan(&clients, &prepared)
        .await
        .expect("not an error");
    assert!(!plan.package_present);
    let warning = format!("{:?}", plan.warnings);
    assert!(warning.contains("s3:ListBucket"), "{warning}");
    launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert_eq!(fake.calls("PutObject"), 1);
    assert_eq!(fake.object_keys(BUCKET).len(), 1);

    // Already stored: the conditional put answers 412, which is success.
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert_eq!(fake.calls("PutObject"), 2);
    assert_eq!(fake.jobs().len(), 2);
}

#[tokio::test]
async fn a_multipart_upload_abandoned_mid_way_is_aborted() {
    use mfbatch::launch::store::{PackageStore, S3Store};
    let fake = FakeAws::start().await;
    let dir = project();
    write_file(dir.path(), "big.py", incompressible(17 << 20, 4));
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let store = S3Store::new(
        fake.clients().s3.clone(),
        mfbatch::s3url::S3Url::parse(SYSROOT).unwrap(),
    );
    let first_part = Arc::new(tokio::sync::Notify::new());
    let progress = {
        let first_part = first_part.clone();
        move |_, _| first_part.notify_one()
    };
    // An interrupt after the first part: the upload's future is dropped mid-way.
    tokio::select! {
        result = store.put(&prepared.package, &progress) => panic!("finished: {result:?}"),
        _ = first_part.notified() => {}
    }
    mfbatch::launch::store::abort_abandoned_uploads(std::time::Duration::from_secs(10)).await;
    assert_eq!(fake.calls("CreateMultipartUpload"), 1);
    assert_eq!(fake.calls("CompleteMultipartUpload"), 0);
    assert_eq!(fake.calls("AbortMultipartUpload"), 1);
    assert_eq!(fake.open_uploads(), 0, "no parts are left to be billed");
}

#[tokio::test]
async fn an_answer_without_an_upload_id_is_an_error_not_an_empty_id() {
    let fake = FakeAws::start().await;
    // A 200 whose body holds no UploadId.
    fake.fail_always(
        "CreateMultipartUpload",
        Fault::Raw {
            status: 200,
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>k</Key></InitiateMultipartUploadResult>"
            ),
        },
    );
    let dir = project();
    write_file(dir.path(), "big.py", incompressible(17 << 20, 5));
    let (result, _) = launch(&fake, spec(dir.path())).await;
    match result.unwrap_err() {
        LaunchError::Store(StoreError::Aws(e)) => {
            assert_eq!(e.call, "CreateMultipartUpload");
            assert!(format!("{e:?}").contains("UploadId"), "{e:?}");
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert_eq!(
        fake.calls("UploadPart"),
        0,
        "no part is sent with an empty id"
    );
    assert_eq!(fake.calls("SubmitJob"), 0);
}

/// Registers a revision under `name` as someone else in the account could: the definition
/// mfbatch would register, changed by `tamper`.
async fn register_lookalike(
    fake: &FakeAws,
    def: &mfbatch::launch::jobdef::JobDefinition,
    tamper: impl FnOnce(
        aws_sdk_batch::types::builders::ContainerPropertiesBuilder,
    ) -> aws_sdk_batch::types::builders::ContainerPropertiesBuilder,
) -> String {
    use aws_sdk_batch::types::{
        ContainerProperties, JobDefinitionType, KeyValuePair, PlatformCapability,
        ResourceRequirement, ResourceType,
    };
    let p = &def.container_properties;
    let mut props = ContainerProperties::builder()
        .image(&p.image)
        .job_role_arn(&p.job_role_arn)
        .set_command(Some(p.command.clone()));
    for kv in &p.environment {
        props = props.environment(
            KeyValuePair::builder()
                .name(&kv.name)
                .value(&kv.value)
                .build(),
        );
    }
    for r in &p.resource_requirements {
        props = props.resource_requirements(
            ResourceRequirement::builder()
                .r#type(ResourceType::from(r.kind))
                .value(&r.value)
                .build(),
        );
    }
    let out = fake
        .clients()
        .batch
        .register_job_definition()
        .job_definition_name(&def.job_definition_name)
        .r#type(JobDefinitionType::Container)
        .container_properties(tamper(props).build())
        .platform_capabilities(PlatformCapability::Ec2)
        .propagate_tags(true)
        .send()
        .await
        .unwrap();
    out.job_definition_arn().unwrap().to_owned()
}

#[tokio::test]
async fn a_revision_with_our_name_but_other_content_is_not_reused() {
    use aws_sdk_batch::types::{MountPoint, Volume};
    let fake = FakeAws::start().await;
    let dir = project();
    let clients = fake.clients();
    let prepared = launch::prepare(spec(dir.path()), &mfbatch::event::discard())
        .await
        .unwrap();
    let def = launch::plan(&clients, &prepared)
        .await
        .unwrap()
        .job_definition;

    // Someone registers look-alikes: another image, and the same content plus a host volume.
    register_lookalike(&fake, &def, |p| p.image("evil/image:latest")).await;
    register_lookalike(&fake, &def, |p| {
        p.volumes(
            Volume::builder()
                .name("host")
                .host(
                    aws_sdk_batch::types::Host::builder()
                        .source_path("/")
                        .build(),
                )
                .build(),
        )
        .mount_points(
            MountPoint::builder()
                .source_volume("host")
                .container_path("/host")
                .build(),
        )
    })
    .await;
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    assert!(
        plan.existing_definition.is_none(),
        "{:?}",
        plan.existing_definition
    );
    let submitted = launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert!(submitted.job_definition.newly_registered);
    assert_eq!(submitted.job_definition.revision, 3);
    assert_eq!(fake.jobs()[0].definition, submitted.job_definition.arn);

    // A newer look-alike does not hide the matching revision, which is reused.
    register_lookalike(&fake, &def, |p| p.command("sh")).await;
    let plan = launch::plan(&clients, &prepared).await.unwrap();
    let reused = plan
        .existing_definition
        .clone()
        .expect("the matching revision");
    assert_eq!(reused.revision, 3);
    launch::execute(&clients, &prepared, plan, &mfbatch::event::discard())
        .await
        .unwrap();
    assert_eq!(fake.calls("RegisterJobDefinition"), 1 + 3);
    assert_eq!(fake.jobs()[1].definition, reused.arn);
}
