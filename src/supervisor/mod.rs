//! The loop: one `poll` over signalfd, inotify, the notify socket and the
//! exec-status pipes of new generations, with the nearest deadline as its
//! timeout. Everything baton does happens here, in order: events go into
//! the [`Core`], its actions come out and are carried out. Idle, baton
//! sleeps in `poll` with no timeout at all.
//!
//! - `children`: starting generations, signalling them, and the one place
//!   that reaps;
//! - `conf`: current.conf changes, debounced, read into the core;
//! - `intake`: notifications from generations, checked and rate-limited;
//! - `links`: `app.bin`/`app.cfg`, pointing at what serves.

mod children;
mod conf;
mod intake;
mod links;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, RawFd};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use log::{info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cli::{RunArgs, UsageError};
use crate::clock::Now;
use crate::config::Policy;
use crate::core::{Action, Core, GenId, Settings};
use crate::inherit::{self, Inherited};
use crate::notify::NotifySocket;
use crate::paths::AppPaths;
use crate::sockets::{self, Listeners};
use crate::state::{InstanceLock, StateWriter, Trigger};
use crate::systemd::Systemd;
use crate::watch::Watcher;
use crate::{readiness, report};

pub use conf::SETTLE;

/// The signals baton reads as events (blocked, then read from a signalfd).
const SIGNALS: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
];

/// Runs `baton run` until SIGTERM/SIGINT. Must be called while the process
/// is single-threaded: it takes the environment and forks.
pub fn run(args: RunArgs) -> Result<()> {
    // Signals first, so none is lost between here and the loop.
    let mut mask = SigSet::empty();
    for s in SIGNALS {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("blocking signals")?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    // Orphaned grandchildren are re-parented to baton, which reaps them.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;

    let inherited = Inherited::take()?;
    let mut systemd = Systemd::connect(inherited.notify_socket.as_deref(), inherited.watchdog);
    let listeners = if !inherited.listen_fds.is_empty() {
        if !args.listen.is_empty() {
            warn!(
                "systemd passed {} socket(s); ignoring --listen",
                inherited.listen_fds.len()
            );
        }
        Listeners::adopt(&inherited.listen_fds, inherited.listen_fdnames.clone())?
    } else if !args.listen.is_empty() {
        Listeners::bind(&args.listen)?
    } else {
        return Err(UsageError(
            "run: no listening socket: start baton from a systemd socket unit (LISTEN_FDS) or pass --listen ADDR"
                .into(),
        )
        .into());
    };
    let paths = AppPaths::new(&args.config, args.app_dir.as_deref())?;
    if !paths.app_dir.is_dir() {
        anyhow::bail!("app dir {} is not a directory", paths.app_dir.display());
    }
    let _lock = InstanceLock::acquire(&paths.app_dir)?;
    let notify = NotifySocket::bind(inherited.runtime_dir.as_deref(), &inherited.scratch_dir)?;
    let watcher = Watcher::new(&paths.config)?;
    let policy = Policy {
        home: inherit::home(),
        uid: nix::unistd::geteuid().as_raw(),
        insecure_permissions: args.insecure_permissions,
    };
    if args.insecure_permissions {
        warn!("--insecure-permissions: world-writable or foreign-owned releases will be run");
    }

    for (i, fd) in listeners.fds.iter().enumerate() {
        info!("listening socket fd {} -> {}", 3 + i, sockets::describe(fd));
    }
    info!(
        "watching {} (app dir {}, notify socket {})",
        paths.config.display(),
        paths.app_dir.display(),
        notify.path().display()
    );

    let settings = Settings {
        ready_timeout: args.ready_timeout,
        stop_timeout: args.stop_timeout,
        soak: args.soak,
        probation: args.probation,
        ready: readiness::Mode::Notify,
    };
    let mut sup = Supervisor {
        core: Core::new(settings),
        children: HashMap::new(),
        listen_fds: listeners.raw_fds(),
        fdnames: listeners.names.clone(),
        env: inherited.env,
        notify,
        watcher,
        policy,
        state: StateWriter::new(&paths.app_dir),
        started: SystemTime::now(),
        paths,
        debounce: conf::Debounce::default(),
        watchdog_at: systemd.watchdog_interval().map(|d| Instant::now() + d),
        strangers: intake::RateLimit::new(1),
        malformed: intake::RateLimit::new(10),
        exit: false,
        event_at: None,
    };
    if let Some(last) = links::last_live(&sup.paths.app_dir) {
        info!("{last} served when baton last ran (app.bin/app.cfg); it is the fallback");
        sup.core.remember_last_live(last);
    }
    sup.read_conf(Trigger::Startup, Now::read());
    sup.core.serve_fallback(Now::read());
    sup.main_loop(&sigfd, &mut systemd)?;
    drop(listeners);
    info!("all generations stopped; exiting");
    Ok(())
}

struct Supervisor {
    core: Core,
    /// Every generation leader not yet reaped, with its pidfd.
    children: HashMap<GenId, children::Running>,
    listen_fds: Vec<RawFd>,
    fdnames: Option<String>,
    /// The environment generations start from (see [`crate::inherit`]).
    env: Vec<(OsString, OsString)>,
    notify: NotifySocket,
    watcher: Watcher,
    policy: Policy,
    state: StateWriter,
    started: SystemTime,
    paths: AppPaths,
    debounce: conf::Debounce,
    watchdog_at: Option<Instant>,
    /// Warnings about notifications from outside every generation.
    strangers: intake::RateLimit,
    /// The same for malformed notifications from a generation.
    malformed: intake::RateLimit,
    exit: bool,
    /// When the change being rolled out was seen (for the timing log).
    event_at: Option<Instant>,
}

impl Supervisor {
    fn main_loop(&mut self, sigfd: &SignalFd, systemd: &mut Systemd) -> Result<()> {
        loop {
            self.carry_out(systemd);
            // A change that started nothing must not time a later rollout.
            self.event_at = None;
            self.publish(systemd);
            if self.exit {
                return Ok(());
            }

            let deadline = [
                self.core.next_deadline(),
                self.debounce.deadline(),
                self.watchdog_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up: waking a hair early would only spin.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128 - 1) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            // The three event sources, then the exec-status pipe of every
            // generation whose exec outcome is not known yet.
            let execs = self.pending_execs();
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.watcher.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            ];
            for (_, pipe) in &execs {
                fds.push(PollFd::new(*pipe, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            let execs: Vec<GenId> = execs.into_iter().map(|(id, _)| id).collect();
            let now = Now::read();
            for (i, id) in execs.iter().enumerate() {
                if ready[3 + i] {
                    self.on_exec(*id, now);
                }
            }
            if ready[0] {
                self.on_signals(sigfd, now);
            }
            if ready[1] {
                self.on_watch(now);
            }
            if ready[2] {
                self.on_notify(now);
            }
            self.on_settled(now);
            if let (Some(at), Some(every)) = (self.watchdog_at, systemd.watchdog_interval())
                && at <= now.mono
            {
                systemd.watchdog();
                self.watchdog_at = Some(now.mono + every);
            }
            self.core.tick(now);
        }
    }

    /// STATUS= and the state file, each only when changed.
    fn publish(&mut self, systemd: &mut Systemd) {
        let state = report::state(
            &self.core,
            &self.paths.config,
            &self.paths.app_dir,
            self.started,
            self.exit,
        );
        systemd.status(&state.status);
        self.state.write(&state);
    }

    fn carry_out(&mut self, systemd: &mut Systemd) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Spawn { id, release } => self.spawn(id, &release),
                    Action::Signal { id, sig } => self.signal(id, sig),
                    Action::Promote { id } => {
                        if let Some(g) = self.core.get(id) {
                            links::point_at(&self.paths.app_dir, &g.release);
                        }
                    }
                    Action::SystemdReady => systemd.ready(&report::status_line(&self.core)),
                    Action::SystemdReloading => systemd.reloading(),
                    Action::SystemdStopping => systemd.stopping(),
                    Action::Exit => self.exit = true,
                }
            }
        }
    }

    fn on_signals(&mut self, sigfd: &SignalFd, now: Now) {
        let mut chld = false;
        // Signals coalesce: one SIGCHLD may stand for many exits.
        while let Ok(Some(info)) = sigfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => chld = true,
                Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    info!("received {s}");
                    self.core.shutdown(now);
                }
                Ok(Signal::SIGHUP) => {
                    info!("received SIGHUP: reloading {}", self.paths.config.display());
                    self.read_conf(Trigger::Reload, now);
                }
                _ => {}
            }
        }
        if chld {
            self.reap(now);
        }
    }
}
