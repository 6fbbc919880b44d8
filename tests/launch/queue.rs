//! The queue decides the platform and what fits: Fargate or EC2, disabled or missing queues,
//! resources no compute environment can reach — all found before anything changes.

use super::*;

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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, options)).await;
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
        test_spec(
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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, RunOptions::default())).await;
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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, RunOptions::default())).await;
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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, RunOptions::default())).await;
    assert!(
        matches!(result.unwrap_err(), LaunchError::QueueDisabled { ref state, .. } if state == "DISABLED")
    );
    assert!(fake.mutating_calls().is_empty());
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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, options)).await;
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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, options("32"))).await;
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
    let (result, _) = launch(&fake, test_spec(dir.path(), &env, options("16"))).await;
    result.unwrap();
}
