//! Shared by every integration test: the stateful fake AWS ([`fake_aws`]), a runner for the
//! `mfbatch` binary as a user runs it ([`cli`]), and file-tree helpers.
// Each test crate uses a different part of this module.
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod fake_aws;
pub mod flaky_proxy;

use std::path::{Path, PathBuf};

pub use fake_aws::*;

/// The settings a test job runs with: the fake's bucket, queue, role and image, `env`
/// overriding them (`None` removes a setting).
pub fn test_sources(root: &Path, env: &[(&str, Option<&str>)]) -> mfbatch::settings::Sources {
    let mut vars: std::collections::BTreeMap<String, String> = [
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
    mfbatch::settings::Sources {
        flags: Default::default(),
        env: vars,
        cwd: root.to_owned(),
    }
}

/// The spec for `options.script` (default `root/step.py`) with [`test_sources`].
pub fn test_spec(
    root: &Path,
    env: &[(&str, Option<&str>)],
    options: mfbatch::spec::RunOptions,
) -> mfbatch::spec::JobSpec {
    let settings = mfbatch::settings::resolve(&test_sources(root, env)).expect("settings resolve");
    let script = if options.script.as_os_str().is_empty() {
        root.join("step.py")
    } else {
        options.script.clone()
    };
    mfbatch::spec::build_spec(&settings, &mfbatch::spec::RunOptions { script, ..options })
        .expect("a valid spec")
}

/// A sink that keeps every event, and the events it kept.
pub fn recording_sink() -> (
    mfbatch::event::EventSink,
    std::sync::Arc<std::sync::Mutex<Vec<mfbatch::event::Event>>>,
) {
    let events: std::sync::Arc<std::sync::Mutex<Vec<mfbatch::event::Event>>> = Default::default();
    let kept = events.clone();
    (
        std::sync::Arc::new(move |e| kept.lock().unwrap().push(e)),
        events,
    )
}

/// Waits (10 s at most) until one of the kept events matches.
pub async fn wait_for_event(
    events: &std::sync::Mutex<Vec<mfbatch::event::Event>>,
    matches: impl Fn(&mfbatch::event::Event) -> bool,
) {
    for _ in 0..500 {
        if events.lock().unwrap().iter().any(&matches) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no such event: {:?}", events.lock().unwrap());
}

/// Writes `contents` at `root/rel`, creating parent directories; returns the path.
pub fn write_file(root: &Path, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directories");
    }
    std::fs::write(&path, contents).expect("write file");
    path
}

/// Lowercase hex SHA-256, computed independently of the code under test.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` bytes that gzip cannot shrink, the same for the same seed.
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0u8; n];
    rng.fill(&mut out);
    out
}

/// A list of `{"name"|"type": …, "value": …}` objects (environment, resource requirements) as
/// pairs, in order.
pub fn name_values(list: &serde_json::Value) -> Vec<(String, String)> {
    list.as_array()
        .expect("a list of name/value objects")
        .iter()
        .map(|kv| {
            let name = kv
                .get("name")
                .or_else(|| kv.get("type"))
                .and_then(|v| v.as_str());
            let value = kv["value"].as_str();
            (name.unwrap().to_owned(), value.unwrap().to_owned())
        })
        .collect()
}

/// A tracker that polls and reads in milliseconds, with budgets that never get in the way, per
/// stream (the sweeps' tests ask for them): for tests of what is delivered, not of pacing.
pub fn fast_tracker_config() -> mfbatch::track::TrackerConfig {
    use std::time::Duration;
    mfbatch::track::TrackerConfig {
        batch_calls_per_second: 2000.0,
        logs_calls_per_second: 2000.0,
        filter_calls_per_second: 2000.0,
        log_mode: mfbatch::track::LogMode::PerStream,
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(40),
        log_min_interval: Duration::from_millis(2),
        log_max_interval: Duration::from_millis(20),
        sweep_interval: Duration::from_millis(20),
        drain_quiet: Duration::from_millis(150),
        drain_max: Duration::from_secs(10),
        not_found_grace: Duration::from_secs(5),
        status_failure_warning: Duration::from_secs(1),
        status_failure_limit: Duration::from_secs(3),
        runnable_warning: Duration::from_secs(3600),
        ..mfbatch::track::TrackerConfig::default()
    }
}
