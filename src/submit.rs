//! The SubmitJob request: name, queue, overrides, tags and timeout, checked against Batch's limits
//! before it is sent (an oversized override is accepted by SubmitJob and fails the job later).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{AwsError, ConfigError, Service};
use crate::jobdef::{NameValue, Requirement};
use crate::spec::{Resources, MAX_TAGS};

/// Batch's limit on the JSON of `containerOverrides`, enforced only when the task starts.
pub const MAX_OVERRIDES_CHARS: usize = 8192;
/// Batch's limit on the whole SubmitJob request.
pub const MAX_REQUEST_BYTES: usize = 30 * 1024;

/// Tries of SubmitJob while a just-registered definition is not yet visible (0.5 + 1 + 2 s).
const DEFINITION_VISIBLE_TRIES: usize = 4;

/// Whether Batch said the job definition does not exist.
fn definition_not_visible(e: &AwsError) -> bool {
    let message = e
        .message
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    e.code.as_deref() == Some("ClientException")
        && message.contains("definition")
        && (message.contains("not found") || message.contains("does not exist"))
}

/// The body of SubmitJob, exactly as sent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitRequest {
    pub job_name: String,
    pub job_queue: String,
    pub job_definition: String,
    pub container_overrides: ContainerOverrides,
    pub tags: BTreeMap<String, String>,
    pub propagate_tags: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategy {
    pub attempts: u8,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evaluate_on_exit: Vec<ExitRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRule {
    pub on_status_reason: &'static str,
    pub action: &'static str,
}

impl RetryStrategy {
    /// Batch's rules for `retries`: by default only a lost instance (the attempt's status reason
    /// starts `Host EC2`, as on a spot reclaim) is retried, since a bug fails the same way twice.
    pub fn for_retries(retries: &crate::spec::Retries) -> Option<Self> {
        if retries.count == 0 {
            return None;
        }
        let evaluate_on_exit = if retries.on_any_failure {
            Vec::new()
        } else {
            vec![
                ExitRule {
                    on_status_reason: "Host EC2*",
                    action: "RETRY",
                },
                ExitRule {
                    on_status_reason: "*",
                    action: "EXIT",
                },
            ]
        };
        Some(RetryStrategy {
            attempts: retries.count + 1,
            evaluate_on_exit,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverrides {
    pub environment: Vec<NameValue>,
    pub resource_requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeout {
    pub attempt_duration_seconds: u64,
}

/// The resource overrides: VCPU as `%g`, MEMORY in whole MiB, GPU only when asked for.
pub fn resource_requirements(resources: &Resources) -> Vec<Requirement> {
    let mut out = vec![
        Requirement {
            kind: "VCPU",
            value: resources.vcpu.to_string(),
        },
        Requirement {
            kind: "MEMORY",
            value: resources.memory.get().to_string(),
        },
    ];
    if resources.gpu > 0 {
        out.push(Requirement {
            kind: "GPU",
            value: resources.gpu.to_string(),
        });
    }
    out
}

impl SubmitRequest {
    /// Checks every limit Batch would otherwise enforce late or with a vaguer message.
    pub fn check_limits(&self) -> Result<(), ConfigError> {
        let overrides = serde_json::to_string(&self.container_overrides).expect("serializes");
        let chars = overrides.chars().count();
        if chars > MAX_OVERRIDES_CHARS {
            return Err(ConfigError::OverLimit {
                what: "the container overrides (environment, arguments and resources as JSON)"
                    .into(),
                actual: chars,
                limit: MAX_OVERRIDES_CHARS,
            });
        }
        let body = serde_json::to_string(self).expect("serializes").len();
        if body > MAX_REQUEST_BYTES {
            return Err(ConfigError::OverLimit {
                what: "the SubmitJob request in bytes".into(),
                actual: body,
                limit: MAX_REQUEST_BYTES,
            });
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ConfigError::OverLimit {
                what: "the number of tags".into(),
                actual: self.tags.len(),
                limit: MAX_TAGS,
            });
        }
        Ok(())
    }

    /// The size of the overrides, reported by `--dry-run`.
    pub fn overrides_chars(&self) -> usize {
        serde_json::to_string(&self.container_overrides)
            .expect("serializes")
            .chars()
            .count()
    }

    /// Sends the request right after its job definition was registered. For a moment Batch may
    /// not know the new definition yet (eventual consistency) and answer with a ClientException,
    /// which the SDK does not retry; that answer alone is retried a few times.
    pub async fn send_after_register(
        &self,
        client: &aws_sdk_batch::Client,
    ) -> Result<String, AwsError> {
        let mut wait = std::time::Duration::from_millis(500);
        for _ in 1..DEFINITION_VISIBLE_TRIES {
            match self.send(client).await {
                Err(e) if definition_not_visible(&e) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => return other,
            }
        }
        self.send(client).await
    }

    /// Sends the request and returns the job id.
    pub async fn send(&self, client: &aws_sdk_batch::Client) -> Result<String, AwsError> {
        use aws_sdk_batch::types::{
            ContainerOverrides as Overrides, JobTimeout, KeyValuePair, ResourceRequirement,
            ResourceType,
        };
        let mut overrides = Overrides::builder();
        for kv in &self.container_overrides.environment {
            overrides = overrides.environment(
                KeyValuePair::builder()
                    .name(&kv.name)
                    .value(&kv.value)
                    .build(),
            );
        }
        for r in &self.container_overrides.resource_requirements {
            overrides = overrides.resource_requirements(
                ResourceRequirement::builder()
                    .r#type(ResourceType::from(r.kind))
                    .value(&r.value)
                    .build(),
            );
        }
        let out = client
            .submit_job()
            .job_name(&self.job_name)
            .job_queue(&self.job_queue)
            .job_definition(&self.job_definition)
            .container_overrides(overrides.build())
            .set_tags(Some(self.tags.clone().into_iter().collect()))
            .propagate_tags(self.propagate_tags)
            .set_retry_strategy(self.retry_strategy.as_ref().map(|r| {
                use aws_sdk_batch::types::{
                    EvaluateOnExit, RetryAction, RetryStrategy as Strategy,
                };
                let rules = r.evaluate_on_exit.iter().map(|rule| {
                    EvaluateOnExit::builder()
                        .on_status_reason(rule.on_status_reason)
                        .action(RetryAction::from(rule.action))
                        .build()
                });
                Strategy::builder()
                    .attempts(i32::from(r.attempts))
                    .set_evaluate_on_exit((!r.evaluate_on_exit.is_empty()).then(|| rules.collect()))
                    .build()
            }))
            .set_timeout(self.timeout.as_ref().map(|t| {
                JobTimeout::builder()
                    .attempt_duration_seconds(t.attempt_duration_seconds as i32)
                    .build()
            }))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::Batch, "SubmitJob", e))?;
        Ok(out.job_id().unwrap_or_default().to_owned())
    }
}
