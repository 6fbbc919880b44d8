//! What a job queue is: whether it exists and can take jobs, and what its compute environments
//! offer (platform and size), learned with read-only calls before anything is uploaded.

use serde::Serialize;

use crate::error::{AwsError, Service};
use crate::launch::jobdef::Platform;

/// A job queue and its compute environments.
#[derive(Debug, Clone, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub arn: String,
    /// `ENABLED` or `DISABLED`.
    pub state: String,
    pub compute_environments: Vec<ComputeEnvironment>,
    /// A fair-share queue's scheduling policy: every job then needs a share identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_policy_arn: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComputeEnvironment {
    pub name: String,
    /// `EC2`, `SPOT`, `FARGATE` or `FARGATE_SPOT` (empty for unmanaged environments).
    pub resource_type: String,
    pub max_vcpus: Option<i32>,
    pub state: String,
}

impl QueueInfo {
    /// Fargate when every compute environment of the queue is Fargate; EC2 otherwise.
    pub fn platform(&self) -> Platform {
        let fargate = |ce: &ComputeEnvironment| ce.resource_type.starts_with("FARGATE");
        if !self.compute_environments.is_empty() && self.compute_environments.iter().all(fargate) {
            Platform::Fargate
        } else {
            Platform::Ec2
        }
    }

    /// The largest vCPU count any of the queue's environments can reach; `None` when that is not
    /// known for every one of them (unmanaged environments have no limit Batch reports).
    pub fn max_vcpus(&self) -> Option<i32> {
        self.compute_environments
            .iter()
            .map(|c| c.max_vcpus)
            .collect::<Option<Vec<i32>>>()?
            .into_iter()
            .max()
    }
}

/// Looks the queue up by name or ARN; `Ok(None)` when it does not exist.
pub async fn describe(
    client: &aws_sdk_batch::Client,
    queue: &str,
) -> Result<Option<QueueInfo>, AwsError> {
    let out = client
        .describe_job_queues()
        .job_queues(queue)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(Service::Batch, "DescribeJobQueues", e))?;
    let Some(detail) = out.job_queues().first() else {
        return Ok(None);
    };
    let ce_arns: Vec<String> = detail
        .compute_environment_order()
        .iter()
        .filter_map(|o| o.compute_environment().map(str::to_owned))
        .collect();
    let mut compute_environments = Vec::new();
    if !ce_arns.is_empty() {
        let ces = client
            .describe_compute_environments()
            .set_compute_environments(Some(ce_arns))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::Batch, "DescribeComputeEnvironments", e))?;
        for ce in ces.compute_environments() {
            let resources = ce.compute_resources();
            compute_environments.push(ComputeEnvironment {
                name: ce.compute_environment_name().unwrap_or_default().to_owned(),
                resource_type: resources
                    .and_then(|r| r.r#type())
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                max_vcpus: resources.and_then(|r| r.maxv_cpus()),
                state: ce
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(Some(QueueInfo {
        name: detail.job_queue_name().unwrap_or(queue).to_owned(),
        arn: detail.job_queue_arn().unwrap_or_default().to_owned(),
        state: detail
            .state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        compute_environments,
        scheduling_policy_arn: detail.scheduling_policy_arn().map(str::to_owned),
    }))
}
