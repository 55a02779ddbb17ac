//! What happened: a bounded history of rollouts (every one an operator
//! asked for, by an edit, a reload or startup, and every restart or
//! rollback baton made on its own), how each ended, the last rollback, and
//! the note STATUS= carries about the latest failure or recovery. Pure:
//! wall time is passed in.
//!
//! The history answers "what served when": each entry says when a
//! rollout began and ended, the release, what triggered it, the outcome,
//! and which generation it replaced. It keeps the last [`HISTORY_LEN`]
//! entries, and a restart loop takes one entry, not one per attempt:
//! consecutive restarts of the same release fold into the latest, with a
//! count of attempts.
//!
//! The history outlives the baton that kept it. The history file carries
//! it, and a new baton on the same app dir takes it over ([`History::carry`])
//! before it does anything, numbering on from it, each entry naming the
//! baton (pid) that ran it: the question "what served when" matters most
//! across a restart, a reboot or an upgrade, and a history that started
//! afresh with each baton would forget exactly those moments. A rollout a
//! baton left in progress when it stopped is recorded as superseded.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Release;
use crate::core::lifecycle::GenId;
use crate::state::Trigger;

/// How many rollouts the history keeps. The history file carries them all;
/// it is rewritten whole when a rollout begins or ends (not on every change
/// of state, as the state file is). 100 entries are about 47 KiB of JSON
/// with paths like `/srv/app/release/app.2.0` (some 470 bytes each):
/// enough for months of daily deploys, or the last hundred moves of a busy
/// day. A restart loop takes one entry, so it cannot push the deploys out.
pub const HISTORY_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    InProgress,
    Succeeded,
    Failed(String),
    Superseded,
}

/// The generation a rollout took over from: the one it retired when it
/// went live, or the one whose death it answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replaced {
    /// The release's name (`app.1.0`).
    pub release: String,
    pub generation: GenId,
}

/// One rollout: what baton set out to start, why, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub seq: u64,
    /// None when current.conf named nothing baton could run.
    pub release: Option<Release>,
    pub generation: Option<GenId>,
    pub trigger: Trigger,
    pub started: SystemTime,
    pub finished: Option<SystemTime>,
    pub outcome: Outcome,
    pub replaced: Option<Replaced>,
    /// Attempts folded into this entry (restarts of the same release in a
    /// row); 1 for everything else.
    pub attempts: u32,
    /// The baton (pid) that ran it, when it was not this one: entries
    /// carried over from the state file of the baton before.
    pub baton: Option<u32>,
}

impl RolloutRecord {
    /// Asked for by an operator (an edit, a reload, startup), as opposed
    /// to a restart or rollback baton made on its own.
    pub fn asked_for(&self) -> bool {
        matches!(
            self.trigger,
            Trigger::Startup | Trigger::Edit | Trigger::Reload
        )
    }
}

/// A release that crashed in probation and the one baton went back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub from: Release,
    pub to: Release,
    pub after: Duration,
    pub at: SystemTime,
}

/// The latest thing worth saying in STATUS= besides what serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Note {
    /// Something failed; the live generation (if any) is unchanged.
    Failure(String),
    /// baton recovered from something; what serves now is its doing.
    Recovery(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    seq: u64,
    /// Oldest first, at most [`HISTORY_LEN`].
    rollouts: VecDeque<RolloutRecord>,
    last_rollback: Option<Rollback>,
    pub note: Option<Note>,
    /// The serving generation that died last and has not been replaced
    /// yet: what the next restart, rollback or rollout replaces.
    died: Option<Replaced>,
    /// Moves with every change to `rollouts`, so that the history file is
    /// written when they changed and not on every change of state.
    #[serde(skip)]
    revision: u64,
}

impl History {
    /// Every rollout kept, oldest first.
    pub fn rollouts(&self) -> impl Iterator<Item = &RolloutRecord> {
        self.rollouts.iter()
    }

    /// The last rollout an operator asked for (edit, reload, startup).
    pub fn last_rollout(&self) -> Option<&RolloutRecord> {
        self.rollouts.iter().rev().find(|r| r.asked_for())
    }

    fn last_rollout_mut(&mut self) -> Option<&mut RolloutRecord> {
        self.rollouts_mut().iter_mut().rev().find(|r| r.asked_for())
    }

    /// The only way to change the rollouts: it moves the revision.
    fn rollouts_mut(&mut self) -> &mut VecDeque<RolloutRecord> {
        self.revision += 1;
        &mut self.rollouts
    }

    /// A number that differs whenever the rollouts differ (within one
    /// image of baton; it starts again after an upgrade).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn last_rollback(&self) -> Option<&Rollback> {
        self.last_rollback.as_ref()
    }

    fn push(&mut self, record: RolloutRecord) {
        let rollouts = self.rollouts_mut();
        rollouts.push_back(record);
        while rollouts.len() > HISTORY_LEN {
            rollouts.pop_front();
        }
    }

    /// A new rollout an operator asked for begins (numbered one past the
    /// last).
    pub fn begin(
        &mut self,
        release: Option<Release>,
        generation: Option<GenId>,
        trigger: Trigger,
        wall: SystemTime,
    ) {
        self.seq += 1;
        self.push(RolloutRecord {
            seq: self.seq,
            release,
            generation,
            trigger,
            started: wall,
            finished: None,
            outcome: Outcome::InProgress,
            replaced: None,
            attempts: 1,
            baton: None,
        });
    }

    /// baton starts generation `id` of `release` on its own (`trigger` is
    /// Restart or Rollback). A restart of the release the newest entry
    /// restarted already is folded into it.
    pub fn begin_recovery(
        &mut self,
        release: Release,
        id: GenId,
        trigger: Trigger,
        wall: SystemTime,
    ) {
        let replaced = self.died.take();
        if let Some(r) = self.rollouts_mut().back_mut().filter(|r| {
            trigger == Trigger::Restart
                && r.trigger == Trigger::Restart
                && r.baton.is_none()
                && r.release.as_ref() == Some(&release)
        }) {
            r.attempts += 1;
            r.generation = Some(id);
            r.started = wall;
            r.finished = None;
            r.outcome = Outcome::InProgress;
            if replaced.is_some() {
                r.replaced = replaced;
            }
            return;
        }
        self.seq += 1;
        self.push(RolloutRecord {
            seq: self.seq,
            release: Some(release),
            generation: Some(id),
            trigger,
            started: wall,
            finished: None,
            outcome: Outcome::InProgress,
            replaced,
            attempts: 1,
            baton: None,
        });
    }

    /// Ends the rollout an operator asked for last, if it is in progress.
    pub fn finish(&mut self, outcome: Outcome, wall: SystemTime) {
        if let Some(r) = self
            .last_rollout_mut()
            .filter(|r| r.outcome == Outcome::InProgress)
        {
            r.outcome = outcome;
            r.finished = Some(wall);
        }
    }

    /// Ends the rollout that started generation `id`, if it is in progress.
    pub fn finish_generation(&mut self, id: GenId, outcome: Outcome, wall: SystemTime) {
        if let Some(r) = self
            .rollouts_mut()
            .iter_mut()
            .rev()
            .find(|r| r.baton.is_none() && r.generation == Some(id))
            .filter(|r| r.outcome == Outcome::InProgress)
        {
            r.outcome = outcome;
            r.finished = Some(wall);
        }
    }

    /// The serving generation `generation` of `release` died.
    pub fn died(&mut self, release: &Release, generation: GenId) {
        self.died = Some(Replaced {
            release: release.name(),
            generation,
        });
    }

    /// Generation `id` went live in place of `old` (the generation it
    /// retired), or of the one that died before it: its rollout succeeded.
    pub fn went_live(&mut self, id: GenId, old: Option<Replaced>, wall: SystemTime) {
        let replaced = old.or_else(|| self.died.take());
        if let Some(r) = self
            .rollouts_mut()
            .iter_mut()
            .rev()
            .find(|r| r.baton.is_none() && r.generation == Some(id))
        {
            if r.replaced.is_none() {
                r.replaced = replaced;
            }
            if r.outcome == Outcome::InProgress {
                r.outcome = Outcome::Succeeded;
                r.finished = Some(wall);
            }
        }
    }

    /// current.conf names what serves already: that is a rollout that
    /// succeeded at once, as far as `baton status` is concerned, unless the
    /// last rollout already says so.
    pub fn settle_on(
        &mut self,
        release: Release,
        generation: Option<GenId>,
        trigger: Trigger,
        wall: SystemTime,
    ) {
        let settled = self.last_rollout().is_some_and(|r| {
            r.outcome == Outcome::Succeeded && r.release.as_ref() == Some(&release)
        });
        if !settled {
            self.begin(Some(release), generation, trigger, wall);
            self.finish(Outcome::Succeeded, wall);
        }
    }

    /// The rollout that started generation `id`, if it was the last one an
    /// operator asked for.
    pub fn rollout_of(&self, id: GenId) -> Option<&RolloutRecord> {
        self.last_rollout().filter(|r| r.generation == Some(id))
    }

    /// `from` went live and then crashed in probation; baton went back to
    /// `to`. The last rollout, if it brought `from`, failed after all.
    pub fn rolled_back(
        &mut self,
        from: &Release,
        to: &Release,
        after: Duration,
        msg: &str,
        wall: SystemTime,
    ) {
        if let Some(r) = self
            .last_rollout_mut()
            .filter(|r| r.release.as_ref() == Some(from))
        {
            r.outcome = Outcome::Failed(msg.to_owned());
            r.finished = Some(wall);
        }
        self.last_rollback = Some(Rollback {
            from: from.clone(),
            to: to.clone(),
            after,
            at: wall,
        });
    }

    /// Forgets a failure note (something works again); a recovery note stays.
    pub fn clear_failure(&mut self) {
        if matches!(self.note, Some(Note::Failure(_))) {
            self.note = None;
        }
    }

    /// The rollouts of the baton before this one (its state file), oldest
    /// first, before anything happens here. Numbering carries on from them;
    /// one it left in progress was cut short by its stop.
    pub fn carry(&mut self, rollouts: Vec<RolloutRecord>) {
        let mut carried: VecDeque<RolloutRecord> = rollouts
            .into_iter()
            .map(|mut r| {
                if r.outcome == Outcome::InProgress {
                    r.outcome = Outcome::Superseded;
                }
                r
            })
            .chain(self.rollouts_mut().drain(..))
            .collect();
        while carried.len() > HISTORY_LEN {
            carried.pop_front();
        }
        self.seq = self
            .seq
            .max(carried.iter().map(|r| r.seq).max().unwrap_or(0));
        *self.rollouts_mut() = carried;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::rel;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn rollouts_are_numbered_and_finish_once() {
        let mut h = History::default();
        h.begin(Some(rel("1.0")), Some(1), Trigger::Startup, at(0));
        h.finish(Outcome::Succeeded, at(1));
        h.finish(Outcome::Failed("late".into()), at(2));
        let r = h.last_rollout().unwrap();
        assert_eq!(
            (r.seq, &r.outcome, r.finished),
            (1, &Outcome::Succeeded, Some(at(1)))
        );
        h.begin(None, None, Trigger::Edit, at(3));
        assert_eq!(h.last_rollout().unwrap().seq, 2);
        assert!(h.rollout_of(1).is_none(), "only the last rollout");
    }

    #[test]
    fn the_revision_moves_with_the_rollouts_and_only_with_them() {
        let mut h = History::default();
        let mut last = h.revision();
        let mut moved = |h: &History| {
            let m = h.revision() != last;
            last = h.revision();
            m
        };
        h.begin(Some(rel("2.0")), Some(2), Trigger::Edit, at(0));
        assert!(moved(&h), "a rollout began");
        h.died(&rel("1.0"), 1);
        h.note = Some(Note::Failure("something".into()));
        h.clear_failure();
        assert!(!moved(&h), "no rollout changed");
        h.went_live(2, None, at(1));
        assert!(moved(&h), "it succeeded");
        assert_eq!(h.last_rollout().unwrap().outcome, Outcome::Succeeded);
        h.begin_recovery(rel("2.0"), 3, Trigger::Restart, at(2));
        assert!(moved(&h), "a restart");
        h.begin_recovery(rel("2.0"), 4, Trigger::Restart, at(3));
        assert!(moved(&h), "folded into the same entry");
        h.finish_generation(4, Outcome::Failed("again".into()), at(4));
        assert!(moved(&h), "the restart failed");
        h.carry(vec![]);
        assert!(moved(&h));
    }

    #[test]
    fn settling_on_the_serving_release_records_one_success() {
        let mut h = History::default();
        h.begin(Some(rel("2.0")), Some(2), Trigger::Edit, at(0));
        h.finish(Outcome::Failed("crashed".into()), at(1));
        h.settle_on(rel("1.0"), Some(1), Trigger::Edit, at(2));
        let r = h.last_rollout().unwrap().clone();
        assert_eq!(
            (r.seq, r.outcome, r.generation),
            (2, Outcome::Succeeded, Some(1))
        );
        h.settle_on(rel("1.0"), Some(1), Trigger::Edit, at(3));
        assert_eq!(h.last_rollout().unwrap().seq, 2, "nothing new to say");
    }

    #[test]
    fn a_rollback_fails_the_rollout_that_brought_the_release() {
        let mut h = History::default();
        h.begin(Some(rel("2.0")), Some(2), Trigger::Edit, at(0));
        h.finish(Outcome::Succeeded, at(1));
        h.rolled_back(
            &rel("2.0"),
            &rel("1.0"),
            Duration::from_secs(3),
            "crashed",
            at(4),
        );
        assert_eq!(
            h.last_rollout().unwrap().outcome,
            Outcome::Failed("crashed".into())
        );
        let b = h.last_rollback().unwrap();
        assert_eq!((&b.from, &b.to, b.at), (&rel("2.0"), &rel("1.0"), at(4)));
        h.note = Some(Note::Recovery("rolled back".into()));
        h.clear_failure();
        assert!(h.note.is_some(), "a recovery note stays");
        h.note = Some(Note::Failure("x".into()));
        h.clear_failure();
        assert!(h.note.is_none());
    }

    #[test]
    fn the_history_keeps_the_last_history_len_rollouts() {
        let mut h = History::default();
        for i in 0..(HISTORY_LEN as u64 + 30) {
            h.begin(Some(rel("1.0")), Some(i + 1), Trigger::Edit, at(i));
            h.finish(Outcome::Succeeded, at(i));
        }
        assert_eq!(h.rollouts().count(), HISTORY_LEN);
        assert_eq!(h.rollouts().next().unwrap().seq, 31, "the oldest went");
        assert_eq!(h.last_rollout().unwrap().seq, HISTORY_LEN as u64 + 30);
    }

    #[test]
    fn a_restart_loop_is_one_entry_and_says_whom_it_replaced() {
        let mut h = History::default();
        h.begin(Some(rel("1.0")), Some(1), Trigger::Startup, at(0));
        h.went_live(1, None, at(1));
        for (id, t) in [(2, 10), (3, 11), (4, 13)] {
            h.died(&rel("1.0"), id - 1);
            h.begin_recovery(rel("1.0"), id, Trigger::Restart, at(t));
            h.went_live(id, None, at(t));
        }
        let all: Vec<&RolloutRecord> = h.rollouts().collect();
        assert_eq!(all.len(), 2, "{all:#?}");
        let restart = all[1];
        assert_eq!(
            (restart.trigger, restart.attempts, restart.generation),
            (Trigger::Restart, 3, Some(4))
        );
        assert_eq!(
            restart.replaced,
            Some(Replaced {
                release: "app.1.0".into(),
                generation: 3
            })
        );
        assert_eq!(restart.outcome, Outcome::Succeeded);
        assert_eq!(
            h.last_rollout().unwrap().seq,
            1,
            "restarts are not asked for"
        );
        // A rollout in between ends the fold.
        h.begin(Some(rel("2.0")), Some(5), Trigger::Edit, at(20));
        h.went_live(
            5,
            Some(Replaced {
                release: "app.1.0".into(),
                generation: 4,
            }),
            at(21),
        );
        h.died(&rel("2.0"), 5);
        h.begin_recovery(rel("1.0"), 6, Trigger::Rollback, at(22));
        h.finish_generation(6, Outcome::Failed("exited".into()), at(23));
        let all: Vec<&RolloutRecord> = h.rollouts().collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].replaced.as_ref().unwrap().generation, 4);
        assert_eq!(
            (all[3].trigger, &all[3].outcome, all[3].replaced.as_ref()),
            (
                Trigger::Rollback,
                &Outcome::Failed("exited".into()),
                Some(&Replaced {
                    release: "app.2.0".into(),
                    generation: 5
                })
            )
        );
    }

    #[test]
    fn carried_rollouts_come_first_and_numbering_carries_on() {
        let old = |seq: u64, outcome: Outcome| RolloutRecord {
            seq,
            release: Some(rel("1.0")),
            generation: Some(seq),
            trigger: Trigger::Edit,
            started: at(seq),
            finished: None,
            outcome,
            replaced: None,
            attempts: 1,
            baton: Some(42),
        };
        let mut h = History::default();
        h.carry(vec![
            old(7, Outcome::Succeeded),
            old(8, Outcome::InProgress),
        ]);
        h.begin(Some(rel("2.0")), Some(1), Trigger::Startup, at(100));
        let all: Vec<&RolloutRecord> = h.rollouts().collect();
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [7, 8, 9],
            "{all:#?}"
        );
        assert_eq!(all[1].outcome, Outcome::Superseded, "cut short by a stop");
        // Generation 1 of this baton is not generation 1 of the last one.
        h.went_live(1, None, at(101));
        assert_eq!(h.rollouts().nth(2).unwrap().outcome, Outcome::Succeeded);
        // More than the bound carried: the newest are kept.
        let mut h = History::default();
        h.carry(
            (1..=HISTORY_LEN as u64 + 5)
                .map(|i| old(i, Outcome::Succeeded))
                .collect(),
        );
        assert_eq!(h.rollouts().count(), HISTORY_LEN);
        assert_eq!(h.rollouts().next().unwrap().seq, 6);
    }
}
