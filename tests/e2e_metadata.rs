//! End-to-end: `mfbatch run` on moto records the job in Metaflow's metadata, and Metaflow's own
//! client (2.19, from PyPI) reads it back: through metaflow-local-service (the service API), and
//! from the local `.metaflow` tree. The service down then up: the spool is sent by `mfbatch
//! metadata sync`, once. `logs FLOW/RUN/STEP/TASK` after Batch forgot the job.
//!
//! Needs tests/moto/setup-venv.sh and tests/metadata/setup-venv.sh (run on first use).

// The shared harness: this binary uses only part of it.
#[allow(dead_code)]
mod e2e;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{eventually, moto, run, Backend, StepDir};
use serde_json::Value;

fn metadata_python() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metadata/setup-venv.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .expect("run setup-venv.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("a python path").trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// metaflow-local-service on `port`, writing under `root`; killed on drop.
struct LocalService(Child);

impl LocalService {
    fn start(port: u16, root: &Path) -> LocalService {
        let code = "import sys, uvicorn\n\
                    from metaflow_local_service.server import create_app\n\
                    uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')\n";
        let child = Command::new(metadata_python())
            .args(["-c", code])
            .arg(root)
            .arg(port.to_string())
            .current_dir(root)
            .stdin(Stdio::null())
            .spawn()
            .expect("start metaflow-local-service");
        assert!(
            eventually(Duration::from_secs(30), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "metaflow-local-service did not listen on {port}"
        );
        LocalService(child)
    }
}

impl Drop for LocalService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What Metaflow's client says of `flow`'s latest run and its `step`'s task.
fn read_back(env: &[(&str, String)], flow: &str, step: &str) -> Value {
    let code = "import json, sys\n\
                from metaflow import Flow, namespace\n\
                namespace(None)\n\
                run = Flow(sys.argv[1]).latest_run\n\
                task = run[sys.argv[2]].task\n\
                fields = [m.name for m in task.metadata]\n\
                print(json.dumps({'run': run.id, 'task': task.id, 'md': task.metadata_dict,\n\
                                  'job_id_count': fields.count('aws-batch-job-id'), 'pathspec': task.pathspec}))\n";
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(metadata_python())
        .args(["-c", code, flow, step])
        .env_clear()
        .env("HOME", home.path())
        .env("USERNAME", "tester")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run Metaflow's client");
    assert!(
        out.status.success(),
        "Metaflow's client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the client")
}

/// The job id from `--output json` events.
fn submitted_job_id(stdout: &str) -> String {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "submitted")
        .and_then(|e| e["job_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no submitted event in {stdout}"))
}

#[test]
fn service_records_are_read_by_metaflows_client() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let _service = LocalService::start(port, root.path());
    let url = format!("http://127.0.0.1:{port}");
    let step = StepDir::new(&[("ok.py", "print('fine')\n")]);
    let mut cmd = step.run_command(
        Backend::Batch,
        "ok.py",
        &["--flow", "MfbFlow", "--step", "work", "--output", "json"],
    );
    cmd.env("METAFLOW_DEFAULT_METADATA", "service")
        .env("METAFLOW_SERVICE_URL", &url);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let job_id = submitted_job_id(&out.stdout);
    let recorded = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "metadata")
        .unwrap_or_else(|| panic!("a metadata event: {}", out.describe()));
    assert!(
        recorded["pathspec"]
            .as_str()
            .is_some_and(|p| p.starts_with("MfbFlow/"))
            && recorded["pending"] == 0,
        "{recorded}"
    );

    let got = read_back(
        &[
            ("METAFLOW_DEFAULT_METADATA", "service".into()),
            ("METAFLOW_SERVICE_URL", url),
        ],
        "MfbFlow",
        "work",
    );
    assert_eq!(got["md"]["aws-batch-job-id"], job_id.as_str(), "{got:#}");
    assert_eq!(got["md"]["attempt_ok"], "True", "{got:#}");
    assert_eq!(got["md"]["aws-batch-jq-name"], moto().info.queue.as_str());
    assert_eq!(got["job_id_count"], 1);
}

#[test]
fn local_metadata_then_logs_by_pathspec_after_batch_forgot() {
    let step = StepDir::new(&[("bad.py", "print('about to fail')\nraise SystemExit(3)\n")]);
    let sysroot = tempfile::tempdir().unwrap();
    let local = |mut cmd: Command| {
        cmd.env("METAFLOW_DEFAULT_METADATA", "local")
            .env("METAFLOW_DATASTORE_SYSROOT_LOCAL", sysroot.path());
        cmd
    };
    let out = run(local(step.run_command(
        Backend::Batch,
        "bad.py",
        &["--output", "json"],
    )));
    assert_eq!(
        out.code,
        Some(3),
        "the job's exit code, unchanged\n{}",
        out.describe()
    );
    let job_id = submitted_job_id(&out.stdout);

    let got = read_back(
        &[
            ("METAFLOW_DEFAULT_METADATA", "local".into()),
            (
                "METAFLOW_DATASTORE_SYSROOT_LOCAL",
                sysroot.path().display().to_string(),
            ),
        ],
        "BadFlow",
        "bad",
    );
    assert_eq!(got["md"]["aws-batch-job-id"], job_id.as_str(), "{got:#}");
    assert_eq!(got["md"]["attempt_ok"], "False", "{got:#}");
    let pathspec = got["pathspec"].as_str().unwrap().to_owned();

    // Batch forgets the job; its logs are still found through the metadata.
    let forget = format!("{}/mfbatch/forget/{job_id}", moto().info.endpoint);
    let forgot = Command::new(&moto().python)
        .args([
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(sys.argv[1]).read()",
            &forget,
        ])
        .status()
        .unwrap();
    assert!(forgot.success());
    let status = run(local(step.mfbatch(Backend::Batch, &["status", &job_id])));
    assert_ne!(
        status.code,
        Some(0),
        "moto should have forgotten {job_id}\n{}",
        status.describe()
    );
    let logs = run(local(step.mfbatch(Backend::Batch, &["logs", &pathspec])));
    logs.assert(0, &["about to fail"]);
    let by_run = run(local(step.mfbatch(Backend::Batch, &["status", &pathspec])));
    assert!(
        by_run.stdout.contains("FAILED") && by_run.stdout.contains(&job_id),
        "{}",
        by_run.describe()
    );
}

#[test]
fn service_down_then_up_spool_is_sent_once() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let step = StepDir::new(&[("later.py", "print('ran anyway')\n")]);
    let mut cmd = step.run_command(Backend::Batch, "later.py", &["--flow", "LaterFlow"]);
    cmd.env("METAFLOW_DEFAULT_METADATA", "service")
        .env("METAFLOW_SERVICE_URL", &url);
    let out = run(cmd);
    out.assert(0, &["ran anyway"]);
    assert!(
        out.stderr.contains("metadata records pending"),
        "{}",
        out.describe()
    );

    let _service = LocalService::start(port, root.path());
    let mut sync = step.mfbatch(Backend::Batch, &["metadata", "sync"]);
    sync.env("METAFLOW_DEFAULT_METADATA", "service")
        .env("METAFLOW_SERVICE_URL", &url);
    let synced = run(sync);
    assert_eq!(synced.code, Some(0), "{}", synced.describe());
    let got = read_back(
        &[
            ("METAFLOW_DEFAULT_METADATA", "service".into()),
            ("METAFLOW_SERVICE_URL", url.clone()),
        ],
        "LaterFlow",
        "later",
    );
    assert_eq!(got["md"]["attempt_ok"], "True", "{got:#}");
    assert_eq!(got["job_id_count"], 1, "recorded once: {got:#}");
    // Nothing left: a second sync sends nothing.
    let mut again = step.mfbatch(Backend::Batch, &["metadata", "sync"]);
    again
        .env("METAFLOW_DEFAULT_METADATA", "service")
        .env("METAFLOW_SERVICE_URL", &url);
    let again = run(again);
    assert!(
        again.stderr.contains("Sent 0 spooled"),
        "{}",
        again.describe()
    );
}
