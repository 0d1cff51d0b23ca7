//! How one try of one call ended: the vocabulary the executor reports,
//! the journal stores (its `outcome` column, text converted here at the
//! boundary) and `report` and `test` read back. It sits below both `run`
//! and `journal` so neither has to import the other for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::provider::ErrorKind;

/// How one try of one call ended. Serialised (JSON reports, the journal's
/// `outcome` column) as its snake_case word, [`AttemptOutcome::as_str`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Answered (a valid answer, or a text one).
    #[default]
    Ok,
    /// Answered, but the answer stopped at its length limit (journal only:
    /// the report's attempt says `ok` and the call `truncated`).
    Truncated,
    /// Answered, but the answer does not match the output schema.
    InvalidOutput,
    /// Answered, but the answer failed its cascade's check: the call
    /// escalates (the answer is not the call's output).
    Escalated,
    /// Finished by an earlier session of the run (`--resume`).
    Resumed,
    /// An identical request's answer from the response cache.
    Cached,
    /// Not sent: the provider boundary refused the request (`route::admit`).
    Refused,
    /// Not sent: its worst case does not fit the budget.
    OverBudget,
    /// The batch could not be submitted or failed as a whole.
    BatchFailed,
    /// The batch is at the provider but its answers are out of reach.
    BatchStranded,
    BatchExpired,
    BatchCancelled,
    /// The batch ended without a result for this call.
    BatchMissing,
    /// The provider (or the transport) failed, as classified.
    Error(ErrorKind),
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Truncated => "truncated",
            AttemptOutcome::InvalidOutput => "invalid_output",
            AttemptOutcome::Escalated => "escalated",
            AttemptOutcome::Resumed => "resumed",
            AttemptOutcome::Cached => "cached",
            AttemptOutcome::Refused => "refused",
            AttemptOutcome::OverBudget => "over_budget",
            AttemptOutcome::BatchFailed => "batch_failed",
            AttemptOutcome::BatchStranded => "batch_stranded",
            AttemptOutcome::BatchExpired => "batch_expired",
            AttemptOutcome::BatchCancelled => "batch_cancelled",
            AttemptOutcome::BatchMissing => "batch_missing",
            AttemptOutcome::Error(kind) => kind.as_str(),
        }
    }
}

/// A word that names no outcome (the journal's column holds something else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome(pub String);

impl fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown call outcome `{}`", self.0)
    }
}

impl std::error::Error for UnknownOutcome {}

impl FromStr for AttemptOutcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const NAMED: [AttemptOutcome; 13] = [
            AttemptOutcome::Ok,
            AttemptOutcome::Truncated,
            AttemptOutcome::InvalidOutput,
            AttemptOutcome::Escalated,
            AttemptOutcome::Resumed,
            AttemptOutcome::Cached,
            AttemptOutcome::Refused,
            AttemptOutcome::OverBudget,
            AttemptOutcome::BatchFailed,
            AttemptOutcome::BatchStranded,
            AttemptOutcome::BatchExpired,
            AttemptOutcome::BatchCancelled,
            AttemptOutcome::BatchMissing,
        ];
        NAMED
            .into_iter()
            .chain(ErrorKind::ALL.into_iter().map(AttemptOutcome::Error))
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The word back (a run's spilled call reports are read back).
impl<'de> Deserialize<'de> for AttemptOutcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = std::borrow::Cow::<'de, str>::deserialize(d)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_serde_forms_and_parse_back() {
        for kind in ErrorKind::ALL {
            let o = AttemptOutcome::Error(kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(o.as_str().parse::<AttemptOutcome>(), Ok(o));
        }
        for word in [
            "ok",
            "over_budget",
            "refused",
            "invalid_output",
            "batch_missing",
        ] {
            let o: AttemptOutcome = word.parse().unwrap();
            assert_eq!(serde_json::to_value(o).unwrap(), word);
            let back: AttemptOutcome =
                serde_json::from_value(serde_json::to_value(o).unwrap()).unwrap();
            assert_eq!(back, o);
        }
        assert!(serde_json::from_str::<AttemptOutcome>("\"sever_error\"").is_err());
        assert!("server_error".parse::<AttemptOutcome>().is_err());
    }
}
