//! A shared call budget per AWS service: every caller in the process waits its turn, so a
//! thousand followed jobs make no more calls per second than one configured rate.
//!
//! It is a token bucket (GCRA): up to one second's worth of calls may go at once after a quiet
//! spell, then calls are spaced at the rate. The rate adapts: throttling halves it (down to a
//! floor), each success wins a little back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Paces calls to one service.
#[derive(Debug)]
pub struct RateBudget {
    base_interval: Duration,
    /// How far behind "now" the schedule may fall: the burst, less one call.
    burst_window: Duration,
    state: Mutex<State>,
    /// Callers that share the budget over time (e.g. one per followed log stream).
    users: AtomicUsize,
}

/// A registered user of a budget; leaving is dropping it.
#[derive(Debug)]
pub struct BudgetUser(Arc<RateBudget>);

impl Drop for BudgetUser {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct State {
    next_slot: Instant,
    interval: Duration,
    calls: u64,
}

/// How far throttling can slow a budget: to 1/16 of its configured rate.
const MAX_SLOWDOWN: u32 = 16;

impl RateBudget {
    /// A budget of `per_second` calls per second (at least one call every 10 s).
    pub fn new(per_second: f64) -> Self {
        let base_interval = Duration::from_secs_f64(1.0 / per_second.max(0.1));
        let burst = per_second.floor().max(1.0);
        let burst_window = base_interval.mul_f64(burst - 1.0);
        let now = Instant::now();
        RateBudget {
            base_interval,
            burst_window,
            state: Mutex::new(State {
                // A full bucket to start with.
                next_slot: now.checked_sub(burst_window).unwrap_or(now),
                interval: base_interval,
                calls: 0,
            }),
            users: AtomicUsize::new(0),
        }
    }

    /// Counts a long-lived caller until the returned guard is dropped.
    pub fn register(self: &Arc<Self>) -> BudgetUser {
        self.users.fetch_add(1, Ordering::Relaxed);
        BudgetUser(self.clone())
    }

    /// The interval at which every registered user together takes `share` of the budget.
    pub fn interval_for_share(&self, share: f64) -> Duration {
        let users = self.users.load(Ordering::Relaxed).max(1) as f64;
        self.base_interval.mul_f64(users / share.clamp(0.01, 1.0))
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut state = self.state.lock().expect("budget lock");
            let now = Instant::now();
            let earliest = now.checked_sub(self.burst_window).unwrap_or(now);
            let slot = state.next_slot.max(earliest);
            state.next_slot = slot + state.interval;
            state.calls += 1;
            slot
        };
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
    }

    /// The service throttled us even after the SDK's retries: slow everyone down.
    pub fn throttled(&self) {
        let mut state = self.state.lock().expect("budget lock");
        state.interval = (state.interval * 2).min(self.base_interval * MAX_SLOWDOWN);
        state.next_slot = state.next_slot.max(Instant::now()) + state.interval;
    }

    /// A call went through: recover a little of the configured rate.
    pub fn succeeded(&self) {
        let mut state = self.state.lock().expect("budget lock");
        if state.interval > self.base_interval {
            state.interval = (state.interval.mul_f64(0.9)).max(self.base_interval);
        }
    }

    /// Callers registered now.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// The current rate, in calls per second (lower than configured while throttled).
    pub fn rate(&self) -> f64 {
        1.0 / self
            .state
            .lock()
            .expect("budget lock")
            .interval
            .as_secs_f64()
    }

    /// Calls granted so far.
    pub fn calls(&self) -> u64 {
        self.state.lock().expect("budget lock").calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_calls_at_the_configured_rate() {
        let budget = RateBudget::new(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            budget.acquire().await;
        }
        // 21 calls at 10/s: a burst of 10 at once, then one every 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(1100));
        assert_eq!(budget.calls(), 21);
        // Sustained, the rate holds: 50 more take 5 s.
        let start = Instant::now();
        for _ in 0..50 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn users_share_the_budget() {
        let budget = Arc::new(RateBudget::new(10.0));
        let users: Vec<_> = (0..50).map(|_| budget.register()).collect();
        // 50 users taking half of 10 calls/s: one call each every 10 s.
        assert_eq!(budget.interval_for_share(0.5), Duration::from_secs(10));
        drop(users);
        assert_eq!(budget.interval_for_share(0.5), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_slows_down_and_success_recovers() {
        let budget = RateBudget::new(10.0);
        budget.throttled();
        budget.throttled();
        let interval = budget.state.lock().unwrap().interval;
        assert_eq!(interval, Duration::from_millis(400));
        for _ in 0..100 {
            budget.succeeded();
        }
        assert_eq!(
            budget.state.lock().unwrap().interval,
            Duration::from_millis(100)
        );
    }
}
