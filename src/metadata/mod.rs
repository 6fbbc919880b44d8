//! Recording jobs in Metaflow's metadata (the metadata service, or the local `.metaflow` tree),
//! so that Metaflow's client and UI list what ran, where, by whom and how it ended.
//!
//! A job's records go to a local spool ([`spool`]) before SubmitJob and are sent from there in
//! the background ([`spool::Sender`]), with retries: a metadata service that is down, slow or
//! failing never fails, delays or duplicates the job. [`recorder::Recorder`] turns the job's
//! events into records; [`model`] holds their shapes, [`service`] and [`local`] write them, and
//! [`read`] finds a run's jobs again (for `mfbatch logs FLOW/RUN`).

pub mod local;
pub mod model;
pub mod read;
pub mod recorder;
pub mod service;
pub mod spool;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::settings::{Key, Settings};

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Metaflow's metadata service.
    Service(ServiceConfig),
    /// Metaflow's local metadata: the `.metaflow` directory at this path.
    Local(PathBuf),
}

/// How to reach the metadata service.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `METAFLOW_SERVICE_URL`, without a trailing `/`.
    pub url: String,
    /// `METAFLOW_SERVICE_INTERNAL_URL`: the service as seen from inside a job.
    pub internal_url: String,
    /// `METAFLOW_SERVICE_HEADERS`, plus `x-api-key` from `METAFLOW_SERVICE_AUTH_KEY`.
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for ServiceConfig {
    // The header values hold the API key: never in a debug print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("url", &self.url)
            .field("internal_url", &self.internal_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Backend {
    /// The backend the settings choose, or `None` when metadata is off
    /// (`METAFLOW_DEFAULT_METADATA=none`, which `--no-metadata` sets). `cwd` is where a local
    /// `.metaflow` is looked for, as Metaflow does.
    pub fn from_settings(settings: &Settings, cwd: &Path) -> Result<Option<Backend>, ConfigError> {
        let mode = settings.require(Key::DefaultMetadata)?;
        let invalid = |key: Key, value: &str, reason: &str| ConfigError::InvalidSetting {
            key: key.name(),
            value: crate::settings::redact(key.name(), value),
            origin: settings
                .resolved(key)
                .map(|r| r.origin.to_string())
                .unwrap_or_default(),
            reason: reason.to_owned(),
        };
        match mode.value.trim() {
            "none" => Ok(None),
            "local" => Ok(Some(Backend::Local(local::metaflow_root(settings, cwd)))),
            "service" => {
                let url = settings.require(Key::ServiceUrl)?.value.trim();
                let url = check_url(url)
                    .map_err(|reason| invalid(Key::ServiceUrl, url, reason))?
                    .to_owned();
                let internal = settings.get(Key::ServiceInternalUrl).unwrap_or(&url).trim();
                let internal_url = check_url(internal)
                    .map_err(|reason| invalid(Key::ServiceInternalUrl, internal, reason))?
                    .to_owned();
                let mut headers = BTreeMap::new();
                if let Some(text) = settings.get(Key::ServiceHeaders) {
                    let reason = "expected a JSON object of header names to string values";
                    let map: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(text)
                            .map_err(|_| invalid(Key::ServiceHeaders, text, reason))?;
                    for (name, value) in map {
                        let serde_json::Value::String(value) = value else {
                            return Err(invalid(Key::ServiceHeaders, text, reason));
                        };
                        headers.insert(name.to_ascii_lowercase(), value);
                    }
                }
                if let Some(key) = settings.get(Key::ServiceAuthKey) {
                    headers.insert("x-api-key".to_owned(), key.to_owned());
                }
                Ok(Some(Backend::Service(ServiceConfig {
                    url,
                    internal_url,
                    headers,
                })))
            }
            other => Err(invalid(
                Key::DefaultMetadata,
                other,
                "expected service, local or none",
            )),
        }
    }

    /// Where the records go, in words (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Backend::Service(s) => format!("metadata service {}", s.url),
            Backend::Local(root) => format!("local metadata {}", root.display()),
        }
    }
}

/// An `http(s)://host[:port][/path]` URL, without its trailing `/`.
fn check_url(url: &str) -> Result<&str, &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("expected an http:// or https:// URL")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host");
    }
    Ok(url.trim_end_matches('/'))
}

/// A Metaflow pathspec: `FLOW/RUN[/STEP[/TASK]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pathspec {
    pub flow: String,
    pub run: String,
    pub step: Option<String>,
    pub task: Option<String>,
}

impl Pathspec {
    /// Parses a pathspec a user typed; `None` when `text` is not one (a job id has no `/`).
    pub fn parse(text: &str) -> Option<Result<Pathspec, ConfigError>> {
        if !text.contains('/') {
            return None;
        }
        let parts: Vec<&str> = text.trim_matches('/').split('/').collect();
        let bad = |reason: &str| ConfigError::InvalidFlag {
            flag: "FLOW/RUN[/STEP[/TASK]]",
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        if !(2..=4).contains(&parts.len()) {
            return Some(Err(bad(
                "expected FLOW/RUN, FLOW/RUN/STEP or FLOW/RUN/STEP/TASK",
            )));
        }
        if let Some(part) = parts.iter().find(|p| !is_id(p)) {
            return Some(Err(bad(&format!(
                "{part:?} is not a name: use letters, digits, '_' and '-'"
            ))));
        }
        Some(Ok(Pathspec {
            flow: parts[0].to_owned(),
            run: parts[1].to_owned(),
            step: parts.get(2).map(|s| (*s).to_owned()),
            task: parts.get(3).map(|s| (*s).to_owned()),
        }))
    }
}

impl fmt::Display for Pathspec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.flow, self.run)?;
        for part in [&self.step, &self.task].into_iter().flatten() {
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

/// A run, step or task id: letters, digits, `_` and `-` (it becomes a URL path segment and a
/// directory name).
pub fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A flow or step name: a Python identifier, as Metaflow requires.
pub fn is_name(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text.len() <= 256
}

/// Recording or reading metadata failed. Never fails a job: the CLI shows it as a warning (or as
/// the error of `mfbatch metadata sync` and of `logs FLOW/RUN`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    #[error("the metadata service answered {status} to {method} {path}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach the metadata service for {method} {path}")]
    Unreachable {
        method: &'static str,
        path: String,
        #[source]
        source: crate::error::BoxError,
    },
    #[error(
        "the metadata service's reply to {method} {path} is not what Metaflow sends: {reason}"
    )]
    BadReply {
        method: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} was not found in {backend}")]
    NotFound { what: String, backend: String },
    #[error("cannot set up HTTPS for the metadata service")]
    Tls(#[source] std::io::Error),
}

impl MetadataError {
    /// Whether trying again later may succeed (the service is down, slow or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            MetadataError::Status { status, .. } => *status >= 500 || *status == 429,
            MetadataError::Unreachable { .. } | MetadataError::Io { .. } => true,
            _ => false,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            MetadataError::Status {
                status: 401 | 403, ..
            } => Some(
                "check METAFLOW_SERVICE_AUTH_KEY and METAFLOW_SERVICE_HEADERS (sent as x-api-key)"
                    .into(),
            ),
            MetadataError::Unreachable { .. } => Some(
                "check METAFLOW_SERVICE_URL; `mfbatch metadata sync` sends what is pending".into(),
            ),
            _ => None,
        }
    }
}
