//! A policy's models against their providers' retirement dates: a model
//! retiring soon is a warning, a retired one an error, each naming the
//! successor the catalog gives.
//!
//! This is the one check whose answer depends on the day, so "today" is a
//! parameter: the policy compile stays a pure function of the files, and
//! the CLI (the only caller that knows the clock) decides what today is.

use jiff::civil::Date;

use super::{Policy, PriceSource};
use crate::catalog::Catalog;
use crate::diagnostic::Diagnostic;
use crate::yaml::{Document, pointer};

/// How far ahead a retirement date is worth a warning. The catalog carries
/// dates providers announce up to a year ahead; a warning on every plan for a
/// year is noise people learn to skip, while three months is about the time
/// a team needs to move a workflow to another model and check it.
pub const WARN_DAYS: i64 = 90;

/// The code of the error for a model past its retirement date.
pub const RETIRED: &str = "model-retired";
/// The code of the warning for a model retiring within [`WARN_DAYS`].
pub const RETIRING: &str = "model-retiring";

/// The retirement diagnostics of every priced-from-the-catalog model of
/// `policy`, in model order, located at the model's `model:`. Entries whose
/// date is not a `YYYY-MM-DD` date say nothing (the catalog is generated;
/// a malformed date is not the user's problem).
pub fn check(policy: &Policy, doc: &Document, catalog: &Catalog, today: Date) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (alias, model) in &policy.models {
        let key = match &model.price_source {
            PriceSource::Catalog(k) | PriceSource::CatalogWithOverrides(k) => k,
            PriceSource::Policy | PriceSource::Local => continue,
        };
        let Some(entry) = catalog.get(key) else {
            continue;
        };
        let Some(date) = entry
            .deprecation_date
            .as_deref()
            .and_then(|d| d.parse::<Date>().ok())
        else {
            continue;
        };
        // The successor as the provider's API names it: LiteLLM prefixes
        // some providers' keys ("gemini/gemini-3.8-flash").
        let successor = entry
            .successor_model
            .as_deref()
            .map(|s| s.strip_prefix(&format!("{}/", entry.provider)).unwrap_or(s));
        let help = match successor {
            Some(s) => format!("its successor is `{s}`: set `model: {s}`"),
            None => "the catalog names no successor; `tollgate models` lists the others".to_owned(),
        };
        let days = days_between(today, date);
        let at = doc.span(&pointer(["models", alias.as_str(), "model"]));
        if days <= 0 {
            out.push(
                Diagnostic::error(RETIRED, format!("`{}` was retired on {date}", model.model))
                    .at(at)
                    .with_label(format!("retired {}: calls to it fail", ago(-days)))
                    .with_help(help),
            );
        } else if days <= WARN_DAYS {
            out.push(
                Diagnostic::warning(RETIRING, format!("`{}` retires on {date}", model.model))
                    .at(at)
                    .with_label(format!("in {}", plural_days(days)))
                    .with_help(help),
            );
        }
    }
    out
}

/// Whole days from `from` to `to` (negative when `to` is earlier). Dates
/// are civil dates, so the count never depends on a time zone.
fn days_between(from: Date, to: Date) -> i64 {
    // Both dates are in jiff's range, so the span is representable; the
    // fallback only keeps the function total.
    from.until(to).map(|s| i64::from(s.get_days())).unwrap_or(0)
}

fn plural_days(n: i64) -> String {
    if n == 1 {
        "1 day".to_owned()
    } else {
        format!("{n} days")
    }
}

fn ago(days: i64) -> String {
    if days == 0 {
        "today".to_owned()
    } else {
        format!("{} ago", plural_days(days))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::{Severity, SourceFile};
    use crate::schema::Format;
    use crate::workflow::{Loaded, from_document};

    /// A policy on three catalog models: one with a date and a successor
    /// (gpt-4.1-nano, 2026-10-23 → gpt-5.6-luna), one with a date and no
    /// successor (deepseek-chat, 2026-07-24), one without a date.
    const POLICY: &str = "version: 1
providers:
  openai: {kind: openai}
  deepseek: {kind: openai-compatible, base_url: \"https://api.deepseek.com/v1\", api_key_env: K}
  gemini: {kind: gemini}
models:
  nano: {provider: openai, model: gpt-4.1-nano, tier: budget}
  ds: {provider: deepseek, model: deepseek-chat, tier: budget, catalog: deepseek-chat}
  pro: {provider: gemini, model: gemini-2.5-pro, tier: flagship}
  mini: {provider: openai, model: gpt-5.4-mini, tier: budget}
rules:
  - {name: all, use: nano}
";

    fn diags_on(today: &str) -> Vec<Diagnostic> {
        let doc = Document::parse(SourceFile::new("p.yaml", POLICY)).unwrap();
        let loaded: Loaded<super::super::PolicyFile> = from_document(doc, Format::Policy).unwrap();
        let (policy, d) = super::super::compile(&loaded.value, &loaded.doc, Catalog::builtin());
        assert!(!d.iter().any(Diagnostic::is_error), "{d:?}");
        check(
            &policy,
            &loaded.doc,
            Catalog::builtin(),
            today.parse().unwrap(),
        )
    }

    fn summary(d: &[Diagnostic]) -> Vec<(Severity, String, Option<String>)> {
        d.iter()
            .map(|d| (d.severity, d.message.clone(), d.help.clone()))
            .collect()
    }

    #[test]
    fn far_from_every_date_nothing_is_said() {
        assert!(diags_on("2026-01-01").is_empty());
    }

    #[test]
    fn within_the_window_a_warning_names_the_date_and_successor() {
        // gpt-4.1-nano retires in 52 days; deepseek-chat retired in July;
        // gemini-2.5-pro is 91 days away.
        let d = diags_on("2026-09-01");
        let s = summary(&d);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].0, Severity::Warning);
        assert_eq!(s[0].1, "`gpt-4.1-nano` retires on 2026-10-23");
        assert_eq!(
            s[0].2.as_deref(),
            Some("its successor is `gpt-5.6-luna`: set `model: gpt-5.6-luna`")
        );
        assert_eq!(d[0].code, RETIRING);
        assert_eq!(d[0].label.as_deref(), Some("in 52 days"));
        assert!(d[0].span.is_some(), "located at the model");
        assert_eq!(s[1].0, Severity::Error);
        // 90 days ahead warns, 91 does not.
        let about_nano = |today: &str| {
            diags_on(today)
                .iter()
                .filter(|d| d.message.contains("gpt-4.1-nano"))
                .count()
        };
        assert_eq!(about_nano("2026-07-25"), 1);
        assert_eq!(about_nano("2026-07-24"), 0);
    }

    #[test]
    fn past_the_date_it_is_an_error_even_on_the_day() {
        let on_the_day = diags_on("2026-10-23");
        assert!(
            on_the_day
                .iter()
                .any(|d| d.code == RETIRED && d.message.contains("gpt-4.1-nano"))
        );
        let later = diags_on("2026-12-07");
        let s = summary(&later);
        // Every dated model is retired by then; gpt-5.4-mini has no date.
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().all(|(sev, _, _)| *sev == Severity::Error));
        assert_eq!(s[1].1, "`deepseek-chat` was retired on 2026-07-24");
        assert!(s[1].2.as_deref().unwrap().contains("names no successor"));
        // A gemini successor is named as the API names it, without the
        // catalog's `gemini/` prefix.
        assert!(
            s[2].2.as_deref().unwrap().contains("`gemini-3.8-flash`"),
            "{s:?}"
        );
        assert!(!s[2].2.as_deref().unwrap().contains("gemini/"));
    }

    #[test]
    fn day_counts() {
        let d = |s: &str| s.parse::<Date>().unwrap();
        assert_eq!(days_between(d("2026-01-01"), d("2026-01-02")), 1);
        assert_eq!(days_between(d("2026-03-01"), d("2026-02-01")), -28);
        assert_eq!(days_between(d("2026-01-01"), d("2027-01-01")), 365);
        assert_eq!(ago(0), "today");
        assert_eq!(ago(1), "1 day ago");
    }
}
