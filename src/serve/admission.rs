//! Launch admission: at most so many launches waiting or in progress (beyond that `launch` is
//! answered `busy` with a retry delay instead of queueing without bound), at most so many
//! packaging and staging at once, and SubmitJob paced by one rate budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::track::RateBudget;

/// Limits of the launch path.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Launches accepted and not yet submitted (or failed).
    pub max_pending: usize,
    /// Launches packaging, planning or staging at once.
    pub max_stagings: usize,
    /// SubmitJob calls per second (Batch's account quota is about 50 for all callers).
    pub submits_per_second: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: 10_000,
            max_stagings: 8,
            submits_per_second: 20.0,
        }
    }
}

pub struct Admission {
    limits: Limits,
    pending: Arc<AtomicUsize>,
    stagings: Semaphore,
    pub submit_budget: Arc<RateBudget>,
}

/// One accepted launch; dropping it frees its place.
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Admission {
            stagings: Semaphore::new(limits.max_stagings.max(1)),
            submit_budget: Arc::new(RateBudget::new(limits.submits_per_second)),
            pending: Arc::default(),
            limits,
        }
    }

    /// A place for one more launch, or how long to wait before asking again (ms): the time the
    /// submit rate needs to work off the excess.
    pub fn admit(&self) -> Result<Admitted, u64> {
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.max_pending).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Admitted(self.pending.clone())),
            Err(n) => {
                let excess = (n + 1).saturating_sub(self.limits.max_pending).max(1) as f64;
                Err(((excess / self.limits.submits_per_second) * 1000.0).max(100.0) as u64)
            }
        }
    }

    /// Waits for a staging slot.
    pub async fn staging(&self) -> SemaphorePermit<'_> {
        self.stagings.acquire().await.expect("never closed")
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_daemon_says_busy_and_frees_places() {
        let admission = Admission::new(Limits {
            max_pending: 2,
            max_stagings: 1,
            submits_per_second: 10.0,
        });
        let a = admission.admit().unwrap();
        let _b = admission.admit().unwrap();
        assert_eq!(admission.admit().err(), Some(100));
        drop(a);
        assert!(admission.admit().is_ok());
    }
}
