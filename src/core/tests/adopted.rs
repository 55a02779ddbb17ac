//! Generations that outlived the baton before this one.

use super::*;

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
