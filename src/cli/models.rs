//! `tollgate models`: the catalog, or a policy's models with their prices.

use std::path::Path;

use serde_json::json;

use super::{OutputFormat, exit, load_policy, print_out, report};
use crate::catalog::{self, Catalog};
use crate::diagnostic::{Diagnostic, RenderOptions};
use crate::policy::{self, PriceSource};

fn per_mtok(x: f64) -> String {
    let v = x * 1_000_000.0;
    if v == 0.0 {
        "0".to_owned()
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

pub(super) fn cmd_models(
    filter: Option<&str>,
    policy_path: Option<&Path>,
    regenerate: Option<&Path>,
    format: OutputFormat,
    options: RenderOptions,
) -> u8 {
    if let Some(source) = regenerate {
        let text = match crate::files::read_text(source) {
            Ok(t) => t,
            Err(err) => {
                return report(
                    vec![Diagnostic::error(
                        "io",
                        format!("cannot read {}: {err}", source.display()),
                    )],
                    format,
                    options,
                );
            }
        };
        return match catalog::build_from_litellm(&text) {
            Ok(out) => {
                print_out(&out);
                exit::OK
            }
            Err(err) => report(
                vec![
                    Diagnostic::error("catalog", format!("cannot build the catalog: {err}"))
                        .in_file(source),
                ],
                format,
                options,
            ),
        };
    }
    let keep = |name: &str| filter.is_none_or(|f| name.to_lowercase().contains(&f.to_lowercase()));
    if let Some(path) = policy_path {
        let policy = match load_policy(path) {
            Ok(p) => p,
            Err(d) => return report(d, format, options),
        };
        let models: Vec<_> = policy
            .models
            .values()
            .filter(|m| keep(&m.alias) || keep(&m.model))
            .collect();
        if format == OutputFormat::Json {
            let v: Vec<_> = models
                .iter()
                .map(|m| {
                    json!({
                        "alias": m.alias, "provider": m.provider, "kind": m.provider_kind.name(),
                        "model": m.model, "tier": m.tier, "locality": m.locality,
                        "context_window": m.context_window, "max_output_tokens": m.max_output_tokens,
                        "tokenizer": m.tokenizer.name(), "price_per_token": m.price, "price_source": m.price_source,
                    })
                })
                .collect();
            print_out(&serde_json::to_string_pretty(&v).unwrap_or_default());
            return exit::OK;
        }
        let mut out = format!(
            "{:<12} {:<10} {:<28} {:<10} {:<6} {:>9} {:>8} {:>8}  {}\n",
            "MODEL",
            "PROVIDER",
            "NAME",
            "TIER",
            "WHERE",
            "CONTEXT",
            "IN/MTOK",
            "OUT/MTOK",
            "PRICE FROM"
        );
        for m in models {
            let source = match &m.price_source {
                PriceSource::Catalog(k) => format!("catalog {k}"),
                PriceSource::CatalogWithOverrides(k) => format!("catalog {k} + policy"),
                PriceSource::Policy => "policy".to_owned(),
                PriceSource::Local => "local (free)".to_owned(),
            };
            out.push_str(&format!(
                "{:<12} {:<10} {:<28} {:<10} {:<6} {:>9} {:>8} {:>8}  {}\n",
                m.alias,
                m.provider,
                m.model,
                m.tier.name(),
                if m.locality == policy::Locality::Local {
                    "local"
                } else {
                    "cloud"
                },
                m.context_window,
                per_mtok(m.price.input),
                per_mtok(m.price.output),
                source
            ));
        }
        print_out(&out);
        return exit::OK;
    }
    let entries: Vec<_> = Catalog::builtin()
        .entries()
        .filter(|e| keep(&e.key))
        .collect();
    if format == OutputFormat::Json {
        print_out(&serde_json::to_string_pretty(&entries).unwrap_or_default());
        return exit::OK;
    }
    let mut out = format!(
        "{:<52} {:<10} {:>9} {:>8} {:>8} {:>9}\n",
        "MODEL", "PROVIDER", "CONTEXT", "IN/MTOK", "OUT/MTOK", "MAX OUT"
    );
    for e in entries {
        out.push_str(&format!(
            "{:<52} {:<10} {:>9} {:>8} {:>8} {:>9}\n",
            e.key,
            e.provider,
            e.max_input_tokens.map_or("-".to_owned(), |v| v.to_string()),
            per_mtok(e.input_per_token),
            per_mtok(e.output_per_token),
            e.max_output_tokens
                .map_or("-".to_owned(), |v| v.to_string()),
        ));
    }
    print_out(&out);
    exit::OK
}
