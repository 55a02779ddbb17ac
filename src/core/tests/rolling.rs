//! Rolling out, failing, restarting, shutting down.

use super::*;

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
    r.hand_over(settings());
    assert_eq!(r.live(), Some((1, "app.1.0".into())));
    assert_eq!(r.f.candidate().unwrap().pid, Some(102));
    assert_eq!(r.ready(2, 1.5), vec![Action::Promote { id: 2 }, term(1)]);
    assert_eq!(r.f.last_rollout().unwrap().seq, 2);
    assert_eq!(r.want("3.0", 2.0), vec![spawn(3, "3.0")], "ids carry on");
}
