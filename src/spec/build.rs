//! Turns what the user asked for (flags as text, plus resolved settings) into a validated
//! [`JobSpec`]. Everything is checked here, before the first AWS call.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::launch::image::{resolve_image, PythonVersion};
use crate::s3url::S3Url;
use crate::settings::{Key, Resolved, Settings};
use crate::spec::{
    invalid, parse_env_pair, parse_gpu, BatchTarget, ContainerOptions, JobName, JobSpec,
    LocalTarget, MemoryMib, Resources, ScheduleOptions, Scheduling, Tags, Target, Vcpu,
};

/// The options of `mfbatch run` that are not settings, as the user typed them.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub script: PathBuf,
    pub root: Option<PathBuf>,
    pub args: Vec<String>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub gpu: Option<String>,
    pub env: Vec<String>,
    pub tags: Vec<String>,
    pub name: Option<String>,
    /// `X.Y`: the Python of the default image, instead of the local one.
    pub python: Option<String>,
    pub timeout_seconds: Option<String>,
    /// `--retries N`: extra attempts when the instance is lost (any failure with `retry_any_failure`).
    pub retries: Option<String>,
    pub retry_any_failure: bool,
    /// Run on this machine instead of AWS Batch.
    pub local: bool,
    /// `--package-suffixes`: more suffixes to package, added to the configured ones.
    pub extra_suffixes: Option<String>,
    /// `--array`, `--nodes`, `--depends-on` and their options (AWS Batch only).
    pub schedule: ScheduleOptions,
}

/// Batch's smallest attempt timeout.
const MIN_TIMEOUT_SECONDS: u64 = 60;

/// Builds and validates the job's spec.
pub fn build_spec(settings: &Settings, options: &RunOptions) -> Result<JobSpec, ConfigError> {
    let (root, script) = locate_script(&options.script, options.root.as_deref())?;
    let defaults = Resources::default();
    let resources = Resources {
        vcpu: options
            .cpu
            .as_deref()
            .map(|v| Vcpu::parse("--cpu", v))
            .transpose()?
            .unwrap_or(defaults.vcpu),
        memory: options
            .memory
            .as_deref()
            .map(|v| MemoryMib::parse("--memory", v))
            .transpose()?
            .unwrap_or(defaults.memory),
        gpu: match options.gpu.as_deref() {
            Some(v) => parse_gpu("--gpu", v)?,
            None => 0,
        },
    };
    let env = options
        .env
        .iter()
        .map(|e| parse_env_pair(e))
        .collect::<Result<Vec<_>, _>>()?;
    let user = settings.get(Key::User);
    let stem = Path::new(&script)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "step".into());
    let name = match &options.name {
        Some(n) => JobName::parse("--name", n)?,
        None => JobName::derived(user, &stem),
    };
    let mut suffixes = settings
        .get(Key::DefaultPackageSuffixes)
        .unwrap_or(crate::settings::DEFAULT_PACKAGE_SUFFIXES)
        .to_owned();
    if let Some(extra) = options
        .extra_suffixes
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        suffixes = format!("{suffixes},{extra}");
    }

    let target = if options.local {
        refuse_batch_only(settings, &options.schedule)?;
        let dir = settings.require(Key::DatastoreSysrootLocal)?;
        Target::Local(LocalTarget {
            datastore_dir: PathBuf::from(&dir.value),
        })
    } else {
        Target::Batch(Box::new(batch_target(settings, options, user, &script)?))
    };
    Ok(JobSpec {
        root,
        script,
        args: options.args.clone(),
        resources,
        env,
        name,
        package_suffixes: suffixes,
        target,
    })
}

fn batch_target(
    settings: &Settings,
    options: &RunOptions,
    user: Option<&str>,
    script: &str,
) -> Result<BatchTarget, ConfigError> {
    // A newcomer is missing them all: say so once rather than one per try.
    let missing: Vec<&'static str> = [
        Key::DatastoreSysrootS3,
        Key::BatchJobQueue,
        Key::EcsS3AccessIamRole,
    ]
    .into_iter()
    .filter(|key| settings.resolved(*key).is_none())
    .map(Key::name)
    .collect();
    if missing.len() > 1 {
        return Err(ConfigError::MissingSeveral { keys: missing });
    }
    // The seed's rule: Batch needs the S3 datastore, so it is checked first.
    let sysroot = settings.require(Key::DatastoreSysrootS3)?;
    let datastore_root = S3Url::parse(&sysroot.value)
        .map_err(|reason| setting_error(Key::DatastoreSysrootS3, sysroot, reason))?;
    for key in [Key::DatatoolsS3Root, Key::CondaPackageS3Root] {
        if let Some(r) = settings.resolved(key) {
            S3Url::parse(&r.value).map_err(|reason| setting_error(key, r, reason))?;
        }
    }
    let queue = settings.require(Key::BatchJobQueue)?.value.clone();
    let job_role_arn = settings.require(Key::EcsS3AccessIamRole)?;
    if !job_role_arn.value.starts_with("arn:") {
        return Err(setting_error(
            Key::EcsS3AccessIamRole,
            job_role_arn,
            "expected an IAM role ARN, such as arn:aws:iam::123456789012:role/metaflow-batch"
                .into(),
        ));
    }
    let python = match &options.python {
        Some(v) => Some(
            PythonVersion::parse(v)
                .ok_or_else(|| invalid("--python", v, "expected a version such as 3.11"))?,
        ),
        None => None,
    };
    let image = resolve_image(
        settings.get(Key::BatchContainerImage),
        settings.get(Key::BatchContainerRegistry),
        || python.map(Ok).unwrap_or_else(PythonVersion::detect_local),
    )?;
    let container = ContainerOptions::from_settings(settings)?;
    let execution_role_arn = settings
        .get(Key::EcsFargateExecutionRole)
        .map(str::to_owned);
    if let (Some(secret), None) = (container.secrets.first(), &execution_role_arn) {
        // Batch fetches secrets with the execution role, on EC2 too; without one the job
        // fails at start, after the upload.
        return Err(invalid(
            "--secret",
            &secret.name,
            "secrets are read with an execution role: pass --execution-role (METAFLOW_ECS_FARGATE_EXECUTION_ROLE) with secretsmanager:GetSecretValue / ssm:GetParameters, on EC2 queues too",
        ));
    }
    Ok(BatchTarget {
        image,
        queue,
        job_role_arn: job_role_arn.value.clone(),
        execution_role_arn,
        datastore_root,
        datatools_root: settings
            .get(Key::DatatoolsS3Root)
            .unwrap_or_default()
            .to_owned(),
        conda_root: settings
            .get(Key::CondaPackageS3Root)
            .unwrap_or_default()
            .to_owned(),
        s3_endpoint_url: s3_endpoint_url(settings)?,
        s3_server_side_encryption: s3_server_side_encryption(settings)?,
        tags: tags(settings, options, user, script)?,
        timeout_seconds: timeout_seconds(options)?,
        retries: retries(options)?,
        container,
        scheduling: Scheduling::build(settings, &options.schedule)?,
    })
}

/// `--local` runs one process on this machine: a flag for AWS Batch alone is a mistake (the same
/// settings from a config file are simply not used).
fn refuse_batch_only(settings: &Settings, schedule: &ScheduleOptions) -> Result<(), ConfigError> {
    let from_flag = crate::settings::BatchKey::ALL.into_iter().find(|key| {
        settings
            .resolved(Key::Batch(*key))
            .is_some_and(|r| matches!(r.origin, crate::settings::Origin::Flag(_)))
    });
    let flag = from_flag.map(|k| k.flag()).or(if schedule.array.is_some() {
        Some("--array")
    } else if schedule.nodes.is_some() {
        Some("--nodes")
    } else if !schedule.depends_on.is_empty() {
        Some("--depends-on")
    } else if schedule.array_args.is_some() || schedule.array_sequential {
        Some("--array-args")
    } else {
        None
    });
    match flag {
        Some(flag) => Err(invalid(
            flag,
            "--local",
            "is for AWS Batch jobs, not --local",
        )),
        None => Ok(()),
    }
}

fn s3_endpoint_url(settings: &Settings) -> Result<Option<String>, ConfigError> {
    match settings.resolved(Key::S3EndpointUrl) {
        Some(r) if !(r.value.starts_with("http://") || r.value.starts_with("https://")) => {
            Err(setting_error(
                Key::S3EndpointUrl,
                r,
                "expected an http:// or https:// URL".into(),
            ))
        }
        _ => Ok(settings.get(Key::S3EndpointUrl).map(str::to_owned)),
    }
}

fn s3_server_side_encryption(settings: &Settings) -> Result<Option<String>, ConfigError> {
    match settings.resolved(Key::S3ServerSideEncryption) {
        Some(r) if ["AES256", "aws:kms", "aws:kms:dsse"].contains(&r.value.as_str()) => {
            Ok(Some(r.value.clone()))
        }
        Some(r) => Err(setting_error(
            Key::S3ServerSideEncryption,
            r,
            "expected AES256, aws:kms or aws:kms:dsse".into(),
        )),
        None => Ok(None),
    }
}

/// mfbatch's own tags, then `METAFLOW_BATCH_DEFAULT_TAGS`, then `--tag`; within Batch's count.
fn tags(
    settings: &Settings,
    options: &RunOptions,
    user: Option<&str>,
    script: &str,
) -> Result<Tags, ConfigError> {
    let mut tags = Tags::default();
    // Derived from file and user names, which may hold anything: made valid, never refused.
    tags.insert_sanitized("mfbatch.version", env!("CARGO_PKG_VERSION"));
    tags.insert_sanitized("mfbatch.script", script);
    if let Some(user) = user {
        tags.insert_sanitized("mfbatch.user", user);
    }
    if let Some(r) = settings.resolved(Key::BatchDefaultTags) {
        tags.insert_json(&r.origin.to_string(), &r.value)?;
    }
    for tag in &options.tags {
        tags.insert_pair(tag)?;
    }
    // One more tag comes with every job: `mfbatch.request-id`.
    tags.check_count(1)?;
    Ok(tags)
}

/// `--timeout`: at least Batch's minimum, at most what its 32-bit field holds.
fn timeout_seconds(options: &RunOptions) -> Result<Option<u64>, ConfigError> {
    let Some(t) = &options.timeout_seconds else {
        return Ok(None);
    };
    let secs: u64 = t
        .trim()
        .parse()
        .map_err(|_| invalid("--timeout", t, "expected a whole number of seconds"))?;
    if secs < MIN_TIMEOUT_SECONDS {
        return Err(invalid(
            "--timeout",
            t,
            "AWS Batch needs at least 60 seconds",
        ));
    }
    // Batch takes a 32-bit signed number of seconds (about 68 years).
    if i32::try_from(secs).is_err() {
        return Err(invalid(
            "--timeout",
            t,
            &format!("AWS Batch takes at most {} seconds", i32::MAX),
        ));
    }
    Ok(Some(secs))
}

/// Batch allows 10 attempts in all.
const MAX_RETRIES: u8 = 9;

fn retries(options: &RunOptions) -> Result<crate::spec::Retries, ConfigError> {
    let count = match &options.retries {
        Some(text) => text
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= MAX_RETRIES)
            .ok_or_else(|| {
                invalid(
                    "--retries",
                    text,
                    "expected 0 to 9 (Batch allows 10 attempts in all)",
                )
            })?,
        None => 0,
    };
    if options.retry_any_failure && count == 0 {
        return Err(invalid(
            "--retry-any-failure",
            "on",
            "only has a meaning with --retries N",
        ));
    }
    Ok(crate::spec::Retries {
        count,
        on_any_failure: options.retry_any_failure,
    })
}

fn setting_error(key: Key, resolved: &Resolved, reason: String) -> ConfigError {
    ConfigError::InvalidSetting {
        key: key.name(),
        value: crate::settings::redact(key.name(), &resolved.value),
        origin: resolved.origin.to_string(),
        reason,
    }
}

/// Finds the package root and the script's path inside it.
fn locate_script(script: &Path, root: Option<&Path>) -> Result<(PathBuf, String), ConfigError> {
    let script_err = |reason: &str| ConfigError::Script {
        path: script.to_owned(),
        reason: reason.to_owned(),
    };
    if !script.is_file() {
        return Err(script_err(if script.exists() {
            "is not a file"
        } else {
            "does not exist"
        }));
    }
    let script_abs = script
        .canonicalize()
        .map_err(|e| script_err(&e.to_string()))?;
    let root_abs = match root {
        Some(r) => r.canonicalize().map_err(|e| ConfigError::InvalidFlag {
            flag: "--root",
            value: r.display().to_string(),
            reason: e.to_string(),
        })?,
        None => script_abs.parent().expect("a file has a parent").to_owned(),
    };
    let rel = script_abs
        .strip_prefix(&root_abs)
        .map_err(|_| ConfigError::InvalidFlag {
            flag: "--root",
            value: root_abs.display().to_string(),
            reason: format!("the script {} is not inside it", script.display()),
        })?;
    let rel = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    Ok((root_abs, rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_checked() {
        let options = |n: Option<&str>, any: bool| RunOptions {
            retries: n.map(Into::into),
            retry_any_failure: any,
            ..Default::default()
        };
        assert_eq!(retries(&options(None, false)).unwrap().count, 0);
        assert_eq!(retries(&options(Some("9"), true)).unwrap().count, 9);
        for bad in [
            options(Some("10"), false),
            options(Some("-1"), false),
            options(Some("x"), false),
            options(None, true),
        ] {
            assert!(retries(&bad).is_err(), "{bad:?}");
        }
    }
}
