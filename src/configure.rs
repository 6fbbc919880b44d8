//! Writing Metaflow's configuration files, in Metaflow's own format, so Metaflow and mfbatch read
//! the same file: `$METAFLOW_HOME/config.json` or `config_<profile>.json`, a JSON object of
//! non-empty values with sorted keys and an indent of 4 (as `metaflow configure` writes it).
//!
//! Reading for runs stays in [`crate::settings::resolve`]; this module only reads a file to change
//! it. Files are replaced atomically (a temp file in the same directory, renamed over) with mode
//! 0600: a profile can hold `METAFLOW_SERVICE_AUTH_KEY`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A config file's content: keys sorted, values as JSON (strings, and objects such as tags).
pub type ConfigMap = BTreeMap<String, Value>;

/// A config file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigureError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// Neither `METAFLOW_HOME` nor `HOME` says where profiles live.
    #[error(
        "cannot tell where Metaflow's configuration lives: neither METAFLOW_HOME nor HOME is set"
    )]
    NoHome,
}

/// Reads a config file; `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<ConfigMap>, ConfigureError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigureError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        }
    };
    parse(&text, path).map(Some)
}

/// Parses a config file's text: a JSON object of `"METAFLOW_...": value` pairs.
pub fn parse(text: &str, path: &Path) -> Result<ConfigMap, ConfigureError> {
    let bad = |reason: String| ConfigureError::BadFile {
        path: path.to_owned(),
        reason,
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map.into_iter().collect()),
        Ok(_) => Err(bad(
            "expected a JSON object of \"METAFLOW_...\": value pairs".into(),
        )),
        Err(e) => Err(bad(format!("not valid JSON: {e}"))),
    }
}

/// Whether a value counts as set: Metaflow writes only non-empty values and reads an empty one
/// as unset.
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    }
}

/// The file's text as Metaflow writes it: set values only, sorted keys, indent 4, no final
/// newline (Python's `json.dump(indent=4, sort_keys=True)`).
pub fn render(map: &ConfigMap) -> String {
    let kept: BTreeMap<&String, &Value> = map.iter().filter(|(_, v)| is_set(v)).collect();
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&kept, &mut serializer).expect("a map of JSON values serializes");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// A value as shown to people and read by mfbatch's settings: strings as they are, other JSON as
/// its text.
pub fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes `map` to `path` atomically with mode 0600, creating the directory (mode 0700) if needed.
/// A reader sees the old file or the new one, never a part.
pub fn write(path: &Path, map: &ConfigMap) -> Result<(), ConfigureError> {
    let io = |action: &'static str, source: std::io::Error| ConfigureError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_owned(),
        None => PathBuf::from("."),
    };
    if !dir.is_dir() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .map_err(|e| io("create the directory of", e))?;
    }
    // tempfile creates the file with mode 0600 on Unix, before anything is written to it.
    let mut temp = tempfile::Builder::new()
        .prefix(".mfbatch-config-")
        .tempfile_in(&dir)
        .map_err(|e| io("write", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("write", e))?;
    }
    temp.write_all(render(map).as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| io("write", e))?;
    temp.persist(path).map_err(|e| io("replace", e.error))?;
    Ok(())
}

/// Deletes a config file; `Ok(false)` when there was none.
pub fn remove(path: &Path) -> Result<bool, ConfigureError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ConfigureError::Io {
            action: "delete",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The file of `profile` (`None` or empty: the default `config.json`), as the settings read it.
pub fn profile_path(
    env: &BTreeMap<String, String>,
    profile: Option<&str>,
) -> Result<PathBuf, ConfigureError> {
    crate::settings::profile_path(env, profile).ok_or(ConfigureError::NoHome)
}

/// `map` with `values` set (an empty value removes the key).
pub fn merged(map: &ConfigMap, values: &BTreeMap<String, String>) -> ConfigMap {
    let mut out = map.clone();
    for (key, value) in values {
        if value.trim().is_empty() {
            out.remove(key);
        } else {
            out.insert(key.clone(), Value::String(value.clone()));
        }
    }
    out
}

/// The sections of `metaflow configure aws`, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Datastore,
    Metadata,
    Batch,
}

/// One question of `configure aws`.
#[derive(Debug, Clone, Copy)]
pub struct Question {
    pub key: &'static str,
    pub section: Section,
    pub prompt: &'static str,
    /// The `configure aws` flag that answers it without asking.
    pub flag: &'static str,
    /// mfbatch cannot run a job without it.
    pub required: bool,
}

/// Metaflow's questions, in Metaflow's order (S3 datastore, metadata service, Batch), plus the
/// Fargate execution role that Fargate queues need.
pub const AWS_QUESTIONS: [Question; 10] = [
    q(
        "METAFLOW_DATASTORE_SYSROOT_S3",
        Section::Datastore,
        "Amazon S3 folder for Metaflow artifacts (s3://bucket/prefix)",
        "--datastore-root",
        true,
    ),
    q(
        "METAFLOW_DATATOOLS_S3ROOT",
        Section::Datastore,
        "Amazon S3 folder for Metaflow datatools",
        "--datatools-root",
        false,
    ),
    q(
        "METAFLOW_SERVICE_URL",
        Section::Metadata,
        "URL of the metadata service (empty: none)",
        "--service-url",
        false,
    ),
    q(
        "METAFLOW_SERVICE_INTERNAL_URL",
        Section::Metadata,
        "URL of the metadata service as seen from jobs",
        "--service-internal-url",
        false,
    ),
    q(
        "METAFLOW_SERVICE_AUTH_KEY",
        Section::Metadata,
        "Auth key for the metadata service (empty: none)",
        "--service-auth-key",
        false,
    ),
    q(
        "METAFLOW_BATCH_JOB_QUEUE",
        Section::Batch,
        "AWS Batch job queue (name or ARN)",
        "--queue",
        true,
    ),
    q(
        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
        Section::Batch,
        "IAM role for jobs, with access to the S3 folder (ARN)",
        "--iam-role",
        true,
    ),
    q(
        "METAFLOW_BATCH_CONTAINER_REGISTRY",
        Section::Batch,
        "Container registry for images that name none (empty: Docker Hub)",
        "--container-registry",
        false,
    ),
    q(
        "METAFLOW_BATCH_CONTAINER_IMAGE",
        Section::Batch,
        "Default container image (empty: python:<your Python version>)",
        "--image",
        false,
    ),
    q(
        "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
        Section::Batch,
        "ECS execution role for Fargate queues (ARN; empty: none)",
        "--execution-role",
        false,
    ),
];

const fn q(
    key: &'static str,
    section: Section,
    prompt: &'static str,
    flag: &'static str,
    required: bool,
) -> Question {
    Question {
        key,
        section,
        prompt,
        flag,
        required,
    }
}

impl Question {
    /// Whether to ask at all, given the answers so far: the service's internal URL and key only
    /// matter when there is a service.
    pub fn applies(&self, answers: &BTreeMap<String, String>) -> bool {
        match self.key {
            "METAFLOW_SERVICE_INTERNAL_URL" | "METAFLOW_SERVICE_AUTH_KEY" => answers
                .get("METAFLOW_SERVICE_URL")
                .is_some_and(|v| !v.is_empty()),
            _ => true,
        }
    }

    /// The value offered when the file has none, derived from earlier answers as Metaflow does.
    pub fn derived_default(&self, answers: &BTreeMap<String, String>) -> Option<String> {
        let get = |key: &str| answers.get(key).filter(|v| !v.is_empty());
        match self.key {
            "METAFLOW_DATATOOLS_S3ROOT" => get("METAFLOW_DATASTORE_SYSROOT_S3")
                .map(|root| format!("{}/data", root.trim_end_matches('/'))),
            "METAFLOW_SERVICE_INTERNAL_URL" => get("METAFLOW_SERVICE_URL").cloned(),
            _ => None,
        }
    }
}

/// What `configure aws` sets besides the answers: the datastore and metadata modes Metaflow
/// itself sets with them.
pub fn aws_modes(answers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let set = |key: &str| answers.get(key).is_some_and(|v| !v.is_empty());
    if set("METAFLOW_DATASTORE_SYSROOT_S3") {
        out.insert("METAFLOW_DEFAULT_DATASTORE".into(), "s3".into());
    }
    out.insert(
        "METAFLOW_DEFAULT_METADATA".into(),
        if set("METAFLOW_SERVICE_URL") {
            "service".into()
        } else {
            String::new() // unset: Metaflow's default (local)
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_like_pythons_json_dump_indent_4_sorted() {
        let mut map = ConfigMap::new();
        map.insert("METAFLOW_B".into(), Value::String("2".into()));
        map.insert("METAFLOW_A".into(), Value::String("1".into()));
        map.insert("METAFLOW_EMPTY".into(), Value::String(" ".into()));
        map.insert("METAFLOW_NULL".into(), Value::Null);
        map.insert("METAFLOW_TAGS".into(), serde_json::json!({"team": "x"}));
        assert_eq!(
            render(&map),
            "{\n    \"METAFLOW_A\": \"1\",\n    \"METAFLOW_B\": \"2\",\n    \"METAFLOW_TAGS\": {\n        \"team\": \"x\"\n    }\n}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn written_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/config.json");
        let mut map = ConfigMap::new();
        map.insert("METAFLOW_SERVICE_AUTH_KEY".into(), "secret".into());
        write(&path, &map).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read(&path).unwrap(), Some(map));
        // Only the file itself is left: no temp file.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
    }
}
