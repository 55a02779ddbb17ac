//! Faults found by probing what the other tests did not cover: the order
//! in which baton tells things, races between events that arrive together,
//! storms, concurrent operators, a state directory that fills up or turns
//! read-only, exhausted kernel resources, broken input from whoever started
//! baton, and apps that misbehave around READY=1. Each is one clear error
//! naming the file or the reason; the serving generation serves on;
//! nothing leaks.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::util::*;

/// Waits (without draining the fake systemd) until the state file says
/// release `v` serves with nothing starting.
fn live_quietly(rig: &Rig, v: &str) {
    let name = format!("app.{v}");
    let ok = wait_until(PATIENCE, || {
        rig.state().is_some_and(|s| {
            s["serving"]["release"]["name"] == name.as_str()
                && s["generations"].as_array().is_some_and(|g| g.len() == 1)
        })
    });
    assert!(ok, "{name} did not come to serve alone\n{}", rig.log());
}

/// A reader that sees a STATUS= from baton finds the state file saying at
/// least as much: baton replaces the state file first, then tells systemd.
#[test]
fn the_state_file_is_written_before_status_is_sent() {
    let mut rig = Rig::new("p-order");
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        rig.start(&[]);
        let reader = scope.spawn(|| rig.freeze_on_each_status(&done));
        live_quietly(&rig, "1.0");
        for v in ["2.0", "1.0", "2.0", "1.0", "2.0", "1.0"] {
            rig.point(v);
            live_quietly(&rig, v);
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    assert!(seen.len() >= 7, "{seen:#?}");
    let statuses: Vec<&str> = seen.iter().map(|s| s.status.as_str()).collect();
    for (i, s) in seen.iter().enumerate() {
        let current_or_later = s
            .state_status
            .as_deref()
            .is_some_and(|st| statuses[i..].contains(&st));
        assert!(
            current_or_later,
            "STATUS={:?} was sent while the state file said {:?}\nall: {seen:#?}",
            s.status, s.state_status
        );
    }
}
