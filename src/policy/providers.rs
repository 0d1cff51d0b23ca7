//! Compiling the `providers:` section: address, locality, the managed
//! server (`launch`), the key variable, and the plain-http warning.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{
    BatchLimits, EndpointFile, Launch, LaunchFile, Limits, Locality, PolicyFile, PoolEndpoint,
    Provider, ProviderFile, ProviderKind, Routing, Server, is_loopback,
};
use crate::diagnostic::{Diagnostic, Span};
use crate::yaml::{Document, pointer};

/// The providers: address, locality, managed server, key variable, and
/// the plain-http warning.
pub(super) fn providers(
    file: &PolicyFile,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> IndexMap<String, Provider> {
    let at = |segs: &[&str]| doc.span(&pointer(segs));
    let mut providers = IndexMap::new();
    for (name, p) in &file.providers {
        let pool = p
            .endpoints
            .as_deref()
            .map(|e| compile_pool(name, p, e, doc, diags))
            .unwrap_or_default();
        if p.sticky.is_some() && p.endpoints.is_none() {
            diags.push(
                Diagnostic::error("sticky-without-pool", format!("provider `{name}` has `sticky` but no `endpoints`"))
                    .at(at(&["providers", name, "sticky"]))
                    .with_help("`sticky: prefix` chooses among a pool's endpoints; with one `base_url` there is nothing to choose: remove it"),
            );
        }
        // A pool's address, where one is asked for (the response cache's
        // request identity, messages), is its first endpoint.
        let base_url = pool
            .first()
            .map(|e| e.url.clone())
            .or_else(|| p.base_url.clone())
            .or_else(|| p.kind.default_base_url().map(str::to_owned));
        if base_url.is_none() {
            diags.push(
                Diagnostic::error("missing-base-url", format!("provider `{name}` needs a `base_url`"))
                    .at(doc.key_span(&pointer(["providers", name.as_str()])))
                    .with_help("openai-compatible servers have no default address, e.g. base_url: \"http://127.0.0.1:11434/v1\" for Ollama"),
            );
        }
        // Every endpoint of a pool on loopback, or the one address.
        let loopback = if pool.is_empty() {
            base_url.as_deref().is_some_and(is_loopback)
        } else {
            pool.iter().all(|e| is_loopback(&e.url))
        };
        let locality = match (p.locality, p.kind) {
            (Some(Locality::Local), kind) if !kind.is_self_hosted() => {
                diags.push(
                    Diagnostic::error(
                        "cloud-provider-marked-local",
                        format!("provider `{name}` of kind {} cannot be local", p.kind.name()),
                    )
                    .at(at(&["providers", name, "locality"]))
                    .with_label("this API is a cloud service")
                    .with_help("only `openai-compatible` (llama.cpp, vLLM, LM Studio) and `ollama` providers run locally"),
                );
                Locality::Cloud
            }
            (Some(l), _) => l,
            (None, kind) if kind.is_self_hosted() && loopback => Locality::Local,
            (None, _) => Locality::Cloud,
        };
        let launch = match &p.launch {
            Some(l) if p.endpoints.is_some() => compile_pool_launch(l, &pool, p, doc, name, diags),
            Some(l) => compile_launch(l, base_url.as_deref(), p.kind, doc, name, diags)
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        // A key pasted where the variable's name belongs: say so (the
        // value itself is masked wherever a diagnostic shows it).
        if p.api_key_env
            .as_deref()
            .is_some_and(crate::diagnostic::looks_like_key)
        {
            diags.push(
                Diagnostic::error(
                    "key-in-api-key-env",
                    format!("`api_key_env` of provider `{name}` looks like an API key, not the name of a variable"),
                )
                .at(at(&["providers", name, "api_key_env"]))
                .with_label("the value is hidden here")
                .with_help("put the key in an environment variable and write its name here, e.g. api_key_env: OPENAI_API_KEY; then revoke the key, it was written in a file"),
            );
        }
        // The key and the prompts would cross the network in clear text:
        // said once per address that would carry them.
        let addresses: Vec<(&str, Option<Span>)> = if pool.is_empty() {
            base_url
                .as_deref()
                .map(|u| (u, at(&["providers", name, "base_url"])))
                .into_iter()
                .collect()
        } else {
            pool.iter()
                .map(|e| (e.url.as_str(), endpoint_span(doc, p, name, e.declared)))
                .collect()
        };
        let mut insecure = false;
        for (url, span) in addresses {
            if locality != Locality::Cloud
                || p.allow_insecure
                || !is_plain_http(url)
                || is_loopback(url)
            {
                continue;
            }
            insecure = true;
            diags.push(
                Diagnostic::warning(
                    super::INSECURE_BASE_URL,
                    format!(
                        "cloud provider `{name}` is reached over plain http:// on a non-loopback host"
                    ),
                )
                .at(span)
                .with_label("its key and every prompt would travel unencrypted")
                .with_help("use https://, or set `allow_insecure: true` on the provider if this network is trusted; `run` refuses it otherwise"),
            );
        }
        // A pool takes as many calls at once as its servers have slots (it
        // queues per endpoint itself), whatever its locality.
        let pool_slots = pool.iter().map(|e| e.slots).fold(0u32, u32::saturating_add);
        let default_slots = launch.first().map_or(1, |l| l.slots);
        providers.insert(
            name.clone(),
            Provider {
                name: name.clone(),
                kind: p.kind,
                base_url,
                api_key_env: p
                    .api_key_env
                    .clone()
                    .or_else(|| p.kind.default_api_key_env().map(str::to_owned)),
                locality,
                limits: Limits {
                    concurrency: p.limits.concurrency.or(if pool_slots > 0 {
                        Some(pool_slots)
                    } else if locality == Locality::Local {
                        Some(default_slots)
                    } else {
                        None
                    }),
                    ..p.limits
                },
                launch,
                insecure,
                endpoints: pool,
                sticky: p.sticky,
                routing: routing(name, p, doc, diags),
                keep_alive: keep_alive(name, p, doc, diags),
                batch: batch(name, p, doc, diags),
            },
        );
    }
    providers
}

/// OpenRouter's provider preferences: only on an `openrouter` provider
/// (elsewhere nobody would read them: an error where they are written).
fn routing(
    name: &str,
    p: &ProviderFile,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> Option<Routing> {
    let r = p.routing.as_ref()?;
    if p.kind != ProviderKind::Openrouter {
        diags.push(
            Diagnostic::error(
                "routing-unsupported",
                format!(
                    "`routing` only applies to openrouter providers, not {}",
                    p.kind.name()
                ),
            )
            .at(doc.key_span(&pointer(["providers", name, "routing"])))
            .with_help("OpenRouter chooses among upstream providers with these preferences; other providers serve their own models — remove `routing`"),
        );
        return None;
    }
    Some(r.clone())
}

/// The most one batch holds: the provider's limits, lowered by the
/// policy's `batch:` (smaller batches come back sooner and fit a low
/// enqueued-token quota). A value above what the provider takes would
/// only have every batch refused: an error where it is written.
fn batch(
    name: &str,
    p: &ProviderFile,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> Option<BatchLimits> {
    let documented = BatchLimits::of(p.kind);
    let Some(set) = p.batch else {
        return documented;
    };
    let Some(documented) = documented else {
        diags.push(
            Diagnostic::error(
                "batch-unsupported",
                format!(
                    "`batch` only applies to openai and anthropic providers, not {}",
                    p.kind.name()
                ),
            )
            .at(doc.key_span(&pointer(["providers", name, "batch"])))
            .with_help("only those providers have a batch API; remove `batch`"),
        );
        return None;
    };
    let mut within = |key: &str, value: Option<u64>, most: u64| match value {
        None => most,
        Some(v) if (1..=most).contains(&v) => v,
        Some(v) => {
            diags.push(
                Diagnostic::error(
                    "batch-limit",
                    format!("`batch.{key}` is {v}: {} takes 1 to {most}", p.kind.name()),
                )
                .at(doc.span(&pointer(["providers", name, "batch", key])))
                .with_help(format!(
                    "the provider refuses a batch past {most}; set at most {most}, or remove it"
                )),
            );
            most
        }
    };
    Some(BatchLimits {
        max_requests: within("max_requests", set.max_requests, documented.max_requests),
        max_bytes: within("max_bytes", set.max_bytes, documented.max_bytes),
    })
}

/// `keep_alive` is Ollama's: elsewhere it would be silently ignored.
fn keep_alive(
    name: &str,
    p: &ProviderFile,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> Option<serde_json::Value> {
    let k = p.keep_alive.as_ref()?;
    if p.kind != ProviderKind::Ollama {
        diags.push(
            Diagnostic::error(
                "keep-alive-unsupported",
                format!(
                    "`keep_alive` only applies to ollama providers, not {}",
                    p.kind.name()
                ),
            )
            .at(doc.key_span(&pointer(["providers", name, "keep_alive"])))
            .with_help(
                "it tells Ollama how long to keep a model loaded; use kind ollama, or remove it",
            ),
        );
        return None;
    }
    Some(k.clone())
}

/// Where a pool's `i`-th endpoint URL is written.
fn endpoint_span(doc: &Document, p: &ProviderFile, name: &str, i: usize) -> Option<Span> {
    let full = matches!(
        p.endpoints.as_deref().and_then(|e| e.get(i)),
        Some(EndpointFile::Full(_))
    );
    let i = i.to_string();
    if full {
        doc.span(&pointer([
            "providers",
            name,
            "endpoints",
            i.as_str(),
            "url",
        ]))
    } else {
        doc.span(&pointer(["providers", name, "endpoints", i.as_str()]))
    }
}

/// A pool's endpoints: only for OpenAI-compatible servers, never beside
/// `base_url`, each URL once, and loopback and remote hosts mixed only when
/// the author says the whole pool is local.
fn compile_pool(
    name: &str,
    p: &ProviderFile,
    endpoints: &[EndpointFile],
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> Vec<PoolEndpoint> {
    let key = doc.key_span(&pointer(["providers", name, "endpoints"]));
    if p.kind != ProviderKind::OpenaiCompatible {
        // A pool retries a call on another endpoint when one dies; against
        // a paid API that could pay twice, and one vendor host is one
        // endpoint anyway.
        diags.push(
            Diagnostic::error(
                "pool-cloud-kind",
                format!("provider `{name}` of kind {} cannot have `endpoints`", p.kind.name()),
            )
            .at(key)
            .with_label("pools are for servers you run")
            .with_help("`endpoints` spreads calls over OpenAI-compatible servers (llama.cpp, vLLM, Ollama): use kind openai-compatible, or one `base_url`"),
        );
        return Vec::new();
    }
    if p.base_url.is_some() {
        diags.push(
            Diagnostic::error(
                "pool-and-base-url",
                format!("provider `{name}` has both `base_url` and `endpoints`"),
            )
            .at(key)
            .with_help(
                "a pool's addresses are its `endpoints`: remove `base_url` (or put it in the list)",
            ),
        );
    }
    let mut pool: Vec<PoolEndpoint> = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        let url = e.url().trim_end_matches('/').to_owned();
        if let Some(first) = pool.iter().position(|seen| same_address(&seen.url, &url)) {
            let first = pool[first].declared;
            diags.push(
                Diagnostic::error(
                    "pool-duplicate-endpoint",
                    format!("provider `{name}` lists the endpoint {url} twice"),
                )
                .at(endpoint_span(doc, p, name, i))
                .with_label(format!("the same server as endpoint {}", first + 1))
                .with_help("give a server's capacity once, with `slots`: { url: …, slots: 2 }"),
            );
            continue;
        }
        pool.push(PoolEndpoint {
            url,
            slots: e.slots(),
            declared: i,
        });
    }
    let remote = pool
        .iter()
        .find(|e| !is_loopback(&e.url))
        .map(|e| e.declared);
    let any_loopback = pool.iter().any(|e| is_loopback(&e.url));
    if let (Some(r), true, None) = (remote, any_loopback, p.locality) {
        diags.push(
            Diagnostic::error(
                "pool-mixed-locality",
                format!("provider `{name}` mixes loopback and remote endpoints"),
            )
            .at(endpoint_span(doc, p, name, r))
            .with_label("not on this machine")
            .with_help("a step's data above cloud_max may only go to local servers: if every host is on your private network, declare it with `locality: local`; otherwise split the pool into a local and a remote provider"),
        );
    }
    pool
}

/// Two URLs naming the same server and path (`localhost` and `127.0.0.1`
/// are not resolved: that is the author's business).
fn same_address(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.host() == b.host()
                && a.port_or_known_default() == b.port_or_known_default()
                && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
        }
        _ => a == b,
    }
}

/// Does `url` use plain `http://`?
fn is_plain_http(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "http")
}

/// The host and explicit port of an `http://host:port/...` URL, as reqwest
/// would connect to them.
pub(super) fn host_port(url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port()?))
}

fn compile_launch(
    l: &LaunchFile,
    base_url: Option<&str>,
    kind: ProviderKind,
    doc: &Document,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Launch> {
    let at = doc.key_span(&pointer(["providers", name, "launch"]));
    let loopback = base_url.filter(|u| is_loopback(u));
    let Some((host, port)) = loopback
        .and_then(host_port)
        .filter(|_| kind.is_self_hosted())
    else {
        diags.push(
            Diagnostic::error("launch-not-local", format!("provider `{name}` has `launch` but is not a local server"))
                .at(at)
                .with_help("`launch` starts llama.cpp's llama-server (kind openai-compatible, a base_url such as http://127.0.0.1:8080/v1 with an explicit port) or `ollama serve` (kind ollama)"),
        );
        return None;
    };
    let server = if kind == ProviderKind::Ollama {
        Server::Ollama
    } else {
        Server::LlamaServer
    };
    let slots = l.slots.unwrap_or(1);
    let base = launch_settings(l, server, doc, name, diags)?;
    Some(Launch {
        id: name.to_owned(),
        host,
        port,
        slots,
        ..base
    })
}

/// `launch` on a pool: one llama-server per endpoint, each on its
/// endpoint's loopback address and port with its endpoint's `slots`, all
/// of the same model file. Its files and progress lines are named
/// `PROVIDER-PORT`.
fn compile_pool_launch(
    l: &LaunchFile,
    pool: &[PoolEndpoint],
    p: &ProviderFile,
    doc: &Document,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Launch> {
    if pool.is_empty() {
        // The pool itself is wrong (said where it is written).
        return Vec::new();
    }
    if l.slots.is_some() {
        diags.push(
            Diagnostic::error(
                "launch-slots-in-pool",
                format!("`launch.slots` of provider `{name}` is ambiguous in a pool"),
            )
            .at(doc.key_span(&pointer(["providers", name, "launch", "slots"])))
            .with_help("each launched server takes its endpoint's `slots`: write { url: …, slots: N } in `endpoints` and remove `launch.slots`"),
        );
    }
    let mut addresses = Vec::with_capacity(pool.len());
    for e in pool {
        match host_port(&e.url).filter(|_| is_loopback(&e.url)) {
            Some(hp) => addresses.push((hp, e.slots)),
            None => diags.push(
                Diagnostic::error(
                    "launch-not-local",
                    format!("provider `{name}` has `launch` but endpoint {} is not on this machine", e.declared + 1),
                )
                .at(endpoint_span(doc, p, name, e.declared))
                .with_label("not a loopback http:// address with a port")
                .with_help("`launch` starts one llama-server per endpoint on this machine: every endpoint needs an address such as http://127.0.0.1:8081/v1 (an explicit port each); start remote servers yourself and list them in a pool without `launch`"),
            ),
        }
    }
    if addresses.len() < pool.len() {
        return Vec::new();
    }
    let Some(base) = launch_settings(l, Server::LlamaServer, doc, name, diags) else {
        return Vec::new();
    };
    addresses
        .into_iter()
        .map(|((host, port), slots)| Launch {
            id: format!("{name}-{port}"),
            host,
            port,
            slots,
            ..base.clone()
        })
        .collect()
}

/// What every server a provider launches shares: the binary, the model
/// file and the flags (the address, port and slots are filled in by the
/// caller).
fn launch_settings(
    l: &LaunchFile,
    server: Server,
    doc: &Document,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Launch> {
    let at = doc.key_span(&pointer(["providers", name, "launch"]));
    let model = match (server, &l.model) {
        (Server::LlamaServer, Some(m)) => m.clone(),
        (Server::LlamaServer, None) => {
            diags.push(
                Diagnostic::error("launch-without-model", format!("`launch` of provider `{name}` names no model file"))
                    .at(at)
                    .with_help("llama-server loads one GGUF file: add `model: ~/models/NAME.gguf` (scripts/setup-local.sh installs one)"),
            );
            return None;
        }
        (Server::Ollama, Some(_)) => {
            diags.push(
                Diagnostic::error("launch-model-on-ollama", format!("`launch.model` of provider `{name}` has no meaning for Ollama"))
                    .at(doc.key_span(&pointer(["providers", name, "launch", "model"])))
                    .with_help("`ollama serve` serves every model pulled into it (`ollama pull MODEL`); remove `model`"),
            );
            return None;
        }
        (Server::Ollama, None) => String::new(),
    };
    let ready_timeout = match &l.ready_timeout {
        None => std::time::Duration::from_secs(60),
        Some(v) => crate::workflow::parse_duration(v).unwrap_or(std::time::Duration::from_secs(60)),
    };
    Some(Launch {
        id: name.to_owned(),
        server,
        binary: l.binary.clone().unwrap_or_else(|| {
            match server {
                Server::LlamaServer => "llama-server",
                Server::Ollama => "ollama",
            }
            .to_owned()
        }),
        model,
        host: String::new(),
        port: 0,
        context: l.context.unwrap_or(4096),
        threads: l.threads.unwrap_or(2),
        slots: 1,
        chat_template: l.chat_template.clone(),
        args: l.args.clone(),
        ready_timeout,
    })
}

/// Two managed servers on one port would answer for each other: every
/// server any provider launches (a pool's one per endpoint) on its own
/// address and port.
pub(super) fn check_ports(
    file: &PolicyFile,
    providers: &IndexMap<String, Provider>,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) {
    let mut ports: BTreeMap<(String, u16), &str> = BTreeMap::new();
    for (name, p) in providers {
        let pooled = !p.endpoints.is_empty();
        for (i, l) in p.launch.iter().enumerate() {
            // The first provider to claim a port keeps it in the messages.
            let first = match ports.entry((l.host.clone(), l.port)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(name);
                    continue;
                }
                std::collections::btree_map::Entry::Occupied(o) => *o.get(),
            };
            let message = if first == name {
                format!(
                    "provider `{name}` launches two servers on the same port {}",
                    l.port
                )
            } else {
                format!(
                    "providers `{first}` and `{name}` launch servers on the same port {}",
                    l.port
                )
            };
            // A pool's server is written as its endpoint.
            let at = match file.providers.get(name) {
                Some(pf) if pooled => endpoint_span(doc, pf, name, i),
                _ => doc.key_span(&pointer(["providers", name.as_str(), "launch"])),
            };
            diags.push(
                Diagnostic::error("launch-port-conflict", message)
                    .at(at)
                    .with_help(if pooled {
                        "give each launched endpoint its own port"
                    } else {
                        "give each managed server its own port in `base_url`"
                    }),
            );
        }
    }
}
