//! The run budget: every call reserves its worst-case cost before it is made
//! and settles to its actual cost after, so concurrent calls can never
//! together cross the limit. Free calls (local models) are never blocked.
//!
//! A call whose worst case fits in what is left *after what was spent* but
//! not alongside what other calls in flight have reserved waits for them to
//! settle (their actual cost is usually far below their worst case) instead
//! of failing; only a call that cannot fit even then is refused.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Why a call was not made.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget {
    pub limit: f64,
    pub committed: f64,
    pub worst_case: f64,
}

#[derive(Debug, Default)]
struct State {
    spent: f64,
    reserved: f64,
}

#[derive(Debug)]
pub struct Budget {
    limit: Option<f64>,
    state: Mutex<State>,
    settled: Notify,
}

/// A reservation; settle it with the call's actual cost.
#[derive(Debug)]
#[must_use = "a reservation must be settled"]
pub struct Reservation {
    amount: f64,
}

impl Budget {
    pub fn new(limit: Option<f64>) -> Budget {
        Budget {
            limit,
            state: Mutex::new(State::default()),
            settled: Notify::new(),
        }
    }

    /// Reserves `worst_case` dollars, waiting for calls in flight to settle
    /// when only their reservations stand in the way; refuses when the call
    /// cannot fit in what is left after what was spent.
    pub async fn reserve(&self, worst_case: f64) -> Result<Reservation, OverBudget> {
        loop {
            // Registered before the check, so a settle in between is not missed.
            let settled = self.settled.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let Some(limit) = self.limit else {
                    s.reserved += worst_case;
                    return Ok(Reservation { amount: worst_case });
                };
                if worst_case <= 0.0 || s.spent + s.reserved + worst_case <= limit + 1e-12 {
                    s.reserved += worst_case.max(0.0);
                    return Ok(Reservation {
                        amount: worst_case.max(0.0),
                    });
                }
                if s.spent + worst_case > limit + 1e-12 || s.reserved <= 0.0 {
                    return Err(OverBudget {
                        limit,
                        committed: s.spent + s.reserved,
                        worst_case,
                    });
                }
            }
            settled.await;
        }
    }

    /// Replaces a reservation by what the call really cost.
    pub fn settle(&self, r: Reservation, actual: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.reserved = (s.reserved - r.amount).max(0.0);
        s.spent += actual;
        drop(s);
        self.settled.notify_waiters();
    }

    pub fn spent(&self) -> f64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_cannot_cross_the_limit_together() {
        let b = std::sync::Arc::new(Budget::new(Some(1.0)));
        let a = b.reserve(0.6).await.unwrap();
        // A second worst case of 0.6 does not fit beside the first: it waits
        // until the first settles at its real cost, then fits.
        let b2 = std::sync::Arc::clone(&b);
        let waiting = tokio::spawn(async move { b2.reserve(0.6).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        b.settle(a, 0.1);
        let c = waiting.await.unwrap().unwrap();
        b.settle(c, 0.2);
        assert!((b.spent() - 0.3).abs() < 1e-9);
        // Cannot fit even after everything settled: refused at once.
        assert!(b.reserve(0.8).await.is_err());
    }

    #[tokio::test]
    async fn free_calls_are_never_blocked() {
        let b = Budget::new(Some(0.0));
        let r = b.reserve(0.0).await.unwrap();
        b.settle(r, 0.0);
    }
}
