//! The loop: one `poll` over signalfd, inotify and the notify socket, with
//! the nearest deadline as its timeout. Everything baton does happens here,
//! in order: events go into the [`Fleet`], its actions come out and are
//! carried out. Idle, baton sleeps in `poll` with no timeout at all.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use log::{debug, error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::cli::{RunArgs, UsageError};
use crate::config::{self, Policy};
use crate::generation::{Action, Fleet, GenId, Settings, Sig, Trigger};
use crate::notify::{self, NotifySocket, Received};
use crate::sockets::{self, Listeners};
use crate::spawn::{self, Child, Spec};
use crate::state::{InstanceLock, State, StateWriter};
use crate::systemd::Systemd;
use crate::watch::{Change, Watcher};

/// Edits closer together than this are a burst: the first one acts at once,
/// the rest are folded into one read of the last content once the file has
/// been quiet this long.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The signals baton reads as events (blocked, then read from a signalfd).
const SIGNALS: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
];

/// The app dir a config path implies: `~/app/release/current.conf` -> `~/app`.
pub fn default_app_dir(config: &Path) -> PathBuf {
    let dir = config.parent().unwrap_or(Path::new("/"));
    dir.parent().unwrap_or(dir).to_owned()
}

pub fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        Ok(std::env::current_dir()
            .context("reading the current directory")?
            .join(p))
    }
}

/// Runs `baton run` until SIGTERM/SIGINT. Must be called while the process
/// is single-threaded: it edits the environment and forks.
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

    let mut systemd = Systemd::from_env();
    let listeners = match Listeners::inherit()? {
        Some(l) => {
            if !args.listen.is_empty() {
                warn!(
                    "systemd passed {} socket(s); ignoring --listen",
                    l.fds.len()
                );
            }
            l
        }
        None if !args.listen.is_empty() => Listeners::bind(&args.listen)?,
        None => {
            return Err(UsageError(
                "run: no listening socket: start baton from a systemd socket unit (LISTEN_FDS) or pass --listen ADDR"
                    .into(),
            )
            .into());
        }
    };
    let config = absolute(&args.config)?;
    let app_dir = absolute(
        &args
            .app_dir
            .clone()
            .unwrap_or_else(|| default_app_dir(&config)),
    )?;
    if !app_dir.is_dir() {
        anyhow::bail!("app dir {} is not a directory", app_dir.display());
    }
    let _lock = InstanceLock::acquire(&app_dir)?;
    let runtime_dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|p| p.is_dir());
    let notify = NotifySocket::bind(runtime_dir.as_deref())?;
    let watcher = Watcher::new(&config)?;
    let uid = nix::unistd::geteuid();
    let home = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from));
    let policy = Policy {
        home,
        uid: uid.as_raw(),
        insecure_permissions: args.insecure_permissions,
    };
    if args.insecure_permissions {
        warn!("--insecure-permissions: world-writable or foreign-owned releases will be run");
    }
    // The environment every generation starts from: baton's own, now that
    // LISTEN_*, NOTIFY_SOCKET and WATCHDOG_* have been taken out of it.
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();

    for (i, fd) in listeners.fds.iter().enumerate() {
        info!("listening socket fd {} -> {}", 3 + i, sockets::describe(fd));
    }
    info!(
        "watching {} (app dir {}, notify socket {})",
        config.display(),
        app_dir.display(),
        notify.path().display()
    );

    let settings = Settings {
        ready_timeout: args.ready_timeout,
        stop_timeout: args.stop_timeout,
        soak: args.soak,
        probation: args.probation,
    };
    let mut sup = Supervisor {
        fleet: Fleet::new(settings),
        children: HashMap::new(),
        listen_fds: listeners.raw_fds(),
        fdnames: listeners.names.clone(),
        env,
        notify,
        watcher,
        policy,
        state: StateWriter::new(&app_dir),
        started: SystemTime::now(),
        config,
        app_dir,
        debounce: Debounce::default(),
        watchdog_at: systemd.watchdog_interval().map(|d| Instant::now() + d),
        strangers: RateLimit::new(1),
        malformed: RateLimit::new(10),
        exit: false,
        event_at: None,
    };
    if let Some(last) = sup.last_live() {
        info!("{last} served when baton last ran (app.bin/app.cfg); it is the fallback");
        sup.fleet.remember_last_live(last);
    }
    sup.read_conf(Trigger::Startup, Instant::now());
    sup.fleet.serve_fallback(Instant::now());
    sup.main_loop(&sigfd, &mut systemd)?;
    drop(listeners);
    info!("all generations stopped; exiting");
    Ok(())
}

struct Supervisor {
    fleet: Fleet,
    /// Every generation leader not yet reaped, with its pidfd.
    children: HashMap<GenId, Running>,
    listen_fds: Vec<std::os::fd::RawFd>,
    fdnames: Option<String>,
    env: Vec<(OsString, OsString)>,
    notify: NotifySocket,
    watcher: Watcher,
    policy: Policy,
    state: StateWriter,
    started: SystemTime,
    config: PathBuf,
    app_dir: PathBuf,
    debounce: Debounce,
    watchdog_at: Option<Instant>,
    strangers: RateLimit,
    /// The same for malformed notifications from a generation.
    malformed: RateLimit,
    exit: bool,
    /// When the change being rolled out was seen (for the timing log).
    event_at: Option<Instant>,
}

/// A generation leader baton has not reaped yet.
struct Running {
    child: Child,
    /// When the change that started it was seen, until its exec is known
    /// (for the timing line).
    change_seen: Option<Instant>,
}

/// Leading-edge act, trailing-edge fold: see [`SETTLE`].
#[derive(Default)]
struct Debounce {
    /// The last change that counted as an edit. Whether the next one starts
    /// a burst depends on the time since this, not since baton last read
    /// the file: otherwise, after one folded burst, every later edit would
    /// land within SETTLE of the trailing read and be folded too.
    last_edit: Option<Instant>,
    trailing: Option<Instant>,
}

/// At most `burst` warnings a second for a kind of unwanted notification;
/// the rest are counted and the count told with the next warning.
struct RateLimit {
    burst: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    fn new(burst: u32) -> RateLimit {
        RateLimit {
            burst,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    fn allow(&mut self, now: Instant) -> Option<u64> {
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
    fn main_loop(&mut self, sigfd: &SignalFd, systemd: &mut Systemd) -> Result<()> {
        loop {
            self.carry_out(systemd);
            // A change that started nothing must not time a later rollout.
            self.event_at = None;
            if self.exit {
                self.publish(systemd);
                return Ok(());
            }
            self.publish(systemd);

            let deadline = [
                self.fleet.next_deadline(),
                self.debounce.trailing,
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
            let execs: Vec<GenId> = self
                .children
                .iter()
                .filter(|(_, r)| r.child.exec_status.is_some())
                .map(|(id, _)| *id)
                .collect();
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.watcher.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            ];
            for id in &execs {
                let pipe = self.children[id]
                    .child
                    .exec_status
                    .as_ref()
                    .expect("filtered above");
                fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
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
            let now = Instant::now();
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
            if self.debounce.trailing.is_some_and(|t| t <= now) {
                self.debounce.trailing = None;
                debug!(
                    "{} has been quiet for {SETTLE:?}; reading it",
                    self.config.display()
                );
                self.read_conf(Trigger::Edit, now);
            }
            if let (Some(at), Some(every)) = (self.watchdog_at, systemd.watchdog_interval())
                && at <= now
            {
                systemd.watchdog();
                self.watchdog_at = Some(now + every);
            }
            self.fleet.tick(now);
        }
    }

    /// STATUS= and the state file, each only when changed.
    fn publish(&mut self, systemd: &mut Systemd) {
        let state = State::of(
            &self.fleet,
            &self.config,
            &self.app_dir,
            self.started,
            self.exit,
        );
        systemd.status(&state.status);
        self.state.write(&state);
    }

    fn carry_out(&mut self, systemd: &mut Systemd) {
        loop {
            let actions = self.fleet.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Spawn { id, release } => self.spawn(id, &release),
                    Action::Signal { id, sig } => self.signal(id, sig),
                    Action::Promote { id } => self.update_links(id),
                    Action::SystemdReady => systemd.ready(&self.fleet.status_line()),
                    Action::SystemdReloading => systemd.reloading(),
                    Action::SystemdStopping => systemd.stopping(),
                    Action::Exit => self.exit = true,
                }
            }
        }
    }

    fn spawn(&mut self, id: GenId, release: &config::Release) {
        let now = Instant::now();
        if let Err(reason) = config::check_release(release, &self.policy) {
            self.fleet.spawn_failed(id, reason, now);
            return;
        }
        let spec = Spec {
            release,
            listeners: &self.listen_fds,
            fdnames: self.fdnames.as_deref(),
            notify_socket: self.notify.path(),
            env: &self.env,
            cwd: &self.app_dir,
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
                self.fleet.spawned(id, child.pid.as_raw());
                self.children.insert(id, Running { child, change_seen });
            }
            Err(e) => self.fleet.spawn_failed(
                id,
                format!("{}: {e}", release.bin.display()),
                Instant::now(),
            ),
        }
    }

    /// The exec-status pipe of generation `id` is readable: the exec
    /// worked (EOF) or the child reported the step that failed.
    fn on_exec(&mut self, id: GenId, now: Instant) {
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

    fn exec_failed(&mut self, id: GenId, e: &spawn::SpawnError, now: Instant) {
        let bin = self
            .fleet
            .get(id)
            .map(|g| g.release.bin.display().to_string())
            .unwrap_or_default();
        self.fleet.spawn_failed(id, format!("{bin}: {e}"), now);
    }

    fn signal(&mut self, id: GenId, sig: Sig) {
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

    /// `<app-dir>/app.bin` and `app.cfg` point at the live release, each
    /// replaced atomically (new link, then rename over the old one).
    fn update_links(&mut self, id: GenId) {
        let Some(g) = self.fleet.get(id) else { return };
        for (name, target) in [("app.bin", &g.release.bin), ("app.cfg", &g.release.cfg)] {
            let link = self.app_dir.join(name);
            let tmp = self.app_dir.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let r = std::os::unix::fs::symlink(target, &tmp)
                .and_then(|()| std::fs::rename(&tmp, &link));
            if let Err(e) = r {
                warn!("updating {} -> {}: {e}", link.display(), target.display());
            }
        }
    }

    /// The release the links name, when both exist and still point at files.
    fn last_live(&self) -> Option<config::Release> {
        let bin = std::fs::read_link(self.app_dir.join("app.bin")).ok()?;
        let cfg = std::fs::read_link(self.app_dir.join("app.cfg")).ok()?;
        let release = config::Release {
            bin: self.app_dir.join(bin),
            cfg: self.app_dir.join(cfg),
        };
        (release.bin.is_file() && release.cfg.exists()).then_some(release)
    }

    fn on_signals(&mut self, sigfd: &SignalFd, now: Instant) {
        let mut chld = false;
        // Signals coalesce: one SIGCHLD may stand for many exits.
        while let Ok(Some(info)) = sigfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => chld = true,
                Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    info!("received {s}");
                    self.fleet.shutdown(now);
                }
                Ok(Signal::SIGHUP) => {
                    info!("received SIGHUP: reloading {}", self.config.display());
                    self.read_conf(Trigger::Reload, now);
                }
                _ => {}
            }
        }
        if chld {
            self.reap(now);
        }
    }

    /// The one place that reaps. A generation's leader is first seen with
    /// WNOWAIT, so that while its zombie still holds the pid (and so the
    /// process group id), whatever is left of its group is killed (as
    /// systemd's KillMode=mixed does); then it is reaped. Anything else
    /// (orphans re-parented to baton) is simply reaped.
    fn reap(&mut self, now: Instant) {
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
            if owner.is_some()
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
                        _ => self.fleet.exited(id, &how, now),
                    }
                }
                None => debug!("reaped pid {pid} ({how})"),
            }
        }
    }

    fn on_watch(&mut self, now: Instant) {
        for change in self.watcher.read() {
            match change {
                Change::Removed => {
                    let serving = self
                        .fleet
                        .live()
                        .map(|g| g.release.name())
                        .unwrap_or_else(|| "nothing".into());
                    info!(
                        "{} was removed; still serving {serving}; waiting for it to return",
                        self.config.display()
                    );
                    continue;
                }
                Change::DirLost => {
                    warn!(
                        "{} was removed or renamed; watching its parent for its return",
                        self.watcher.dir().display()
                    );
                    continue;
                }
                Change::DirBack => {
                    info!("watching {} again", self.watcher.dir().display());
                    // A re-created directory is usually empty at first: no
                    // current.conf yet is waiting, as after Removed, not a
                    // failed rollout.
                    if std::fs::symlink_metadata(&self.config)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                    {
                        info!(
                            "{} does not exist yet; waiting for it",
                            self.config.display()
                        );
                        continue;
                    }
                }
                Change::Overflow => warn!(
                    "inotify queue overflowed; re-reading {}",
                    self.config.display()
                ),
                Change::Written | Change::Created => {}
            }
            debug!("{} changed ({change:?})", self.config.display());
            self.event_at.get_or_insert(now);
            let quiet = self
                .debounce
                .last_edit
                .is_none_or(|t| now.duration_since(t) >= SETTLE);
            if self.debounce.trailing.is_none() && quiet {
                if self.read_conf_after(change, now) {
                    self.debounce.last_edit = Some(now);
                }
            } else {
                self.debounce.last_edit = Some(now);
                self.debounce.trailing = Some(now + SETTLE);
            }
        }
    }

    /// Reads current.conf after `change`; false when it is evidently still
    /// being written (so the change did not count as an edit).
    fn read_conf_after(&mut self, change: Change, now: Instant) -> bool {
        if change == Change::Created
            && let Err(e) = config::load(&self.config, &self.policy)
            && e.maybe_partial
        {
            debug!("{e} (still being written?); waiting for the write to finish");
            return false;
        }
        self.read_conf(Trigger::Edit, now);
        true
    }

    fn read_conf(&mut self, trigger: Trigger, now: Instant) {
        match config::load(&self.config, &self.policy) {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    warn!("{}: {w}", self.config.display());
                }
                self.fleet.want(parsed.release, trigger, now);
            }
            Err(e) => {
                let serving = self
                    .fleet
                    .live()
                    .map(|g| g.release.name())
                    .unwrap_or_else(|| "nothing".into());
                error!("{e}; still serving {serving}");
                self.fleet.conf_invalid(e.to_string(), trigger);
            }
        }
    }

    fn on_notify(&mut self, now: Instant) {
        for _ in 0..notify::BATCH {
            let Some(msg) = self.notify.recv() else {
                return;
            };
            match msg {
                Received::Dropped { pid, reason } => {
                    if let Some(n) = self.strangers.allow(now) {
                        let from = pid.map(|p| format!(" from pid {p}")).unwrap_or_default();
                        warn!(
                            "{}: dropped a notification{from}: {reason}{}",
                            self.notify.path().display(),
                            suppressed(n)
                        );
                    }
                }
                Received::Message { pid, text } => match self.owner(pid) {
                    None => {
                        if let Some(n) = self.strangers.allow(now) {
                            warn!(
                                "{}: ignored {:?} from pid {pid} ({}), which is not part of any generation{}",
                                self.notify.path().display(),
                                String::from_utf8_lossy(&text[..text.len().min(80)]),
                                comm(pid),
                                suppressed(n)
                            );
                        }
                    }
                    Some(id) => match notify::parse(&text) {
                        Err(e) => {
                            if let Some(n) = self.malformed.allow(now) {
                                warn!(
                                    "generation {id} (pid {pid}) sent a malformed notification: {e}{}",
                                    suppressed(n)
                                )
                            }
                        }
                        Ok(m) => {
                            if let Some(s) = m.status {
                                self.fleet.app_status(id, s);
                            }
                            if m.ready {
                                debug!("READY=1 from generation {id} (pid {pid})");
                                self.fleet.ready(id, now);
                            }
                        }
                    },
                },
            }
        }
    }

    /// The generation a sender belongs to: its leader, or a process in the
    /// leader's process group (an app's own workers).
    fn owner(&self, pid: i32) -> Option<GenId> {
        if let Some(id) = self.fleet.by_pid(pid) {
            return Some(id);
        }
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok()?;
        self.fleet.by_pid(pgid.as_raw())
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
