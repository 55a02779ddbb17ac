//! The state machine driven the way the loop drives it, with made-up pids
//! and instants.

use std::time::SystemTime;

use super::*;
use crate::readiness::{CHECK_INTERVAL, CHECK_TIMEOUT, Mode};
use crate::report::status_line;
use crate::stop::{StopSignal, StopTarget};

fn rel(v: &str) -> Release {
    Release {
        bin: format!("/r/app.{v}").into(),
        cfg: format!("/r/cfg.{v}").into(),
        ..Default::default()
    }
}

fn settings() -> Settings {
    Settings {
        ready_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(3),
        soak: Duration::ZERO,
        probation: Duration::from_secs(10),
        ready: readiness::Mode::Notify,
        stop: Stop::default(),
    }
}

/// Drives a fleet the way the loop does, giving each Spawn a pid.
struct Rig {
    f: Core,
    t0: Instant,
    next_pid: i32,
    log: Vec<Action>,
}

impl Rig {
    fn new(s: Settings) -> Rig {
        Rig {
            f: Core::new(s),
            t0: Instant::now(),
            next_pid: 100,
            log: vec![],
        }
    }
    fn at(&self, secs: f64) -> Now {
        let d = Duration::from_secs_f64(secs);
        Now {
            mono: self.t0 + d,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + d,
        }
    }
    /// Runs the pending actions; returns them.
    fn run(&mut self) -> Vec<Action> {
        let acts = self.f.take_actions();
        for a in &acts {
            if let Action::Spawn { id, .. } = a {
                self.next_pid += 1;
                self.f.spawned(*id, self.next_pid);
            }
        }
        self.log.extend(acts.clone());
        acts
    }
    fn want(&mut self, v: &str, t: f64) -> Vec<Action> {
        self.f.want(rel(v), Trigger::Edit, self.at(t));
        self.run()
    }
    fn want_as(&mut self, v: &str, trigger: Trigger, t: f64) -> Vec<Action> {
        self.f.want(rel(v), trigger, self.at(t));
        self.run()
    }
    fn ready(&mut self, id: GenId, t: f64) -> Vec<Action> {
        self.f.ready(id, Evidence::Notified, self.at(t));
        self.run()
    }
    fn exited(&mut self, id: GenId, t: f64) -> Vec<Action> {
        self.f.exited(id, "exit status 1", self.at(t));
        self.run()
    }
    fn tick(&mut self, t: f64) -> Vec<Action> {
        self.f.tick(self.at(t));
        self.run()
    }
    fn live(&self) -> Option<(GenId, String)> {
        self.f.live().map(|g| (g.id, g.release.name()))
    }
}

fn spawn(id: GenId, v: &str) -> Action {
    Action::Spawn {
        id,
        release: rel(v),
    }
}
fn term(id: GenId) -> Action {
    Action::Signal {
        id,
        sig: Sig::Stop(Stop::default()),
    }
}

#[test]
fn first_release_then_rollout_retires_old_after_ready() {
    let mut r = Rig::new(settings());
    assert_eq!(r.want("1.0", 0.0), vec![spawn(1, "1.0")]);
    assert_eq!(
        r.ready(1, 0.1),
        vec![Action::Promote { id: 1 }, Action::SystemdReady]
    );
    assert_eq!(r.want("2.0", 1.0), vec![spawn(2, "2.0")]);
    assert_eq!(
        r.live(),
        Some((1, "app.1.0".into())),
        "old serves until the new is ready"
    );
    assert_eq!(r.ready(2, 1.2), vec![Action::Promote { id: 2 }, term(1)]);
    assert_eq!(r.live(), Some((2, "app.2.0".into())));
    assert!(
        status_line(&r.f).starts_with("serving app.2.0 (pid 102, generation 2)"),
        "{}",
        status_line(&r.f)
    );
    assert_eq!(r.f.last_rollout().unwrap().outcome, Outcome::Succeeded);
    // the retired one gets SIGKILL only after stop-timeout
    assert_eq!(r.tick(3.0), vec![]);
    assert_eq!(
        r.tick(4.3),
        vec![Action::Signal {
            id: 1,
            sig: Sig::Kill
        }]
    );
    assert_eq!(r.exited(1, 4.4), vec![]);
    assert_eq!(r.f.generations().count(), 1);
}

#[test]
fn same_release_is_not_rolled_again_but_reload_is() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    assert_eq!(r.want("1.0", 1.0), vec![]);
    r.f.want(rel("1.0"), Trigger::Reload, r.at(2.0));
    assert_eq!(r.run(), vec![Action::SystemdReloading, spawn(2, "1.0")]);
    assert_eq!(
        r.ready(2, 2.1),
        vec![Action::Promote { id: 2 }, term(1), Action::SystemdReady]
    );
}

#[test]
fn crash_before_ready_keeps_old_serving() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    assert_eq!(r.exited(2, 1.1), vec![], "no restart of a failed rollout");
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
    let s = status_line(&r.f);
    assert!(s.starts_with("rollout of app.2.0 failed: exited before READY=1 (exit status 1); still serving app.1.0 (pid 101"), "{s}");
    assert!(matches!(
        r.f.last_rollout().unwrap().outcome,
        Outcome::Failed(_)
    ));
}

#[test]
fn ready_timeout_stops_the_candidate() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    assert_eq!(r.f.next_deadline(), Some(r.at(6.0).mono));
    assert_eq!(r.tick(6.0), vec![term(2)]);
    assert!(status_line(&r.f).contains("not ready within --ready-timeout 5s"));
    assert_eq!(
        r.tick(9.0),
        vec![Action::Signal {
            id: 2,
            sig: Sig::Kill
        }]
    );
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
}

#[test]
fn newer_edit_supersedes_rollout_and_back_to_live_abandons_it() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    assert_eq!(r.want("3.0", 1.1), vec![term(2), spawn(3, "3.0")]);
    assert_eq!(r.want("3.0", 1.2), vec![], "same content again: nothing");
    assert_eq!(
        r.want("1.0", 1.3),
        vec![term(3)],
        "back to the serving release"
    );
    assert!(r.f.candidate().is_none());
    let last = r.f.last_rollout().unwrap();
    assert_eq!(
        (&last.outcome, last.release.as_ref().map(Release::name)),
        (&Outcome::Succeeded, Some("app.1.0".into()))
    );
    // a late READY from a superseded generation promotes nothing
    assert_eq!(r.ready(3, 1.4), vec![]);
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
}

#[test]
fn live_death_restarts_with_backoff_and_resets_after_probation() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.tick(10.1); // probation over: 1.0 is last known good
    assert_eq!(
        r.exited(1, 20.0),
        vec![spawn(2, "1.0")],
        "first restart is immediate"
    );
    assert_eq!(r.exited(2, 20.1), vec![], "second waits");
    assert_eq!(r.f.next_deadline(), Some(r.at(20.6).mono));
    assert_eq!(r.tick(20.6), vec![spawn(3, "1.0")]);
    assert_eq!(r.exited(3, 20.7), vec![]);
    assert_eq!(
        r.f.next_deadline(),
        Some(r.at(21.7).mono),
        "1 s after 0.5 s"
    );
    assert_eq!(r.tick(21.7), vec![spawn(4, "1.0")]);
    r.ready(4, 21.8);
    r.tick(31.8); // survived probation: backoff resets
    assert_eq!(r.exited(4, 40.0), vec![spawn(5, "1.0")]);
    assert!(r.f.restarts() >= 4);
}

#[test]
fn no_probation_still_backs_off_a_release_that_dies_right_after_ready() {
    let mut r = Rig::new(Settings {
        probation: Duration::ZERO,
        ..settings()
    });
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    assert_eq!(r.exited(1, 0.2), vec![spawn(2, "1.0")]);
    r.ready(2, 0.3);
    assert_eq!(r.exited(2, 0.4), vec![], "dead within MIN_HEALTHY: backoff");
    r.tick(0.9);
    r.ready(3, 1.0);
    r.tick(2.0); // healthy for MIN_HEALTHY: reset
    assert_eq!(r.exited(3, 5.0), vec![spawn(4, "1.0")]);
}

#[test]
fn crash_in_probation_rolls_back_to_last_known_good() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.tick(10.1);
    assert_eq!(r.f.last_good().unwrap().name(), "app.1.0");
    r.want("2.0", 20.0);
    r.ready(2, 20.1);
    r.exited(1, 20.2);
    assert_eq!(
        r.exited(2, 23.5),
        vec![spawn(3, "1.0")],
        "back to 1.0, not 2.0"
    );
    r.ready(3, 23.6);
    let s = status_line(&r.f);
    assert!(
        s.starts_with(
            "release app.2.0 crashed 3 s after going live; rolled back to app.1.0; serving app.1.0"
        ),
        "{s}"
    );
    assert!(
        matches!(&r.f.last_rollout().unwrap().outcome, Outcome::Failed(m) if m.contains("rolled back"))
    );
    assert_eq!(r.f.last_rollback().unwrap().from.name(), "app.2.0");
    // a later edit tries again
    assert_eq!(r.want("2.0", 30.0), vec![spawn(4, "2.0")]);
}

#[test]
fn soak_keeps_old_until_new_has_proven_itself() {
    let mut r = Rig::new(Settings {
        soak: Duration::from_secs(5),
        ..settings()
    });
    r.want("1.0", 0.0);
    assert_eq!(
        r.ready(1, 0.1),
        vec![Action::Promote { id: 1 }, Action::SystemdReady],
        "no soak without an old one"
    );
    r.want("2.0", 1.0);
    assert_eq!(r.ready(2, 1.1), vec![], "soaking: nobody retired");
    assert_eq!(r.f.candidate().unwrap().phase.name(), "soaking");
    // dies in the soak: old carries on, nothing restarted
    assert_eq!(r.exited(2, 3.0), vec![]);
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
    assert!(status_line(&r.f).contains("died during its 5s soak"));
    // a good one survives the soak and is promoted
    r.want("3.0", 4.0);
    r.ready(3, 4.1);
    assert_eq!(r.tick(9.1), vec![Action::Promote { id: 3 }, term(1)]);
}

#[test]
fn startup_failure_retries_with_backoff_and_edit_tries_at_once() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    assert_eq!(r.exited(1, 0.1), vec![spawn(2, "1.0")]);
    assert_eq!(r.exited(2, 0.2), vec![]);
    assert!(r.f.next_deadline().is_some());
    assert_eq!(r.want("2.0", 0.3), vec![spawn(3, "2.0")]);
    assert_eq!(
        r.ready(3, 0.4),
        vec![Action::Promote { id: 3 }, Action::SystemdReady]
    );
}

#[test]
fn back_to_the_serving_release_after_a_failure_is_a_success() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    r.exited(2, 1.1);
    assert!(matches!(
        r.f.last_rollout().unwrap().outcome,
        Outcome::Failed(_)
    ));
    assert_eq!(r.want("1.0", 2.0), vec![]);
    assert_eq!(r.f.last_rollout().unwrap().outcome, Outcome::Succeeded);
    assert_eq!(r.f.last_rollout().unwrap().generation, Some(1));
    assert!(status_line(&r.f).starts_with("serving app.1.0"));
}

#[test]
fn the_last_live_release_is_the_fallback_at_startup() {
    let mut r = Rig::new(settings());
    r.f.remember_last_live(rel("1.0"));
    r.want("2.0", 0.0);
    assert_eq!(
        r.exited(1, 0.1),
        vec![spawn(2, "1.0")],
        "2.0 fails: the last live one serves"
    );
    r.ready(2, 0.2);
    assert!(
        status_line(&r.f).starts_with("rollout of app.2.0 failed"),
        "{}",
        status_line(&r.f)
    );
    // current.conf unusable at startup: the fallback serves at once.
    let mut r = Rig::new(settings());
    r.f.remember_last_live(rel("1.0"));
    r.f.conf_invalid(
        "/r/current.conf: invalid JSON".into(),
        Trigger::Startup,
        r.at(0.0),
    );
    r.f.serve_fallback(r.at(0.0));
    assert_eq!(r.run(), vec![spawn(1, "1.0")]);
}

#[test]
fn shutdown_terms_everything_then_exits() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    r.f.shutdown(r.at(2.0));
    assert_eq!(r.run(), vec![Action::SystemdStopping, term(1), term(2)]);
    assert_eq!(r.want("3.0", 2.1), vec![], "no rollouts while stopping");
    assert_eq!(r.exited(1, 2.2), vec![]);
    assert_eq!(r.exited(2, 2.3), vec![Action::Exit]);
}

#[test]
fn conf_invalid_is_a_failed_rollout_and_the_fix_clears_it() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.f.conf_invalid(
        "/r/current.conf: invalid JSON".into(),
        Trigger::Edit,
        r.at(0.5),
    );
    assert!(
        status_line(&r.f)
            .starts_with("cannot roll out /r/current.conf: invalid JSON; still serving app.1.0")
    );
    assert!(matches!(
        r.f.last_rollout().unwrap().outcome,
        Outcome::Failed(_)
    ));
    r.want("1.0", 1.0);
    assert!(status_line(&r.f).starts_with("serving app.1.0"));
}

/// `baton upgrade` hands the core to a new image as JSON: every deadline
/// and record comes back, and the transitions carry on from them.
#[test]
fn the_core_survives_a_handover_with_its_deadlines() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    let before = r.f.next_deadline().unwrap();
    let json = serde_json::to_string(&r.f).unwrap();
    r.f = serde_json::from_str::<Core>(&json)
        .unwrap()
        .with_settings(settings());
    let after = r.f.next_deadline().unwrap();
    let drift = if after > before {
        after - before
    } else {
        before - after
    };
    assert!(drift < Duration::from_millis(5), "{drift:?}");
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
    assert_eq!(r.f.candidate().unwrap().pid, Some(102));
    assert_eq!(r.ready(2, 1.5), vec![Action::Promote { id: 2 }, term(1)]);
    assert_eq!(r.f.last_rollout().unwrap().seq, 2);
    assert_eq!(r.want("3.0", 2.0), vec![spawn(3, "3.0")], "ids carry on");
}

// ---- the last known good release (core::recovery's rule) ----

#[test]
fn the_release_a_rollout_replaced_is_known_good_before_its_probation_is_up() {
    // The case: --probation 10 on 1.0; 2 s later 2.0 goes live and
    // crashes 1.5 s after.
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    assert!(r.f.last_good().is_none(), "1.0 is on probation");
    r.want("2.0", 2.0);
    assert!(r.f.last_good().is_none(), "not before 2.0 is live");
    assert_eq!(r.ready(2, 2.1), vec![Action::Promote { id: 2 }, term(1)]);
    assert_eq!(r.f.last_good().unwrap().name(), "app.1.0");
    r.exited(1, 2.2);
    assert_eq!(
        r.exited(2, 3.6),
        vec![spawn(3, "1.0")],
        "back to 1.0 at once, not 2.0 again"
    );
    assert_eq!(r.f.get(3).unwrap().trigger, Trigger::Rollback);
    let held = r.f.held_back().unwrap();
    assert_eq!(
        (held.release.name(), held.reason.as_str()),
        ("app.2.0".into(), "crashed 1 s after going live")
    );
    r.ready(3, 3.7);
    let s = status_line(&r.f);
    assert!(
        s.starts_with("release app.2.0 crashed 1 s after going live; rolled back to app.1.0; serving app.1.0 (pid 103, generation 3)"),
        "{s}"
    );
    // Nothing starts 2.0 again but current.conf: not the passing of time,
    // nor 1.0 dying (1.0 is restarted).
    assert_eq!(r.tick(100.0), vec![]);
    assert_eq!(r.exited(3, 101.0), vec![spawn(4, "1.0")]);
    r.ready(4, 101.1);
    assert!(r.f.held_back().is_some());
    assert_eq!(r.want("2.0", 102.0), vec![spawn(5, "2.0")]);
    assert!(r.f.held_back().is_none(), "an edit asks again");
}

#[test]
fn a_generation_that_dies_or_is_stopped_proves_nothing() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    // Dies in probation, nothing good yet: restarted, not good.
    assert_eq!(r.exited(1, 1.0), vec![spawn(2, "1.0")]);
    r.ready(2, 1.1);
    assert!(r.f.last_good().is_none());
    // Stopped by baton's own shutdown: no verdict either.
    r.f.shutdown(r.at(2.0));
    r.run();
    r.exited(2, 2.1);
    assert!(r.f.last_good().is_none());
}

#[test]
fn a_rollback_is_at_once_even_after_restarts_that_have_not_reset_the_backoff() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    assert_eq!(r.exited(1, 1.0), vec![spawn(2, "1.0")]);
    r.ready(2, 1.1);
    assert_eq!(r.exited(2, 2.0), vec![], "the second restart backs off");
    assert_eq!(r.tick(2.5), vec![spawn(3, "1.0")]);
    r.ready(3, 2.6);
    r.want("2.0", 3.0);
    r.ready(4, 3.1); // 1.0 retired while serving: good
    r.exited(3, 3.2);
    assert_eq!(r.exited(4, 4.0), vec![spawn(5, "1.0")], "no backoff");
    // 1.0 itself dying in its probation is restarted with backoff again.
    r.ready(5, 4.1);
    assert_eq!(r.exited(5, 4.2), vec![]);
    assert!(r.f.pending_restart().is_some());
}

#[test]
fn a_crash_while_a_newer_rollout_is_in_flight_lets_the_newer_one_take_over() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    r.ready(2, 1.1);
    r.exited(1, 1.2);
    r.want("3.0", 1.5);
    assert_eq!(r.exited(2, 2.0), vec![], "3.0 is starting: no rollback");
    assert_eq!(r.ready(3, 2.1), vec![Action::Promote { id: 3 }]);
    assert_eq!(r.live(), Some((3, "app.3.0".into())));
    // Had 3.0 failed, the fallback would have been 1.0, not 2.0.
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    r.ready(2, 1.1);
    r.exited(1, 1.2);
    r.want("3.0", 1.5);
    r.exited(2, 2.0);
    assert_eq!(r.exited(3, 2.1), vec![spawn(4, "1.0")]);
}

#[test]
fn a_restarted_baton_believes_what_the_one_before_knew() {
    let held = || HeldBack {
        release: rel("2.0"),
        reason: "crashed 1 s after going live".into(),
        at: SystemTime::UNIX_EPOCH,
        conf: Some("conf-a".into()),
    };
    // current.conf unchanged: 2.0 is held back, 1.0 serves instead.
    let mut r = Rig::new(settings());
    r.f.carry(Some(rel("1.0")), Some(held()));
    assert_eq!(
        r.want_as("2.0", Trigger::Startup, 0.0),
        vec![spawn(1, "1.0")]
    );
    assert_eq!(r.f.get(1).unwrap().trigger, Trigger::Rollback);
    r.ready(1, 0.1);
    let s = status_line(&r.f);
    assert!(
        s.starts_with("current.conf names app.2.0, held back: it crashed 1 s after going live; serving app.1.0 (pid 101, generation 1)"),
        "{s}"
    );
    let last = r.f.last_rollout().unwrap();
    assert_eq!(
        (last.release.as_ref().map(Release::name), &last.outcome),
        (
            Some("app.2.0".into()),
            &Outcome::Failed("held back: it crashed 1 s after going live".into())
        )
    );
    // An edit tries 2.0; it crashes in probation: back to 1.0 at once.
    assert_eq!(r.want("2.0", 5.0), vec![spawn(2, "2.0")]);
    r.ready(2, 5.1);
    r.exited(1, 5.2);
    assert_eq!(r.exited(2, 6.0), vec![spawn(3, "1.0")]);

    // current.conf changed while baton was down (the loop carries no
    // hold): 2.0 is tried, and the carried last known good is what it
    // goes back to.
    let mut r = Rig::new(settings());
    r.f.carry(Some(rel("1.0")), None);
    assert_eq!(
        r.want_as("2.0", Trigger::Startup, 0.0),
        vec![spawn(1, "2.0")]
    );
    r.ready(1, 0.1);
    assert_eq!(r.exited(1, 1.6), vec![spawn(2, "1.0")]);
    assert_eq!(r.f.held_back().unwrap().release.name(), "app.2.0");
}

// ---- the history of rollouts ----

#[test]
fn the_history_says_who_replaced_whom_and_how_each_rollout_ended() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    r.ready(2, 1.1);
    r.exited(1, 1.2);
    r.want("3.0", 2.0);
    r.exited(3, 2.1); // fails before READY=1
    r.want("4.0", 3.0);
    r.want("5.0", 3.1); // supersedes 4.0
    r.ready(5, 3.2);
    r.exited(4, 3.3);
    r.exited(2, 3.4);
    r.exited(5, 4.0); // in probation: back to 2.0
    r.ready(6, 4.1);
    r.tick(14.1); // its probation is over
    r.exited(6, 20.0); // restarted
    r.ready(7, 20.1);
    type Row = (
        u64,
        String,
        Trigger,
        Outcome,
        Option<GenId>,
        Option<(String, GenId)>,
    );
    let got: Vec<Row> =
        r.f.rollouts()
            .map(|h| {
                (
                    h.seq,
                    h.release.as_ref().map(Release::name).unwrap_or_default(),
                    h.trigger,
                    h.outcome.clone(),
                    h.generation,
                    h.replaced
                        .as_ref()
                        .map(|p| (p.release.clone(), p.generation)),
                )
            })
            .collect();
    let rolled_back = "release app.5.0 crashed 0 s after going live; rolled back to app.2.0";
    assert_eq!(
        got,
        vec![
            (
                1,
                "app.1.0".into(),
                Trigger::Edit,
                Outcome::Succeeded,
                Some(1),
                None
            ),
            (
                2,
                "app.2.0".into(),
                Trigger::Edit,
                Outcome::Succeeded,
                Some(2),
                Some(("app.1.0".into(), 1))
            ),
            (
                3,
                "app.3.0".into(),
                Trigger::Edit,
                Outcome::Failed("exited before READY=1 (exit status 1)".into()),
                Some(3),
                None
            ),
            (
                4,
                "app.4.0".into(),
                Trigger::Edit,
                Outcome::Superseded,
                Some(4),
                None
            ),
            (
                5,
                "app.5.0".into(),
                Trigger::Edit,
                Outcome::Failed(rolled_back.into()),
                Some(5),
                Some(("app.2.0".into(), 2))
            ),
            (
                6,
                "app.2.0".into(),
                Trigger::Rollback,
                Outcome::Succeeded,
                Some(6),
                Some(("app.5.0".into(), 5))
            ),
            (
                7,
                "app.2.0".into(),
                Trigger::Restart,
                Outcome::Succeeded,
                Some(7),
                Some(("app.2.0".into(), 6))
            ),
        ]
    );
    assert_eq!(r.f.last_rollout().unwrap().seq, 5, "the last one asked for");
}

// ---- readiness modes ----

fn with_opts(v: &str, opts: crate::config::Opts) -> Release {
    Release { opts, ..rel(v) }
}

fn ready_mode(mode: &str) -> crate::config::Opts {
    crate::config::Opts {
        ready: Some(Mode::parse(mode).unwrap()),
        ..Default::default()
    }
}

impl Rig {
    fn execd(&mut self, id: GenId, t: f64) -> Vec<Action> {
        self.f.execd(id, self.at(t));
        self.run()
    }
    fn check(&mut self, id: GenId, passed: bool, t: f64) -> Vec<Action> {
        let how = if passed {
            "exit status 0"
        } else {
            "exit status 1"
        };
        self.f.check_exited(id, passed, how.into(), self.at(t));
        self.run()
    }
    fn want_release(&mut self, r: Release, t: f64) -> Vec<Action> {
        self.f.want(r, Trigger::Edit, self.at(t));
        self.run()
    }
}

fn check(id: GenId, cmd: &str) -> Action {
    Action::Check {
        id,
        command: cmd.into(),
    }
}

#[test]
fn after_is_ready_its_span_after_the_exec_and_dying_first_fails_the_rollout() {
    let mut r = Rig::new(Settings {
        ready: Mode::parse("after:2s").unwrap(),
        ..settings()
    });
    r.want("1.0", 0.0);
    assert_eq!(r.ready(1, 0.1), vec![], "READY=1 means nothing to after:");
    assert_eq!(
        r.tick(3.0),
        vec![],
        "the span starts at the exec, not the spawn"
    );
    assert_eq!(r.execd(1, 0.5), vec![]);
    assert_eq!(r.f.next_deadline(), Some(r.at(2.5).mono));
    assert_eq!(r.tick(2.4), vec![]);
    assert_eq!(
        r.tick(2.5),
        vec![Action::Promote { id: 1 }, Action::SystemdReady]
    );
    // A release that dies within its span is a failed rollout; 1.0 serves on.
    r.want("2.0", 10.0);
    r.execd(2, 10.1);
    assert_eq!(r.exited(2, 11.0), vec![]);
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
    let s = status_line(&r.f);
    assert!(
        s.starts_with("rollout of app.2.0 failed: exited before its after:2s span was over (exit status 1); still serving app.1.0"),
        "{s}"
    );
}

#[test]
fn exec_is_ready_once_the_exec_worked() {
    let mut r = Rig::new(Settings {
        ready: Mode::Exec,
        ..settings()
    });
    r.want("1.0", 0.0);
    assert_eq!(
        r.ready(1, 0.1),
        vec![],
        "READY=1 is not what exec waits for"
    );
    assert_eq!(
        r.execd(1, 0.2),
        vec![Action::Promote { id: 1 }, Action::SystemdReady]
    );
    assert_eq!(r.execd(1, 0.3), vec![], "once");
}

#[test]
fn check_runs_until_it_passes_one_attempt_at_a_time() {
    let mut r = Rig::new(Settings {
        ready: Mode::parse("check:curl -fsS localhost:8081").unwrap(),
        ..settings()
    });
    r.want("1.0", 0.0);
    assert_eq!(r.tick(0.05), vec![], "no check before the exec");
    assert_eq!(r.execd(1, 0.1), vec![check(1, "curl -fsS localhost:8081")]);
    assert_eq!(r.tick(0.5), vec![], "one attempt at a time");
    assert_eq!(r.check(1, false, 0.6), vec![]);
    let next = 0.6 + CHECK_INTERVAL.as_secs_f64();
    assert_eq!(r.f.next_deadline(), Some(r.at(next).mono));
    assert_eq!(r.tick(next), vec![check(1, "curl -fsS localhost:8081")]);
    assert_eq!(
        r.check(1, true, next + 0.01),
        vec![Action::Promote { id: 1 }, Action::SystemdReady],
        "passed: live, and nothing left to cancel"
    );
    assert_eq!(
        r.check(1, true, next + 0.02),
        vec![],
        "a late exit changes nothing"
    );
}

#[test]
fn a_hung_check_attempt_is_killed_and_the_checks_go_on() {
    let mut r = Rig::new(Settings {
        ready: Mode::parse("check:sleep 60").unwrap(),
        ready_timeout: Duration::from_secs(60),
        ..settings()
    });
    r.want("1.0", 0.0);
    r.execd(1, 0.0);
    let t = CHECK_TIMEOUT.as_secs_f64();
    assert_eq!(r.f.next_deadline(), Some(r.at(t).mono));
    assert_eq!(r.tick(t), vec![Action::CancelCheck { id: 1 }]);
    assert_eq!(r.tick(t + 1.0), vec![], "killed once");
    assert_eq!(r.check(1, false, t + 0.01), vec![]);
    assert_eq!(
        r.tick(t + 0.01 + CHECK_INTERVAL.as_secs_f64()),
        vec![check(1, "sleep 60")]
    );
}

#[test]
fn a_check_that_never_passes_fails_the_rollout_at_the_ready_timeout_with_its_story() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want_release(with_opts("2.0", ready_mode("check:false")), 1.0);
    r.execd(2, 1.0);
    let mut t = 1.0;
    while t < 5.8 {
        r.check(2, false, t + 0.01);
        t += 0.01 + CHECK_INTERVAL.as_secs_f64();
        assert_eq!(r.tick(t), vec![check(2, "false")]);
    }
    // The ready timeout arrives while an attempt runs: it is cancelled with
    // the generation.
    assert_eq!(r.tick(6.0), vec![Action::CancelCheck { id: 2 }, term(2)]);
    let s = status_line(&r.f);
    assert!(
        s.contains("rollout of app.2.0 failed: not ready within --ready-timeout 5s (")
            && s.contains(
                " check attempts failed, the last: exit status 1); still serving app.1.0"
            ),
        "{s}"
    );
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
}

#[test]
fn a_running_check_is_cancelled_when_its_generation_dies_or_is_superseded() {
    let mut r = Rig::new(Settings {
        ready: Mode::parse("check:true").unwrap(),
        ..settings()
    });
    r.want("1.0", 0.0);
    r.execd(1, 0.0);
    r.check(1, true, 0.1);
    r.want("2.0", 1.0);
    assert_eq!(r.execd(2, 1.1), vec![check(2, "true")]);
    assert_eq!(
        r.exited(2, 1.2),
        vec![Action::CancelCheck { id: 2 }],
        "the generation died while its check ran"
    );
    assert!(status_line(&r.f).contains("exited before its check passed (exit status 1)"));
    r.want("2.0", 2.0);
    assert_eq!(r.execd(3, 2.1), vec![check(3, "true")]);
    assert_eq!(
        r.want("3.0", 2.2),
        vec![Action::CancelCheck { id: 3 }, term(3), spawn(4, "3.0")],
        "superseded while its check ran"
    );
}

#[test]
fn the_releases_own_settings_win_over_the_flags() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    // 2.0 says after:1s: READY=1 does nothing for it, surviving does.
    r.want_release(with_opts("2.0", ready_mode("after:1s")), 1.0);
    assert_eq!(r.ready(2, 1.1), vec![]);
    r.execd(2, 1.1);
    assert_eq!(r.tick(2.1), vec![Action::Promote { id: 2 }, term(1)]);
    // 3.0 is stopped with SIGQUIT to its leader alone, as it says.
    let quit = Stop {
        signal: StopSignal::parse("QUIT").unwrap(),
        target: StopTarget::Leader,
    };
    let opts = crate::config::Opts {
        stop_signal: Some(quit.signal),
        stop_target: Some(quit.target),
        ..Default::default()
    };
    r.want_release(with_opts("3.0", opts), 3.0);
    assert_eq!(r.ready(3, 3.1), vec![Action::Promote { id: 3 }, term(2)]);
    r.want("4.0", 4.0);
    assert_eq!(
        r.ready(4, 4.1),
        vec![
            Action::Promote { id: 4 },
            Action::Signal {
                id: 3,
                sig: Sig::Stop(quit)
            }
        ]
    );
    // Shutdown asks each in its own way, and SIGKILL goes to all alike.
    r.want_release(with_opts("3.0", ready_mode("exec")), 5.0);
    r.execd(5, 5.1);
    r.f.shutdown(r.at(6.0));
    assert_eq!(
        r.run(),
        vec![Action::SystemdStopping, term(5)],
        "the live 3.0 (exec mode, default stop)"
    );
}

#[test]
fn the_flags_stop_signal_applies_to_every_release_without_its_own() {
    let hup = Stop {
        signal: StopSignal::parse("HUP").unwrap(),
        target: StopTarget::Group,
    };
    let mut r = Rig::new(Settings {
        stop: hup,
        ..settings()
    });
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    assert_eq!(
        r.ready(2, 1.1),
        vec![
            Action::Promote { id: 2 },
            Action::Signal {
                id: 1,
                sig: Sig::Stop(hup)
            }
        ]
    );
    assert_eq!(
        r.tick(4.2),
        vec![Action::Signal {
            id: 1,
            sig: Sig::Kill
        }],
        "SIGKILL after --stop-timeout whatever the stop signal"
    );
}

#[test]
fn a_settings_change_alone_is_a_new_release_to_roll_out() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    let mut opts = crate::config::Opts::default();
    opts.env.insert("A".into(), "1".into());
    let v2 = with_opts("1.0", opts.clone());
    assert_eq!(
        r.want_release(v2.clone(), 1.0),
        vec![Action::Spawn {
            id: 2,
            release: v2.clone()
        }]
    );
    assert_eq!(
        r.want_release(v2.clone(), 1.1),
        vec![],
        "the same again: nothing"
    );
    r.ready(2, 1.2);
    assert_eq!(
        r.live(),
        Some((2, "app.1.0".into())),
        "the name is the files'"
    );
    opts.env.insert("A".into(), "2".into());
    assert_eq!(r.want_release(with_opts("1.0", opts), 2.0).len(), 1);
}

#[test]
fn an_after_span_no_shorter_than_the_ready_timeout_never_fits() {
    let r = Rig::new(settings());
    assert_eq!(
        r.f.check_fits(&with_opts("2.0", ready_mode("after:4s"))),
        Ok(())
    );
    let e =
        r.f.check_fits(&with_opts("2.0", ready_mode("after:5s")))
            .unwrap_err();
    assert!(e.contains("shorter than --ready-timeout 5s"), "{e}");
    assert_eq!(r.f.check_fits(&rel("2.0")), Ok(()));
}

#[test]
fn extend_timeout_moves_the_ready_deadline_later_never_earlier() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    // Before baton's own READY=1, systemd's start timeout is extended too.
    r.f.extend_timeout(1, Duration::from_secs(30), r.at(0.05));
    assert_eq!(
        r.run(),
        vec![Action::SystemdExtend {
            more: Duration::from_secs(30)
        }]
    );
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    let deadline = |r: &Rig| r.f.get(2).and_then(|g| g.phase.deadline());
    assert_eq!(deadline(&r), Some(r.at(6.0).mono));
    r.f.extend_timeout(2, Duration::from_secs(1), r.at(2.0));
    assert_eq!(deadline(&r), Some(r.at(6.0).mono), "never earlier");
    r.f.extend_timeout(2, Duration::from_secs(10), r.at(2.0));
    assert_eq!(deadline(&r), Some(r.at(12.0).mono));
    assert_eq!(r.run(), vec![], "baton itself is ready already");
    assert_eq!(r.tick(6.0), vec![], "the old deadline no longer fails it");
    assert_eq!(r.ready(2, 11.0), vec![Action::Promote { id: 2 }, term(1)]);
    // Once live, extending changes nothing.
    r.f.extend_timeout(2, Duration::from_secs(100), r.at(12.0));
    assert_eq!(deadline(&r), Some(r.at(21.0).mono), "its probation");
}

/// A starting generation's readiness crosses `baton upgrade`: an `after:`
/// span still ends when it would have; a check attempt the old image killed
/// is tried again at once.
#[test]
fn readiness_progress_survives_a_handover() {
    let s = || Settings {
        ready: Mode::parse("after:2s").unwrap(),
        ..settings()
    };
    let mut r = Rig::new(s());
    r.want("1.0", 0.0);
    r.execd(1, 0.5);
    let before = r.f.next_deadline().unwrap();
    let json = serde_json::to_string(&r.f).unwrap();
    r.f = serde_json::from_str::<Core>(&json)
        .unwrap()
        .with_settings(s());
    let after = r.f.next_deadline().unwrap();
    let drift = if after > before {
        after - before
    } else {
        before - after
    };
    assert!(drift < Duration::from_millis(5), "{drift:?}");
    // (Instants come back through CLOCK_MONOTONIC readings: a hair off.)
    assert_eq!(
        r.tick(2.51),
        vec![Action::Promote { id: 1 }, Action::SystemdReady]
    );

    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want_release(with_opts("2.0", ready_mode("check:true")), 1.0);
    assert_eq!(r.execd(2, 1.0), vec![check(2, "true")]);
    r.f.interrupt_checks(r.at(1.2));
    let json = serde_json::to_string(&r.f).unwrap();
    r.f = serde_json::from_str::<Core>(&json)
        .unwrap()
        .with_settings(settings());
    assert_eq!(r.tick(1.21), vec![check(2, "true")]);
}

fn survivor(v: &str, pid: i32, was_live: bool) -> Survivor {
    Survivor {
        release: rel(v),
        pid,
        start_time: Some(12345),
        was_live,
        trigger: Trigger::Edit,
        started_wall: SystemTime::UNIX_EPOCH,
    }
}

/// A baton that finds its predecessor's live generation still running
/// lets it serve until its own generation is live, then retires it; one
/// that was starting is retired at once.
#[test]
fn a_survivor_serves_until_a_generation_of_this_baton_is_live() {
    let mut r = Rig::new(settings());
    let old = r.f.adopt(survivor("1.0", 50, true), r.at(0.0));
    let starting = r.f.adopt(survivor("2.0", 51, false), r.at(0.0));
    assert_eq!(
        r.run(),
        vec![term(starting)],
        "only the one that was not live is retired at once"
    );
    assert_eq!(r.f.get(old).unwrap().phase, Phase::Adopted);
    assert_eq!(r.f.by_pid(50), Some(old), "its notifications count");
    let acts = r.want_as("1.0", Trigger::Startup, 0.0);
    assert!(
        matches!(acts.as_slice(), [Action::Spawn { .. }]),
        "a generation of its own, although the survivor runs the same release: {acts:?}"
    );
    let new = r.f.candidate().unwrap().id;
    assert!(
        status_line(&r.f).starts_with(
            "serving app.1.0 (pid 50, adopted from the baton before this one); starting app.1.0"
        ),
        "{}",
        status_line(&r.f)
    );
    assert_eq!(Phase::Adopted.deadline(), None, "no deadline of its own");
    let acts = r.ready(new, 0.5);
    assert!(acts.contains(&term(old)), "{acts:?}");
    assert!(r.f.get(old).unwrap().phase.is_retiring());
    // Each drains like any retired generation: SIGKILL after --stop-timeout
    // (the one retired at once first, the one that served 0.5 s later).
    assert_eq!(
        r.tick(3.1),
        vec![Action::Signal {
            id: starting,
            sig: Sig::Kill
        }]
    );
    assert_eq!(
        r.tick(3.5),
        vec![Action::Signal {
            id: old,
            sig: Sig::Kill
        }]
    );
    r.exited(old, 3.6);
    r.exited(starting, 3.6);
    assert_eq!(r.f.generations().count(), 1);
    assert_eq!(r.f.live().unwrap().id, new);
}

/// A survivor serves on when this baton's own first rollout fails, and is
/// retired like the rest when baton stops.
#[test]
fn a_survivor_serves_on_while_nothing_of_this_baton_does_and_stops_with_it() {
    let mut r = Rig::new(settings());
    let old = r.f.adopt(survivor("1.0", 50, true), r.at(0.0));
    r.run();
    r.want_as("3.0", Trigger::Startup, 0.0);
    let c = r.f.candidate().unwrap().id;
    r.exited(c, 0.2);
    assert_eq!(r.f.get(old).unwrap().phase, Phase::Adopted, "still serving");
    assert!(
        status_line(&r.f).contains("still serving app.1.0 (pid 50, adopted"),
        "{}",
        status_line(&r.f)
    );
    r.f.shutdown(r.at(1.0));
    let acts = r.run();
    assert!(acts.contains(&term(old)), "{acts:?}");
    let rest: Vec<GenId> = r.f.generations().map(|g| g.id).collect();
    assert!(rest.contains(&old));
    assert!(r.f.generations().all(|g| g.phase.is_retiring()));
    let mut last = vec![];
    for id in rest {
        last = r.exited(id, 1.1);
    }
    assert!(last.contains(&Action::Exit), "{last:?}");
}
