//! Generations as processes: starting them, learning whether their exec
//! worked, signalling them, and reaping.
//!
//! The rules: baton never waits for a child. An exec's outcome comes back
//! through the child's close-on-exec pipe ([`crate::spawn`]), which the loop
//! polls like any other event. Exactly one place calls `waitpid`
//! ([`Supervisor::reap`]), on SIGCHLD, until nothing is left; it maps pids
//! to generations, and because baton is a child subreaper it also reaps
//! orphaned grandchildren.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use log::{debug, warn};
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};

use super::Supervisor;
use crate::clock::Now;
use crate::config::{self, Release};
use crate::core::{GenId, Sig};
use crate::spawn::{self, Child, Spec};

/// A generation leader baton has not reaped yet.
pub(super) struct Running {
    pub(super) child: Child,
    /// When the change that started it was seen, until its exec is known
    /// (for the timing line).
    pub(super) change_seen: Option<Instant>,
}

impl Supervisor {
    pub(super) fn spawn(&mut self, id: GenId, release: &Release) {
        let now = Now::read();
        if let Err(reason) = config::check_release(release, &self.policy) {
            self.core.spawn_failed(id, reason, now);
            return;
        }
        let spec = Spec {
            release,
            listeners: &self.listen_fds,
            fdnames: self.listeners.names.as_deref(),
            notify_socket: self.notify.path(),
            env: &self.env,
            cwd: &self.paths.app_dir,
        };
        match spawn::spawn(&spec) {
            Ok(child) => {
                let change_seen = self.event_at.take();
                if let Some(t) = change_seen {
                    debug!(
                        "timing: generation {id} forked {}us after the change was seen",
                        t.elapsed().as_micros()
                    );
                }
                self.core.spawned(id, child.pid.as_raw());
                self.children.insert(id, Running { child, change_seen });
            }
            Err(e) => {
                self.core
                    .spawn_failed(id, format!("{}: {e}", release.bin.display()), Now::read())
            }
        }
    }

    /// The exec-status pipes to poll: generations whose exec outcome is not
    /// known yet.
    pub(super) fn pending_execs(&self) -> Vec<(GenId, BorrowedFd<'_>)> {
        self.children
            .iter()
            .filter_map(|(id, r)| r.child.exec_status.as_ref().map(|p| (*id, p.as_fd())))
            .collect()
    }

    /// The exec-status pipe of generation `id` is readable: the exec
    /// worked (EOF) or the child reported the step that failed.
    pub(super) fn on_exec(&mut self, id: GenId, now: Now) {
        let Some(run) = self.children.get_mut(&id) else {
            return;
        };
        let Some(outcome) = run
            .child
            .exec_status
            .as_ref()
            .and_then(|p| spawn::exec_outcome(p, run.child.pid))
        else {
            return;
        };
        run.child.exec_status = None;
        match outcome {
            Ok(()) => {
                if let Some(t) = run.change_seen.take() {
                    debug!(
                        "timing: generation {id} exec'd {}us after the change was seen",
                        t.elapsed().as_micros()
                    );
                }
            }
            // The child exits 127; reap() finds the generation already gone.
            Err(e) => self.exec_failed(id, &e, now),
        }
    }

    fn exec_failed(&mut self, id: GenId, e: &spawn::SpawnError, now: Now) {
        let bin = self
            .core
            .get(id)
            .map(|g| g.release.bin.display().to_string())
            .unwrap_or_default();
        self.core.spawn_failed(id, format!("{bin}: {e}"), now);
    }

    pub(super) fn signal(&mut self, id: GenId, sig: Sig) {
        let Some(child) = self.children.get(&id).map(|r| &r.child) else {
            return;
        };
        let signal = match sig {
            Sig::Term => Signal::SIGTERM,
            Sig::Kill => Signal::SIGKILL,
        };
        match spawn::signal_group(child, signal) {
            Ok(()) => debug!(
                "sent {signal} to generation {id} (process group {})",
                child.pid
            ),
            Err(e) => warn!(
                "sending {signal} to generation {id} (pid {}): {e}",
                child.pid
            ),
        }
    }

    /// The one place that reaps. A generation's leader (or the upgrade
    /// check) is first seen with WNOWAIT, so that while its zombie still
    /// holds the pid (and so the process group id), whatever is left of its
    /// group is killed (as systemd's KillMode=mixed does); then it is
    /// reaped. Anything else (orphans re-parented to baton) is simply
    /// reaped.
    pub(super) fn reap(&mut self, now: Now) {
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(ws) => match ws.pid() {
                    Some(pid) => pid,
                    None => return,
                },
            };
            let owner = self
                .children
                .iter()
                .find(|(_, r)| r.child.pid == pid)
                .map(|(id, _)| *id);
            if (owner.is_some() || self.upgrades.is_check(pid))
                && let Err(e) = nix::sys::signal::killpg(pid, Signal::SIGKILL)
                && e != nix::errno::Errno::ESRCH
            {
                debug!("killing the rest of process group {pid}: {e}");
            }
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(s) => s,
                Err(e) => {
                    warn!("reaping pid {pid}: {e}");
                    return;
                }
            };
            let how = describe_exit(&status);
            match owner {
                Some(id) => {
                    let run = self.children.remove(&id).expect("owner is in children");
                    // An exec failure not read yet explains the exit best.
                    match run
                        .child
                        .exec_status
                        .as_ref()
                        .and_then(|p| spawn::exec_outcome(p, pid))
                    {
                        Some(Err(e)) => self.exec_failed(id, &e, now),
                        _ => self.core.exited(id, &how, now),
                    }
                }
                None if self.upgrades.is_check(pid) => self.check_exited(&status, now),
                None => debug!("reaped pid {pid} ({how})"),
            }
        }
    }
}

pub fn describe_exit(ws: &WaitStatus) -> String {
    match ws {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if *core { ", core dumped" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}
