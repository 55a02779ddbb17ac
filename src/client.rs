//! The operator commands: `baton status`, `reload`, `switch`, `releases`.
//!
//! They talk to a running baton only through the file system: the state
//! file it replaces atomically on every change (`<app-dir>/baton.state`), the
//! flock it holds on `<app-dir>/baton.lock` while it runs, current.conf, and
//! SIGHUP for `reload`. Waiting for an outcome is [`wait_for_state`]: inotify
//! on the app dir, woken when a new state file is renamed into place (or the
//! lock file is closed, which is how a baton that died is noticed), and a
//! `poll` whose timeout is what is left of the deadline. No polling loops.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use inotify::{EventMask, Inotify, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{Command, Target, format_span};
use crate::config;
use crate::state::{self, LOCK_FILE, ReleaseInfo, RolloutInfo, STATE_FILE, State};
use crate::supervisor::{absolute, default_app_dir};

/// Serving, and the last rollout did not fail.
pub const EXIT_OK: u8 = 0;
/// The last rollout failed, nothing serves, or a wait ended badly.
pub const EXIT_FAILED: u8 = 1;
/// No baton holds the app dir's lock.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// How long `status` and `reload` wait for a baton that holds its lock but
/// has not written its first state file yet (it writes one at once).
const FIRST_STATE: Duration = Duration::from_secs(2);

/// Runs a client command; returns the exit code.
pub fn main(command: Command) -> Result<u8> {
    match command {
        Command::Status { target, json } => status(&target, json),
        Command::Reload { target, timeout } => reload(&target, timeout),
        Command::Switch {
            release,
            target,
            wait,
        } => switch(&release, &target, wait),
        Command::Releases { target } => releases(&target),
        other => bail!("{other:?} is not a client command"),
    }
}

/// Where a client command looks: current.conf, its directory, the app dir.
struct Paths {
    config: PathBuf,
    dir: PathBuf,
    app_dir: PathBuf,
}

impl Paths {
    fn of(target: &Target) -> Result<Paths> {
        let config = absolute(&target.config)?;
        let dir = config
            .parent()
            .with_context(|| format!("{} has no directory", config.display()))?
            .to_owned();
        let app_dir = match &target.app_dir {
            Some(d) => absolute(d)?,
            None => default_app_dir(&config),
        };
        Ok(Paths {
            config,
            dir,
            app_dir,
        })
    }

    fn not_running(&self) -> String {
        format!(
            "baton is not running for {} (nothing holds {})",
            self.app_dir.display(),
            self.app_dir.join(LOCK_FILE).display()
        )
    }
}

// ---- waiting on the state file ----

/// How a [`wait_for_state`] ended.
enum Waited<T> {
    /// The check was satisfied.
    Done(T),
    /// The deadline passed; the status line of the last state read, if any.
    TimedOut(Option<String>),
    /// baton stopped holding its lock (it exited or was killed).
    NotRunning,
}

/// Waits until `check` returns something for the state file, baton stops
/// running, or `deadline` passes. The state is checked once at once (after
/// the watch is in place, so no change can slip between the two), then each
/// time baton renames a new state file into place. A baton that dies closes
/// the lock file it holds open for writing: IN_CLOSE_WRITE on it wakes the
/// wait to notice.
fn wait_for_state<T>(
    app_dir: &Path,
    deadline: Instant,
    mut check: impl FnMut(&State) -> Option<T>,
) -> Result<Waited<T>> {
    // CLOEXEC and NONBLOCK (set by the inotify crate): reads never block;
    // poll() does the waiting.
    let mut inotify = Inotify::init().context("inotify_init")?;
    inotify
        .watches()
        .add(
            app_dir,
            WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR,
        )
        .with_context(|| format!("watching {}", app_dir.display()))?;
    let mut buf = [0u8; 4096];
    let mut last = None;
    loop {
        if let Ok(s) = State::read(app_dir) {
            if let Some(v) = check(&s) {
                return Ok(Waited::Done(v));
            }
            last = Some(s.status);
        }
        if !state::is_running(app_dir) {
            return Ok(Waited::NotRunning);
        }
        // Sleep until the state file is replaced, the lock is closed, or the
        // deadline passes.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Waited::TimedOut(last));
            }
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128 - 1) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll on inotify"),
            }
            let events = match inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading inotify events"),
            };
            let relevant = events.into_iter().any(|e| {
                e.mask.contains(EventMask::Q_OVERFLOW)
                    || e.name.is_some_and(|n| n == STATE_FILE || n == LOCK_FILE)
            });
            if relevant {
                break;
            }
        }
    }
}

/// The state of a running baton, waiting briefly for its first state file.
fn running_state(p: &Paths) -> Result<Option<State>> {
    let deadline = Instant::now() + FIRST_STATE;
    match wait_for_state(&p.app_dir, deadline, |s| Some(s.clone()))? {
        Waited::Done(s) => Ok(Some(s)),
        Waited::NotRunning => Ok(None),
        Waited::TimedOut(_) => bail!(
            "baton runs for {} but {} cannot be read",
            p.app_dir.display(),
            p.app_dir.join(STATE_FILE).display()
        ),
    }
}

// ---- status ----

fn status(target: &Target, json: bool) -> Result<u8> {
    let p = Paths::of(target)?;
    if !state::is_running(&p.app_dir) {
        eprintln!("{}", p.not_running());
        if let Ok(s) = State::read(&p.app_dir) {
            eprintln!(
                "its last state (baton pid {}): {}",
                s.pid,
                if s.stopping { "stopped" } else { &s.status }
            );
        }
        return Ok(EXIT_NOT_RUNNING);
    }
    let Some(s) = running_state(&p)? else {
        eprintln!("{}", p.not_running());
        return Ok(EXIT_NOT_RUNNING);
    };
    if json {
        let text = serde_json::to_string_pretty(&s).context("formatting the state")?;
        println!("{text}");
    } else {
        print!("{}", describe_state(&s));
    }
    Ok(health(&s))
}

/// `status`'s exit code for a running baton.
fn health(s: &State) -> u8 {
    let failed = s
        .last_rollout
        .as_ref()
        .is_some_and(|r| r.result == "failed");
    if failed || s.serving.is_none() {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// The human summary `baton status` prints.
fn describe_state(s: &State) -> String {
    let now = state::unix(SystemTime::now());
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<16} {text}\n"));
    line(
        "baton:",
        format!(
            "pid {}, app dir {}, up since {}",
            s.pid,
            s.app_dir.display(),
            when(s.started_at, now)
        ),
    );
    line("status:", s.status.clone());
    match &s.serving {
        Some(g) => {
            // Live since its rollout finished, if that rollout brought it.
            let since = s
                .last_rollout
                .as_ref()
                .filter(|r| r.generation == Some(g.generation) && r.result == "succeeded")
                .and_then(|r| r.finished_at)
                .unwrap_or(g.started_at);
            line(
                "serving:",
                format!(
                    "{} (pid {}, generation {}) since {}",
                    g.release.name,
                    pid_text(g.pid),
                    g.generation,
                    when(since, now)
                ),
            );
        }
        None => line("serving:", "nothing".into()),
    }
    if s.generations.is_empty() {
        line("generations:", "none".into());
    } else {
        out.push_str("generations:\n");
        for g in &s.generations {
            out.push_str(&format!(
                "  {:>4}  {:<9} {:<20} pid {:<8} {} started {}\n",
                g.generation,
                g.state,
                g.release.name,
                pid_text(g.pid),
                g.trigger,
                when(g.started_at, now)
            ));
        }
    }
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<16} {text}\n"));
    match &s.last_rollout {
        Some(r) => line("last rollout:", describe_rollout(r, now)),
        None => line("last rollout:", "none".into()),
    }
    line(
        "last known good:",
        s.last_known_good
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| "none yet".into()),
    );
    if let Some(b) = &s.last_rollback {
        line(
            "last rollback:",
            format!(
                "{} -> {} ({} crashed {} after going live) at {}",
                b.from.name,
                b.to.name,
                b.from.name,
                format_span(Duration::from_secs_f64(b.after_secs.max(0.0))),
                when(b.at, now)
            ),
        );
    }
    if s.restarts > 0 {
        line("restarts:", s.restarts.to_string());
    }
    if s.stopping {
        line("stopping:", "yes (baton received SIGTERM)".into());
    }
    out
}

fn describe_rollout(r: &RolloutInfo, now: f64) -> String {
    let what = r
        .release
        .as_ref()
        .map(|rel| rel.name.clone())
        .unwrap_or_else(|| "(unreadable current.conf)".into());
    let mut text = format!("#{} {what} ({}) {}", r.seq, r.trigger, r.result);
    if let Some(f) = r.finished_at {
        let took = Duration::from_secs_f64((f - r.started_at).max(0.0));
        text.push_str(&format!(" in {} at {}", format_span(took), when(f, now)));
    } else {
        text.push_str(&format!(", started {}", when(r.started_at, now)));
    }
    if let Some(why) = &r.reason {
        text.push_str(&format!(": {why}"));
    }
    text
}

fn pid_text(pid: Option<i32>) -> String {
    pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}

/// `2025-01-02 03:04:05 UTC (5min ago)`.
fn when(t: f64, now: f64) -> String {
    format!("{} ({} ago)", utc(t), ago(now - t))
}

fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}min {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}min", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Unix seconds as a UTC date and time (civil-from-days, H. Hinnant).
fn utc(t: f64) -> String {
    let secs = t.floor() as i64;
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

// ---- reload ----

fn reload(target: &Target, timeout: Duration) -> Result<u8> {
    let p = Paths::of(target)?;
    let deadline = Instant::now() + timeout;
    let before = if state::is_running(&p.app_dir) {
        running_state(&p)?
    } else {
        None
    };
    let Some(before) = before else {
        report_failure(&format!("{}; nothing to reload", p.not_running()));
        return Ok(EXIT_NOT_RUNNING);
    };
    if before.stopping {
        report_failure("baton is stopping; not reloading");
        return Ok(EXIT_FAILED);
    }
    let seq = before.last_rollout.as_ref().map_or(0, |r| r.seq);
    let pid = i32::try_from(before.pid).context("baton's pid in the state file")?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("sending SIGHUP to baton (pid {pid})"))?;
    let waited = wait_for_state(&p.app_dir, deadline, |s| {
        if s.pid != before.pid {
            return Some(Err(format!(
                "baton restarted (pid {} -> {}) before the reload finished",
                before.pid, s.pid
            )));
        }
        if let Some(r) = s.last_rollout.as_ref().filter(|r| r.seq > seq)
            && r.result != "in-progress"
        {
            return Some(Ok((r.clone(), s.serving.clone())));
        }
        if s.stopping {
            return Some(Err("baton is stopping; the reload was abandoned".into()));
        }
        None
    })?;
    match waited {
        Waited::Done(Ok((r, serving))) if r.result == "succeeded" => {
            match serving {
                Some(g) => println!(
                    "reloaded: {} serves as generation {} (pid {})",
                    g.release.name,
                    g.generation,
                    pid_text(g.pid)
                ),
                None => println!("reloaded: {}", describe_rollout(&r, now())),
            }
            Ok(EXIT_OK)
        }
        Waited::Done(Ok((r, _))) => {
            let what = r.release.map(|rel| rel.name).unwrap_or_default();
            report_failure(&format!(
                "reload of {what} {}: {}",
                r.result,
                r.reason.as_deref().unwrap_or("no reason given")
            ));
            Ok(EXIT_FAILED)
        }
        Waited::Done(Err(why)) => {
            report_failure(&format!("reload failed: {why}"));
            Ok(EXIT_FAILED)
        }
        Waited::TimedOut(last) => {
            report_failure(&format!(
                "reload: no outcome within {}; {}",
                format_span(timeout),
                last.unwrap_or_default()
            ));
            Ok(EXIT_FAILED)
        }
        Waited::NotRunning => {
            report_failure(&format!(
                "reload failed: baton exited before the reload finished ({})",
                p.not_running()
            ));
            Ok(EXIT_FAILED)
        }
    }
}

fn now() -> f64 {
    state::unix(SystemTime::now())
}

/// A failure on stderr. When stderr is the journal (`baton reload` as
/// ExecReload) the line carries the error priority, as baton's own log does,
/// so `journalctl -u app -p err` shows it.
fn report_failure(msg: &str) {
    if crate::logging::stderr_is_journal() {
        eprintln!("<3>baton: {msg}");
    } else {
        eprintln!("baton: {msg}");
    }
}

// ---- releases on disk ----

/// `app.2.0` -> `("app", "2.0")`: the version is everything after the first
/// dot, as in [`config::Release::name`].
fn split_version(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
        .filter(|(prefix, version)| !prefix.is_empty() && !version.is_empty())
}

/// What current.conf names now, if it can be read and parsed.
struct CurrentConf {
    map: serde_json::Map<String, serde_json::Value>,
    release: Option<config::Release>,
}

fn read_current(p: &Paths) -> Option<CurrentConf> {
    let bytes = fs::read(&p.config).ok()?;
    let serde_json::Value::Object(map) = serde_json::from_slice(&bytes).ok()? else {
        return None;
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let release = config::parse(&bytes, &p.dir, home.as_deref())
        .ok()
        .map(|parsed| parsed.release);
    Some(CurrentConf { map, release })
}

/// The name prefix of cfg files (`cfg` in `cfg.2.0`), taken from the cfg
/// file current.conf names.
fn cfg_prefix(current: Option<&CurrentConf>) -> String {
    current
        .and_then(|c| c.release.as_ref())
        .and_then(|r| r.cfg.file_name()?.to_str().map(str::to_owned))
        .and_then(|n| split_version(&n).map(|(p, _)| p.to_owned()))
        .unwrap_or_else(|| "cfg".to_owned())
}

/// A release in current.conf's directory.
#[derive(Debug, Clone, PartialEq)]
struct OnDisk {
    bin: String,
    version: String,
    /// The cfg file of the same version, if there is one.
    cfg: Option<String>,
}

/// Executable files named `NAME.VERSION` beside current.conf (not the cfg
/// files themselves), with their cfg files, oldest version first.
fn releases_in(p: &Paths, cfg_prefix: &str) -> Result<Vec<OnDisk>> {
    let conf_name = p.config.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut out = Vec::new();
    let entries = fs::read_dir(&p.dir).with_context(|| format!("listing {}", p.dir.display()))?;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name == conf_name {
            continue;
        }
        let Some((prefix, version)) = split_version(&name) else {
            continue;
        };
        if prefix == cfg_prefix {
            continue;
        }
        // Follows symlinks: a release may link to a binary elsewhere.
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() || meta.mode() & 0o111 == 0 {
            continue;
        }
        let cfg = format!("{cfg_prefix}.{version}");
        let cfg = fs::metadata(p.dir.join(&cfg))
            .is_ok_and(|m| !m.is_dir())
            .then_some(cfg);
        out.push(OnDisk {
            version: version.to_owned(),
            bin: name,
            cfg,
        });
    }
    out.sort_by(|a, b| compare_versions(&a.version, &b.version).then(a.bin.cmp(&b.bin)));
    Ok(out)
}

/// `1.9` < `1.10`: dot-separated parts compared as numbers when both are.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// The same file name in the same directory (directories compared after
/// resolving symlinks: release files are often links to one binary, so the
/// files themselves are not resolved).
fn same_place(a: &Path, b: &Path) -> bool {
    let dir = |p: &Path| {
        let d = p.parent().unwrap_or(Path::new("/"));
        fs::canonicalize(d).unwrap_or_else(|_| d.to_owned())
    };
    a.file_name() == b.file_name() && dir(a) == dir(b)
}

fn is_release(info: &ReleaseInfo, bin: &Path, cfg: &Path) -> bool {
    same_place(&info.bin, bin) && same_place(&info.cfg, cfg)
}

// ---- switch ----

/// RELEASE as given -> the bin file name in `dir`.
fn resolve_bin(p: &Paths, release: &str, cfg_prefix: &str) -> Result<OnDisk> {
    let on_disk = releases_in(p, cfg_prefix)?;
    let names = || {
        if on_disk.is_empty() {
            "none".to_owned()
        } else {
            on_disk
                .iter()
                .map(|r| r.bin.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if !release.contains('/') && p.dir.join(release).exists() {
        if let Some(r) = on_disk.iter().find(|r| r.bin == release) {
            return Ok(r.clone());
        }
        let why = match split_version(release) {
            None => "its name has no version (expected NAME.VERSION, as in app.2.0)".to_owned(),
            Some((prefix, _)) if prefix == cfg_prefix => "it is a cfg file".to_owned(),
            Some(_) => "it is not an executable file".to_owned(),
        };
        bail!(
            "{} is not a release: {why}; releases there: {}",
            p.dir.join(release).display(),
            names()
        );
    }
    let matches: Vec<&OnDisk> = on_disk.iter().filter(|r| r.version == release).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "no release {release} in {}: no executable file named {release} or NAME.{release}; releases there: {}",
            p.dir.display(),
            names()
        ),
        many => bail!(
            "release {release} is ambiguous in {}: {}; name the bin file instead",
            p.dir.display(),
            many.iter()
                .map(|r| r.bin.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A value for current.conf naming `name` in current.conf's directory, in
/// the style of the value it replaces: `cfg.2.0`, `/srv/app/release/cfg.2.0`
/// or `~/app/release/cfg.2.0` as the old one was written.
fn styled(old: Option<&serde_json::Value>, name: &str, dir: &Path) -> String {
    let head = old
        .and_then(serde_json::Value::as_str)
        .and_then(|o| o.rsplit_once('/'))
        .map(|(head, _)| head);
    let Some(head) = head else {
        return name.to_owned();
    };
    let resolved = if head.is_empty() {
        PathBuf::from("/")
    } else if head == "~" || head.starts_with("~/") {
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(head.trim_start_matches('~').trim_matches('/')),
            None => return name.to_owned(),
        }
    } else {
        dir.join(head)
    };
    match (fs::canonicalize(&resolved), fs::canonicalize(dir)) {
        (Ok(a), Ok(b)) if a == b => format!("{head}/{name}"),
        _ => name.to_owned(),
    }
}

/// Replaces `path` with `text` atomically: a temporary file beside it,
/// fsync'd, renamed over it, and the directory fsync'd. Keeps the old file's
/// mode (minus world-write, which baton refuses) and, when run as root, its
/// owner.
fn write_atomically(path: &Path, text: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.baton-switch.{}", std::process::id()));
    let old = fs::metadata(path).ok();
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777 & !0o002);
    let _ = fs::remove_file(&tmp);
    let result = (|| -> Result<()> {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        if let Some(m) = &old
            && nix::unistd::geteuid().is_root()
        {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("chown {}", tmp.display()))?;
        }
        f.write_all(text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

fn switch(release: &str, target: &Target, wait: Option<Duration>) -> Result<u8> {
    let p = Paths::of(target)?;
    let current = read_current(&p);
    let prefix = cfg_prefix(current.as_ref());
    let chosen = resolve_bin(&p, release, &prefix)?;
    let Some(cfg_name) = chosen.cfg.clone() else {
        bail!(
            "{} has no cfg file: {} does not exist",
            chosen.bin,
            p.dir.join(format!("{prefix}.{}", chosen.version)).display()
        );
    };
    let (bin, cfg) = (p.dir.join(&chosen.bin), p.dir.join(&cfg_name));

    // Before writing, so that a rollout the edit causes is told apart from
    // any earlier one.
    let running = state::is_running(&p.app_dir);
    let seq_before = if running {
        State::read(&p.app_dir)
            .ok()
            .and_then(|s| s.last_rollout.map(|r| r.seq))
            .unwrap_or(0)
    } else {
        0
    };

    let mut map = current.map(|c| c.map).unwrap_or_default();
    let bin_value = styled(map.get("bin.file"), &chosen.bin, &p.dir);
    let cfg_value = styled(map.get("cfg.file"), &cfg_name, &p.dir);
    map.insert("bin.file".into(), bin_value.into());
    map.insert("cfg.file".into(), cfg_value.into());
    let mut text = serde_json::to_vec_pretty(&serde_json::Value::Object(map))?;
    text.push(b'\n');
    write_atomically(&p.config, &text)?;
    println!(
        "{} now names {} with {cfg_name}",
        p.config.display(),
        chosen.bin
    );

    let Some(timeout) = wait else {
        if !running {
            println!(
                "baton is not running for {}; it will run {} when it starts",
                p.app_dir.display(),
                chosen.bin
            );
        }
        return Ok(EXIT_OK);
    };
    if !running {
        report_failure(&format!("{}; nothing to wait for", p.not_running()));
        return Ok(EXIT_NOT_RUNNING);
    }
    let deadline = Instant::now() + timeout;
    let waited = wait_for_state(&p.app_dir, deadline, |s| {
        if let Some(g) = s
            .serving
            .as_ref()
            .filter(|g| is_release(&g.release, &bin, &cfg))
        {
            return Some(Ok(g.clone()));
        }
        if let Some(r) = s.last_rollout.as_ref().filter(|r| r.seq > seq_before) {
            let ours = r
                .release
                .as_ref()
                .is_some_and(|rel| is_release(rel, &bin, &cfg));
            if !ours {
                let now_named = r
                    .release
                    .as_ref()
                    .map(|rel| rel.name.clone())
                    .unwrap_or_else(|| "something baton cannot run".into());
                return Some(Err(match &r.reason {
                    Some(why) if r.release.is_none() => format!("current.conf was refused: {why}"),
                    _ => format!("current.conf was changed again: it now names {now_named}"),
                }));
            }
            if r.result != "in-progress" && r.result != "succeeded" {
                return Some(Err(format!(
                    "rollout of {} {}{}",
                    chosen.bin,
                    r.result,
                    r.reason
                        .as_ref()
                        .map(|why| format!(": {why}"))
                        .unwrap_or_default()
                )));
            }
        }
        if s.stopping {
            return Some(Err("baton is stopping".into()));
        }
        None
    })?;
    match waited {
        Waited::Done(Ok(g)) => {
            println!(
                "{} serves (generation {}, pid {})",
                g.release.name,
                g.generation,
                pid_text(g.pid)
            );
            Ok(EXIT_OK)
        }
        Waited::Done(Err(why)) => {
            report_failure(&why);
            Ok(EXIT_FAILED)
        }
        Waited::TimedOut(last) => {
            report_failure(&format!(
                "{} does not serve after {}; {}",
                chosen.bin,
                format_span(timeout),
                last.unwrap_or_default()
            ));
            Ok(EXIT_FAILED)
        }
        Waited::NotRunning => {
            report_failure(&format!(
                "baton exited before {} served ({})",
                chosen.bin,
                p.not_running()
            ));
            Ok(EXIT_FAILED)
        }
    }
}

// ---- releases ----

fn releases(target: &Target) -> Result<u8> {
    let p = Paths::of(target)?;
    let current = read_current(&p);
    let prefix = cfg_prefix(current.as_ref());
    let named = current.as_ref().and_then(|c| c.release.clone());
    let state = if state::is_running(&p.app_dir) {
        running_state(&p)?
    } else {
        None
    };
    let serving = state.as_ref().and_then(|s| s.serving.as_ref());
    let on_disk = releases_in(&p, &prefix)?;
    let listed: Vec<&OnDisk> = on_disk.iter().filter(|r| r.cfg.is_some()).collect();
    if listed.is_empty() {
        println!(
            "no releases in {} (executable NAME.VERSION with {prefix}.VERSION beside it)",
            p.dir.display()
        );
    }
    let width = listed.iter().map(|r| r.bin.len()).max().unwrap_or(0);
    let cfg_width = listed
        .iter()
        .filter_map(|r| r.cfg.as_ref().map(String::len))
        .max()
        .unwrap_or(0);
    for r in &listed {
        let cfg_name = r.cfg.as_deref().unwrap_or_default();
        let (bin, cfg) = (p.dir.join(&r.bin), p.dir.join(cfg_name));
        let mut marks = Vec::new();
        if let Some(g) = serving.filter(|g| is_release(&g.release, &bin, &cfg)) {
            marks.push(format!(
                "serving (generation {}, pid {})",
                g.generation,
                pid_text(g.pid)
            ));
        }
        if named
            .as_ref()
            .is_some_and(|n| same_place(&n.bin, &bin) && same_place(&n.cfg, &cfg))
        {
            marks.push("named by current.conf".into());
        }
        let star = if marks.is_empty() { ' ' } else { '*' };
        let row = format!(
            "{star} {:<width$}  {:<cfg_width$}  {}",
            r.bin,
            cfg_name,
            marks.join(", ")
        );
        println!("{}", row.trim_end());
    }
    if let Some(n) = named.as_ref().filter(|n| {
        !listed.iter().any(|r| {
            same_place(&n.bin, &p.dir.join(&r.bin))
                && r.cfg
                    .as_ref()
                    .is_some_and(|c| same_place(&n.cfg, &p.dir.join(c)))
        })
    }) {
        println!(
            "current.conf names {} -c {}, which is not among these",
            n.bin.display(),
            n.cfg.display()
        );
    }
    match (&state, serving) {
        (None, _) => println!("(baton is not running for {})", p.app_dir.display()),
        (Some(_), None) => println!("(nothing serves)"),
        (Some(_), Some(g))
            if !listed.iter().any(|r| {
                is_release(
                    &g.release,
                    &p.dir.join(&r.bin),
                    &p.dir.join(r.cfg.as_deref().unwrap_or_default()),
                )
            }) =>
        {
            println!(
                "serving {} (generation {}), which is not among these",
                g.release.name, g.generation
            )
        }
        _ => {}
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["1.10", "1.9", "2.0", "1.9.1", "1.a"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, vec!["1.9", "1.9.1", "1.10", "1.a", "2.0"]);
        assert_eq!(split_version("app.2.0"), Some(("app", "2.0")));
        assert_eq!(split_version("app"), None);
        assert_eq!(split_version(".hidden"), None);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000.5), "2023-11-14 22:13:20 UTC");
        assert_eq!(ago(59.9), "59s");
        assert_eq!(ago(3725.0), "1h 2min");
    }

    fn paths(dir: &Path) -> Paths {
        Paths {
            config: dir.join("current.conf"),
            dir: dir.to_owned(),
            app_dir: dir.parent().unwrap().to_owned(),
        }
    }

    fn touch(path: &Path, mode: u32) {
        fs::write(path, b"{}").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn finds_releases_by_name_or_version() {
        let root = std::env::temp_dir().join(format!("baton-client-{}", std::process::id()));
        let dir = root.join("release");
        fs::create_dir_all(&dir).unwrap();
        for v in ["1.0", "2.0", "10.0"] {
            touch(&dir.join(format!("app.{v}")), 0o755);
            touch(&dir.join(format!("cfg.{v}")), 0o644);
        }
        touch(&dir.join("tool.3.0"), 0o755);
        touch(&dir.join("other.3.0"), 0o755);
        touch(&dir.join("notes.2.0"), 0o644);
        let p = paths(&dir);
        let all = releases_in(&p, "cfg").unwrap();
        let names: Vec<&str> = all.iter().map(|r| r.bin.as_str()).collect();
        assert_eq!(
            names,
            vec!["app.1.0", "app.2.0", "other.3.0", "tool.3.0", "app.10.0"]
        );
        assert_eq!(resolve_bin(&p, "2.0", "cfg").unwrap().bin, "app.2.0");
        assert_eq!(resolve_bin(&p, "app.10.0", "cfg").unwrap().bin, "app.10.0");
        let e = resolve_bin(&p, "3.0", "cfg").unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("tool.3.0"), "{e}");
        let e = resolve_bin(&p, "9.9", "cfg").unwrap_err().to_string();
        assert!(e.contains("no release 9.9") && e.contains("app.1.0"), "{e}");
        let e = resolve_bin(&p, "cfg.2.0", "cfg").unwrap_err().to_string();
        assert!(e.contains("cfg file"), "{e}");
        let e = resolve_bin(&p, "notes.2.0", "cfg").unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");

        // The style of the old value is kept when it points at the same dir.
        let abs = serde_json::Value::from(dir.join("app.1.0").to_str().unwrap());
        assert_eq!(
            styled(Some(&abs), "app.2.0", &dir),
            dir.join("app.2.0").to_str().unwrap()
        );
        let rel = serde_json::Value::from("./app.1.0");
        assert_eq!(styled(Some(&rel), "app.2.0", &dir), "./app.2.0");
        let bare = serde_json::Value::from("app.1.0");
        assert_eq!(styled(Some(&bare), "app.2.0", &dir), "app.2.0");
        let elsewhere = serde_json::Value::from("/opt/app.1.0");
        assert_eq!(styled(Some(&elsewhere), "app.2.0", &dir), "app.2.0");

        let conf = dir.join("current.conf");
        fs::write(&conf, b"old").unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomically(&conf, b"new\n").unwrap();
        assert_eq!(fs::read(&conf).unwrap(), b"new\n");
        assert_eq!(fs::metadata(&conf).unwrap().mode() & 0o777, 0o664);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
