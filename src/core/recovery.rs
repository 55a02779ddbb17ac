//! Getting something serving again: what to start when nothing serves (the
//! fallback), when to start it (capped exponential backoff), and which
//! release is known to be good. Pure: instants and wall times are passed in.
//!
//! # The last known good release
//!
//! This is the one place that says which release baton goes back to, and
//! why; the rest of the core reports what happened and asks it
//! ([`Recovery::survived_probation`], [`Recovery::retired_serving`],
//! [`Recovery::after_death`], [`Recovery::named`], [`Recovery::carry`]).
//!
//! - **Good.** A release is good once one of its generations has served
//!   (gone live after READY=1) and then either
//!   1. stayed live through its `--probation` (at once with `--probation 0`),
//!      or
//!   2. was retired by a rollout while it was still serving: a newer
//!      generation went live in its place (an edit, a reload, the end of a
//!      soak) before it died. It served fine until it was replaced, however
//!      much of its probation was left.
//!
//!   A generation that dies proves nothing, nor does one that baton stops
//!   on SIGTERM: stopping baton is no verdict on a release.
//! - **The last known good** is the last release that became good, and it
//!   stays so until another one does. Dying later does not demote it: if it
//!   dies it is restarted with backoff, as nothing better is known.
//! - **Rollback.** When the serving generation dies within its probation
//!   and the last known good is another release, baton starts the last
//!   known good at once (never after a backoff: each rollback needs a new
//!   release to have gone live first, so rollbacks cannot loop), leaves
//!   current.conf as it is, and *holds back* the release that died.
//! - **Held back.** baton does not start a held-back release again until
//!   current.conf is read because it changed (any edit, even one writing
//!   the same content) or SIGHUP asks for it (`baton reload`); either
//!   clears the hold. Restarts and rollbacks never start it.
//! - **Across a restart.** The state file carries `last_known_good` and
//!   `held_back`, the latter with the identity of current.conf (inode and
//!   change time) as it was when it named the held-back release; the links
//!   `app.bin`/`app.cfg` carry what served last. A new baton believes the
//!   last known good if its files are still there, and the hold if
//!   current.conf is still that same file (an edit made while baton was
//!   down is a change like any other): it then starts the last known good
//!   instead of the held-back release, saying so in one error line and in
//!   STATUS. If current.conf names nothing that works at all, it falls back
//!   to what served last (the links).

use std::time::{Duration, Instant, SystemTime};

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

/// A release that died within its probation and was rolled back from: not
/// started again until current.conf changes (see the module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldBack {
    pub release: Release,
    /// What happened to it: `crashed 1 s after going live`.
    pub reason: String,
    pub at: SystemTime,
    /// current.conf's identity when it last named a release, as the loop
    /// reported it ([`Recovery::seen_conf`]); opaque to the core.
    pub conf: Option<String>,
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
    /// The last known good release (see the module docs).
    last_good: Option<Release>,
    /// The release rolled back from, until current.conf changes. (Default
    /// when absent: a handover from an image that kept none.)
    #[serde(default)]
    held_back: Option<HeldBack>,
    /// current.conf's identity at its last read (opaque; from the loop).
    #[serde(default)]
    conf: Option<String>,
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

    pub fn held_back(&self) -> Option<&HeldBack> {
        self.held_back.as_ref()
    }

    /// A generation of `release` stayed live through its probation: good.
    /// True when it was not the last known good release already.
    pub fn survived_probation(&mut self, release: &Release) -> bool {
        self.good(release)
    }

    /// A newer generation went live in place of a serving generation of
    /// `release`, which was alive: good, whatever was left of its
    /// probation. True when it was not the last known good already.
    pub fn retired_serving(&mut self, release: &Release) -> bool {
        self.good(release)
    }

    fn good(&mut self, release: &Release) -> bool {
        let new = self.last_good.as_ref() != Some(release);
        self.last_good = Some(release.clone());
        new
    }

    /// The serving generation of `release` died, `up` after going live, at
    /// `at`. Within its probation, with another release known to be good,
    /// baton rolls back to that one (returned) at once and holds `release`
    /// back; otherwise it restarts the same release.
    pub fn after_death(
        &mut self,
        release: &Release,
        in_probation: bool,
        up: Duration,
        at: SystemTime,
    ) -> Option<Release> {
        let back_to = self
            .last_good
            .clone()
            .filter(|good| in_probation && good != release);
        self.fallback = Some(match &back_to {
            Some(good) => (good.clone(), Trigger::Rollback),
            None => (release.clone(), Trigger::Restart),
        });
        if back_to.is_some() {
            self.held_back = Some(HeldBack {
                release: release.clone(),
                reason: format!("crashed {} s after going live", up.as_secs()),
                at,
                conf: self.conf.clone(),
            });
        }
        back_to
    }

    /// A rollback to the last known good is under way: it counts as an
    /// attempt to get something serving (so a last known good that dies in
    /// turn backs off), but it is never delayed.
    pub fn rolling_back(&mut self) {
        self.failures += 1;
        self.restart_at = None;
    }

    /// current.conf was read because of `trigger` and names `release` (None:
    /// nothing baton can run). An edit or SIGHUP clears any hold: the
    /// operator asks again. At startup a release still held back is not
    /// started: the last known good to start instead is returned.
    pub fn named(&mut self, release: Option<&Release>, trigger: Trigger) -> Option<Release> {
        let held = self
            .held_back
            .as_ref()
            .is_some_and(|h| release.is_some_and(|r| r.same_files(&h.release)));
        match (trigger, held, &self.last_good) {
            (Trigger::Startup, true, Some(good)) => Some(good.clone()),
            _ => {
                self.held_back = None;
                None
            }
        }
    }

    /// current.conf's identity (opaque) as the loop read it last: what a
    /// hold records, so that a restarted baton can tell whether current.conf
    /// changed while it was down.
    pub fn seen_conf(&mut self, identity: Option<String>) {
        self.conf = identity;
    }

    /// What the previous baton knew (the state file), as the loop checked
    /// it: its last known good, and its hold if current.conf is unchanged
    /// since. A hold without another good release to serve means nothing.
    pub fn carry(&mut self, good: Option<Release>, held: Option<HeldBack>) {
        self.held_back = held.filter(|h| good.as_ref().is_some_and(|g| !g.same_files(&h.release)));
        self.last_good = good;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::rel;

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

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_death_in_probation_rolls_back_to_another_good_release_only() {
        let mut r = Recovery::default();
        let up = Duration::from_millis(1500);
        assert_eq!(
            r.after_death(&rel("2.0"), true, up, at(0)),
            None,
            "nothing good yet"
        );
        assert_eq!(r.fallback(), Some(&(rel("2.0"), Trigger::Restart)));
        assert!(r.held_back().is_none());
        assert!(r.survived_probation(&rel("1.0")));
        assert!(!r.survived_probation(&rel("1.0")), "already known");
        assert_eq!(
            r.after_death(&rel("2.0"), true, up, at(1)),
            Some(rel("1.0"))
        );
        assert_eq!(r.fallback(), Some(&(rel("1.0"), Trigger::Rollback)));
        let held = r.held_back().unwrap();
        assert_eq!(
            (&held.release, held.reason.as_str(), held.at),
            (&rel("2.0"), "crashed 1 s after going live", at(1))
        );
        assert_eq!(
            r.after_death(&rel("2.0"), false, up, at(2)),
            None,
            "past probation"
        );
        assert_eq!(r.after_death(&rel("1.0"), true, up, at(3)), None, "itself");
        assert_eq!(r.fallback(), Some(&(rel("1.0"), Trigger::Restart)));
    }

    #[test]
    fn a_release_retired_while_serving_is_good_at_once() {
        let mut r = Recovery::default();
        assert!(r.retired_serving(&rel("1.0")));
        assert_eq!(r.last_good(), Some(&rel("1.0")));
        assert!(!r.retired_serving(&rel("1.0")), "already known");
        // The last one to become good is the last known good, however.
        assert!(r.survived_probation(&rel("2.0")));
        assert!(r.retired_serving(&rel("1.0")));
        assert_eq!(r.last_good(), Some(&rel("1.0")));
    }

    /// The state file names releases by their files: a hold carried over
    /// from it (without the release's own settings) still holds the release
    /// current.conf names with its settings.
    #[test]
    fn a_carried_hold_holds_the_same_files_whatever_their_settings() {
        let mut with_opts = rel("2.0");
        with_opts.opts.stop_target = Some(crate::stop::StopTarget::Leader);
        let mut r = Recovery::default();
        r.carry(
            Some(rel("1.0")),
            Some(HeldBack {
                release: rel("2.0"),
                reason: "crashed 1 s after going live".into(),
                at: at(0),
                conf: Some("conf-a".into()),
            }),
        );
        assert!(r.held_back().is_some());
        assert_eq!(
            r.named(Some(&with_opts), Trigger::Startup),
            Some(rel("1.0"))
        );
    }

    #[test]
    fn a_hold_lasts_until_current_conf_is_read_for_an_edit_or_a_reload() {
        let mut r = Recovery::default();
        r.retired_serving(&rel("1.0"));
        r.seen_conf(Some("conf-a".into()));
        r.after_death(&rel("2.0"), true, Duration::from_secs(1), at(0));
        assert_eq!(r.held_back().unwrap().conf.as_deref(), Some("conf-a"));
        // A restarted baton reading the same current.conf: 1.0 instead.
        assert_eq!(
            r.named(Some(&rel("2.0")), Trigger::Startup),
            Some(rel("1.0"))
        );
        assert!(r.held_back().is_some(), "still held");
        // Any edit or a reload is the operator asking again.
        for trigger in [Trigger::Edit, Trigger::Reload] {
            r.after_death(&rel("2.0"), true, Duration::from_secs(1), at(0));
            assert_eq!(r.named(Some(&rel("2.0")), trigger), None);
            assert!(r.held_back().is_none(), "{trigger:?}");
        }
        // So is an edit that names something else, or nothing at all.
        r.after_death(&rel("2.0"), true, Duration::from_secs(1), at(0));
        assert_eq!(r.named(None, Trigger::Edit), None);
        assert!(r.held_back().is_none());
        r.after_death(&rel("2.0"), true, Duration::from_secs(1), at(0));
        assert_eq!(r.named(Some(&rel("3.0")), Trigger::Startup), None);
        assert!(r.held_back().is_none());
    }

    #[test]
    fn what_a_restarted_baton_carries_over() {
        let held = HeldBack {
            release: rel("2.0"),
            reason: "crashed 1 s after going live".into(),
            at: at(0),
            conf: Some("conf-a".into()),
        };
        let mut r = Recovery::default();
        r.carry(Some(rel("1.0")), Some(held.clone()));
        assert_eq!(r.last_good(), Some(&rel("1.0")));
        assert_eq!(r.held_back(), Some(&held));
        // A hold with nothing else good to serve means nothing.
        let mut r = Recovery::default();
        r.carry(None, Some(held.clone()));
        assert!(r.held_back().is_none());
        assert_eq!(r.named(Some(&rel("2.0")), Trigger::Startup), None);
        let mut r = Recovery::default();
        r.carry(Some(rel("2.0")), Some(held));
        assert!(r.held_back().is_none(), "it is the last known good itself");
    }

    #[test]
    fn a_rollback_counts_as_an_attempt_but_never_waits() {
        let t0 = Instant::now();
        let mut r = Recovery::default();
        r.schedule(t0);
        r.schedule(t0);
        assert!(r.restart_at().is_some());
        r.rolling_back();
        assert_eq!(r.restart_at(), None);
        assert_eq!(r.failures(), 3);
        assert_eq!(r.schedule(t0), Duration::from_secs(2), "then backoff");
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
