//! Who ran a run: the user, the machine and the CI system, as the
//! environment says. Recorded with every run so `report --by` and
//! `runs --by` can split a team's spend, and so a per-user daily budget can
//! count one person's spend across every machine of a shared ledger.
//!
//! These are data from the environment (and, read back, from a database
//! other people write to): each is bounded in length and stripped of
//! control characters both when it is recorded and when it is read back,
//! so a hostile `$USER` or hostname cannot draw on the terminal.

/// The longest user, machine or CI name kept, in characters.
pub const MAX_WHO: usize = 64;

/// Who runs this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// `$USER`, else `$LOGNAME`, else `uid:N`.
    pub user: String,
    /// `$TOLLGATE_MACHINE`, else the hostname.
    pub machine: String,
    /// The CI system this runs under (`github-actions`, `gitlab`, …; `ci`
    /// for an unnamed one that sets `CI`), or "" outside CI.
    pub ci: String,
}

/// Environment markers of CI systems, first match wins: the named systems
/// before the generic `CI` most of them also set.
const CI_MARKERS: [(&str, &str); 12] = [
    ("GITHUB_ACTIONS", "github-actions"),
    ("GITLAB_CI", "gitlab"),
    ("CIRCLECI", "circleci"),
    ("BUILDKITE", "buildkite"),
    ("JENKINS_URL", "jenkins"),
    ("TF_BUILD", "azure-pipelines"),
    ("TRAVIS", "travis"),
    ("BITBUCKET_BUILD_NUMBER", "bitbucket"),
    ("TEAMCITY_VERSION", "teamcity"),
    ("DRONE", "drone"),
    ("WOODPECKER", "woodpecker"),
    ("CI", "ci"),
];

impl Who {
    /// From this process's environment.
    pub fn from_env() -> Who {
        Who::from_vars(|k| std::env::var(k).ok(), hostname, uid)
    }

    /// From any variable lookup (tests).
    fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        hostname: impl FnOnce() -> Option<String>,
        uid: impl FnOnce() -> Option<u32>,
    ) -> Who {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let user = set("USER")
            .or_else(|| set("LOGNAME"))
            .map(|u| clean(&u))
            .filter(|u| !u.is_empty())
            .or_else(|| uid().map(|u| format!("uid:{u}")))
            .unwrap_or_default();
        let machine = set("TOLLGATE_MACHINE")
            .or_else(hostname)
            .map(|m| clean(&m))
            .unwrap_or_default();
        // `CI=false` (some tools set it to turn CI behaviour off) is not CI.
        let ci = CI_MARKERS
            .iter()
            .find(|(k, _)| set(k).is_some_and(|v| !v.eq_ignore_ascii_case("false") && v != "0"))
            .map(|(_, name)| (*name).to_owned())
            .unwrap_or_default();
        Who { user, machine, ci }
    }
}

/// The machine's name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The process's user id (the owner of `/proc/self`).
fn uid() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `text` trimmed, without control characters (each becomes `?`), at most
/// [`MAX_WHO`] characters (a cut one ends with `…`).
pub fn clean(text: &str) -> String {
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(MAX_WHO)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_WHO).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(vars: &[(&str, &str)]) -> Who {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Who::from_vars(
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            || Some("box-1".to_owned()),
            || Some(1000),
        )
    }

    #[test]
    fn user_machine_and_ci_come_from_the_environment() {
        assert_eq!(
            who(&[("USER", "ana"), ("LOGNAME", "x")]),
            Who {
                user: "ana".into(),
                machine: "box-1".into(),
                ci: String::new()
            }
        );
        assert_eq!(who(&[("LOGNAME", "bo")]).user, "bo");
        assert_eq!(who(&[("USER", " ")]).user, "uid:1000");
        assert_eq!(who(&[("TOLLGATE_MACHINE", "ci-7")]).machine, "ci-7");
        assert_eq!(
            who(&[("CI", "true"), ("GITHUB_ACTIONS", "true")]).ci,
            "github-actions"
        );
        assert_eq!(who(&[("CI", "1")]).ci, "ci");
        assert_eq!(who(&[("CI", "false")]).ci, "");
    }

    #[test]
    fn hostile_values_are_bounded_and_stripped_of_control_characters() {
        let w = who(&[
            ("USER", "a\u{1b}[31mred\nx"),
            ("TOLLGATE_MACHINE", &"m".repeat(10_000)),
        ]);
        assert_eq!(w.user, "a?[31mred?x");
        assert_eq!(w.machine.chars().count(), MAX_WHO);
        assert!(w.machine.ends_with('…'));
        assert!(!clean("\u{7f}\u{9b}x").chars().any(char::is_control));
    }
}
