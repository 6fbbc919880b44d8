//! Which container image a job runs: the explicit choice, else `python:<major>.<minor>`, with the
//! configured registry put in front of images that name none.

use std::fmt;
use std::process::Command;

use crate::error::ConfigError;

/// A container image reference, as sent to Batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Python `major.minor` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonVersion {
    pub major: u32,
    pub minor: u32,
}

impl PythonVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(PythonVersion { major, minor })
    }

    /// Asks the local `python3` (then `python`) for its version.
    pub fn detect_local() -> Result<Self, String> {
        for exe in ["python3", "python"] {
            let output = Command::new(exe)
                .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
                .output();
            if let Ok(out) = output {
                if out.status.success() {
                    if let Some(v) = Self::parse(&String::from_utf8_lossy(&out.stdout)) {
                        return Ok(v);
                    }
                }
            }
        }
        Err("no python3 or python on PATH to take the version from".into())
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Whether the image's first path segment names a registry (`host.domain/…`, `host:port/…`,
/// `localhost/…`), following Docker's rule.
pub fn names_registry(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// Decides the image: `explicit` (flag or `METAFLOW_BATCH_CONTAINER_IMAGE`), else `python:X.Y` of
/// `python` (called lazily: only when no image is configured); then the registry rule.
pub fn resolve_image(
    explicit: Option<&str>,
    registry: Option<&str>,
    python: impl FnOnce() -> Result<PythonVersion, String>,
) -> Result<ImageRef, ConfigError> {
    let image = match explicit {
        Some(image) => {
            let image = image.trim();
            if image.is_empty() || image.chars().any(char::is_whitespace) {
                return Err(ConfigError::InvalidFlag {
                    flag: "--image",
                    value: image.to_owned(),
                    reason: "an image reference has no spaces, e.g. python:3.11 or org/img:tag"
                        .into(),
                });
            }
            image.to_owned()
        }
        None => {
            let version = python().map_err(|reason| ConfigError::NoDefaultImage { reason })?;
            format!("python:{version}")
        }
    };
    let registry = registry
        .map(|r| r.trim().trim_end_matches('/'))
        .filter(|r| !r.is_empty());
    Ok(match registry {
        Some(registry) if !names_registry(&image) => ImageRef(format!("{registry}/{image}")),
        _ => ImageRef(image),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py311() -> Result<PythonVersion, String> {
        Ok(PythonVersion {
            major: 3,
            minor: 11,
        })
    }

    #[test]
    fn registry_rule_table() {
        let registry = Some("registry.example.com/team/");
        let ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com/r:t";
        let digest =
            "ghcr.io/o/i@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases: [(Option<&str>, Option<&str>, String); 8] = [
            (None, None, "python:3.11".into()),
            (
                None,
                registry,
                "registry.example.com/team/python:3.11".into(),
            ),
            (
                Some("python:3.11"),
                registry,
                "registry.example.com/team/python:3.11".into(),
            ),
            (
                Some("org/img:1"),
                registry,
                "registry.example.com/team/org/img:1".into(),
            ),
            (
                Some("localhost:5000/x"),
                registry,
                "localhost:5000/x".into(),
            ),
            (Some(ecr), registry, ecr.into()),
            (Some(digest), registry, digest.into()),
            (Some("org/img:1"), None, "org/img:1".into()),
        ];
        for (explicit, registry, want) in cases {
            let got = resolve_image(explicit, registry, py311).unwrap();
            assert_eq!(
                got.as_str(),
                want,
                "image {explicit:?} registry {registry:?}"
            );
        }
    }

    #[test]
    fn python_is_asked_only_without_an_image() {
        let got = resolve_image(Some("x:1"), None, || panic!("must not detect python"));
        assert_eq!(got.unwrap().as_str(), "x:1");
        let err = resolve_image(None, None, || Err("no python".into())).unwrap_err();
        assert!(matches!(err, ConfigError::NoDefaultImage { .. }));
        assert!(resolve_image(Some("has space"), None, py311).is_err());
    }

    #[test]
    fn python_versions() {
        assert_eq!(
            PythonVersion::parse("3.12\n"),
            Some(PythonVersion {
                major: 3,
                minor: 12
            })
        );
        assert_eq!(PythonVersion::parse("3"), None);
        assert_eq!(PythonVersion::parse("x.y"), None);
    }
}
