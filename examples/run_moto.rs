//! `mfbatch run` of a three-line job against moto (the e2e emulator, `tests/moto/serve.py`):
//! wall time, the time from the job's last line being readable in CloudWatch to mfbatch's exit,
//! the job's own run time, and the AWS calls of a warm run by API. The baseline, in the same
//! process: the same runs with the job's end records switched off (`--env MFBATCH_END_NONCE=`),
//! which is how every run ended before them (waiting for the log stream to go quiet).
//!
//! `cargo build --release && cargo run --release --example run_moto -- [--runs N] [--baseline-runs N]`

#[path = "../benches/support/mod.rs"]
mod measure;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use measure::{arg, median, ms};

const STEP: &str = "print('one')\nprint('two')\nprint('three')\n";

struct Moto {
    child: Child,
    info: serde_json::Value,
}

impl Moto {
    fn start(repo: &Path) -> Moto {
        let setup = Command::new(repo.join("tests/moto/setup-venv.sh"))
            .output()
            .expect("run tests/moto/setup-venv.sh");
        let python = String::from_utf8_lossy(&setup.stdout)
            .lines()
            .last()
            .expect("setup-venv.sh prints the venv's python")
            .trim()
            .to_owned();
        let mut child = Command::new(python)
            .arg(repo.join("tests/moto/serve.py"))
            .args(["--port", "0", "--count-calls"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start serve.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("serve.py's JSON line");
        let info = serde_json::from_str(&line).expect("serve.py prints JSON");
        Moto { child, info }
    }

    fn endpoint(&self) -> &str {
        self.info["endpoint"].as_str().unwrap()
    }

    /// AWS calls received so far, by `service:operation`.
    fn calls(&self) -> BTreeMap<String, u64> {
        let address = self.endpoint().trim_start_matches("http://").to_owned();
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET /mfbatch/calls HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// One measured run.
struct Sample {
    wall: Duration,
    /// From the last line's CloudWatch ingestion to mfbatch's exit.
    after_last_line: Duration,
    /// The job's container, from startedAt to stoppedAt.
    job_run: Duration,
    calls: BTreeMap<String, u64>,
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn run_once(
    binary: &Path,
    moto: &Moto,
    dir: &Path,
    extra: &[&str],
    clients: &Clients,
    rt: &tokio::runtime::Runtime,
) -> Sample {
    let info = &moto.info;
    let before = moto.calls();
    let started = Instant::now();
    let out = Command::new(binary)
        .args(["run", "step.py"])
        .args(extra)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("NO_COLOR", "1")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", info["region"].as_str().unwrap())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "METAFLOW_DATASTORE_SYSROOT_S3",
            format!("s3://{}/metaflow", info["bucket"].as_str().unwrap()),
        )
        .env("METAFLOW_BATCH_JOB_QUEUE", info["queue"].as_str().unwrap())
        .env(
            "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
            info["role_arn"].as_str().unwrap(),
        )
        .env("METAFLOW_BATCH_CONTAINER_IMAGE", "python:3.11")
        .output()
        .expect("run mfbatch");
    let wall = started.elapsed();
    let exited_ms = epoch_ms();
    let after = moto.calls();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "one\ntwo\nthree\n",
        "mfbatch run failed:\n{stderr}"
    );
    let job_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Submitted ")?.split(['(', ')']).nth(1))
        .expect("the Submitted line names the job")
        .to_owned();
    let calls = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let (job_run, last_ingested) = rt.block_on(job_facts(clients, &job_id));
    Sample {
        wall,
        after_last_line: Duration::from_millis((exited_ms - last_ingested).max(0) as u64),
        job_run,
        calls,
    }
}

type Clients = (aws_sdk_batch::Client, aws_sdk_cloudwatchlogs::Client);

/// The job's run time and when its last line (not an end record) was ingested.
async fn job_facts(clients: &Clients, job_id: &str) -> (Duration, i64) {
    let (batch, logs) = clients;
    // Batch may mark the job a moment after mfbatch (which read the end records) left.
    let mut job = None;
    for _ in 0..100 {
        let out = batch.describe_jobs().jobs(job_id).send().await.unwrap();
        let detail = out.jobs()[0].clone();
        if detail.stopped_at().is_some() {
            job = Some(detail);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = job.expect("the job stopped");
    let run = (job.stopped_at().unwrap() - job.started_at().unwrap()).max(0) as u64;
    let stream = job
        .container()
        .unwrap()
        .log_stream_name()
        .unwrap()
        .to_owned();
    let events = logs
        .get_log_events()
        .log_group_name("/aws/batch/job")
        .log_stream_name(stream)
        .start_from_head(true)
        .send()
        .await
        .unwrap();
    let last = events
        .events()
        .iter()
        .filter(|e| !e.message().unwrap_or_default().starts_with("mfbatch-end:"))
        .filter_map(|e| e.ingestion_time())
        .max()
        .expect("the job's lines");
    (Duration::from_millis(run), last)
}

fn report(name: &str, samples: &mut [Sample]) -> (Duration, Duration) {
    let wall = median(&mut samples.iter().map(|s| s.wall).collect::<Vec<_>>());
    let after = median(
        &mut samples
            .iter()
            .map(|s| s.after_last_line)
            .collect::<Vec<_>>(),
    );
    let job = median(&mut samples.iter().map(|s| s.job_run).collect::<Vec<_>>());
    let calls: Vec<u64> = samples.iter().map(|s| s.calls.values().sum()).collect();
    println!(
        "{name:<34} wall {:>7.0} ms   after last line {:>7.0} ms   job run {:>5.0} ms   wall - job {:>6.0} ms   calls {:?}",
        ms(wall),
        ms(after),
        ms(job),
        ms(wall.saturating_sub(job)),
        calls
    );
    let last = samples.last().unwrap();
    println!("{:<34} calls of the last run by API: {:?}", "", last.calls);
    (wall, after)
}

fn main() {
    let (runs, baseline_runs) = (arg("--runs", 7), arg("--baseline-runs", 3));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("mfbatch"))
        .filter(|p| p.exists())
        .expect("build the binary first: cargo build --release");
    let moto = Moto::start(&repo);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("step.py"), STEP).unwrap();
    std::fs::create_dir(dir.path().join("home")).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    // The same client setup mfbatch uses, pointed at moto.
    for (key, value) in [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(key, value);
    }
    let clients: Clients = rt.block_on(async {
        let clients = mfbatch::aws::Clients::from_environment(&Default::default())
            .await
            .expect("clients for moto");
        (clients.batch, clients.logs)
    });

    let cold = run_once(&binary, &moto, dir.path(), &[], &clients, &rt);
    println!(
        "cold run: wall {:.0} ms, calls {:?}",
        ms(cold.wall),
        cold.calls
    );
    let mut new: Vec<Sample> = (0..runs)
        .map(|_| run_once(&binary, &moto, dir.path(), &[], &clients, &rt))
        .collect();
    let mut old: Vec<Sample> = (0..baseline_runs)
        .map(|_| {
            run_once(
                &binary,
                &moto,
                dir.path(),
                &["--env", "MFBATCH_END_NONCE="],
                &clients,
                &rt,
            )
        })
        .collect();
    println!("medians of warm runs ({runs} with end records, {baseline_runs} without):");
    let (new_wall, new_after) = report("end records (now)", &mut new);
    let (old_wall, old_after) = report("no end records (drain, before)", &mut old);
    println!(
        "ratio now/before: wall {:.3}, after last line {:.3}",
        new_wall.as_secs_f64() / old_wall.as_secs_f64(),
        new_after.as_secs_f64() / old_after.as_secs_f64().max(0.001)
    );
}
