//! baton's state file: the schema the daemon writes and the operator
//! commands read, and how it is written and locked.
//!
//! Written atomically (temporary file + rename) to `<app-dir>/baton.state`
//! whenever it changes, never on a timer. `baton status`, `baton reload` and
//! `baton switch --wait` read it; they tell whether baton runs from
//! `<app-dir>/baton.lock`, which a running baton holds an exclusive flock on
//! (a stale pid cannot fool that, and a second baton on the same app dir is
//! refused). This module depends on nothing else of baton's: the daemon
//! fills it in ([`crate::report`]), the commands ([`crate::ops`]) read it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::paths::{LOCK_FILE, STATE_FILE};

/// Why a generation was started, or a rollout begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The first release baton runs.
    Startup,
    /// current.conf changed.
    Edit,
    /// SIGHUP (`systemctl reload`, `baton reload`).
    Reload,
    /// The serving generation died; the same release again.
    Restart,
    /// The new release died in probation; the last known good one again.
    Rollback,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Edit => "edit",
            Trigger::Reload => "reload",
            Trigger::Restart => "restart",
            Trigger::Rollback => "rollback",
        }
    }
}

/// Where a generation is in its life (see [`crate::core::lifecycle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenState {
    Starting,
    Soaking,
    Live,
    Stopping,
    Killed,
    /// A generation of the baton before this one (killed, crashed) that
    /// was still serving when this one started: it serves until this
    /// baton has a generation live, then is retired.
    Adopted,
}

impl GenState {
    pub fn as_str(self) -> &'static str {
        match self {
            GenState::Starting => "starting",
            GenState::Soaking => "soaking",
            GenState::Live => "live",
            GenState::Stopping => "stopping",
            GenState::Killed => "killed",
            GenState::Adopted => "adopted",
        }
    }
}

/// How a rollout ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutResult {
    InProgress,
    Succeeded,
    Failed,
    Superseded,
}

impl RolloutResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutResult::InProgress => "in-progress",
            RolloutResult::Succeeded => "succeeded",
            RolloutResult::Failed => "failed",
            RolloutResult::Superseded => "superseded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub name: String,
    pub bin: PathBuf,
    pub cfg: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub generation: u64,
    pub release: ReleaseInfo,
    pub pid: Option<i32>,
    pub state: GenState,
    pub trigger: Trigger,
    pub started_at: f64,
    /// When its process started, in clock ticks since boot (see
    /// [`crate::procfs::start_time`]): with the pid and the state file's
    /// `boot_id`, what lets a restarted baton recognise it.
    #[serde(default)]
    pub start_time: Option<u64>,
}

/// One rollout: the last one an operator asked for (`last_rollout`), and
/// each entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutInfo {
    pub seq: u64,
    pub release: Option<ReleaseInfo>,
    pub generation: Option<u64>,
    pub trigger: Trigger,
    pub result: RolloutResult,
    pub reason: Option<String>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    /// The generation it took over from: the one it retired when it went
    /// live, or the one whose death it answered.
    #[serde(default)]
    pub replaced: Option<ReplacedInfo>,
    /// Restarts of the same release in a row, folded into one entry.
    #[serde(default = "one")]
    pub attempts: u32,
    /// The baton that ran it (generation numbers start at 1 in each).
    #[serde(default)]
    pub baton_pid: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplacedInfo {
    /// The release's name (`app.1.0`).
    pub release: String,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackInfo {
    pub from: ReleaseInfo,
    pub to: ReleaseInfo,
    pub after_secs: f64,
    pub at: f64,
}

/// The last `baton upgrade` (or SIGUSR2): baton re-executing a new binary
/// in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeInfo {
    pub seq: u64,
    /// The binary baton re-executes (the path it was started from).
    pub path: PathBuf,
    pub from_version: String,
    /// Known once the new image runs.
    pub to_version: Option<String>,
    /// in-progress, succeeded or failed.
    pub result: RolloutResult,
    pub reason: Option<String>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
}

/// A release baton rolled back from and does not start again until
/// current.conf changes (see [`crate::core::recovery`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldBackInfo {
    pub release: ReleaseInfo,
    /// `crashed 1 s after going live`
    pub reason: String,
    pub at: f64,
    /// current.conf's identity when it named this release (device, inode
    /// and change time of the name and of the file it names): a restarted
    /// baton keeps the hold only while current.conf is still that file.
    pub conf: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    /// The boot this baton runs in (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// baton's version (the running image's). Absent in state files of
    /// batons that predate in-place upgrades.
    #[serde(default)]
    pub version: Option<String>,
    /// When the running image started: baton's start, or its last upgrade.
    #[serde(default)]
    pub image_started_at: Option<f64>,
    pub config: PathBuf,
    pub app_dir: PathBuf,
    pub started_at: f64,
    pub status: String,
    pub serving: Option<GenerationInfo>,
    pub generations: Vec<GenerationInfo>,
    pub last_known_good: Option<ReleaseInfo>,
    #[serde(default)]
    pub held_back: Option<HeldBackInfo>,
    pub last_rollout: Option<RolloutInfo>,
    pub last_rollback: Option<RollbackInfo>,
    /// The last rollouts, oldest first, this baton's and those of the
    /// batons before it on this app dir (bounded; see
    /// [`crate::core::history::HISTORY_LEN`]).
    #[serde(default)]
    pub history: Vec<RolloutInfo>,
    pub restarts: u64,
    pub stopping: bool,
    #[serde(default)]
    pub last_upgrade: Option<UpgradeInfo>,
}

impl State {
    pub fn read(app_dir: &Path) -> Result<State> {
        let path = app_dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// What outlives the baton that wrote the state file: what a new baton
/// takes over from the one before it (see [`crate::core::recovery`]), and
/// what `baton history` shows whether or not baton runs. Read leniently:
/// every field may be missing and unknown ones are ignored, so that the
/// state file of an older or a newer baton still yields what it has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Carried {
    /// The baton that wrote it.
    pub pid: u32,
    pub config: Option<PathBuf>,
    pub last_known_good: Option<ReleaseInfo>,
    pub held_back: Option<HeldBackInfo>,
    pub history: Vec<RolloutInfo>,
    /// Its generations (each read on its own, so that one this baton
    /// cannot read costs nothing else; see [`Carried::generations`]), and
    /// the boot they ran in: those still running when a new baton starts
    /// are adopted by it.
    #[serde(rename = "generations")]
    pub raw_generations: Vec<serde_json::Value>,
    pub boot_id: Option<String>,
}

impl Carried {
    /// The generations this baton can read.
    pub fn generations(&self) -> Vec<GenerationInfo> {
        self.raw_generations
            .iter()
            .filter_map(|g| serde_json::from_value(g.clone()).ok())
            .collect()
    }

    pub fn read(app_dir: &Path) -> Result<Carried> {
        let path = app_dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Writes the state file when its content changed.
///
/// A write can fail: the app dir full, turned read-only, the file replaced
/// by a directory. baton serves on regardless (nothing about serving
/// needs the file), but a state file left as it was would tell `baton
/// status` and `baton switch --wait` a state that is no longer true. So
/// on a failure the partial temporary file and the stale state file are
/// removed where that is possible, one error line says why (once per
/// reason, not once per change), the reason is returned for STATUS=, and
/// the write is retried on every change and on a backoff (see
/// [`StateWriter::retry_at`]) until it works again, which is logged too.
pub struct StateWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// What was last written, or last tried while writes fail.
    last: Vec<u8>,
    /// While writes fail: why, and when to try again.
    failing: Option<Failing>,
    /// Said already that the file system is full (while it stays so).
    full_warned: bool,
}

struct Failing {
    reason: String,
    retry_at: Instant,
    backoff: Duration,
}

/// The first retry of a failed write, doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(8);

impl StateWriter {
    pub fn new(app_dir: &Path) -> StateWriter {
        StateWriter {
            path: app_dir.join(STATE_FILE),
            tmp: app_dir.join(".baton.state.tmp"),
            last: Vec::new(),
            failing: None,
            full_warned: false,
        }
    }

    /// Writes `state` if it changed since the last successful write (or
    /// writes are failing). Returns why writing fails, while it does.
    pub fn write(&mut self, state: &State, now: Instant) -> Option<&str> {
        let Ok(mut text) = serde_json::to_vec_pretty(state) else {
            return self.failing();
        };
        text.push(b'\n');
        // Unchanged: nothing to do, unless a failed write is due again.
        if text == self.last && self.failing.as_ref().is_none_or(|f| now < f.retry_at) {
            return self.failing();
        }
        let attempt = |w: &StateWriter| {
            std::fs::write(&w.tmp, &text).and_then(|()| std::fs::rename(&w.tmp, &w.path))
        };
        let mut r = attempt(self);
        let full = r.as_ref().err().and_then(|e| {
            matches!(
                e.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
            )
            .then(|| e.to_string())
        });
        if let Some(e) = full
            && self.path.is_file()
        {
            // A full file system has no room for the new state beside the
            // old one; the old one's room may do. Readers find no state
            // file for that moment, never a stale one.
            let _ = std::fs::remove_file(&self.tmp);
            let _ = std::fs::remove_file(&self.path);
            r = attempt(self);
            if r.is_ok() && !self.full_warned {
                self.full_warned = true;
                log::warn!(
                    "{}: no room for the new state beside the old one ({e}); wrote it in the old one's place",
                    self.path.display()
                );
            }
        } else if r.is_ok() {
            self.full_warned = false;
        }
        match r {
            Ok(()) => {
                self.last = text;
                if let Some(f) = self.failing.take() {
                    log::info!(
                        "wrote {} again (it could not be written: {})",
                        self.path.display(),
                        f.reason
                    );
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                let reason = e.to_string();
                let backoff = self
                    .failing
                    .as_ref()
                    .map_or(RETRY_FIRST, |f| (f.backoff * 2).min(RETRY_MAX));
                if self.failing.as_ref().is_none_or(|f| f.reason != reason) {
                    // What a reader finds instead of the new state: nothing,
                    // or (if even that cannot be done) the old state.
                    let stale = match std::fs::remove_file(&self.path) {
                        Ok(()) => "removed the old one, so that `baton status` reports no state rather than a stale one".to_owned(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "there is none".to_owned(),
                        Err(e) => format!(
                            "the old one cannot be removed either ({e}): `baton status` and `baton switch --wait` read a stale state until this is fixed"
                        ),
                    };
                    log::error!(
                        "cannot write {}: {reason}; {stale}; serving on, retrying",
                        self.path.display()
                    );
                }
                self.last = text;
                self.failing = Some(Failing {
                    reason,
                    retry_at: now + backoff,
                    backoff,
                });
            }
        }
        self.failing()
    }

    /// Why writing the state file fails, while it does.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_ref().map(|f| f.reason.as_str())
    }

    /// When to try a failed write again, even if nothing changed.
    pub fn retry_at(&self) -> Option<Instant> {
        self.failing.as_ref().map(|f| f.retry_at)
    }
}

/// Held for baton's life: one baton per app dir.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    pub fn acquire(app_dir: &Path) -> Result<InstanceLock> {
        let path = app_dir.join(LOCK_FILE);
        // Open for writing (a baton that dies then closes a file open for
        // writing, which `baton switch --wait` notices), or only for
        // reading on a read-only app dir: the flock works either way, and
        // baton serves rather than refusing to start.
        let file = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) && path.is_file() => {
                log::error!(
                    "{}: {e}; taking the lock read-only: serving, but the state file cannot be written and waiting commands notice baton's death only at their deadline",
                    path.display()
                );
                File::open(&path)
            }
            other => other,
        }
        .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(InstanceLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = State::read(app_dir)
                    .map(|s| format!(" (pid {})", s.pid))
                    .unwrap_or_default();
                bail!(
                    "another baton{pid} is already running for {}",
                    app_dir.display()
                )
            }
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// The lock's fd, to hand to a new image of baton (`baton upgrade`).
    pub fn as_raw_fd(&self) -> RawFd {
        self._lock.as_raw_fd()
    }

    /// Takes over the lock an earlier image of baton held on `fd`: the same
    /// open file, so taking the lock again cannot fail unless `fd` is not
    /// that file.
    ///
    /// # Safety
    /// `fd` must be an open fd that nothing else owns.
    pub unsafe fn adopt(fd: RawFd) -> Result<InstanceLock> {
        // SAFETY: the caller hands over ownership of the open fd.
        let file = unsafe { File::from_raw_fd(fd) };
        Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map(|lock| InstanceLock { _lock: lock })
            .map_err(|(_, e)| anyhow::anyhow!("taking over the lock on fd {fd}: {e}"))
    }
}

/// True when a baton holds the app dir's lock.
pub fn is_running(app_dir: &Path) -> bool {
    let Ok(file) = File::open(app_dir.join(LOCK_FILE)) else {
        return false;
    };
    Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_state() -> State {
        serde_json::from_value(serde_json::json!({
            "pid": 1, "config": "/c", "app_dir": "/a", "started_at": 0.0,
            "status": "serving", "serving": null, "generations": [],
            "last_known_good": null, "last_rollout": null,
            "last_rollback": null, "restarts": 0, "stopping": false
        }))
        .unwrap()
    }

    /// A state file that cannot be written is an error once, not once per
    /// change; it is retried on a backoff, and when it works again the
    /// file is current.
    #[test]
    fn a_failing_state_file_is_reported_once_and_retried_until_written() {
        let dir = std::env::temp_dir().join(format!("baton-state-w-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(STATE_FILE)).unwrap();
        let mut w = StateWriter::new(&dir);
        let t0 = Instant::now();
        let mut st = tiny_state();
        let why = w.write(&st, t0).map(str::to_owned);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("directory")),
            "{why:?}"
        );
        assert_eq!(w.retry_at(), Some(t0 + RETRY_FIRST));
        assert!(
            !dir.join(".baton.state.tmp").exists(),
            "no partial file left"
        );
        // Unchanged and not due: not tried again.
        assert_eq!(w.write(&st, t0).map(str::to_owned), why);
        assert_eq!(w.retry_at(), Some(t0 + RETRY_FIRST));
        // Changed: tried at once; the backoff grows.
        st.status = "changed".into();
        w.write(&st, t0);
        assert_eq!(w.retry_at(), Some(t0 + RETRY_FIRST * 2));
        std::fs::remove_dir(dir.join(STATE_FILE)).unwrap();
        assert_eq!(w.write(&st, t0 + RETRY_FIRST * 2), None, "due: written");
        assert_eq!(State::read(&dir).unwrap().status, "changed");
        assert_eq!(w.retry_at(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// No room on the file system (ENOSPC, here from /dev/full) for the
    /// new state beside the old: written in the old one's place.
    #[test]
    fn a_full_file_system_gets_the_new_state_in_the_old_ones_place() {
        let dir = std::env::temp_dir().join(format!("baton-state-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = StateWriter::new(&dir);
        let mut st = tiny_state();
        assert_eq!(w.write(&st, Instant::now()), None);
        std::os::unix::fs::symlink("/dev/full", dir.join(".baton.state.tmp")).unwrap();
        st.status = "new".into();
        assert_eq!(w.write(&st, Instant::now()), None);
        assert_eq!(State::read(&dir).unwrap().status, "new");
        assert!(w.full_warned);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The words the state file uses are the words `baton status` prints.
    #[test]
    fn serialized_names_are_the_printed_names() {
        let word = |v: serde_json::Value| v.as_str().unwrap().to_owned();
        for t in [
            Trigger::Startup,
            Trigger::Edit,
            Trigger::Reload,
            Trigger::Restart,
            Trigger::Rollback,
        ] {
            assert_eq!(word(serde_json::to_value(t).unwrap()), t.as_str());
        }
        for s in [
            GenState::Starting,
            GenState::Soaking,
            GenState::Live,
            GenState::Stopping,
            GenState::Killed,
            GenState::Adopted,
        ] {
            assert_eq!(word(serde_json::to_value(s).unwrap()), s.as_str());
        }
        for r in [
            RolloutResult::InProgress,
            RolloutResult::Succeeded,
            RolloutResult::Failed,
            RolloutResult::Superseded,
        ] {
            assert_eq!(word(serde_json::to_value(r).unwrap()), r.as_str());
        }
        let back: RolloutResult = serde_json::from_str("\"in-progress\"").unwrap();
        assert_eq!(back, RolloutResult::InProgress);
    }
}
