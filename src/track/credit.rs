//! Log credit: lets a slow consumer hold back log followers instead of buffering without bound.
//!
//! A follower with a [`LogCredit`] waits for it before each GetLogEvents, so while the consumer
//! is behind no more is read: the CloudWatch stream is the buffer and nothing is lost. The
//! consumer [`take`](LogCredit::take)s credit as lines are queued and
//! [`give`](LogCredit::give)s it back as they leave. A credit may have a parent (one for a whole
//! connection, say): a follower waits until both have room. A page already read is never held
//! back, so a window is exceeded by at most one page (GetLogEvents: ≤ 1 MB) per stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A window of log bytes that may wait in a consumer's queue.
#[derive(Debug)]
pub struct LogCredit {
    window: u64,
    used: AtomicU64,
    room: Notify,
    parent: Option<Arc<LogCredit>>,
}

impl LogCredit {
    /// A credit of `window` bytes, within `parent`'s when given.
    pub fn new(window: u64, parent: Option<Arc<LogCredit>>) -> Arc<Self> {
        Arc::new(LogCredit {
            window,
            used: AtomicU64::new(0),
            room: Notify::new(),
            parent,
        })
    }

    /// Bytes queued and not yet given back.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn has_room(&self) -> bool {
        self.used() < self.window
    }

    /// Counts `bytes` as queued (here and in the parent). Never waits: what was read is kept.
    pub fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        if let Some(parent) = &self.parent {
            parent.take(bytes);
        }
    }

    /// Returns `bytes` that left the queue, waking followers waiting for room.
    pub fn give(&self, bytes: u64) {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            })
            .unwrap_or_default();
        if before.saturating_sub(bytes) < self.window {
            self.room.notify_waiters();
        }
        if let Some(parent) = &self.parent {
            parent.give(bytes);
        }
    }

    /// Waits until this credit and its parent have room.
    pub async fn ready(&self) {
        loop {
            // Registered before looking, so a `give` between the look and the wait is not missed.
            let own = self.room.notified();
            tokio::pin!(own);
            own.as_mut().enable();
            if !self.has_room() {
                own.await;
                continue;
            }
            let Some(parent) = &self.parent else { return };
            let theirs = parent.room.notified();
            tokio::pin!(theirs);
            theirs.as_mut().enable();
            if parent.has_room() {
                return;
            }
            theirs.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_room_in_itself_and_its_parent() {
        let parent = LogCredit::new(100, None);
        let credit = LogCredit::new(50, Some(parent.clone()));
        credit.ready().await;
        credit.take(60);
        assert_eq!(parent.used(), 60);
        let waiting = tokio::spawn({
            let credit = credit.clone();
            async move { credit.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        credit.give(20);
        waiting.await.unwrap();
        let other = LogCredit::new(50, Some(parent.clone()));
        parent.take(100);
        let blocked = tokio::spawn({
            let other = other.clone();
            async move { other.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        parent.give(100);
        blocked.await.unwrap();
    }
}
