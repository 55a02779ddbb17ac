//! When things fail: a candidate that will never serve, a serving
//! generation that dies, and the restart or rollback that follows.

use std::time::Duration;

use log::{error, info, warn};

use super::Core;
use super::history::{Note, Outcome};
use super::lifecycle::{GenId, Generation, Phase};
use crate::clock::Now;
use crate::span::format_span;
use crate::state::Trigger;

impl Core {
    /// A candidate that will never be live. The old generation serves on.
    pub(super) fn fail_candidate(&mut self, id: GenId, reason: String, now: Now) {
        if self.candidate == Some(id) {
            self.candidate = None;
        }
        let release = self.history.rollout_of(id).and_then(|r| r.release.clone());
        let what = match &release {
            Some(r) => format!("rollout of {r}"),
            None => format!("generation {id}"),
        };
        match self.live() {
            Some(l) => error!(
                "{what} failed: {reason}; still serving {} (generation {})",
                l.release, l.id
            ),
            None => error!("{what} failed: {reason}; nothing is serving"),
        }
        self.history.note = Some(Note::Failure(format!("{what} failed: {reason}")));
        self.history
            .finish_generation(id, Outcome::Failed(reason.clone()), now.wall);
        if release.is_some() {
            self.finish(Outcome::Failed(reason), now);
        }
        if self.live.is_none() {
            self.schedule_recovery(now);
        }
    }

    /// The live generation died on its own.
    pub(super) fn live_died(&mut self, g: Generation, how: &str, now: Now) {
        self.history.died(&g.release, g.id);
        let (up, in_probation) = match g.phase {
            Phase::Live {
                since,
                probation_until,
                ..
            } => (
                now.mono.saturating_duration_since(since),
                probation_until.is_some_and(|t| now.mono < t),
            ),
            _ => (Duration::ZERO, false),
        };
        let back_to = self
            .recovery
            .after_death(&g.release, in_probation, up, now.wall);
        let taking_over = self.candidate.map(|c| self.gens[&c].describe());
        match (back_to, taking_over) {
            (Some(to), None) => {
                let msg = format!(
                    "release {} crashed {} s after going live; rolled back to {to}",
                    g.release,
                    up.as_secs()
                );
                error!(
                    "{msg} ({} {how}); current.conf is left as it is",
                    g.describe()
                );
                self.history
                    .rolled_back(&g.release, &to, up, &msg, now.wall);
                self.history.note = Some(Note::Recovery(msg));
                // At once: a rollback is no restart loop.
                self.recovery.rolling_back();
                self.recover(now);
                return;
            }
            (Some(_), Some(next)) => {
                error!(
                    "release {} crashed {} s after going live ({} {how}); the rollout in progress ({next}) takes over",
                    g.release,
                    up.as_secs(),
                    g.describe()
                );
                self.history.note = Some(Note::Recovery(format!(
                    "release {} crashed {} s after going live",
                    g.release,
                    up.as_secs()
                )));
            }
            (None, _) => {
                error!(
                    "{} died unexpectedly ({how}) after {}",
                    g.describe(),
                    format_span(up)
                );
                self.history.note = Some(Note::Recovery(format!(
                    "generation {} ({}) died unexpectedly ({how}); restarted",
                    g.id, g.release
                )));
            }
        }
        if let Some(c) = self.candidate {
            if matches!(self.gens[&c].phase, Phase::Soaking { .. }) {
                info!("promoting the soaking {} at once", self.gens[&c].describe());
                self.promote(c, now);
            } else {
                info!(
                    "the rollout in progress ({}) will take over",
                    self.gens[&c].describe()
                );
            }
        } else {
            self.schedule_recovery(now);
        }
    }

    /// Nothing serves and nothing starts: start the fallback release now or
    /// after backoff.
    pub(super) fn schedule_recovery(&mut self, now: Now) {
        if self.shutting_down || self.live.is_some() || self.candidate.is_some() {
            return;
        }
        let Some((r, _)) = self.recovery.fallback().cloned() else {
            return;
        };
        let delay = self.recovery.schedule(now.mono);
        if delay.is_zero() {
            self.recover(now);
        } else {
            warn!(
                "restarting {r} in {} (attempt {})",
                format_span(delay),
                self.recovery.failures()
            );
        }
    }

    pub(super) fn recover(&mut self, now: Now) {
        if self.shutting_down || self.live.is_some() || self.candidate.is_some() {
            return;
        }
        if let Some((release, trigger)) = self.recovery.fallback().cloned() {
            self.recovery.restarted();
            info!(
                "{} {release}",
                if trigger == Trigger::Rollback {
                    "rolling back to"
                } else {
                    "restarting"
                }
            );
            let id = self.start(release.clone(), trigger, now);
            self.history.begin_recovery(release, id, trigger, now.wall);
        }
    }
}
