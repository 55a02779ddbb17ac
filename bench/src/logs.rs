//! A child's log, written straight to a file and read back by polling,
//! and baton's debug log turned into the rollout latency split.
//!
//! No pipe and no reader thread: a thread woken by every line baton writes
//! would compete with baton and its new generation for the two CPUs at the
//! very moments being measured. The bench reads the file only while it is
//! waiting for something, a few milliseconds apart.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::clock;

use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct Line {
    /// baton's own RFC3339 timestamp, µs since the epoch (0: not a baton line).
    pub ts: i64,
    /// The message after `baton[pid] LEVEL`, or the whole line.
    pub msg: String,
}

/// The lines of one log file, in order.
pub struct Log {
    file: File,
    partial: Vec<u8>,
    pub lines: Vec<Line>,
    /// Lines before this one have been offered to a `wait_for`.
    checked: usize,
}

impl Log {
    /// Creates `path`; the returned file is the child's stderr.
    pub fn create(path: &Path) -> std::io::Result<(Log, File)> {
        // A fresh file, appended to by baton and every generation alike.
        let _ = std::fs::remove_file(path);
        let writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let log = Log {
            file: File::open(path)?,
            partial: Vec::new(),
            lines: Vec::new(),
            checked: 0,
        };
        Ok((log, writer))
    }

    /// Reads whatever has been written since the last call.
    pub fn pull(&mut self) {
        let mut buf = Vec::new();
        if self.file.read_to_end(&mut buf).is_err() {
            return;
        }
        self.partial.extend_from_slice(&buf);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.lines
                .push(parse_line(String::from_utf8_lossy(&line).trim_end()));
        }
    }

    /// Offers each line not yet offered to `pred`, in order, until one
    /// satisfies it (its index), or None after `t`. Checks the file after
    /// `first` and then every `every`.
    pub fn wait_for(
        &mut self,
        t: Duration,
        first: Duration,
        every: Duration,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + t;
        std::thread::sleep(first.min(t));
        loop {
            self.pull();
            while self.checked < self.lines.len() {
                let i = self.checked;
                self.checked += 1;
                if pred(&self.lines[i]) {
                    return Some(i);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(every);
        }
    }
}

pub fn parse_line(s: &str) -> Line {
    // Another process's unbuffered output may precede baton's line (its
    // writes are not whole lines); baton writes each line at once.
    let parsed = clock::log_stamp(s).and_then(|(ts, rest)| {
        // "baton[123] DEBUG message"
        let (_, rest) = rest.strip_prefix("baton[")?.split_once("] ")?;
        let msg = rest
            .trim_start()
            .split_once(' ')
            .map(|(_, m)| m.trim_start())
            .unwrap_or("");
        Some(Line {
            ts,
            msg: msg.to_owned(),
        })
    });
    parsed.unwrap_or_else(|| Line {
        ts: 0,
        msg: s.to_owned(),
    })
}

/// `generation N (` at the start of a message: N.
fn gen_at_start(msg: &str) -> Option<u64> {
    let rest = msg.strip_prefix("generation ")?;
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with('(').then(|| n.parse().ok())?
}

/// The number after `key` in `msg`.
fn num_after(msg: &str, key: &str) -> Option<u64> {
    let i = msg.find(key)? + key.len();
    let digits: String = msg[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub fn is_live(l: &Line, g: u64) -> bool {
    gen_at_start(&l.msg) == Some(g) && l.msg.contains(") is live")
}

pub fn is_exited(l: &Line, g: u64) -> bool {
    gen_at_start(&l.msg) == Some(g) && l.msg.contains(") exited (")
}

pub fn started_gen(l: &Line) -> Option<u64> {
    num_after(&l.msg, "started generation ").filter(|_| l.msg.starts_with("started generation "))
}

/// One rollout, from baton's log, in µs since the epoch.
#[derive(Debug, Default, Clone)]
struct Marks {
    event: Option<i64>,
    exec: Option<i64>,
    /// baton's own "exec'd Xus after the change was seen".
    baton_exec_us: Option<i64>,
    deferred: bool,
    ready: Option<i64>,
    retires: Option<u64>,
}

/// The split of every rollout whose write time is in `writes` (generation
/// -> when the bench renamed current.conf into place, µs since the epoch).
pub struct Split {
    pub write_to_event: Summary,
    pub event_to_exec: Summary,
    pub exec_to_ready: Summary,
    pub ready_to_sigterm: Summary,
    pub sigterm_to_exited: Summary,
    pub write_to_exited: Summary,
    /// Rollouts whose read was held back by the burst settle.
    pub deferred: usize,
    /// Rollouts where baton's own timing line disagrees with its log
    /// timestamps by more than 1 ms.
    pub timing_line_off: usize,
    pub complete: usize,
}

pub fn split(lines: &[Line], writes: &BTreeMap<u64, i64>) -> Split {
    let mut marks: BTreeMap<u64, Marks> = BTreeMap::new();
    let mut term: BTreeMap<u64, i64> = BTreeMap::new();
    let mut exit: BTreeMap<u64, i64> = BTreeMap::new();
    let mut last_change: Option<i64> = None;
    let mut deferred = false;
    for l in lines.iter().filter(|l| l.ts != 0) {
        let m = &l.msg;
        if m.contains(" changed (") {
            last_change = Some(l.ts);
        } else if m.contains(" has been quiet for ") {
            deferred = true;
        } else if let Some(rest) = m
            .strip_prefix("timing: generation ")
            .filter(|r| r.contains(" exec'd "))
        {
            let g = num_after(m, "timing: generation ").unwrap_or(0);
            let x = rest
                .split_once("exec'd ")
                .and_then(|(_, t)| t.split_once("us"))
                .and_then(|(n, _)| n.parse().ok());
            let e = marks.entry(g).or_default();
            e.event = last_change.take();
            e.exec = Some(l.ts);
            e.baton_exec_us = x;
            e.deferred = std::mem::take(&mut deferred);
        } else if m.starts_with("READY=1 from generation ") {
            let g = num_after(m, "READY=1 from generation ").unwrap_or(0);
            marks.entry(g).or_default().ready.get_or_insert(l.ts);
        } else if m.starts_with("sent SIGTERM to generation ") {
            let g = num_after(m, "sent SIGTERM to generation ").unwrap_or(0);
            term.entry(g).or_insert(l.ts);
        } else if let Some(g) = gen_at_start(m) {
            if m.contains(") is live; retiring generation ") {
                marks.entry(g).or_default().retires = num_after(m, "retiring generation ");
            } else if m.contains(") exited (") {
                exit.entry(g).or_insert(l.ts);
            }
        }
    }
    let mut v: [Vec<f64>; 6] = Default::default();
    let (mut n_def, mut off, mut complete) = (0, 0, 0);
    for (g, w) in writes {
        let Some(mk) = marks.get(g) else { continue };
        let (Some(ev), Some(ex), Some(rd), Some(old)) = (mk.event, mk.exec, mk.ready, mk.retires)
        else {
            continue;
        };
        let (Some(&tm), Some(&xt)) = (term.get(&old), exit.get(&old)) else {
            continue;
        };
        complete += 1;
        // Held back by the burst settle (baton saw two edits < 100 ms apart,
        // e.g. when it was not scheduled in time for one): counted, not
        // timed, since it measures SETTLE rather than the rollout path.
        if mk.deferred {
            n_def += 1;
            continue;
        }
        if mk
            .baton_exec_us
            .is_some_and(|x| (x - (ex - ev)).abs() > 1000)
        {
            off += 1;
        }
        for (i, d) in [ev - w, ex - ev, rd - ex, tm - rd, xt - tm, xt - w]
            .into_iter()
            .enumerate()
        {
            v[i].push(d as f64);
        }
    }
    let [a, b, c, d, e, f] = v;
    Split {
        write_to_event: Summary::of(a),
        event_to_exec: Summary::of(b),
        exec_to_ready: Summary::of(c),
        ready_to_sigterm: Summary::of(d),
        sigterm_to_exited: Summary::of(e),
        write_to_exited: Summary::of(f),
        deferred: n_def,
        timing_line_off: off,
        complete,
    }
}

impl Split {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "unit": "us",
            "rollouts": self.complete,
            "deferred_by_settle": self.deferred,
            "baton_timing_line_disagrees": self.timing_line_off,
            "write_to_inotify_event": self.write_to_event.json(),
            "event_to_exec": self.event_to_exec.json(),
            "exec_to_ready": self.exec_to_ready.json(),
            "ready_to_sigterm": self.ready_to_sigterm.json(),
            "sigterm_to_old_exited": self.sigterm_to_exited.json(),
            "write_to_old_exited": self.write_to_exited.json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let l = parse_line(
            "2026-11-24T21:10:01.059324Z baton[6892] INFO  generation 2 (app.2.0, pid 6898) is live; retiring generation 1 (app.1.0, pid 6893)",
        );
        assert!(is_live(&l, 2));
        assert!(!is_live(&l, 1));
        assert_eq!(parse_line("example-app[1] hi").ts, 0);
        let l = parse_line(
            "example-app[2026-11-24T21:10:01.059324Z baton[6892] DEBUG READY=1 from generation 2 (pid 6898)",
        );
        assert_eq!(l.msg, "READY=1 from generation 2 (pid 6898)");
        assert!(l.ts > 0);
    }
}
