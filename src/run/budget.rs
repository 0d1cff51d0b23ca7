//! The run budget: every call reserves its worst-case cost before it is made
//! and settles to its actual cost after, so concurrent calls can never
//! together cross the limit. Free calls (local models) are never blocked.

use std::sync::Mutex;

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
        }
    }

    /// Reserves `worst_case` dollars, or says why not.
    pub fn reserve(&self, worst_case: f64) -> Result<Reservation, OverBudget> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = self.limit {
            let committed = s.spent + s.reserved;
            if worst_case > 0.0 && committed + worst_case > limit + 1e-12 {
                return Err(OverBudget {
                    limit,
                    committed,
                    worst_case,
                });
            }
        }
        s.reserved += worst_case;
        Ok(Reservation { amount: worst_case })
    }

    /// Replaces a reservation by what the call really cost.
    pub fn settle(&self, r: Reservation, actual: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.reserved = (s.reserved - r.amount).max(0.0);
        s.spent += actual;
    }

    pub fn spent(&self) -> f64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_cannot_cross_the_limit_together() {
        let b = Budget::new(Some(1.0));
        let a = b.reserve(0.6).unwrap();
        assert!(
            b.reserve(0.6).is_err(),
            "two worst cases of 0.6 cannot both fit in 1.0"
        );
        b.settle(a, 0.1);
        let c = b.reserve(0.6).unwrap();
        b.settle(c, 0.2);
        assert!((b.spent() - 0.3).abs() < 1e-9);
    }

    #[test]
    fn free_calls_are_never_blocked() {
        let b = Budget::new(Some(0.0));
        let r = b.reserve(0.0).unwrap();
        b.settle(r, 0.0);
    }
}
