//! The read-only step of a launch: what the queue, the store and the definitions already hold,
//! whether the queue can take the job, and the exact requests a real run will send (what
//! `--dry-run` prints).

use serde::Serialize;

use super::cache::PlanCache;
use super::environment::{self, StoredArrayArgs};
use super::jobdef::{self, JobDefinition, NameValue, Platform, Registered};
use super::package::sha256_hex;
use super::queue::{self, QueueInfo};
use super::scheduling::SubmitScheduling;
use super::store::{PackageStore, Presence, S3Store};
use super::submit::{
    resource_requirements, ContainerOverrides, RetryStrategy, SubmitRequest, Timeout,
    REQUEST_ID_TAG,
};
use super::{LaunchError, Prepared};
use crate::aws::Clients;
use crate::error::ConfigError;
use crate::event::Warning;
use crate::spec::{BatchTarget, JobSpec};

/// Batch's limit on a job definition's size.
const MAX_DEFINITION_BYTES: usize = 24 * 1024;

/// What a Batch launch will do, learned with read-only calls; `--dry-run` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub queue: QueueInfo,
    pub package_url: String,
    pub package_sha256: String,
    pub package_bytes: u64,
    /// The package is already stored: nothing to upload.
    pub package_present: bool,
    pub job_definition: JobDefinition,
    /// An ACTIVE definition with the same content: nothing to register.
    pub existing_definition: Option<Registered>,
    pub submit_job: SubmitRequest,
    /// Where the `--array-args` file goes (uploaded by `stage` like the package).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_args: Option<StoredArrayArgs>,
    /// What the plan found worth telling the user ([`plan`] has no event sink: the caller shows
    /// these).
    #[serde(skip)]
    pub warnings: Vec<Warning>,
}

/// Learns what exists (queue, package, definition) without changing anything.
pub async fn plan(clients: &Clients, prepared: &Prepared) -> Result<Plan, LaunchError> {
    plan_cached(clients, prepared, &PlanCache::default()).await
}

/// [`plan`], asking AWS only what `cache` does not already know.
pub async fn plan_cached(
    clients: &Clients,
    prepared: &Prepared,
    cache: &PlanCache,
) -> Result<Plan, LaunchError> {
    let target = prepared.spec.batch().ok_or(LaunchError::NotBatch)?;
    let store = S3Store::new(clients.s3.clone(), target.datastore_root.clone());
    let sha = &prepared.package.sha256;
    let presence = async {
        if cache.is_stored(&store.url(sha)) {
            return Ok(Presence::Present);
        }
        store.presence(sha).await
    };
    let (lookup, presence) = tokio::join!(
        queue_and_definition(clients, target, &prepared.spec, cache),
        presence
    );
    let (queue, definition, existing) = lookup?;
    let presence = presence?;
    let mut warnings = scheduling_warnings(&queue, target);
    if presence == Presence::Unknown {
        warnings.push(Warning::Notice {
            message: format!(
                "warning: S3 answered 403 to HeadObject on the package, so it may or may not be stored; it will be uploaded unless already there (conditional put). Grant s3:ListBucket on bucket {} to skip this upload.",
                target.datastore_root.bucket
            ),
        });
    }
    let package_url = store.url(sha);
    let array_args = stored_array_args(target, &store);
    let definition_ref = existing
        .as_ref()
        .map(|e| e.arn.clone())
        .unwrap_or_else(|| definition.job_definition_name.clone());
    let mut submit_job = submit_request(
        prepared,
        target,
        &package_url,
        clients.region(),
        definition_ref,
        array_args.as_ref(),
    );
    pass_s3_endpoint(&mut submit_job, clients);
    submit_job
        .scheduling
        .take_overrides(&mut submit_job.container_overrides);
    submit_job.check_limits()?;
    Ok(Plan {
        queue,
        package_url,
        package_sha256: sha.clone(),
        package_bytes: prepared.package.size,
        package_present: presence == Presence::Present,
        job_definition: definition,
        existing_definition: existing,
        submit_job,
        array_args,
        warnings,
    })
}

/// The queue (checked to take this job), the definition the job needs, and an ACTIVE one with
/// the same content when there is one.
async fn queue_and_definition(
    clients: &Clients,
    target: &BatchTarget,
    spec: &JobSpec,
    cache: &PlanCache,
) -> Result<(QueueInfo, JobDefinition, Option<Registered>), LaunchError> {
    let queue = match cache.queue(&target.queue) {
        Some(queue) => queue,
        None => queue::describe(&clients.batch, &target.queue)
            .await?
            .ok_or_else(|| LaunchError::QueueNotFound {
                queue: target.queue.clone(),
                region: clients.region().to_owned(),
            })?,
    };
    cache.remember_queue(&target.queue, &queue);
    let platform = check_fits(&queue, target, spec)?;
    check_scheduling(&queue, target, platform)?;
    let definition = JobDefinition::build(target, platform);
    let size = definition.json_len();
    if size > MAX_DEFINITION_BYTES {
        return Err(ConfigError::OverLimit {
            what: "the job definition in bytes".into(),
            actual: size,
            limit: MAX_DEFINITION_BYTES,
        }
        .into());
    }
    let existing = match cache.definition(&definition.job_definition_name) {
        Some(known) => Some(known),
        None => jobdef::find(&clients.batch, &definition).await?,
    };
    Ok((queue, definition, existing))
}

/// Where the `--array-args` file is stored (content-addressed, beside the packages).
fn stored_array_args(target: &BatchTarget, store: &S3Store) -> Option<StoredArrayArgs> {
    let args = target.scheduling.array.as_ref()?.args.as_ref()?;
    let sha256 = sha256_hex(&args.bytes);
    Some(StoredArrayArgs {
        url: store.array_args_url(&sha256),
        sha256,
    })
}

/// Whether the queue takes this job: enabled, and able to run what it asks for on its
/// platform (Batch accepts a job no compute environment can place and leaves it RUNNABLE
/// forever). Its platform, when it does.
fn check_fits(
    queue: &QueueInfo,
    target: &BatchTarget,
    spec: &JobSpec,
) -> Result<Platform, LaunchError> {
    if queue.state != "ENABLED" && !queue.state.is_empty() {
        return Err(LaunchError::QueueDisabled {
            queue: target.queue.clone(),
            state: queue.state.clone(),
        });
    }
    let platform = queue.platform();
    let unfit = |flag: &'static str, value: String, why: String| -> LaunchError {
        ConfigError::InvalidFlag {
            flag,
            value,
            reason: format!("queue {} {why}", target.queue),
        }
        .into()
    };
    if platform == Platform::Fargate && target.execution_role_arn.is_none() {
        return Err(ConfigError::Missing {
            key: "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
            flag: Some("--execution-role"),
        }
        .into());
    }
    let vcpu = spec.resources.vcpu;
    if platform == Platform::Ec2 && vcpu.get().fract() != 0.0 {
        return Err(unfit(
            "--cpu",
            vcpu.to_string(),
            "runs on EC2, which takes whole vCPUs (fractions are for Fargate)".into(),
        ));
    }
    if let Some(max) = queue.max_vcpus().filter(|max| vcpu.get() > f64::from(*max)) {
        return Err(unfit(
            "--cpu",
            vcpu.to_string(),
            format!("has no compute environment that reaches more than {max} vCPUs"),
        ));
    }
    if platform == Platform::Fargate && spec.resources.gpu > 0 {
        return Err(unfit(
            "--gpu",
            spec.resources.gpu.to_string(),
            "runs on Fargate, which has no GPUs".into(),
        ));
    }
    Ok(platform)
}

/// The container options against the queue's platform, and the SubmitJob options against the
/// queue: multi-node jobs on EC2 only; `--share` exactly when the queue has a scheduling policy.
fn check_scheduling(
    queue: &QueueInfo,
    target: &BatchTarget,
    platform: Platform,
) -> Result<(), LaunchError> {
    let unfit = |flag: &'static str, value: String, why: String| -> LaunchError {
        ConfigError::InvalidFlag {
            flag,
            value,
            reason: format!("queue {} {why}", target.queue),
        }
        .into()
    };
    if let Some((flag, value, why)) = target.container.check_platform(platform) {
        return Err(unfit(flag, value, why));
    }
    let scheduling = &target.scheduling;
    if let (Some(nodes), Platform::Fargate) = (scheduling.nodes, platform) {
        return Err(unfit(
            "--nodes",
            nodes.to_string(),
            "runs on Fargate; multi-node jobs run on EC2 compute environments only".into(),
        ));
    }
    match (&queue.scheduling_policy_arn, &scheduling.share) {
        (Some(policy), None) => Err(unfit(
            "--share",
            String::new(),
            format!("has a fair-share scheduling policy ({policy}), so every job needs --share ID (or MFBATCH_SHARE)"),
        )),
        (None, Some(share)) => Err(unfit(
            "--share",
            share.clone(),
            "has no scheduling policy, and Batch refuses a share identifier there (leave out --share)".into(),
        )),
        _ => Ok(()),
    }
}

/// What may not work as the user thinks, without being an error.
fn scheduling_warnings(queue: &QueueInfo, target: &BatchTarget) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let notice = |message: String| Warning::Notice { message };
    if target.scheduling.nodes.is_some()
        && queue
            .compute_environments
            .iter()
            .any(|ce| ce.resource_type == "SPOT" || ce.resource_type.is_empty())
    {
        warnings.push(notice(format!(
            "warning: queue {} has Spot or unmanaged compute environments, which do not run multi-node jobs; the job may stay RUNNABLE",
            target.queue
        )));
    }
    if target.scheduling.priority.is_some() && queue.scheduling_policy_arn.is_none() {
        warnings.push(notice(format!(
            "warning: --priority only orders jobs in fair-share queues; queue {} has no scheduling policy",
            target.queue
        )));
    }
    warnings
}

/// Gives the job the S3 endpoint the upload used when it came from `AWS_ENDPOINT_URL(_S3)`
/// rather than `METAFLOW_S3_ENDPOINT_URL`: the container does not see this machine's environment,
/// and without it the bootstrap looks for the package on AWS's S3 (and exits 121).
fn pass_s3_endpoint(submit_job: &mut SubmitRequest, clients: &Clients) {
    const NAME: &str = "METAFLOW_S3_ENDPOINT_URL";
    let Some(endpoint) = clients.s3_endpoint_url() else {
        return;
    };
    let environment = &mut submit_job.container_overrides.environment;
    if !environment.iter().any(|kv| kv.name == NAME) {
        environment.push(NameValue {
            name: NAME.to_owned(),
            value: endpoint.to_owned(),
        });
    }
}

fn submit_request(
    prepared: &Prepared,
    target: &BatchTarget,
    package_url: &str,
    region: &str,
    job_definition: String,
    array_args: Option<&StoredArrayArgs>,
) -> SubmitRequest {
    let spec = &prepared.spec;
    let invocation = environment::invocation(prepared, package_url);
    let additions = environment::batch_additions(target, region, array_args);
    let environment = environment::job_environment(spec, &invocation, additions)
        .into_iter()
        .map(|(name, value)| NameValue { name, value })
        .collect();
    SubmitRequest {
        job_name: spec.name.to_string(),
        job_queue: target.queue.clone(),
        job_definition,
        container_overrides: ContainerOverrides {
            environment,
            resource_requirements: resource_requirements(&spec.resources),
            moved_to_nodes: false,
        },
        scheduling: SubmitScheduling::build(&target.scheduling),
        tags: target
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            // Lets a SubmitJob whose answer was lost be found instead of sent again.
            .chain([(
                REQUEST_ID_TAG.to_owned(),
                crate::bootstrap::end_record::new_nonce(),
            )])
            .collect(),
        propagate_tags: true,
        retry_strategy: RetryStrategy::for_retries(&target.retries),
        timeout: target.timeout_seconds.map(|s| Timeout {
            attempt_duration_seconds: s,
        }),
    }
}
