//! Survivors: generations of the baton before this one that are still
//! running when this one starts.
//!
//! A baton killed with SIGKILL (or crashed) under `KillMode=process`
//! leaves its generations running: they keep their sockets and go on
//! serving, in-flight requests included. The baton that systemd starts
//! next finds them in the state file the dead one left (pid, process start
//! time, boot id: a recycled pid is not mistaken for one of them), and
//! adopts them: the one that was live serves on until this baton's own
//! generation of what current.conf names is live, and is then retired like
//! any replaced generation (SIGTERM, drain, SIGKILL after --stop-timeout);
//! any other (one that was starting or draining) is retired at once. So a
//! kill -9 of baton drops nothing and nobody waits for it.
//!
//! A survivor is not this baton's child: its exit is seen through its
//! pidfd becoming readable (its exit status went to its new parent, which
//! reaps it), and the rest of its process group is killed then, as
//! `reap` does for a child. Signalling its group by number is safe while
//! the group has a member (the number stays taken); the leader is checked
//! through its pidfd first.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, info, warn};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Supervisor;
use crate::clock::Now;
use crate::config::Release;
use crate::core::{GenId, Survivor};
use crate::procfs;
use crate::spawn::{self, Child};
use crate::state::{Carried, GenState};

/// Survivors being watched, by their id in this baton.
pub type Survivors = HashMap<GenId, Child>;

impl Supervisor {
    /// At start, before the first read of current.conf: adopts what is
    /// still running of the generations the state file names.
    pub(super) fn adopt_survivors(&mut self, now: Now) {
        let Ok(carried) = Carried::read(&self.paths.app_dir) else {
            return;
        };
        let gens = carried.generations();
        if gens.is_empty() {
            return;
        }
        if carried.config.as_ref() != Some(&self.paths.config) {
            return;
        }
        if carried.boot_id.is_none() || carried.boot_id != self.boot_id {
            debug!("the state file is from another boot: no generation of it can be running");
            return;
        }
        // A survivor's own settings (its stop signal, say) are not in the
        // state file; if current.conf still names its files, they are the
        // ones it names.
        let named = crate::config::load(&self.paths.config, &self.policy)
            .ok()
            .map(|p| p.release);
        for g in gens {
            let (Some(pid), Some(started)) = (g.pid, g.start_time) else {
                continue;
            };
            if procfs::start_time(pid) != Some(started) {
                continue;
            }
            let Some(pidfd) = spawn::pidfd_open(Pid::from_raw(pid)) else {
                continue;
            };
            // The pidfd was opened after the check: check again, so that it
            // is known to be that process and not one that took its pid.
            if procfs::start_time(pid) != Some(started) {
                continue;
            }
            let was_live = g.state == GenState::Live;
            let opts = named
                .as_ref()
                .filter(|r| r.bin == g.release.bin && r.cfg == g.release.cfg)
                .map(|r| r.opts.clone())
                .unwrap_or_default();
            let release = Release {
                bin: g.release.bin.clone(),
                cfg: g.release.cfg.clone(),
                opts,
            };
            let id = self.core.adopt(
                Survivor {
                    release,
                    pid,
                    start_time: Some(started),
                    was_live,
                    trigger: g.trigger,
                    started_wall: UNIX_EPOCH + Duration::from_secs_f64(g.started_at.max(0.0)),
                },
                now,
            );
            let what = format!(
                "generation {} of baton pid {} ({}, pid {pid}, {})",
                g.generation,
                carried.pid,
                g.release.name,
                g.state.as_str()
            );
            if was_live {
                info!(
                    "{what} is still running: adopted as generation {id}; it serves until a generation of this baton is live"
                );
            } else {
                warn!("{what} is still running: adopted as generation {id} and retired");
            }
            self.survivors.insert(
                id,
                Child {
                    pid: Pid::from_raw(pid),
                    pidfd: Some(pidfd),
                    exec_status: None,
                },
            );
        }
    }

    /// The pidfd of survivor `id` is readable: it has exited.
    pub(super) fn on_survivor_exit(&mut self, id: GenId, now: Now) {
        let Some(child) = self.survivors.remove(&id) else {
            return;
        };
        // Whatever is left of its group (its workers) goes with it, as for
        // a child of this baton.
        match nix::sys::signal::killpg(child.pid, Signal::SIGKILL) {
            Ok(()) => info!(
                "killed what was left of process group {} of generation {id}",
                child.pid
            ),
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => warn!("killing the rest of process group {}: {e}", child.pid),
        }
        self.core.exited(
            id,
            "exited; it was not this baton's child, so its exit status went to its new parent",
            now,
        );
    }
}
