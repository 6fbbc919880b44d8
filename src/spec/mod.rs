//! The validated description of one job ([`JobSpec`]) and its value types.
//!
//! Every value is parsed and checked here, before any AWS call, so bad input never half-happens.

pub mod build;
pub mod container;
pub mod schedule;

pub use build::{build_spec, RunOptions};
pub use container::ContainerOptions;
pub use schedule::{ScheduleOptions, Scheduling};

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::error::ConfigError;
use crate::launch::image::ImageRef;
use crate::s3url::S3Url;

/// The largest requests any AWS Batch job can be given, with headroom: the largest EC2 instances
/// have 1,920 vCPUs, 32 TiB of memory and 16 GPUs. Larger numbers are typing mistakes that Batch
/// would only refuse at SubmitJob, after the upload.
pub const MAX_VCPU: f64 = 4096.0;
pub const MAX_MEMORY_MIB: u64 = 32 * 1024 * 1024;
pub const MAX_GPU: u32 = 64;

/// Parses `--gpu`: a whole number of GPUs, at most [`MAX_GPU`].
pub fn parse_gpu(flag: &'static str, text: &str) -> Result<u32, ConfigError> {
    let gpu: u32 = text
        .trim()
        .parse()
        .map_err(|_| invalid(flag, text, "expected a whole number of GPUs, such as 1"))?;
    if gpu > MAX_GPU {
        return Err(invalid(
            flag,
            text,
            &format!("AWS Batch offers at most {MAX_GPU} GPUs to a job"),
        ));
    }
    Ok(gpu)
}

/// Number of vCPUs; Batch accepts fractions on Fargate (0.25, 0.5, …).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Vcpu(f64);

impl Vcpu {
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, ConfigError> {
        let value: f64 = text.trim().parse().map_err(|_| {
            invalid(
                flag,
                text,
                "expected a number of vCPUs, such as 1, 4 or 0.5",
            )
        })?;
        if !value.is_finite() || value <= 0.0 {
            return Err(invalid(flag, text, "must be greater than 0"));
        }
        if value > MAX_VCPU {
            return Err(invalid(
                flag,
                text,
                &format!("AWS Batch offers at most {MAX_VCPU} vCPUs to a job"),
            ));
        }
        // Batch takes quarter vCPUs at the finest.
        if (value * 4.0).fract() != 0.0 {
            return Err(invalid(flag, text, "must be a multiple of 0.25"));
        }
        Ok(Vcpu(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Vcpu {
    /// Formats like C's `%g`, which is what Metaflow sends: `4`, `0.5`, `0.25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Memory in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryMib(u64);

impl MemoryMib {
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, ConfigError> {
        let value: u64 = text
            .trim()
            .parse()
            .map_err(|_| invalid(flag, text, "expected a whole number of MiB, such as 4096"))?;
        if value == 0 {
            return Err(invalid(flag, text, "must be greater than 0"));
        }
        if value > MAX_MEMORY_MIB {
            return Err(invalid(
                flag,
                text,
                &format!("AWS Batch offers at most {MAX_MEMORY_MIB} MiB (32 TiB) to a job"),
            ));
        }
        Ok(MemoryMib(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// The resources one job asks for; sent as SubmitJob overrides so one definition serves all sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    pub vcpu: Vcpu,
    pub memory: MemoryMib,
    pub gpu: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            vcpu: Vcpu(1.0),
            memory: MemoryMib(4096),
            gpu: 0,
        }
    }
}

/// A Batch job name: 1–128 letters, digits, `-` and `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobName(String);

pub const MAX_NAME_LEN: usize = 128;

impl JobName {
    /// Checks a name the user chose; a bad one is an error rather than silently changed.
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, ConfigError> {
        let ok_chars = text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let starts_ok = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if text.is_empty() || text.len() > MAX_NAME_LEN || !ok_chars || !starts_ok {
            return Err(invalid(
                flag,
                text,
                "a job name is 1-128 letters, digits, '-' or '_', starting with a letter or digit",
            ));
        }
        Ok(JobName(text.to_owned()))
    }

    /// Makes a valid name out of any text (user names with dots, scripts with spaces, …).
    pub fn sanitize(text: &str) -> Self {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let c = if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            };
            if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
                out.push(c);
            }
        }
        let mut out = out.trim_matches(|c| c == '-' || c == '_').to_owned();
        out.truncate(MAX_NAME_LEN);
        let out = out.trim_end_matches('-').to_owned();
        if out.is_empty() {
            JobName("mfbatch-job".into())
        } else {
            JobName(out)
        }
    }

    /// The default name: `<user>-<script stem>`.
    pub fn derived(user: Option<&str>, script_stem: &str) -> Self {
        match user {
            Some(user) => Self::sanitize(&format!("{user}-{script_stem}")),
            None => Self::sanitize(script_stem),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `KEY=VALUE` for `--env`; the key must be a valid environment-variable name.
pub fn parse_env_pair(text: &str) -> Result<(String, String), ConfigError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| invalid("--env", text, "expected KEY=VALUE"))?;
    // Errors show the pair, so a secret value is hidden in them as everywhere else.
    let text = &format!("{key}={}", crate::settings::redact(key, value));
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(invalid(
            "--env",
            text,
            "the name must be letters, digits and '_', not starting with a digit",
        ));
    }
    if key.starts_with("AWS_BATCH_") {
        return Err(invalid(
            "--env",
            text,
            "AWS_BATCH_* names are reserved by AWS Batch",
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Tags put on jobs (and propagated to their ECS tasks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(BTreeMap<String, String>);

/// AWS's limits on tags.
pub const MAX_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// Whether AWS accepts a character in a tag key or value: letters, digits, spaces and
/// `_ . : / = + - @`.
pub fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c)
}

impl Tags {
    /// Adds one tag the user chose, checking AWS's rules (a tag SubmitJob would refuse must fail
    /// before anything is uploaded). `source` names the flag or variable for the message.
    pub fn insert(
        &mut self,
        source: &'static str,
        key: &str,
        value: &str,
    ) -> Result<(), ConfigError> {
        let shown = format!("{key}={value}");
        if key.is_empty() || key.chars().count() > MAX_TAG_KEY {
            return Err(invalid(source, &shown, "a tag key is 1-128 characters"));
        }
        if value.chars().count() > MAX_TAG_VALUE {
            return Err(invalid(
                source,
                &shown,
                "a tag value is at most 256 characters",
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid(source, &shown, "the aws: prefix is reserved"));
        }
        if let Some(bad) = key.chars().chain(value.chars()).find(|c| !is_tag_char(*c)) {
            return Err(invalid(
                source,
                &shown,
                &format!(
                    "{bad:?} is not allowed in a tag: use letters, digits, spaces and _ . : / = + - @"
                ),
            ));
        }
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Adds a tag mfbatch derives itself (script, user), made valid instead of refused: every
    /// character AWS does not take becomes `_`, and the value is cut to 256 characters.
    pub fn insert_sanitized(&mut self, key: &'static str, value: &str) {
        debug_assert!(key.chars().all(is_tag_char) && !key.starts_with("aws:"));
        let value: String = value
            .chars()
            .map(|c| if is_tag_char(c) { c } else { '_' })
            .take(MAX_TAG_VALUE)
            .collect();
        self.0.insert(key.to_owned(), value);
    }

    /// Parses `KEY=VALUE` for `--tag`.
    pub fn insert_pair(&mut self, text: &str) -> Result<(), ConfigError> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| invalid("--tag", text, "expected KEY=VALUE"))?;
        self.insert("--tag", key, value)
    }

    /// Adds the tags of `METAFLOW_BATCH_DEFAULT_TAGS`, a JSON object of strings.
    pub fn insert_json(&mut self, origin: &str, json: &str) -> Result<(), ConfigError> {
        let bad = |reason: &str| ConfigError::InvalidSetting {
            key: "METAFLOW_BATCH_DEFAULT_TAGS",
            value: json.to_owned(),
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|_| bad("not valid JSON"))?;
        let serde_json::Value::Object(map) = value else {
            return Err(bad("expected a JSON object such as {\"team\": \"ml\"}"));
        };
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            self.insert("METAFLOW_BATCH_DEFAULT_TAGS", &k, &v)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Checks the count limit, which applies to job and definition tags together.
    pub fn check_count(&self, extra: usize) -> Result<(), ConfigError> {
        let total = self.0.len() + extra;
        if total > MAX_TAGS {
            return Err(ConfigError::TooManyTags {
                actual: total,
                limit: MAX_TAGS,
            });
        }
        Ok(())
    }
}

/// Where the job runs, with what that place needs.
#[derive(Debug, Clone)]
pub enum Target {
    Batch(Box<BatchTarget>),
    Local(LocalTarget),
}

/// The AWS Batch settings of a job.
#[derive(Debug, Clone)]
pub struct BatchTarget {
    pub image: ImageRef,
    pub queue: String,
    pub job_role_arn: String,
    pub execution_role_arn: Option<String>,
    /// `METAFLOW_DATASTORE_SYSROOT_S3`: packages go under it.
    pub datastore_root: S3Url,
    pub datatools_root: String,
    pub conda_root: String,
    pub s3_endpoint_url: Option<String>,
    /// `METAFLOW_S3_SERVER_SIDE_ENCRYPTION`: `AES256` or `aws:kms`, for uploads.
    pub s3_server_side_encryption: Option<String>,
    pub tags: Tags,
    /// Seconds before Batch stops an attempt (`attemptDurationSeconds`, at least 60).
    pub timeout_seconds: Option<u64>,
    pub retries: Retries,
    /// What goes into the job definition beyond image, command and roles.
    pub container: ContainerOptions,
    /// What goes into SubmitJob only: array, nodes, dependencies, priority, share.
    pub scheduling: Scheduling,
}

/// How often Batch may start a job again, and on which failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    /// Extra attempts after the first (0-9: Batch allows 10 attempts in all).
    pub count: u8,
    /// Retry any failure, not only the loss of the instance (spot reclaim, host failure).
    pub on_any_failure: bool,
}

/// The local backend's settings.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    /// `METAFLOW_DATASTORE_SYSROOT_LOCAL`: packages go under it.
    pub datastore_dir: PathBuf,
}

/// Everything needed to run one job, validated.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The directory packaged; the script lives inside it.
    pub root: PathBuf,
    /// The script, relative to `root`, with `/` separators.
    pub script: String,
    pub args: Vec<String>,
    pub resources: Resources,
    pub env: Vec<(String, String)>,
    pub name: JobName,
    pub package_suffixes: String,
    pub target: Target,
}

impl JobSpec {
    pub fn batch(&self) -> Option<&BatchTarget> {
        match &self.target {
            Target::Batch(b) => Some(b),
            Target::Local(_) => None,
        }
    }
}

pub(crate) fn invalid(flag: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidFlag {
        flag,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_accepts_fractions_and_rejects_nonsense() {
        assert_eq!(Vcpu::parse("--cpu", "4").unwrap().to_string(), "4");
        assert_eq!(Vcpu::parse("--cpu", "0.5").unwrap().to_string(), "0.5");
        assert_eq!(Vcpu::parse("--cpu", "0.25").unwrap().to_string(), "0.25");
        for bad in ["abc", "0", "-1", "", "NaN", "inf", "0.3"] {
            assert!(
                Vcpu::parse("--cpu", bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn memory_is_whole_positive_mib() {
        assert_eq!(MemoryMib::parse("--memory", "16000").unwrap().get(), 16000);
        for bad in ["0", "-5", "1.5", "lots"] {
            assert!(
                MemoryMib::parse("--memory", bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn job_names_are_sanitized() {
        let cases = [
            ("jane.doe-step", "jane-doe-step"),
            ("jane doe-my step", "jane-doe-my-step"),
            ("...x", "x"),
            ("_lead", "lead"),
            ("", "mfbatch-job"),
            ("ünïcode-ok", "n-code-ok"),
            ("a--b", "a-b"),
        ];
        for (input, want) in cases {
            assert_eq!(
                JobName::sanitize(input).as_str(),
                want,
                "sanitize({input:?})"
            );
        }
        let long = "x".repeat(300);
        assert_eq!(JobName::sanitize(&long).as_str().len(), MAX_NAME_LEN);
        assert_eq!(
            JobName::derived(Some("jane.doe"), "train").as_str(),
            "jane-doe-train"
        );
    }

    #[test]
    fn explicit_job_names_are_checked_not_changed() {
        assert!(JobName::parse("--name", "ok_name-1").is_ok());
        for bad in ["-lead", "has space", "dot.ted", "", &"x".repeat(129)] {
            assert!(JobName::parse("--name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(
            parse_env_pair("EMPTY=").unwrap(),
            ("EMPTY".into(), "".into())
        );
        for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x", "AWS_BATCH_JOB_ID=x"] {
            assert!(parse_env_pair(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_follow_aws_rules() {
        let mut tags = Tags::default();
        tags.insert_pair("team=ml").unwrap();
        assert!(tags.insert_pair("aws:x=y").is_err());
        assert!(tags.insert_pair("novalue").is_err());
        assert!(tags.insert_pair(&format!("{}=v", "k".repeat(129))).is_err());
        tags.insert_json("environment", r#"{"cost": "a", "n": 3}"#)
            .unwrap();
        assert_eq!(tags.len(), 3);
        assert!(tags.insert_json("environment", "[1]").is_err());
        assert!(tags.check_count(47).is_ok());
        assert!(tags.check_count(48).is_err());
        for bad in ["k=v(1)", "k(1)=v", "k=CORP\\jane", "k=a,b", "k=x;y"] {
            assert!(tags.insert_pair(bad).is_err(), "{bad}");
        }
        for good in ["k=v 1", "cost-center=ml/team:a+b=c@d_e.f", "équipe=données"] {
            tags.insert_pair(good).unwrap();
        }
    }

    #[test]
    fn derived_tags_are_made_valid() {
        let mut tags = Tags::default();
        tags.insert_sanitized("mfbatch.script", "train(v2).py");
        tags.insert_sanitized("mfbatch.user", "CORP\\jane");
        tags.insert_sanitized("mfbatch.long", &"x".repeat(300));
        let got: BTreeMap<_, _> = tags.iter().collect();
        assert_eq!(got[&"mfbatch.script".to_owned()], "train_v2_.py");
        assert_eq!(got[&"mfbatch.user".to_owned()], "CORP_jane");
        assert_eq!(got[&"mfbatch.long".to_owned()].len(), 256);
    }

    #[test]
    fn resources_have_sane_upper_bounds() {
        assert!(Vcpu::parse("--cpu", "4096").is_ok());
        for bad in ["1e300", "4096.25", "100000"] {
            assert!(Vcpu::parse("--cpu", bad).is_err(), "{bad}");
        }
        assert!(MemoryMib::parse("--memory", "33554432").is_ok());
        assert!(MemoryMib::parse("--memory", "99999999999999").is_err());
        assert_eq!(parse_gpu("--gpu", "8").unwrap(), 8);
        for bad in ["4000000000", "65", "-1", "x"] {
            assert!(parse_gpu("--gpu", bad).is_err(), "{bad}");
        }
    }
}
