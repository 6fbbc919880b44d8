//! A fake job's record: its attempts and phases, and how DescribeJobs and ListJobs show it.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Attempt {
    pub(super) task_id: String,
    pub(super) stream: Option<String>,
    pub(super) started_at: i64,
    pub(super) stopped_at: Option<i64>,
    pub(super) end: AttemptEnd,
}

#[derive(Debug)]
pub(crate) struct Job {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) queue_arn: String,
    pub(super) queue_name: String,
    pub(super) definition_arn: String,
    pub(super) definition_name: String,
    // Shared: an array's 10,000 children hold the same bodies.
    pub(super) definition: Arc<Value>,
    pub(super) submit: Arc<Value>,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) stopped_at: Option<i64>,
    pub(super) phases: Vec<Phase>,
    pub(super) phase: usize,
    pub(super) seen: usize,
    pub(super) hidden_for: usize,
    pub(super) status: JobStatus,
    pub(super) status_reason: Option<String>,
    pub(super) attempts: Vec<Attempt>,
    /// `MFBATCH_END_NONCE` from the submit, when mfbatch launched it.
    pub(super) end_nonce: Option<String>,
    pub(super) auto_end_records: bool,
    /// An array child's index.
    pub(super) array_index: Option<usize>,
    /// An array parent's children and how its summary behaves.
    pub(super) array: Option<arrays::ParentArray>,
    /// A multi-node job's node's place in it.
    pub(super) node: Option<nodes::NodePlace>,
    /// A multi-node parent's nodes.
    pub(super) nodes: Option<nodes::ParentNodes>,
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
    /// A part of `parent` (an array's child, a multi-node job's node): its bodies and names,
    /// its own id and `timeline`.
    pub(super) fn part_of(parent: &Job, id: String, timeline: Timeline) -> Job {
        Job {
            id,
            name: parent.name.clone(),
            queue_arn: parent.queue_arn.clone(),
            queue_name: parent.queue_name.clone(),
            definition_arn: parent.definition_arn.clone(),
            definition_name: parent.definition_name.clone(),
            definition: parent.definition.clone(),
            submit: parent.submit.clone(),
            created_at: parent.created_at,
            started_at: None,
            stopped_at: None,
            hidden_for: 0,
            phases: timeline.phases,
            phase: 0,
            seen: 0,
            status: JobStatus::Submitted,
            status_reason: None,
            attempts: Vec::new(),
            end_nonce: parent.end_nonce.clone(),
            auto_end_records: timeline.auto_end_records,
            array_index: None,
            array: None,
            node: None,
            nodes: None,
        }
    }

    pub(crate) fn view(&self) -> JobView {
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

    pub(crate) fn age(&mut self, ms: i64) {
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

    pub(super) fn open_attempt(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.stopped_at.is_none())
    }

    pub(super) fn detail(&self) -> Value {
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
        self.insert_times(obj);
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

    /// The fields DescribeJobs and ListJobs both give only once they are known.
    fn insert_times(&self, obj: &mut serde_json::Map<String, Value>) {
        if let Some(reason) = &self.status_reason {
            obj.insert("statusReason".into(), json!(reason));
        }
        if let Some(t) = self.started_at {
            obj.insert("startedAt".into(), json!(t));
        }
        if let Some(t) = self.stopped_at {
            obj.insert("stoppedAt".into(), json!(t));
        }
    }

    pub(super) fn summary(&self) -> Value {
        let mut summary = json!({
            "jobArn": format!("{ARN_PREFIX}job/{}", self.id),
            "jobId": self.id,
            "jobName": self.name,
            "createdAt": self.created_at,
            "status": self.status.as_str(),
            "jobDefinition": self.definition_arn,
        });
        let obj = summary.as_object_mut().expect("an object");
        self.insert_times(obj);
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
pub(super) fn expand_end_marker(line: &str, nonce: Option<&str>, attempt: usize) -> String {
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

pub(super) fn container_of_attempt(a: &Attempt) -> Value {
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

impl State {
    /// Part `index`'s scripted timeline, or the default one past the script's end.
    pub(super) fn part_timeline(&self, scripted: &[Timeline], index: usize) -> Timeline {
        scripted
            .get(index)
            .cloned()
            .filter(|t| !t.phases.is_empty())
            .unwrap_or_else(|| self.default_timeline.clone())
    }
}
