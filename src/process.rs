//! Is a process still there? Liveness checks by pid *and* start time, so a
//! recycled pid (or a container's fixed small pids) is not taken for the
//! process that once had it.
//!
//! Used by the journal (is the process that journaled a run as `running`
//! still alive, or was it killed?) and by `run::local_server` (is the owner
//! of a server's pid file alive, has the server exited?). It sits below
//! both, so neither reaches into the other for it.
//!
//! Reads `/proc` where there is one; elsewhere asks `kill -0` (the one
//! process this module spawns).

use std::path::Path;

/// Is process `pid` still the one that started at `start` (clock ticks since
/// boot, from `/proc`)? A pid reused by another process — or the same small
/// pid of a fresh container — is not: it started at another time. Without
/// a start time (not Linux, an old row) only the pid is asked about.
pub fn process_alive_since(pid: u32, start: Option<i64>) -> bool {
    match (start, process_start(pid)) {
        (Some(want), Some(now)) if want != now => false,
        _ => process_alive(pid),
    }
}

/// When a process started, in clock ticks since boot (`/proc/<pid>/stat`,
/// field 22); `None` where there is no `/proc`.
pub fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens):
    // state is field 3, so starttime (22) is the 20th after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process's start time, read once.
pub fn own_start() -> Option<i64> {
    static START: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *START.get_or_init(|| process_start(std::process::id()))
}

/// Is the process that journaled a run as `running` still there? Read from
/// `/proc` where there is one, else asked with `kill -0`; where neither
/// answers it is assumed gone (a resume then goes ahead).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    if proc_root.join("self").exists() {
        // A zombie (killed, not yet reaped by its parent) is gone for our
        // purposes.
        return match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        };
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_with_another_start_time_is_another_process() {
        let me = std::process::id();
        if let Some(start) = own_start() {
            assert!(process_alive_since(me, Some(start)));
            // The same pid, started at another time: a recycled pid, or the
            // fixed pid of a fresh container — not the process written down.
            assert!(!process_alive_since(me, Some(start + 1)));
        }
        assert!(process_alive_since(me, None));
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("`true` runs");
        let pid = child.id();
        child.wait().expect("the child is reaped");
        // Its pid could in theory be reused at once; a reused pid has
        // another start time, which `process_alive_since` tells apart.
        assert!(!process_alive(pid) || process_start(pid).is_some());
    }
}
