//! `doctor`: checks each piece the run path needs (credentials, region, settings, bucket, queue,
//! compute environments, roles, logs, metadata service) and says, per piece, whether it works and
//! how to fix it. Checks are data ([`Check`]); the caller renders them.
//!
//! A check whose prerequisite failed, or that is not allowed to look, is [`Status::Skipped`] with
//! the reason, so one broken piece is named once and does not fail the checks after it.

mod checks;
mod ping;

use serde::Serialize;

use crate::aws::Clients;
use crate::error::{AwsError, AwsErrorKind, ConfigError};
use crate::settings::{Key, Settings};
use crate::spec::Resources;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

/// One checked piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found (pass), what is wrong (fail), or why it did not run (skipped).
    pub detail: String,
    /// What to do about it, for a failure (or a skip the user can act on).
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix,
        }
    }

    pub fn skipped(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Skipped,
            detail: detail.into(),
            fix: None,
        }
    }

    /// The check for an AWS error: not allowed to look is a skip (the piece may be fine), anything
    /// else a failure with the error's own hint.
    fn from_aws(name: &'static str, what: &str, err: &AwsError) -> Self {
        let message = match &err.message {
            Some(message) => format!("{err} ({message})"),
            None => err.to_string(),
        };
        if err.kind == AwsErrorKind::AccessDenied {
            return Check {
                fix: Some(format!(
                    "allow {} to check this",
                    crate::error::iam_permission(err.service, err.call)
                )),
                ..Check::skipped(name, format!("cannot look at {what}: {message}"))
            };
        }
        Check::fail(name, format!("cannot read {what}: {message}"), err.hint())
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// No check failed (skipped ones do not count against it).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// What to check the queue's room against.
#[derive(Debug, Clone, Copy, Default)]
pub struct DoctorOptions {
    /// The job size to expect (`run`'s defaults when not given).
    pub resources: Resources,
}

/// The check names, in order.
pub const CHECKS: [&str; 10] = [
    "region",
    "credentials",
    "settings",
    "bucket",
    "queue",
    "compute environments",
    "job role",
    "execution role",
    "logs",
    "metadata service",
];

/// Runs every check. `settings` and `clients` are what `run` would get (their errors included),
/// so the doctor judges exactly the configuration a run would use.
pub async fn run(
    settings: Result<&Settings, &ConfigError>,
    clients: Result<&Clients, &ConfigError>,
    options: &DoctorOptions,
) -> Report {
    let mut out = Vec::new();
    out.push(match clients {
        Ok(c) => Check::pass("region", c.region()),
        Err(e) => Check::fail("region", e.to_string(), e.hint()),
    });
    let identity = match clients {
        Ok(c) => checks::credentials(c).await,
        Err(_) => Check::skipped("credentials", "needs a region"),
    };
    let aws = clients.ok().filter(|_| identity.status == Status::Pass);
    out.push(identity);
    out.push(checks::settings(settings));
    let settings = settings.ok();
    let value = |key: Key| settings.and_then(|s| s.get(key));
    let no_aws = |name| Check::skipped(name, "needs working credentials and a region");
    let no_setting = |name, key: Key| Check::skipped(name, format!("needs {}", key.name()));

    out.push(match (aws, value(Key::DatastoreSysrootS3)) {
        (None, _) => no_aws("bucket"),
        (_, None) => no_setting("bucket", Key::DatastoreSysrootS3),
        (Some(c), Some(root)) => checks::bucket(c, root, value(Key::S3ServerSideEncryption)).await,
    });
    let (queue_check, queue) = match (aws, value(Key::BatchJobQueue)) {
        (None, _) => (no_aws("queue"), None),
        (_, None) => (no_setting("queue", Key::BatchJobQueue), None),
        (Some(c), Some(name)) => checks::queue(c, name).await,
    };
    out.push(queue_check);
    let (ce_check, fargate) = match (aws, &queue) {
        (None, _) => (no_aws("compute environments"), None),
        (_, None) => (
            Check::skipped("compute environments", "needs the queue"),
            None,
        ),
        (Some(c), Some(q)) => {
            let (check, fargate) = checks::compute_environments(c, q, &options.resources).await;
            (check, Some(fargate))
        }
    };
    out.push(ce_check);
    out.push(match (aws, value(Key::EcsS3AccessIamRole)) {
        (None, _) => no_aws("job role"),
        (_, None) => no_setting("job role", Key::EcsS3AccessIamRole),
        (Some(c), Some(role)) => checks::role(c, "job role", role).await,
    });
    out.push(match (aws, fargate) {
        (None, _) => no_aws("execution role"),
        (_, None) => Check::skipped("execution role", "needs the queue"),
        (Some(_), Some(false)) => {
            Check::skipped("execution role", "not needed: the queue runs on EC2")
        }
        (Some(c), Some(true)) => match value(Key::EcsFargateExecutionRole) {
            Some(role) => checks::role(c, "execution role", role).await,
            None => Check::fail(
                "execution role",
                "the queue runs on Fargate, and Fargate jobs need an ECS execution role",
                Some(
                    "set METAFLOW_ECS_FARGATE_EXECUTION_ROLE (the stack's ECSFargateExecutionRoleArn output)"
                        .into(),
                ),
            ),
        },
    });
    out.push(match aws {
        None => no_aws("logs"),
        Some(c) => checks::logs(c).await,
    });
    out.push(match value(Key::ServiceUrl) {
        None => Check::skipped("metadata service", "METAFLOW_SERVICE_URL is not set"),
        Some(url) => ping::check(url, value(Key::ServiceAuthKey)).await,
    });
    Report { checks: out }
}
