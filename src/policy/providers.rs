//! Compiling the `providers:` section: address, locality, the managed
//! server (`launch`), the key variable, and the plain-http warning.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{
    Launch, LaunchFile, Limits, Locality, PolicyFile, Provider, ProviderKind, is_loopback,
};
use crate::diagnostic::Diagnostic;
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
        let base_url = p
            .base_url
            .clone()
            .or_else(|| p.kind.default_base_url().map(str::to_owned));
        if base_url.is_none() {
            diags.push(
                Diagnostic::error("missing-base-url", format!("provider `{name}` needs a `base_url`"))
                    .at(doc.key_span(&pointer(["providers", name.as_str()])))
                    .with_help("openai-compatible servers have no default address, e.g. base_url: \"http://127.0.0.1:11434/v1\" for Ollama"),
            );
        }
        let loopback = base_url.as_deref().is_some_and(is_loopback);
        let locality = match (p.locality, p.kind) {
            (Some(Locality::Local), kind) if kind != ProviderKind::OpenaiCompatible => {
                diags.push(
                    Diagnostic::error(
                        "cloud-provider-marked-local",
                        format!("provider `{name}` of kind {} cannot be local", p.kind.name()),
                    )
                    .at(at(&["providers", name, "locality"]))
                    .with_label("this API is a cloud service")
                    .with_help("only `openai-compatible` providers (Ollama, llama.cpp, vLLM, LM Studio) run locally"),
                );
                Locality::Cloud
            }
            (Some(l), _) => l,
            (None, ProviderKind::OpenaiCompatible) if loopback => Locality::Local,
            (None, _) => Locality::Cloud,
        };
        let launch = p
            .launch
            .as_ref()
            .and_then(|l| compile_launch(l, base_url.as_deref(), p.kind, doc, name, diags));
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
        // The key and the prompts would cross the network in clear text.
        let insecure = locality == Locality::Cloud
            && !p.allow_insecure
            && base_url
                .as_deref()
                .is_some_and(|u| is_plain_http(u) && !loopback);
        if insecure {
            diags.push(
                Diagnostic::warning(
                    super::INSECURE_BASE_URL,
                    format!(
                        "cloud provider `{name}` is reached over plain http:// on a non-loopback host"
                    ),
                )
                .at(at(&["providers", name, "base_url"]))
                .with_label("its key and every prompt would travel unencrypted")
                .with_help("use https://, or set `allow_insecure: true` on the provider if this network is trusted; `run` refuses it otherwise"),
            );
        }
        let default_slots = launch.as_ref().map_or(1, |l| l.slots);
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
                    concurrency: p.limits.concurrency.or(if locality == Locality::Local {
                        Some(default_slots)
                    } else {
                        None
                    }),
                    ..p.limits
                },
                launch,
                insecure,
            },
        );
    }
    providers
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
        .filter(|_| kind == ProviderKind::OpenaiCompatible)
    else {
        diags.push(
            Diagnostic::error("launch-not-local", format!("provider `{name}` has `launch` but is not a local server"))
                .at(at)
                .with_help("`launch` starts llama.cpp's llama-server: use kind openai-compatible and a base_url such as http://127.0.0.1:8080/v1 (with an explicit port)"),
        );
        return None;
    };
    let ready_timeout = match &l.ready_timeout {
        None => std::time::Duration::from_secs(60),
        Some(v) => crate::workflow::parse_duration(v).unwrap_or(std::time::Duration::from_secs(60)),
    };
    Some(Launch {
        binary: l
            .binary
            .clone()
            .unwrap_or_else(|| "llama-server".to_owned()),
        model: l.model.clone(),
        host,
        port,
        context: l.context.unwrap_or(4096),
        threads: l.threads.unwrap_or(2),
        slots: l.slots.unwrap_or(1),
        chat_template: l.chat_template.clone(),
        args: l.args.clone(),
        ready_timeout,
    })
}

/// Two managed servers on one port would answer for each other.
pub(super) fn check_ports(
    providers: &IndexMap<String, Provider>,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) {
    let mut ports: BTreeMap<(String, u16), &str> = BTreeMap::new();
    for (name, p) in providers {
        if let Some(l) = &p.launch {
            if let Some(first) = ports.insert((l.host.clone(), l.port), name) {
                diags.push(
                    Diagnostic::error(
                        "launch-port-conflict",
                        format!(
                            "providers `{first}` and `{name}` launch servers on the same port {}",
                            l.port
                        ),
                    )
                    .at(doc.key_span(&pointer(["providers", name.as_str(), "launch"])))
                    .with_help("give each managed server its own port in `base_url`"),
                );
            }
        }
    }
}
