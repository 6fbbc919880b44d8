//! The newcomer path on moto (tests/moto/serve.py): `stack deploy` of mfbatch's template on moto's
//! CloudFormation → `configure --from-stack` → `doctor` (every check passes) → `run` of the hello
//! fixture → `stack delete` (bucket kept). Then `doctor` on broken setups, each naming the broken
//! piece and nothing else; and `configure`'s files, round-tripped and read by Metaflow 2.19 itself.
//!
//! moto workarounds live in serve.py (a route table moto never deletes; UsePreviousValue for a
//! parameter left at its default; a tag that makes a compute environment INVALID, which moto
//! otherwise never reports), not in mfbatch.

#[allow(dead_code)]
mod e2e;

use std::path::Path;
use std::process::Command;

use e2e::{moto, run, Backend, Output, StepDir};
use serde_json::Value;

const SETTINGS: [&str; 5] = [
    "METAFLOW_DATASTORE_SYSROOT_S3",
    "METAFLOW_BATCH_JOB_QUEUE",
    "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
    "METAFLOW_BATCH_CONTAINER_IMAGE",
    "METAFLOW_S3_ENDPOINT_URL",
];

/// `mfbatch ARGS` against moto with AWS settings only: no Metaflow setting in the environment.
fn newcomer(step: &StepDir, args: &[&str]) -> Command {
    let mut cmd = step.mfbatch(Backend::Batch, args);
    for key in SETTINGS {
        cmd.env_remove(key);
    }
    cmd
}

#[track_caller]
fn expect(out: &Output, code: i32, what: &str) {
    assert_eq!(out.code, Some(code), "{what}\n{}", out.describe());
}

#[test]
fn deploy_configure_doctor_run_delete() {
    let step = StepDir::new(&[]);
    let name = format!("newcomer-{:08x}", fastrand::u32(..));

    let out = run(newcomer(&step, &["stack", "deploy", &name]));
    expect(&out, 0, "stack deploy");
    assert!(out.stderr.contains("CREATE_COMPLETE"), "{}", out.describe());
    assert!(
        out.stdout.contains("MetaflowDataStoreS3Url"),
        "{}",
        out.describe()
    );

    let out = run(newcomer(&step, &["configure", "--from-stack", &name]));
    expect(&out, 0, "configure --from-stack");
    let config = step.home().join(".metaflowconfig/config.json");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let queue = written["METAFLOW_BATCH_JOB_QUEUE"].as_str().unwrap();
    assert!(queue.contains(":job-queue/"), "{written}");
    assert_eq!(written["METAFLOW_DEFAULT_DATASTORE"], "s3");

    let out = run(newcomer(&step, &["doctor", "--output", "json"]));
    expect(&out, 0, "doctor");
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON report");
    for check in report["checks"].as_array().unwrap() {
        let fine = check["status"] == "pass"
            || (check["status"] == "skipped"
                && ["execution role", "metadata service"]
                    .contains(&check["name"].as_str().unwrap()));
        assert!(fine, "{check}\n{}", out.describe());
    }

    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hello/step.py");
    let out = run(newcomer(&step, &["run", hello.to_str().unwrap()]));
    expect(&out, 0, "run fixtures/hello/step.py");
    assert!(
        out.stdout.starts_with("hello, world!\n"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("step 3 of 3 done"),
        "{}",
        out.describe()
    );

    let out = run(newcomer(&step, &["stack", "delete", &name]));
    expect(&out, 2, "stack delete without a terminal or --yes");
    let out = run(newcomer(&step, &["stack", "delete", &name, "--yes"]));
    expect(&out, 0, "stack delete --yes");
    let bucket = written["METAFLOW_DATASTORE_SYSROOT_S3"]
        .as_str()
        .unwrap()
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        out.stderr
            .contains(&format!("The bucket {bucket} was kept")),
        "{}",
        out.describe()
    );
    boto3(&format!("c('s3').head_bucket(Bucket='{bucket}')"));
}

/// Deploying an existing stack updates it: the parameters given change, the others keep their
/// values (UsePreviousValue). (moto drops a stack's outputs on update, so nothing reads them here.)
#[test]
fn deploy_again_updates_the_stack() {
    let step = StepDir::new(&[]);
    let name = format!("update-{:08x}", fastrand::u32(..));
    let first = ["stack", "deploy", &name, "--param", "MinVCpus=1"];
    expect(&run(newcomer(&step, &first)), 0, "stack deploy");
    let out = run(newcomer(
        &step,
        &["stack", "deploy", &name, "--param", "MaxVCpus=32"],
    ));
    expect(&out, 0, "stack deploy (update)");
    assert!(out.stderr.contains("UPDATE_COMPLETE"), "{}", out.describe());
    assert!(out.stderr.contains("updated"), "{}", out.describe());
    let out = run(newcomer(
        &step,
        &["stack", "status", &name, "--output", "json"],
    ));
    expect(&out, 0, "stack status");
    let status: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(status["status"], "UPDATE_COMPLETE");
    assert_eq!(status["parameters"]["MaxVCpus"], "32");
    assert_eq!(status["parameters"]["MinVCpus"], "1");
}

/// Runs Python with `c(service)` giving a boto3 client of moto; returns stdout.
fn boto3(code: &str) -> String {
    let moto = moto();
    let info = &moto.info;
    let prelude = format!(
        "import boto3, json\n\
         def c(name):\n    return boto3.client(name, endpoint_url='{}', region_name='{}',\n        \
         aws_access_key_id='testing', aws_secret_access_key='testing')\n",
        info.endpoint, info.region
    );
    let out = Command::new(&moto.python)
        .args(["-c", &format!("{prelude}{code}")])
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3 setup failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A queue (with its own unmanaged compute environment) for one test, so tests that break a
/// queue do not break the shared one. `ce_tags` become the environment's tags.
fn own_queue(name: &str, queue_state: &str, ce_tags: &str) -> String {
    let role = &moto().info.role_arn;
    boto3(&format!(
        "b = c('batch')\n\
         ce = b.create_compute_environment(computeEnvironmentName='{name}-ce', type='UNMANAGED',\n    \
         state='ENABLED', serviceRole='{role}', tags={ce_tags})['computeEnvironmentArn']\n\
         b.create_job_queue(jobQueueName='{name}', state='{queue_state}', priority=1,\n    \
         computeEnvironmentOrder=[{{'order': 1, 'computeEnvironment': ce}}])\n"
    ));
    name.to_owned()
}

/// `doctor --output json` on serve.py's own setup, changed by `adjust`: exit 1, and exactly the
/// check `broken` failed, its detail containing `says`.
fn doctor_names_only(broken: &str, says: &str, adjust: impl FnOnce(&mut Command)) {
    let step = StepDir::new(&[]);
    let mut cmd = step.mfbatch(Backend::Batch, &["doctor", "--output", "json"]);
    adjust(&mut cmd);
    let out = run(cmd);
    expect(&out, 1, "doctor on a broken setup");
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON report");
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.describe());
    assert_eq!(failed[0]["name"], broken, "{}", out.describe());
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(detail.contains(says), "{detail}");
    assert!(failed[0]["fix"].is_string(), "{}", out.describe());
}

#[test]
fn doctor_passes_on_the_harness_setup() {
    let step = StepDir::new(&[]);
    let out = run(step.mfbatch(Backend::Batch, &["doctor"]));
    expect(&out, 0, "doctor");
    assert!(out.stdout.contains("✓ queue"), "{}", out.describe());
}

#[test]
fn doctor_names_a_disabled_queue() {
    let queue = own_queue("doctor-disabled", "DISABLED", "{}");
    doctor_names_only("queue", "is DISABLED", |cmd| {
        cmd.env("METAFLOW_BATCH_JOB_QUEUE", &queue);
    });
}

#[test]
fn doctor_names_an_invalid_compute_environment() {
    let queue = own_queue(
        "doctor-invalid-ce",
        "ENABLED",
        "{'mfbatch-test-status': 'INVALID'}",
    );
    doctor_names_only("compute environments", "is INVALID", |cmd| {
        cmd.env("METAFLOW_BATCH_JOB_QUEUE", &queue);
    });
}

#[test]
fn doctor_names_a_missing_bucket() {
    doctor_names_only("bucket", "does not exist", |cmd| {
        cmd.env(
            "METAFLOW_DATASTORE_SYSROOT_S3",
            "s3://mfbatch-no-such-bucket/metaflow",
        );
    });
}

#[test]
fn doctor_names_a_job_role_ecs_cannot_assume() {
    let arn = boto3(
        "trust = {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 'sts:AssumeRole',\n    \
         'Principal': {'Service': 'ec2.amazonaws.com'}}]}\n\
         print(c('iam').create_role(RoleName='doctor-ec2-only',\n    \
         AssumeRolePolicyDocument=json.dumps(trust))['Role']['Arn'])\n",
    );
    doctor_names_only(
        "job role",
        "does not trust ecs-tasks.amazonaws.com",
        |cmd| {
            cmd.env("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", arn.trim());
        },
    );
}

#[test]
fn doctor_names_missing_credentials_and_skips_the_rest() {
    doctor_names_only("credentials", "no AWS credentials", |cmd| {
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
    });
}

/// The binary with only a HOME (no AWS, no Metaflow variables).
fn offline(home: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfbatch"));
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .current_dir(home)
        .stdin(std::process::Stdio::null());
    run(cmd)
}

#[test]
fn configure_import_show_export_round_trip_and_metaflow_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let source = home.join("in.json");
    let input = serde_json::json!({
        "METAFLOW_DATASTORE_SYSROOT_S3": "s3://round-trip/metaflow",
        "METAFLOW_DATATOOLS_S3ROOT": "s3://round-trip/data",
        "METAFLOW_BATCH_JOB_QUEUE": "arn:aws:batch:us-east-1:123456789012:job-queue/q",
        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/r",
        "METAFLOW_SERVICE_URL": "https://md.example.com/api/",
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DEFAULT_METADATA": "service",
    });
    std::fs::write(&source, input.to_string()).unwrap();

    let out = offline(
        home,
        &["configure", "import", source.to_str().unwrap(), "-p", "dev"],
    );
    expect(&out, 0, "import");
    let profile = home.join(".metaflowconfig/config_dev.json");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(
        text.starts_with("{\n    \"METAFLOW_BATCH_JOB_QUEUE\": "),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&profile).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = offline(
        home,
        &["configure", "show", "-p", "dev", "--output", "json"],
    );
    expect(&out, 0, "show");
    let shown: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(shown, input);

    let exported = home.join("out.json");
    let out = offline(
        home,
        &[
            "configure",
            "export",
            exported.to_str().unwrap(),
            "-p",
            "dev",
        ],
    );
    expect(&out, 0, "export");
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), text);

    // A second import with other values needs a yes; without a terminal it is refused.
    std::fs::write(&source, r#"{"METAFLOW_BATCH_JOB_QUEUE": "other"}"#).unwrap();
    let out = offline(
        home,
        &["configure", "import", source.to_str().unwrap(), "-p", "dev"],
    );
    expect(&out, 2, "import over an existing profile without --yes");
    assert_eq!(std::fs::read_to_string(&profile).unwrap(), text);

    // Metaflow itself reads the file mfbatch wrote, with the same values.
    let python = e2e::moto_python().expect("the moto venv (with metaflow)");
    let code = "import json\nfrom metaflow import metaflow_config as c\n\
                print(json.dumps({k: getattr(c, k) for k in ['DATASTORE_SYSROOT_S3',\n\
                'DATATOOLS_S3ROOT', 'BATCH_JOB_QUEUE', 'ECS_S3_ACCESS_IAM_ROLE', 'SERVICE_URL',\n\
                'DEFAULT_DATASTORE', 'DEFAULT_METADATA']}))\n";
    let out = Command::new(python)
        .args(["-c", code])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("METAFLOW_HOME", home.join(".metaflowconfig"))
        .env("METAFLOW_PROFILE", "dev")
        .env("USERNAME", "tester")
        .current_dir(home)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "metaflow could not read the file:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (metaflow, key) in [
        ("DATASTORE_SYSROOT_S3", "METAFLOW_DATASTORE_SYSROOT_S3"),
        ("DATATOOLS_S3ROOT", "METAFLOW_DATATOOLS_S3ROOT"),
        ("BATCH_JOB_QUEUE", "METAFLOW_BATCH_JOB_QUEUE"),
        ("ECS_S3_ACCESS_IAM_ROLE", "METAFLOW_ECS_S3_ACCESS_IAM_ROLE"),
        ("SERVICE_URL", "METAFLOW_SERVICE_URL"),
        ("DEFAULT_DATASTORE", "METAFLOW_DEFAULT_DATASTORE"),
        ("DEFAULT_METADATA", "METAFLOW_DEFAULT_METADATA"),
    ] {
        assert_eq!(read[metaflow], input[key], "{metaflow}: {read}");
    }
}

#[test]
fn configure_aws_without_a_terminal_names_the_missing_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = offline(
        dir.path(),
        &["configure", "aws", "--datastore-root", "s3://bkt/mf"],
    );
    expect(&out, 2, "configure aws without --queue");
    assert!(out.stderr.contains("--queue"), "{}", out.describe());
    let out = offline(
        dir.path(),
        &[
            "configure",
            "aws",
            "--datastore-root",
            "s3://bkt/mf",
            "--queue",
            "q",
            "--iam-role",
            "arn:aws:iam::1:role/r",
        ],
    );
    expect(&out, 0, "configure aws with flags");
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".metaflowconfig/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["METAFLOW_DATATOOLS_S3ROOT"], "s3://bkt/mf/data");
    assert_eq!(written["METAFLOW_DEFAULT_DATASTORE"], "s3");
    assert!(written.get("METAFLOW_SERVICE_URL").is_none(), "{written}");
}
