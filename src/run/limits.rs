//! Limits on calls: how many at once (semaphores), and how many requests and
//! tokens per minute (governor's GCRA limiters), per provider and per model,
//! under one run-wide concurrency cap.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::policy::{Limits, Policy};

struct Gate {
    slots: Option<Arc<Semaphore>>,
    rpm: Option<DefaultDirectRateLimiter>,
    tpm: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl Gate {
    fn new(limits: &Limits) -> Gate {
        let per_minute = |n: u32| NonZeroU32::new(n).map(Quota::per_minute);
        Gate {
            slots: limits
                .concurrency
                .map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
            rpm: limits.rpm.and_then(per_minute).map(RateLimiter::direct),
            tpm: limits.tpm.and_then(|n| {
                NonZeroU32::new(n).map(|nz| (RateLimiter::direct(Quota::per_minute(nz)), nz))
            }),
        }
    }

    async fn acquire(&self, tokens: u64) -> Option<OwnedSemaphorePermit> {
        let permit = match &self.slots {
            Some(s) => Arc::clone(s).acquire_owned().await.ok(),
            None => None,
        };
        if let Some(rpm) = &self.rpm {
            rpm.until_ready().await;
        }
        if let Some((tpm, cap)) = &self.tpm {
            // A call larger than a minute's allowance waits for a full minute's
            // worth instead of never running.
            let n = NonZeroU32::new(
                u32::try_from(tokens)
                    .unwrap_or(u32::MAX)
                    .clamp(1, cap.get()),
            )
            .unwrap_or(*cap);
            let _ = tpm.until_n_ready(n).await;
        }
        permit
    }
}

/// Every limit of a run.
pub struct CallLimits {
    run: Arc<Semaphore>,
    providers: HashMap<String, Gate>,
    models: HashMap<String, Gate>,
}

/// Held for the duration of one call.
pub struct Permit {
    _held: Vec<OwnedSemaphorePermit>,
}

impl CallLimits {
    pub fn new(policy: &Policy, run_concurrency: usize) -> CallLimits {
        CallLimits {
            run: Arc::new(Semaphore::new(run_concurrency.max(1))),
            providers: policy
                .providers
                .iter()
                .map(|(k, p)| (k.clone(), Gate::new(&p.limits)))
                .collect(),
            models: policy
                .models
                .iter()
                .map(|(k, m)| (k.clone(), Gate::new(&m.limits)))
                .collect(),
        }
    }

    /// Waits until a call of `tokens` (prompt + max output) to `model` on
    /// `provider` may start. Model slots are taken before provider slots, and
    /// the run-wide slot last, so a call queued on a busy local server does
    /// not hold a run slot that a cloud call could use.
    pub async fn acquire(&self, provider: &str, model: &str, tokens: u64) -> Permit {
        let mut held = Vec::with_capacity(3);
        if let Some(g) = self.models.get(model) {
            held.extend(g.acquire(tokens).await);
        }
        if let Some(g) = self.providers.get(provider) {
            held.extend(g.acquire(tokens).await);
        }
        if let Ok(p) = Arc::clone(&self.run).acquire_owned().await {
            held.push(p);
        }
        Permit { _held: held }
    }
}
