use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn run_defaults_and_flags() {
    let Command::Run(r) = parse(&args("run --config /x/current.conf")).unwrap() else {
        panic!()
    };
    assert_eq!(r.ready_timeout, Duration::from_secs(20));
    assert_eq!(r.stop_timeout, Duration::from_secs(30));
    assert_eq!(r.probation, Duration::from_secs(10));
    assert_eq!(r.soak, Duration::ZERO);
    let Command::Run(r) = parse(&args(
        "run --config=/c --listen 127.0.0.1:3000 --listen=unix:/tmp/s --ready-timeout 500ms --stop-timeout=2 --soak 1s --insecure-permissions",
    ))
    .unwrap() else {
        panic!()
    };
    assert_eq!(r.listen, vec!["127.0.0.1:3000", "unix:/tmp/s"]);
    assert_eq!(r.ready_timeout, Duration::from_millis(500));
    assert_eq!(r.stop_timeout, Duration::from_secs(2));
    assert!(r.insecure_permissions);
    assert_eq!(r.ready, Mode::Notify);
    assert_eq!(r.stop, Stop::default());
}

#[test]
fn readiness_and_stop_flags() {
    let parse_run = |v: &[&str]| {
        let mut a = vec!["run".to_owned(), "--config".into(), "/c".into()];
        a.extend(v.iter().map(|s| s.to_string()));
        match parse(&a) {
            Ok(Command::Run(r)) => Ok(r),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.0),
        }
    };
    let r = parse_run(&[
        "--ready",
        "check:curl -fsS http://127.0.0.1:8081/",
        "--stop-signal",
        "QUIT",
        "--stop-target=leader",
    ])
    .unwrap();
    assert_eq!(
        r.ready,
        Mode::Check("curl -fsS http://127.0.0.1:8081/".into())
    );
    assert_eq!(r.stop.signal.to_string(), "SIGQUIT");
    assert_eq!(r.stop.target, StopTarget::Leader);
    let r = parse_run(&["--ready=after:2s", "--stop-signal=2"]).unwrap();
    assert_eq!(r.ready, Mode::After(Duration::from_secs(2)));
    assert_eq!(r.stop.signal.to_string(), "SIGINT");
    assert_eq!(parse_run(&["--ready", "exec"]).unwrap().ready, Mode::Exec);
    for (args, want) in [
        (
            vec!["--ready", "sometimes"],
            "run: --ready 'sometimes': 'sometimes' is not a readiness mode",
        ),
        (vec!["--ready", "after:0"], "greater than zero"),
        (vec!["--ready", "check:"], "check: needs a command"),
        (vec!["--ready"], "--ready needs a value"),
        (
            vec!["--ready", "after:20s"],
            "run: --ready: ready after:20s can never be met: the span must be shorter than --ready-timeout 20s",
        ),
        (
            vec!["--ready", "after:10s", "--ready-timeout", "5s"],
            "shorter than --ready-timeout 5s",
        ),
        (
            vec!["--stop-signal", "KILL"],
            "run: --stop-signal 'KILL': SIGKILL cannot be a stop signal",
        ),
        (vec!["--stop-signal", "NOPE"], "'NOPE' is not a signal name"),
        (
            vec!["--stop-target", "all"],
            "run: --stop-target 'all': 'all' is neither group nor leader",
        ),
    ] {
        let e = parse_run(&args).expect_err(&format!("{args:?}"));
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains('\n'));
    }
}

#[test]
fn usage_errors() {
    for bad in [
        "",
        "frobnicate",
        "run",
        "run --config",
        "run --config /c --bogus",
        "run --config /c --ready-timeout soon",
        "run --config /c --ready-timeout 0",
        "run --config /c --listen nowhere",
        "run --config /c extra",
        "status",
        "switch --config /c",
        "status --config /c --wait",
    ] {
        let e = parse(&args(bad)).expect_err(bad);
        assert!(!e.0.contains('\n'), "{bad}: {e}");
    }
}

#[test]
fn client_commands() {
    assert_eq!(
        parse(&args("switch 2.0 --config /c --wait=5s")).unwrap(),
        Command::Switch {
            release: "2.0".into(),
            target: Target {
                config: "/c".into(),
                app_dir: None
            },
            wait: Some(Duration::from_secs(5)),
        }
    );
    assert_eq!(
        parse(&args("status --config /c --json")).unwrap(),
        Command::Status {
            target: Target {
                config: "/c".into(),
                app_dir: None
            },
            json: true
        }
    );
    assert!(matches!(
        parse(&args("reload --help")).unwrap(),
        Command::Help(RELOAD_HELP)
    ));
    assert_eq!(
        parse(&args("history --config /c --json")).unwrap(),
        Command::History {
            target: Target {
                config: "/c".into(),
                app_dir: None
            },
            json: true
        }
    );
    assert!(matches!(
        parse(&args("history --help")).unwrap(),
        Command::Help(HISTORY_HELP)
    ));
    assert!(parse(&args("history --config /c --wait")).is_err());
    assert!(HISTORY_HELP.contains(&format!(
        "The last {} rollouts",
        crate::core::history::HISTORY_LEN
    )));
}
