//! The loop: one `poll` over signalfd, inotify, the notify socket, the
//! exec-status pipes of new generations and the output pipes of readiness
//! checks, with the nearest deadline as its timeout. Everything baton does
//! happens here, in order: events go into the [`Core`], its actions come
//! out and are carried out. Idle, baton sleeps in `poll` with no timeout at
//! all.
//!
//! - `carry`: what a new baton believes from the one before it;
//! - `children`: starting generations and their readiness checks,
//!   signalling them, and the one place that reaps;
//! - `conf`: current.conf changes, debounced, read into the core;
//! - `intake`: notifications from generations, checked and rate-limited;
//! - `links`: `app.bin`/`app.cfg`, pointing at what serves;
//! - `strays`: processes that left their generation's process group and
//!   were orphaned to baton (a release that daemonized): retired;
//! - `survivors`: generations of a baton killed before this one that are
//!   still running: adopted, then retired once this baton serves;
//! - `upgrade`: `baton upgrade` (SIGUSR2): checking a new binary, handing
//!   everything over to it in place, and adopting it as the new image.

mod carry;
mod children;
mod conf;
mod intake;
mod links;
mod strays;
mod survivors;
mod upgrade;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use log::{info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cli::{RunArgs, UsageError};
use crate::clock::Now;
use crate::config::Policy;
use crate::core::{Action, Core, GenId, Settings};
use crate::handover::ConfStamp;
use crate::inherit::{self, Inherited};
use crate::notify::NotifySocket;
use crate::paths::AppPaths;
use crate::report;
use crate::sockets::{self, Listeners};
use crate::state::{InstanceLock, Trigger, Writer};
use crate::systemd::Systemd;
use crate::watch::Watcher;

pub use conf::SETTLE;

/// The signals baton reads as events (blocked, then read from a signalfd).
/// The mask survives an exec, so none is lost across `baton upgrade`.
const SIGNALS: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR2,
];

/// Runs `baton run` until SIGTERM/SIGINT. Must be called while the process
/// is single-threaded: it takes the environment and forks.
pub fn run(args: RunArgs) -> Result<()> {
    // What baton was given, first: before it opens an fd of its own that
    // could be mistaken for an inherited socket.
    let mut inherited = Inherited::take()?;
    check_fd_limit(inherited.listen_fds.len().max(args.listen.len()))?;
    // Signals next, so none is lost between here and the loop.
    let mut mask = SigSet::empty();
    for s in SIGNALS {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("blocking signals")?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    // Orphaned grandchildren are re-parented to baton, which reaps them.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;

    let mut sup = match inherited.upgrade.take() {
        Some(from) => Supervisor::adopt(&args, inherited, from)?,
        None => Supervisor::start(&args, inherited)?,
    };
    sup.main_loop(&sigfd)?;
    info!("all generations stopped; exiting");
    Ok(())
}

/// The open files baton needs beyond its sockets: its own (stdio,
/// signalfd, inotify, notify and systemd sockets, lock) and room for a
/// dozen generations at once (a pidfd each, an exec-status pipe while one
/// starts, the state file being replaced).
const FDS_BESIDES_SOCKETS: u64 = 32;

/// Refuses to run with an RLIMIT_NOFILE too low for baton: otherwise it
/// would fail later, at random, while starting a generation or writing its
/// state ("Too many open files"), with a generation half started.
fn check_fd_limit(sockets: usize) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit};
    let need = FDS_BESIDES_SOCKETS + 2 * sockets as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < need {
        anyhow::bail!(
            "RLIMIT_NOFILE is {soft} (hard limit {hard}): baton needs at least {need} open files ({FDS_BESIDES_SOCKETS}, and 2 per listening socket); raise it (LimitNOFILE= in the unit, ulimit -n)"
        );
    }
    Ok(())
}

/// What baton was started as, for re-executing itself (`baton upgrade`).
struct Image {
    /// The binary's path as baton was started (a symlink stays a symlink,
    /// so an upgrade runs whatever it points at then).
    exe: PathBuf,
    argv: Vec<OsString>,
    /// When this image started.
    started: SystemTime,
}

impl Image {
    fn this() -> Image {
        let argv: Vec<OsString> = std::env::args_os().collect();
        let exe = argv
            .first()
            .map(PathBuf::from)
            .filter(|p| p.as_os_str().as_encoded_bytes().contains(&b'/'))
            .and_then(|p| crate::paths::absolute(&p).ok())
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        Image {
            exe,
            argv,
            started: SystemTime::now(),
        }
    }
}

/// A message for systemd the core asked for, sent once the state file
/// says the same (see `publish`).
#[derive(Debug, Clone, Copy)]
enum Tell {
    Ready,
    Reloading,
    Stopping,
}

struct Supervisor {
    core: Core,
    /// What to tell systemd after the next state file write.
    tell: Vec<Tell>,
    /// Every generation leader not yet reaped, with its pidfd.
    children: HashMap<GenId, children::Running>,
    /// Generations of the baton before this one, still running (not this
    /// baton's children; see `survivors`).
    survivors: survivors::Survivors,
    /// This boot's id: a survivor must be from this boot.
    boot_id: Option<String>,
    /// Orphans outside every generation's process group, being retired.
    strays: strays::Strays,
    listeners: Listeners,
    /// Running readiness check attempts, by generation.
    checks: HashMap<GenId, children::CheckRun>,
    listen_fds: Vec<RawFd>,
    /// Held for baton's life: one baton per app dir.
    lock: InstanceLock,
    systemd: Systemd,
    /// NOTIFY_SOCKET and WATCHDOG_USEC as inherited (for a new image).
    systemd_socket: Option<OsString>,
    watchdog: Option<Duration>,
    /// The environment generations start from (see [`crate::inherit`]).
    env: Vec<(OsString, OsString)>,
    notify: NotifySocket,
    watcher: Watcher,
    policy: Policy,
    state: Writer,
    history: Writer,
    /// The history's revision last handed to `history`.
    history_rev: Option<u64>,
    /// When baton (the process) started.
    started: SystemTime,
    image: Image,
    paths: AppPaths,
    debounce: conf::Debounce,
    /// SIGHUPs, debounced likewise.
    reloads: conf::Reloads,
    /// While current.conf cannot be watched: when to try again, and the
    /// backoff.
    watch_retry: Option<(Instant, Duration)>,
    /// current.conf as baton last read it.
    conf_read: Option<ConfStamp>,
    watchdog_at: Option<Instant>,
    /// Warnings about notifications from outside every generation.
    strangers: intake::RateLimit,
    /// The same for malformed notifications from a generation.
    malformed: intake::RateLimit,
    upgrades: upgrade::Upgrades,
    exit: bool,
    /// When the change being rolled out was seen (for the timing log).
    event_at: Option<Instant>,
}

fn settings(args: &RunArgs) -> Settings {
    Settings {
        ready_timeout: args.ready_timeout,
        stop_timeout: args.stop_timeout,
        soak: args.soak,
        probation: args.probation,
        ready: args.ready.clone(),
        stop: args.stop,
    }
}

fn policy(args: &RunArgs) -> Policy {
    Policy {
        home: inherit::home(),
        uid: nix::unistd::geteuid().as_raw(),
        insecure_permissions: args.insecure_permissions,
    }
}

impl Supervisor {
    /// A fresh start: take the sockets, lock the app dir, bind the notify
    /// socket, and roll out what current.conf names (or what served last).
    fn start(args: &RunArgs, inherited: Inherited) -> Result<Supervisor> {
        let systemd = Systemd::connect(inherited.notify_socket.as_deref(), inherited.watchdog);
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
            return Err(UsageError(format!(
                "run: no listening socket: start baton from a systemd socket unit (LISTEN_FDS) or pass --listen ADDR{}",
                inherited
                    .listen_ignored
                    .as_deref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default()
            ))
            .into());
        };
        let paths = AppPaths::new(&args.config, args.app_dir.as_deref())?;
        if !paths.app_dir.is_dir() {
            anyhow::bail!("app dir {} is not a directory", paths.app_dir.display());
        }
        let lock = InstanceLock::acquire(&paths.app_dir)?;
        let notify = NotifySocket::bind(inherited.runtime_dir.as_deref(), &inherited.scratch_dir)?;
        let watcher = Watcher::new(&paths.config)?;
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
        let image = Image::this();
        let settings = settings(args);
        info!(
            "releases are ready by {} unless current.conf says otherwise; stopped with {}",
            settings.ready, settings.stop
        );
        let mut sup = Supervisor {
            core: Core::new(settings),
            tell: Vec::new(),
            children: HashMap::new(),
            checks: HashMap::new(),
            survivors: HashMap::new(),
            boot_id: crate::procfs::boot_id(),
            strays: HashMap::new(),
            listen_fds: listeners.raw_fds(),
            listeners,
            lock,
            watchdog_at: systemd.watchdog_interval().map(|d| Instant::now() + d),
            systemd,
            systemd_socket: inherited.notify_socket,
            watchdog: inherited.watchdog,
            env: inherited.env,
            notify,
            watcher,
            policy: policy(args),
            state: Writer::state(&paths.app_dir),
            history: Writer::history(&paths.app_dir),
            history_rev: None,
            started: image.started,
            image,
            paths,
            debounce: conf::Debounce::default(),
            reloads: conf::Reloads::default(),
            watch_retry: None,
            conf_read: None,
            strangers: intake::RateLimit::new(1),
            malformed: intake::RateLimit::new(10),
            upgrades: upgrade::Upgrades::default(),
            exit: false,
            event_at: None,
        };
        if let Some(last) = links::last_live(&sup.paths.app_dir) {
            info!("{last} served when baton last ran (app.bin/app.cfg); it is the fallback");
            sup.core.remember_last_live(last);
        }
        sup.watch_broken(Instant::now());
        sup.carry_over();
        sup.adopt_survivors(Now::read());
        sup.read_conf(Trigger::Startup, Now::read());
        sup.core.serve_fallback(Now::read());
        Ok(sup)
    }

    fn main_loop(&mut self, sigfd: &SignalFd) -> Result<()> {
        loop {
            self.carry_out();
            // A change that started nothing must not time a later rollout.
            self.event_at = None;
            self.publish();
            // Every generation is gone; strays being retired go first too
            // (nothing else would stop them once baton has exited).
            if self.exit && self.strays.is_empty() {
                self.abandon_upgrade();
                return Ok(());
            }

            let deadline = [
                self.core.next_deadline(),
                self.debounce.deadline(),
                self.reloads.deadline(),
                self.strays_deadline(),
                self.state.retry_at(),
                self.history.retry_at(),
                self.watch_retry.map(|(at, _)| at),
                self.upgrades.deadline(),
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
            // Signals and notifications; current.conf's watch (unless the
            // kernel refused it); the exec-status pipe of every generation
            // whose exec outcome is not known yet; the output of every
            // running check; the pidfd of each survivor (readable once it
            // exits).
            let execs = self.pending_execs();
            let outputs = self.check_outputs();
            let survivors: Vec<(GenId, BorrowedFd<'_>)> = self
                .survivors
                .iter()
                .filter_map(|(id, c)| c.pidfd.as_ref().map(|fd| (*id, fd.as_fd())))
                .collect();
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            ];
            let watch_at = self.watcher.fd().map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let execs_at = fds.len();
            for (_, pipe) in &execs {
                fds.push(PollFd::new(*pipe, PollFlags::POLLIN));
            }
            let outputs_at = fds.len();
            for (_, pipe) in &outputs {
                fds.push(PollFd::new(*pipe, PollFlags::POLLIN));
            }
            let survivors_at = fds.len();
            for (_, fd) in &survivors {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
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
            let outputs: Vec<GenId> = outputs.into_iter().map(|(id, _)| id).collect();
            let survivors: Vec<GenId> = survivors.into_iter().map(|(id, _)| id).collect();
            let now = Now::read();
            for (i, id) in execs.iter().enumerate() {
                if ready[execs_at + i] {
                    self.on_exec(*id, now);
                }
            }
            for (i, id) in outputs.iter().enumerate() {
                if ready[outputs_at + i] {
                    self.on_check_output(*id);
                }
            }
            for (i, id) in survivors.iter().enumerate() {
                if ready[survivors_at + i] {
                    self.on_survivor_exit(*id, now);
                }
            }
            // Notifications before SIGCHLD (as systemd does): a READY=1
            // sent just before its sender exited must be read while the
            // sender is still known as its generation's.
            if ready[1] {
                self.on_notify(now);
            }
            if ready[0] {
                self.on_signals(sigfd, now);
            }
            if watch_at.is_some_and(|i| ready[i]) {
                self.on_watch(now);
            }
            self.on_watch_retry(now);
            self.on_settled(now);
            self.on_reload_due(now);
            self.kill_strays(now.mono);
            self.on_upgrade_deadline(now);
            if let (Some(at), Some(every)) = (self.watchdog_at, self.systemd.watchdog_interval())
                && at <= now.mono
            {
                self.systemd.watchdog();
                self.watchdog_at = Some(now.mono + every);
            }
            self.core.tick(now);
        }
    }

    /// The state file (and the history file, when the history changed),
    /// then what systemd is to be told (READY=1,
    /// RELOADING=1, STOPPING=1 as the core asked, and STATUS=), each only
    /// when changed. In that order: whoever learns something from systemd
    /// (`systemctl start` returning, a changed StatusText) and then reads
    /// the state file finds it saying at least as much.
    fn publish(&mut self) {
        let state = report::state(
            &self.core,
            &report::Daemon {
                config: &self.paths.config,
                app_dir: &self.paths.app_dir,
                started: self.started,
                image_started: self.image.started,
                stopping: self.exit,
                last_upgrade: self.upgrades.last(),
                boot_id: self.boot_id.as_deref(),
            },
        );
        let now = Instant::now();
        let mut status = state.status.clone();
        self.state.write(&state, now);
        // The history, only when it changed (a rollout began or ended) or a
        // failed write is due again: it is the larger file by far.
        let rev = self.core.history_revision();
        if self.history_rev != Some(rev) || self.history.retry_at().is_some_and(|at| at <= now) {
            self.history.write(&report::history(&self.core), now);
            self.history_rev = Some(rev);
        }
        for w in [&self.state, &self.history] {
            if let Some(why) = w.failing() {
                status.push_str(&format!("; {} not written: {why}", w.path().display()));
            }
        }
        for tell in std::mem::take(&mut self.tell) {
            match tell {
                Tell::Ready => self.systemd.ready(&status),
                Tell::Reloading => self.systemd.reloading(),
                Tell::Stopping => self.systemd.stopping(),
            }
        }
        self.systemd.status(&status);
    }

    fn carry_out(&mut self) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Spawn { id, release } => self.spawn(id, &release),
                    Action::Signal { id, sig } => self.signal(id, sig),
                    Action::Check { id, command } => self.run_check(id, &command, Now::read()),
                    Action::CancelCheck { id } => self.cancel_check(id),
                    Action::Promote { id } => {
                        if let Some(g) = self.core.get(id) {
                            links::point_at(&self.paths.app_dir, &g.release);
                        }
                    }
                    // Sent by publish(), after the state file.
                    Action::SystemdReady => self.tell.push(Tell::Ready),
                    Action::SystemdReloading => self.tell.push(Tell::Reloading),
                    Action::SystemdExtend { more } => self.systemd.extend(more),
                    Action::SystemdStopping => self.tell.push(Tell::Stopping),
                    Action::Exit => self.exit = true,
                }
            }
        }
    }

    fn on_signals(&mut self, sigfd: &SignalFd, now: Now) {
        let mut chld = false;
        let mut upgrade = false;
        // Signals coalesce: one SIGCHLD may stand for many exits.
        while let Ok(Some(info)) = sigfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => chld = true,
                Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    info!("received {s}");
                    self.core.shutdown(now);
                }
                Ok(Signal::SIGHUP) => self.on_sighup(now),
                Ok(Signal::SIGUSR2) => upgrade = true,
                _ => {}
            }
        }
        if chld {
            self.reap(now);
        }
        // After reaping: the handover must not name a generation that is
        // already gone.
        if upgrade {
            self.on_upgrade_signal(now);
        }
    }
}
