//! Generations and their readiness checks as processes: starting them,
//! learning whether their exec worked, signalling them, reading a check's
//! output, and reaping.
//!
//! The rules: baton never waits for a child. An exec's outcome comes back
//! through the child's close-on-exec pipe ([`crate::spawn`]), which the loop
//! polls like any other event; so is a check's output. Exactly one place
//! calls `waitpid` ([`Supervisor::reap`]), on SIGCHLD, until nothing is
//! left; it maps pids to generations and checks, and because baton is a
//! child subreaper it also reaps orphaned grandchildren.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use log::{debug, warn};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};

use super::Supervisor;
use crate::clock::Now;
use crate::config::{self, Release};
use crate::core::{GenId, Sig};
use crate::spawn::{self, Child, Exec, Spec};
use crate::stop::StopTarget;

/// At most this much of one check attempt's output goes to the log; the
/// rest is read and dropped.
const CHECK_LOG_BYTES: usize = 16 * 1024;
/// A line longer than this is logged in pieces.
const CHECK_LINE_BYTES: usize = 1024;

/// A generation leader baton has not reaped yet.
pub(super) struct Running {
    pub(super) child: Child,
    /// When the change that started it was seen, until its exec is known
    /// (for the timing line).
    pub(super) change_seen: Option<Instant>,
}

/// A readiness check attempt (`/bin/sh -c CMD`, in a process group of its
/// own) baton has not reaped yet. At most one per generation.
pub(super) struct CheckRun {
    child: Child,
    /// Read end of the pipe holding its stdout and stderr (non-blocking);
    /// None once it said EOF.
    output: Option<OwnedFd>,
    /// The start of a line not ended yet.
    partial: Vec<u8>,
    /// Bytes of output logged so far.
    logged: usize,
    /// The last line it printed, for the failure's story.
    last_line: Option<String>,
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
                self.core
                    .started_at_tick(id, crate::procfs::start_time(child.pid.as_raw()));
                self.children.insert(id, Running { child, change_seen });
            }
            Err(e) => {
                self.core
                    .spawn_failed(id, format!("{}: {e}", release.bin.display()), Now::read())
            }
        }
    }

    /// Starts a readiness check attempt for generation `id`: `/bin/sh -c
    /// command` in the app dir, with what its release's generations get as
    /// environment (less LISTEN_*/NOTIFY_SOCKET) plus BATON_PID (the
    /// generation leader's pid), BATON_GENERATION, BATON_RELEASE and
    /// BATON_APP_DIR; stdin /dev/null, stdout and stderr into a pipe the
    /// loop reads.
    pub(super) fn run_check(&mut self, id: GenId, command: &str, now: Now) {
        let Some(g) = self.core.get(id) else { return };
        if self.checks.contains_key(&id) {
            warn!("generation {id}: a check attempt is still running; not starting another");
            return;
        }
        let mut env = spawn::release_environment(&self.env, &g.release);
        env.retain(|(k, _)| !k.to_str().is_some_and(|k| k.starts_with("BATON_")));
        for (k, v) in [
            ("BATON_PID", g.pid.unwrap_or(0).to_string().into()),
            ("BATON_GENERATION", id.to_string().into()),
            ("BATON_RELEASE", g.release.name().into()),
            ("BATON_APP_DIR", self.paths.app_dir.clone().into_os_string()),
        ] {
            env.push((OsString::from(k), v));
        }
        match start_check(command, &env, &self.paths.app_dir) {
            Ok((child, output)) => {
                debug!(
                    "generation {id}: check attempt started as pid {} (`{command}`)",
                    child.pid
                );
                self.checks.insert(
                    id,
                    CheckRun {
                        child,
                        output: Some(output),
                        partial: Vec::new(),
                        logged: 0,
                        last_line: None,
                    },
                );
            }
            Err(e) => self
                .core
                .check_exited(id, false, format!("cannot start: {e}"), now),
        }
    }

    /// Kills generation `id`'s running check attempt (its whole process
    /// group); the reaper reports its end.
    pub(super) fn cancel_check(&mut self, id: GenId) {
        if let Some(run) = self.checks.get(&id)
            && let Err(e) = spawn::signal_group(&run.child, Signal::SIGKILL)
        {
            warn!(
                "killing the check of generation {id} (pid {}): {e}",
                run.child.pid
            );
        }
    }

    /// Kills every running check attempt and forgets it (`baton upgrade`).
    pub(super) fn kill_checks(&mut self) {
        for (id, run) in self.checks.drain() {
            debug!(
                "generation {id}: killing its check attempt (pid {}) before the handover",
                run.child.pid
            );
            let _ = spawn::signal_group(&run.child, Signal::SIGKILL);
        }
    }

    /// The output pipes of running checks, to poll.
    pub(super) fn check_outputs(&self) -> Vec<(GenId, BorrowedFd<'_>)> {
        self.checks
            .iter()
            .filter_map(|(id, c)| c.output.as_ref().map(|p| (*id, p.as_fd())))
            .collect()
    }

    /// A check's output pipe is readable: log what it printed, at debug.
    pub(super) fn on_check_output(&mut self, id: GenId) {
        if let Some(run) = self.checks.get_mut(&id) {
            run.read_output(id);
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
                debug!(
                    "generation {id} (pid {}) exec'd; its exec-status pipe is closed",
                    run.child.pid
                );
                if let Some(t) = run.change_seen.take() {
                    debug!(
                        "timing: generation {id} exec'd {}us after the change was seen",
                        t.elapsed().as_micros()
                    );
                }
                self.core.execd(id, now);
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

    /// Signals generation `id`: its stop signal to its group or its leader,
    /// SIGKILL always to the whole group.
    pub(super) fn signal(&mut self, id: GenId, sig: Sig) {
        let Some(child) = self
            .children
            .get(&id)
            .map(|r| &r.child)
            .or_else(|| self.survivors.get(&id))
        else {
            return;
        };
        let (signal, target) = match sig {
            Sig::Stop(stop) => (stop.signal.signal(), stop.target),
            Sig::Kill => (Signal::SIGKILL, StopTarget::Group),
        };
        let (r, whom) = match target {
            StopTarget::Group => (spawn::signal_group(child, signal), "process group"),
            StopTarget::Leader => (spawn::signal_leader(child, signal), "leader only, pid"),
        };
        match r {
            Ok(()) => debug!("sent {signal} to generation {id} ({whom} {})", child.pid),
            Err(e) => warn!(
                "sending {signal} to generation {id} (pid {}): {e}",
                child.pid
            ),
        }
    }

    /// The pids of the readiness check attempts running (baton's children,
    /// each leading a process group of its own).
    pub(super) fn check_pids(&self) -> Vec<i32> {
        self.checks.values().map(|c| c.child.pid.as_raw()).collect()
    }

    /// The one place that reaps. A generation's leader (or the upgrade
    /// check) is first seen with WNOWAIT, so that while its zombie still
    /// holds the pid (and so the process group id), whatever is left of its
    /// group is killed (as systemd's KillMode=mixed does); then it is
    /// reaped. Anything else (orphans re-parented to baton) is simply
    /// reaped. Then baton's children outside every generation's process
    /// group are retired (`strays`).
    pub(super) fn reap(&mut self, now: Now) {
        // The process groups of leaders reaped here, killed already.
        let mut killed_groups = Vec::new();
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => match ws.pid() {
                    Some(pid) => pid,
                    None => break,
                },
            };
            let owner = self
                .children
                .iter()
                .find(|(_, r)| r.child.pid == pid)
                .map(|(id, _)| *id);
            let check = self
                .checks
                .iter()
                .find(|(_, c)| c.child.pid == pid)
                .map(|(id, _)| *id);
            if (owner.is_some() || check.is_some() || self.upgrades.is_check(pid))
                && let Err(e) = nix::sys::signal::killpg(pid, Signal::SIGKILL)
                && e != nix::errno::Errno::ESRCH
            {
                debug!("killing the rest of process group {pid}: {e}");
            }
            if owner.is_some() || check.is_some() {
                killed_groups.push(pid.as_raw());
            }
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(s) => s,
                Err(e) => {
                    warn!("reaping pid {pid}: {e}");
                    break;
                }
            };
            let how = describe_exit(&status);
            match (owner, check) {
                (Some(id), _) => {
                    let run = self.children.remove(&id).expect("owner is in children");
                    // An exec failure not read yet explains the exit best;
                    // an exec success not read yet still happened first.
                    match run
                        .child
                        .exec_status
                        .as_ref()
                        .and_then(|p| spawn::exec_outcome(p, pid))
                    {
                        Some(Err(e)) => self.exec_failed(id, &e, now),
                        Some(Ok(())) => {
                            self.core.execd(id, now);
                            self.core.exited(id, &how, now);
                        }
                        None => self.core.exited(id, &how, now),
                    }
                }
                (None, Some(id)) => {
                    let mut run = self.checks.remove(&id).expect("check is in checks");
                    run.read_output(id);
                    run.flush_partial(id);
                    let passed = matches!(status, WaitStatus::Exited(_, 0));
                    let how = match run
                        .child
                        .exec_status
                        .as_ref()
                        .and_then(|p| spawn::exec_outcome(p, pid))
                    {
                        Some(Err(e)) => format!("cannot run /bin/sh: {e}"),
                        _ => match &run.last_line {
                            Some(line) if !passed => format!("{how}: {line}"),
                            _ => how,
                        },
                    };
                    self.core.check_exited(id, passed, how, now);
                }
                (None, None) if self.upgrades.is_check(pid) => self.check_exited(&status, now),
                (None, None) => {
                    debug!("reaped pid {pid} ({how})");
                    self.stray_reaped(pid.as_raw(), &how);
                }
            }
        }
        self.retire_strays(&killed_groups, now.mono);
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

/// Forks `/bin/sh -c command` with `env` in `cwd`: stdin /dev/null, stdout
/// and stderr into a fresh pipe whose read end (non-blocking) is returned.
fn start_check(
    command: &str,
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> Result<(Child, OwnedFd), String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("pipe: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let exec = Exec::program(
        Path::new("/bin/sh"),
        &[OsStr::new("-c"), OsStr::new(command)],
        env,
        cwd,
    )
    .map_err(|e| e.to_string())?
    .stdio(0, null.as_raw_fd())
    .stdio(1, w.as_raw_fd())
    .stdio(2, w.as_raw_fd());
    let child = spawn::start(&exec).map_err(|e| format!("/bin/sh: {e}"))?;
    // The child holds its own copies now; ours must go, or EOF never comes.
    drop((w, null));
    Ok((child, r))
}

impl CheckRun {
    /// Reads what is there (never blocks), logging whole lines at debug.
    fn read_output(&mut self, id: GenId) {
        let mut buf = [0u8; 4096];
        // Bounded per wake-up, so a check that floods cannot hold the loop.
        for _ in 0..16 {
            let Some(pipe) = &self.output else { return };
            match nix::unistd::read(pipe, &mut buf) {
                Ok(0) => {
                    self.output = None;
                    return;
                }
                Ok(n) => self.take(id, &buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    debug!("generation {id}: reading its check's output: {e}");
                    self.output = None;
                    return;
                }
            }
        }
    }

    fn take(&mut self, id: GenId, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.line(id, &line[..i]);
        }
        if self.partial.len() > CHECK_LINE_BYTES {
            let line = std::mem::take(&mut self.partial);
            self.line(id, &line);
        }
    }

    fn flush_partial(&mut self, id: GenId) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(id, &line);
        }
    }

    fn line(&mut self, id: GenId, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let shown: String = text.chars().take(200).collect();
        self.last_line = Some(shown);
        if self.logged < CHECK_LOG_BYTES {
            self.logged += bytes.len();
            debug!("generation {id}: check: {text}");
            if self.logged >= CHECK_LOG_BYTES {
                debug!("generation {id}: check: (the rest of this attempt's output is not logged)");
            }
        }
    }
}
