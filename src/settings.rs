//! Metaflow-compatible settings: where each value comes from, decided in one place.
//!
//! Precedence, highest first (decided only in [`resolve`]):
//!
//! 1. a command-line flag (`--queue`, `--iam-role`, `--image`, `--datastore-root`, …)
//! 2. the `METAFLOW_*` environment variable of the same name
//! 3. the project file: `.metaflow/config.json` in the working directory or its nearest ancestor,
//!    looking no higher than the repository root (a directory holding `.git`) or `$HOME`, and
//!    only at a file owned by the user (or root) that no one else may write: a project file can
//!    choose the image and the S3 endpoint, so a file someone else could write is ignored (with
//!    a warning)
//! 4. the profile file: `$METAFLOW_HOME/config.json`, or `config_<METAFLOW_PROFILE>.json` when
//!    `METAFLOW_PROFILE` is set (`METAFLOW_HOME` defaults to `~/.metaflowconfig`)
//! 5. the built-in default (some defaults derive from other settings, e.g. the data root)
//!
//! An empty value in the environment or a file counts as unset (as in Metaflow); an empty flag is
//! an error (a script's unset variable, `--queue "$Q"`, must not send the job elsewhere).
//!
//! Keys are the environment-variable names, exactly as `metaflow configure aws` writes them, so a
//! user's existing configuration works unchanged. mfbatch's own tuning keys (`MFBATCH_*`) follow
//! the same order, and their ranges are checked here too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;

pub mod batch_keys;
pub use batch_keys::BatchKey;

/// A setting mfbatch understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    DatastoreSysrootS3,
    DatatoolsS3Root,
    CondaPackageS3Root,
    S3EndpointUrl,
    S3ServerSideEncryption,
    BatchJobQueue,
    EcsS3AccessIamRole,
    BatchContainerImage,
    BatchContainerRegistry,
    EcsFargateExecutionRole,
    BatchDefaultTags,
    DefaultPackageSuffixes,
    User,
    DatastoreSysrootLocal,
    DrainQuietMs,
    PollMinMs,
    // Metaflow's metadata settings (issue #10).
    DefaultMetadata,
    ServiceUrl,
    ServiceInternalUrl,
    ServiceAuthKey,
    ServiceHeaders,
    // Log reading at scale (issue #12); their defaults depend on the AWS Region.
    GetLogEventsPerSecond,
    FilterLogEventsPerSecond,
    LogMode,
    /// A container option or scheduling setting of `run` ([`batch_keys`]).
    Batch(BatchKey),
}

impl Key {
    /// Every key, in the order `mfbatch config` shows them.
    pub const ALL: [Key; 24] = [
        Key::DatastoreSysrootS3,
        Key::DatatoolsS3Root,
        Key::CondaPackageS3Root,
        Key::S3EndpointUrl,
        Key::S3ServerSideEncryption,
        Key::BatchJobQueue,
        Key::EcsS3AccessIamRole,
        Key::BatchContainerImage,
        Key::BatchContainerRegistry,
        Key::EcsFargateExecutionRole,
        Key::BatchDefaultTags,
        Key::DefaultPackageSuffixes,
        Key::User,
        Key::DatastoreSysrootLocal,
        Key::DrainQuietMs,
        Key::PollMinMs,
        Key::DefaultMetadata,
        Key::ServiceUrl,
        Key::ServiceInternalUrl,
        Key::ServiceAuthKey,
        Key::ServiceHeaders,
        Key::GetLogEventsPerSecond,
        Key::FilterLogEventsPerSecond,
        Key::LogMode,
    ];

    /// [`Key::ALL`], then the container and scheduling keys.
    pub fn every() -> impl Iterator<Item = Key> {
        Key::ALL
            .into_iter()
            .chain(BatchKey::ALL.into_iter().map(Key::Batch))
    }

    /// The environment-variable name, which is also the key in Metaflow's config files.
    pub fn name(self) -> &'static str {
        match self {
            Key::DatastoreSysrootS3 => "METAFLOW_DATASTORE_SYSROOT_S3",
            Key::DatatoolsS3Root => "METAFLOW_DATATOOLS_S3ROOT",
            Key::CondaPackageS3Root => "METAFLOW_CONDA_PACKAGE_S3ROOT",
            Key::S3EndpointUrl => "METAFLOW_S3_ENDPOINT_URL",
            Key::S3ServerSideEncryption => "METAFLOW_S3_SERVER_SIDE_ENCRYPTION",
            Key::BatchJobQueue => "METAFLOW_BATCH_JOB_QUEUE",
            Key::EcsS3AccessIamRole => "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
            Key::BatchContainerImage => "METAFLOW_BATCH_CONTAINER_IMAGE",
            Key::BatchContainerRegistry => "METAFLOW_BATCH_CONTAINER_REGISTRY",
            Key::EcsFargateExecutionRole => "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
            Key::BatchDefaultTags => "METAFLOW_BATCH_DEFAULT_TAGS",
            Key::DefaultPackageSuffixes => "METAFLOW_DEFAULT_PACKAGE_SUFFIXES",
            Key::User => "METAFLOW_USER",
            Key::DatastoreSysrootLocal => "METAFLOW_DATASTORE_SYSROOT_LOCAL",
            Key::DrainQuietMs => "MFBATCH_DRAIN_QUIET_MS",
            Key::PollMinMs => "MFBATCH_POLL_MIN_MS",
            Key::DefaultMetadata => "METAFLOW_DEFAULT_METADATA",
            Key::ServiceUrl => "METAFLOW_SERVICE_URL",
            Key::ServiceInternalUrl => "METAFLOW_SERVICE_INTERNAL_URL",
            Key::ServiceAuthKey => "METAFLOW_SERVICE_AUTH_KEY",
            Key::ServiceHeaders => "METAFLOW_SERVICE_HEADERS",
            Key::GetLogEventsPerSecond => "MFBATCH_GET_LOG_EVENTS_PER_SECOND",
            Key::FilterLogEventsPerSecond => "MFBATCH_FILTER_LOG_EVENTS_PER_SECOND",
            Key::LogMode => "MFBATCH_LOG_MODE",
            Key::Batch(key) => key.name(),
        }
    }

    /// The `mfbatch run` flag that sets this key, if any.
    pub fn flag(self) -> Option<&'static str> {
        match self {
            Key::BatchJobQueue => Some("--queue"),
            Key::EcsS3AccessIamRole => Some("--iam-role"),
            Key::BatchContainerImage => Some("--image"),
            Key::EcsFargateExecutionRole => Some("--execution-role"),
            Key::DatastoreSysrootS3 => Some("--datastore-root"),
            Key::DefaultMetadata => Some("--no-metadata"),
            Key::Batch(key) => Some(key.flag()),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env,
    ProjectFile(PathBuf),
    ProfileFile(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env => f.write_str("environment"),
            Origin::ProjectFile(p) => write!(f, "project file {}", p.display()),
            Origin::ProfileFile(p) => write!(f, "profile file {}", p.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One resolved setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub value: String,
    pub origin: Origin,
}

/// Everything [`resolve`] reads: flags, a snapshot of the environment, and the working directory.
///
/// Taking the environment as data (not reading the process's own) keeps resolution a pure function
/// that tests can drive with tables of cases.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub flags: BTreeMap<Key, String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

impl Sources {
    /// The sources of this process: its environment and working directory, plus the given flags.
    pub fn from_process(flags: BTreeMap<Key, String>) -> Self {
        Sources {
            flags,
            env: utf8_environment(std::env::vars_os()),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

/// The environment entries whose name and value are both UTF-8. `std::env::vars` panics on any
/// other, and one stray variable (a Latin-1 file name, say) must not stop every command; no
/// setting mfbatch reads can be non-UTF-8 anyway.
pub fn utf8_environment(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// A project file that was found but not read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredFile {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for IgnoredFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ignored {}: {}", self.path.display(), self.reason)
    }
}

/// The resolved settings with their origins.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<Key, Resolved>,
    /// The config files that were read, in precedence order (project first).
    pub files_read: Vec<PathBuf>,
    /// Project files that were found but not trusted; the caller should say so.
    pub ignored_files: Vec<IgnoredFile>,
}

impl Settings {
    pub fn get(&self, key: Key) -> Option<&str> {
        self.values.get(&key).map(|r| r.value.as_str())
    }

    pub fn resolved(&self, key: Key) -> Option<&Resolved> {
        self.values.get(&key)
    }

    /// A whole number of milliseconds (for the `MFBATCH_*_MS` keys), within the key's range.
    /// A calls-per-second budget: 0.1 to 100 (the account's quotas are 5 to 30 per second).
    pub fn per_second(&self, key: Key) -> Result<Option<f64>, ConfigError> {
        let Some(r) = self.values.get(&key) else {
            return Ok(None);
        };
        match r.value.trim().parse::<f64>() {
            Ok(n) if (0.1..=100.0).contains(&n) => Ok(Some(n)),
            _ => Err(ConfigError::InvalidSetting {
                key: key.name(),
                value: r.value.clone(),
                origin: r.origin.to_string(),
                reason: "expected calls per second, from 0.1 to 100".into(),
            }),
        }
    }

    /// `MFBATCH_LOG_MODE`: `auto` (default), `per-stream` or `batched`.
    pub fn log_mode(&self) -> Result<Option<crate::track::LogMode>, ConfigError> {
        let Some(r) = self.values.get(&Key::LogMode) else {
            return Ok(None);
        };
        crate::track::LogMode::parse(r.value.trim())
            .map(Some)
            .ok_or_else(|| ConfigError::InvalidSetting {
                key: Key::LogMode.name(),
                value: r.value.clone(),
                origin: r.origin.to_string(),
                reason: "expected auto, per-stream or batched".into(),
            })
    }

    pub fn millis(&self, key: Key) -> Result<Option<std::time::Duration>, ConfigError> {
        let Some(r) = self.values.get(&key) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::InvalidSetting {
            key: key.name(),
            value: r.value.clone(),
            origin: r.origin.to_string(),
            reason,
        };
        let ms: u64 = r
            .value
            .trim()
            .parse()
            .map_err(|_| invalid("expected a whole number of milliseconds".into()))?;
        if let Some(range) = millis_range(key) {
            if !range.contains(&ms) {
                return Err(invalid(format!(
                    "expected {} to {} milliseconds",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(Some(std::time::Duration::from_millis(ms)))
    }

    /// The keys whose value came from the project file, with that file.
    pub fn from_project_file(&self) -> Vec<(Key, &Path)> {
        self.entries()
            .filter_map(|(key, r)| match &r?.origin {
                Origin::ProjectFile(path) => Some((key, path.as_path())),
                _ => None,
            })
            .collect()
    }

    /// The value of a required key, or an error that says where it can be set.
    pub fn require(&self, key: Key) -> Result<&Resolved, ConfigError> {
        self.values.get(&key).ok_or(ConfigError::Missing {
            key: key.name(),
            flag: key.flag(),
        })
    }

    /// Every key with its value (when set), for `mfbatch config`.
    pub fn entries(&self) -> impl Iterator<Item = (Key, Option<&Resolved>)> + '_ {
        Key::every().map(|k| (k, self.values.get(&k)))
    }
}

/// After a job ends, how long its log stream must stay quiet before following stops (ms). The
/// CloudWatch log driver delivers lines 5-20 s late.
pub const DEFAULT_DRAIN_QUIET_MS: u64 = 12_000;
/// The shortest interval between two status polls of one job (ms).
pub const DEFAULT_POLL_MIN_MS: u64 = 1_000;

/// Built-in default suffixes of files that go into the package, as in Metaflow.
pub const DEFAULT_PACKAGE_SUFFIXES: &str = ".py,.R,.RDS";

/// The values a tuning key may take (ms). Outside them the tracker misbehaves: a fastest poll over
/// a sixth of its slowest one (30 s) inverts its bounds, and a drain longer than its hard limit
/// (60 s) only keeps a finished run waiting.
pub fn millis_range(key: Key) -> Option<std::ops::RangeInclusive<u64>> {
    match key {
        Key::PollMinMs => Some(1..=5_000),
        Key::DrainQuietMs => Some(1..=60_000),
        _ => None,
    }
}

/// Resolves every key by the precedence written at the top of this module.
pub fn resolve(sources: &Sources) -> Result<Settings, ConfigError> {
    let mut ignored_files = Vec::new();
    let project_path =
        find_project_file(&sources.cwd, home_dir(&sources.env).as_deref()).and_then(|path| {
            match untrusted(&path) {
                None => Some(path),
                Some(reason) => {
                    ignored_files.push(IgnoredFile { path, reason });
                    None
                }
            }
        });
    let project = match &project_path {
        Some(path) => Some(read_config_file(path)?),
        None => None,
    };
    let profile_path = profile_file(&sources.env)?;
    let profile = match &profile_path {
        Some(path) => Some(read_config_file(path)?),
        None => None,
    };

    let mut settings = Settings {
        ignored_files,
        ..Settings::default()
    };
    settings.files_read.extend(project_path.iter().cloned());
    settings.files_read.extend(profile_path.iter().cloned());

    // An empty flag is a script's unset variable (`--queue "$Q"`), not a wish for the defaults.
    if let Some((key, value)) = sources.flags.iter().find(|(_, v)| v.trim().is_empty()) {
        return Err(ConfigError::InvalidFlag {
            flag: key.flag().unwrap_or("flag"),
            value: value.clone(),
            reason: format!(
                "is empty; leave the flag out to use {} or the config files",
                key.name()
            ),
        });
    }
    for key in Key::every() {
        // Metaflow treats an empty value as unset, so an empty one falls through to the next source.
        let non_empty = |v: &&String| !v.trim().is_empty();
        let found = sources
            .flags
            .get(&key)
            .filter(non_empty)
            .map(|v| (v.clone(), Origin::Flag(key.flag().unwrap_or("flag"))))
            .or_else(|| {
                sources
                    .env
                    .get(key.name())
                    .filter(non_empty)
                    .map(|v| (v.clone(), Origin::Env))
            })
            .or_else(|| {
                let (path, map) = (project_path.as_ref()?, project.as_ref()?);
                map.get(key.name())
                    .filter(non_empty)
                    .map(|v| (v.clone(), Origin::ProjectFile(path.clone())))
            })
            .or_else(|| {
                let (path, map) = (profile_path.as_ref()?, profile.as_ref()?);
                map.get(key.name())
                    .filter(non_empty)
                    .map(|v| (v.clone(), Origin::ProfileFile(path.clone())))
            });
        let found = found
            .or_else(|| default_for(key, &settings, &sources.env).map(|v| (v, Origin::Default)));
        if let Some((value, origin)) = found {
            settings.values.insert(key, Resolved { value, origin });
        }
    }
    // Checked now, so a bad value stops every command before its first AWS call.
    for key in [Key::DrainQuietMs, Key::PollMinMs] {
        settings.millis(key)?;
    }
    for key in [Key::GetLogEventsPerSecond, Key::FilterLogEventsPerSecond] {
        settings.per_second(key)?;
    }
    settings.log_mode()?;
    Ok(settings)
}

/// Defaults; keys listed after the ones they derive from in [`Key::ALL`].
fn default_for(key: Key, so_far: &Settings, env: &BTreeMap<String, String>) -> Option<String> {
    let sysroot = || {
        so_far
            .get(Key::DatastoreSysrootS3)
            .map(|s| s.trim_end_matches('/').to_owned())
    };
    match key {
        Key::DatatoolsS3Root => sysroot().map(|s| format!("{s}/data")),
        Key::CondaPackageS3Root => sysroot().map(|s| format!("{s}/conda")),
        Key::DefaultPackageSuffixes => Some(DEFAULT_PACKAGE_SUFFIXES.to_owned()),
        Key::User => ["USER", "USERNAME", "LOGNAME"]
            .iter()
            .find_map(|v| env.get(*v).filter(|s| !s.is_empty()).cloned()),
        Key::DatastoreSysrootLocal => {
            cache_dir(env).map(|d| d.join("mfbatch").display().to_string())
        }
        Key::DrainQuietMs => Some(DEFAULT_DRAIN_QUIET_MS.to_string()),
        Key::PollMinMs => Some(DEFAULT_POLL_MIN_MS.to_string()),
        // Metaflow's defaults: local metadata, and the internal URL is the public one.
        Key::DefaultMetadata => Some("local".to_owned()),
        Key::ServiceInternalUrl => so_far.get(Key::ServiceUrl).map(str::to_owned),
        _ => None,
    }
}

/// The user's cache directory, following the XDG convention.
pub(crate) fn cache_dir(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(dir) = env.get("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    env.get("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(h).join(".cache"))
}

fn home_dir(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    env.get("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).canonicalize().unwrap_or_else(|_| h.into()))
}

/// The nearest `.metaflow/config.json` at or above `cwd`, up to the repository root (a directory
/// holding `.git`) or `home`, whichever comes first. Directories above the project (`/tmp`,
/// `/shared`) belong to other people: a file there must not configure this user's jobs.
fn find_project_file(cwd: &Path, home: Option<&Path>) -> Option<PathBuf> {
    for dir in cwd.ancestors() {
        let candidate = dir.join(".metaflow").join("config.json");
        if candidate.is_file() {
            return Some(candidate);
        }
        if dir.join(".git").exists() || home == Some(dir) {
            return None;
        }
    }
    None
}

/// Why a project file may not be trusted: someone else owns it or may write it.
#[cfg(unix)]
fn untrusted(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me && metadata.uid() != 0 {
        return Some(format!(
            "owned by uid {}, not by you (uid {me}); a project file chooses the image and S3 endpoint",
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by others (mode {:o}); run `chmod go-w` on it to use it",
            metadata.mode() & 0o777
        ));
    }
    None
}

#[cfg(not(unix))]
fn untrusted(_: &Path) -> Option<String> {
    None
}

/// `$METAFLOW_HOME`, else `~/.metaflowconfig`: where Metaflow's profile files live.
pub fn metaflow_home(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    match env.get("METAFLOW_HOME").filter(|h| !h.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => env
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| Path::new(home).join(".metaflowconfig")),
    }
}

/// The file of a profile: `config.json` for the default one (`None` or empty), else
/// `config_<profile>.json`, in [`metaflow_home`].
pub fn profile_path(env: &BTreeMap<String, String>, profile: Option<&str>) -> Option<PathBuf> {
    let home = metaflow_home(env)?;
    Some(match profile.filter(|p| !p.is_empty()) {
        Some(profile) => home.join(format!("config_{profile}.json")),
        None => home.join("config.json"),
    })
}

/// The profile file to read, if any. A named profile must exist; the default one may not.
fn profile_file(env: &BTreeMap<String, String>) -> Result<Option<PathBuf>, ConfigError> {
    let profile = env.get("METAFLOW_PROFILE").filter(|p| !p.is_empty());
    let Some(path) = profile_path(env, profile.map(String::as_str)) else {
        return Ok(None);
    };
    match profile {
        Some(profile) if !path.is_file() => Err(ConfigError::UnknownProfile {
            profile: profile.clone(),
            path,
        }),
        _ => Ok(path.is_file().then_some(path)),
    }
}

/// Reads a Metaflow config file: a JSON object whose values are strings (other JSON values, such
/// as a tags object, are kept as their JSON text).
fn read_config_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let bad = |reason: String| ConfigError::BadConfigFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(bad(
            "expected a JSON object of \"METAFLOW_...\": value pairs".into(),
        ));
    };
    Ok(map
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// Whether a variable's name says its value is a secret (case-insensitive).
pub fn is_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "CREDENTIAL",
        "PRIVATE_KEY",
        "AUTH_KEY",
        "API_KEY",
        "ACCESS_KEY",
        "SESSION_KEY",
    ]
    .iter()
    .any(|s| upper.contains(s))
}

/// What may be shown of a variable or setting: nothing of it when its name looks secret, else
/// the value with any password in a `scheme://user:password@host` URL hidden. The one function
/// for every environment and setting mfbatch prints (config, dry runs, error messages).
pub fn redact(name: &str, value: &str) -> String {
    if is_secret(name) {
        return REDACTED.to_owned();
    }
    // Headers for the metadata service carry its API key: show their names only.
    if name.to_ascii_uppercase().ends_with("SERVICE_HEADERS") {
        return match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(value) {
            Ok(map) => serde_json::Value::Object(
                map.into_iter().map(|(k, _)| (k, REDACTED.into())).collect(),
            )
            .to_string(),
            Err(_) => REDACTED.to_owned(),
        };
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return value.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        None => value.to_owned(),
    }
}

/// What a hidden value is shown as.
pub const REDACTED: &str = "********";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_secret_names_and_url_passwords() {
        assert_eq!(redact("DB_PASSWORD", "hunter2"), REDACTED);
        assert_eq!(redact("github_token", "ghp_x"), REDACTED);
        assert_eq!(redact("AWS_SECRET_ACCESS_KEY", "x"), REDACTED);
        assert_eq!(
            redact(
                "METAFLOW_S3_ENDPOINT_URL",
                "https://jane:hunter2@s3.example.com/x"
            ),
            "https://jane:********@s3.example.com/x"
        );
        assert_eq!(redact("MODE", "fast"), "fast");
        assert_eq!(
            redact("METAFLOW_SERVICE_HEADERS", r#"{"x-api-key": "k1"}"#),
            r#"{"x-api-key":"********"}"#
        );
        assert_eq!(redact("METAFLOW_SERVICE_HEADERS", "not json k1"), REDACTED);
        assert_eq!(
            redact("URL", "https://s3.example.com"),
            "https://s3.example.com"
        );
    }

    #[test]
    fn non_utf8_environment_entries_are_skipped() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let env = utf8_environment([
            (OsString::from("GOOD"), OsString::from("yes")),
            (OsString::from("BAD"), OsString::from_vec(vec![0xff, 0xfe])),
            (OsString::from_vec(vec![b'X', 0xff]), OsString::from("v")),
        ]);
        assert_eq!(
            env.into_iter().collect::<Vec<_>>(),
            [("GOOD".into(), "yes".into())]
        );
    }
}
