//! The state machine driven the way the loop drives it, with made-up pids
//! and instants.

use std::time::SystemTime;

use super::*;
use crate::readiness::{CHECK_INTERVAL, CHECK_TIMEOUT, Evidence, Mode};
use crate::report::status_line;
use crate::stop::{StopSignal, StopTarget};

/// A release named `v`, for the state machine's tests (its files never
/// exist).
pub(super) fn rel(v: &str) -> Release {
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
    /// Hands the core over as `baton upgrade` does (JSON, then the
    /// settings of the new image) and asserts its next deadline came back
    /// where it was (instants come back through CLOCK_MONOTONIC readings: a
    /// hair off).
    fn hand_over(&mut self, s: Settings) {
        let before = self.f.next_deadline().unwrap();
        let json = serde_json::to_string(&self.f).unwrap();
        self.f = serde_json::from_str::<Core>(&json)
            .unwrap()
            .with_settings(s);
        let after = self.f.next_deadline().unwrap();
        let drift = if after > before {
            after - before
        } else {
            before - after
        };
        assert!(drift < Duration::from_millis(5), "{drift:?}");
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

mod adopted;
mod known_good;
mod ready_modes;
mod record;
mod rolling;
