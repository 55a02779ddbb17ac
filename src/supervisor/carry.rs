//! What a new baton takes over from the state file (and the history file)
//! of the one that ran before it on this app dir: the history of rollouts,
//! and the last known good release and the held-back release (the rule is
//! [`crate::core::recovery`]'s), checked against the files as they are now.
//! (What served last comes from the links, `links::last_live`.) The state
//! file names releases by their files; a release's own settings (readiness
//! mode, stop signal, env) are kept only beside the links (`app.opts`), so
//! the last known good release gets them when it is what served last.

use log::{info, warn};

use super::{Supervisor, links};
use crate::clock::utc;
use crate::config::{self, Release};
use crate::core::recovery::HeldBack;
use crate::report;
use crate::state::{Carried, ReleaseInfo};

impl Supervisor {
    /// Before the first read of current.conf.
    pub(super) fn carry_over(&mut self) {
        let state_file = self.paths.state_file();
        let carried = match Carried::read(&self.paths.app_dir) {
            Ok(c) => c,
            Err(e) => {
                if state_file.exists() {
                    warn!("{e:#}; nothing is known good yet");
                }
                return;
            }
        };
        if let Some(e) = &carried.history_unreadable {
            warn!("{e}; the history starts afresh");
        }
        // The history is the app dir's, whatever current.conf it was for.
        if !carried.history.is_empty() {
            info!(
                "carrying over {} rollout(s) of history (baton pid {})",
                carried.history.len(),
                carried.pid
            );
            self.core.carry_history(
                carried
                    .history
                    .iter()
                    .map(|r| report::rollout_record(r, carried.pid))
                    .collect(),
            );
        }
        let Some(config) = &carried.config else {
            // Only a history file: the state file is gone.
            info!(
                "{} is missing; nothing is known good yet",
                state_file.display()
            );
            return;
        };
        if config != &self.paths.config {
            info!(
                "{} was written for {}, not {}; nothing is known good yet",
                state_file.display(),
                config.display(),
                self.paths.config.display()
            );
            return;
        }
        let served_last = links::last_live(&self.paths.app_dir);
        let good = carried.last_known_good.as_ref().and_then(|r| {
            let release = still_there(r).map(|mut g| {
                if let Some(last) = served_last.as_ref().filter(|l| l.same_files(&g)) {
                    g.opts = last.opts.clone();
                }
                g
            });
            match &release {
                Some(_) => info!(
                    "{}: {} is the last known good release (baton pid {} knew it)",
                    state_file.display(),
                    r.name,
                    carried.pid
                ),
                None => warn!(
                    "{}: {}, the last known good release of baton pid {}, is gone ({} or {} is missing); nothing is known good yet",
                    state_file.display(),
                    r.name,
                    carried.pid,
                    r.bin.display(),
                    r.cfg.display()
                ),
            }
            release
        });
        let now = config::identity(&self.paths.config);
        let held = carried.held_back.as_ref().and_then(|h| {
            if h.conf.is_none() || h.conf != now {
                info!(
                    "{} changed since {} was held back; it may be tried again",
                    self.paths.config.display(),
                    h.release.name
                );
                return None;
            }
            info!(
                "{}: {} is held back ({} at {}) and {} is unchanged since",
                state_file.display(),
                h.release.name,
                h.reason,
                utc(h.at),
                self.paths.config.display()
            );
            Some(HeldBack {
                release: release_of(&h.release),
                reason: h.reason.clone(),
                at: std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(h.at.max(0.0)),
                conf: h.conf.clone(),
            })
        });
        self.core.carry(good, held);
    }
}

fn release_of(r: &ReleaseInfo) -> Release {
    Release {
        bin: r.bin.clone(),
        cfg: r.cfg.clone(),
        opts: Default::default(),
    }
}

/// The release, if its files are still there.
fn still_there(r: &ReleaseInfo) -> Option<Release> {
    (r.bin.is_file() && r.cfg.exists()).then(|| release_of(r))
}
