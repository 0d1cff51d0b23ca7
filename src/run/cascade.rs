//! A cascade's checks on a first answer (`escalate:` on a rule): which one
//! fails, worded as the journal and the report keep it. Pure: the answer's
//! text, whether it matched the output schema, whether it was cut short,
//! and its token logprobs go in; the reason to escalate comes out.
//!
//! Order: `invalid_output`, then `no_match`, then `low_confidence` — the
//! first failure is the reason. Logprobs the server did not send, or sent
//! in a form that cannot be believed ([`Logprobs::Unusable`]), fail
//! `low_confidence`: an answer whose confidence is unknown is not trusted.

use super::validate::InvalidOutput;
use crate::policy::{Cascade, EscalateWhen};
use crate::provider::logprobs::Logprobs;

/// The cascade a call's first answer is held to, and its rule's name.
#[derive(Debug, Clone, Copy)]
pub(super) struct Check<'a> {
    pub rule: &'a str,
    pub cascade: &'a Cascade,
}

/// Which side of a cascade a call on one model is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leg<'a> {
    /// No cascade (or the routed model is the escalation target itself).
    Plain,
    /// The first, cheap call: its answer is checked.
    First(Check<'a>),
    /// The escalated call, after `from`'s answer failed the check.
    Escalation { rule: &'a str, from: &'a str },
}

impl<'a> Leg<'a> {
    pub fn check(self) -> Option<Check<'a>> {
        match self {
            Leg::First(c) => Some(c),
            _ => None,
        }
    }
}

/// What the check sees of one answer.
pub(super) struct Answer<'a> {
    pub text: &'a str,
    /// `Some` when the step has an output schema and the answer breaks it.
    pub invalid: Option<&'a InvalidOutput>,
    pub truncated: bool,
    pub logprobs: Option<Logprobs>,
}

/// Why the answer escalates; `None` when it passes every check listed.
/// An invalid answer of a cascade without `invalid_output` is not this
/// module's business: the executor asks again as for any call.
pub(super) fn failure(c: &Cascade, a: &Answer<'_>) -> Option<String> {
    let wants = |w: EscalateWhen| c.when.contains(&w);
    if let Some(why) = a.invalid {
        return wants(EscalateWhen::InvalidOutput).then(|| format!("invalid_output: {why}"));
    }
    if a.truncated && wants(EscalateWhen::InvalidOutput) {
        return Some("invalid_output: the answer was cut short at max_output_tokens".to_owned());
    }
    if wants(EscalateWhen::NoMatch) {
        if let Some(re) = &c.matches {
            if !re.is_match(a.text) {
                return Some(format!(
                    "no_match: the answer does not match /{}/",
                    re.as_str()
                ));
            }
        }
        if let Some(needle) = &c.contains {
            if !a.text.contains(needle.as_str()) {
                return Some(format!("no_match: the answer does not contain {needle:?}"));
            }
        }
    }
    if wants(EscalateWhen::LowConfidence) {
        let min = c.min_mean_logprob.unwrap_or(0.0);
        return match a.logprobs {
            Some(Logprobs::Mean { mean, tokens }) if mean < min => Some(format!(
                "low_confidence: mean logprob {mean:.3} over {tokens} tokens is below {min}"
            )),
            Some(Logprobs::Mean { .. }) => None,
            Some(Logprobs::Unusable { why }) => Some(format!(
                "low_confidence: confidence unknown, the server sent {why}"
            )),
            None => {
                Some("low_confidence: confidence unknown, the server sent no logprobs".to_owned())
            }
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn cascade(when: &[EscalateWhen]) -> Cascade {
        Cascade {
            to: "big".into(),
            when: when.iter().copied().collect::<BTreeSet<_>>(),
            min_mean_logprob: Some(-0.8),
            matches: Some(regex::Regex::new("^(yes|no)$").unwrap()),
            contains: None,
            judge: None,
        }
    }

    fn answer(text: &str, logprobs: Option<Logprobs>) -> Answer<'_> {
        Answer {
            text,
            invalid: None,
            truncated: false,
            logprobs,
        }
    }

    #[test]
    fn each_check_fails_only_when_listed() {
        use EscalateWhen::*;
        let sure = Some(Logprobs::Mean {
            mean: -0.1,
            tokens: 3,
        });
        let unsure = Some(Logprobs::Mean {
            mean: -2.0,
            tokens: 3,
        });
        let all = cascade(&[InvalidOutput, NoMatch, LowConfidence]);
        assert_eq!(failure(&all, &answer("yes", sure)), None);
        assert!(
            failure(&all, &answer("maybe", sure))
                .unwrap()
                .starts_with("no_match")
        );
        assert!(
            failure(&all, &answer("yes", unsure))
                .unwrap()
                .starts_with("low_confidence")
        );
        assert!(
            failure(&all, &answer("yes", None))
                .unwrap()
                .contains("no logprobs")
        );
        let bad = Some(Logprobs::Unusable { why: "x" });
        assert!(
            failure(&all, &answer("yes", bad))
                .unwrap()
                .contains("unknown")
        );
        let only_match = cascade(&[NoMatch]);
        assert_eq!(failure(&only_match, &answer("yes", unsure)), None);
        let mut cut = answer("ye", sure);
        cut.truncated = true;
        assert!(failure(&all, &cut).unwrap().starts_with("invalid_output"));
        assert!(failure(&only_match, &cut).unwrap().starts_with("no_match"));
    }
}
