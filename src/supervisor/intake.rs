//! Notifications from generations, as the loop takes them: each datagram
//! from baton's notify socket ([`crate::notify`]) is matched to a generation
//! by the sender's pid (its leader, or a process in the leader's group),
//! parsed, and handed to the core. Anything else is dropped with a warning,
//! and the warnings are rate-limited so that a flood cannot fill the log.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use log::{debug, warn};
use nix::unistd::Pid;

use super::Supervisor;
use crate::clock::Now;
use crate::core::GenId;
use crate::notify::{self, Received};
use crate::readiness::Evidence;

/// At most `burst` warnings a second for a kind of unwanted notification;
/// the rest are counted and the count told with the next warning.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(burst: u32) -> RateLimit {
        RateLimit {
            burst,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether to warn now; if so, how many warnings were suppressed since
    /// the last one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Supervisor {
    pub(super) fn on_notify(&mut self, now: Now) {
        for _ in 0..notify::BATCH {
            let Some(msg) = self.notify.recv() else {
                return;
            };
            match msg {
                Received::Dropped { pid, reason } => {
                    if let Some(n) = self.strangers.allow(now.mono) {
                        let from = pid.map(|p| format!(" from pid {p}")).unwrap_or_default();
                        warn!(
                            "{}: dropped a notification{from}: {reason}{}",
                            self.notify.path().display(),
                            suppressed(n)
                        );
                    }
                }
                // A barrier asks for nothing but its answer.
                Received::Message { pid, text } if notify::only_barrier(&text) => {
                    debug!("answered a barrier from pid {pid}");
                }
                Received::Message { pid, text } => match self.owner(pid) {
                    None => {
                        if let Some(n) = self.strangers.allow(now.mono) {
                            let whose = match self.ancestor(pid) {
                                Some(id) => format!(
                                    "a descendant of generation {id} outside its process group: only a generation's process group may notify"
                                ),
                                None => "which is not part of any generation".into(),
                            };
                            warn!(
                                "{}: ignored {:?} from pid {pid} ({}), {whose}{}",
                                self.notify.path().display(),
                                String::from_utf8_lossy(&text[..text.len().min(80)]),
                                comm(pid),
                                suppressed(n)
                            );
                        }
                    }
                    Some(id) => self.on_message(id, pid, &text, now),
                },
            }
            self.notify.answer_barrier();
        }
    }

    fn on_message(&mut self, id: GenId, pid: i32, text: &[u8], now: Now) {
        match notify::parse(text) {
            Err(e) => {
                if let Some(n) = self.malformed.allow(now.mono) {
                    warn!(
                        "generation {id} (pid {pid}) sent a malformed notification: {e}{}",
                        suppressed(n)
                    )
                }
            }
            Ok(m) => {
                if let Some(s) = m.status {
                    self.core.app_status(id, s);
                }
                if let Some(more) = m.extend_timeout {
                    self.core.extend_timeout(id, more, now);
                }
                if m.ready {
                    debug!("READY=1 from generation {id} (pid {pid})");
                    if self.leader_exited(id) {
                        // Read after the leader exited (both arrived
                        // together): never promote a generation that is
                        // gone. Reaping it fails the rollout.
                        self.core.ready_after_exit(id);
                    } else {
                        self.core.ready(id, Evidence::Notified, now);
                    }
                }
            }
        }
    }

    /// Whether generation `id`'s leader has exited (not reaped yet): its
    /// pidfd is readable.
    fn leader_exited(&self, id: GenId) -> bool {
        let Some(fd) = self.children.get(&id).and_then(|r| r.child.pidfd.as_ref()) else {
            return false;
        };
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// The generation a sender belongs to: its leader, or a process in the
    /// leader's process group (an app's own workers).
    fn owner(&self, pid: i32) -> Option<GenId> {
        if let Some(id) = self.core.by_pid(pid) {
            return Some(id);
        }
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok()?;
        self.core.by_pid(pgid.as_raw())
    }
}

impl Supervisor {
    /// The generation whose leader `pid` descends from (parent by parent),
    /// if any: a process that left the generation's process group.
    fn ancestor(&self, pid: i32) -> Option<GenId> {
        let mut p = pid;
        for _ in 0..32 {
            p = crate::procfs::ppid(p)?;
            if p <= 1 || p == std::process::id() as i32 {
                return None;
            }
            if let Some(id) = self.core.by_pid(p) {
                return Some(id);
            }
        }
        None
    }
}

fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_second_then_the_suppressed_count_with_the_next_warning() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = RateLimit::new(2);
        assert_eq!(r.allow(at(0)), Some(0));
        assert_eq!(r.allow(at(10)), Some(0));
        assert_eq!(r.allow(at(20)), None);
        assert_eq!(r.allow(at(999)), None);
        assert_eq!(
            r.allow(at(1000)),
            Some(2),
            "a new second tells what was held back"
        );
        assert_eq!(r.allow(at(1001)), Some(0));
        assert_eq!(r.allow(at(1002)), None);
        assert_eq!(r.allow(at(5000)), Some(1));
    }
}
