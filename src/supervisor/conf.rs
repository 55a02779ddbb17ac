//! current.conf changes, as the loop sees them: inotify events ([`crate::watch`])
//! debounced, then the file read ([`crate::config`]) and handed to the core.
//!
//! The debounce acts on the leading edge and folds the trailing one: the
//! first edit after a quiet spell is read at once (a rollout starts within
//! the event's wake-up), edits closer together than [`SETTLE`] are a burst,
//! and the burst is read once more, [`SETTLE`] after its last edit, so the
//! newest content wins and a burst starts at most one extra generation.
//!
//! One edit is one attempt: the trailing read acts only if current.conf
//! now reads differently from the read that acted last. A single write can
//! be seen as two changes (a writer that renames its file into place and
//! only then closes it: IN_MOVED_TO, then IN_CLOSE_WRITE under the new
//! name; a create whose content was complete at the first read, then its
//! close), and acting twice on it would start a failing release twice.

use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::Supervisor;
use crate::clock::Now;
use crate::config::{self, ConfError, Parsed, Release};
use crate::handover::ConfStamp;
use crate::state::Trigger;
use crate::watch::Change;

/// Edits closer together than this are a burst: the first one acts at once,
/// the rest are folded into one read of the last content once the file has
/// been quiet this long.
pub const SETTLE: Duration = Duration::from_millis(100);

/// What a read of current.conf came to: the release it names, or why it
/// names nothing baton can run.
pub type Reading = Result<Release, String>;

fn reading_of(loaded: &Result<Parsed, ConfError>) -> Reading {
    match loaded {
        Ok(p) => Ok(p.release.clone()),
        Err(e) => Err(e.to_string()),
    }
}

/// Leading-edge act, trailing-edge fold. Pure: instants are passed in.
#[derive(Debug, Default)]
pub struct Debounce {
    /// The last change that counted as an edit. Whether the next one starts
    /// a burst depends on the time since this, not since baton last read
    /// the file: otherwise, after one folded burst, every later edit would
    /// land within SETTLE of the trailing read and be folded too.
    last_edit: Option<Instant>,
    /// The trailing read is due then.
    trailing: Option<Instant>,
    /// What the last read that acted on an edit came to.
    acted_on: Option<Reading>,
}

impl Debounce {
    /// A change was seen at `now`: true when it should be read at once
    /// (then call [`Debounce::read`] if the read counted as an edit);
    /// false when it joins a burst, read once the file is quiet.
    pub fn change(&mut self, now: Instant) -> bool {
        let quiet = self
            .last_edit
            .is_none_or(|t| now.duration_since(t) >= SETTLE);
        if self.trailing.is_none() && quiet {
            return true;
        }
        self.last_edit = Some(now);
        self.trailing = Some(now + SETTLE);
        false
    }

    /// The leading-edge read at `now` counted as an edit and came to
    /// `reading`.
    pub fn read(&mut self, now: Instant, reading: Reading) {
        self.last_edit = Some(now);
        self.acted_on = Some(reading);
    }

    /// The trailing read of a burst came to `reading`: true when that is
    /// news, to act on (and remembered as acted on); false when it is what
    /// the last read acted on already.
    pub fn news(&mut self, reading: Reading) -> bool {
        if self.acted_on.as_ref() == Some(&reading) {
            return false;
        }
        self.acted_on = Some(reading);
        true
    }

    /// When the trailing read is due, if a burst is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.trailing
    }

    /// True once, when the pending burst has been quiet for [`SETTLE`].
    pub fn due(&mut self, now: Instant) -> bool {
        if self.trailing.is_some_and(|t| t <= now) {
            self.trailing = None;
            return true;
        }
        false
    }
}

/// SIGHUPs, debounced as edits are: the first after a quiet spell starts
/// a fresh generation at once; SIGHUPs closer together than [`SETTLE`] are
/// a burst, folded into one more reload once they have stopped for that
/// long. Every SIGHUP is still followed by a generation started after it,
/// and a storm of them starts two, not one each (which would supersede
/// each fresh generation before it could get ready, for as long as the
/// storm lasts). Pure: instants are passed in.
#[derive(Debug, Default)]
pub struct Reloads {
    /// The last SIGHUP.
    last: Option<Instant>,
    /// The folded reload is due then.
    trailing: Option<Instant>,
}

impl Reloads {
    /// A SIGHUP at `now`: true when it should reload at once; false when
    /// it joins a burst.
    pub fn signal(&mut self, now: Instant) -> bool {
        let quiet = self.last.is_none_or(|t| now.duration_since(t) >= SETTLE);
        self.last = Some(now);
        if self.trailing.is_none() && quiet {
            return true;
        }
        self.trailing = Some(now + SETTLE);
        false
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.trailing
    }

    /// True once, when the folded reload is due.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.trailing.is_some_and(|t| t <= now) {
            self.trailing = None;
            return true;
        }
        false
    }
}

/// How soon to try watching current.conf again after the kernel refused,
/// doubled up to [`WATCH_RETRY_MAX`]. The kernel cannot say when an inotify
/// instance or watch becomes free, so this one thing is retried on a timer.
const WATCH_RETRY_FIRST: Duration = Duration::from_secs(1);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

impl Supervisor {
    /// If current.conf's directory cannot be watched (inotify instances or
    /// watches exhausted): one error line, and a retry scheduled.
    pub(super) fn watch_broken(&mut self, now: Instant) {
        let Some(why) = self.watcher.broken() else {
            return;
        };
        if self.watch_retry.is_none() {
            error!(
                "cannot watch {} for changes: {why}; edits of it are not seen until baton can watch it again (retrying; SIGHUP, `baton reload`, still reads it); what serves is not affected",
                self.paths.config.display(),
            );
        }
        let backoff = self
            .watch_retry
            .map_or(WATCH_RETRY_FIRST, |(_, b)| (b * 2).min(WATCH_RETRY_MAX));
        self.watch_retry = Some((now + backoff, backoff));
    }

    /// Tries to watch current.conf again, once due; if that works, reads it
    /// (an edit made meanwhile went unseen).
    pub(super) fn on_watch_retry(&mut self, now: Now) {
        if self.watch_retry.is_none_or(|(at, _)| at > now.mono) {
            return;
        }
        if self.watcher.retry() {
            self.watch_retry = None;
            info!(
                "watching {} again; reading it in case it changed meanwhile",
                self.paths.config.display()
            );
            self.read_conf(Trigger::Edit, now);
        } else {
            self.watch_broken(now.mono);
        }
    }

    /// SIGHUP: a fresh generation of what current.conf names, at once or
    /// after the burst it belongs to.
    pub(super) fn on_sighup(&mut self, now: Now) {
        if self.reloads.signal(now.mono) {
            info!("received SIGHUP: reloading {}", self.paths.config.display());
            self.read_conf(Trigger::Reload, now);
        } else {
            debug!("received SIGHUP within {SETTLE:?} of the last: one more reload once they stop");
        }
    }

    /// The reload a burst of SIGHUPs folded into, once it is due.
    pub(super) fn on_reload_due(&mut self, now: Now) {
        if self.reloads.due(now.mono) {
            info!(
                "SIGHUPs stopped: reloading {} once for all of them",
                self.paths.config.display()
            );
            self.read_conf(Trigger::Reload, now);
        }
    }

    pub(super) fn on_watch(&mut self, now: Now) {
        for change in self.watcher.read() {
            match change {
                Change::Removed => {
                    info!(
                        "{} was removed; still serving {}; waiting for it to return",
                        self.paths.config.display(),
                        self.serving_name()
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
                    if std::fs::symlink_metadata(&self.paths.config)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                    {
                        info!(
                            "{} does not exist yet; waiting for it",
                            self.paths.config.display()
                        );
                        continue;
                    }
                }
                Change::Overflow => warn!(
                    "inotify queue overflowed; re-reading {}",
                    self.paths.config.display()
                ),
                Change::Broken => {
                    self.watch_broken(now.mono);
                    continue;
                }
                Change::Written | Change::Created => {}
            }
            debug!("{} changed ({change:?})", self.paths.config.display());
            self.event_at.get_or_insert(now.mono);
            if self.debounce.change(now.mono)
                && let Some(reading) = self.read_conf_after(change, now)
            {
                self.debounce.read(now.mono, reading);
            }
        }
    }

    /// The trailing read of a burst, once it is due.
    pub(super) fn on_settled(&mut self, now: Now) {
        if !self.debounce.due(now.mono) {
            return;
        }
        debug!(
            "{} has been quiet for {SETTLE:?}; reading it",
            self.paths.config.display()
        );
        let loaded = self.load_conf();
        let reading = reading_of(&loaded);
        if !self.debounce.news(reading) {
            debug!(
                "{} reads as it did when baton last acted on it ({}); nothing more to do",
                self.paths.config.display(),
                match &loaded {
                    Ok(p) => p.release.name(),
                    Err(e) => e.reason.clone(),
                }
            );
            return;
        }
        self.act_on(loaded, Trigger::Edit, now);
    }

    /// Reads current.conf after `change` and acts on it; None when it is
    /// evidently still being written (so the change did not count as an
    /// edit), else what the read came to.
    fn read_conf_after(&mut self, change: Change, now: Now) -> Option<Reading> {
        let loaded = self.load_conf();
        if change == Change::Created
            && let Err(e) = &loaded
            && e.maybe_partial
        {
            debug!("{e} (still being written?); waiting for the write to finish");
            return None;
        }
        let reading = reading_of(&loaded);
        self.act_on(loaded, Trigger::Edit, now);
        Some(reading)
    }

    pub(super) fn read_conf(&mut self, trigger: Trigger, now: Now) {
        let loaded = self.load_conf();
        self.act_on(loaded, trigger, now);
    }

    fn load_conf(&mut self) -> Result<Parsed, ConfError> {
        // Stamped before reading: an edit racing the read makes the stamp
        // stale, never the content.
        self.conf_read = ConfStamp::of(&self.paths.config);
        let loaded = config::load(&self.paths.config, &self.policy);
        self.core.seen_conf(config::identity(&self.paths.config));
        loaded
    }

    fn act_on(&mut self, loaded: Result<Parsed, ConfError>, trigger: Trigger, now: Now) {
        match loaded {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    warn!("{}: {w}", self.paths.config.display());
                }
                if let Err(e) = self.core.check_fits(&parsed.release) {
                    let e = format!("{}: {}: {e}", self.paths.config.display(), parsed.release);
                    error!("{e}; still serving {}", self.serving_name());
                    self.core.conf_invalid(e, trigger, now);
                    return;
                }
                self.core.want(parsed.release, trigger, now);
            }
            Err(e) => {
                error!("{e}; still serving {}", self.serving_name());
                self.core.conf_invalid(e.to_string(), trigger, now);
            }
        }
    }

    fn serving_name(&self) -> String {
        self.core
            .live()
            .map(|g| g.release.name())
            .unwrap_or_else(|| "nothing".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn rel(v: &str) -> Reading {
        Ok(Release {
            bin: format!("/r/app.{v}").into(),
            cfg: format!("/r/cfg.{v}").into(),
            ..Default::default()
        })
    }

    #[test]
    fn the_first_edit_acts_at_once_and_a_burst_is_read_once_when_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert!(d.change(t0), "leading edge");
        d.read(t0, rel("2.0"));
        assert_eq!(d.deadline(), None);
        assert!(!d.change(ms(t0, 30)), "30 ms later: a burst");
        assert!(!d.change(ms(t0, 60)));
        assert_eq!(
            d.deadline(),
            Some(ms(t0, 160)),
            "quiet measured from the last"
        );
        assert!(!d.due(ms(t0, 159)));
        assert!(d.due(ms(t0, 160)));
        assert!(!d.due(ms(t0, 500)), "due once");
    }

    #[test]
    fn after_a_folded_burst_the_next_edit_is_a_leading_edge_again() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert!(d.change(t0));
        d.read(t0, rel("2.0"));
        assert!(!d.change(ms(t0, 50)));
        assert!(d.due(ms(t0, 150)));
        // 100 ms after the last edit (50 ms after the trailing read): quiet.
        assert!(d.change(ms(t0, 150)), "not folded into the last burst");
        d.read(ms(t0, 150), rel("2.0"));
        assert!(!d.change(ms(t0, 200)));
    }

    #[test]
    fn a_change_that_was_not_an_edit_does_not_start_a_burst() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        // A create whose content is not written yet: read, but not counted.
        assert!(d.change(t0));
        assert!(d.change(ms(t0, 1)), "its write still acts at once");
        d.read(ms(t0, 1), rel("2.0"));
        assert!(!d.change(ms(t0, 2)));
    }

    #[test]
    fn sighups_act_at_once_then_fold_a_storm_into_one_more_reload() {
        let t0 = Instant::now();
        let mut r = Reloads::default();
        assert!(r.signal(t0), "the first acts at once");
        assert_eq!(r.deadline(), None);
        for n in 1..50 {
            assert!(!r.signal(ms(t0, 20 * n)), "a storm: folded");
        }
        let last = ms(t0, 20 * 49);
        assert_eq!(
            r.deadline(),
            Some(last + SETTLE),
            "quiet counted from the last"
        );
        assert!(!r.due(last + SETTLE - Duration::from_millis(1)));
        assert!(r.due(last + SETTLE), "one more reload after the storm");
        assert!(!r.due(last + SETTLE * 3), "once");
        assert!(
            r.signal(last + SETTLE * 2),
            "after a quiet spell: at once again"
        );
        // Two reloads 150 ms apart are two reloads, each at once.
        assert!(r.signal(last + SETTLE * 2 + Duration::from_millis(150)));
    }

    #[test]
    fn a_burst_that_reads_as_the_last_read_did_is_no_news() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        // A rename and then the close of the renamed file: two changes.
        assert!(d.change(t0));
        d.read(t0, rel("3.0"));
        assert!(!d.change(ms(t0, 1)));
        assert!(d.due(ms(t0, 101)));
        assert!(!d.news(rel("3.0")), "the same release: one attempt");
        // A burst that ends elsewhere is news, and then the new baseline.
        assert!(d.change(ms(t0, 500)));
        d.read(ms(t0, 500), rel("3.0"));
        assert!(!d.change(ms(t0, 510)));
        assert!(d.due(ms(t0, 610)));
        assert!(d.news(rel("4.0")));
        assert!(!d.news(rel("4.0")));
        // So is the same text that now reads differently (a binary that
        // appeared in the meantime), and an error is compared as well.
        let missing: Reading = Err("/r/current.conf: app.5.0 does not exist".into());
        assert!(d.news(missing.clone()));
        assert!(!d.news(missing), "the same error once");
        assert!(d.news(rel("5.0")));
    }
}
