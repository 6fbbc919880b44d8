//! Finding a run's jobs again from its metadata, for `mfbatch logs FLOW/RUN[/STEP[/TASK]]` and
//! `mfbatch status FLOW/RUN`: each task's Batch job id and, per attempt, its log stream, so the
//! logs can be read even after Batch has forgotten the job.

use std::collections::BTreeMap;

use serde_json::Value;

use super::local;
use super::service::ServiceClient;
use super::{Backend, MetadataError, Pathspec};

/// One attempt of one task, as its metadata recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptInfo {
    /// Metaflow's attempt (0-based).
    pub attempt: u32,
    pub job_id: Option<String>,
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
    pub region: Option<String>,
    /// `attempt_ok`, once the attempt ended.
    pub ok: Option<bool>,
}

/// One task and its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskJobs {
    pub pathspec: Pathspec,
    pub attempts: Vec<AttemptInfo>,
}

impl TaskJobs {
    /// The task's Batch job (every attempt is the same job).
    pub fn job_id(&self) -> Option<&str> {
        self.attempts.iter().rev().find_map(|a| a.job_id.as_deref())
    }
}

/// The tasks under `spec`, with what their metadata says of their jobs.
pub async fn find(backend: &Backend, spec: &Pathspec) -> Result<Vec<TaskJobs>, MetadataError> {
    match backend {
        Backend::Local(root) => find_local(root, spec),
        Backend::Service(s) => {
            let client = ServiceClient::new(&s.url, s.headers.clone())?;
            find_service(&client, spec).await
        }
    }
}

fn not_found(what: String, backend: String) -> MetadataError {
    MetadataError::NotFound { what, backend }
}

fn find_local(root: &std::path::Path, spec: &Pathspec) -> Result<Vec<TaskJobs>, MetadataError> {
    let run_dir = root.join(&spec.flow).join(&spec.run);
    if !run_dir.join("_meta").is_dir() {
        return Err(not_found(
            format!("run {}/{}", spec.flow, spec.run),
            format!("local metadata {}", root.display()),
        ));
    }
    let steps = match &spec.step {
        Some(step) => vec![step.clone()],
        None => local::children(&run_dir),
    };
    let mut found = Vec::new();
    for step in steps {
        let tasks = match &spec.task {
            Some(task) => vec![task.clone()],
            None => local::children(&run_dir.join(&step)),
        };
        for task in tasks {
            let metadata = local::task_metadata(&run_dir.join(&step).join(&task));
            found.push(task_jobs(spec, &step, &task, &metadata));
        }
    }
    Ok(found)
}

async fn find_service(
    client: &ServiceClient,
    spec: &Pathspec,
) -> Result<Vec<TaskJobs>, MetadataError> {
    let run_path = format!("/flows/{}/runs/{}", spec.flow, spec.run);
    let missing = |what: String| not_found(what, format!("the metadata service {}", client.base()));
    let steps = match &spec.step {
        Some(step) => vec![step.clone()],
        None => {
            let list = client
                .get(&format!("{run_path}/steps"))
                .await?
                .ok_or_else(|| missing(format!("run {}/{}", spec.flow, spec.run)))?;
            names(&list, "step_name")
        }
    };
    let mut found = Vec::new();
    for step in steps {
        let step_path = format!("{run_path}/steps/{step}");
        let tasks = match &spec.task {
            Some(task) => vec![task.clone()],
            None => {
                let list = client
                    .get(&format!("{step_path}/tasks"))
                    .await?
                    .ok_or_else(|| missing(format!("step {}/{}/{step}", spec.flow, spec.run)))?;
                names(&list, "task_id")
            }
        };
        for task in tasks {
            let metadata = client
                .get(&format!("{step_path}/tasks/{task}/metadata"))
                .await?
                .ok_or_else(|| missing(format!("task {}/{}/{step}/{task}", spec.flow, spec.run)))?;
            let list = metadata.as_array().cloned().unwrap_or_default();
            found.push(task_jobs(spec, &step, &task, &list));
        }
    }
    Ok(found)
}

/// The ids named `field` in a list reply, in order.
fn names(list: &Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| super::model::id_of(o.get(field)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Groups a task's metadata by attempt.
fn task_jobs(spec: &Pathspec, step: &str, task: &str, metadata: &[Value]) -> TaskJobs {
    let mut attempts: BTreeMap<u32, AttemptInfo> = BTreeMap::new();
    for datum in metadata {
        let attempt = datum
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|t| t.strip_prefix("attempt_id:")?.parse().ok())
            .unwrap_or(0);
        let (Some(field), Some(value)) = (
            datum.get("field_name").and_then(Value::as_str),
            datum.get("value").and_then(Value::as_str),
        ) else {
            continue;
        };
        let info = attempts.entry(attempt).or_insert_with(|| AttemptInfo {
            attempt,
            ..Default::default()
        });
        let value = Some(value.to_owned());
        match field {
            "aws-batch-job-id" => info.job_id = value,
            "aws-batch-awslogs-group" => info.log_group = value,
            "aws-batch-awslogs-stream" => info.log_stream = value,
            "aws-batch-awslogs-region" => info.region = value,
            "attempt_ok" => info.ok = value.map(|v| v == "True"),
            _ => {}
        }
    }
    // Attempt 0 holds the job id from submit; later attempts of the same job inherit it.
    let first_job = attempts.values().find_map(|a| a.job_id.clone());
    let region = attempts.values().find_map(|a| a.region.clone());
    for info in attempts.values_mut() {
        info.job_id = info.job_id.take().or_else(|| first_job.clone());
        info.region = info.region.take().or_else(|| region.clone());
    }
    TaskJobs {
        pathspec: Pathspec {
            flow: spec.flow.clone(),
            run: spec.run.clone(),
            step: Some(step.to_owned()),
            task: Some(task.to_owned()),
        },
        attempts: attempts.into_values().collect(),
    }
}
