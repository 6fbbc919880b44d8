//! The doctor's AWS checks, one function per piece, each turning what AWS answers into a [`Check`].

use aws_sdk_batch::types::{ComputeEnvironmentDetail, ComputeResource};
use aws_sdk_s3::primitives::ByteStream;

use super::Check;
use crate::aws::Clients;
use crate::error::{AwsError, AwsErrorKind, ConfigError, Service};
use crate::s3url::S3Url;
use crate::settings::{Key, Settings};
use crate::spec::Resources;

/// Who the credentials belong to (STS GetCallerIdentity needs no permission at all).
pub(super) async fn credentials(clients: &Clients) -> Check {
    match clients.sts.get_caller_identity().send().await {
        Ok(out) => Check::pass(
            "credentials",
            format!(
                "{} (account {})",
                out.arn().unwrap_or("?"),
                out.account().unwrap_or("?")
            ),
        ),
        Err(e) => {
            let err = AwsError::from_sdk(Service::Sts, "GetCallerIdentity", e);
            let detail = match err.kind {
                AwsErrorKind::Credentials => "no AWS credentials were found".to_owned(),
                AwsErrorKind::AccessDenied => format!(
                    "AWS refused the credentials: {}",
                    err.message
                        .as_deref()
                        .unwrap_or(err.code.as_deref().unwrap_or("?"))
                ),
                _ => format!("cannot check the credentials: {err}"),
            };
            let fix = match err.kind {
                AwsErrorKind::Credentials | AwsErrorKind::AccessDenied => Some(
                    "run `aws configure` or `aws sso login`, or export AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                        .into(),
                ),
                _ => err.hint(),
            };
            Check::fail("credentials", detail, fix)
        }
    }
}

/// The settings `run` needs resolve (with the same function `run` uses) and are set.
pub(super) fn settings(settings: Result<&Settings, &ConfigError>) -> Check {
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return Check::fail("settings", e.to_string(), e.hint()),
    };
    let required = [
        Key::DatastoreSysrootS3,
        Key::BatchJobQueue,
        Key::EcsS3AccessIamRole,
    ];
    let missing: Vec<&str> = required
        .iter()
        .filter(|k| settings.get(**k).is_none())
        .map(|k| k.name())
        .collect();
    if !missing.is_empty() {
        return Check::fail(
            "settings",
            format!("not set: {}", missing.join(", ")),
            Some("run `mfbatch configure --from-stack NAME` or `mfbatch configure aws`".into()),
        );
    }
    if let Some(root) = settings.get(Key::DatastoreSysrootS3) {
        if let Err(reason) = S3Url::parse(root) {
            return Check::fail(
                "settings",
                format!("METAFLOW_DATASTORE_SYSROOT_S3 {root:?}: {reason}"),
                None,
            );
        }
    }
    let files: Vec<String> = settings
        .files_read
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Check::pass(
        "settings",
        if files.is_empty() {
            "resolved from flags and the environment".to_owned()
        } else {
            format!("resolved (files read: {})", files.join(", "))
        },
    )
}

/// The identity can put, read and delete an object under the datastore root, as runs do.
pub(super) async fn bucket(clients: &Clients, root: &str, sse: Option<&str>) -> Check {
    const NAME: &str = "bucket";
    let Ok(url) = S3Url::parse(root) else {
        return Check::skipped(NAME, "needs a valid METAFLOW_DATASTORE_SYSROOT_S3");
    };
    let key = url.key(&format!("mfbatch/doctor/probe-{:016x}", fastrand::u64(..)));
    let body = b"mfbatch doctor probe\n";
    let mut put = clients
        .s3
        .put_object()
        .bucket(&url.bucket)
        .key(&key)
        .body(ByteStream::from_static(body));
    if let Some(sse) = sse {
        put = put.server_side_encryption(sse.into());
    }
    let fail = |call, err| bucket_failure(clients, &url, &key, call, err);
    if let Err(e) = put.send().await {
        return fail("PutObject", AwsError::from_sdk(Service::S3, "PutObject", e));
    }
    let read = clients
        .s3
        .get_object()
        .bucket(&url.bucket)
        .key(&key)
        .send()
        .await;
    let read = match read {
        Ok(out) => out.body.collect().await.map(|b| b.into_bytes()),
        Err(e) => return fail("GetObject", AwsError::from_sdk(Service::S3, "GetObject", e)),
    };
    let deleted = clients
        .s3
        .delete_object()
        .bucket(&url.bucket)
        .key(&key)
        .send()
        .await;
    match read {
        Ok(bytes) if bytes.as_ref() == body => {}
        Ok(_) => {
            return Check::fail(
                NAME,
                format!("s3://{}/{key} read back different bytes", url.bucket),
                None,
            )
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("reading s3://{}/{key} broke off: {e}", url.bucket),
                None,
            )
        }
    }
    if let Err(e) = deleted {
        return fail(
            "DeleteObject",
            AwsError::from_sdk(Service::S3, "DeleteObject", e),
        );
    }
    Check::pass(NAME, format!("put, read and deleted a probe under {root}"))
}

/// The bucket check's failure for a failed S3 call: a missing bucket, or the call and what to allow.
fn bucket_failure(
    clients: &Clients,
    url: &S3Url,
    key: &str,
    call: &'static str,
    err: AwsError,
) -> Check {
    const NAME: &str = "bucket";
    if err.code.as_deref() == Some("NoSuchBucket") {
        return Check::fail(
            NAME,
            format!("bucket {} does not exist", url.bucket),
            Some(format!(
                "create it (or deploy the stack: `mfbatch stack deploy NAME`), or point METAFLOW_DATASTORE_SYSROOT_S3 at an existing bucket (region {})",
                clients.region()
            )),
        );
    }
    let mut check = Check::fail(
        NAME,
        format!("{call} of s3://{}/{key} failed: {err}", url.bucket),
        err.hint(),
    );
    if err.kind == AwsErrorKind::AccessDenied {
        check.fix = Some(format!(
            "allow the identity {} on arn:aws:s3:::{}/*",
            crate::error::iam_permission(Service::S3, call),
            url.bucket
        ));
    }
    check
}

/// What the doctor learned about the queue, for the checks after it.
pub(super) struct QueueFacts {
    pub name: String,
    pub compute_environments: Vec<String>,
}

/// The queue exists, is ENABLED and VALID.
pub(super) async fn queue(clients: &Clients, queue: &str) -> (Check, Option<QueueFacts>) {
    const NAME: &str = "queue";
    let out = match clients
        .batch
        .describe_job_queues()
        .job_queues(queue)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let err = AwsError::from_sdk(Service::Batch, "DescribeJobQueues", e);
            return (Check::from_aws(NAME, "the queue", &err), None);
        }
    };
    let Some(detail) = out.job_queues().first() else {
        return (
            Check::fail(
                NAME,
                format!("job queue {queue} does not exist in region {}", clients.region()),
                Some("check METAFLOW_BATCH_JOB_QUEUE and AWS_REGION; `aws batch describe-job-queues` lists the queues".into()),
            ),
            None,
        );
    };
    let name = detail.job_queue_name().unwrap_or(queue).to_owned();
    let state = detail.state().map(|s| s.as_str()).unwrap_or("?");
    let status = detail.status().map(|s| s.as_str()).unwrap_or("?");
    let facts = QueueFacts {
        name: name.clone(),
        compute_environments: detail
            .compute_environment_order()
            .iter()
            .filter_map(|o| o.compute_environment().map(str::to_owned))
            .collect(),
    };
    let check = if state != "ENABLED" {
        Check::fail(
            NAME,
            format!("job queue {name} is {state}: it takes no jobs"),
            Some(format!(
                "aws batch update-job-queue --job-queue {name} --state ENABLED"
            )),
        )
    } else if status != "VALID" {
        Check::fail(
            NAME,
            format!(
                "job queue {name} is {status}{}",
                detail
                    .status_reason()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            Some("fix the reason above; `aws batch describe-job-queues` shows it".into()),
        )
    } else {
        Check::pass(NAME, format!("{name}: ENABLED, VALID"))
    };
    (check, Some(facts))
}

/// The queue's compute environments are ENABLED and VALID, and one has room for the job; and
/// whether they are all Fargate (then jobs need an execution role).
pub(super) async fn compute_environments(
    clients: &Clients,
    queue: &QueueFacts,
    resources: &Resources,
) -> (Check, bool) {
    let mut fargate = false;
    let check = compute_environments_check(clients, queue, resources, &mut fargate).await;
    (check, fargate)
}

async fn compute_environments_check(
    clients: &Clients,
    queue: &QueueFacts,
    resources: &Resources,
    fargate: &mut bool,
) -> Check {
    const NAME: &str = "compute environments";
    if queue.compute_environments.is_empty() {
        return Check::fail(
            NAME,
            format!("job queue {} has no compute environment", queue.name),
            Some("attach a compute environment to the queue".into()),
        );
    }
    let out = match clients
        .batch
        .describe_compute_environments()
        .set_compute_environments(Some(queue.compute_environments.clone()))
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let err = AwsError::from_sdk(Service::Batch, "DescribeComputeEnvironments", e);
            return Check::from_aws(NAME, "the compute environments", &err);
        }
    };
    // Decided before judging them, so the execution role is checked even when one is broken.
    *fargate = !out.compute_environments().is_empty()
        && out.compute_environments().iter().all(|ce| {
            ce.compute_resources()
                .and_then(|r| r.r#type())
                .is_some_and(|t| t.as_str().starts_with("FARGATE"))
        });
    let mut names = Vec::new();
    let mut capacity = Capacity::default();
    for ce in out.compute_environments() {
        match usable_environment(ce) {
            Ok(name) => names.push(name),
            Err(check) => return check,
        }
        capacity.add(ce.compute_resources());
    }
    if names.len() < queue.compute_environments.len() {
        return Check::fail(
            NAME,
            format!(
                "some compute environments of {} do not exist (found {})",
                queue.name,
                names.join(", ")
            ),
            None,
        );
    }
    let wanted = resources.vcpu.get();
    if let Some(max) = capacity.too_small_for(wanted) {
        return Check::fail(
            NAME,
            format!(
                "no compute environment of {} can reach {wanted} vCPUs (the largest maxvCpus is {max})",
                queue.name
            ),
            Some("raise maxvCpus (the stack's MaxVCpus parameter) or ask for fewer with --cpu".into()),
        );
    }
    let room = match capacity.largest {
        Some(max) => format!(", up to {max} vCPUs"),
        None => String::new(),
    };
    Check::pass(
        NAME,
        format!(
            "{}: ENABLED, VALID{room}; room for {wanted} vCPU and {} MiB",
            names.join(", "),
            resources.memory.get()
        ),
    )
}

/// The environment's name when it takes jobs (ENABLED and VALID), else the failed check.
fn usable_environment(ce: &ComputeEnvironmentDetail) -> Result<String, Check> {
    const NAME: &str = "compute environments";
    let name = ce.compute_environment_name().unwrap_or("?");
    let state = ce.state().map(|s| s.as_str()).unwrap_or("?");
    let status = ce.status().map(|s| s.as_str()).unwrap_or("?");
    if state != "ENABLED" {
        return Err(Check::fail(
            NAME,
            format!("compute environment {name} is {state}"),
            Some(format!(
                "aws batch update-compute-environment --compute-environment {name} --state ENABLED"
            )),
        ));
    }
    if status != "VALID" {
        return Err(Check::fail(
            NAME,
            format!(
                "compute environment {name} is {status}{}",
                ce.status_reason()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            Some("fix the reason above (often the instance role, subnets or service role), then update the environment".into()),
        ));
    }
    Ok(name.to_owned())
}

/// The most vCPUs any of a queue's environments can reach.
#[derive(Default)]
struct Capacity {
    largest: Option<i32>,
    /// An environment without a limit (unmanaged, or no maxvCpus reported).
    unlimited: bool,
}

impl Capacity {
    fn add(&mut self, resources: Option<&ComputeResource>) {
        match resources.map(|r| r.maxv_cpus()) {
            Some(Some(max)) => self.largest = self.largest.max(Some(max)),
            Some(None) | None => self.unlimited = true,
        }
    }

    /// The largest maxvCpus, when no environment can reach `wanted` vCPUs.
    fn too_small_for(&self, wanted: f64) -> Option<i32> {
        self.largest
            .filter(|&max| !self.unlimited && f64::from(max) < wanted)
    }
}

/// The role exists and ECS tasks may assume it.
pub(super) async fn role(clients: &Clients, name: &'static str, arn: &str) -> Check {
    // arn:aws:iam::123456789012:role/path/name -> name (paths are not part of the role name).
    let role_name = arn.rsplit('/').next().unwrap_or(arn);
    let out = match clients.iam.get_role().role_name(role_name).send().await {
        Ok(out) => out,
        Err(e) => {
            let err = AwsError::from_sdk(Service::Iam, "GetRole", e);
            if err.kind == AwsErrorKind::NotFound {
                return Check::fail(
                    name,
                    format!("role {arn} does not exist"),
                    Some("check the ARN (METAFLOW_ECS_S3_ACCESS_IAM_ROLE / METAFLOW_ECS_FARGATE_EXECUTION_ROLE) and the account".into()),
                );
            }
            return Check::from_aws(name, "the role", &err);
        }
    };
    let document = out
        .role()
        .and_then(|r| r.assume_role_policy_document())
        .unwrap_or_default();
    if trusts_ecs_tasks(document) {
        Check::pass(name, format!("{arn} trusts ecs-tasks.amazonaws.com"))
    } else {
        Check::fail(
            name,
            format!("role {arn} does not trust ecs-tasks.amazonaws.com, so Batch jobs cannot use it"),
            Some(format!(
                "add a statement allowing sts:AssumeRole to the service ecs-tasks.amazonaws.com to its trust policy (`aws iam update-assume-role-policy --role-name {role_name} ...`)"
            )),
        )
    }
}

/// Whether a trust policy lets the `ecs-tasks.amazonaws.com` service assume the role. IAM returns
/// the document URL-encoded.
pub(super) fn trusts_ecs_tasks(document: &str) -> bool {
    let decoded = percent_decode(document);
    let Ok(policy) = serde_json::from_str::<serde_json::Value>(&decoded) else {
        return false;
    };
    let as_list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    as_list_of_objects(&policy["Statement"]).iter().any(|s| {
        s["Effect"] == "Allow"
            && as_list(&s["Action"])
                .iter()
                .any(|a| a == "sts:AssumeRole" || a == "sts:*" || a == "*")
            && as_list(&s["Principal"]["Service"])
                .iter()
                .any(|p| p == "ecs-tasks.amazonaws.com")
    })
}

fn as_list_of_objects(v: &serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(items) => items.clone(),
        serde_json::Value::Object(_) => vec![v.clone()],
        _ => Vec::new(),
    }
}

/// Decodes `%XX` escapes (and `+` as a space, as IAM's form encoding does); leaves anything else.
fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => {
                let digit = |at: usize| bytes.get(at).and_then(|b| hex(*b));
                match (digit(i + 1), digit(i + 2)) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Batch's log group can be read. It does not exist before the first job: that is fine.
pub(super) async fn logs(clients: &Clients) -> Check {
    const NAME: &str = "logs";
    const GROUP: &str = "/aws/batch/job";
    match clients
        .logs
        .describe_log_streams()
        .log_group_name(GROUP)
        .limit(1)
        .send()
        .await
    {
        Ok(_) => Check::pass(NAME, format!("{GROUP} is readable")),
        Err(e) => {
            let err = AwsError::from_sdk(Service::Logs, "DescribeLogStreams", e);
            if err.kind == AwsErrorKind::NotFound {
                Check::pass(
                    NAME,
                    format!(
                        "{GROUP} does not exist yet (Batch creates it with the first job's logs)"
                    ),
                )
            } else {
                Check::from_aws(NAME, GROUP, &err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_policies_are_read_encoded_or_not() {
        let ecs = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":["batch.amazonaws.com","ecs-tasks.amazonaws.com"]},"Action":"sts:AssumeRole"}]}"#;
        assert!(trusts_ecs_tasks(ecs));
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service%22%3A%22ecs-tasks.amazonaws.com%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D";
        assert!(trusts_ecs_tasks(encoded));
        let ec2 = r#"{"Statement":{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":["sts:AssumeRole"]}}"#;
        assert!(!trusts_ecs_tasks(ec2));
        let denied = r#"{"Statement":[{"Effect":"Deny","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        assert!(!trusts_ecs_tasks(denied));
        assert!(!trusts_ecs_tasks("not json"));
    }
}
