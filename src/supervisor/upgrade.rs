//! `baton upgrade` (SIGUSR2): baton re-executes the binary it was started
//! from, in place, as HAProxy's master and nginx do for their own binary.
//!
//! 1. **Check.** The new binary is run as a child, `handover-check`, with
//!    the handover ([`crate::handover`]) on stdin: it must say it can adopt
//!    this very state (its format, every field). It is a child like any
//!    other: its exec outcome comes back through the exec-status pipe, the
//!    one reaper reaps it, and it has [`CHECK_TIMEOUT`] to answer. Missing,
//!    not executable, crashing, refusing the format: the upgrade fails with
//!    the reason, and this image carries on serving, untouched.
//! 2. **Exec.** A fresh handover goes into a memfd; the fds it names
//!    (sockets, notify socket, lock, pidfds, pending exec pipes) and an fd
//!    to this image are left open; baton execs the new binary with its
//!    original argv. The pid stays (systemd's MainPID), so do the blocked
//!    signal mask and anything pending: a SIGCHLD during the exec waits.
//! 3. **Adopt.** The new image validates everything it was handed before it
//!    takes ownership of any fd. If something is wrong it execs the previous
//!    image again (from the fd), which takes its state back and records the
//!    upgrade as failed; nothing is closed on the way. Then it re-reads
//!    current.conf if it changed meanwhile, reaps what exited meanwhile, and
//!    carries on.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use log::{error, info};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::children::{Running, describe_exit};
use super::{Image, Supervisor, conf, intake, policy, settings};
use crate::cli::RunArgs;
use crate::clock::{Now, unix};
use crate::handover::{self, ChildFds, ConfStamp, Handover, set_cloexec};
use crate::inherit::{FromImage, Inherited};
use crate::notify::NotifySocket;
use crate::paths::AppPaths;
use crate::sockets::Listeners;
use crate::spawn::{self, Child, Exec};
use crate::state::{InstanceLock, RolloutResult, Trigger, UpgradeInfo, Writer};
use crate::systemd::Systemd;
use crate::watch::Watcher;

/// How long the new binary has to say it can adopt the handover.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of the check's output kept as the reason it refused.
const CHECK_OUTPUT: usize = 2048;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Default)]
pub(super) struct Upgrades {
    /// Upgrades asked for over baton's life (carried across upgrades).
    seq: u64,
    last: Option<UpgradeInfo>,
    check: Option<Check>,
}

/// The new binary, checking the handover.
struct Check {
    child: Child,
    /// Its stdout and stderr (non-blocking read end).
    output: OwnedFd,
    deadline: Instant,
}

impl Upgrades {
    pub(super) fn last(&self) -> Option<&UpgradeInfo> {
        self.last.as_ref()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.check.as_ref().map(|c| c.deadline)
    }

    pub(super) fn is_check(&self, pid: Pid) -> bool {
        self.check.as_ref().is_some_and(|c| c.child.pid == pid)
    }
}

impl Supervisor {
    /// SIGUSR2: check the binary at baton's own path, then hand over to it.
    pub(super) fn on_upgrade_signal(&mut self, now: Now) {
        if self.upgrades.check.is_some() {
            info!("received SIGUSR2: an upgrade is being checked already");
            return;
        }
        self.upgrades.seq += 1;
        self.upgrades.last = Some(UpgradeInfo {
            seq: self.upgrades.seq,
            path: self.image.exe.clone(),
            from_version: VERSION.to_owned(),
            to_version: None,
            result: RolloutResult::InProgress,
            reason: None,
            started_at: unix(now.wall),
            finished_at: None,
        });
        if self.core.is_shutting_down() {
            return self.fail_upgrade("baton is stopping".into(), now);
        }
        if !self.survivors.is_empty() {
            return self.fail_upgrade(
                format!(
                    "{} generation(s) of the baton before this one are still running (they are not this baton's children and cannot be handed over); try again once they have been retired",
                    self.survivors.len()
                ),
                now,
            );
        }
        let exe = self.image.exe.clone();
        info!(
            "received SIGUSR2: checking that {} can take over from baton {VERSION}",
            exe.display()
        );
        let started = (|| -> Result<Check> {
            let memfd = self.handover().to_memfd()?;
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
            nix::fcntl::fcntl(
                &r,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .context("O_NONBLOCK on the check's output")?;
            let exec = Exec::program(
                &exe,
                &[OsStr::new("handover-check")],
                &self.env,
                &self.paths.app_dir,
            )?
            .stdio(0, memfd.as_raw_fd())
            .stdio(1, w.as_raw_fd())
            .stdio(2, w.as_raw_fd());
            let child = spawn::start(&exec)?;
            Ok(Check {
                child,
                output: r,
                deadline: now.mono + CHECK_TIMEOUT,
            })
        })();
        match started {
            Ok(check) => self.upgrades.check = Some(check),
            Err(e) => self.fail_upgrade(format!("cannot run {}: {e:#}", exe.display()), now),
        }
    }

    /// The reaper reaped the check.
    pub(super) fn check_exited(&mut self, status: &WaitStatus, now: Now) {
        let Some(check) = self.upgrades.check.take() else {
            return;
        };
        let exe = self.image.exe.display().to_string();
        if let Some(Err(e)) = check
            .child
            .exec_status
            .as_ref()
            .and_then(|p| spawn::exec_outcome(p, check.child.pid))
        {
            return self.fail_upgrade(format!("cannot run {exe}: {e}"), now);
        }
        let output = read_output(&check.output);
        match status {
            WaitStatus::Exited(_, 0) => {
                info!("{exe} can take over: {}", output.trim());
                self.hand_over(now);
            }
            other => {
                let said = match output.trim() {
                    "" => "it said nothing".to_owned(),
                    text => text.lines().collect::<Vec<_>>().join("; "),
                };
                self.fail_upgrade(
                    format!(
                        "{exe} cannot take over ({} from `{exe} handover-check`): {said}",
                        describe_exit(other)
                    ),
                    now,
                );
            }
        }
    }

    /// The check did not answer in time: kill it (the reaper reaps it as an
    /// orphan) and give up.
    pub(super) fn on_upgrade_deadline(&mut self, now: Now) {
        if self
            .upgrades
            .check
            .as_ref()
            .is_none_or(|c| c.deadline > now.mono)
        {
            return;
        }
        let check = self.upgrades.check.take().expect("checked above");
        let _ = spawn::signal_group(&check.child, Signal::SIGKILL);
        self.fail_upgrade(
            format!(
                "`{} handover-check` did not answer within {}s",
                self.image.exe.display(),
                CHECK_TIMEOUT.as_secs()
            ),
            now,
        );
    }

    /// baton is exiting: a check still running goes with it (killed; its
    /// new parent reaps it).
    pub(super) fn abandon_upgrade(&mut self) {
        if let Some(check) = self.upgrades.check.take() {
            let _ = spawn::signal_group(&check.child, Signal::SIGKILL);
        }
    }

    fn fail_upgrade(&mut self, reason: String, now: Now) {
        error!("upgrade failed: {reason}; baton {VERSION} carries on");
        if let Some(u) = self.upgrades.last.as_mut() {
            u.result = RolloutResult::Failed;
            u.reason = Some(reason);
            u.finished_at = Some(unix(now.wall));
        }
    }

    /// Everything the next image needs.
    fn handover(&self) -> Handover {
        let (notify_fd, private_dir) = self.notify.parts();
        Handover {
            format: handover::FORMAT,
            version: VERSION.to_owned(),
            pid: std::process::id(),
            started: self.started,
            core: self.core.clone(),
            children: self
                .children
                .iter()
                .map(|(id, r)| ChildFds {
                    id: *id,
                    pid: r.child.pid.as_raw(),
                    pidfd: r.child.pidfd.as_ref().map(AsRawFd::as_raw_fd),
                    exec_status: r.child.exec_status.as_ref().map(AsRawFd::as_raw_fd),
                })
                .collect(),
            listen_fds: self.listen_fds.clone(),
            listen_fdnames: self.listeners.names.clone(),
            created_paths: self.listeners.created_paths().to_vec(),
            notify_fd,
            notify_path: self.notify.path().to_owned(),
            notify_private_dir: private_dir.map(ToOwned::to_owned),
            lock_fd: self.lock.as_raw_fd(),
            systemd_socket: self.systemd_socket.clone(),
            watchdog: self.watchdog,
            env: self.env.clone(),
            conf_read: self.conf_read,
            upgrade: self
                .upgrades
                .last
                .clone()
                .expect("an upgrade is in progress"),
        }
    }

    /// The check passed: exec the new image. Returns only if the exec failed.
    fn hand_over(&mut self, now: Now) {
        if self.core.is_shutting_down() {
            return self.fail_upgrade("baton is stopping".into(), now);
        }
        let exe = self.image.exe.clone();
        // Readiness check attempts are not handed over: each is killed
        // (the next image reaps it as an orphan) and its generation tries
        // again at once, under the next image.
        self.kill_checks();
        self.core.interrupt_checks(now);
        let h = self.handover();
        let memfd = match h.to_memfd() {
            Ok(fd) => fd,
            Err(e) => return self.fail_upgrade(format!("{e:#}"), now),
        };
        let previous = handover::open_own_image();
        let mut env = self.env.clone();
        env.push((handover::ENV.into(), memfd.as_raw_fd().to_string().into()));
        if let Some(p) = &previous {
            env.push((
                handover::PREVIOUS_EXE_ENV.into(),
                p.as_raw_fd().to_string().into(),
            ));
        }
        let kept = h.fds();
        let mut opened = Vec::new();
        for fd in kept.iter().copied().chain([memfd.as_raw_fd()]) {
            if set_cloexec(fd, false).is_ok() {
                opened.push(fd);
            }
        }
        info!(
            "handing over to {}: {} generation(s), {} socket(s); pid {} stays",
            exe.display(),
            h.children.len(),
            h.listen_fds.len(),
            std::process::id()
        );
        self.systemd
            .status(&format!("upgrading: handing over to {}", exe.display()));
        let err = exec(&exe.as_os_str().to_owned(), &self.image.argv, &env);
        // Still here: the exec failed. Everything is as it was.
        for fd in opened {
            let _ = set_cloexec(fd, true);
        }
        self.fail_upgrade(format!("exec {}: {err}", exe.display()), now);
    }

    /// Takes over from an earlier image of baton. If what it handed over
    /// cannot be adopted, goes back to that image (which takes its state
    /// back) before a single fd is touched.
    pub(super) fn adopt(args: &RunArgs, inherited: Inherited, from: FromImage) -> Result<Self> {
        // SAFETY: the earlier image left this fd open for us; it is only
        // borrowed until adoption succeeds.
        let memfd = unsafe { BorrowedFd::borrow_raw(from.handover) };
        let checked = Handover::read(memfd).and_then(|h| {
            if let Some(why) = &from.fail_adopt {
                bail!("{why} ({})", handover::FAIL_ADOPT_ENV);
            }
            validate(&h).map(|()| h)
        });
        let h = match checked {
            Ok(h) => h,
            Err(e) => {
                let reason = format!("{e:#}");
                if let (Some(prev), None) = (from.previous_exe, &from.refused) {
                    error!(
                        "cannot adopt the state baton handed over: {reason}; going back to the previous image"
                    );
                    let err = exec_previous(prev, from.handover, &reason, &inherited.env);
                    error!("going back to the previous image failed: {err}");
                }
                return Err(e.context("adopting the state an earlier image of baton handed over"));
            }
        };
        // Validated: take ownership of everything, close-on-exec again.
        for fd in h.fds() {
            let _ = set_cloexec(fd, true);
        }
        // SAFETY (the fds below): named by the handover, validated above,
        // left open by the previous image for this one, owned by nothing
        // else in this process.
        let close = |fd: RawFd| drop(unsafe { OwnedFd::from_raw_fd(fd) });
        close(from.handover);
        if let Some(p) = from.previous_exe {
            close(p);
        }
        let listeners =
            Listeners::adopt_from_image(&h.listen_fds, h.listen_fdnames.clone(), h.created_paths)?;
        // SAFETY: as above.
        let notify =
            unsafe { NotifySocket::adopt(h.notify_fd, h.notify_path, h.notify_private_dir)? };
        // SAFETY: as above.
        let lock = unsafe { InstanceLock::adopt(h.lock_fd)? };
        let children = h
            .children
            .iter()
            .map(|c| {
                // SAFETY: as above.
                let own = |fd: Option<RawFd>| fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                let child = Child {
                    pid: Pid::from_raw(c.pid),
                    pidfd: own(c.pidfd),
                    exec_status: own(c.exec_status),
                };
                (
                    c.id,
                    Running {
                        child,
                        change_seen: None,
                    },
                )
            })
            .collect();
        let paths = AppPaths::new(&args.config, args.app_dir.as_deref())?;
        let systemd = Systemd::connect(h.systemd_socket.as_deref(), h.watchdog);
        let now = Now::read();
        let mut last = h.upgrade;
        match &from.refused {
            None => {
                last.to_version = Some(VERSION.to_owned());
                last.result = RolloutResult::Succeeded;
                info!(
                    "upgraded in place: baton {} -> {VERSION} (pid {}); carrying on with {} generation(s)",
                    h.version,
                    std::process::id(),
                    h.children.len()
                );
            }
            Some(why) => {
                last.result = RolloutResult::Failed;
                last.reason = Some(format!(
                    "the new image could not adopt the state: {why}; went back to baton {VERSION}"
                ));
                error!(
                    "upgrade failed: {}",
                    last.reason.as_deref().unwrap_or_default()
                );
            }
        }
        last.finished_at = Some(unix(now.wall));
        let mut sup = Supervisor {
            core: h.core.with_settings(settings(args)),
            tell: Vec::new(),
            survivors: std::collections::HashMap::new(),
            boot_id: crate::procfs::boot_id(),
            strays: std::collections::HashMap::new(),
            children,
            checks: std::collections::HashMap::new(),
            listen_fds: listeners.raw_fds(),
            listeners,
            lock,
            watchdog_at: systemd.watchdog_interval().map(|d| now.mono + d),
            systemd,
            systemd_socket: h.systemd_socket,
            watchdog: h.watchdog,
            env: inherited.env,
            notify,
            watcher: Watcher::new(&paths.config)?,
            policy: policy(args),
            state: Writer::state(&paths.app_dir),
            history: Writer::history(&paths.app_dir),
            history_rev: None,
            started: h.started,
            image: Image::this(),
            paths,
            debounce: conf::Debounce::default(),
            reloads: conf::Reloads::default(),
            watch_retry: None,
            conf_read: h.conf_read,
            strangers: intake::RateLimit::new(1),
            malformed: intake::RateLimit::new(10),
            upgrades: Upgrades {
                seq: last.seq,
                last: Some(last),
                check: None,
            },
            exit: false,
            event_at: None,
        };
        sup.watch_broken(now.mono);
        // What happened while neither image was looking.
        sup.reap(now);
        if ConfStamp::of(&sup.paths.config) != sup.conf_read {
            info!(
                "{} changed during the upgrade; reading it",
                sup.paths.config.display()
            );
            sup.read_conf(Trigger::Edit, now);
        }
        Ok(sup)
    }
}

/// Everything a handover names must be what it says, before any of it is
/// taken over: this process, its sockets, its lock, its children.
fn validate(h: &Handover) -> Result<()> {
    let me = std::process::id();
    if h.pid != me {
        bail!("the handover is for pid {}, not {me}", h.pid);
    }
    for &fd in &h.listen_fds {
        is_socket(fd).with_context(|| format!("listening socket fd {fd}"))?;
    }
    is_socket(h.notify_fd).with_context(|| format!("notify socket fd {}", h.notify_fd))?;
    // SAFETY: flock on an fd number the handover names; it only asks the
    // kernel whether this open file holds the lock (it does if it is ours).
    if unsafe { nix::libc::flock(h.lock_fd, nix::libc::LOCK_EX | nix::libc::LOCK_NB) } != 0 {
        bail!("lock fd {}: {}", h.lock_fd, std::io::Error::last_os_error());
    }
    for c in &h.children {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.pid))
            .with_context(|| format!("generation {} (pid {}) is gone", c.id, c.pid))?;
        // The parent's pid is the second field after the command name, which
        // is in parentheses and may itself contain spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            bail!(
                "generation {} (pid {}) is not baton's child (parent {ppid:?})",
                c.id,
                c.pid
            );
        }
        if let Some(fd) = c.pidfd {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
                .with_context(|| format!("pidfd {fd} of generation {}", c.id))?;
            let names = info
                .lines()
                .any(|l| l.strip_prefix("Pid:").map(str::trim) == Some(&c.pid.to_string()));
            if !names {
                bail!(
                    "fd {fd} is not the pidfd of generation {} (pid {})",
                    c.id,
                    c.pid
                );
            }
        }
        if let Some(fd) = c.exec_status {
            nix::fcntl::fcntl(
                // SAFETY: borrowed for this one fcntl call.
                unsafe { BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_GETFD,
            )
            .with_context(|| format!("exec-status pipe fd {fd} of generation {}", c.id))?;
        }
    }
    Ok(())
}

fn is_socket(fd: RawFd) -> Result<()> {
    // SAFETY: borrowed for this one fstat call.
    let st = nix::sys::stat::fstat(unsafe { BorrowedFd::borrow_raw(fd) })?;
    if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
        != nix::sys::stat::SFlag::S_IFSOCK
    {
        bail!("not a socket");
    }
    Ok(())
}

/// What the check wrote (non-blocking: it has exited, so all of it is in
/// the pipe).
fn read_output(fd: &OwnedFd) -> String {
    let mut buf = vec![0u8; CHECK_OUTPUT];
    let n = nix::unistd::read(fd, &mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn cstrings<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<CString> {
    items
        .into_iter()
        .filter_map(|b| CString::new(b.to_vec()).ok())
        .collect()
}

fn env_strings(env: &[(OsString, OsString)]) -> Vec<CString> {
    let pairs: Vec<Vec<u8>> = env
        .iter()
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    cstrings(pairs.iter().map(Vec::as_slice))
}

/// execve; returns only the error.
fn exec(path: &OsString, argv: &[OsString], env: &[(OsString, OsString)]) -> nix::Error {
    let Ok(path) = CString::new(path.as_bytes().to_vec()) else {
        return nix::Error::EINVAL;
    };
    let argv = cstrings(argv.iter().map(|a| a.as_bytes()));
    match nix::unistd::execve(&path, &argv, &env_strings(env)) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Execs the image open on `previous` with the handover still in `memfd`,
/// telling it why. Returns only the error.
fn exec_previous(
    previous: RawFd,
    memfd: RawFd,
    reason: &str,
    env: &[(OsString, OsString)],
) -> nix::Error {
    let mut env = env.to_vec();
    env.push((handover::ENV.into(), memfd.to_string().into()));
    env.push((handover::REFUSED_ENV.into(), reason.into()));
    let argv: Vec<OsString> = std::env::args_os().collect();
    let argv = cstrings(argv.iter().map(|a| a.as_bytes()));
    // SAFETY: borrowed for the exec.
    let fd = unsafe { BorrowedFd::borrow_raw(previous) };
    match nix::unistd::fexecve(fd, &argv, &env_strings(&env)) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
