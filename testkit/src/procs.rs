//! What /proc says about processes: who is whose child, in what state,
//! with how many fds, using how much memory.
//!
//! Tests assert on real processes (no zombie left, exactly one child, no fd
//! growth) and the bench samples baton's cost; both read the same files
//! the same way here.

use std::io;

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// One process, from /proc/PID/stat.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// R, S, D, Z, T...
    pub state: char,
}

/// Every process.
pub fn procs() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(p) = parse_stat(pid, &stat) {
            out.push(p);
        }
    }
    out
}

/// `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() < 3 {
        return None;
    }
    Some(Proc {
        pid,
        state: f[0].chars().next().unwrap_or('?'),
        ppid: f[1].parse().unwrap_or(0),
        pgid: f[2].parse().unwrap_or(0),
    })
}

/// The processes whose parent is `pid` (zombies included).
pub fn children(pid: i32) -> Vec<Proc> {
    procs().into_iter().filter(|p| p.ppid == pid).collect()
}

/// Every process below `pid`: children, theirs, and so on.
pub fn descendants(pid: i32) -> Vec<i32> {
    let all = procs();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            out.push(c.pid);
            frontier.push(c.pid);
        }
    }
    out
}

/// True while `pid` exists (zombies included).
pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// How many fds process `pid` has open (0 if it is gone).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What each of `pid`'s fds points at (`socket:[1234]`, a path, ...); empty
/// if it is gone.
pub fn fd_targets(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

/// /proc/PID/status, read once.
pub struct Status(pub String);

/// Reads /proc/PID/status.
pub fn status(pid: i32) -> io::Result<Status> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map(Status)
}

impl Status {
    /// The words after `field:` (`NSpid: 812 1` -> ["812", "1"]).
    pub fn words(&self, field: &str) -> Vec<&str> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// The number after `field:`: VmRSS and VmHWM (KiB), Threads,
    /// TracerPid, PPid...; 0 if there is none.
    pub fn num(&self, field: &str) -> u64 {
        self.words(field)
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// [`Status::num`] of process `pid`; 0 if it is gone.
pub fn status_num(pid: i32, field: &str) -> u64 {
    status(pid).map(|s| s.num(field)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_an_awkward_name() {
        let p = parse_stat(7, "7 (a) b (c)) S 1 7 7 0 -1").unwrap();
        assert_eq!((p.pid, p.state, p.ppid, p.pgid), (7, 'S', 1, 7));
        assert!(parse_stat(7, "7 (x) S").is_none());
    }

    #[test]
    fn this_process_and_its_child() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(fd_count(me) >= 3);
        let st = status(me).unwrap();
        assert!(st.num("VmRSS") > 0);
        assert_eq!(st.words("Pid"), [me.to_string()]);
        assert_eq!(st.num("NoSuchField"), 0);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(children(me).iter().any(|p| p.pid == pid));
        assert!(descendants(me).contains(&pid));
        assert_eq!(status_num(pid, "PPid"), me as u64);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert_eq!(fd_count(pid), 0);
    }
}
