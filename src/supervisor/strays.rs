//! Strays: processes that left their generation's process group (setsid,
//! setpgid: an app that daemonizes, a helper it double-forked) and were
//! orphaned to baton, its subreaper.
//!
//! baton retires a generation by signalling its process group, so a
//! process outside every generation's group is out of its reach: left
//! alone, a daemonized release that failed its rollout would keep
//! accepting on the shared socket, serving a release nobody rolled out,
//! for as long as it liked, and outlive baton. So whenever baton reaps, it
//! looks at its own children: one that is neither a generation's leader
//! nor in the process group of a live one is a stray. It is logged as an
//! error and retired as a generation is (SIGTERM to it and the group it
//! leads, so it drains what it holds; SIGKILL after --stop-timeout), and
//! reaped like any orphan.
//!
//! Which generation a stray came from cannot be known once it has left
//! the group; one that escapes while its generation still serves is
//! retired all the same, the next time baton reaps.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use log::{error, info, warn};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::Supervisor;
use crate::procfs;
use crate::span::format_span;

/// Strays being retired: pid -> when they get SIGKILL (None once sent).
pub type Strays = HashMap<i32, Option<Instant>>;

impl Supervisor {
    /// After reaping: finds strays among baton's children and retires
    /// them. `killed_groups`: the process groups of leaders just reaped,
    /// whose members were SIGKILLed already.
    pub(super) fn retire_strays(&mut self, killed_groups: &[i32], now: Instant) {
        // Generation leaders and readiness check attempts: baton's own.
        let leaders: HashSet<i32> = self
            .children
            .values()
            .map(|r| r.child.pid.as_raw())
            .chain(self.check_pids())
            .collect();
        for pid in procfs::own_children() {
            if leaders.contains(&pid)
                || self.upgrades.is_check(Pid::from_raw(pid))
                || self.strays.contains_key(&pid)
            {
                continue;
            }
            // Exited already: the next SIGCHLD reaps it.
            let Some(pgid) = procfs::pgid(pid) else {
                continue;
            };
            if procfs::start_time(pid).is_none()
                || leaders.contains(&pgid)
                || killed_groups.contains(&pgid)
            {
                continue;
            }
            let leads = pgid == pid;
            error!(
                "pid {pid} ({}) left its generation's process group{} and was orphaned to baton; a release must run in the foreground, in the group baton starts it in (did it daemonize?): retiring it{} (SIGTERM, SIGKILL after --stop-timeout {})",
                procfs::comm(pid),
                if leads {
                    format!(" (it leads group {pid})")
                } else {
                    String::new()
                },
                if leads { " and its group" } else { "" },
                format_span(self.core.settings().stop_timeout),
            );
            self.signal_stray(pid, leads, Signal::SIGTERM);
            self.strays
                .insert(pid, Some(now + self.core.settings().stop_timeout));
        }
    }

    fn signal_stray(&self, pid: i32, leads: bool, sig: Signal) {
        // `pid` is baton's child and not reaped yet (only baton reaps it,
        // in this thread), so neither its pid nor the group it leads can
        // be anyone else's.
        let r = if leads {
            killpg(Pid::from_raw(pid), sig)
        } else {
            kill(Pid::from_raw(pid), sig)
        };
        if let Err(e) = r
            && e != nix::errno::Errno::ESRCH
        {
            warn!("sending {sig} to stray pid {pid}: {e}");
        }
    }

    /// The earliest SIGKILL due to a stray.
    pub(super) fn strays_deadline(&self) -> Option<Instant> {
        self.strays.values().flatten().min().copied()
    }

    /// SIGKILL to the strays whose --stop-timeout has passed.
    pub(super) fn kill_strays(&mut self, now: Instant) {
        let due: Vec<i32> = self
            .strays
            .iter()
            .filter(|(_, at)| at.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            warn!("stray pid {pid} did not exit within --stop-timeout; sending SIGKILL");
            let leads = procfs::pgid(pid) == Some(pid);
            self.signal_stray(pid, leads, Signal::SIGKILL);
            // Reaped on its SIGCHLD.
            self.strays.insert(pid, None);
        }
    }

    /// `pid` was reaped: if it was a stray, it is gone.
    pub(super) fn stray_reaped(&mut self, pid: i32, how: &str) {
        if self.strays.remove(&pid).is_some() {
            info!("stray pid {pid} exited ({how})");
        }
    }
}
