//! The last known good release (core::recovery's rule).

use super::*;

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
