//! The job's environment, built the same way for AWS Batch and `--local`: what the bootstrap
//! needs (package, script, arguments, end-record nonce), what the place adds (Metaflow's
//! datastore settings on Batch; the job id and requested resources locally), then the user's
//! `--env`, which wins on a clash.

use crate::bootstrap::{end_record, Invocation};
use crate::spec::{BatchTarget, JobSpec, Resources};

use super::Prepared;

/// What the bootstrap is told about this job's package, with a fresh end-record nonce.
pub fn invocation(prepared: &Prepared, package_url: &str) -> Invocation {
    Invocation {
        package_url: package_url.to_owned(),
        package_sha256: prepared.package.sha256.clone(),
        package_files: prepared.manifest.files.len(),
        script: prepared.spec.script.clone(),
        args: prepared.spec.args.clone(),
        end_nonce: end_record::new_nonce(),
    }
}

/// A `--array-args` file as stored for the bootstrap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredArrayArgs {
    pub url: String,
    pub sha256: String,
}

/// What a Batch job adds: Metaflow's datastore settings and the region, so the step finds the
/// same S3 as the launcher did; an array's size and `--array-args` file, for the bootstrap.
pub fn batch_additions(
    target: &BatchTarget,
    region: &str,
    array_args: Option<&StoredArrayArgs>,
) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "METAFLOW_DATASTORE_SYSROOT_S3".to_owned(),
            target.datastore_root.to_string(),
        ),
        (
            "METAFLOW_DATATOOLS_S3ROOT".to_owned(),
            target.datatools_root.clone(),
        ),
        ("AWS_DEFAULT_REGION".to_owned(), region.to_owned()),
    ];
    if let Some(endpoint) = &target.s3_endpoint_url {
        env.push(("METAFLOW_S3_ENDPOINT_URL".to_owned(), endpoint.clone()));
    }
    if let Some(array) = &target.scheduling.array {
        env.push(("MFBATCH_ARRAY_SIZE".to_owned(), array.size.to_string()));
    }
    if let Some(args) = array_args {
        env.push(("MFBATCH_ARRAY_ARGS_URL".to_owned(), args.url.clone()));
        env.push(("MFBATCH_ARRAY_ARGS_SHA256".to_owned(), args.sha256.clone()));
    }
    env
}

/// What a local job adds: its id and the resources it asked for (not enforced locally).
pub fn local_additions(job_id: &str, resources: &Resources) -> Vec<(String, String)> {
    vec![
        ("MFBATCH_LOCAL_JOB_ID".to_owned(), job_id.to_owned()),
        ("MFBATCH_CPU".to_owned(), resources.vcpu.to_string()),
        (
            "MFBATCH_MEMORY_MIB".to_owned(),
            resources.memory.get().to_string(),
        ),
    ]
}

/// The bootstrap's variables, then `additions`, then the user's `--env` (which wins).
pub fn job_environment(
    spec: &JobSpec,
    invocation: &Invocation,
    additions: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut env = invocation.environment();
    env.extend(additions);
    for (k, v) in &spec.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}
