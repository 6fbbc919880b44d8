//! The launch path: package the code, learn what AWS already has (read-only), then upload,
//! register and submit only what is missing.
//!
//! Split in steps so a caller can stop between them: [`prepare`] works on this machine only,
//! [`plan`] only reads from AWS (`--dry-run` stops there), [`stage`] uploads and registers what is
//! missing (safe to abandon), and [`submit`] creates the job. [`execute`] is `stage` + `submit`.

pub mod cache;
pub mod container;
pub mod environment;
pub mod image;
pub mod jobdef;
pub mod package;
mod plan;
pub mod queue;
pub mod scheduling;
pub mod store;
pub mod submit;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::aws::Clients;
use crate::error::{AwsError, ConfigError, PackageError};
use crate::event::{Event, EventSink, Warning};
use crate::spec::JobSpec;
use jobdef::Registered;
use package::{Built, Manifest, SuffixFilter};
use store::{PackageStore, S3Store, StoreError};
use submit::SubmitRequest;

pub use plan::{plan, plan_cached, Plan};

/// Packages above this size slow every job start; say so.
pub const LARGE_PACKAGE_BYTES: u64 = 100 * 1024 * 1024;

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the code package")]
    Package(#[from] PackageError),
    #[error("cannot store the code package")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("job queue {queue:?} does not exist in region {region}")]
    QueueNotFound { queue: String, region: String },
    #[error("job queue {queue:?} is {state} and takes no jobs")]
    QueueDisabled { queue: String, state: String },
    /// `plan` and `stage` were given a `--local` job (use `local::run`).
    #[error("the job is for this machine (--local), not for AWS Batch")]
    NotBatch,
}

impl LaunchError {
    pub fn hint(&self) -> Option<String> {
        match self {
            LaunchError::Config(e) => e.hint(),
            LaunchError::Aws(e) | LaunchError::Store(StoreError::Aws(e)) => e.hint(),
            LaunchError::QueueNotFound { .. } => Some(
                "check --queue / METAFLOW_BATCH_JOB_QUEUE and AWS_REGION; `aws batch describe-job-queues` lists the queues"
                    .into(),
            ),
            LaunchError::QueueDisabled { .. } => Some("enable the queue, or pass another with --queue".into()),
            LaunchError::Package(PackageError::ScriptExcluded { .. }) => Some(
                "rename the script, or add its suffix with --package-suffixes (or METAFLOW_DEFAULT_PACKAGE_SUFFIXES)".into(),
            ),
            _ => None,
        }
    }

    /// Whether this is the user's input or configuration (exit code 2) rather than a failure.
    /// Missing credentials count: nothing was sent, and the fix is in the user's setup.
    pub fn is_usage(&self) -> bool {
        let no_credentials = |e: &AwsError| e.kind == crate::error::AwsErrorKind::Credentials;
        if let LaunchError::Aws(e) | LaunchError::Store(StoreError::Aws(e)) = self {
            return no_credentials(e);
        }
        matches!(
            self,
            LaunchError::Config(_)
                | LaunchError::Package(PackageError::ScriptExcluded { .. })
                | LaunchError::QueueNotFound { .. }
                | LaunchError::QueueDisabled { .. }
        )
    }
}

/// The code, packaged on local disk.
#[derive(Debug)]
pub struct Prepared {
    pub spec: JobSpec,
    pub manifest: Manifest,
    pub package: Built,
    // Holds the package file; removed when this is dropped.
    _dir: tempfile::TempDir,
}

/// Sets the flag when dropped: the blocking packaging thread watches it, so that abandoning
/// [`prepare`]'s future (an interrupt) stops the work instead of leaving it running.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Walks the root and builds the package (on a blocking thread: it is file and CPU work).
/// Dropping the future stops the packaging soon after.
pub async fn prepare(spec: JobSpec, events: &EventSink) -> Result<Prepared, LaunchError> {
    let dir = tempfile::Builder::new()
        .prefix("mfbatch-package-")
        .tempdir()
        .map_err(|source| PackageError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
    let out = dir.path().join("package.tgz");
    let filter = SuffixFilter::parse(&spec.package_suffixes);
    let root = spec.root.clone();
    let cancel = CancelOnDrop(Arc::default());
    let cancelled = cancel.0.clone();
    let (manifest, built) = tokio::task::spawn_blocking(move || {
        let manifest = package::collect_cancellable(&root, &filter, &cancelled)?;
        let built = package::build_cancellable(&manifest, &out, &cancelled)?;
        Ok::<_, PackageError>((manifest, built))
    })
    .await
    .expect("packaging does not panic")?;
    if !manifest.contains(&spec.script) {
        return Err(PackageError::ScriptExcluded {
            script: PathBuf::from(&spec.script),
            suffixes: spec.package_suffixes.clone(),
        }
        .into());
    }
    for skipped in &manifest.skipped {
        events(Event::Warning(Warning::Skipped(skipped.clone())));
    }
    if spec.batch().is_some() {
        // Container overrides are stored with the job, in clear, for as long as Batch keeps it.
        for (name, _) in spec
            .env
            .iter()
            .filter(|(n, _)| crate::settings::is_secret(n))
        {
            events(Event::Warning(Warning::Notice {
                message: format!(
                    "warning: --env {name} looks like a secret; job environments are visible in clear to anyone allowed batch:DescribeJobs (pass secrets through AWS Secrets Manager or SSM instead)"
                ),
            }));
        }
    }
    events(Event::Packaged {
        files: manifest.files.len(),
        bytes: built.size,
        sha256: built.sha256.clone(),
    });
    if built.size > LARGE_PACKAGE_BYTES {
        events(Event::Warning(Warning::LargePackage { bytes: built.size }));
    }
    Ok(Prepared {
        spec,
        manifest,
        package: built,
        _dir: dir,
    })
}

/// A job that Batch accepted.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub job_id: String,
    pub job_name: String,
    pub queue: String,
    pub job_definition: Registered,
    pub package_url: String,
}

/// A launch with its package stored and its definition registered: only SubmitJob is left.
#[derive(Debug, Clone)]
pub struct Staged {
    pub submit_job: SubmitRequest,
    pub job_definition: Registered,
    pub package_url: String,
}

/// Uploads the package and registers the definition when missing, then submits the job.
pub async fn execute(
    clients: &Clients,
    prepared: &Prepared,
    plan: Plan,
    events: &EventSink,
) -> Result<Submitted, LaunchError> {
    let staged = stage(clients, prepared, plan, events).await?;
    submit(clients, staged, events).await
}

/// Uploads the package and registers the definition when missing. Safe to abandon at any point:
/// what it leaves behind is content-addressed and reused by the next run.
pub async fn stage(
    clients: &Clients,
    prepared: &Prepared,
    mut plan: Plan,
    events: &EventSink,
) -> Result<Staged, LaunchError> {
    let target = prepared.spec.batch().ok_or(LaunchError::NotBatch)?;
    let upload = async {
        if plan.package_present {
            events(Event::UploadSkipped {
                url: plan.package_url.clone(),
            });
            return Ok(());
        }
        let store = S3Store::new(clients.s3.clone(), target.datastore_root.clone())
            .with_server_side_encryption(target.s3_server_side_encryption.as_deref());
        events(Event::UploadStarted {
            url: plan.package_url.clone(),
            bytes: prepared.package.size,
        });
        let progress = |sent, total| events(Event::UploadProgress { sent, total });
        store.put(&prepared.package, &progress).await?;
        events(Event::Uploaded {
            url: plan.package_url.clone(),
            bytes: prepared.package.size,
        });
        Ok::<_, LaunchError>(())
    };
    let upload_array_args = async {
        let (Some(stored), Some(args)) = (
            &plan.array_args,
            target
                .scheduling
                .array
                .as_ref()
                .and_then(|a| a.args.as_ref()),
        ) else {
            return Ok(());
        };
        S3Store::new(clients.s3.clone(), target.datastore_root.clone())
            .with_server_side_encryption(target.s3_server_side_encryption.as_deref())
            .put_array_args(&stored.sha256, args.bytes.clone())
            .await?;
        Ok::<_, LaunchError>(())
    };
    let register = async {
        match &plan.existing_definition {
            Some(existing) => Ok(existing.clone()),
            None => {
                Ok::<_, LaunchError>(jobdef::register(&clients.batch, &plan.job_definition).await?)
            }
        }
    };
    let (uploaded, registered, args_uploaded) = tokio::join!(upload, register, upload_array_args);
    uploaded?;
    args_uploaded?;
    let registered = registered?;
    events(Event::JobDefinition {
        name: registered.name.clone(),
        arn: registered.arn.clone(),
        registered: registered.newly_registered,
    });
    plan.submit_job.job_definition = registered.arn.clone();
    Ok(Staged {
        submit_job: plan.submit_job,
        job_definition: registered,
        package_url: plan.package_url,
    })
}

/// Submits the staged job. Once this is called, let it finish: abandoning it mid-call can leave
/// a job that nobody knows the id of.
pub async fn submit(
    clients: &Clients,
    staged: Staged,
    events: &EventSink,
) -> Result<Submitted, LaunchError> {
    let Staged {
        submit_job,
        job_definition,
        package_url,
    } = staged;
    let job_id = if job_definition.newly_registered {
        submit_job.send_after_register(&clients.batch).await?
    } else {
        submit_job.send(&clients.batch).await?
    };
    events(Event::Submitted {
        job_id: job_id.clone(),
        job_name: submit_job.job_name.clone(),
        queue: submit_job.job_queue.clone(),
    });
    Ok(Submitted {
        job_id,
        job_name: submit_job.job_name,
        queue: submit_job.job_queue,
        job_definition,
        package_url,
    })
}
