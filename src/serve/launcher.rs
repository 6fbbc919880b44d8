//! `launch`: the same options as `mfbatch run`, validated the same way, then packaged, staged
//! and submitted under the key's journal entry, so that a key makes at most one job.
//!
//! The job's name ends with the first 12 hex digits of the key's SHA-256 and its tags carry the
//! key (`mfbatch.key`) and the journaled request id: after a crash, a replayed key finds the job
//! its earlier launch may have created (ListJobs by name, DescribeJobs tags) before sending
//! SubmitJob again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::journal::Record;
use super::protocol::{RpcError, INVALID_LAUNCH};
use super::Daemon;
use crate::event::{Event, EventSink};
use crate::launch::{self, submit::REQUEST_ID_TAG};
use crate::settings::{self, BatchKey, Key, Sources};
use crate::spec::{build_spec, JobSpec, RunOptions, ScheduleOptions, MAX_NAME_LEN};
use crate::track::array::ArrayFollow;
use crate::track::nodes::NodeFollow;

/// The tag carrying the client's key (its SHA-256 when the key is no valid tag value).
pub const KEY_TAG: &str = "mfbatch.key";

/// The longest key.
pub const MAX_KEY_CHARS: usize = 512;

/// `launch` params: `mfbatch run`'s options as their flags' text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchParams {
    pub key: String,
    pub script: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<String>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<String>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub gpu: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<String>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub retries: Option<String>,
    #[serde(default)]
    pub retry_any_failure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_suffixes: Option<String>,
    /// Settings as flags: `queue`, `iam_role`, `image`, `execution_role`, `datastore_root`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    // `run`'s arrays and scheduling flags. Left out of the hash while unset, so keys journaled
    // before they existed keep their identity.
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub array: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub array_sequential: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_args: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub nodes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(
        default,
        deserialize_with = "flag_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// An array's first this many failed children get their last lines in `child_log_tail`
    /// (`--show-failed`); not part of the key's identity.
    #[serde(default, skip_serializing)]
    pub show_failed: Option<usize>,
    /// Follow the job's logs (status is always followed); not part of the key's identity.
    #[serde(default = "yes", skip_serializing)]
    pub logs: bool,
    /// Follow the job at all once submitted; not part of the key's identity.
    #[serde(default = "yes", skip_serializing)]
    pub follow: bool,
}

fn yes() -> bool {
    true
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A flag's text, also given as a JSON number (`"array": 3` is `--array 3`).
fn flag_text<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(Option::<Text>::deserialize(de)?.map(|t| match t {
        Text::Text(text) => text,
        Text::Number(n) => n.to_string(),
    }))
}

impl LaunchParams {
    /// What makes two launches of one key the same: every option, canonical JSON, hashed.
    pub fn hash(&self) -> String {
        let mut value = serde_json::to_value(self).expect("serializes");
        value.as_object_mut().expect("an object").remove("key");
        hex(&Sha256::digest(value.to_string().as_bytes()))[..32].to_owned()
    }

    /// Resolves the settings and builds the spec exactly as `mfbatch run` does.
    pub fn validate(&self, sources: &Sources) -> Result<JobSpec, RpcError> {
        if self.key.is_empty() || self.key.chars().count() > MAX_KEY_CHARS {
            return Err(invalid(
                format!("key must be 1-{MAX_KEY_CHARS} characters"),
                "key",
                None,
            ));
        }
        let mut flags = BTreeMap::new();
        for (name, value) in &self.settings {
            let key = match name.as_str() {
                "queue" => Key::BatchJobQueue,
                "iam_role" => Key::EcsS3AccessIamRole,
                "image" => Key::BatchContainerImage,
                "execution_role" => Key::EcsFargateExecutionRole,
                "datastore_root" => Key::DatastoreSysrootS3,
                other => {
                    return Err(invalid(
                        format!("unknown setting {other:?} (queue, iam_role, image, execution_role, datastore_root)"),
                        "settings",
                        None,
                    ))
                }
            };
            flags.insert(key, value.clone());
        }
        // `run` takes these two as settings too (flags above the environment and config files).
        let scheduling = [
            (BatchKey::Priority, &self.priority),
            (BatchKey::Share, &self.share),
        ];
        for (key, value) in scheduling {
            if let Some(value) = value {
                flags.insert(Key::Batch(key), value.clone());
            }
        }
        let sources = Sources {
            flags,
            ..sources.clone()
        };
        let config = |e: crate::error::ConfigError| {
            let hint = e.hint();
            invalid(e.to_string(), "", hint)
        };
        let settings = settings::resolve(&sources).map_err(config)?;
        let options = RunOptions {
            script: self.script.clone(),
            root: self.root.clone(),
            args: self.args.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            gpu: self.gpu.clone(),
            env: self.env.clone(),
            tags: self.tags.clone(),
            name: self.name.clone(),
            python: self.python.clone(),
            timeout_seconds: self.timeout.clone(),
            retries: self.retries.clone(),
            retry_any_failure: self.retry_any_failure,
            local: false,
            extra_suffixes: self.package_suffixes.clone(),
            schedule: ScheduleOptions {
                array: self.array.clone(),
                array_sequential: self.array_sequential,
                array_args: self.array_args.clone(),
                nodes: self.nodes.clone(),
                depends_on: self.depends_on.clone(),
            },
        };
        build_spec(&settings, &options).map_err(|e| {
            let field = match &e {
                crate::error::ConfigError::InvalidFlag { flag, .. } => *flag,
                _ => "",
            };
            let hint = e.hint();
            invalid(e.to_string(), field, hint)
        })
    }
}

impl LaunchParams {
    /// How to follow the job: an array (2 or more children) as one thing, like `run` does.
    pub fn array_follow(&self) -> Option<ArrayFollow> {
        let size: u32 = self.array.as_deref()?.trim().parse().ok()?;
        (size > 1).then(|| ArrayFollow {
            show_failed: self
                .show_failed
                .unwrap_or(ArrayFollow::default().show_failed),
            ..ArrayFollow::default()
        })
    }
}

impl LaunchParams {
    /// How to follow a multi-node job (2 or more nodes) as one thing, with `show_failed`.
    pub fn node_follow(&self) -> Option<NodeFollow> {
        let size: u32 = self.nodes.as_deref()?.trim().parse().ok()?;
        (size > 1).then(|| NodeFollow {
            show_failed: self
                .show_failed
                .unwrap_or(NodeFollow::default().show_failed),
            ..NodeFollow::default()
        })
    }
}

fn invalid(message: String, field: &str, hint: Option<String>) -> RpcError {
    RpcError::new(INVALID_LAUNCH, message).with_data(json!({
        "kind": "usage",
        "field": (!field.is_empty()).then_some(field),
        "hint": hint,
    }))
}

/// The job name for a key: the spec's name, shortened, then `-` and 12 hex digits of the key.
pub fn keyed_name(name: &str, key: &str) -> String {
    let digest = hex(&Sha256::digest(key.as_bytes()));
    let mut base = name.to_owned();
    base.truncate(MAX_NAME_LEN - 13);
    format!("{}-{}", base.trim_end_matches('-'), &digest[..12])
}

/// The key as a tag value (tag values allow letters, digits, spaces and `_.:/=+-@`, ≤ 256).
fn key_tag(key: &str) -> String {
    if key.len() <= 256 && key.chars().all(crate::spec::is_tag_char) {
        key.to_owned()
    } else {
        format!("sha256:{}", hex(&Sha256::digest(key.as_bytes())))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a launch ended.
#[derive(Debug, Clone)]
pub enum Settled {
    Submitted {
        job_id: String,
    },
    /// No job (or, after a failed SubmitJob, none known: the key's intent stays journaled).
    Failed {
        event: Value,
    },
}

/// One launch in progress, shared by every request for its key.
pub struct Launch {
    pub key: String,
    pub params_hash: String,
    pub settled: watch::Sender<Option<Settled>>,
    /// Asked to stop; honoured until SubmitJob is sent.
    pub cancelled: AtomicBool,
    pub submitting: AtomicBool,
}

/// What the launch task needs from its journal entry.
pub struct Intent {
    pub request_id: String,
    pub job_name: String,
    pub t: i64,
    /// The journal had this intent already (a replay after a crash): look for its job first.
    pub replayed: bool,
}

/// Packages, stages and submits; settles `launch` either way.
pub async fn run(
    daemon: Arc<Daemon>,
    launch: Arc<Launch>,
    spec: JobSpec,
    intent: Intent,
    admitted: super::admission::Admitted,
    events: EventSink,
) {
    let result = stage_and_submit(&daemon, &launch, spec, &intent, &events).await;
    drop(admitted);
    let settled = match result {
        Ok(job_id) => Settled::Submitted { job_id },
        Err((stage, message, hint)) => {
            // Before SubmitJob no job can exist: the key may be launched again afresh. After
            // it, the intent stays, so a relaunch looks for the job first.
            if stage != "submit" {
                let record = Record::Failed {
                    key: launch.key.clone(),
                    error: message.clone(),
                };
                let _ = daemon.journal_append(record).await;
            }
            Settled::Failed {
                event: json!({
                    "event": "launch_failed", "key": launch.key, "stage": stage,
                    "error": message, "hint": hint,
                }),
            }
        }
    };
    daemon.launch_settled(&launch, settled);
}

type StageError = (&'static str, String, Option<String>);

async fn stage_and_submit(
    daemon: &Daemon,
    launch: &Launch,
    spec: JobSpec,
    intent: &Intent,
    events: &EventSink,
) -> Result<String, StageError> {
    let failed =
        |stage: &'static str| move |e: launch::LaunchError| (stage, error_text(&e), e.hint());
    let cancelled = || {
        (
            "cancelled",
            "stopped before SubmitJob: no job was created".to_owned(),
            None,
        )
    };
    let staged = {
        let _slot = daemon.admission.staging().await;
        if launch.cancelled.load(Ordering::Acquire) {
            return Err(cancelled());
        }
        let prepared = launch::prepare(spec, events)
            .await
            .map_err(failed("package"))?;
        let plan = launch::plan_cached(&daemon.clients, &prepared, &daemon.cache)
            .await
            .map_err(failed("plan"))?;
        for warning in &plan.warnings {
            events(Event::Warning(warning.clone()));
        }
        let staged = launch::stage(&daemon.clients, &prepared, plan, events)
            .await
            .map_err(failed("stage"))?;
        daemon.cache.remember_staged(&staged);
        staged
    };
    let mut staged = staged;
    let request = &mut staged.submit_job;
    request.job_name = intent.job_name.clone();
    request
        .tags
        .insert(REQUEST_ID_TAG.into(), intent.request_id.clone());
    request.tags.insert(KEY_TAG.into(), key_tag(&launch.key));
    request
        .check_limits()
        .map_err(|e| failed("plan")(e.into()))?;
    daemon.admission.submit_budget.acquire().await;
    if launch.cancelled.load(Ordering::Acquire) {
        return Err(cancelled());
    }
    launch.submitting.store(true, Ordering::Release);
    if intent.replayed {
        let found = staged
            .submit_job
            .find_sent(&daemon.clients.batch, intent.t)
            .await
            .map_err(|e| failed("submit")(e.into()))?;
        if let Some(job_id) = found {
            events(Event::Submitted {
                job_id: job_id.clone(),
                job_name: staged.submit_job.job_name.clone(),
                queue: staged.submit_job.job_queue.clone(),
            });
            return daemon.journal_submitted(&launch.key, job_id).await;
        }
    }
    let submitted = launch::submit(&daemon.clients, staged, events)
        .await
        .map_err(failed("submit"))?;
    daemon
        .journal_submitted(&launch.key, submitted.job_id)
        .await
}

/// The error and its causes, in one line.
fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_end_with_the_key_hash_and_stay_valid() {
        let name = keyed_name(&"a".repeat(200), "flow/1/step/2");
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(crate::spec::JobName::parse("--name", &name).is_ok());
        assert_ne!(keyed_name("n", "k1"), keyed_name("n", "k2"));
        assert_eq!(key_tag("flow/1/step/2"), "flow/1/step/2");
        assert!(key_tag("a\nb").starts_with("sha256:"));
    }

    #[test]
    fn resources_take_numbers_and_hash_as_their_text() {
        let numbers: LaunchParams = serde_json::from_value(json!({
            "key": "k", "script": "s.py", "cpu": 1, "memory": 4096, "gpu": 0,
            "timeout": 60, "retries": 2, "priority": 0.5
        }))
        .unwrap();
        let text: LaunchParams = serde_json::from_value(json!({
            "key": "k", "script": "s.py", "cpu": "1", "memory": "4096", "gpu": "0",
            "timeout": "60", "retries": "2", "priority": "0.5"
        }))
        .unwrap();
        assert_eq!(numbers.cpu.as_deref(), Some("1"));
        assert_eq!(numbers.memory.as_deref(), Some("4096"));
        assert_eq!(
            numbers.hash(),
            text.hash(),
            "one launch, whichever way written"
        );
    }

    #[test]
    fn scheduling_flags_take_numbers_and_leave_old_hashes_alone() {
        let plain = LaunchParams {
            key: "a".into(),
            script: "s.py".into(),
            ..Default::default()
        };
        let text = serde_json::to_string(&plain).unwrap();
        for field in [
            "array",
            "nodes",
            "depends_on",
            "priority",
            "share",
            "show_failed",
        ] {
            assert!(!text.contains(field), "{field} in {text}");
        }
        let p: LaunchParams = serde_json::from_value(
            json!({"key": "k", "script": "s.py", "array": 3, "priority": "7", "show_failed": 2}),
        )
        .unwrap();
        assert_eq!(
            (p.array.as_deref(), p.priority.as_deref()),
            (Some("3"), Some("7"))
        );
        assert_eq!(p.array_follow().map(|a| a.show_failed), Some(2));
        let one: LaunchParams =
            serde_json::from_value(json!({"key": "k", "script": "s.py", "array": "1"})).unwrap();
        assert!(one.array_follow().is_none(), "an array of 1 is a plain job");
        assert!(p.node_follow().is_none());
        let nodes: LaunchParams = serde_json::from_value(
            json!({"key": "k", "script": "s.py", "nodes": 4, "show_failed": 0}),
        )
        .unwrap();
        assert_eq!(nodes.node_follow().map(|n| n.show_failed), Some(0));
        assert!(nodes.array_follow().is_none());
        assert!(serde_json::from_value::<LaunchParams>(
            json!({"key": "k", "script": "s.py", "array": [3]})
        )
        .is_err());
    }

    #[test]
    fn the_hash_ignores_the_key_and_what_to_follow() {
        let a = LaunchParams {
            key: "a".into(),
            script: "s.py".into(),
            ..Default::default()
        };
        let b = LaunchParams {
            key: "b".into(),
            logs: false,
            ..a.clone()
        };
        assert_eq!(a.hash(), b.hash());
        let c = LaunchParams {
            cpu: Some("2".into()),
            ..a.clone()
        };
        assert_ne!(a.hash(), c.hash());
    }
}
