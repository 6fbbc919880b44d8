//! `mfbatch serve` end to end on moto (tests/moto/serve.py), driven by the Python client
//! (`clients/python/mfbatch_client.py`) through `clients/python/tests/moto_scenario.py`: three
//! jobs, the daemon SIGKILLed and restarted between two of them, every line of each job once, the
//! exit codes right; then the jobs as moto itself reports them.

#[allow(dead_code)]
mod e2e;

use std::process::Command;

use e2e::{describe_job, moto, run, Backend, StepDir};
use serde_json::Value;

#[test]
fn three_jobs_through_the_python_client_with_a_restart_between_two() {
    let step = StepDir::new(&[]);
    let env_of = step.mfbatch(Backend::Batch, &[]);
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/python/tests/moto_scenario.py"
    );
    let state = step.home().join("serve-state");
    let mut cmd = Command::new(&moto().python);
    cmd.arg(scenario)
        .arg(env!("CARGO_BIN_EXE_mfbatch"))
        .arg(&state)
        .arg(step.script(""))
        .env_clear()
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (key, value) in env_of.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let summary: Value = serde_json::from_str(out.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e})\n{}", out.describe()));
    for (name, status, code) in [
        ("a", "SUCCEEDED", 0),
        ("b", "FAILED", 3),
        ("c", "SUCCEEDED", 0),
    ] {
        let job_id = summary[name]["job_id"].as_str().expect("a job id");
        assert_eq!(summary[name]["exit_code"], code, "{summary}");
        let job = describe_job(job_id);
        assert_eq!(job["status"], status, "{name}: {job:#}");
        assert_eq!(job["container"]["exitCode"], code, "{name}: {job:#}");
    }
}
