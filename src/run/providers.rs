//! The provider registry: a client per provider of the policy (and a batch
//! client for those with a batch API), built from the environment, and the
//! keys that are missing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::diagnostic::Diagnostic;
use crate::plan::Plan;
use crate::policy::{Policy, Sticky};
use crate::provider::pool::{Member, Pool, PoolConfig};
use crate::provider::{self, ClientConfig, Provider};

/// The clients of a policy's providers, built from the environment.
#[derive(Clone)]
pub struct Providers {
    pub(super) clients: HashMap<String, Arc<dyn Provider>>,
    /// The batch API clients of the providers that have one (OpenAI,
    /// Anthropic), for `latency: batch` steps.
    pub(super) batchers: HashMap<String, Arc<dyn provider::batch::BatchApi>>,
    /// Provider → the variable that holds its key, for those whose key is unset.
    pub(super) missing_keys: HashMap<String, String>,
}

impl Providers {
    /// Builds a client per provider; a key is read from the variable the
    /// policy names and never leaves the client.
    pub fn from_env(policy: &Policy) -> Providers {
        let http = provider::http_client(Duration::from_secs(5));
        let mut clients = HashMap::new();
        let mut batchers = HashMap::new();
        let mut missing_keys = HashMap::new();
        for (name, p) in &policy.providers {
            let Some(base_url) = &p.base_url else {
                continue;
            };
            let models = || policy.models.values().filter(|m| m.provider == *name);
            let mut config = ClientConfig::new(base_url.clone());
            // The executor bounds every call with the step's `timeout` (or the
            // run's default); the client's own cap must not cut a long call
            // shorter than the user asked for.
            config.request_timeout = Duration::from_secs(24 * 3600);
            // How much of an answer is read: the policy's `limits`, the
            // model's over the provider's.
            config.response_limits = p.limits.response();
            config.provider_routing = p
                .routing
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok());
            config.keep_alive = p.keep_alive.clone();
            config.batch_limits = p.batch;
            for m in models() {
                config
                    .model_context
                    .insert(m.model.clone(), m.context_window);
                config
                    .model_response_limits
                    .entry(m.model.clone())
                    .or_insert_with(|| m.limits.response());
            }
            if let Some(var) = &p.api_key_env {
                match std::env::var(var) {
                    Ok(key) if !key.is_empty() => config = config.with_api_key(key),
                    _ if p.kind.is_self_hosted() => {}
                    _ => {
                        missing_keys.insert(name.clone(), var.clone());
                        continue;
                    }
                }
            }
            if let Some(b) = provider::batch::batch_client_for(p.kind, config.clone(), http.clone())
            {
                batchers.insert(name.clone(), b);
            }
            let client = if p.endpoints.is_empty() {
                provider::client_for(p.kind, config, http.clone())
            } else {
                let members = p
                    .endpoints
                    .iter()
                    .map(|e| Member {
                        url: e.url.clone(),
                        slots: e.slots,
                        client: provider::client_for(
                            p.kind,
                            ClientConfig {
                                base_url: e.url.clone(),
                                ..config.clone()
                            },
                            http.clone(),
                        ),
                    })
                    .collect();
                let pool_config = PoolConfig {
                    // A call is sent again elsewhere only when no model of
                    // the pool is priced: then nothing can be paid twice.
                    failover: models().all(|m| m.price.is_free()),
                    sticky_prefix: p.sticky == Some(Sticky::Prefix),
                    ..PoolConfig::default()
                };
                Arc::new(Pool::new(name.clone(), members, &http, pool_config)) as Arc<dyn Provider>
            };
            clients.insert(name.clone(), client);
        }
        Providers {
            clients,
            batchers,
            missing_keys,
        }
    }

    /// Explicit clients (tests, embedding).
    pub fn with_clients(clients: HashMap<String, Arc<dyn Provider>>) -> Providers {
        Providers {
            clients,
            batchers: HashMap::new(),
            missing_keys: HashMap::new(),
        }
    }

    /// Adds batch API clients by provider name (tests, embedding).
    pub fn with_batch_clients(
        mut self,
        batchers: HashMap<String, Arc<dyn provider::batch::BatchApi>>,
    ) -> Providers {
        self.batchers.extend(batchers);
        self
    }

    /// Without batch API clients: every call is synchronous, whatever the
    /// steps' `latency` (test suites: a batch may take up to 24 hours, and a
    /// recording must see every call).
    pub fn without_batch(mut self) -> Providers {
        self.batchers.clear();
        self
    }

    /// Wraps every client (recording, replaying, caching), keeping which
    /// keys are missing.
    pub fn map_clients(
        self,
        mut f: impl FnMut(&str, Arc<dyn Provider>) -> Arc<dyn Provider>,
    ) -> Providers {
        Providers {
            clients: self
                .clients
                .into_iter()
                .map(|(name, c)| {
                    let wrapped = f(&name, c);
                    (name, wrapped)
                })
                .collect(),
            batchers: self.batchers,
            missing_keys: self.missing_keys,
        }
    }

    /// Every key the plan needs but the environment lacks, as diagnostics —
    /// checked before any call is made.
    pub fn check_keys(&self, plan: &Plan, policy: &Policy) -> Vec<Diagnostic> {
        let mut by_var: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &plan.steps {
            if s.status.is_skipped() {
                continue;
            }
            let Some(m) = &s.model else { continue };
            let Some(model) = policy.models.get(&m.alias) else {
                continue;
            };
            if let Some(var) = self.missing_keys.get(&model.provider) {
                by_var.entry(var).or_default().push(&s.id);
            }
        }
        let mut vars: Vec<_> = by_var.into_iter().collect();
        vars.sort();
        vars.into_iter()
            .map(|(var, steps)| {
                Diagnostic::error("missing-api-key", format!("the environment variable {var} is not set"))
                    .with_help(format!(
                        "steps {} are routed to a provider whose key it holds; export it, or route them elsewhere",
                        steps.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                    ))
            })
            .collect()
    }
}
