//! `mfbatch run`'s container options and SubmitJob-only options, run as a user runs them (the
//! real binary against the fake AWS): each flag's exact place in RegisterJobDefinition or
//! SubmitJob, the definition's hash under flag order, reuse of a registered definition with every
//! option, the sizes with every option given, and every mismatch refused with exit 2 before
//! anything is uploaded, registered or submitted.

mod support;

use serde_json::{json, Value};
use support::cli::{Cli, Output};
use support::*;

const EXEC_ROLE: &str = "arn:aws:iam::123456789012:role/exec";
const SECRET_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";

fn project(fake: &FakeAws) -> Cli {
    let cli = Cli::new(fake);
    cli.write("step.py", "print('hi')\n");
    cli
}

/// Every container option, in one order.
const CONTAINER_FLAGS: &[&str] = &[
    "--shm",
    "512",
    "--tmpfs",
    "/scratch:2048:noexec,nosuid",
    "--tmpfs",
    "/cache:64",
    "--max-swap",
    "1024",
    "--swappiness",
    "10",
    "--volume",
    "/data:/data:ro",
    "--volume",
    "/var/tmp:/work",
    "--efs",
    "fs-0123abcd:/models,ap=fsap-0abc,iam",
    "--secret",
    "DB_PASSWORD=arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
    "--secret",
    "API_TOKEN=arn:aws:ssm:us-east-1:123456789012:parameter/api/token",
    "--ulimit",
    "nofile=1024:65536",
    "--ulimit",
    "core=0",
    "--privileged",
    "--init",
    "--user",
    "1000:1000",
    "--neuron",
    "2",
    "--log-group",
    "/mfbatch/train",
    "--log-option",
    "awslogs-stream-prefix=train",
    "--execution-role",
    EXEC_ROLE,
];

/// The same options, listed in another order.
fn shuffled_flags() -> Vec<&'static str> {
    let pairs: Vec<Vec<&str>> = CONTAINER_FLAGS
        .split_inclusive(|f| !f.starts_with("--") || *f == "--privileged" || *f == "--init")
        .map(|p| p.to_vec())
        .collect();
    pairs.into_iter().rev().flatten().collect()
}

fn dry_run(cli: &Cli, flags: &[&str]) -> (Output, Value) {
    let mut args = vec!["run", "--dry-run", "step.py"];
    args.extend_from_slice(flags);
    let out = cli.run(&args);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let doc = serde_json::from_str(&out.stdout).expect("the dry run prints JSON");
    (out, doc)
}

fn definition(doc: &Value) -> &Value {
    &doc["jobDefinition"]["registerJobDefinition"]
}

#[tokio::test]
async fn every_container_flag_lands_in_the_definition() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let (_, doc) = dry_run(&cli, CONTAINER_FLAGS);
    let props = &definition(&doc)["containerProperties"];
    assert_eq!(
        props["linuxParameters"],
        json!({
            "sharedMemorySize": 512,
            "tmpfs": [
                {"containerPath": "/cache", "size": 64},
                {"containerPath": "/scratch", "size": 2048, "mountOptions": ["noexec", "nosuid"]},
            ],
            "maxSwap": 1024,
            "swappiness": 10,
            "devices": [
                {"hostPath": "/dev/neuron0", "containerPath": "/dev/neuron0", "permissions": ["READ", "WRITE"]},
                {"hostPath": "/dev/neuron1", "containerPath": "/dev/neuron1", "permissions": ["READ", "WRITE"]},
            ],
            "initProcessEnabled": true,
        })
    );
    assert_eq!(
        props["ulimits"],
        json!([
            {"name": "core", "softLimit": 0, "hardLimit": 0},
            {"name": "nofile", "softLimit": 1024, "hardLimit": 65536},
        ])
    );
    assert_eq!(props["privileged"], json!(true));
    assert_eq!(props["user"], json!("1000:1000"));
    assert_eq!(props["executionRoleArn"], json!(EXEC_ROLE));
    assert_eq!(
        props["secrets"],
        json!([
            {"name": "API_TOKEN", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/api/token"},
            {"name": "DB_PASSWORD", "valueFrom": SECRET_ARN},
        ])
    );
    assert_eq!(
        props["logConfiguration"],
        json!({"logDriver": "awslogs", "options": {
            "awslogs-group": "/mfbatch/train", "awslogs-stream-prefix": "train"}})
    );
    // Volumes are named by what they mount; every mount point says whether it is read-only.
    let volumes = props["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 3);
    let efs = volumes
        .iter()
        .find(|v| v.get("efsVolumeConfiguration").is_some())
        .unwrap();
    assert_eq!(
        efs["efsVolumeConfiguration"],
        json!({"fileSystemId": "fs-0123abcd", "transitEncryption": "ENABLED",
               "authorizationConfig": {"accessPointId": "fsap-0abc", "iam": "ENABLED"}})
    );
    let mounts: Vec<(String, bool)> = props["mountPoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["containerPath"].as_str().unwrap().to_owned(),
                m["readOnly"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("/data".to_owned(), true),
            ("/models".to_owned(), false),
            ("/work".to_owned(), false)
        ]
    );
    assert!(props.get("ephemeralStorage").is_none());
    // None of it reaches SubmitJob.
    let submit = doc["submitJob"].to_string();
    assert!(!submit.contains("secretsmanager") && !submit.contains("/scratch"));
}

#[tokio::test]
async fn the_definition_hash_does_not_depend_on_flag_order() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let (_, first) = dry_run(&cli, CONTAINER_FLAGS);
    let (_, second) = dry_run(&cli, &shuffled_flags());
    assert_eq!(definition(&first), definition(&second));
    let name = definition(&first)["jobDefinitionName"].as_str().unwrap();
    // And differs from the definition without them.
    let (_, plain) = dry_run(&cli, &[]);
    assert_ne!(definition(&plain)["jobDefinitionName"], json!(name));
}

/// Batch's limits with every option given (and the bootstrap in the definition): the figures are
/// printed for the record; the limits themselves must hold.
#[tokio::test]
async fn sizes_with_every_option_stay_under_batchs_limits() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let args_file = cli.write("args.txt", &"--lr 0.1 --seed 1\n".repeat(10));
    let mut flags = CONTAINER_FLAGS.to_vec();
    let args_path = args_file.display().to_string();
    flags.extend([
        "--array",
        "10",
        "--array-sequential",
        "--array-args",
        &args_path,
        "--priority",
        "9999",
        "--depends-on",
        "11111111-2222-3333-4444-555555555555:N_TO_N",
        "--cpu",
        "4",
        "--memory",
        "16000",
        "--gpu",
        "1",
        "--env",
        "MODE=fast",
        "--tag",
        "team=ml",
        "--timeout",
        "3600",
        "--retries",
        "3",
    ]);
    let (_, doc) = dry_run(&cli, &flags);
    let definition_bytes = serde_json::to_string(definition(&doc)).unwrap().len();
    let overrides = doc["containerOverridesChars"].as_u64().unwrap();
    eprintln!(
        "every option: job definition {definition_bytes} bytes (limit 24576), container overrides {overrides} chars (limit 8192)"
    );
    assert!(definition_bytes < 24 * 1024, "{definition_bytes}");
    assert!(overrides < 8192, "{overrides}");
}

#[tokio::test]
async fn a_registered_definition_with_every_option_is_reused() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let (_, planned) = dry_run(&cli, CONTAINER_FLAGS);
    let mut flags = vec!["run", "--detach", "step.py"];
    flags.extend_from_slice(CONTAINER_FLAGS);
    let first = cli.run(&flags);
    assert_eq!(first.code, Some(0), "{}", first.render());
    let mut reordered = vec!["run", "--detach", "step.py"];
    reordered.extend(shuffled_flags());
    let second = cli.run(&reordered);
    assert_eq!(second.code, Some(0), "{}", second.render());
    assert_eq!(
        fake.calls("RegisterJobDefinition"),
        1,
        "the second run reuses the definition it reads back"
    );
    let jobs = fake.jobs();
    assert_eq!(jobs[0].definition, jobs[1].definition);
    // What was registered is what the dry run showed, and a dry run now reuses it.
    let (_, _, body) = &fake.definitions()[0];
    assert_eq!(body, definition(&planned));
    let (_, again) = dry_run(&cli, CONTAINER_FLAGS);
    assert_eq!(again["jobDefinition"]["reused"]["revision"], json!(1));
}

#[tokio::test]
async fn submit_only_flags_land_in_submit_job_and_not_in_the_definition() {
    let fake = FakeAws::start().await;
    fake.add_queue(
        QueueSpec::new("fair")
            .compute_environment("fair-ce", "EC2", 64)
            .scheduling_policy("arn:aws:batch:us-east-1:123456789012:scheduling-policy/ml"),
    );
    let cli = project(&fake);
    let (_, plain) = dry_run(&cli, &["--queue", "fair", "--share", "ml"]);
    let (_, doc) = dry_run(
        &cli,
        &[
            "--queue",
            "fair",
            "--share",
            "ml",
            "--priority",
            "7",
            "--array",
            "4",
            "--array-sequential",
            "--depends-on",
            "aaaa-1:N_TO_N",
            "--depends-on",
            "bbbb-2",
        ],
    );
    assert_eq!(definition(&doc), definition(&plain), "SubmitJob only");
    let submit = &doc["submitJob"];
    assert_eq!(submit["arrayProperties"], json!({"size": 4}));
    assert_eq!(submit["shareIdentifier"], json!("ml"));
    assert_eq!(submit["schedulingPriorityOverride"], json!(7));
    assert_eq!(
        submit["dependsOn"],
        json!([{"jobId": "aaaa-1", "type": "N_TO_N"}, {"jobId": "bbbb-2"}, {"type": "SEQUENTIAL"}])
    );
    let env = name_values(&submit["containerOverrides"]["environment"]);
    assert!(env.contains(&("MFBATCH_ARRAY_SIZE".into(), "4".into())));

    // The same through the SDK: what the fake received is what the dry run showed.
    let out = cli.run(&[
        "run",
        "--detach",
        "step.py",
        "--queue",
        "fair",
        "--share",
        "ml",
        "--priority",
        "7",
        "--array",
        "4",
        "--array-sequential",
        "--depends-on",
        "aaaa-1:N_TO_N",
        "--depends-on",
        "bbbb-2",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let sent = &fake.requests("SubmitJob")[0];
    for field in [
        "arrayProperties",
        "shareIdentifier",
        "schedulingPriorityOverride",
        "dependsOn",
    ] {
        assert_eq!(sent[field], submit[field], "{field}");
    }
}

#[tokio::test]
async fn array_args_travel_beside_the_package() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let lines = "--lr 0.1\n--lr 0.2\n'--name=a b'\n";
    cli.write("args.txt", lines);
    let out = cli.run(&[
        "run",
        "--detach",
        "step.py",
        "--array",
        "3",
        "--array-args",
        "args.txt",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let submit = &fake.requests("SubmitJob")[0];
    let env: std::collections::BTreeMap<_, _> =
        name_values(&submit["containerOverrides"]["environment"])
            .into_iter()
            .collect();
    let sha = sha256_hex(lines.as_bytes());
    assert_eq!(env["MFBATCH_ARRAY_ARGS_SHA256"], sha);
    let key = format!("metaflow/mfbatch/array-args/{sha}.txt");
    assert_eq!(
        env["MFBATCH_ARRAY_ARGS_URL"],
        format!("s3://{BUCKET}/{key}")
    );
    assert_eq!(fake.object(BUCKET, &key).unwrap(), lines.as_bytes());
    assert!(
        !submit.to_string().contains("--lr 0.2"),
        "the lines are not in the overrides"
    );

    // A file with the wrong number of lines is refused before anything is sent.
    let before = fake.total_calls();
    let out = cli.run(&["run", "step.py", "--array", "4", "--array-args", "args.txt"]);
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(out.stderr.contains("--array-args") && out.stderr.contains("3 lines"));
    assert_eq!(fake.total_calls(), before);
}

#[tokio::test]
async fn multi_node_jobs_use_node_overrides() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let (_, doc) = dry_run(&cli, &["--nodes", "3", "--cpu", "2"]);
    let def = definition(&doc);
    assert_eq!(def["type"], json!("multinode"));
    assert!(def.get("containerProperties").is_none());
    assert_eq!(def["nodeProperties"]["numNodes"], json!(1));
    assert_eq!(def["nodeProperties"]["mainNode"], json!(0));
    let range = &def["nodeProperties"]["nodeRangeProperties"][0];
    assert_eq!(range["targetNodes"], json!("0:"));
    assert_eq!(range["container"]["command"][0], json!("sh"));
    let submit = &doc["submitJob"];
    assert!(submit.get("containerOverrides").is_none());
    assert_eq!(submit["nodeOverrides"]["numNodes"], json!(3));
    let node = &submit["nodeOverrides"]["nodePropertyOverrides"][0];
    assert_eq!(node["targetNodes"], json!("0:"));
    assert_eq!(
        name_values(&node["containerOverrides"]["resourceRequirements"])[0],
        ("VCPU".to_owned(), "2".to_owned())
    );
    // Any node count shares the one definition.
    let (_, five) = dry_run(&cli, &["--nodes", "5"]);
    assert_eq!(definition(&five), def);
}

/// Runs `mfbatch run step.py FLAGS` expecting exit 2 with `words` on stderr and no change in AWS.
fn refused(fake: &FakeAws, cli: &Cli, flags: &[&str], words: &[&str]) {
    let before = fake.mutating_calls().len();
    let mut args = vec!["run", "step.py"];
    args.extend_from_slice(flags);
    let out = cli.run(&args);
    assert_eq!(out.code, Some(2), "{flags:?}\n{}", out.render());
    for word in words {
        assert!(
            out.stderr.contains(word),
            "{flags:?}: {word:?} missing\n{}",
            out.render()
        );
    }
    assert_eq!(fake.mutating_calls().len(), before, "{flags:?}");
    assert!(fake.object_keys(BUCKET).is_empty(), "nothing uploaded");
}

#[tokio::test]
async fn a_secret_without_an_execution_role_is_refused_before_any_call() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let out = cli.run(&["run", "step.py", "--secret", &format!("DB={SECRET_ARN}")]);
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(out.stderr.contains("--secret") && out.stderr.contains("--execution-role"));
    assert_eq!(fake.total_calls(), 0, "nothing sent, not even a read");
}

#[tokio::test]
async fn platform_and_queue_mismatches_exit_2_naming_the_flag() {
    let fake = FakeAws::start().await;
    fake.add_queue(QueueSpec::new("fargate").compute_environment("fg", "FARGATE", 64));
    fake.add_queue(
        QueueSpec::new("fair")
            .compute_environment("fair-ce", "EC2", 64)
            .scheduling_policy("arn:aws:batch:us-east-1:123456789012:scheduling-policy/ml"),
    );
    let cli = project(&fake);
    let fargate = ["--queue", "fargate", "--execution-role", EXEC_ROLE];
    for (flag, value) in [
        ("--shm", "64"),
        ("--tmpfs", "/t:10"),
        ("--max-swap", "10"),
        ("--swappiness", "5"),
        ("--volume", "/a:/b"),
        ("--ulimit", "nofile=10"),
        ("--neuron", "1"),
        ("--nodes", "2"),
    ] {
        let mut flags = fargate.to_vec();
        flags.extend([flag, value]);
        refused(&fake, &cli, &flags, &[flag, "Fargate"]);
    }
    let mut privileged = fargate.to_vec();
    privileged.push("--privileged");
    refused(&fake, &cli, &privileged, &["--privileged"]);
    refused(
        &fake,
        &cli,
        &["--ephemeral-storage", "50"],
        &["--ephemeral-storage", "EC2"],
    );
    refused(
        &fake,
        &cli,
        &["--queue", "fair"],
        &["--share", "scheduling policy"],
    );
    refused(
        &fake,
        &cli,
        &["--share", "ml"],
        &["--share", "no scheduling policy"],
    );
    // On Fargate, ephemeral storage is fine.
    let mut storage = fargate.to_vec();
    storage.extend(["--ephemeral-storage", "50"]);
    let (_, doc) = dry_run(&cli, &storage);
    assert_eq!(
        definition(&doc)["containerProperties"]["ephemeralStorage"],
        json!({"sizeInGiB": 50})
    );
}

#[tokio::test]
async fn bad_values_exit_2_before_any_call() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    for (flags, word) in [
        (&["--shm", "0"][..], "--shm"),
        (&["--tmpfs", "/x"][..], "--tmpfs"),
        (&["--swappiness", "101"][..], "--swappiness"),
        (&["--volume", "relative:/x"][..], "--volume"),
        (&["--efs", "vol-1"][..], "--efs"),
        (&["--ulimit", "nofile=9:1"][..], "--ulimit"),
        (&["--user", "a b"][..], "--user"),
        (&["--log-option", "novalue"][..], "--log-option"),
        (&["--priority", "10000"][..], "--priority"),
        (&["--array", "10001"][..], "--array"),
        (&["--array-sequential"][..], "--array-sequential"),
        (&["--depends-on", "x:N_TO_N"][..], "--depends-on"),
        (&["--nodes", "0"][..], "--nodes"),
        (&["--array", "2", "--nodes", "2"][..], "--nodes"),
    ] {
        let mut args = vec!["run", "step.py"];
        args.extend_from_slice(flags);
        let out = cli.run(&args);
        assert_eq!(out.code, Some(2), "{flags:?}\n{}", out.render());
        assert!(out.stderr.contains(word), "{flags:?}\n{}", out.render());
    }
    let out = cli.run(&["run", "--local", "step.py", "--shm", "64"]);
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(out.stderr.contains("--shm") && out.stderr.contains("--local"));
    assert_eq!(fake.total_calls(), 0);
}

#[tokio::test]
async fn options_are_settings_too() {
    let fake = FakeAws::start().await;
    let mut cli = project(&fake);
    cli.set_env("METAFLOW_BATCH_SHARED_MEMORY", "256");
    cli.set_env("MFBATCH_ULIMITS", r#"["nofile=4096"]"#);
    cli.write(
        ".metaflow/config.json",
        r#"{"METAFLOW_BATCH_HOST_VOLUMES": ["/data:/data:ro"], "MFBATCH_INIT": "true"}"#,
    );
    let (_, doc) = dry_run(&cli, &[]);
    let props = &definition(&doc)["containerProperties"];
    assert_eq!(props["linuxParameters"]["sharedMemorySize"], json!(256));
    assert_eq!(props["linuxParameters"]["initProcessEnabled"], json!(true));
    assert_eq!(props["ulimits"][0]["name"], json!("nofile"));
    assert_eq!(props["mountPoints"][0]["containerPath"], json!("/data"));
    // A flag wins over them.
    let (_, doc) = dry_run(&cli, &["--shm", "128"]);
    assert_eq!(
        definition(&doc)["containerProperties"]["linuxParameters"]["sharedMemorySize"],
        json!(128)
    );
    let config = cli.run(&["config"]);
    assert!(config
        .stdout
        .lines()
        .any(|l| l.starts_with("METAFLOW_BATCH_SHARED_MEMORY") && l.contains("256")));
    assert!(config
        .stdout
        .lines()
        .any(|l| l.starts_with("METAFLOW_BATCH_HOST_VOLUMES") && l.contains("project file")));
    // A bad value from a setting names the setting.
    cli.set_env("METAFLOW_BATCH_SWAPPINESS", "high");
    let out = cli.run(&["run", "step.py"]);
    assert_eq!(out.code, Some(2), "{}", out.render());
    assert!(out.stderr.contains("METAFLOW_BATCH_SWAPPINESS"));
}
