//! The fake's queues, compute environments and job definitions: added by tests, described and
//! registered over the wire.

use super::*;

/// A job queue to add to the fake.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub(super) name: String,
    pub(super) state: String,
    pub(super) compute_environments: Vec<(String, String, i32)>,
    pub(super) scheduling_policy: Option<String>,
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
pub(crate) struct Queue {
    pub(super) name: String,
    pub(super) arn: String,
    pub(super) state: String,
    pub(super) compute_environments: Vec<String>,
    pub(super) scheduling_policy: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ComputeEnv {
    pub(super) name: String,
    pub(super) arn: String,
    pub(super) resource_type: String,
    pub(super) max_vcpus: i32,
}

#[derive(Debug)]
pub(crate) struct Definition {
    pub(crate) revision: i32,
    pub(super) arn: String,
    pub(super) status: String,
    /// The RegisterJobDefinition request body.
    pub(crate) body: Value,
}

impl State {
    pub(crate) fn add_queue(&mut self, spec: QueueSpec) {
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

    pub(super) fn queue(&self, name_or_arn: &str) -> Option<&Queue> {
        self.queues
            .values()
            .find(|q| q.name == name_or_arn || q.arn == name_or_arn)
    }

    /// A definition by ARN, `name:revision` or name (latest ACTIVE revision).
    pub(super) fn definition(&self, reference: &str) -> Option<(&str, &Definition)> {
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

    pub(super) fn describe_job_queues(&self, body: &Value) -> ResponseTemplate {
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

    pub(super) fn describe_compute_environments(&self, body: &Value) -> ResponseTemplate {
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

    pub(super) fn describe_job_definitions(&self, body: &Value) -> ResponseTemplate {
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

    pub(super) fn register_job_definition(&mut self, body: &Value) -> ResponseTemplate {
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
}
