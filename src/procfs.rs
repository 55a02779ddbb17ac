//! What baton reads about processes from /proc: when a process started
//! (with the pid, its identity: a pid alone may have been recycled), this
//! boot's id, and baton's own children.
//!
//! A restarted baton uses the first two to recognise the generations of the
//! baton before it that are still running ([`crate::supervisor`]'s
//! survivors); the loop uses the last to find processes that left their
//! generation's process group and were orphaned to baton.

use std::path::Path;

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), if it exists and is not a zombie. With the pid and
/// [`boot_id`] this names one process for the whole life of the machine.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = after_comm(&stat)?;
    // Fields after the comm start at field 3 (state); starttime is 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`).
pub fn pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_comm(&stat)?.get(5 - 3)?.parse().ok()
}

/// The parent of `pid` (field 4 of `/proc/PID/stat`).
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_comm(&stat)?.get(4 - 3)?.parse().ok()
}

/// The fields of a `/proc/PID/stat` line after `(comm)`, which may itself
/// hold spaces and parentheses.
fn after_comm(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The children of this (single-threaded) process.
pub fn own_children() -> Vec<i32> {
    let me = std::process::id();
    let path = format!("/proc/{me}/task/{me}/children");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        // Kernels without CONFIG_PROC_CHILDREN: look at every process.
        Err(_) => scan_children(me as i32),
    }
}

fn scan_children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| after_comm(&s)?.get(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// `/proc/PID/comm`, or `?`.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_start_time_group_and_children() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("our own start time");
        assert_eq!(start_time(me), Some(t), "stable");
        assert_eq!(pgid(me), Some(nix::unistd::getpgrp().as_raw()));
        assert!(boot_id().is_some_and(|b| b.len() == 36));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(start_time(pid).is_some_and(|c| c >= t));
        assert!(scan_children(me).contains(&pid));
        assert_eq!(ppid(pid), Some(me));
        assert_eq!(comm(pid), "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(start_time(pid), None, "gone");
        assert_eq!(
            after_comm("1 (a) b) c) S 0 1"),
            Some(vec!["S", "0", "1"]),
            "a comm with ) in it"
        );
    }
}
