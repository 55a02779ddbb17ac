//! What the baton before this one left behind: its last known good release
//! and held-back release (state file), its rollouts, and the generations
//! that outlived it (adopted after `KillMode=process`).

use log::error;

use super::history::{Note, Outcome, RolloutRecord};
use super::lifecycle::{GenId, Generation, Phase};
use super::recovery::HeldBack;
use super::{Core, Survivor};
use crate::clock::Now;
use crate::config::Release;
use crate::state::Trigger;

impl Core {
    /// The release that served when baton last ran (its links): what to
    /// fall back to if current.conf cannot be rolled out at startup.
    pub fn remember_last_live(&mut self, release: Release) {
        self.recovery.fall_back_to(release, Trigger::Rollback);
    }

    /// What the baton before this one knew (its state file), as the loop
    /// checked it: the last known good release, and the release it held
    /// back if current.conf has not changed since. Before the first read.
    pub fn carry(&mut self, last_good: Option<Release>, held_back: Option<HeldBack>) {
        self.recovery.carry(last_good, held_back);
    }

    /// The rollouts of the baton before this one (its state file), oldest
    /// first. Before the first read.
    pub fn carry_history(&mut self, rollouts: Vec<RolloutRecord>) {
        self.history.carry(rollouts);
    }

    /// A generation of the baton before this one is still running. If it
    /// was live it serves on (Adopted) until a generation of this baton is
    /// live; anything else (starting, draining) is retired at once. Before
    /// the first read of current.conf; returns its id in this baton.
    pub fn adopt(&mut self, s: Survivor, now: Now) -> GenId {
        let id = self.next_id;
        self.next_id += 1;
        self.gens.insert(
            id,
            Generation {
                id,
                release: s.release,
                trigger: s.trigger,
                pid: Some(s.pid),
                started: now.mono,
                started_wall: s.started_wall,
                phase: Phase::Adopted,
                app_status: None,
                start_time: s.start_time,
                ready_after_exit: false,
            },
        );
        if !s.was_live {
            self.stop(id, now.mono);
        }
        id
    }

    /// At startup current.conf still names `held`, which the baton before
    /// this one rolled back from: start the last known good `good` instead.
    pub(super) fn hold_back(&mut self, held: Release, good: Release, trigger: Trigger, now: Now) {
        let why = self
            .recovery
            .held_back()
            .map(|h| h.reason.clone())
            .unwrap_or_default();
        let note = format!("current.conf names {held}, held back: it {why}");
        error!(
            "{note} when baton last ran; starting {good}, the last known good release, until current.conf changes"
        );
        self.history.begin(Some(held), None, trigger, now.wall);
        self.history.note = Some(Note::Recovery(note));
        self.finish(Outcome::Failed(format!("held back: it {why}")), now);
        self.recovery.fall_back_to(good.clone(), Trigger::Rollback);
        self.recovery.cancel_restart();
        let id = self.start(good.clone(), Trigger::Rollback, now);
        self.history
            .begin_recovery(good, id, Trigger::Rollback, now.wall);
    }
}
