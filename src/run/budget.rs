//! The run budget: every call reserves its worst-case cost before it is made
//! and settles to its actual cost after, so concurrent calls can never
//! together cross the limit. Free calls (local models) are never blocked.
//!
//! Budgets over time (a UTC day, a UTC month) are checked the same way, on
//! top of what *others* spent in the period — other runs, earlier sessions of
//! a resumed run — which [`OutsideSpend`] reads from the run journal before
//! every paid call. If it cannot be read, paid calls are refused (fail
//! closed).
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
    /// `run`, `daily` or `monthly`.
    pub scope: &'static str,
    pub limit: f64,
    /// Spent and reserved in the scope, this call not included.
    pub committed: f64,
    pub worst_case: f64,
    /// Set when what was spent could not be read: nothing paid is called.
    pub unreadable: Option<String>,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.unreadable {
            return write!(
                f,
                "the {} budget cannot be checked ({why}); paid calls are not made",
                self.scope
            );
        }
        let scope = match self.scope {
            "daily" => "daily budget (UTC day, all runs)",
            "monthly" => "monthly budget (UTC month, all runs)",
            _ => "run budget",
        };
        write!(
            f,
            "its worst case ${:.6} would cross the {scope} (${:.4} committed of ${:.2})",
            self.worst_case, self.committed, self.limit
        )
    }
}

/// A period a budget counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// What was spent in the current period outside this run's own ledger.
pub trait OutsideSpend: Send + Sync {
    fn spent(&self, period: Period) -> Result<f64, String>;
}

#[derive(Debug, Default)]
struct State {
    spent: f64,
    reserved: f64,
}

pub struct Budget {
    limit: Option<f64>,
    /// What earlier sessions of this run spent (it counts against the run
    /// budget; the journal counts it for the periods).
    earlier: f64,
    periods: Vec<(Period, f64)>,
    outside: Option<std::sync::Arc<dyn OutsideSpend>>,
    state: Mutex<State>,
    settled: Notify,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("earlier", &self.earlier)
            .field("periods", &self.periods)
            .finish_non_exhaustive()
    }
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
            earlier: 0.0,
            periods: Vec::new(),
            outside: None,
            state: Mutex::new(State::default()),
            settled: Notify::new(),
        }
    }

    /// A resumed run: what its earlier sessions spent counts against the
    /// run budget.
    pub fn with_earlier_spend(mut self, earlier: f64) -> Budget {
        self.earlier = earlier.max(0.0);
        self
    }

    /// Daily and monthly limits, on top of what `outside` says others spent.
    pub fn with_periods(
        mut self,
        periods: Vec<(Period, f64)>,
        outside: std::sync::Arc<dyn OutsideSpend>,
    ) -> Budget {
        self.periods = periods;
        self.outside = Some(outside);
        self
    }

    /// Reserves `worst_case` dollars, waiting for calls in flight to settle
    /// when only their reservations stand in the way; refuses when the call
    /// cannot fit in what is left after what was spent.
    pub async fn reserve(&self, worst_case: f64) -> Result<Reservation, OverBudget> {
        if worst_case <= 0.0 {
            // Free calls are never blocked, and never wait for the journal.
            return Ok(Reservation { amount: 0.0 });
        }
        loop {
            // Registered before the check, so a settle in between is not missed.
            let settled = self.settled.notified();
            // Read before taking the lock: a journal query must not hold up
            // the other calls' settling.
            let mut limits: Vec<(&'static str, f64, f64)> = Vec::new();
            if let Some(limit) = self.limit {
                limits.push(("run", limit, self.earlier));
            }
            if let Some(outside) = &self.outside {
                for &(period, limit) in &self.periods {
                    let scope = match period {
                        Period::Day => "daily",
                        Period::Month => "monthly",
                    };
                    match outside.spent(period) {
                        Ok(others) => limits.push((scope, limit, others)),
                        Err(why) => {
                            return Err(OverBudget {
                                scope,
                                limit,
                                committed: 0.0,
                                worst_case,
                                unreadable: Some(why),
                            });
                        }
                    }
                }
            }
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let fits = |base: f64, limit: f64, with_reserved: bool| {
                    let reserved = if with_reserved { s.reserved } else { 0.0 };
                    base + s.spent + reserved + worst_case <= limit + 1e-12
                };
                if limits
                    .iter()
                    .all(|&(_, limit, base)| fits(base, limit, true))
                {
                    s.reserved += worst_case;
                    return Ok(Reservation { amount: worst_case });
                }
                // Cannot fit even once everything in flight has settled: refuse.
                let failing = limits
                    .iter()
                    .find(|&&(_, limit, base)| !fits(base, limit, false))
                    .or_else(|| {
                        // Nothing in flight to wait for.
                        (s.reserved <= 0.0)
                            .then(|| {
                                limits
                                    .iter()
                                    .find(|&&(_, limit, base)| !fits(base, limit, true))
                            })
                            .flatten()
                    });
                if let Some(&(scope, limit, base)) = failing {
                    return Err(OverBudget {
                        scope,
                        limit,
                        committed: base + s.spent + s.reserved,
                        worst_case,
                        unreadable: None,
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

    /// What this session settled.
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

    struct Others(Result<f64, String>);

    impl OutsideSpend for Others {
        fn spent(&self, _: Period) -> Result<f64, String> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn periods_count_what_others_spent_and_fail_closed() {
        let spent = std::sync::Arc::new(Others(Ok(0.9)));
        let b = Budget::new(None).with_periods(vec![(Period::Day, 1.0)], spent);
        let over = b.reserve(0.2).await.unwrap_err();
        assert_eq!(over.scope, "daily");
        let r = b.reserve(0.05).await.unwrap();
        b.settle(r, 0.05);
        // Unreadable journal: paid calls refused, free ones made.
        let broken = std::sync::Arc::new(Others(Err("disk I/O error".into())));
        let b = Budget::new(None).with_periods(vec![(Period::Month, 100.0)], broken);
        assert!(b.reserve(0.01).await.unwrap_err().unreadable.is_some());
        b.settle(b.reserve(0.0).await.unwrap(), 0.0);
        // Earlier sessions of a resumed run count against the run budget.
        let b = Budget::new(Some(1.0)).with_earlier_spend(0.95);
        assert_eq!(b.reserve(0.1).await.unwrap_err().scope, "run");
    }
}
