//! A pool: one [`Provider`] over several servers of the same model
//! (llama.cpp, vLLM, Ollama), so the executor sees one provider whatever
//! the number of servers.
//!
//! - **Least busy first.** A call takes a slot on the healthy endpoint with
//!   the fewest calls in flight for its `slots` (declaration order breaks
//!   ties); when every healthy endpoint is full it waits for a slot.
//! - **A failed endpoint is taken out.** A refused connection takes it out
//!   at once; a 5xx, a broken stream or a silent server is checked with its
//!   health route first (a request the server could not handle is the
//!   request's fault, not the server's, and must not empty the pool).
//! - **Probed back.** An endpoint that is out is probed (`GET /health`, the
//!   route llama.cpp and vLLM serve; `GET {base}/models` where it is 404, as
//!   on Ollama) by the next call that needs it once its wait is over, the wait
//!   doubling per failed probe between [`PoolConfig::probe_min`] and
//!   [`PoolConfig::probe_max`]. No task is spawned: probing happens on the
//!   calls' own time.
//! - **A call is retried on another endpoint** when the endpoint died under
//!   it, only if its pool is free per call ([`PoolConfig::failover`]): then a
//!   second send cannot pay twice. A priced pool returns the error, and the
//!   executor's retry (which charges a maybe-billed try at its worst case)
//!   lands on another endpoint, since the dead one is out.
//! - **Every endpoint down** is one [`ErrorKind::Connect`] error naming each
//!   endpoint and why it is out, at once: never a wait for a server that may
//!   never come back.
//! - **Sticky** ([`PoolConfig::sticky_prefix`]): calls whose prompts begin
//!   alike prefer the same endpoint (rendezvous hashing of the prefix, so an
//!   endpoint going out moves only its own share), so that server's prompt
//!   cache hits; a full preferred endpoint is passed over for the least busy.
//!
//! Redirects are refused like everywhere else (the member clients are built
//! on [`Http`]), and a redirect is not an endpoint failure: the call fails
//! with [`ErrorKind::Redirect`] and nothing is sent to where it pointed.

use std::hash::{Hash, Hasher};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{ChatRequest, ChatResponse, ErrorKind, Http, Provider, ProviderError, ProviderKind};

/// How many bytes of a prompt (system prompt, then the first message) pick
/// a sticky endpoint: enough to tell apart prompts built from different
/// templates, short enough that the per-item text after a shared
/// instruction rarely reaches it.
pub const STICKY_PREFIX_BYTES: usize = 512;

/// One server of a pool.
pub struct Member {
    /// The base URL (`http://127.0.0.1:8081/v1`), as the policy gives it.
    pub url: String,
    /// Calls it takes at once.
    pub slots: u32,
    /// The client for this URL.
    pub client: Arc<dyn Provider>,
}

/// How a pool behaves; [`PoolConfig::default`] is what `run` uses.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The wait before an endpoint that was taken out is probed, doubled
    /// after each failed probe ...
    pub probe_min: Duration,
    /// ... up to this.
    pub probe_max: Duration,
    /// How long a probe may take.
    pub probe_timeout: Duration,
    /// Retry a call on another endpoint when the one it was on died.
    /// Only for pools whose calls cost nothing (see the module doc).
    pub failover: bool,
    /// Prefer an endpoint per prompt prefix.
    pub sticky_prefix: bool,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            probe_min: Duration::from_secs(1),
            probe_max: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(2),
            failover: false,
            sticky_prefix: false,
        }
    }
}

/// Why an endpoint is out, and when it may be probed again.
#[derive(Debug, Clone)]
struct Down {
    failures: u32,
    retry_at: Instant,
    why: String,
}

#[derive(Debug, Default)]
struct State {
    in_flight: u32,
    down: Option<Down>,
    /// A call is probing it now; others wait for the verdict.
    probing: bool,
    /// Calls sent to it (for tests and reports).
    sent: u64,
}

pub struct Pool {
    name: String,
    members: Vec<Member>,
    /// The client for each member's health probe (no proxy on loopback, no
    /// redirects).
    probes: Vec<reqwest::Client>,
    config: PoolConfig,
    state: Mutex<Vec<State>>,
    /// Woken when a slot frees or an endpoint goes out or comes back.
    changed: Notify,
}

/// What [`Pool::acquire`] found.
enum Pick {
    Slot(usize),
    /// Every endpoint not yet tried by this call is out, none due a probe.
    AllDown(String),
    /// Every endpoint was tried by this call.
    Exhausted,
}

/// What [`Pool::decide`] found.
enum Step {
    Done(Pick),
    Probe(usize),
    /// Until a change, or at most until then.
    Wait(Option<Instant>),
}

/// What a failed call says about its endpoint.
enum Fault {
    /// Nothing answered: out at once.
    Dead,
    /// A 5xx, a broken stream, a silent server: out if its health says so.
    Suspect,
    /// The request's own failure (4xx, redirect, bad answer, …).
    None,
}

impl Pool {
    /// A pool named after its provider (for messages); `http` gives the
    /// probes the same no-redirect, no-proxy-on-loopback rules as the calls.
    pub fn new(
        name: impl Into<String>,
        members: Vec<Member>,
        http: &Http,
        config: PoolConfig,
    ) -> Pool {
        let probes = members.iter().map(|m| http.for_base(&m.url)).collect();
        let state = members.iter().map(|_| State::default()).collect();
        Pool {
            name: name.into(),
            members,
            probes,
            config,
            state: Mutex::new(state),
            changed: Notify::new(),
        }
    }

    /// Calls sent to each endpoint so far, in declaration order.
    pub fn sent(&self) -> Vec<u64> {
        self.lock().iter().map(|s| s.sent).collect()
    }

    /// Is each endpoint in the pool now (not taken out)?
    pub fn healthy(&self) -> Vec<bool> {
        self.lock().iter().map(|s| s.down.is_none()).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<State>> {
        // A panic while holding the lock leaves counts that are still
        // counts: keep going with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send_pooled(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let preference = self.config.sticky_prefix.then(|| prefix_hash(req));
        let mut tried = vec![false; self.members.len()];
        let mut failed: Vec<String> = Vec::new();
        loop {
            let i = match self.acquire(&tried, preference).await {
                Pick::Slot(i) => i,
                Pick::AllDown(why) => {
                    let mut message =
                        format!("every endpoint of pool `{}` is down: {why}", self.name);
                    if !failed.is_empty() {
                        message.push_str(&format!("; this call failed on {}", failed.join(", ")));
                    }
                    return Err(ProviderError::new(ErrorKind::Connect, message));
                }
                Pick::Exhausted => {
                    return Err(ProviderError::new(
                        ErrorKind::Connect,
                        format!(
                            "every endpoint of pool `{}` failed this call: {}",
                            self.name,
                            failed.join(", ")
                        ),
                    ));
                }
            };
            let slot = Slot { pool: self, i };
            let result = self.members[i].client.send(req).await;
            drop(slot);
            let err = match result {
                Ok(mut answer) => {
                    answer.endpoint = Some(endpoint_name(&self.members[i].url));
                    return Ok(answer);
                }
                Err(e) => e,
            };
            let out = match fault(&err) {
                Fault::None => false,
                Fault::Dead => true,
                Fault::Suspect => !self.probe(i).await,
            };
            if !out {
                return Err(err);
            }
            self.take_out(i, &err.message);
            if !self.config.failover {
                return Err(self.named(i, err));
            }
            tried[i] = true;
            failed.push(format!("{} ({})", shown(&self.members[i].url), err.message));
        }
    }

    /// The error, saying which endpoint it came from.
    fn named(&self, i: usize, mut err: ProviderError) -> ProviderError {
        err.message = format!(
            "endpoint {} of pool `{}`: {}",
            shown(&self.members[i].url),
            self.name,
            err.message
        );
        err
    }

    /// A slot on the least busy endpoint in the pool that this call has not
    /// tried, probing endpoints that are due first; waits while every
    /// healthy one is full or a probe is under way.
    async fn acquire(&self, tried: &[bool], preference: Option<u64>) -> Pick {
        // Each endpoint is probed at most once per pick: one that fails its
        // probe is out until its next wait is over, however short.
        let mut probed = vec![false; self.members.len()];
        loop {
            let mut changed = pin!(self.changed.notified());
            // Registered before the state is read: a change between the read
            // and the wait still wakes this call.
            changed.as_mut().enable();
            match self.decide(tried, &mut probed, preference) {
                Step::Done(pick) => return pick,
                Step::Probe(i) => {
                    let mut guard = Probing {
                        pool: self,
                        i,
                        done: false,
                    };
                    let healthy = self.probe(i).await;
                    guard.finish(healthy);
                }
                Step::Wait(Some(at)) => {
                    let _ = tokio::time::timeout_at(at.into(), changed).await;
                }
                Step::Wait(None) => changed.await,
            }
        }
    }

    /// One look at the state (under the lock, never held across a wait):
    /// a slot, an endpoint to probe, or how long to wait.
    fn decide(&self, tried: &[bool], probed: &mut [bool], preference: Option<u64>) -> Step {
        let now = Instant::now();
        let mut state = self.lock();
        let open: Vec<usize> = (0..state.len()).filter(|&i| !tried[i]).collect();
        if open.is_empty() {
            return Step::Done(Pick::Exhausted);
        }
        let due = open.iter().copied().find(|&i| {
            let s = &state[i];
            !probed[i] && !s.probing && s.down.as_ref().is_some_and(|d| d.retry_at <= now)
        });
        if let Some(i) = due {
            probed[i] = true;
            state[i].probing = true;
            return Step::Probe(i);
        }
        let up: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| state[i].down.is_none())
            .collect();
        let free = |i: &usize| state[*i].in_flight < self.members[*i].slots;
        let preferred = preference
            .and_then(|h| up.iter().copied().max_by_key(|&i| rendezvous(h, i)))
            .filter(free);
        // Fewest in flight per slot: a/b < c/d as a*d < c*b.
        let least_busy = up.iter().copied().filter(free).min_by(|&a, &b| {
            let load = |i: usize| u64::from(state[i].in_flight);
            let slots = |i: usize| u64::from(self.members[i].slots);
            (load(a) * slots(b)).cmp(&(load(b) * slots(a)))
        });
        if let Some(i) = preferred.or(least_busy) {
            state[i].in_flight += 1;
            state[i].sent += 1;
            return Step::Done(Pick::Slot(i));
        }
        let probing = open.iter().any(|&i| state[i].probing);
        if up.is_empty() && !probing {
            let why = open
                .iter()
                .filter_map(|&i| {
                    let d = state[i].down.as_ref()?;
                    Some(format!(
                        "{} ({}; probed again in {:.1}s)",
                        shown(&self.members[i].url),
                        d.why,
                        d.retry_at.saturating_duration_since(now).as_secs_f64()
                    ))
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Step::Done(Pick::AllDown(why));
        }
        // Full or probing: wait for a change, or for the next probe to fall
        // due (whichever comes first).
        Step::Wait(
            open.iter()
                .filter(|&&i| !probed[i])
                .filter_map(|&i| state[i].down.as_ref().map(|d| d.retry_at))
                .min(),
        )
    }

    /// Takes endpoint `i` out (or keeps it out, waiting longer).
    fn take_out(&self, i: usize, why: &str) {
        let mut state = self.lock();
        let failures = state[i].down.as_ref().map_or(0, |d| d.failures) + 1;
        state[i].down = Some(Down {
            failures,
            retry_at: Instant::now() + self.backoff(failures),
            why: first_line(why),
        });
        drop(state);
        self.changed.notify_waiters();
    }

    /// The wait before the next probe after `failures` in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .config
            .probe_min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.config.probe_max)
    }

    /// Is endpoint `i` healthy? `GET /health` at its server's root (llama.cpp,
    /// vLLM: 200 when ready, 503 while loading); a 404 there (Ollama) asks
    /// `GET {base}/models` instead. Only the status is read.
    async fn probe(&self, i: usize) -> bool {
        let Some((health, models)) = probe_urls(&self.members[i].url) else {
            return false;
        };
        let client = &self.probes[i];
        let get = |url: String| {
            let req = client.get(url).timeout(self.config.probe_timeout);
            async move { req.send().await.map(|r| r.status()) }
        };
        match get(health).await {
            Ok(s) if s.is_success() => true,
            Ok(s) if s == reqwest::StatusCode::NOT_FOUND => {
                get(models).await.is_ok_and(|s| s.is_success())
            }
            _ => false,
        }
    }
}

impl Provider for Pool {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenaiCompatible
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.send_pooled(req))
    }
}

/// A call's slot on an endpoint, given back however the call ends
/// (answered, failed, or cancelled by the executor's timeout).
struct Slot<'a> {
    pool: &'a Pool,
    i: usize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        state[self.i].in_flight = state[self.i].in_flight.saturating_sub(1);
        drop(state);
        self.pool.changed.notify_waiters();
    }
}

/// A probe under way: its verdict is recorded when it ends, and a probe
/// that was cancelled leaves the endpoint as it was, free to be probed
/// again.
struct Probing<'a> {
    pool: &'a Pool,
    i: usize,
    done: bool,
}

impl Probing<'_> {
    fn finish(&mut self, healthy: bool) {
        self.done = true;
        let mut state = self.pool.lock();
        state[self.i].probing = false;
        if healthy {
            state[self.i].down = None;
            drop(state);
            self.pool.changed.notify_waiters();
        } else {
            let why = state[self.i]
                .down
                .as_ref()
                .map_or_else(String::new, |d| d.why.clone());
            drop(state);
            let why = if why.is_empty() {
                "health check failed".to_owned()
            } else {
                why
            };
            self.pool.take_out(self.i, &why);
        }
    }
}

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.pool.lock()[self.i].probing = false;
            self.pool.changed.notify_waiters();
        }
    }
}

fn fault(e: &ProviderError) -> Fault {
    match e.kind {
        ErrorKind::Connect => Fault::Dead,
        ErrorKind::Server | ErrorKind::Overloaded if e.status.is_some_and(|s| s >= 500) => {
            Fault::Suspect
        }
        ErrorKind::StreamBroken | ErrorKind::Timeout => Fault::Suspect,
        _ => Fault::None,
    }
}

/// The health route at the server's root (a base URL's trailing `/v1`
/// dropped) and the model list under the base URL.
fn probe_urls(base: &str) -> Option<(String, String)> {
    let mut url = url::Url::parse(base).ok()?;
    let path = url.path().trim_end_matches('/').to_owned();
    let models = format!("{}/models", base.trim_end_matches('/'));
    let root = path.strip_suffix("/v1").unwrap_or(&path).to_owned();
    url.set_path(&format!("{root}/health"));
    url.set_query(None);
    Some((url.to_string(), models))
}

/// An endpoint as the journal and `report` name it: its URL without user,
/// password, query or fragment (a key may sit in any of them).
fn endpoint_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => "(unparsable endpoint URL)".to_owned(),
    }
}

/// A URL as messages show it: without a password in its userinfo.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => url.to_owned(),
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

/// A hash of the prompt's first [`STICKY_PREFIX_BYTES`] bytes.
fn prefix_hash(req: &ChatRequest) -> u64 {
    let mut prefix = Vec::with_capacity(STICKY_PREFIX_BYTES);
    let parts = req
        .system
        .iter()
        .map(String::as_str)
        .chain(req.messages.first().map(|m| m.content.as_str()));
    for part in parts {
        let room = STICKY_PREFIX_BYTES - prefix.len();
        prefix.extend_from_slice(&part.as_bytes()[..part.len().min(room)]);
        // Marks where the system prompt ends.
        if prefix.len() < STICKY_PREFIX_BYTES {
            prefix.push(0);
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    prefix.hash(&mut h);
    h.finish()
}

/// Endpoint `i`'s score for a prefix: the highest wins (rendezvous hashing).
fn rendezvous(prefix: u64, i: usize) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (prefix, i).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_hold_no_credentials() {
        assert_eq!(
            endpoint_name("http://bo:pw@10.0.0.2:8000/v1/?key=s3cret#frag"),
            "http://10.0.0.2:8000/v1"
        );
        assert_eq!(
            endpoint_name("http://127.0.0.1:8081"),
            "http://127.0.0.1:8081"
        );
        assert_eq!(endpoint_name("not a url"), "(unparsable endpoint URL)");
    }

    #[test]
    fn probe_urls_sit_at_the_server_root() {
        assert_eq!(
            probe_urls("http://127.0.0.1:8081/v1"),
            Some((
                "http://127.0.0.1:8081/health".to_owned(),
                "http://127.0.0.1:8081/v1/models".to_owned()
            ))
        );
        assert_eq!(
            probe_urls("http://10.0.0.2:8000/").map(|p| p.0),
            Some("http://10.0.0.2:8000/health".to_owned())
        );
        assert_eq!(
            probe_urls("http://h:1/llama/v1/").map(|p| p.0),
            Some("http://h:1/llama/health".to_owned())
        );
        assert_eq!(probe_urls("not a url"), None);
    }

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(shown("http://u:secret@h:1/v1"), "http://u@h:1/v1");
        assert_eq!(
            shown("http://127.0.0.1:8081/v1"),
            "http://127.0.0.1:8081/v1"
        );
    }

    #[test]
    fn the_sticky_prefix_ignores_what_follows_it() {
        let long = "x".repeat(STICKY_PREFIX_BYTES);
        let a = ChatRequest::new("m", format!("{long}item 1"));
        let b = ChatRequest::new("m", format!("{long}item 2"));
        let c = ChatRequest::new("m", format!("y{long}"));
        assert_eq!(prefix_hash(&a), prefix_hash(&b));
        assert_ne!(prefix_hash(&a), prefix_hash(&c));
        // A system prompt is part of the prefix.
        let mut d = a.clone();
        d.system = Some("be terse".to_owned());
        assert_ne!(prefix_hash(&a), prefix_hash(&d));
    }
}
