//! Getting something serving again: what to start when nothing serves (the
//! fallback), when to start it (capped exponential backoff), and which
//! release is known to be good. Pure: instants are passed in.

use std::time::{Duration, Instant};

use crate::config::Release;
use crate::state::Trigger;

/// Restart delays for a release that keeps dying: the first restart is
/// immediate, then 0.5 s doubling up to this cap.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The backoff resets once a restarted release has stayed up for its
/// probation, and never sooner than this, so that even `--probation 0`
/// cannot turn a release that dies right after READY into a tight loop.
pub const MIN_HEALTHY: Duration = Duration::from_secs(1);

/// The delay before attempt number `failures` (counted from 1).
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(500) * 2u32.saturating_pow((n - 2).min(16))).min(BACKOFF_CAP),
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    /// What to (re)start when nothing serves and nothing starts, and why.
    fallback: Option<(Release, Trigger)>,
    /// A restart waits for its backoff until then.
    #[serde(with = "crate::clock::mono::option")]
    restart_at: Option<Instant>,
    /// Consecutive attempts to get something serving again (for backoff).
    failures: u32,
    /// The last release that stayed up for its probation.
    last_good: Option<Release>,
    /// Restarts and rollbacks started, for the state file.
    restarts: u64,
}

impl Recovery {
    pub fn fallback(&self) -> Option<&(Release, Trigger)> {
        self.fallback.as_ref()
    }

    pub fn fall_back_to(&mut self, release: Release, trigger: Trigger) {
        self.fallback = Some((release, trigger));
    }

    /// The first release baton is asked for is also what it restarts, until
    /// something serves.
    pub fn fall_back_to_if_unset(&mut self, release: &Release) {
        if self.fallback.is_none() {
            self.fallback = Some((release.clone(), Trigger::Restart));
        }
    }

    pub fn restart_at(&self) -> Option<Instant> {
        self.restart_at
    }

    pub fn cancel_restart(&mut self) {
        self.restart_at = None;
    }

    /// Another attempt to get something serving: returns its delay. Zero
    /// means now; otherwise the restart is due at `now + delay`.
    pub fn schedule(&mut self, now: Instant) -> Duration {
        self.failures += 1;
        let delay = backoff(self.failures);
        if !delay.is_zero() {
            self.restart_at = Some(now + delay);
        }
        delay
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True once, when a scheduled restart's delay is over.
    pub fn restart_due(&mut self, now: Instant) -> bool {
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            return true;
        }
        false
    }

    /// What serves has stayed up long enough: the backoff starts over.
    pub fn healthy(&mut self) {
        self.failures = 0;
    }

    /// A restart or rollback was started.
    pub fn restarted(&mut self) {
        self.restarts += 1;
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn last_good(&self) -> Option<&Release> {
        self.last_good.as_ref()
    }

    /// `release` proved itself; true when it was not the last known good
    /// release already.
    pub fn proved(&mut self, release: Release) -> bool {
        let new = self.last_good.as_ref() != Some(&release);
        self.last_good = Some(release);
        new
    }

    /// The serving generation of `release` died. Within its probation, with
    /// another release known to be good, baton rolls back to that one
    /// (returned); otherwise it restarts the same release.
    pub fn after_death(&mut self, release: &Release, in_probation: bool) -> Option<Release> {
        let back_to = self
            .last_good
            .clone()
            .filter(|good| in_probation && good != release);
        self.fallback = Some(match &back_to {
            Some(good) => (good.clone(), Trigger::Rollback),
            None => (release.clone(), Trigger::Restart),
        });
        back_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str) -> Release {
        Release {
            bin: format!("/r/app.{v}").into(),
            cfg: format!("/r/cfg.{v}").into(),
        }
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(100), BACKOFF_CAP);
    }

    #[test]
    fn attempts_back_off_until_healthy_resets_them() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        assert_eq!(r.schedule(t0), Duration::ZERO, "first attempt at once");
        assert_eq!(r.restart_at(), None);
        assert_eq!(r.schedule(t0), Duration::from_millis(500));
        assert!(!r.restart_due(t0));
        assert!(r.restart_due(t0 + Duration::from_millis(500)));
        assert!(!r.restart_due(t0 + Duration::from_secs(9)), "due once");
        assert_eq!(r.schedule(t0), Duration::from_secs(1));
        r.cancel_restart();
        assert!(!r.restart_due(t0 + Duration::from_secs(9)));
        r.healthy();
        assert_eq!(r.failures(), 0);
        assert_eq!(r.schedule(t0), Duration::ZERO);
    }

    #[test]
    fn a_death_in_probation_rolls_back_to_another_good_release_only() {
        let mut r = Recovery::default();
        assert_eq!(r.after_death(&rel("2.0"), true), None, "nothing good yet");
        assert_eq!(r.fallback(), Some(&(rel("2.0"), Trigger::Restart)));
        assert!(r.proved(rel("1.0")));
        assert!(!r.proved(rel("1.0")), "already known");
        assert_eq!(r.after_death(&rel("2.0"), true), Some(rel("1.0")));
        assert_eq!(r.fallback(), Some(&(rel("1.0"), Trigger::Rollback)));
        assert_eq!(r.after_death(&rel("2.0"), false), None, "past probation");
        assert_eq!(r.after_death(&rel("1.0"), true), None, "itself");
        assert_eq!(r.fallback(), Some(&(rel("1.0"), Trigger::Restart)));
    }

    #[test]
    fn the_first_release_asked_for_is_the_fallback_until_replaced() {
        let mut r = Recovery::default();
        r.fall_back_to_if_unset(&rel("1.0"));
        r.fall_back_to_if_unset(&rel("2.0"));
        assert_eq!(r.fallback(), Some(&(rel("1.0"), Trigger::Restart)));
        r.fall_back_to(rel("3.0"), Trigger::Rollback);
        assert_eq!(r.fallback(), Some(&(rel("3.0"), Trigger::Rollback)));
    }
}
