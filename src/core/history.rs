//! What happened: the last rollout an operator asked for (an edit, a reload,
//! startup) and how it ended, the last rollback, and the note STATUS=
//! carries about the latest failure or recovery. Pure: wall time is passed
//! in.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Release;
use crate::core::lifecycle::GenId;
use crate::state::Trigger;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    InProgress,
    Succeeded,
    Failed(String),
    Superseded,
}

/// The last rollout an operator asked for (edit, reload, startup).
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
    last_rollout: Option<RolloutRecord>,
    last_rollback: Option<Rollback>,
    pub note: Option<Note>,
}

impl History {
    pub fn last_rollout(&self) -> Option<&RolloutRecord> {
        self.last_rollout.as_ref()
    }

    pub fn last_rollback(&self) -> Option<&Rollback> {
        self.last_rollback.as_ref()
    }

    /// A new rollout begins (numbered one past the last).
    pub fn begin(
        &mut self,
        release: Option<Release>,
        generation: Option<GenId>,
        trigger: Trigger,
        wall: SystemTime,
    ) {
        self.seq += 1;
        self.last_rollout = Some(RolloutRecord {
            seq: self.seq,
            release,
            generation,
            trigger,
            started: wall,
            finished: None,
            outcome: Outcome::InProgress,
        });
    }

    /// Ends the rollout in progress, if there is one.
    pub fn finish(&mut self, outcome: Outcome, wall: SystemTime) {
        if let Some(r) = self
            .last_rollout
            .as_mut()
            .filter(|r| r.outcome == Outcome::InProgress)
        {
            r.outcome = outcome;
            r.finished = Some(wall);
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
        let settled = self.last_rollout.as_ref().is_some_and(|r| {
            r.outcome == Outcome::Succeeded && r.release.as_ref() == Some(&release)
        });
        if !settled {
            self.begin(Some(release), generation, trigger, wall);
            self.finish(Outcome::Succeeded, wall);
        }
    }

    /// The rollout that started generation `id`, if it was the last one.
    pub fn rollout_of(&self, id: GenId) -> Option<&RolloutRecord> {
        self.last_rollout
            .as_ref()
            .filter(|r| r.generation == Some(id))
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
            .last_rollout
            .as_mut()
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
}
