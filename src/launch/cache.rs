//! What a long-lived launcher (`mfbatch serve`) already learned from AWS, so that a thousand
//! launches of the same step cost one queue lookup, one HeadObject and one definition lookup,
//! not a thousand of each.
//!
//! Only facts that stay true are kept: a package stored under its content hash stays stored, a
//! definition named by its content hash keeps its content. A queue's state can change, so it
//! is kept for [`QUEUE_TTL`] only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::jobdef::Registered;
use super::queue::QueueInfo;

/// How long a queue's description is reused.
pub const QUEUE_TTL: Duration = Duration::from_secs(60);

/// Facts from earlier plans and stagings, shared by every launch of a process.
#[derive(Debug, Default)]
pub struct PlanCache {
    queues: Mutex<HashMap<String, (Instant, QueueInfo)>>,
    stored: Mutex<HashMap<String, ()>>,
    definitions: Mutex<HashMap<String, Registered>>,
}

impl PlanCache {
    pub fn queue(&self, name: &str) -> Option<QueueInfo> {
        let queues = self.queues.lock().expect("cache lock");
        let (at, info) = queues.get(name)?;
        (at.elapsed() < QUEUE_TTL).then(|| info.clone())
    }

    pub fn remember_queue(&self, name: &str, info: &QueueInfo) {
        self.queues
            .lock()
            .expect("cache lock")
            .insert(name.to_owned(), (Instant::now(), info.clone()));
    }

    /// Whether the package at this URL is known to be stored.
    pub fn is_stored(&self, package_url: &str) -> bool {
        self.stored
            .lock()
            .expect("cache lock")
            .contains_key(package_url)
    }

    pub fn remember_stored(&self, package_url: &str) {
        self.stored
            .lock()
            .expect("cache lock")
            .insert(package_url.to_owned(), ());
    }

    /// A registered definition with this (content-hash) name.
    pub fn definition(&self, name: &str) -> Option<Registered> {
        let found = self
            .definitions
            .lock()
            .expect("cache lock")
            .get(name)
            .cloned();
        found.map(|r| Registered {
            newly_registered: false,
            ..r
        })
    }

    pub fn remember_definition(&self, registered: &Registered) {
        self.definitions
            .lock()
            .expect("cache lock")
            .insert(registered.name.clone(), registered.clone());
    }

    /// Keeps what a staged launch proved: its package is stored, its definition registered.
    pub fn remember_staged(&self, staged: &super::Staged) {
        self.remember_stored(&staged.package_url);
        self.remember_definition(&staged.job_definition);
    }
}
