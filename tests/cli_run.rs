//! `mfbatch run --detach`, `run --dry-run`, bad input and `mfbatch config`, run as a user runs
//! them: the real binary, a temporary HOME, the fake AWS; stdout, stderr and the exit code
//! snapshotted, and the fake asked what the binary did (or did not do) to AWS.

mod support;

use serde_json::Value;
use support::cli::{Cli, Output};
use support::*;

/// Snapshots `text` with the runner's filters (port, temp paths, job ids, hashes).
fn assert_cli_snapshot(cli: &Cli, name: &str, text: &str) {
    let filters = cli.filters();
    insta::with_settings!({filters => filters.iter().map(|(r, s)| (r.as_str(), s.as_str()))}, {
        insta::assert_snapshot!(name, text);
    });
}

/// A user's project: a step and the module it imports.
fn project(fake: &FakeAws) -> Cli {
    let cli = Cli::new(fake);
    cli.write("step.py", "from greeting import greet\nprint(greet())\n");
    cli.write("greeting.py", "def greet():\n    return 'hello'\n");
    cli
}

fn env_of(submit: &Value) -> Vec<(String, String)> {
    support::name_values(&submit["containerOverrides"]["environment"])
}

fn has_env(submit: &Value, name: &str, value: &str) -> bool {
    env_of(submit).contains(&(name.to_owned(), value.to_owned()))
}

#[tokio::test]
async fn run_detach_prints_only_the_job_id() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let out = cli.run(&["run", "--detach", "step.py", "--env", "MODE=fast"]);

    assert_eq!(out.code, Some(0), "{}", out.render());
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        out.stdout,
        format!("{}\n", jobs[0].id),
        "stdout is the job id alone"
    );
    assert_eq!(jobs[0].name, "tester-step");
    assert!(has_env(&jobs[0].submit, "MFBATCH_SCRIPT", "step.py"));
    assert!(has_env(&jobs[0].submit, "MODE", "fast"));
    let mut mutating = fake.mutating_calls();
    mutating.sort();
    assert_eq!(
        mutating,
        ["PutObject", "RegisterJobDefinition", "SubmitJob"]
    );
    assert_eq!(fake.calls("DescribeJobs"), 0, "--detach does not follow");
    assert_cli_snapshot(&cli, "run_detach", &out.render());
}

#[tokio::test]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let args = [
        "run",
        "--dry-run",
        "--cpu",
        "2",
        "--env",
        "MODE=fast",
        "step.py",
        "--",
        "--epochs",
        "3",
    ];
    let out = cli.run(&args);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(fake.total_calls() > 0, "the plan reads from AWS");
    assert!(
        fake.mutating_calls().is_empty(),
        "{:?}",
        fake.mutating_calls()
    );

    let doc: Value = serde_json::from_str(&out.stdout).expect("stdout is one JSON document");
    for key in ["package", "queue", "jobDefinition", "submitJob"] {
        assert!(doc.get(key).is_some(), "no {key} in {doc:#}");
    }
    let package = &doc["package"];
    let files: Vec<&str> = package["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["greeting.py", "step.py"]);
    assert_eq!(package["alreadyStored"], false);
    let sha = package["sha256"].as_str().unwrap();
    assert_eq!(
        package["url"],
        format!("s3://{BUCKET}/metaflow/mfbatch/packages/{sha}.tgz")
    );
    assert!(doc["jobDefinition"]["reused"].is_null());
    let register = &doc["jobDefinition"]["registerJobDefinition"];
    assert!(register["jobDefinitionName"]
        .as_str()
        .unwrap()
        .starts_with("mfbatch-"));
    let submit = &doc["submitJob"];
    assert_eq!(submit["jobQueue"], QUEUE);
    assert_eq!(
        submit["containerOverrides"]["resourceRequirements"][0],
        serde_json::json!({"type": "VCPU", "value": "2"})
    );
    assert!(has_env(submit, "MODE", "fast"));
    assert!(has_env(submit, "MFBATCH_ARGS", r#"["--epochs","3"]"#));
    assert!(has_env(submit, "MFBATCH_PACKAGE_SHA256", sha));
    assert_cli_snapshot(&cli, "dry_run_stderr", &out.stderr);

    // After a real run, the plan reuses what is there.
    let detached = cli.run(&["run", "--detach", "step.py"]);
    assert_eq!(detached.code, Some(0), "{}", detached.render());
    let mutating = fake.mutating_calls().len();
    let again = cli.run(&args);
    assert_eq!(again.code, Some(0), "{}", again.render());
    assert_eq!(
        fake.mutating_calls().len(),
        mutating,
        "a dry run after a run changes nothing either"
    );
    let doc: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(doc["package"]["alreadyStored"], true);
    assert!(doc["jobDefinition"]["registerJobDefinition"].is_null());
    let reused = doc["jobDefinition"]["reused"]["arn"].as_str().unwrap();
    assert_eq!(fake.jobs()[0].definition, reused);
    assert_eq!(doc["submitJob"]["jobDefinition"], reused);
}

/// One bad invocation: how to set it up, the arguments, and what the error must name.
struct BadInput {
    name: &'static str,
    setup: fn(&mut Cli),
    args: &'static [&'static str],
    names: &'static str,
}

fn nothing(_: &mut Cli) {}

#[tokio::test]
async fn bad_input_exits_2_naming_the_problem_before_any_aws_call() {
    let fake = FakeAws::start().await;
    let cases = [
        BadInput {
            name: "missing script",
            setup: nothing,
            args: &["run", "--detach", "missing.py"],
            names: "missing.py",
        },
        BadInput {
            name: "script outside --root",
            setup: |cli| {
                cli.write("sub/other.py", "");
            },
            args: &["run", "--detach", "--root", "sub", "step.py"],
            names: "--root",
        },
        BadInput {
            name: "script the package would leave out",
            setup: |cli| {
                cli.write("run.sh", "echo hi\n");
            },
            args: &["run", "--detach", "run.sh"],
            names: "run.sh",
        },
        BadInput {
            name: "cpu not a number",
            setup: nothing,
            args: &["run", "--detach", "--cpu", "abc", "step.py"],
            names: "--cpu",
        },
        BadInput {
            name: "cpu zero",
            setup: nothing,
            args: &["run", "--detach", "--cpu", "0", "step.py"],
            names: "--cpu",
        },
        BadInput {
            name: "cpu negative",
            setup: nothing,
            args: &["run", "--detach", "--cpu=-1", "step.py"],
            names: "--cpu",
        },
        BadInput {
            name: "memory zero",
            setup: nothing,
            args: &["run", "--detach", "--memory", "0", "step.py"],
            names: "--memory",
        },
        BadInput {
            // `--queue "$Q"` with Q unset must not send the job to the configured queue.
            name: "empty queue",
            setup: nothing,
            args: &["run", "--detach", "--queue", "", "step.py"],
            names: "--queue",
        },
        BadInput {
            name: "env without =",
            setup: nothing,
            args: &["run", "--detach", "--env", "NOEQUALS", "step.py"],
            names: "--env",
        },
        BadInput {
            name: "timeout under a minute",
            setup: nothing,
            args: &["run", "--detach", "--timeout", "10", "step.py"],
            names: "--timeout",
        },
        BadInput {
            name: "malformed profile config",
            setup: |cli| {
                cli.write_home(
                    ".metaflowconfig/config.json",
                    r#"{"METAFLOW_BATCH_JOB_QUEUE": "#,
                );
            },
            args: &["run", "--detach", "step.py"],
            names: ".metaflowconfig/config.json",
        },
        BadInput {
            name: "config that is not an object",
            setup: |cli| {
                cli.write_home(
                    ".metaflowconfig/config.json",
                    r#"["METAFLOW_BATCH_JOB_QUEUE"]"#,
                );
            },
            args: &["run", "--detach", "step.py"],
            names: ".metaflowconfig/config.json",
        },
        BadInput {
            name: "unknown profile",
            setup: |cli| {
                cli.set_env("METAFLOW_PROFILE", "nope");
            },
            args: &["run", "--detach", "step.py"],
            names: "METAFLOW_PROFILE",
        },
        BadInput {
            name: "datastore root not an s3 URL",
            setup: |cli| {
                cli.set_env("METAFLOW_DATASTORE_SYSROOT_S3", "bucket/x");
            },
            args: &["run", "--detach", "step.py"],
            names: "METAFLOW_DATASTORE_SYSROOT_S3",
        },
        BadInput {
            name: "no queue",
            setup: |cli| {
                cli.remove_env("METAFLOW_BATCH_JOB_QUEUE");
            },
            args: &["run", "--detach", "step.py"],
            names: "METAFLOW_BATCH_JOB_QUEUE",
        },
        BadInput {
            name: "no role",
            setup: |cli| {
                cli.remove_env("METAFLOW_ECS_S3_ACCESS_IAM_ROLE");
            },
            args: &["run", "--detach", "step.py"],
            names: "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
        },
        BadInput {
            name: "no S3 root",
            setup: |cli| {
                cli.remove_env("METAFLOW_DATASTORE_SYSROOT_S3");
            },
            args: &["run", "--detach", "step.py"],
            names: "METAFLOW_DATASTORE_SYSROOT_S3",
        },
        BadInput {
            name: "nothing configured",
            setup: |cli| {
                cli.remove_env("METAFLOW_DATASTORE_SYSROOT_S3")
                    .remove_env("METAFLOW_BATCH_JOB_QUEUE")
                    .remove_env("METAFLOW_ECS_S3_ACCESS_IAM_ROLE");
            },
            args: &["run", "--detach", "step.py"],
            names: "METAFLOW_DATASTORE_SYSROOT_S3, METAFLOW_BATCH_JOB_QUEUE, METAFLOW_ECS_S3_ACCESS_IAM_ROLE are not set",
        },
    ];
    let mut transcript = String::new();
    let mut first_cli = None;
    for case in cases {
        let mut cli = project(&fake);
        (case.setup)(&mut cli);
        let out: Output = cli.run(case.args);
        let context = format!("{}: {}", case.name, out.render());
        assert_eq!(out.code, Some(2), "{context}");
        assert_eq!(out.stdout, "", "{context}");
        assert!(out.stderr.contains(case.names), "{context}");
        assert_eq!(fake.total_calls(), 0, "{context}");
        // Each case has its own temp dirs: name them alike before the shared filters run.
        let text = out
            .render()
            .replace(&cli.work().display().to_string(), "[WORK]")
            .replace(&cli.home().display().to_string(), "[HOME]");
        transcript.push_str(&format!(
            "### {}\n$ mfbatch {}\n{text}\n",
            case.name,
            case.args.join(" ")
        ));
        first_cli.get_or_insert(cli);
    }
    assert_cli_snapshot(&first_cli.unwrap(), "bad_input", &transcript);
}

#[tokio::test]
async fn negative_numbers_reach_the_validator_which_names_the_flag() {
    let fake = FakeAws::start().await;
    for (flag, value) in [
        ("--memory", "-5"),
        ("--cpu", "-1"),
        ("--gpu", "-2"),
        ("--timeout", "-3"),
        ("--retries", "-1"),
    ] {
        let cli = Cli::new(&fake);
        cli.write("step.py", "print('hi')\n");
        let out = cli.run(&["run", "--detach", flag, value, "step.py"]);
        assert_eq!(out.code, Some(2), "{flag} {value}: {}", out.render());
        assert!(
            out.stderr
                .contains(&format!("invalid value \"{value}\" for {flag}")),
            "{flag} {value}: {}",
            out.stderr
        );
    }
    assert_eq!(fake.total_calls(), 0, "nothing reached AWS");
}

#[tokio::test]
async fn config_shows_each_value_and_where_it_came_from() {
    let fake = FakeAws::start().await;
    let mut cli = Cli::new(&fake);
    cli.set_env("METAFLOW_PROFILE", "dev");
    cli.write_home(
        ".metaflowconfig/config_dev.json",
        r#"{
            "METAFLOW_BATCH_JOB_QUEUE": "shadowed-by-the-environment",
            "METAFLOW_BATCH_CONTAINER_REGISTRY": "registry.example.com/team",
            "METAFLOW_S3_ENDPOINT_URL": "https://user:hunter2@s3.example.com"
        }"#,
    );
    cli.write(
        ".metaflow/config.json",
        r#"{"METAFLOW_DEFAULT_PACKAGE_SUFFIXES": ".py,.sql"}"#,
    );

    let out = cli.run(&["config"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(
        !out.stdout.contains("hunter2"),
        "passwords in URLs are hidden"
    );
    assert_cli_snapshot(&cli, "config_text", &out.render());

    let out = cli.run(&["config", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let doc: Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    let profile = cli.home().join(".metaflowconfig/config_dev.json");
    let project = cli.work().join(".metaflow/config.json");
    let origin = |key: &str| doc[key]["origin"].as_str().map(str::to_owned);
    assert_eq!(
        origin("METAFLOW_BATCH_JOB_QUEUE").as_deref(),
        Some("environment")
    );
    assert_eq!(doc["METAFLOW_BATCH_JOB_QUEUE"]["value"], QUEUE);
    assert_eq!(
        origin("METAFLOW_BATCH_CONTAINER_REGISTRY"),
        Some(format!("profile file {}", profile.display()))
    );
    assert_eq!(
        origin("METAFLOW_DEFAULT_PACKAGE_SUFFIXES"),
        Some(format!("project file {}", project.display()))
    );
    assert_eq!(
        origin("METAFLOW_DATATOOLS_S3ROOT").as_deref(),
        Some("default")
    );
    assert_eq!(
        doc["METAFLOW_DATATOOLS_S3ROOT"]["value"],
        format!("{SYSROOT}/data")
    );
    assert!(doc["METAFLOW_ECS_FARGATE_EXECUTION_ROLE"]["value"].is_null());
    assert_eq!(fake.total_calls(), 0, "config asks AWS nothing");
}

/// Spawns `mfbatch ARGS` in the project with the fake's environment, for tests that signal it.
fn spawn(cli: &Cli, fake: &FakeAws, args: &[&str]) -> std::process::Child {
    spawn_with(cli, fake, args, |_| {})
}

/// [`spawn`], with `adjust` changing the command first (e.g. an environment `Cli` cannot hold).
fn spawn_with(
    cli: &Cli,
    fake: &FakeAws,
    args: &[&str],
    adjust: impl FnOnce(&mut std::process::Command),
) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mfbatch"));
    command
        .args(args)
        .current_dir(cli.work())
        .env_clear()
        .envs(fake.cli_env(cli.home()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    adjust(&mut command);
    command.spawn().expect("spawn mfbatch")
}

#[tokio::test]
async fn the_first_sigterm_while_packaging_a_local_run_leaves_at_once() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    // 4 GiB of zeros without using the disk: packaging it takes many seconds.
    let big = std::fs::File::create(cli.work().join("big.py")).unwrap();
    big.set_len(4 << 30).unwrap();
    drop(big);

    let mut child = spawn(&cli, &fake, &["run", "--local", "step.py"]);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("mfbatch did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let waited = signalled.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("the step did not start"), "{stderr}");
    assert!(!stderr.contains("Packaged"), "{stderr}");
    assert!(waited < Duration::from_secs(3), "took {waited:?} to leave");
}

#[tokio::test]
async fn dry_run_hides_secret_env_values_and_warns_about_them() {
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let out = cli.run(&[
        "run",
        "--dry-run",
        "--env",
        "DB_PASSWORD=hunter2",
        "--env",
        "MODE=fast",
        "step.py",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(has_env(&doc["submitJob"], "DB_PASSWORD", "********"));
    assert!(has_env(&doc["submitJob"], "MODE", "fast"));
    assert!(
        out.stderr.contains("DB_PASSWORD") && out.stderr.contains("batch:DescribeJobs"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"));

    // A real run still sends the value: only what is printed is redacted.
    let out = cli.run(&["run", "--detach", "--env", "DB_PASSWORD=hunter2", "step.py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(has_env(&fake.jobs()[0].submit, "DB_PASSWORD", "hunter2"));
}

#[tokio::test]
async fn run_names_the_settings_a_project_file_chose_and_ignores_one_others_may_write() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    let file = cli.write(
        ".metaflow/config.json",
        r#"{"METAFLOW_DEFAULT_PACKAGE_SUFFIXES": ".py,.sql"}"#,
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    cli.write("query.sql", "select 1");
    let out = cli.run(&["run", "--dry-run", "step.py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(
        out.stderr.contains("Settings from project file")
            && out.stderr.contains("METAFLOW_DEFAULT_PACKAGE_SUFFIXES"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("query.sql"));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli.run(&["run", "--dry-run", "step.py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(
        out.stderr.contains("warning: ignored") && out.stderr.contains("writable by others"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("Settings from project file"));
    assert!(!out.stdout.contains("query.sql"), "the file was not used");
}

#[tokio::test]
async fn a_non_utf8_environment_variable_does_not_stop_any_command() {
    use std::os::unix::ffi::OsStrExt;
    let fake = FakeAws::start().await;
    let cli = project(&fake);
    for args in [&["config"][..], &["run", "--dry-run", "step.py"][..]] {
        let mut child = spawn_with(&cli, &fake, args, |c| {
            c.env("LATIN1_DIR", std::ffi::OsStr::from_bytes(b"/srv/caf\xe9"));
        });
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn out_of_range_values_exit_2_naming_the_flag_or_variable_before_any_aws_call() {
    let fake = FakeAws::start().await;
    let many_tags: Vec<String> = (0..48)
        .flat_map(|i| ["--tag".into(), format!("t{i}=v")])
        .collect();
    // (environment to set, arguments, what stderr must name, what it must not say)
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Vec<&'a str>,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (vec![], vec!["--timeout", "4294967396"], "--timeout", None),
        (vec![], vec!["--timeout", "2147483648"], "--timeout", None),
        (vec![], vec!["--cpu", "1e300"], "--cpu", None),
        (vec![], vec!["--memory", "99999999999999"], "--memory", None),
        (vec![], vec!["--gpu", "4000000000"], "--gpu", None),
        (vec![], vec!["--tag", "k=v(1)"], "--tag", None),
        (vec![], vec!["--tag", "team=a,b"], "--tag", None),
        (
            vec![("METAFLOW_BATCH_DEFAULT_TAGS", r#"{"cost": "x;y"}"#)],
            vec![],
            "METAFLOW_BATCH_DEFAULT_TAGS",
            None,
        ),
        (
            vec![],
            many_tags.iter().map(String::as_str).collect(),
            "--tag",
            Some("--env"),
        ),
        (
            vec![("MFBATCH_POLL_MIN_MS", "60000")],
            vec![],
            "MFBATCH_POLL_MIN_MS",
            None,
        ),
        (
            vec![("MFBATCH_DRAIN_QUIET_MS", "18446744073709551615")],
            vec![],
            "MFBATCH_DRAIN_QUIET_MS",
            None,
        ),
        (
            vec![("AWS_REGION", "us east 1")],
            vec![],
            "region",
            Some("credentials"),
        ),
        (
            vec![("AWS_REGION", "not-a-region!")],
            vec![],
            "AWS_REGION",
            Some("credentials"),
        ),
    ];
    for (env, extra, names, never) in cases {
        let mut cli = project(&fake);
        for (k, v) in &env {
            cli.set_env(k, v);
        }
        let mut args = vec!["run", "--detach"];
        args.extend(extra.iter().copied());
        args.push("step.py");
        let out = cli.run(&args);
        let context = format!("{env:?} {extra:?}: {}", out.render());
        assert_eq!(out.code, Some(2), "{context}");
        assert!(out.stderr.contains(names), "{context}");
        if let Some(never) = never {
            assert!(!out.stderr.contains(never), "{context}");
        }
        assert_eq!(fake.total_calls(), 0, "{context}");
    }
}

#[tokio::test]
async fn tags_derived_from_the_script_and_user_are_made_valid() {
    let fake = FakeAws::start().await;
    let mut cli = project(&fake);
    cli.write("train(v2).py", "print('hi')\n");
    cli.set_env("METAFLOW_USER", "CORP\\jane");
    let out = cli.run(&["run", "--detach", "train(v2).py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let tags = fake.jobs()[0].submit["tags"].clone();
    assert_eq!(tags["mfbatch.script"], "train_v2_.py", "{tags}");
    assert_eq!(tags["mfbatch.user"], "CORP_jane", "{tags}");
    for (key, value) in tags.as_object().unwrap() {
        let text = format!("{key}{}", value.as_str().unwrap());
        assert!(
            text.chars().all(mfbatch::spec::is_tag_char),
            "{key}={value}"
        );
    }
}

#[tokio::test]
async fn the_s3_endpoint_from_the_aws_environment_reaches_the_job() {
    let fake = FakeAws::start().await;
    let mut cli = project(&fake);
    // The service-specific variable wins over AWS_ENDPOINT_URL, for the upload and the job alike.
    cli.set_env("AWS_ENDPOINT_URL_S3", &fake.uri());
    cli.set_env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    cli.set_env("AWS_ENDPOINT_URL_BATCH", &fake.uri());
    let out = cli.run(&["run", "--detach", "step.py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    let submit = &fake.jobs()[0].submit;
    assert!(
        has_env(submit, "METAFLOW_S3_ENDPOINT_URL", &fake.uri()),
        "{:?}",
        env_of(submit)
    );
}

#[tokio::test]
async fn a_dry_run_without_s3_list_bucket_still_plans_and_says_why() {
    let fake = FakeAws::start().await;
    fake.fail_always("HeadObject", Fault::AccessDenied);
    let cli = project(&fake);
    let out = cli.run(&["run", "--dry-run", "step.py"]);
    assert_eq!(out.code, Some(0), "{}", out.render());
    assert!(out.stderr.contains("s3:ListBucket"), "{}", out.stderr);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["package"]["alreadyStored"], false);
    assert!(fake.mutating_calls().is_empty());
}
