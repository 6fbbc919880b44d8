//! The fake's AWS Batch: queues, compute environments, job definitions and jobs that move along a
//! scripted [`Timeline`], spoken as REST-JSON (`POST /v1/<operation>`).

use std::sync::Arc;

use serde_json::{json, Value};
use wiremock::{Request, ResponseTemplate};

mod arrays;
mod job;
mod lifecycle;
mod nodes;
mod queues;
mod timeline;
pub use arrays::ArrayScript;
pub use job::JobView;
pub(crate) use job::*;
pub use nodes::NodesScript;
pub use queues::QueueSpec;
pub(crate) use queues::*;
pub use timeline::*;

use super::logs::{Pending, Release};
use super::{now_ms, JobStatus, State, ACCOUNT, BATCH_LOG_GROUP, REGION};

const ARN_PREFIX: &str = "arn:aws:batch:us-east-1:123456789012:";

/// The operation a Batch request calls, and its body.
pub(super) fn operation(req: &Request) -> (String, Value) {
    let path = req.url.path().trim_start_matches("/v1/");
    let op = match path {
        "describejobqueues" => "DescribeJobQueues",
        "describecomputeenvironments" => "DescribeComputeEnvironments",
        "describejobdefinitions" => "DescribeJobDefinitions",
        "registerjobdefinition" => "RegisterJobDefinition",
        "deregisterjobdefinition" => "DeregisterJobDefinition",
        "submitjob" => "SubmitJob",
        "describejobs" => "DescribeJobs",
        "terminatejob" => "TerminateJob",
        "canceljob" => "CancelJob",
        "listjobs" => "ListJobs",
        other => return (format!("Batch:{other}"), Value::Null),
    };
    (
        op.to_owned(),
        serde_json::from_slice(&req.body).unwrap_or(Value::Null),
    )
}

/// A Batch error: the code in `x-amzn-ErrorType`, the message in the JSON body.
pub(super) fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-amzn-ErrorType", code)
        .set_body_raw(
            serde_json::to_vec(&json!({ "message": message })).expect("serializes"),
            "application/json",
        )
}

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(
        serde_json::to_vec(&body).expect("serializes"),
        "application/json",
    )
}

fn client_error(message: &str) -> ResponseTemplate {
    error(400, "ClientException", message)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Batch's rule for job and definition names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl State {
    pub(super) fn batch(&mut self, op: &str, body: &Value) -> ResponseTemplate {
        match op {
            "DescribeJobQueues" => self.describe_job_queues(body),
            "DescribeComputeEnvironments" => self.describe_compute_environments(body),
            "DescribeJobDefinitions" => self.describe_job_definitions(body),
            "RegisterJobDefinition" => self.register_job_definition(body),
            "SubmitJob" => self.submit_job(body),
            "DescribeJobs" => self.describe_jobs(body),
            "TerminateJob" => self.stop_job(body, false),
            "CancelJob" => self.stop_job(body, true),
            "ListJobs" => self.list_jobs(body),
            other => error(
                404,
                "UnknownOperationException",
                &format!("the fake does not implement {other}"),
            ),
        }
    }

    fn submit_job(&mut self, body: &Value) -> ResponseTemplate {
        let Some(name) = body["jobName"].as_str().filter(|n| valid_name(n)) else {
            return client_error("jobName is missing or invalid");
        };
        let queue_ref = body["jobQueue"].as_str().unwrap_or_default();
        let Some(queue) = self.queue(queue_ref) else {
            return client_error(&format!("JobQueue {queue_ref} not found"));
        };
        // As AWS: a share identifier exactly when the queue has a fair-share policy.
        match (&queue.scheduling_policy, body.get("shareIdentifier")) {
            (Some(_), None) => {
                return client_error("shareIdentifier is required for a fair-share job queue")
            }
            (None, Some(_)) => {
                return client_error("shareIdentifier is only allowed with a fair-share job queue")
            }
            _ => {}
        }
        let (queue_arn, queue_name) = (queue.arn.clone(), queue.name.clone());
        let def_ref = body["jobDefinition"].as_str().unwrap_or_default();
        let Some((def_name, def)) = self.definition(def_ref) else {
            return client_error(&format!("Job definition {def_ref} not found"));
        };
        let (def_name, def_arn, def_body) =
            (def_name.to_owned(), def.arn.clone(), def.body.clone());
        let array_size = body["arrayProperties"]["size"].as_u64().unwrap_or(0) as usize;
        if body.get("arrayProperties").is_some() && !(2..=10_000).contains(&array_size) {
            return client_error("arrayProperties.size must be between 2 and 10000");
        }
        let num_nodes = nodes::num_nodes(&def_body, body);
        let nodes_script = num_nodes.map(|_| self.next_nodes_script());
        let timeline = if array_size > 0
            || nodes_script
                .as_ref()
                .is_some_and(|s| !s.without_node_records)
        {
            // The parent's status follows its children or its main node (`arrays`, `nodes`).
            Timeline::new().status(JobStatus::Submitted, usize::MAX)
        } else if let Some(first) = nodes_script.as_ref().and_then(|s| s.nodes.first()) {
            first.clone()
        } else {
            self.scripted
                .pop_front()
                .filter(|t| !t.phases.is_empty())
                .unwrap_or_else(|| self.default_timeline.clone())
        };
        let end_nonce = nodes::container_sources(&def_body, body).1["environment"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv["name"] == "MFBATCH_END_NONCE")
            .and_then(|kv| kv["value"].as_str())
            .map(str::to_owned);
        let id = self.uuid();
        self.last_created_ms = now_ms().max(self.last_created_ms + 1);
        let job = Job {
            id: id.clone(),
            name: name.to_owned(),
            queue_arn,
            queue_name,
            definition_arn: def_arn,
            definition_name: def_name,
            definition: Arc::new(def_body),
            submit: Arc::new(body.clone()),
            created_at: self.last_created_ms,
            started_at: None,
            stopped_at: None,
            hidden_for: timeline.hidden_for,
            phases: timeline.phases,
            phase: 0,
            seen: 0,
            status: JobStatus::Submitted,
            status_reason: None,
            attempts: Vec::new(),
            end_nonce,
            auto_end_records: timeline.auto_end_records,
            array_index: None,
            array: None,
            node: None,
            nodes: None,
        };
        self.jobs.insert(id.clone(), job);
        self.job_order.push(id.clone());
        self.enter_phase(&id, 0);
        if array_size > 0 {
            self.spawn_children(&id, array_size);
        }
        if let (Some(n), Some(script)) = (num_nodes, nodes_script) {
            self.spawn_nodes(&id, n, script);
        }
        ok(json!({"jobArn": format!("{ARN_PREFIX}job/{id}"), "jobName": name, "jobId": id}))
    }

    fn describe_jobs(&mut self, body: &Value) -> ResponseTemplate {
        let ids = strings(&body["jobs"]);
        if ids.len() > 100 {
            return client_error("jobs: at most 100 job ids per call");
        }
        let mut out = Vec::new();
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.hidden_for > 0 {
                job.hidden_for -= 1;
                continue;
            }
            if !self.clocked {
                self.step(&id);
            }
            out.push(self.jobs[&id].detail());
        }
        ok(json!({ "jobs": out }))
    }

    /// TerminateJob (any job not yet ended) and CancelJob (only jobs not yet STARTING, as in
    /// AWS; on others it succeeds and does nothing).
    fn stop_job(&mut self, body: &Value, cancel: bool) -> ResponseTemplate {
        let (Some(id), Some(reason)) = (body["jobId"].as_str(), body["reason"].as_str()) else {
            return client_error("jobId and reason are required");
        };
        let terminate_exit_code = self.terminate_exit_code;
        if self.jobs.get(id).is_some_and(|j| j.array.is_some()) {
            return self.stop_array(id, reason, cancel);
        }
        if self.jobs.get(id).is_some_and(Job::without_container) {
            return self.stop_nodes(id, reason, cancel);
        }
        let Some(job) = self.jobs.get_mut(id) else {
            return client_error(&format!("Job {id} not found"));
        };
        let cancellable = matches!(
            job.status,
            JobStatus::Submitted | JobStatus::Pending | JobStatus::Runnable
        );
        if job.status.is_terminal() || (cancel && !cancellable) {
            return ok(json!({}));
        }
        let now = now_ms();
        if let Some(attempt) = job.open_attempt() {
            attempt.end = AttemptEnd {
                exit_code: terminate_exit_code,
                reason: None,
                status_reason: Some("Essential container in task exited".into()),
            };
            attempt.stopped_at = Some(now);
        }
        job.status = JobStatus::Failed;
        job.status_reason = Some(reason.to_owned());
        job.stopped_at = Some(now);
        // Frozen: no scripted phase applies any more.
        job.phase = job.phases.len().saturating_sub(1);
        let closed = job.attempts.len();
        let id = id.to_owned();
        self.release_job_logs(&id);
        // The bootstrap forwards SIGTERM to the step and writes its records as it exits.
        if terminate_exit_code.is_some() && !cancel {
            self.write_end_records(&id, closed, Some("stopped"));
        }
        ok(json!({}))
    }

    fn list_jobs(&self, body: &Value) -> ResponseTemplate {
        if let Some(parent) = body["arrayJobId"].as_str() {
            return self.list_children(parent, body);
        }
        if let Some(parent) = body["multiNodeJobId"].as_str() {
            return self.list_nodes(parent, body);
        }
        let queue = body["jobQueue"]
            .as_str()
            .and_then(|q| self.queue(q))
            .map(|q| q.arn.clone());
        let filters = body["filters"].as_array().cloned().unwrap_or_default();
        let status = body["jobStatus"].as_str().unwrap_or("RUNNING");
        let matching: Vec<&Job> = self
            .job_order
            .iter()
            .map(|id| &self.jobs[id])
            .filter(|j| queue.as_ref().is_none_or(|q| *q == j.queue_arn))
            .filter(|j| {
                if filters.is_empty() {
                    return j.status.as_str() == status;
                }
                // With filters, every status is listed (as in AWS).
                filters.iter().all(|f| {
                    let values = strings(&f["values"]);
                    match f["name"].as_str() {
                        Some("JOB_NAME") => values.iter().any(|v| match v.strip_suffix('*') {
                            Some(prefix) => j.name.starts_with(prefix),
                            None => j.name == *v,
                        }),
                        Some("JOB_DEFINITION") => values
                            .iter()
                            .any(|v| *v == j.definition_arn || *v == j.definition_name),
                        _ => true,
                    }
                })
            })
            .collect();
        summaries_page(&matching, body, 1000)
    }
}

/// One ListJobs page of `matching`: `nextToken` is the offset, `maxResults` (default 100) at most
/// `limit` per page, as each kind of ListJobs allows.
pub(super) fn summaries_page(matching: &[&Job], body: &Value, limit: u64) -> ResponseTemplate {
    let start: usize = body["nextToken"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let max = body["maxResults"].as_u64().unwrap_or(100).clamp(1, limit) as usize;
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(max)
        .map(|j| j.summary())
        .collect();
    let mut out = json!({ "jobSummaryList": page });
    if start + max < matching.len() {
        out["nextToken"] = json!((start + max).to_string());
    }
    ok(out)
}
