//! Readiness modes, stop settings per release, and the ready deadline.

use super::*;

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
    r.hand_over(s());
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
