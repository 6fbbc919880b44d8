//! `mfbatch serve`: one long-lived process that orchestrators in any language drive over
//! newline-delimited JSON-RPC 2.0 ([`protocol`]), sharing one [`crate::track::Tracker`] (one
//! status poller, one rate budget per service) among every job, with a journal ([`journal`])
//! that makes each client key at most one job, across crashes.
//!
//! The library part has no CLI dependencies: a [`Daemon`] serves [`session::serve_connection`]s
//! over any byte streams; the binary (`src/cli/serve_cmd.rs`) binds stdio, a unix socket or a
//! loopback TCP port and handles signals. The wire protocol is documented in
//! `docs/serve-protocol.md`.

pub mod admission;
mod daemon;
mod follow;
pub mod journal;
pub mod launcher;
pub mod lines;
pub mod outbox;
pub mod protocol;
pub mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use admission::Limits;
pub use daemon::Daemon;

/// Why the daemon could not start or keep its state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("another mfbatch serve is using {dir}")]
    Locked { dir: PathBuf },
    #[error("cannot write the journal in {path}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Locked { .. } => {
                Some("connect to the running daemon, stop it, or pass another --state-dir".into())
            }
            ServeError::Journal { .. } => None,
        }
    }
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// The settings' sources for every launch (a launch's `settings` add flags).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub tracker: crate::track::TrackerConfig,
    pub limits: Limits,
    /// Log bytes that may wait for one connection's reader, in all…
    pub connection_log_window: u64,
    /// …and per followed job.
    pub job_log_window: u64,
    /// Required in `hello` (TCP).
    pub token: Option<String>,
}

impl ServeConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        ServeConfig {
            state_dir,
            env: crate::settings::utf8_environment(std::env::vars_os()),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            tracker: Default::default(),
            limits: Default::default(),
            connection_log_window: 8 * 1024 * 1024,
            job_log_window: 256 * 1024,
            token: None,
        }
    }
}
