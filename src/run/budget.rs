//! The run budget: every call reserves its worst-case cost before it is made
//! and settles to its actual cost after, so concurrent calls can never
//! together cross the limit. Free calls (local models) are never blocked.
//!
//! Budgets over time (a UTC day, a UTC month) are checked the same way, on
//! top of what *others* spent in the period — other runs, earlier sessions of
//! a resumed run — and the worst cases of their calls in flight, which
//! [`OutsideSpend`] (the run journal) counts and holds for this call in one
//! step, so two processes cannot both take the last of a day's budget. If it
//! cannot be read, paid calls are refused (fail closed).
//!
//! A call whose worst case fits in what is left *after what was spent* but
//! not alongside what other calls in flight have reserved waits for them to
//! settle (their actual cost is usually far below their worst case) instead
//! of failing; only a call that cannot fit even then is refused.

use crate::journal::JournalError;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Why a call was not made.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget {
    /// `run`, `daily`, `monthly` or `per-user daily`.
    pub scope: &'static str,
    /// Whose budget it is, for a per-user one (the journal's user).
    pub user: Option<String>,
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
        let user_scope;
        let scope = match self.scope {
            "daily" => "daily budget (UTC day, all runs)",
            "monthly" => "monthly budget (UTC month, all runs)",
            "per-user daily" => {
                user_scope = format!(
                    "per-user daily budget of `{}` (per_user_daily_usd: their runs on every machine, UTC day)",
                    self.user.as_deref().unwrap_or("")
                );
                &user_scope
            }
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
    /// The UTC day, counting only this user's runs (`per_user_daily_usd`).
    UserDay,
}

/// One period limit to check a call against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeriodCheck {
    pub period: Period,
    pub limit: f64,
    /// What this run has spent and reserved (its own ledger).
    pub local: f64,
}

/// The answer of [`OutsideSpend::try_hold`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    /// The call fits; others now count it as in flight until released.
    Held(u64),
    /// The first check (by index) it does not fit: what others spent in its
    /// period and the worst cases of their calls in flight.
    Over {
        index: usize,
        spent: f64,
        in_flight: f64,
    },
}

/// Spending outside this run's own ledger, shared with other processes.
pub trait OutsideSpend: Send + Sync {
    /// In one step that other processes cannot interleave with: if `amount`
    /// fits under every check beside what others spent in the check's
    /// period and their calls in flight, hold it.
    /// An error means what others spent could not be read (the journal
    /// failed): the caller refuses paid calls rather than guess.
    fn try_hold(&self, amount: f64, checks: &[PeriodCheck]) -> Result<Hold, JournalError>;
    /// The call settled (its cost is journaled): the hold ends.
    fn release(&self, hold: u64);
    /// The user a per-user budget counts, as refusals name them.
    fn user(&self) -> Option<String> {
        None
    }
}

/// What a call that does not fit yet waits for.
enum Wait {
    /// A call of this run to settle.
    Own,
    /// Other processes' calls (polled: their settling cannot wake it).
    Others,
}

fn scope_of(p: Period) -> &'static str {
    match p {
        Period::Day => "daily",
        Period::Month => "monthly",
        Period::UserDay => "per-user daily",
    }
}

/// How often a call kept out only by other processes' calls in flight looks
/// again (their settling cannot wake it).
const POLL_OTHERS: std::time::Duration = std::time::Duration::from_millis(100);

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
    hold: Option<u64>,
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
        self.reserve_or_wait(worst_case, || {}).await
    }

    /// [`Budget::reserve`], calling `waiting_for_others` once if the call
    /// has to wait for other processes' calls in flight (the user should
    /// know why the run stands still).
    pub async fn reserve_or_wait(
        &self,
        worst_case: f64,
        waiting_for_others: impl FnOnce(),
    ) -> Result<Reservation, OverBudget> {
        let mut waiting_for_others = Some(waiting_for_others);
        if worst_case <= 0.0 {
            // Free calls are never blocked, and never wait for the journal.
            return Ok(Reservation {
                amount: 0.0,
                hold: None,
            });
        }
        loop {
            // Registered before the check, so a settle in between is not missed.
            let settled = self.settled.notified();
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.try_reserve(&mut s, worst_case)?
            };
            match wait {
                Ok(r) => return Ok(r),
                Err(Wait::Own) => settled.await,
                Err(Wait::Others) => {
                    if let Some(say) = waiting_for_others.take() {
                        say();
                    }
                    tokio::select! {
                        () = settled => {}
                        () = tokio::time::sleep(POLL_OTHERS) => {}
                    }
                }
            }
        }
    }

    /// Replaces a reservation by what the call really cost (journaled
    /// before this is called, so others never miss it).
    ///
    /// An amount that is not a finite, non-negative number keeps the
    /// reservation spent: settling can never free budget. (`cost::charge`
    /// already guarantees a sane amount; this holds even if a caller does
    /// not go through it.)
    pub fn settle(&self, r: Reservation, actual: f64) {
        let actual = if actual.is_finite() && actual >= 0.0 {
            actual
        } else {
            r.amount
        };
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.reserved = (s.reserved - r.amount).max(0.0);
        s.spent += actual;
        drop(s);
        if let (Some(id), Some(outside)) = (r.hold, &self.outside) {
            outside.release(id);
        }
        self.settled.notify_waiters();
    }

    /// One look at every limit, under the ledger's lock (the journal's hold
    /// is taken under it too, so this run's own calls cannot race each other
    /// past a limit).
    fn try_reserve(
        &self,
        s: &mut State,
        worst_case: f64,
    ) -> Result<Result<Reservation, Wait>, OverBudget> {
        const EPS: f64 = 1e-12;
        if let Some(limit) = self.limit {
            if self.earlier + s.spent + s.reserved + worst_case > limit + EPS {
                if self.earlier + s.spent + worst_case > limit + EPS || s.reserved <= 0.0 {
                    return Err(OverBudget {
                        scope: "run",
                        user: None,
                        limit,
                        committed: self.earlier + s.spent + s.reserved,
                        worst_case,
                        unreadable: None,
                    });
                }
                return Ok(Err(Wait::Own));
            }
        }
        let mut hold = None;
        if let Some(outside) = self.outside.as_ref().filter(|_| !self.periods.is_empty()) {
            let checks: Vec<PeriodCheck> = self
                .periods
                .iter()
                .map(|&(period, limit)| PeriodCheck {
                    period,
                    limit,
                    local: s.spent + s.reserved,
                })
                .collect();
            match outside.try_hold(worst_case, &checks) {
                Err(why) => {
                    return Err(OverBudget {
                        scope: scope_of(checks[0].period),
                        user: None,
                        limit: checks[0].limit,
                        committed: 0.0,
                        worst_case,
                        // Kept as the message the refusal shows.
                        unreadable: Some(why.to_string()),
                    });
                }
                Ok(Hold::Held(id)) => hold = Some(id),
                Ok(Hold::Over {
                    index,
                    spent,
                    in_flight,
                }) => {
                    let c = checks[index];
                    // Cannot fit even once every call in flight, here
                    // and elsewhere, has settled: refuse.
                    if spent + s.spent + worst_case > c.limit + EPS
                        || (s.reserved <= 0.0 && in_flight <= 0.0)
                    {
                        return Err(OverBudget {
                            scope: scope_of(c.period),
                            user: (c.period == Period::UserDay)
                                .then(|| outside.user())
                                .flatten(),
                            limit: c.limit,
                            committed: spent + in_flight + s.spent + s.reserved,
                            worst_case,
                            unreadable: None,
                        });
                    }
                    return Ok(Err(if in_flight > 0.0 {
                        Wait::Others
                    } else {
                        Wait::Own
                    }));
                }
            }
        }
        s.reserved += worst_case;
        Ok(Ok(Reservation {
            amount: worst_case,
            hold,
        }))
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
    async fn settling_never_frees_budget() {
        let b = Budget::new(Some(1.0));
        for bad in [-5.0, f64::NAN, f64::NEG_INFINITY, f64::INFINITY] {
            let r = b.reserve(0.1).await.unwrap();
            b.settle(r, bad);
        }
        // Each bad settle kept its reservation spent.
        assert!((b.spent() - 0.4).abs() < 1e-9, "{}", b.spent());
    }

    #[tokio::test]
    async fn free_calls_are_never_blocked() {
        let b = Budget::new(Some(0.0));
        let r = b.reserve(0.0).await.unwrap();
        b.settle(r, 0.0);
    }

    /// Another process: what it spent, its calls in flight, and whether
    /// the journal can be read.
    struct Others {
        spent: f64,
        in_flight: Mutex<f64>,
        held: Mutex<Vec<u64>>,
        broken: bool,
    }

    impl Others {
        fn new(spent: f64, in_flight: f64) -> std::sync::Arc<Others> {
            std::sync::Arc::new(Others {
                spent,
                in_flight: Mutex::new(in_flight),
                held: Mutex::new(Vec::new()),
                broken: false,
            })
        }
    }

    impl OutsideSpend for Others {
        fn try_hold(&self, amount: f64, checks: &[PeriodCheck]) -> Result<Hold, JournalError> {
            if self.broken {
                return Err(JournalError::Db(rusqlite::Error::InvalidQuery));
            }
            let in_flight = *self.in_flight.lock().unwrap();
            for (index, c) in checks.iter().enumerate() {
                if self.spent + in_flight + c.local + amount > c.limit + 1e-12 {
                    return Ok(Hold::Over {
                        index,
                        spent: self.spent,
                        in_flight,
                    });
                }
            }
            let mut held = self.held.lock().unwrap();
            let id = held.len() as u64 + 1;
            held.push(id);
            Ok(Hold::Held(held.len() as u64))
        }

        fn release(&self, hold: u64) {
            self.held.lock().unwrap().retain(|h| *h != hold);
        }
    }

    #[tokio::test]
    async fn periods_count_what_others_spent_and_fail_closed() {
        let others = Others::new(0.9, 0.0);
        let b = Budget::new(None).with_periods(vec![(Period::Day, 1.0)], others.clone());
        let over = b.reserve(0.2).await.unwrap_err();
        assert_eq!(over.scope, "daily");
        let r = b.reserve(0.05).await.unwrap();
        assert_eq!(others.held.lock().unwrap().len(), 1, "held while in flight");
        b.settle(r, 0.05);
        assert!(
            others.held.lock().unwrap().is_empty(),
            "released once settled"
        );
        // Unreadable journal: paid calls refused, free ones made.
        let broken = std::sync::Arc::new(Others {
            broken: true,
            ..std::sync::Arc::into_inner(Others::new(0.0, 0.0)).unwrap()
        });
        let b = Budget::new(None).with_periods(vec![(Period::Month, 100.0)], broken);
        assert!(b.reserve(0.01).await.unwrap_err().unreadable.is_some());
        b.settle(b.reserve(0.0).await.unwrap(), 0.0);
        // Earlier sessions of a resumed run count against the run budget.
        let b = Budget::new(Some(1.0)).with_earlier_spend(0.95);
        assert_eq!(b.reserve(0.1).await.unwrap_err().scope, "run");
    }

    #[tokio::test]
    async fn a_call_waits_for_other_processes_calls_in_flight() {
        // Another process has $0.5 in flight of a $1 day: a $0.6 call would
        // fit once it settles, so it waits (polling) instead of failing.
        let others = Others::new(0.0, 0.5);
        let b = std::sync::Arc::new(
            Budget::new(None).with_periods(vec![(Period::Day, 1.0)], others.clone()),
        );
        let b2 = std::sync::Arc::clone(&b);
        let waiting = tokio::spawn(async move { b2.reserve(0.6).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        *others.in_flight.lock().unwrap() = 0.0;
        let r = waiting.await.unwrap().unwrap();
        b.settle(r, 0.1);
        // What cannot fit even then is refused at once.
        *others.in_flight.lock().unwrap() = 0.5;
        assert_eq!(b.reserve(1.0).await.unwrap_err().scope, "daily");
    }
}
