//! The library's error types, one per layer, each able to say what the user can do about it.
//!
//! Errors are data: every variant carries the facts (flag, variable, file, AWS call) and the
//! underlying cause as `source`, so the CLI can render `error:`, the cause chain and a `hint:` once.

use std::path::PathBuf;

/// A boxed error from a lower layer (an SDK error, an I/O error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Bad usage or configuration, found before any AWS call. Always exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag's value cannot be used.
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// A setting's value (from any source) cannot be used.
    #[error("invalid {key} {value:?} (from {origin}): {reason}")]
    InvalidSetting {
        key: &'static str,
        value: String,
        origin: String,
        reason: String,
    },
    /// A required setting has no value anywhere.
    #[error("{key} is not set")]
    Missing {
        key: &'static str,
        flag: Option<&'static str>,
    },
    /// Several required settings have no value anywhere (said at once, not one per try).
    #[error("{} are not set", keys.join(", "))]
    MissingSeveral { keys: Vec<&'static str> },
    /// A config file exists but is not a JSON object.
    #[error("cannot use config file {path}: {reason}")]
    BadConfigFile { path: PathBuf, reason: String },
    /// `METAFLOW_PROFILE` names a profile whose file does not exist.
    #[error("METAFLOW_PROFILE={profile} but {path} does not exist")]
    UnknownProfile { profile: String, path: PathBuf },
    /// The script to run cannot be used.
    #[error("script {path}: {reason}")]
    Script { path: PathBuf, reason: String },
    /// No container image is configured and no local Python tells which one to default to.
    #[error("cannot choose a default container image: {reason}")]
    NoDefaultImage { reason: String },
    /// The job's request would break an AWS Batch limit.
    #[error("{what} is {actual}, over AWS Batch's limit of {limit}")]
    OverLimit {
        what: String,
        actual: usize,
        limit: usize,
    },
    /// No AWS region could be found for the Batch, Logs and S3 clients.
    #[error("no AWS region is configured")]
    NoRegion,
    /// The job's tags (mfbatch's, METAFLOW_BATCH_DEFAULT_TAGS and --tag) are too many.
    #[error("the job has {actual} tags, over AWS's limit of {limit}")]
    TooManyTags { actual: usize, limit: usize },
    /// The configured region is not a region name (it would end up in every endpoint's host).
    #[error("invalid AWS region {region:?}: expected a region name such as us-east-1")]
    InvalidRegion { region: String },
}

impl ConfigError {
    /// What the user can do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::MissingSeveral { .. } => Some(
                "nothing set up yet? `mfbatch stack deploy NAME` then `mfbatch configure --from-stack NAME` set every setting; or set each with its flag, METAFLOW_* variable or the config files (`mfbatch config` shows them)".into(),
            ),
            ConfigError::Missing { key, flag } => Some(format!(
                "{}export {key}=..., or add \"{key}\" to .metaflow/config.json or ~/.metaflowconfig/config.json; nothing set up yet? `mfbatch stack deploy NAME` then `mfbatch configure --from-stack NAME` set every setting (`mfbatch config` shows them)",
                flag.map(|f| format!("pass {f}, ")).unwrap_or_default()
            )),
            ConfigError::UnknownProfile { .. } => Some(
                "create the file (`mfbatch configure --from-stack STACK --profile NAME` or `mfbatch configure aws --profile NAME` writes it) or unset METAFLOW_PROFILE"
                    .into(),
            ),
            ConfigError::NoDefaultImage { .. } => Some(
                "pass --image IMAGE, set METAFLOW_BATCH_CONTAINER_IMAGE, or pass --python X.Y".into(),
            ),
            ConfigError::OverLimit { .. } => Some(
                "pass large values through files in the package instead of --env or arguments".into(),
            ),
            ConfigError::NoRegion => Some(
                "export AWS_REGION=..., or set `region` in ~/.aws/config for your profile".into(),
            ),
            ConfigError::InvalidRegion { .. } => Some(
                "check AWS_REGION, AWS_DEFAULT_REGION and `region` in ~/.aws/config for your profile"
                    .into(),
            ),
            ConfigError::TooManyTags { .. } => Some(
                "remove some --tag flags or METAFLOW_BATCH_DEFAULT_TAGS entries (mfbatch adds 3 of its own)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Building the code package failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the package to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the script {script} is not part of the package (hidden, in __pycache__, or its suffix is not one of {suffixes})")]
    ScriptExcluded { script: PathBuf, suffixes: String },
    /// A file changed between the walk and the archive: packaging it would corrupt the package.
    #[error("{path} changed while it was packaged: {reason}")]
    Changed { path: PathBuf, reason: String },
    /// Two files would have the same path in the archive, and one would silently be lost.
    #[error("{} and {} would both be {path:?} in the package", first.display(), second.display())]
    DuplicatePath {
        path: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// The caller stopped packaging (an interrupt).
    #[error("packaging was cancelled")]
    Cancelled,
}

/// The AWS operation that failed, for messages and hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Batch,
    Logs,
    S3,
    CloudFormation,
    Iam,
    Sts,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Batch => "Batch",
            Service::Logs => "CloudWatch Logs",
            Service::S3 => "S3",
            Service::CloudFormation => "CloudFormation",
            Service::Iam => "IAM",
            Service::Sts => "STS",
        })
    }
}

/// What kind of failure an AWS call had, decided from the error code, never from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    AccessDenied,
    NotFound,
    Throttled,
    Credentials,
    Unreachable,
    Invalid,
    Other,
}

/// One AWS call failed after the SDK's retries.
#[derive(Debug, thiserror::Error)]
#[error("{service} {call} failed{}", code.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
pub struct AwsError {
    pub service: Service,
    pub call: &'static str,
    pub code: Option<String>,
    /// The service's own message, when it sent one.
    pub message: Option<String>,
    pub kind: AwsErrorKind,
    #[source]
    pub source: BoxError,
}

impl AwsError {
    /// Wraps an SDK error, keeping it as the source and classifying it by its code.
    pub fn from_sdk<E, R>(
        service: Service,
        call: &'static str,
        err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
    ) -> Self
    where
        E: std::error::Error
            + Send
            + Sync
            + aws_smithy_types::error::metadata::ProvideErrorMetadata
            + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        use aws_smithy_runtime_api::client::result::SdkError;
        use aws_smithy_types::error::metadata::ProvideErrorMetadata;
        let code = err.code().map(str::to_owned);
        let message = err.message().map(str::to_owned);
        let kind = match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                // The SDK reports a failed credential lookup as a dispatch failure with no code;
                // only its description tells it apart from a network failure.
                if format!("{err:?}")
                    .to_ascii_lowercase()
                    .contains("credentials")
                {
                    AwsErrorKind::Credentials
                } else {
                    AwsErrorKind::Unreachable
                }
            }
            SdkError::ConstructionFailure(_) => AwsErrorKind::Credentials,
            _ => classify_code(code.as_deref()),
        };
        AwsError {
            service,
            call,
            code,
            message,
            kind,
            source: Box::new(err),
        }
    }

    /// The kind of failure an AWS error code stands for.
    pub fn code_kind(
        err: &impl aws_smithy_types::error::metadata::ProvideErrorMetadata,
    ) -> AwsErrorKind {
        classify_code(err.code())
    }

    /// A call that succeeded but left out a field mfbatch needs (an upload id, an ARN): using a
    /// default instead would send the next call somewhere wrong.
    pub fn incomplete(service: Service, call: &'static str, field: &'static str) -> Self {
        AwsError {
            service,
            call,
            code: None,
            message: Some(format!("the answer has no {field}")),
            kind: AwsErrorKind::Other,
            source: Box::new(MissingField(field)),
        }
    }

    /// What the user can do next.
    pub fn hint(&self) -> Option<String> {
        Some(match self.kind {
            AwsErrorKind::AccessDenied => format!(
                "the AWS identity in use may lack {}; check `aws sts get-caller-identity` and its IAM policy",
                iam_permission(self.service, self.call)
            ),
            AwsErrorKind::NotFound => match self.service {
                Service::Batch => "check the queue (--queue / METAFLOW_BATCH_JOB_QUEUE) and the region (AWS_REGION)".into(),
                Service::S3 => "check the bucket in METAFLOW_DATASTORE_SYSROOT_S3 and the region".into(),
                Service::Logs => "the log stream may not exist yet, or logs went to another group".into(),
                Service::CloudFormation => "check the stack name and the region (AWS_REGION)".into(),
                Service::Iam => "check the role ARN (METAFLOW_ECS_S3_ACCESS_IAM_ROLE) and the account".into(),
                Service::Sts => return None,
            },
            AwsErrorKind::Throttled => format!(
                "{} is throttling this account even after retries; try again shortly or ask for a higher quota",
                self.service
            ),
            AwsErrorKind::Credentials => {
                "no usable AWS credentials: run `aws configure`, `aws sso login`, or export AWS_PROFILE".into()
            }
            AwsErrorKind::Unreachable => {
                "the endpoint could not be reached: check the network, AWS_ENDPOINT_URL* and HTTPS_PROXY".into()
            }
            AwsErrorKind::Invalid | AwsErrorKind::Other => return None,
        })
    }
}

/// A field missing from an AWS answer.
#[derive(Debug, thiserror::Error)]
#[error("the answer has no {0}")]
pub struct MissingField(pub &'static str);

fn iam_prefix(service: Service) -> &'static str {
    match service {
        Service::Batch => "batch",
        Service::Logs => "logs",
        Service::S3 => "s3",
        Service::CloudFormation => "cloudformation",
        Service::Iam => "iam",
        Service::Sts => "sts",
    }
}

/// The IAM permission a call needs, in words. Most calls need the action of their own name, but
/// S3's object calls do not: there is no `s3:HeadObject` or `s3:UploadPart` to grant.
pub fn iam_permission(service: Service, call: &str) -> String {
    match (service, call) {
        (Service::S3, "HeadObject" | "GetObject") => {
            "s3:GetObject (and s3:ListBucket, without which a missing object answers 403, not 404)"
                .into()
        }
        (
            Service::S3,
            "PutObject" | "CreateMultipartUpload" | "UploadPart" | "CompleteMultipartUpload",
        ) => "s3:PutObject".into(),
        (Service::S3, "ListObjects" | "ListObjectsV2" | "HeadBucket") => "s3:ListBucket".into(),
        (Service::Batch, "SubmitJob") => {
            "batch:SubmitJob (and batch:TagResource, for the job's tags)".into()
        }
        (service, call) => format!("{}:{call}", iam_prefix(service)),
    }
}

fn classify_code(code: Option<&str>) -> AwsErrorKind {
    match code {
        Some(
            "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidAccessKeyId"
            | "InvalidClientTokenId",
        ) => AwsErrorKind::AccessDenied,
        Some(
            "ResourceNotFoundException"
            | "NoSuchBucket"
            | "NoSuchKey"
            | "NotFound"
            | "NoSuchEntity",
        ) => AwsErrorKind::NotFound,
        Some(
            "TooManyRequestsException"
            | "ThrottlingException"
            | "Throttling"
            | "SlowDown"
            | "RequestLimitExceeded",
        ) => AwsErrorKind::Throttled,
        Some("ClientException" | "InvalidParameterException" | "ValidationException") => {
            AwsErrorKind::Invalid
        }
        _ => AwsErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_hints_name_real_iam_actions() {
        let cases = [
            (Service::S3, "HeadObject", "s3:GetObject"),
            (Service::S3, "GetObject", "s3:GetObject"),
            (Service::S3, "PutObject", "s3:PutObject"),
            (Service::S3, "CreateMultipartUpload", "s3:PutObject"),
            (Service::S3, "UploadPart", "s3:PutObject"),
            (Service::S3, "CompleteMultipartUpload", "s3:PutObject"),
            (
                Service::S3,
                "AbortMultipartUpload",
                "s3:AbortMultipartUpload",
            ),
            (Service::Logs, "GetLogEvents", "logs:GetLogEvents"),
            (Service::Batch, "DescribeJobs", "batch:DescribeJobs"),
            (
                Service::Batch,
                "RegisterJobDefinition",
                "batch:RegisterJobDefinition",
            ),
        ];
        for (service, call, want) in cases {
            let got = iam_permission(service, call);
            assert!(got.starts_with(want), "{call}: {got}");
        }
        for call in [
            "HeadObject",
            "UploadPart",
            "CreateMultipartUpload",
            "CompleteMultipartUpload",
        ] {
            let got = iam_permission(Service::S3, call);
            assert!(!got.contains(&format!("s3:{call}")), "{call}: {got}");
        }
        assert!(iam_permission(Service::S3, "HeadObject").contains("s3:ListBucket"));
    }
}
