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
pub struct StateWriter {
    path: PathBuf,
    tmp: PathBuf,
    last: Vec<u8>,
}

impl StateWriter {
    pub fn new(app_dir: &Path) -> StateWriter {
        StateWriter {
            path: app_dir.join(STATE_FILE),
            tmp: app_dir.join(".baton.state.tmp"),
            last: Vec::new(),
        }
    }

    pub fn write(&mut self, state: &State) {
        let Ok(mut text) = serde_json::to_vec_pretty(state) else {
            return;
        };
        text.push(b'\n');
        if text == self.last {
            return;
        }
        let r =
            std::fs::write(&self.tmp, &text).and_then(|()| std::fs::rename(&self.tmp, &self.path));
        match r {
            Ok(()) => self.last = text,
            Err(e) => log::warn!("writing {}: {e}", self.path.display()),
        }
    }
}

/// Held for baton's life: one baton per app dir.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    pub fn acquire(app_dir: &Path) -> Result<InstanceLock> {
        let path = app_dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
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
