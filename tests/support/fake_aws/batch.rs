//! The fake's AWS Batch: queues, compute environments, job definitions and jobs that move along a
//! scripted [`Timeline`], spoken as REST-JSON (`POST /v1/<operation>`).

use std::sync::Arc;

use serde_json::{json, Value};
use wiremock::{Request, ResponseTemplate};

mod arrays;
mod nodes;
pub use arrays::ArrayScript;
pub use nodes::NodesScript;

use super::logs::{Pending, Release};
use super::{now_ms, JobStatus, State, ACCOUNT, BATCH_LOG_GROUP, REGION};

const ARN_PREFIX: &str = "arn:aws:batch:us-east-1:123456789012:";

/// How one attempt of a job ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptEnd {
    /// The container's exit code (none when it was killed without one, e.g. out of memory).
    pub exit_code: Option<i32>,
    /// `container.reason`, e.g. `OutOfMemoryError: Container killed due to memory usage`.
    pub reason: Option<String>,
    /// The attempt's `statusReason`, e.g. `Host EC2 (instance i-123) terminated.`.
    pub status_reason: Option<String>,
}

impl AttemptEnd {
    /// The container exited with `code`.
    pub fn exit(code: i32) -> Self {
        AttemptEnd {
            exit_code: Some(code),
            ..Default::default()
        }
    }

    /// The container was stopped with no exit code, Batch giving `container.reason`.
    pub fn reason(reason: &str) -> Self {
        AttemptEnd {
            reason: Some(reason.to_owned()),
            ..Default::default()
        }
    }

    /// Sets the attempt's `statusReason`.
    pub fn status_reason(mut self, text: &str) -> Self {
        self.status_reason = Some(text.to_owned());
        self
    }
}

#[derive(Debug, Clone)]
pub(super) struct Phase {
    status: JobStatus,
    /// DescribeJobs calls that show this phase before the job moves on (terminal: forever).
    describes: usize,
    /// The job's `statusReason` while in this phase.
    reason: Option<String>,
    /// RUNNING: lines written to the new attempt's stream as it starts.
    logs: Vec<String>,
    /// RUNNING: lines released later.
    pending: Vec<(PendingRelease, Vec<String>)>,
    /// RUNNING: GetLogEvents calls answered "stream does not exist" before it appears.
    stream_missing_reads: usize,
    /// RUNNING: how the attempt ends when the job leaves this phase for a non-terminal one (a
    /// retry). Terminal: how the open attempt ends.
    end: Option<AttemptEnd>,
}

#[derive(Debug, Clone, Copy)]
enum PendingRelease {
    JobDone,
    AfterReads(usize),
}

/// A job's scripted life: its statuses, how long each lasts (in DescribeJobs calls that include
/// the job), its attempts, their logs and how they end.
///
/// The first phase starts at SubmitJob; each later one starts at the DescribeJobs call that first
/// shows it (a RUNNING phase's stream and lines exist from then on; lines held "until done"
/// appear with the call that first shows the job ended).
///
/// ```ignore
/// Timeline::new()
///     .status(JobStatus::Runnable, 3)
///     .running(2).logs(&["epoch 1", "epoch 2"])
///     .attempt_failed(AttemptEnd::exit(1).status_reason("Host EC2 (instance i-123) terminated."))
///     .status(JobStatus::Runnable, 1)
///     .running(1).logs(&["retry"])
///     .exit(3)
/// ```
#[derive(Debug, Clone)]
pub struct Timeline {
    phases: Vec<Phase>,
    hidden_for: usize,
    /// Whether a job launched with an end-record nonce gets both end records appended to its
    /// stream when an attempt ends with an exit code (as the bootstrap writes them).
    auto_end_records: bool,
}

impl Default for Timeline {
    /// SUBMITTED → RUNNABLE → STARTING → RUNNING → SUCCEEDED, one DescribeJobs each.
    fn default() -> Self {
        Timeline::each_status_for(1)
    }
}

impl Timeline {
    /// No phases yet; a job given an empty timeline follows the default one.
    pub fn new() -> Self {
        Timeline {
            phases: Vec::new(),
            hidden_for: 0,
            auto_end_records: true,
        }
    }

    /// The default path to SUCCEEDED, each status shown by `describes` DescribeJobs calls.
    pub fn each_status_for(describes: usize) -> Self {
        Timeline::new()
            .status(JobStatus::Submitted, describes)
            .status(JobStatus::Runnable, describes)
            .status(JobStatus::Starting, describes)
            .running(describes)
            .succeeded()
    }

    /// Adds a phase; RUNNING starts a new attempt (with a new log stream). For terminal statuses
    /// use [`Timeline::succeeded`], [`Timeline::failed`] or [`Timeline::exit`].
    pub fn status(mut self, status: JobStatus, describes: usize) -> Self {
        assert!(!status.is_terminal(), "use succeeded() / failed() / exit()");
        assert!(describes > 0);
        self.phases.push(Phase {
            status,
            describes,
            reason: None,
            logs: Vec::new(),
            pending: Vec::new(),
            stream_missing_reads: 0,
            end: None,
        });
        self
    }

    /// A new attempt, RUNNING for `describes` DescribeJobs calls.
    pub fn running(self, describes: usize) -> Self {
        self.status(JobStatus::Running, describes)
    }

    /// The job's `statusReason` during the last phase added.
    pub fn reason(mut self, text: &str) -> Self {
        self.last_phase().reason = Some(text.to_owned());
        self
    }

    /// Lines the last attempt writes as soon as it is RUNNING.
    pub fn logs(mut self, lines: &[&str]) -> Self {
        let phase = self.last_running();
        phase.logs.extend(lines.iter().map(|l| (*l).to_owned()));
        self
    }

    /// Lines of the last attempt that show up only once the job has ended (CloudWatch lag).
    pub fn logs_when_done(mut self, lines: &[&str]) -> Self {
        let phase = self.last_running();
        phase.pending.push((
            PendingRelease::JobDone,
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ));
        self
    }

    /// Lines of the last attempt that show up after `reads` GetLogEvents calls on its stream.
    pub fn logs_after_reads(mut self, reads: usize, lines: &[&str]) -> Self {
        let phase = self.last_running();
        phase.pending.push((
            PendingRelease::AfterReads(reads),
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ));
        self
    }

    /// The last attempt's stream answers "does not exist" to its first `reads` GetLogEvents.
    pub fn stream_missing_for(mut self, reads: usize) -> Self {
        self.last_running().stream_missing_reads = reads;
        self
    }

    /// The last attempt ends this way and the job goes on (add a RUNNABLE phase and a new
    /// `running` for the retry).
    pub fn attempt_failed(mut self, end: AttemptEnd) -> Self {
        self.last_running().end = Some(end);
        self
    }

    /// Ends the job SUCCEEDED (the open attempt exits 0).
    pub fn succeeded(self) -> Self {
        self.terminal(JobStatus::Succeeded, Some(AttemptEnd::exit(0)))
    }

    /// Ends the job FAILED, the open attempt (or a new one, if none ran) ending with `end`.
    pub fn failed(self, end: AttemptEnd) -> Self {
        self.terminal(JobStatus::Failed, Some(end))
    }

    /// Ends the job FAILED before any attempt (no container ran).
    pub fn failed_without_attempt(self, reason: &str) -> Self {
        self.terminal(JobStatus::Failed, None).reason(reason)
    }

    /// SUCCEEDED for 0, else FAILED with this exit code.
    pub fn exit(self, code: i32) -> Self {
        if code == 0 {
            self.succeeded()
        } else {
            self.failed(AttemptEnd::exit(code))
        }
    }

    /// No end records are written for this job (an image that bypasses the bootstrap, an OOM
    /// kill): the follower falls back to draining. Lines `@end:PIPE:CODE[:ORIGIN]` in `logs` still
    /// place records by hand.
    pub fn without_end_records(mut self) -> Self {
        self.auto_end_records = false;
        self
    }

    /// The job is missing from the first `describes` DescribeJobs answers that should include it
    /// (eventual consistency just after SubmitJob).
    pub fn hidden_for(mut self, describes: usize) -> Self {
        self.hidden_for = describes;
        self
    }

    fn terminal(mut self, status: JobStatus, end: Option<AttemptEnd>) -> Self {
        self.phases.push(Phase {
            status,
            describes: usize::MAX,
            reason: None,
            logs: Vec::new(),
            pending: Vec::new(),
            stream_missing_reads: 0,
            end,
        });
        self
    }

    fn last_phase(&mut self) -> &mut Phase {
        self.phases.last_mut().expect("add a phase first")
    }

    fn last_running(&mut self) -> &mut Phase {
        self.phases
            .iter_mut()
            .rev()
            .find(|p| p.status == JobStatus::Running)
            .expect("add a running() phase first")
    }
}

/// A job queue to add to the fake.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    name: String,
    state: String,
    compute_environments: Vec<(String, String, i32)>,
    scheduling_policy: Option<String>,
}

impl QueueSpec {
    pub fn new(name: &str) -> Self {
        QueueSpec {
            name: name.to_owned(),
            state: "ENABLED".into(),
            compute_environments: Vec::new(),
            scheduling_policy: None,
        }
    }

    /// A fair-share scheduling policy: every SubmitJob then needs a share identifier.
    pub fn scheduling_policy(mut self, arn: &str) -> Self {
        self.scheduling_policy = Some(arn.to_owned());
        self
    }

    /// A managed compute environment of `resource_type` (`EC2`, `SPOT`, `FARGATE`, `FARGATE_SPOT`).
    pub fn compute_environment(mut self, name: &str, resource_type: &str, max_vcpus: i32) -> Self {
        self.compute_environments
            .push((name.to_owned(), resource_type.to_owned(), max_vcpus));
        self
    }

    /// `ENABLED` (default) or `DISABLED`.
    pub fn state(mut self, state: &str) -> Self {
        self.state = state.to_owned();
        self
    }
}

#[derive(Debug)]
pub(super) struct Queue {
    name: String,
    arn: String,
    state: String,
    compute_environments: Vec<String>,
    scheduling_policy: Option<String>,
}

#[derive(Debug)]
pub(super) struct ComputeEnv {
    name: String,
    arn: String,
    resource_type: String,
    max_vcpus: i32,
}

#[derive(Debug)]
pub(super) struct Definition {
    pub(super) revision: i32,
    arn: String,
    status: String,
    /// The RegisterJobDefinition request body.
    pub(super) body: Value,
}

#[derive(Debug, Clone)]
struct Attempt {
    task_id: String,
    stream: Option<String>,
    started_at: i64,
    stopped_at: Option<i64>,
    end: AttemptEnd,
}

#[derive(Debug)]
pub(super) struct Job {
    id: String,
    name: String,
    queue_arn: String,
    queue_name: String,
    definition_arn: String,
    definition_name: String,
    // Shared: an array's 10,000 children hold the same bodies.
    definition: Arc<Value>,
    submit: Arc<Value>,
    created_at: i64,
    started_at: Option<i64>,
    stopped_at: Option<i64>,
    phases: Vec<Phase>,
    phase: usize,
    seen: usize,
    hidden_for: usize,
    status: JobStatus,
    status_reason: Option<String>,
    attempts: Vec<Attempt>,
    /// `MFBATCH_END_NONCE` from the submit, when mfbatch launched it.
    end_nonce: Option<String>,
    auto_end_records: bool,
    /// An array child's index.
    array_index: Option<usize>,
    /// An array parent's children and how its summary behaves.
    array: Option<arrays::ParentArray>,
    /// A multi-node job's node's place in it.
    node: Option<nodes::NodePlace>,
    /// A multi-node parent's nodes.
    nodes: Option<nodes::ParentNodes>,
}

/// What a test can see of a job.
#[derive(Debug, Clone)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub queue: String,
    /// The ARN (with revision) the job runs.
    pub definition: String,
    pub status: JobStatus,
    pub status_reason: Option<String>,
    /// The SubmitJob request body.
    pub submit: Value,
    /// Attempts started so far (finished or not).
    pub attempts: usize,
    /// The log stream of each attempt that ran a container.
    pub log_streams: Vec<String>,
}

impl Job {
    pub(super) fn view(&self) -> JobView {
        JobView {
            id: self.id.clone(),
            name: self.name.clone(),
            queue: self.queue_name.clone(),
            definition: self.definition_arn.clone(),
            status: self.status,
            status_reason: self.status_reason.clone(),
            submit: (*self.submit).clone(),
            attempts: self.attempts.len(),
            log_streams: self
                .attempts
                .iter()
                .filter_map(|a| a.stream.clone())
                .collect(),
        }
    }

    pub(super) fn age(&mut self, ms: i64) {
        self.created_at -= ms;
        for t in [&mut self.started_at, &mut self.stopped_at]
            .into_iter()
            .flatten()
        {
            *t -= ms;
        }
        for a in &mut self.attempts {
            a.started_at -= ms;
            if let Some(t) = &mut a.stopped_at {
                *t -= ms;
            }
        }
    }

    fn open_attempt(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.stopped_at.is_none())
    }

    fn detail(&self) -> Value {
        let finished: Vec<Value> = self
            .attempts
            .iter()
            .filter(|a| a.stopped_at.is_some())
            .map(|a| {
                json!({
                    "container": container_of_attempt(a),
                    "startedAt": a.started_at,
                    "stoppedAt": a.stopped_at,
                    "statusReason": a.end.status_reason,
                })
            })
            .collect();
        let (props, overrides) = nodes::container_sources(&self.definition, &self.submit);
        let mut environment: Vec<Value> =
            props["environment"].as_array().cloned().unwrap_or_default();
        for kv in overrides["environment"].as_array().into_iter().flatten() {
            environment.retain(|e| e["name"] != kv["name"]);
            environment.push(kv.clone());
        }
        let mut resources: Vec<Value> = props["resourceRequirements"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in overrides["resourceRequirements"]
            .as_array()
            .into_iter()
            .flatten()
        {
            resources.retain(|e| e["type"] != r["type"]);
            resources.push(r.clone());
        }
        let mut container = json!({
            "image": props["image"],
            "command": props["command"],
            "jobRoleArn": props["jobRoleArn"],
            "environment": environment,
            "resourceRequirements": resources,
            "logConfiguration": {"logDriver": "awslogs", "options": {}},
        });
        if let Some(exec) = props.get("executionRoleArn") {
            container["executionRoleArn"] = exec.clone();
        }
        if let Some(last) = self.attempts.last() {
            let extra = container_of_attempt(last);
            for (k, v) in extra.as_object().expect("an object") {
                container[k] = v.clone();
            }
        }
        let mut detail = json!({
            "jobArn": format!("{ARN_PREFIX}job/{}", self.id),
            "jobName": self.name,
            "jobId": self.id,
            "jobQueue": self.queue_arn,
            "status": self.status.as_str(),
            "createdAt": self.created_at,
            "jobDefinition": self.definition_arn,
            "dependsOn": [],
            "parameters": {},
            "attempts": finished,
            "container": container,
            "tags": self.submit.get("tags").cloned().unwrap_or_else(|| json!({})),
            "propagateTags": self.submit.get("propagateTags").cloned().unwrap_or(Value::Bool(false)),
            "platformCapabilities": self.definition.get("platformCapabilities").cloned().unwrap_or_else(|| json!(["EC2"])),
        });
        let obj = detail.as_object_mut().expect("an object");
        if let Some(reason) = &self.status_reason {
            obj.insert("statusReason".into(), json!(reason));
        }
        if let Some(t) = self.started_at {
            obj.insert("startedAt".into(), json!(t));
        }
        if let Some(t) = self.stopped_at {
            obj.insert("stoppedAt".into(), json!(t));
        }
        if let Some(timeout) = self.submit.get("timeout") {
            obj.insert("timeout".into(), timeout.clone());
        }
        if let Some(retry) = self.submit.get("retryStrategy") {
            obj.insert("retryStrategy".into(), retry.clone());
        }
        if let Some(array) = self.array_properties(true) {
            obj.insert("arrayProperties".into(), array);
        }
        if let Some(nodes) = self.node_properties() {
            obj.insert("nodeProperties".into(), nodes);
        }
        if let Some(node) = self.node_details() {
            obj.insert("nodeDetails".into(), node);
        }
        if self.without_container() {
            obj.remove("container");
        }
        if self.shared_stream_only() {
            let stream = detail["container"]["logStreamName"].clone();
            detail["container"] = if stream.is_null() {
                json!({})
            } else {
                json!({ "logStreamName": stream })
            };
        }
        detail
    }

    fn summary(&self) -> Value {
        let mut summary = json!({
            "jobArn": format!("{ARN_PREFIX}job/{}", self.id),
            "jobId": self.id,
            "jobName": self.name,
            "createdAt": self.created_at,
            "status": self.status.as_str(),
            "jobDefinition": self.definition_arn,
        });
        let obj = summary.as_object_mut().expect("an object");
        if let Some(reason) = &self.status_reason {
            obj.insert("statusReason".into(), json!(reason));
        }
        if let Some(t) = self.started_at {
            obj.insert("startedAt".into(), json!(t));
        }
        if let Some(t) = self.stopped_at {
            obj.insert("stoppedAt".into(), json!(t));
        }
        if let Some(array) = self.array_properties(false) {
            obj.insert("arrayProperties".into(), array);
        }
        if let Some(node) = self.node_details() {
            obj.insert("nodeDetails".into(), node);
        }
        if let Some(last) = self.attempts.last().filter(|a| a.stopped_at.is_some()) {
            let mut c = json!({});
            if let Some(code) = last.end.exit_code {
                c["exitCode"] = json!(code);
            }
            if let Some(reason) = &last.end.reason {
                c["reason"] = json!(reason);
            }
            obj.insert("container".into(), c);
        }
        summary
    }
}

/// A scripted line `@end:PIPE:CODE[:ORIGIN]` becomes that attempt's end record for the job's
/// nonce; `@end-foreign:…` the same with another nonce (a step printing a look-alike line).
fn expand_end_marker(line: &str, nonce: Option<&str>, attempt: usize) -> String {
    let (rest, nonce) = if let Some(rest) = line.strip_prefix("@end:") {
        (rest, nonce.unwrap_or("no-nonce"))
    } else if let Some(rest) = line.strip_prefix("@end-foreign:") {
        (rest, "0123456789abcdef0123456789abcdef")
    } else {
        return line.to_owned();
    };
    let mut parts = rest.split(':');
    let pipe = parts.next().unwrap_or("stdout");
    let code = parts.next().unwrap_or("0");
    let origin = parts.next().unwrap_or("step");
    format!("mfbatch-end:v1:{nonce}:{attempt}:{code}:{origin}:{pipe}")
}

fn container_of_attempt(a: &Attempt) -> Value {
    let mut c = json!({
        "taskArn": format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task/batch-cluster/{}", a.task_id),
        "containerInstanceArn": format!("arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/batch-cluster/{}", a.task_id),
        "networkInterfaces": [],
    });
    if let Some(stream) = &a.stream {
        c["logStreamName"] = json!(stream);
    }
    if a.stopped_at.is_some() {
        if let Some(code) = a.end.exit_code {
            c["exitCode"] = json!(code);
        }
        if let Some(reason) = &a.end.reason {
            c["reason"] = json!(reason);
        }
    }
    c
}

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
    pub(super) fn add_queue(&mut self, spec: QueueSpec) {
        let mut ce_arns = Vec::new();
        for (name, resource_type, max_vcpus) in spec.compute_environments {
            let arn = format!("{ARN_PREFIX}compute-environment/{name}");
            ce_arns.push(arn.clone());
            self.compute_envs.insert(
                name.clone(),
                ComputeEnv {
                    name,
                    arn,
                    resource_type,
                    max_vcpus,
                },
            );
        }
        self.queues.insert(
            spec.name.clone(),
            Queue {
                arn: format!("{ARN_PREFIX}job-queue/{}", spec.name),
                name: spec.name,
                state: spec.state,
                compute_environments: ce_arns,
                scheduling_policy: spec.scheduling_policy,
            },
        );
    }

    fn queue(&self, name_or_arn: &str) -> Option<&Queue> {
        self.queues
            .values()
            .find(|q| q.name == name_or_arn || q.arn == name_or_arn)
    }

    /// A definition by ARN, `name:revision` or name (latest ACTIVE revision).
    fn definition(&self, reference: &str) -> Option<(&str, &Definition)> {
        let short = reference
            .strip_prefix(&format!("{ARN_PREFIX}job-definition/"))
            .unwrap_or(reference);
        match short.rsplit_once(':') {
            Some((name, rev)) => {
                let rev: i32 = rev.parse().ok()?;
                let (name, revs) = self.definitions.get_key_value(name)?;
                revs.iter()
                    .find(|d| d.revision == rev)
                    .map(|d| (name.as_str(), d))
            }
            None => {
                let (name, revs) = self.definitions.get_key_value(short)?;
                revs.iter()
                    .filter(|d| d.status == "ACTIVE")
                    .max_by_key(|d| d.revision)
                    .map(|d| (name.as_str(), d))
            }
        }
    }

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

    fn describe_job_queues(&self, body: &Value) -> ResponseTemplate {
        let wanted = strings(&body["jobQueues"]);
        let queues: Vec<Value> = self
            .queues
            .values()
            .filter(|q| wanted.is_empty() || wanted.iter().any(|w| *w == q.name || *w == q.arn))
            .map(|q| {
                let mut queue = json!({
                    "jobQueueName": q.name,
                    "jobQueueArn": q.arn,
                    "state": q.state,
                    "status": "VALID",
                    "priority": 1,
                    "computeEnvironmentOrder": q.compute_environments.iter().enumerate()
                        .map(|(i, ce)| json!({"order": i + 1, "computeEnvironment": ce}))
                        .collect::<Vec<_>>(),
                });
                if let Some(policy) = &q.scheduling_policy {
                    queue["schedulingPolicyArn"] = json!(policy);
                }
                queue
            })
            .collect();
        ok(json!({ "jobQueues": queues }))
    }

    fn describe_compute_environments(&self, body: &Value) -> ResponseTemplate {
        let wanted = strings(&body["computeEnvironments"]);
        let ces: Vec<Value> = self
            .compute_envs
            .values()
            .filter(|c| wanted.is_empty() || wanted.iter().any(|w| *w == c.name || *w == c.arn))
            .map(|c| {
                let mut resources = json!({
                    "type": c.resource_type,
                    "maxvCpus": c.max_vcpus,
                    "subnets": ["subnet-0fake"],
                    "securityGroupIds": ["sg-0fake"],
                });
                if !c.resource_type.starts_with("FARGATE") {
                    resources["minvCpus"] = json!(0);
                    resources["desiredvCpus"] = json!(0);
                    resources["instanceTypes"] = json!(["optimal"]);
                    resources["instanceRole"] = json!(format!(
                        "arn:aws:iam::{ACCOUNT}:instance-profile/ecsInstanceRole"
                    ));
                }
                json!({
                    "computeEnvironmentName": c.name,
                    "computeEnvironmentArn": c.arn,
                    "ecsClusterArn": format!("arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{}", c.name),
                    "type": "MANAGED",
                    "state": "ENABLED",
                    "status": "VALID",
                    "computeResources": resources,
                })
            })
            .collect();
        ok(json!({ "computeEnvironments": ces }))
    }

    fn describe_job_definitions(&self, body: &Value) -> ResponseTemplate {
        let refs = strings(&body["jobDefinitions"]);
        let name = body["jobDefinitionName"].as_str();
        let status = body["status"].as_str();
        let mut out = Vec::new();
        for (def_name, revs) in &self.definitions {
            for d in revs {
                let by_ref = refs.is_empty()
                    || refs
                        .iter()
                        .any(|r| *r == d.arn || *r == format!("{def_name}:{}", d.revision));
                let by_name = name.is_none_or(|n| n == def_name);
                let by_status = status.is_none_or(|s| s == d.status);
                if by_ref && by_name && by_status {
                    let mut v = d.body.clone();
                    let obj = v.as_object_mut().expect("an object");
                    obj.insert("jobDefinitionArn".into(), json!(d.arn));
                    obj.insert("revision".into(), json!(d.revision));
                    obj.insert("status".into(), json!(d.status));
                    out.push(v);
                }
            }
        }
        ok(json!({ "jobDefinitions": out }))
    }

    fn register_job_definition(&mut self, body: &Value) -> ResponseTemplate {
        let Some(name) = body["jobDefinitionName"].as_str().filter(|n| valid_name(n)) else {
            return client_error("jobDefinitionName is missing or invalid");
        };
        if body["type"].as_str().is_none() {
            return client_error("type is required");
        }
        if body["type"] == "container" && body["containerProperties"]["image"].as_str().is_none() {
            return client_error("containerProperties.image is required");
        }
        let revs = self.definitions.entry(name.to_owned()).or_default();
        let revision = revs.len() as i32 + 1;
        let arn = format!("{ARN_PREFIX}job-definition/{name}:{revision}");
        revs.push(Definition {
            revision,
            arn: arn.clone(),
            status: "ACTIVE".into(),
            body: body.clone(),
        });
        ok(json!({"jobDefinitionName": name, "jobDefinitionArn": arn, "revision": revision}))
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
        let job = Job {
            id: id.clone(),
            name: name.to_owned(),
            queue_arn,
            queue_name,
            definition_arn: def_arn,
            definition_name: def_name,
            definition: Arc::new(def_body),
            submit: Arc::new(body.clone()),
            created_at: now_ms(),
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

    /// Moves a job into phase `index`, closing and opening attempts and releasing logs.
    fn enter_phase(&mut self, id: &str, index: usize) {
        let mut job = self.jobs.remove(id).expect("the job exists");
        let now = now_ms();
        let leaving = (index > 0).then(|| job.phases[job.phase].clone());
        let phase = job.phases[index].clone();
        job.phase = index;
        job.seen = 0;
        job.status = phase.status;
        job.status_reason = phase.reason.clone();
        if phase.status.is_terminal() {
            let end = phase.end.clone();
            match (job.open_attempt(), end) {
                (Some(attempt), Some(end)) => {
                    attempt.end = end;
                    attempt.stopped_at = Some(now);
                }
                (Some(attempt), None) => attempt.stopped_at = Some(now),
                (None, Some(end)) => {
                    // Stopped before its container ran (e.g. the image could not be pulled).
                    let task_id = self.hex_id(32);
                    job.attempts.push(Attempt {
                        task_id,
                        stream: None,
                        started_at: now,
                        stopped_at: Some(now),
                        end,
                    });
                }
                (None, None) => {}
            }
            if job.status_reason.is_none() {
                job.status_reason = Some(match job.attempts.last() {
                    Some(a) if a.end.status_reason.is_some() => {
                        a.end.status_reason.clone().expect("checked")
                    }
                    Some(_) => "Essential container in task exited".into(),
                    None => "Job failed".into(),
                });
            }
            job.stopped_at = Some(now);
            let closed = job.attempts.len();
            self.jobs.insert(id.to_owned(), job);
            self.release_job_logs(id);
            self.write_end_records(id, closed, None);
            return;
        }
        if let Some(attempt) = job.open_attempt() {
            // Leaving a RUNNING phase for another phase: this attempt is over (a retry follows).
            attempt.end = leaving
                .and_then(|p| p.end)
                .unwrap_or_else(|| AttemptEnd::exit(0));
            attempt.stopped_at = Some(now);
            let closed = job.attempts.len();
            self.jobs.insert(id.to_owned(), job);
            self.write_end_records(id, closed, None);
            job = self.jobs.remove(id).expect("the job exists");
        }
        if phase.status == JobStatus::Running {
            let task_id = self.hex_id(32);
            let stream = format!("{}/default/{task_id}", job.definition_name);
            job.started_at.get_or_insert(now);
            job.attempts.push(Attempt {
                task_id,
                stream: Some(stream.clone()),
                started_at: now,
                stopped_at: None,
                end: AttemptEnd::default(),
            });
            let attempt_no = job.attempts.len();
            let nonce = job.end_nonce.clone();
            let expand = |l: &String| expand_end_marker(l, nonce.as_deref(), attempt_no);
            let events: Vec<(i64, String)> = phase
                .logs
                .iter()
                .map(|l| (self.next_log_ms(), expand(l)))
                .collect();
            let log_stream = self.stream_mut(BATCH_LOG_GROUP, &stream);
            log_stream.events.extend(events);
            log_stream.missing_reads = phase.stream_missing_reads;
            for (release, lines) in &phase.pending {
                log_stream.pending.push(Pending {
                    release: match release {
                        PendingRelease::JobDone => Release::JobDone(id.to_owned()),
                        PendingRelease::AfterReads(n) => Release::AfterReads(*n),
                    },
                    lines: lines.iter().map(expand).collect(),
                });
            }
        }
        self.jobs.insert(id.to_owned(), job);
    }

    /// Appends both end records of attempt `attempt` (1-based) to its stream, as the bootstrap
    /// writes them when the step exits, unless the timeline placed records by hand or has none.
    /// `origin` `None`: `stopped` when the attempt ended for a reason of Batch's (a lost host, a
    /// timeout), as the bootstrap then forwarded a SIGTERM; else `step`.
    fn write_end_records(&mut self, id: &str, attempt: usize, origin: Option<&str>) {
        let job = &self.jobs[id];
        let Some(nonce) = job.end_nonce.clone().filter(|_| job.auto_end_records) else {
            return;
        };
        let Some(a) = attempt.checked_sub(1).and_then(|i| job.attempts.get(i)) else {
            return;
        };
        let (Some(stream), Some(code)) = (a.stream.clone(), a.end.exit_code) else {
            return;
        };
        let origin = origin.unwrap_or(match a.end.status_reason.as_deref() {
            None | Some("Essential container in task exited") => "step",
            Some(_) => "stopped",
        });
        let placed_by_hand = self
            .log_groups
            .get(BATCH_LOG_GROUP)
            .and_then(|g| g.get(&stream))
            .is_some_and(|s| {
                let ours = format!("mfbatch-end:v1:{nonce}:");
                s.events.iter().any(|(_, m)| m.starts_with(&ours))
                    || s.pending
                        .iter()
                        .any(|p| p.lines.iter().any(|m| m.starts_with(&ours)))
            });
        if placed_by_hand {
            return;
        }
        let lines: Vec<(i64, String)> = ["stdout", "stderr"]
            .iter()
            .map(|pipe| {
                (
                    self.next_log_ms(),
                    format!("mfbatch-end:v1:{nonce}:{attempt}:{code}:{origin}:{pipe}"),
                )
            })
            .collect();
        self.stream_mut(BATCH_LOG_GROUP, &stream)
            .events
            .extend(lines);
    }

    /// Makes the lines held until this job ended visible.
    fn release_job_logs(&mut self, id: &str) {
        let streams: Vec<String> = self.jobs[id]
            .attempts
            .iter()
            .filter_map(|a| a.stream.clone())
            .collect();
        for stream in streams {
            self.release(
                BATCH_LOG_GROUP,
                &stream,
                |r| matches!(r, Release::JobDone(j) if j == id),
            );
        }
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

    /// One step of a job's timeline (one describe, or one tick of the clock when clocked).
    pub(super) fn step(&mut self, id: &str) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        if job.array.is_some() {
            self.tick_array(id);
        } else if job.without_container() {
            self.tick_nodes(id);
        } else {
            self.advance(id);
        }
        self.jobs.get_mut(id).expect("still there").seen += 1;
    }

    /// A phase change happens at the call that first shows it, so its effects (a new attempt's
    /// stream, lines held until the end) appear exactly when the client sees it.
    fn advance(&mut self, id: &str) {
        let job = &self.jobs[id];
        let next = job.phase + 1;
        if !job.status.is_terminal()
            && next < job.phases.len()
            && job.seen >= job.phases[job.phase].describes
        {
            self.enter_phase(id, next);
        }
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
