//! The SubmitJob request: name, queue, overrides, tags and timeout, checked against Batch's limits
//! before it is sent (an oversized override is accepted by SubmitJob and fails the job later),
//! and sent so that it creates at most one job.
//!
//! SubmitJob takes no client token: a request re-sent after a timeout, a dropped connection or a
//! 5xx creates a second job if the first one reached Batch. So the SDK never retries it. mfbatch
//! sends it again at once only when Batch certainly did not process it (throttled, or the
//! connection never opened); after any other failure it first looks for the job by its name and
//! its `mfbatch.request-id` tag, and sends again only when no such job appears.

use std::collections::BTreeMap;

use std::time::Duration;

use aws_sdk_batch::error::SdkError;
use aws_sdk_batch::operation::submit_job::SubmitJobError;
use serde::Serialize;

use crate::error::{AwsError, AwsErrorKind, ConfigError, Service};
use crate::launch::jobdef::{NameValue, Requirement};
use crate::launch::scheduling::SubmitScheduling;
use crate::retry::{DEFINITION_VISIBLE_TRIES, SUBMIT_LOOKUP_WAITS, SUBMIT_TRIES};
use crate::spec::{Resources, MAX_TAGS};

/// Batch's limit on the JSON of `containerOverrides`, enforced only when the task starts.
pub const MAX_OVERRIDES_CHARS: usize = 8192;
/// Batch's limit on the whole SubmitJob request.
pub const MAX_REQUEST_BYTES: usize = 30 * 1024;

/// The tag carrying each launch's random request id.
pub const REQUEST_ID_TAG: &str = "mfbatch.request-id";

/// Jobs of the same name created this long before the send still count as candidates (clock
/// skew between this machine and AWS).
const LOOKUP_SKEW_MS: i64 = 5 * 60 * 1000;

/// What a failed send says about whether a job was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendFailure {
    /// Batch did not process the request (throttled, or the connection never opened).
    NotProcessed,
    /// The request may have created a job (timeout, dropped connection, 5xx, unreadable answer).
    Ambiguous,
    /// Batch refused it (a 4xx), or it was never sent (no credentials).
    Rejected,
}

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
    /// Sent as `containerOverrides`, or inside `nodeOverrides` for a multi-node job.
    #[serde(skip_serializing_if = "ContainerOverrides::moved_to_nodes")]
    pub container_overrides: ContainerOverrides,
    /// Array, dependencies, priority, share, nodes.
    #[serde(flatten)]
    pub scheduling: SubmitScheduling,
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
    /// Sent in `nodeOverrides` instead (a multi-node job).
    #[serde(skip)]
    pub moved_to_nodes: bool,
}

impl ContainerOverrides {
    fn moved_to_nodes(&self) -> bool {
        self.moved_to_nodes
    }
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

    /// Sends the request and returns the job id; creates at most one job (see the module doc).
    pub async fn send(&self, client: &aws_sdk_batch::Client) -> Result<String, AwsError> {
        let started_ms = epoch_ms();
        let mut wait = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            let err = match self.send_once(client).await {
                Ok(id) => return Ok(id),
                Err(err) => err,
            };
            let failure = classify(&err);
            let err = AwsError::from_sdk(Service::Batch, "SubmitJob", err);
            match failure {
                SendFailure::Rejected => return Err(err),
                SendFailure::Ambiguous => {
                    if let Some(id) = self.find_sent(client, started_ms).await? {
                        return Ok(id);
                    }
                }
                SendFailure::NotProcessed => {}
            }
            if tries >= SUBMIT_TRIES {
                return Err(err);
            }
            tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64())).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// One SubmitJob request, without the SDK's retries.
    async fn send_once(
        &self,
        client: &aws_sdk_batch::Client,
    ) -> Result<String, SdkError<SubmitJobError, aws_smithy_runtime_api::http::Response>> {
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
        let request = client
            .submit_job()
            .job_name(&self.job_name)
            .job_queue(&self.job_queue)
            .job_definition(&self.job_definition);
        let out = self
            .scheduling
            .apply(request, overrides.build())
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
            .customize()
            .config_override(
                aws_sdk_batch::config::Builder::default()
                    .retry_config(aws_sdk_batch::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await?;
        // An answer without a job id is unusable, and the job it may stand for can be found.
        match out.job_id().filter(|id| !id.is_empty()) {
            Some(id) => Ok(id.to_owned()),
            None => Err(SdkError::construction_failure(MissingJobId)),
        }
    }

    /// The job this request created, if any: a job of the same name in the queue, created
    /// since the first send, with this request's id. Looks a few times, as Batch lists a new job
    /// a moment late.
    pub async fn find_sent(
        &self,
        client: &aws_sdk_batch::Client,
        started_ms: i64,
    ) -> Result<Option<String>, AwsError> {
        let Some(request_id) = self.tags.get(REQUEST_ID_TAG) else {
            return Ok(None);
        };
        for wait in SUBMIT_LOOKUP_WAITS {
            tokio::time::sleep(wait).await;
            let mut candidates = Vec::new();
            let mut pages = client
                .list_jobs()
                .job_queue(&self.job_queue)
                .filters(
                    aws_sdk_batch::types::KeyValuesPair::builder()
                        .name("JOB_NAME")
                        .values(&self.job_name)
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| AwsError::from_sdk(Service::Batch, "ListJobs", e))?;
                candidates.extend(
                    page.job_summary_list()
                        .iter()
                        .filter(|j| {
                            j.created_at()
                                .is_none_or(|t| t >= started_ms - LOOKUP_SKEW_MS)
                        })
                        .filter_map(|j| j.job_id().map(str::to_owned)),
                );
            }
            for ids in candidates.chunks(crate::track::MAX_IDS_PER_CALL) {
                let found = client
                    .describe_jobs()
                    .set_jobs(Some(ids.to_vec()))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(Service::Batch, "DescribeJobs", e))?;
                let ours = found.jobs().iter().find(|j| {
                    j.tags()
                        .and_then(|t| t.get(REQUEST_ID_TAG))
                        .is_some_and(|v| v == request_id)
                });
                if let Some(id) = ours.and_then(|j| j.job_id()) {
                    return Ok(Some(id.to_owned()));
                }
            }
        }
        Ok(None)
    }
}

/// SubmitJob answered without a job id.
#[derive(Debug, thiserror::Error)]
#[error("SubmitJob's answer has no job id")]
struct MissingJobId;

/// Whether a failed SubmitJob may have created a job.
fn classify(err: &SdkError<SubmitJobError, aws_smithy_runtime_api::http::Response>) -> SendFailure {
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            if status == 429
                || matches!(AwsError::code_kind(service.err()), AwsErrorKind::Throttled)
            {
                SendFailure::NotProcessed
            } else if status >= 500 {
                SendFailure::Ambiguous
            } else {
                SendFailure::Rejected
            }
        }
        SdkError::DispatchFailure(failure) => {
            if connection_never_opened(failure.as_connector_error()) {
                SendFailure::NotProcessed
            } else if format!("{err:?}")
                .to_ascii_lowercase()
                .contains("credentials")
            {
                // No credentials: the request was never signed, let alone sent.
                SendFailure::Rejected
            } else {
                SendFailure::Ambiguous
            }
        }
        // Our own "no job id" (the answer came, unusable), or a request that could not be built.
        SdkError::ConstructionFailure(_) => {
            if find_source::<MissingJobId>(err).is_some() {
                SendFailure::Ambiguous
            } else {
                SendFailure::Rejected
            }
        }
        _ => SendFailure::Ambiguous,
    }
}

/// A connect failure (refused, unreachable, DNS) means no byte of the request left.
fn connection_never_opened(
    err: Option<&aws_smithy_runtime_api::client::result::ConnectorError>,
) -> bool {
    let Some(err) = err else { return false };
    if let Some(client) = find_source::<hyper_util::client::legacy::Error>(err) {
        return client.is_connect();
    }
    false
}

fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
