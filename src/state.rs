//! baton's state file and history file: the schema the daemon writes and
//! the operator commands read, and how they are written and locked.
//!
//! Written atomically (temporary file + rename) to `<app-dir>/baton.state`
//! whenever the state changes, never on a timer; the history of rollouts
//! (`baton history`) goes to `<app-dir>/baton.history`, written only when
//! a rollout begins or ends, so that the state file, rewritten on every
//! change, stays small ([`writer`]). `baton status`, `baton reload` and
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

use crate::paths::{HISTORY_FILE, LOCK_FILE, STATE_FILE};

mod writer;
pub use writer::Writer;

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

/// What outlives the baton that wrote the state file and the history
/// file: what a new baton takes over from the one before it (see
/// [`crate::core::recovery`]), and what `baton history` shows whether or
/// not baton runs. Read leniently: every field may be missing and unknown
/// ones are ignored, so that the files of an older or a newer baton still
/// yield what they have.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Carried {
    /// The baton that wrote it.
    pub pid: u32,
    pub config: Option<PathBuf>,
    pub last_known_good: Option<ReleaseInfo>,
    pub held_back: Option<HeldBackInfo>,
    /// The rollouts kept (see [`Carried::read`]).
    pub history: Vec<RolloutInfo>,
    /// Its generations (each read on its own, so that one this baton
    /// cannot read costs nothing else; see [`Carried::generations`]), and
    /// the boot they ran in: those still running when a new baton starts
    /// are adopted by it.
    #[serde(rename = "generations")]
    pub raw_generations: Vec<serde_json::Value>,
    pub boot_id: Option<String>,
    /// Why the history file (which exists) could not be read.
    #[serde(skip)]
    pub history_unreadable: Option<String>,
}

impl Carried {
    /// The generations this baton can read.
    pub fn generations(&self) -> Vec<GenerationInfo> {
        self.raw_generations
            .iter()
            .filter_map(|g| serde_json::from_value(g.clone()).ok())
            .collect()
    }

    /// The state file, with the history from the history file or, from a
    /// baton before there was one, from the state file: whichever has the
    /// newer rollout. Fails only when neither can be read (a baton that
    /// could not write its state file may still have left its history).
    pub fn read(app_dir: &Path) -> Result<Carried> {
        let path = app_dir.join(STATE_FILE);
        let state = std::fs::read(&path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|text| {
                serde_json::from_slice::<Carried>(&text)
                    .with_context(|| format!("parsing {}", path.display()))
            });
        let history = HistoryFile::read(app_dir);
        let mut carried = match (state, &history) {
            (Ok(c), _) => c,
            (Err(_), Ok(Some(_))) => Carried::default(),
            (Err(e), _) => return Err(e),
        };
        match history {
            Ok(Some(h)) => {
                let newest = |r: &[RolloutInfo]| r.last().map(|r| r.seq);
                if newest(&h.history) >= newest(&carried.history) {
                    if carried.pid == 0 {
                        carried.pid = h.pid;
                    }
                    carried.history = h.history;
                }
            }
            Ok(None) => {}
            Err(e) => carried.history_unreadable = Some(format!("{e:#}")),
        }
        Ok(carried)
    }
}

/// `<app-dir>/baton.history`: the rollouts baton keeps (see
/// [`crate::core::history::HISTORY_LEN`]), this baton's and those of the
/// batons before it on the app dir, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryFile {
    /// The baton that wrote it.
    pub pid: u32,
    pub history: Vec<RolloutInfo>,
}

impl HistoryFile {
    /// None when there is no history file.
    pub fn read(app_dir: &Path) -> Result<Option<HistoryFile>> {
        let path = app_dir.join(HISTORY_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display()))
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

    fn entry(seq: u64) -> serde_json::Value {
        serde_json::json!({
            "seq": seq, "release": null, "generation": null, "trigger": "edit",
            "result": "succeeded", "reason": null, "started_at": 0.0,
            "finished_at": null, "replaced": null, "attempts": 1, "baton_pid": 7
        })
    }

    fn seqs(c: &Carried) -> Vec<u64> {
        c.history.iter().map(|r| r.seq).collect()
    }

    /// The history comes from the history file; from the state file of a
    /// baton before there was one; from whichever has the newer rollout
    /// when both have one; from the history file alone when the state file
    /// is gone; and a history file that cannot be parsed is said.
    #[test]
    fn the_history_is_read_from_the_history_file_or_an_older_state_file() {
        let dir = std::env::temp_dir().join(format!("baton-state-h-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, v: serde_json::Value| {
            std::fs::write(dir.join(name), serde_json::to_vec(&v).unwrap()).unwrap()
        };
        let state = |history: Vec<serde_json::Value>| serde_json::json!({"pid": 11, "config": "/c", "history": history});
        assert!(Carried::read(&dir).is_err(), "neither file");
        write(STATE_FILE, state(vec![entry(1), entry(2)]));
        assert_eq!(
            seqs(&Carried::read(&dir).unwrap()),
            [1, 2],
            "an older baton's"
        );
        write(
            HISTORY_FILE,
            serde_json::json!({"pid": 12, "history": [entry(2), entry(3)]}),
        );
        write(STATE_FILE, state(vec![]));
        let c = Carried::read(&dir).unwrap();
        assert_eq!((seqs(&c), c.pid), (vec![2, 3], 11));
        write(STATE_FILE, state(vec![entry(4)]));
        assert_eq!(seqs(&Carried::read(&dir).unwrap()), [4], "the newer one");
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        let c = Carried::read(&dir).unwrap();
        assert_eq!((seqs(&c), c.pid, c.config), (vec![2, 3], 12, None));
        write(STATE_FILE, state(vec![]));
        std::fs::write(dir.join(HISTORY_FILE), "{").unwrap();
        let c = Carried::read(&dir).unwrap();
        assert!(c.history.is_empty());
        assert!(
            c.history_unreadable
                .as_deref()
                .is_some_and(|e| e.contains("parsing") && e.contains(HISTORY_FILE)),
            "{:?}",
            c.history_unreadable
        );
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
