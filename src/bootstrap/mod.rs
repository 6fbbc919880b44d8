//! The container-side program every job runs, and the command line that starts it.
//!
//! The program is `bootstrap/bootstrap.py` (standard library only: no pip install), embedded at
//! build time. It travels in the job definition's environment (`MFBATCH_BOOTSTRAP`), which may
//! hold 24 KiB, so the per-job container overrides (limited to 8,192 characters) carry only the
//! package location and the user's environment.

pub mod end_record;

use crate::bootstrap::end_record::NONCE_ENV;

/// The bootstrap's source.
pub const BOOTSTRAP_PY: &str = include_str!("bootstrap.py");

/// The environment variable that carries [`BOOTSTRAP_PY`] into the container.
pub const BOOTSTRAP_ENV: &str = "MFBATCH_BOOTSTRAP";

/// Finds a Python in the image and runs the bootstrap with it; POSIX `sh` only.
/// Without one it writes the end record itself (see [`crate::bootstrap::end_record`]).
pub const STUB: &str = r#"for py in python3 python; do if command -v "$py" >/dev/null 2>&1; then exec "$py" -u -c "$MFBATCH_BOOTSTRAP"; fi; done; echo "mfbatch-bootstrap: the image has neither python3 nor python" >&2; if [ -n "$MFBATCH_END_NONCE" ]; then r="mfbatch-end:v1:$MFBATCH_END_NONCE:${AWS_BATCH_JOB_ATTEMPT:-1}:127:bootstrap"; echo "$r:stdout"; echo "$r:stderr" >&2; fi; exit 127"#;

/// Exit codes the bootstrap uses for its own failures (the user's script owns all others).
pub mod exit_code {
    /// The package could not be downloaded.
    pub const PACKAGE_UNAVAILABLE: i32 = 121;
    /// The package is corrupt: wrong SHA-256, not a tarball, or an unsafe member.
    pub const PACKAGE_CORRUPT: i32 = 122;
    /// The bootstrap's environment is incomplete (a bug in mfbatch, or a hand-edited job).
    pub const BAD_ENVIRONMENT: i32 = 123;
    /// The image has no Python.
    pub const NO_PYTHON: i32 = 127;
}

/// The container command of every job definition.
pub fn command() -> Vec<String> {
    vec!["sh".into(), "-c".into(), STUB.into()]
}

/// What one job tells the bootstrap: which package, which script, which arguments.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `s3://bucket/key` or `file:///path`.
    pub package_url: String,
    pub package_sha256: String,
    /// Regular files in the package: the bootstrap refuses an archive that ends early.
    pub package_files: usize,
    /// The script, relative to the package root.
    pub script: String,
    pub args: Vec<String>,
    /// The nonce of this job's end records ([`crate::bootstrap::end_record`]).
    pub end_nonce: String,
}

impl Invocation {
    /// The environment variables that carry this invocation.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("MFBATCH_PACKAGE_URL".to_owned(), self.package_url.clone()),
            (
                "MFBATCH_PACKAGE_SHA256".to_owned(),
                self.package_sha256.clone(),
            ),
            (
                "MFBATCH_PACKAGE_FILES".to_owned(),
                self.package_files.to_string(),
            ),
            ("MFBATCH_SCRIPT".to_owned(), self.script.clone()),
            // Always set, even to `[]`: an inherited value must never become the arguments.
            (
                "MFBATCH_ARGS".to_owned(),
                serde_json::to_string(&self.args).expect("strings serialize"),
            ),
        ];
        env.push((NONCE_ENV.to_owned(), self.end_nonce.clone()));
        env
    }
}
