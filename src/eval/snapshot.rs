//! Snapshot files: one readable file per case and step,
//! `<snapshot dir>/<case>.<step>.snap`, a short header then the output.
//!
//! ```text
//! # tollgate snapshot — review changes, accept with `tollgate test --accept`
//! workflow: ticket-triage
//! case: crash-on-save
//! step: classify
//! model: budget (gpt-5.4-nano)
//! prompt: sha256:3f2a…
//! sensitivity: internal
//! ---
//! bug
//! ```
//!
//! The header says what produced the output (so a reviewer sees a model or
//! prompt change next to the text change); only the body is compared. A new
//! or changed output is written beside it as `<…>.snap.new` (pending) and
//! fails the case until accepted; `--ci` never writes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::assertion::SnapshotMode;

const HEADER_END: &str = "\n---\n";

/// What produced an output, for the header.
pub struct Meta<'a> {
    pub workflow: &'a str,
    pub case: &'a str,
    pub step: &'a str,
    pub model: &'a str,
    pub prompt_sha256: &'a str,
    /// The step's effective sensitivity when it produced the output: the
    /// stored body is data of that level (a judge reads it back, see
    /// [`stored_level`]).
    pub sensitivity: &'a str,
}

pub fn path(dir: &Path, case: &str, step: &str) -> PathBuf {
    dir.join(format!("{case}.{step}.snap"))
}

pub fn pending_path(snap: &Path) -> PathBuf {
    let mut p = snap.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// The file's text for an output.
pub fn render(meta: &Meta<'_>, body: &str) -> String {
    let mut s = format!(
        "# tollgate snapshot — review changes, accept with `tollgate test --accept`\n\
         workflow: {}\ncase: {}\nstep: {}\nmodel: {}\nprompt: sha256:{}\nsensitivity: {}\n---\n",
        meta.workflow, meta.case, meta.step, meta.model, meta.prompt_sha256, meta.sensitivity
    );
    s.push_str(body);
    if !body.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The body of a snapshot file (without the newline `render` adds).
pub fn body(file_text: &str) -> &str {
    let body = file_text
        .split_once(HEADER_END)
        .map_or(file_text, |(_, b)| b);
    body.strip_suffix('\n').unwrap_or(body)
}

/// The header line `key: value`, if present.
pub fn header_field<'a>(file_text: &'a str, key: &str) -> Option<&'a str> {
    let (head, _) = file_text.split_once(HEADER_END)?;
    head.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// The sensitivity level of a stored body, as an index of the policy's
/// levels: the level its header records, and the policy's highest level
/// when it records none or one the policy does not know (a snapshot written
/// before levels were recorded may hold the answer of a confidential step:
/// it fails closed, never open).
pub fn stored_level(file_text: &str, policy: &crate::policy::Policy) -> usize {
    header_field(file_text, "sensitivity")
        .and_then(|l| policy.level_index(l.trim()))
        .unwrap_or_else(|| policy.levels.len().saturating_sub(1))
}

/// Does the output match the stored body under this mode? (`Judge` compares
/// exactly here; the runner asks the judge when this says no.)
pub fn matches(mode: SnapshotMode, output: &Value, stored: &str, rendered: &str) -> bool {
    let structured = !matches!(output, Value::String(_));
    match mode {
        SnapshotMode::Json => json_equal(stored, rendered),
        SnapshotMode::Default if structured => json_equal(stored, rendered),
        SnapshotMode::Normalized => normalize(stored) == normalize(rendered),
        SnapshotMode::Default | SnapshotMode::Exact | SnapshotMode::Judge => {
            stored == rendered.strip_suffix('\n').unwrap_or(rendered)
        }
    }
}

fn json_equal(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.trim() == b.trim(),
    }
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes a file whole or not at all (temporary name, then rename).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(text.as_bytes()))
}

/// [`write_atomic`] for a text written piece by piece (results of many
/// cases, never held whole in memory).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per writer: the runs of a repeated case may write the same
    // pending file at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut out = std::io::BufWriter::new(f);
        write(&mut out)?;
        out.flush()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
}

/// What [`accept`] did in one snapshot folder.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    /// The snapshot files written, sorted.
    pub accepted: Vec<PathBuf>,
    /// Pending files left alone because no wanted case and step owns them
    /// (another suite's in a shared folder, a renamed case's), sorted.
    pub left: Vec<PathBuf>,
}

/// Promotes the pending snapshots in `dir` whose case and step `wanted`
/// says belong to what was asked (`<case>.<step>.snap.new`: step ids have
/// no dots, case names may); the others are listed, not touched — a
/// folder may be shared, and promoting a file no case owns would make a
/// snapshot nothing checks. The folder is read once, its entries bounded
/// by what a directory holds.
pub fn accept(dir: &Path, wanted: &dyn Fn(&str, &str) -> bool) -> std::io::Result<Accepted> {
    let mut out = Accepted::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(err) => return Err(err),
    };
    let mut pending: Vec<(PathBuf, bool)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix(".snap.new")?;
            let owned = name
                .rsplit_once('.')
                .is_some_and(|(case, step)| wanted(case, step));
            Some((p, owned))
        })
        .collect();
    pending.sort();
    for (p, owned) in pending {
        if !owned {
            out.left.push(p);
            continue;
        }
        let target = PathBuf::from(p.to_string_lossy().trim_end_matches(".new"));
        std::fs::rename(&p, &target)?;
        out.accepted.push(target);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_snapshot_file_round_trips_its_body() {
        let meta = Meta {
            workflow: "w",
            case: "c",
            step: "s",
            model: "m (x)",
            prompt_sha256: "ab",
            sensitivity: "internal",
        };
        let text = render(&meta, "line one\n---\nline three");
        assert_eq!(body(&text), "line one\n---\nline three");
        assert_eq!(header_field(&text, "model"), Some("m (x)"));
    }

    #[test]
    fn comparison_modes() {
        let t = json!("x");
        assert!(matches(SnapshotMode::Exact, &t, "a  b", "a  b"));
        assert!(!matches(SnapshotMode::Exact, &t, "a  b", "a b"));
        assert!(matches(SnapshotMode::Normalized, &t, "a  b\n", " a\nb"));
        assert!(matches(
            SnapshotMode::Json,
            &t,
            "{\"a\": 1, \"b\": 2}",
            "{\"b\":2,\"a\":1}"
        ));
        assert!(matches(
            SnapshotMode::Default,
            &json!({"a": 1}),
            "{\n  \"a\": 1\n}",
            "{\"a\":1}"
        ));
        assert!(!matches(
            SnapshotMode::Default,
            &json!({"a": 1}),
            "{\"a\": 1}",
            "{\"a\":2}"
        ));
    }

    #[test]
    fn accept_promotes_the_wanted_pending_files_and_lists_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "one.s.snap.new",
            "two.s.snap.new",
            "two.t.snap",
            "v1.2.s.snap.new",
            "gone.s.snap.new",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let got = accept(dir.path(), &|case, _| case == "one").unwrap();
        assert_eq!(got.accepted, [dir.path().join("one.s.snap")]);
        assert!(dir.path().join("two.s.snap.new").exists());
        let known = |case: &str, step: &str| ["two", "v1.2"].contains(&case) && step == "s";
        let got = accept(dir.path(), &known).unwrap();
        assert_eq!(
            got.accepted,
            [
                dir.path().join("two.s.snap"),
                dir.path().join("v1.2.s.snap")
            ]
        );
        // A case the suites do not have: left pending, and said.
        assert_eq!(got.left, [dir.path().join("gone.s.snap.new")]);
        assert!(dir.path().join("gone.s.snap.new").exists());
        let none = accept(&dir.path().join("missing"), &|_, _| true).unwrap();
        assert_eq!(none, Accepted::default());
    }
}
