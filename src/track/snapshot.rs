//! What one DescribeJobs answer says about a job, reduced to what following it needs (how it
//! ends is decided in `outcome`).

use std::collections::BTreeMap;

use aws_sdk_batch::types::JobDetail;

use crate::bootstrap::end_record::NONCE_ENV;
use crate::event::JobStatus;

/// DescribeJobs for up to [`super::MAX_IDS_PER_CALL`] ids: the snapshots of the jobs Batch knows
/// (ids it does not know are simply missing). The one place that asks Batch about jobs.
pub async fn describe(
    client: &aws_sdk_batch::Client,
    ids: &[String],
) -> Result<Vec<JobSnapshot>, crate::error::AwsError> {
    debug_assert!(ids.len() <= super::MAX_IDS_PER_CALL);
    let out = client
        .describe_jobs()
        .set_jobs(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| {
            crate::error::AwsError::from_sdk(crate::error::Service::Batch, "DescribeJobs", e)
        })?;
    Ok(out
        .jobs()
        .iter()
        .filter_map(JobSnapshot::from_detail)
        .collect())
}

/// The default CloudWatch log group of Batch jobs.
pub const DEFAULT_LOG_GROUP: &str = "/aws/batch/job";

/// One job as DescribeJobs saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub job_id: String,
    pub job_name: String,
    pub status: JobStatus,
    pub status_reason: Option<String>,
    pub queue: String,
    pub log_group: String,
    pub attempts: Vec<AttemptSnapshot>,
    /// The current (or last) attempt's container.
    pub container: AttemptSnapshot,
    pub vcpus: Option<String>,
    pub memory_mib: Option<String>,
    /// The nonce of the job's end records, when mfbatch launched it.
    pub end_nonce: Option<String>,
    /// When the job started and stopped (epoch ms), once it has.
    pub started_at_ms: Option<i64>,
    pub stopped_at_ms: Option<i64>,
    /// The job's retry strategy, when it has one.
    pub retry: Option<RetryPolicy>,
    /// An array parent's size and children's counts, or an array child's index.
    pub array: Option<ArraySnapshot>,
    /// A multi-node job's node count and main node, or a node's own index.
    pub nodes: Option<NodesSnapshot>,
}

/// `nodeProperties` of a multi-node parent, `nodeDetails` of one of its nodes (`<job>#<n>`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodesSnapshot {
    pub num_nodes: Option<usize>,
    pub main_node: Option<usize>,
    /// A node's own index, and whether it is the main node (absent on the parent).
    pub node_index: Option<usize>,
    pub is_main: Option<bool>,
}

impl NodesSnapshot {
    fn from_detail(detail: &JobDetail) -> Option<Self> {
        let index = |n: Option<i32>| n.map(|n| n.max(0) as usize);
        let properties = detail.node_properties();
        let node = detail.node_details();
        if properties.is_none() && node.is_none() {
            return None;
        }
        Some(NodesSnapshot {
            num_nodes: index(properties.and_then(|p| p.num_nodes())),
            main_node: index(properties.and_then(|p| p.main_node())),
            node_index: index(node.and_then(|n| n.node_index())),
            is_main: node.and_then(|n| n.is_main_node()),
        })
    }

    /// Whether this is a multi-node job's parent (it has nodes, not an index).
    pub fn is_parent(&self) -> bool {
        self.node_index.is_none() && self.is_main.is_none()
    }
}

/// `arrayProperties`: a parent has a size and a status summary, a child an index.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArraySnapshot {
    pub size: Option<usize>,
    pub index: Option<usize>,
    /// Children by status (it lags behind the children themselves).
    pub counts: BTreeMap<JobStatus, usize>,
}

impl ArraySnapshot {
    fn from_detail(detail: &JobDetail) -> Option<Self> {
        let a = detail.array_properties()?;
        let counts = a
            .status_summary()
            .into_iter()
            .flatten()
            .filter_map(|(status, n)| Some((JobStatus::parse(status)?, (*n).max(0) as usize)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Some(ArraySnapshot {
            size: a.size().map(|s| s.max(0) as usize),
            index: a.index().map(|i| i.max(0) as usize),
            counts,
        })
    }

    /// Whether this is an array's parent (it has children, not an index).
    pub fn is_parent(&self) -> bool {
        self.size.is_some() && self.index.is_none()
    }
}

/// A job's `retryStrategy`: how many attempts, and which exits Batch retries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryPolicy {
    pub attempts: usize,
    pub rules: Vec<ExitRule>,
}

/// One `evaluateOnExit` rule. Patterns match exactly, or by prefix when they end with `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitRule {
    pub on_status_reason: Option<String>,
    pub on_reason: Option<String>,
    pub on_exit_code: Option<String>,
    pub retry: bool,
}

/// One attempt's container, and why it stopped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptSnapshot {
    pub log_stream: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub status_reason: Option<String>,
}

impl JobSnapshot {
    pub fn from_detail(detail: &JobDetail) -> Option<Self> {
        let status = JobStatus::parse(detail.status()?.as_str())?;
        let container = detail.container();
        let log_group = container
            .and_then(|c| c.log_configuration())
            .and_then(|l| l.options())
            .and_then(|o| o.get("awslogs-group"))
            .cloned()
            .unwrap_or_else(|| DEFAULT_LOG_GROUP.to_owned());
        let requirement = |kind: &str| {
            container?
                .resource_requirements()
                .iter()
                .find(|r| r.r#type().is_some_and(|t| t.as_str() == kind))
                .and_then(|r| r.value().map(str::to_owned))
        };
        let attempts = detail
            .attempts()
            .iter()
            .map(|a| AttemptSnapshot {
                log_stream: a
                    .container()
                    .and_then(|c| c.log_stream_name())
                    .map(str::to_owned),
                exit_code: a.container().and_then(|c| c.exit_code()),
                reason: a.container().and_then(|c| c.reason()).map(str::to_owned),
                status_reason: a.status_reason().map(str::to_owned),
            })
            .collect();
        Some(JobSnapshot {
            job_id: detail.job_id()?.to_owned(),
            job_name: detail.job_name().unwrap_or_default().to_owned(),
            status,
            status_reason: detail.status_reason().map(str::to_owned),
            queue: detail.job_queue().unwrap_or_default().to_owned(),
            log_group,
            attempts,
            container: AttemptSnapshot {
                log_stream: container
                    .and_then(|c| c.log_stream_name())
                    .map(str::to_owned),
                exit_code: container.and_then(|c| c.exit_code()),
                reason: container.and_then(|c| c.reason()).map(str::to_owned),
                status_reason: None,
            },
            vcpus: requirement("VCPU"),
            memory_mib: requirement("MEMORY"),
            end_nonce: container
                .map(|c| c.environment())
                .unwrap_or_default()
                .iter()
                .find(|kv| kv.name() == Some(NONCE_ENV))
                .and_then(|kv| kv.value())
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            // The SDK's model has `startedAt` required: a job that never started reads 0.
            started_at_ms: detail.started_at().filter(|t| *t > 0),
            stopped_at_ms: detail.stopped_at(),
            retry: detail.retry_strategy().map(|r| RetryPolicy {
                attempts: r.attempts().unwrap_or(1).max(1) as usize,
                rules: r
                    .evaluate_on_exit()
                    .iter()
                    .map(|e| ExitRule {
                        on_status_reason: e.on_status_reason().map(str::to_owned),
                        on_reason: e.on_reason().map(str::to_owned),
                        on_exit_code: e.on_exit_code().map(str::to_owned),
                        retry: e.action().map(|a| a.as_str()) == Some("RETRY"),
                    })
                    .collect(),
            }),
            array: ArraySnapshot::from_detail(detail),
            nodes: NodesSnapshot::from_detail(detail),
        })
    }

    /// Whether this is an array's parent, which never runs itself.
    pub fn is_array_parent(&self) -> bool {
        self.array.as_ref().is_some_and(ArraySnapshot::is_parent)
    }

    /// Whether this is a multi-node parallel job's parent, whose nodes are `<job>#<n>`.
    pub fn is_multinode_parent(&self) -> bool {
        self.nodes.as_ref().is_some_and(NodesSnapshot::is_parent)
    }

    /// The attempt that is running now (or ran last), 1-based.
    pub fn current_attempt(&self) -> usize {
        if self.status.is_terminal() || self.container.log_stream.is_none() {
            self.attempts.len().max(1)
        } else {
            self.attempts.len() + 1
        }
    }

    /// Log streams by attempt (1-based), oldest first; the current attempt's stream may only be
    /// on `container` while the attempt is running.
    pub fn log_streams(&self) -> Vec<(usize, String)> {
        let mut streams: Vec<(usize, String)> = self
            .attempts
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.log_stream.clone().map(|s| (i + 1, s)))
            .collect();
        if let Some(current) = &self.container.log_stream {
            if !streams.iter().any(|(_, s)| s == current) {
                let attempt = if self.status.is_terminal() {
                    self.attempts.len().max(1)
                } else {
                    self.attempts.len() + 1
                };
                streams.push((attempt, current.clone()));
            }
        }
        streams
    }
}
