//! Writing the state file and the history file: atomically (a temporary
//! file, then rename), only when the content changed, and on a failure
//! once per reason, retried on a backoff, never leaving a stale file
//! where it can be removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::paths::{HISTORY_FILE, STATE_FILE};

/// Writes one of baton's files when its content changed.
///
/// A write can fail: the app dir full, turned read-only, the file replaced
/// by a directory. baton serves on regardless (nothing about serving
/// needs the files), but a state file left as it was would tell `baton
/// status` and `baton switch --wait` a state that is no longer true. So
/// on a failure the partial temporary file and the stale file are
/// removed where that is possible, one error line says why (once per
/// reason, not once per change), the reason is returned for STATUS=, and
/// the write is retried on every change and on a backoff (see
/// [`Writer::retry_at`]) until it works again, which is logged too. (The
/// history file is the same: what it holds is kept in memory until it can
/// be written.)
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    /// What a reader finds when the stale file was removed, or when it
    /// could not be.
    removed: &'static str,
    kept: &'static str,
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

impl Writer {
    /// `<app-dir>/baton.state`.
    pub fn state(app_dir: &Path) -> Writer {
        Writer::new(
            app_dir,
            STATE_FILE,
            "removed the old one, so that `baton status` reports no state rather than a stale one",
            "`baton status` and `baton switch --wait` read a stale state until this is fixed",
        )
    }

    /// `<app-dir>/baton.history`.
    pub fn history(app_dir: &Path) -> Writer {
        Writer::new(
            app_dir,
            HISTORY_FILE,
            "removed the old one, so that `baton history` shows none rather than a stale one (baton keeps it until it can be written)",
            "`baton history` shows an old history until this is fixed",
        )
    }

    fn new(app_dir: &Path, name: &str, removed: &'static str, kept: &'static str) -> Writer {
        Writer {
            path: app_dir.join(name),
            tmp: app_dir.join(format!(".{name}.tmp")),
            removed,
            kept,
            last: Vec::new(),
            failing: None,
            full_warned: false,
        }
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `value` if it changed since the last successful write (or
    /// writes are failing). Returns why writing fails, while it does.
    pub fn write(&mut self, value: &impl Serialize, now: Instant) -> Option<&str> {
        let Ok(mut text) = serde_json::to_vec_pretty(value) else {
            return self.failing();
        };
        text.push(b'\n');
        // Unchanged: nothing to do, unless a failed write is due again.
        if text == self.last && self.failing.as_ref().is_none_or(|f| now < f.retry_at) {
            return self.failing();
        }
        let attempt = |w: &Writer| {
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
            // A full file system has no room for the new content beside
            // the old; the old one's room may do. Readers find no file for
            // that moment, never a stale one.
            let _ = std::fs::remove_file(&self.tmp);
            let _ = std::fs::remove_file(&self.path);
            r = attempt(self);
            if r.is_ok() && !self.full_warned {
                self.full_warned = true;
                log::warn!(
                    "{}: no room for the new content beside the old one ({e}); wrote it in the old one's place",
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
                    // What a reader finds instead of the new content:
                    // nothing, or (if even that cannot be done) the old.
                    let stale = match std::fs::remove_file(&self.path) {
                        Ok(()) => self.removed.to_owned(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            "there is none".to_owned()
                        }
                        Err(e) => {
                            format!("the old one cannot be removed either ({e}): {}", self.kept)
                        }
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

    /// Why writing the file fails, while it does.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_ref().map(|f| f.reason.as_str())
    }

    /// When to try a failed write again, even if nothing changed.
    pub fn retry_at(&self) -> Option<Instant> {
        self.failing.as_ref().map(|f| f.retry_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

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
        let mut w = Writer::state(&dir);
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
        let mut w = Writer::state(&dir);
        let mut st = tiny_state();
        assert_eq!(w.write(&st, Instant::now()), None);
        std::os::unix::fs::symlink("/dev/full", dir.join(".baton.state.tmp")).unwrap();
        st.status = "new".into();
        assert_eq!(w.write(&st, Instant::now()), None);
        assert_eq!(State::read(&dir).unwrap().status, "new");
        assert!(w.full_warned);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
