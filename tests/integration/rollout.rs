//! The promise: edit current.conf, the service moves to that release with no
//! failed request, and moves back the same way.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn rolls_forward_and_back_under_load_without_a_failed_request() {
    let mut rig = Rig::new("flip");
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    rig.start(&[]);
    rig.wait_note("READY=1");
    let mut live = rig.wait_live("1.0");
    rig.wait_status(&format!("serving app.1.0 (pid {live}, generation 1)"));

    let load = Load::start(rig.port, 4);
    let mut retired = Vec::new();
    for (i, v) in ["2.0", "1.0", "2.0", "1.0", "2.0", "1.0"]
        .iter()
        .enumerate()
    {
        rig.point(v);
        let new = rig.wait_live(v);
        assert_ne!(new, live, "flip {i}: a new generation serves");
        retired.push(live);
        live = new;
        rig.wait_status(&format!(
            "serving app.{v} (pid {live}, generation {})",
            i + 2
        ));
        // The retired generation drains and is reaped: gone, not a zombie.
        let old = *retired.last().unwrap();
        rig.wait(&format!("retired pid {old} to be gone"), || !alive(old));
    }
    let report = load.stop();
    assert_eq!(
        report.failed,
        0,
        "failed requests: {:?}\n{}",
        &report.errors[..report.errors.len().min(10)],
        rig.log()
    );
    assert!(report.ok > 100, "the load ran: {report:?}");
    assert_eq!(
        report
            .by_release
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["1.0", "2.0"]
    );
    assert!(retired.iter().all(|p| !alive(*p)));
    rig.assert_children(1);
    // READY=1 once, when the first generation was live.
    let readies = rig
        .notifications()
        .iter()
        .filter(|n| n.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(readies, 1, "{:#?}", rig.notifications());
    // The links show what serves.
    assert_eq!(
        std::fs::read_link(rig.app_dir.join("app.bin")).unwrap(),
        rig.release_dir.join("app.1.0")
    );
    assert_eq!(
        std::fs::read_link(rig.app_dir.join("app.cfg")).unwrap(),
        rig.release_dir.join("cfg.1.0")
    );
    let state = rig.state().unwrap();
    assert_eq!(state["serving"]["pid"], live);
    assert_eq!(state["last_rollout"]["result"], "succeeded");
}

#[test]
fn a_generation_gets_the_socket_its_pid_and_nothing_else() {
    let mut rig = Rig::new("env");
    // A wrapper script records what it inherited (signal mask and ignored
    // signals, before any Rust runtime touches them), then execs the app:
    // LISTEN_PID stays right across the exec.
    let wrapper = rig.release_dir.join("app.1.0");
    let sig_file = rig.tmp.0.join("signals");
    std::fs::write(
        &wrapper,
        format!(
            // Builtins only: a forking command would see the shell's own
            // mask while it blocks signals around fork().
            "#!/bin/sh\nwhile read -r k v; do case $k in SigBlk:|SigIgn:) echo \"$k\t$v\";; esac; done < /proc/self/status > {0}\necho \"argv0=$0\" >> {0}\nexec {APP} \"$@\"\n",
            sig_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(rig.release_dir.join("cfg.1.0"), r#"{"release": "1.0"}"#).unwrap();
    rig.point("1.0");
    // A stray inherited fd without CLOEXEC must not reach the app.
    let stray = std::fs::File::open("/dev/null").unwrap();
    let stray_fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    nix::fcntl::fcntl(
        &stray,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    rig.start(&[]);
    let pid = rig.wait_serving("1.0");
    drop(stray);

    let (_, body) = rig.get("/info").unwrap();
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        info["listen_pid"],
        pid.to_string(),
        "LISTEN_PID is the app's own pid"
    );
    assert_eq!(info["listen_fds"], "1");
    assert_eq!(
        info["listen_fdnames"], "app.socket",
        "LISTEN_FDNAMES passed on as received"
    );
    assert_eq!(
        info["notify_socket"],
        path_str(&rig.runtime_dir.join("notify.sock")),
        "NOTIFY_SOCKET is baton's"
    );
    assert_eq!(info["watchdog_usec"], serde_json::Value::Null);
    assert_eq!(info["pgid"], pid, "own process group");
    assert_eq!(info["ppid"], rig.baton_pid());
    assert_eq!(info["cwd"], path_str(&rig.app_dir));
    // argv[0] is bin.file as named (the wrapper's exec then renames it).
    assert_eq!(info["argv"][1], "-c");
    assert_eq!(info["argv"][2], path_str(&rig.release_dir.join("cfg.1.0")));
    let fds: Vec<(i64, String)> = info["fds_at_start"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_i64().unwrap(), e[1].as_str().unwrap().to_owned()))
        .filter(|(_, t)| !t.starts_with("/proc/")) // the app's own read_dir
        .collect();
    let numbers: Vec<i64> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        [0, 1, 2, 3],
        "only stdio and the socket (stray fd was {stray_fd}): {fds:?}"
    );
    assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
    let sigs = std::fs::read_to_string(&sig_file).unwrap();
    assert!(
        sigs.contains("SigBlk:\t0000000000000000"),
        "default mask: {sigs}"
    );
    assert!(
        sigs.contains("SigIgn:\t0000000000000000"),
        "default dispositions (no SIGPIPE ignore): {sigs}"
    );
    assert!(
        sigs.contains(&format!("argv0={}", wrapper.display())),
        "{sigs}"
    );
}

#[test]
fn in_flight_requests_finish_on_the_old_generation() {
    let (rig, one) = serving("inflight", "", "", &[]);
    let slow = slow_request_on(&rig, one, 1500);
    rig.point("2.0");
    rig.wait_live("2.0");
    let (code, body) = slow
        .join()
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(code, 200);
    assert!(
        body.starts_with("release 1.0"),
        "served by the old generation while it drained: {body}"
    );
    rig.wait_log("generation 1 (app.1.0");
    rig.wait_log("exited (exit status 0)");
}

#[test]
fn sighup_rolls_a_fresh_generation_of_the_same_release() {
    let (rig, first) = serving("hup", "", "", &[]);
    let load = Load::start(rig.port, 2);
    rig.signal(Signal::SIGHUP);
    rig.wait_note("RELOADING=1");
    let note = rig
        .notifications()
        .into_iter()
        .find(|n| n.contains("RELOADING=1"))
        .unwrap();
    assert!(note.contains("MONOTONIC_USEC="), "{note}");
    rig.wait("a fresh generation", || {
        rig.state().is_some_and(|s| s["serving"]["generation"] == 2)
    });
    let second = rig.wait_live("1.0");
    assert_ne!(first, second);
    rig.wait("READY=1 after RELOADING=1", || {
        let n = rig.notifications();
        let r = n.iter().position(|n| n.contains("RELOADING=1"));
        r.is_some_and(|r| n[r..].iter().any(|n| n.lines().any(|l| l == "READY=1")))
    });
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    rig.wait("the first generation to be gone", || !alive(first));
    assert_eq!(rig.state().unwrap()["last_rollout"]["trigger"], "reload");
}

#[test]
fn sigterm_drains_every_generation_and_exits_zero() {
    let (mut rig, pid) = serving("term", "", "", &[]);
    let slow = slow_request_on(&rig, pid, 1000);
    rig.signal(Signal::SIGTERM);
    let status = rig.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", rig.log());
    rig.wait_note("STOPPING=1");
    let (code, body) = slow
        .join()
        .unwrap()
        .expect("in-flight request completed during shutdown");
    assert_eq!((code, body.starts_with("release 1.0")), (200, true));
    assert!(!alive(pid), "generation gone");
    assert!(
        !rig.runtime_dir.join("notify.sock").exists(),
        "notify socket removed"
    );
}

#[test]
fn sigint_stops_too() {
    let (mut rig, pid) = serving("int", "", "", &[]);
    rig.signal(Signal::SIGINT);
    assert_eq!(rig.wait_exit().code(), Some(0));
    assert!(!alive(pid));
}

#[test]
fn a_burst_of_edits_settles_on_the_last_with_at_most_one_extra_generation() {
    let (rig, _) = serving("burst", "", "", &[]);
    rig.release("3.0", "");
    rig.release("4.0", "");
    for i in 0..60 {
        rig.point(["2.0", "3.0", "4.0"][i % 3]);
    }
    rig.point("3.0");
    rig.wait_live("3.0");
    // Generation 1 served; the burst may start one at its leading edge and
    // one for its last content: never more.
    rig.wait("the burst to settle", || {
        rig.state()
            .is_some_and(|s| s["generations"].as_array().is_some_and(|g| g.len() == 1))
    });
    let started = rig.log().matches("started generation").count();
    assert!(
        started <= 3,
        "{started} generations for one burst:\n{}",
        rig.log()
    );
    rig.assert_children(1);
}

/// One edit of current.conf is one attempt, however it is written:
/// `baton switch --wait`, a plain `mv`, a writer that renames its file into
/// place before closing it (the kernel then reports the rename and, after
/// it, a close of current.conf), and delete-then-create. Each names a
/// release that crashes before READY=1, which must be started once.
#[test]
fn one_edit_is_one_attempt_however_current_conf_is_written() {
    use std::io::Write;

    let (rig, _) = serving("one-edit", "", "", &[]);
    let conf = path_str(&rig.conf).to_owned();
    let text = |v: &str| format!("{{\"bin.file\": \"app.{v}\", \"cfg.file\": \"cfg.{v}\"}}\n");
    let tmp = rig.release_dir.join(".current.conf.new");
    let edit = |how: &str, v: &str| match how {
        "baton switch --wait" => {
            let (code, out, err) = baton_cmd(&["switch", v, "--config", &conf, "--wait"]);
            assert_eq!(code, 1, "{out}{err}");
            assert!(
                err.contains(&format!(
                    "rollout of app.{v} failed: exited before READY=1 (exit status 7)"
                )),
                "{err}"
            );
        }
        "mv" => {
            std::fs::write(&tmp, text(v)).unwrap();
            let st = std::process::Command::new("mv")
                .arg(&tmp)
                .arg(&rig.conf)
                .status()
                .unwrap();
            assert!(st.success());
        }
        "rename, then close" => {
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(text(v).as_bytes()).unwrap();
            f.sync_all().unwrap();
            std::fs::rename(&tmp, &rig.conf).unwrap();
            drop(f);
        }
        "delete, then create" => {
            std::fs::remove_file(&rig.conf).unwrap();
            std::fs::write(&rig.conf, text(v)).unwrap();
        }
        other => unreachable!("{other}"),
    };
    let edits = [
        ("3.0", "baton switch --wait"),
        ("4.0", "mv"),
        ("5.0", "rename, then close"),
        ("6.0", "delete, then create"),
    ];
    // Edits closer together than 100 ms are one burst (read once more when
    // it is quiet): each edit here, and the good edit after it, waits for
    // baton to have been quiet a while, so that each is an edit of its own
    // and no later edit can hide a second attempt. (Nothing asserted rests
    // on that wait: once the good release serves, every event before its
    // edit has been handled.)
    let quiet = || {
        let last = rig
            .log()
            .lines()
            .rfind(|l| l.contains(" baton["))
            .map(log_time)
            .unwrap_or(0.0);
        wait_until(PATIENCE, || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                > last + 0.5
        });
    };
    let good = ["2.0", "1.0"];
    for (i, (v, how)) in edits.into_iter().enumerate() {
        rig.release(v, r#""exit_before_ready": 7"#);
        quiet();
        edit(how, v);
        rig.wait_line(&[&format!(
            "rollout of app.{v} failed: exited before READY=1 (exit status 7); still serving"
        )]);
        quiet();
        rig.point(good[i % 2]);
        rig.wait_live(good[i % 2]);
        let attempts = rig.log_lines(&[&format!("rolling out app.{v} ")]).len();
        let failures = rig
            .log_lines(&[&format!("rollout of app.{v} failed")])
            .len();
        assert_eq!(
            (attempts, failures),
            (1, 1),
            "{how}: app.{v} was tried {attempts} times:\n{}",
            rig.log()
        );
    }
    rig.assert_children(1);
}

#[test]
fn delete_then_recreate_is_seen() {
    let (rig, _) = serving("recreate", "", "", &[]);
    std::fs::remove_file(&rig.conf).unwrap();
    rig.wait_log("was removed; still serving app.1.0");
    assert_eq!(rig.serving().unwrap().0, "1.0");
    // Re-created in place, written in two steps (open, write, close).
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&rig.conf).unwrap();
        f.write_all(br#"{"bin.file": "app.2.0", "#).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(br#""cfg.file": "cfg.2.0"}"#).unwrap();
    }
    rig.wait_live("2.0");
    assert!(
        !rig.log().contains("ERROR"),
        "a half-written create is not an error:\n{}",
        rig.log()
    );
}

#[test]
fn in_place_edit_and_symlink_swap_are_seen() {
    let (rig, _) = serving("inplace", "", "", &[]);
    rig.release("3.0", "");
    std::fs::write(
        &rig.conf,
        r#"{"bin.file": "app.2.0", "cfg.file": "cfg.2.0"}"#,
    )
    .unwrap();
    rig.wait_live("2.0");
    // current.conf as a symlink, swapped the way `ln -sf` does.
    std::fs::write(
        rig.release_dir.join("conf.3.0"),
        r#"{"bin.file": "app.3.0", "cfg.file": "cfg.3.0"}"#,
    )
    .unwrap();
    let tmp = rig.release_dir.join(".link");
    std::os::unix::fs::symlink("conf.3.0", &tmp).unwrap();
    std::fs::rename(&tmp, &rig.conf).unwrap();
    rig.wait_live("3.0");
}

#[test]
fn home_and_relative_paths_resolve() {
    let mut rig = Rig::new("home");
    rig.release("1.0", "");
    // A relative path with `.` and `..` in it, and an absolute one. (`~/`
    // is resolved from the passwd entry, covered by config's unit tests.)
    rig.write_conf(&format!(
        "{{\"bin.file\": \"./sub/../app.1.0\", \"cfg.file\": \"{}\"}}",
        rig.release_dir.join("cfg.1.0").display()
    ));
    rig.start(&[]);
    rig.wait_live("1.0");
}

#[test]
fn several_sockets_pass_through_in_order() {
    let mut rig = Rig::new("multi");
    let path = rig.tmp.0.join("second.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    rig.extra_fds.push(std::os::fd::AsRawFd::as_raw_fd(&unix));
    rig.release("1.0", "");
    rig.point("1.0");
    rig.start(&[]);
    rig.wait_live("1.0");
    let (_, body) = rig.get("/info").unwrap();
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["listen_fds"], "2");
    assert_eq!(info["listen_fdnames"], "app.socket:app.socket");
    // The unix socket (fd 4) serves too.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let (code, body) = parse_response(&out).unwrap();
    assert_eq!((code, parse_hello(&body).unwrap().0.as_str()), (200, "1.0"));
}

#[test]
fn standalone_listen_binds_its_own_socket() {
    let tmp = TempDir::new("listen");
    let release = tmp.0.join("app/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(APP, release.join("app.1.0")).unwrap();
    std::fs::write(release.join("cfg.1.0"), r#"{"release": "1.0"}"#).unwrap();
    std::fs::write(
        release.join("current.conf"),
        r#"{"bin.file": "app.1.0", "cfg.file": "cfg.1.0"}"#,
    )
    .unwrap();
    let sock = tmp.0.join("app.sock");
    let log = std::fs::File::create(tmp.0.join("log")).unwrap();
    let mut baton = std::process::Command::new(BATON)
        .args(["run", "--config", path_str(&release.join("current.conf"))])
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .stderr(log)
        .spawn()
        .unwrap();
    let answer = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        parse_response(&out).ok().map(|(_, b)| b)
    };
    let ok = wait_until(PATIENCE, || {
        answer().is_some_and(|b| b.starts_with("release 1.0"))
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(baton.id() as i32),
        Signal::SIGTERM,
    );
    let status = baton.wait().unwrap();
    let log = std::fs::read_to_string(tmp.0.join("log")).unwrap();
    assert!(ok, "served over unix:{}\n{log}", sock.display());
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!sock.exists(), "socket file removed at exit");
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let mut rig = Rig::new("watchdog");
    rig.env.push(("WATCHDOG_USEC".into(), "200000".into()));
    rig.release("1.0", "");
    rig.point("1.0");
    rig.start(&[]);
    rig.wait_live("1.0");
    rig.wait("three WATCHDOG=1 pings", || {
        rig.notifications()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
            >= 3
    });
    let (_, body) = rig.get("/info").unwrap();
    assert!(
        body.contains("\"watchdog_usec\":null"),
        "not inherited: {body}"
    );
}

/// One entry `baton history --json` must show.
struct Entry {
    trigger: &'static str,
    release: &'static str,
    result: &'static str,
    generation: Option<u64>,
    replaced: Option<(&'static str, u64)>,
    reason: Option<&'static str>,
}

const fn entry(
    trigger: &'static str,
    release: &'static str,
    result: &'static str,
    generation: Option<u64>,
    replaced: Option<(&'static str, u64)>,
) -> Entry {
    Entry {
        trigger,
        release,
        result,
        generation,
        replaced,
        reason: None,
    }
}

/// Checks `got` (the JSON entries) against `want`, numbered from 1, each
/// run by the baton in `batons` at the same index.
fn check_history(got: &[serde_json::Value], want: &[Entry], batons: &[u64]) {
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (i, (e, w)) in got.iter().zip(want).enumerate() {
        let what = format!("entry {i}: {e:#}");
        assert_eq!(e["seq"], i as u64 + 1, "{what}");
        assert_eq!(e["trigger"], w.trigger, "{what}");
        assert_eq!(e["release"]["name"], w.release, "{what}");
        assert_eq!(e["result"], w.result, "{what}");
        assert_eq!(e["generation"].as_u64(), w.generation, "{what}");
        assert_eq!(e["baton_pid"], batons[i], "{what}");
        assert_eq!(e["attempts"], 1, "{what}");
        match w.replaced {
            Some((r, g)) => {
                assert_eq!(e["replaced"]["release"], r, "{what}");
                assert_eq!(e["replaced"]["generation"], g, "{what}");
            }
            None => assert!(e["replaced"].is_null(), "{what}"),
        }
        match w.reason {
            Some(why) => assert!(
                e["reason"].as_str().is_some_and(|r| r.contains(why)),
                "{what}"
            ),
            None => assert!(e["reason"].is_null(), "{what}"),
        }
        let (start, end) = (
            e["started_at"].as_f64().unwrap(),
            e["finished_at"].as_f64().unwrap(),
        );
        assert!(start > 1.7e9 && end >= start, "{what}");
    }
}

/// `baton history` says what served when: forward, back, a failed rollout,
/// `baton switch`, the rollback after that release was killed in its
/// probation, a restart, and across a restart of baton itself (which holds
/// the crashed release back), in text and as JSON.
#[test]
fn history_says_what_served_when_across_a_restart_of_baton() {
    let (mut rig, _) = serving("history", "", "", &[]);
    rig.release("3.0", r#""exit_before_ready": 7"#);
    let conf = path_str(&rig.conf).to_owned();
    let history = |json: bool| {
        let mut args = vec!["history", "--config", &conf];
        if json {
            args.push("--json");
        }
        baton_cmd(&args)
    };
    // The newest history entry is a `trigger` that succeeded.
    let last_is = |rig: &Rig, trigger: &str| {
        rig.history()
            .last()
            .is_some_and(|r| r["trigger"] == trigger && r["result"] == "succeeded")
    };
    rig.point("2.0");
    rig.wait_live("2.0");
    rig.point("1.0");
    rig.wait_live("1.0");
    rig.point("3.0");
    rig.wait_line(&["rollout of app.3.0 failed: exited before READY=1 (exit status 7)"]);
    let (code, out, err) = baton_cmd(&["switch", "2.0", "--config", &conf, "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let five = rig.wait_live("2.0");
    let kill = |pid: i32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap()
    };
    kill(five);
    // The history has a file of its own; the state file, rewritten on
    // every change, does not carry it.
    assert!(rig.state().unwrap().get("history").is_none());
    let six = rig.wait_live_anew("1.0", five);
    rig.wait("state: the rollback succeeded", || {
        last_is(&rig, "rollback")
    });
    kill(six);
    rig.wait_live_anew("1.0", six);
    rig.wait("state: the restart succeeded", || last_is(&rig, "restart"));
    let first = rig.baton_pid() as u64;

    let mut want = vec![
        entry("startup", "app.1.0", "succeeded", Some(1), None),
        entry(
            "edit",
            "app.2.0",
            "succeeded",
            Some(2),
            Some(("app.1.0", 1)),
        ),
        entry(
            "edit",
            "app.1.0",
            "succeeded",
            Some(3),
            Some(("app.2.0", 2)),
        ),
        Entry {
            reason: Some("exited before READY=1 (exit status 7)"),
            ..entry("edit", "app.3.0", "failed", Some(4), None)
        },
        Entry {
            reason: Some("after going live; rolled back to app.1.0"),
            ..entry("edit", "app.2.0", "failed", Some(5), Some(("app.1.0", 3)))
        },
        entry(
            "rollback",
            "app.1.0",
            "succeeded",
            Some(6),
            Some(("app.2.0", 5)),
        ),
        entry(
            "restart",
            "app.1.0",
            "succeeded",
            Some(7),
            Some(("app.1.0", 6)),
        ),
    ];
    let mut batons = vec![first; 7];
    let (code, out, err) = history(true);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    check_history(
        &serde_json::from_str::<Vec<_>>(&out).unwrap(),
        &want,
        &batons,
    );

    let (code, text, _) = history(false);
    assert_eq!(code, 0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert_eq!(lines[0], format!("baton pid {first}:"));
    for (i, w) in want.iter().enumerate() {
        let l = lines[i + 2];
        let words: Vec<&str> = l.split_whitespace().collect();
        // #N, date, time, UTC, release, trigger, outcome, took, generation
        assert_eq!(
            (words[0], words[4], words[5], words[6], words[8]),
            (
                format!("#{}", i + 1).as_str(),
                w.release,
                w.trigger,
                w.result,
                (i + 1).to_string().as_str()
            ),
            "{text}"
        );
        match (w.replaced, w.reason) {
            (Some((r, g)), None) => {
                assert!(l.ends_with(&format!("{r} (generation {g})")), "{l}")
            }
            (_, Some(why)) => assert!(l.contains(why), "{l}"),
            (None, None) => assert!(l.ends_with(" -"), "{l}"),
        }
    }

    // baton stops: the history is still there, and says so.
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    let (code, out, err) = history(true);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "its history as of its last state (baton pid {first})"
        )),
        "{err}"
    );
    check_history(
        &serde_json::from_str::<Vec<_>>(&out).unwrap(),
        &want,
        &batons,
    );

    // A new baton carries it over and carries on. current.conf still names
    // 2.0, held back: the new baton's startup says so, and 1.0 serves.
    rig.start(&[]);
    let second = rig.baton_pid() as u64;
    rig.wait("the new baton's startup in the history", || {
        rig.state()
            .is_some_and(|s| s["pid"] == second && last_is(&rig, "rollback"))
    });
    want.push(Entry {
        reason: Some("held back: it crashed"),
        ..entry("startup", "app.2.0", "failed", None, None)
    });
    want.push(entry("rollback", "app.1.0", "succeeded", Some(1), None));
    batons.extend([second; 2]);
    let (code, out, err) = history(true);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    check_history(
        &serde_json::from_str::<Vec<_>>(&out).unwrap(),
        &want,
        &batons,
    );
    let (_, text, _) = history(false);
    assert!(text.contains(&format!("\nbaton pid {second}:\n")), "{text}");
}

// ---- readiness modes, per-release settings, stop signals ----

/// Writes current.conf naming release `v` with `extra` keys after the files.
fn point_with(rig: &Rig, v: &str, extra: &str) {
    rig.write_conf(&format!(
        "{{\"bin.file\": \"app.{v}\", \"cfg.file\": \"cfg.{v}\", {extra}}}\n"
    ));
}

/// The span in "is ready after SPAN (MODE)" for generation `id`.
fn ready_after(rig: &Rig, id: u64, mode: &str) -> Duration {
    let line = rig.wait_line(&[
        &format!("generation {id} ("),
        " is ready after ",
        &format!("({mode})"),
    ]);
    let span = line
        .split(" is ready after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    baton::span::parse_span(span).unwrap()
}

/// What `GET /info` says generation `pid` inherited, as JSON.
fn info(rig: &Rig, pid: i32) -> serde_json::Value {
    let mut info = serde_json::Value::Null;
    rig.wait(&format!("/info from pid {pid}"), || {
        let Ok((200, body)) = rig.get("/info") else {
            return false;
        };
        info = serde_json::from_str(&body).unwrap();
        info["pid"] == pid
    });
    info
}

#[test]
fn after_mode_rolls_an_app_that_never_notifies_forward_and_back_under_load() {
    let mut rig = Rig::new("after");
    rig.release("1.0", r#""notify": false"#);
    rig.release("2.0", r#""notify": false"#);
    rig.point("1.0");
    rig.start(&["--ready", "after:300ms"]);
    let mut live = rig.wait_live("1.0");
    assert!(ready_after(&rig, 1, "after:300ms") >= Duration::from_millis(300));
    let load = Load::start(rig.port, 4);
    for (i, v) in ["2.0", "1.0", "2.0", "1.0", "2.0"].iter().enumerate() {
        let id = i as u64 + 2;
        rig.point(v);
        let new = rig.wait_live(v);
        assert_ne!(new, live);
        assert!(ready_after(&rig, id, "after:300ms") >= Duration::from_millis(300));
        rig.wait_status(&format!("serving app.{v} (pid {new}, generation {id})"));
        rig.wait(&format!("retired pid {live} to be gone"), || !alive(live));
        live = new;
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.by_release.len(), 2, "{report:?}");
    rig.assert_children(1);
}

#[test]
fn check_mode_aims_at_the_new_generation_and_rolls_under_load() {
    let mut rig = Rig::new("check");
    let marks = rig.tmp.0.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // The app marks its readiness with a file named after its pid, 300 ms
    // after it starts accepting; the check looks for the new generation's
    // mark (BATON_PID), so the old generation, which accepts on the same
    // socket, can never pass it.
    let knobs = format!(
        r#""notify": false, "ready_delay_ms": 300, "ready_file": "{}/ready.%p""#,
        marks.display()
    );
    rig.release("1.0", &knobs);
    rig.release("2.0", &knobs);
    rig.point("1.0");
    let check = format!(
        "check:echo \"looking for $BATON_PID\"; env | grep ^BATON_ | sort > {m}/env.$BATON_GENERATION; test -e {m}/ready.$BATON_PID",
        m = marks.display()
    );
    rig.start(&["--ready", &check]);
    let mut live = rig.wait_live("1.0");
    let load = Load::start(rig.port, 4);
    for (i, v) in ["2.0", "1.0", "2.0"].iter().enumerate() {
        let id = i as u64 + 2;
        rig.point(v);
        let new = rig.wait_live(v);
        assert!(ready_after(&rig, id, &check) >= Duration::from_millis(300));
        // The check ran with the new generation's identity, and its output
        // is in baton's log at debug level.
        let env = std::fs::read_to_string(marks.join(format!("env.{id}"))).unwrap();
        assert_eq!(
            env,
            format!(
                "BATON_APP_DIR={}\nBATON_GENERATION={id}\nBATON_PID={new}\nBATON_RELEASE=app.{v}\n",
                rig.app_dir.display()
            )
        );
        rig.wait_line(&[&format!("generation {id}: check: looking for {new}")]);
        rig.wait(&format!("retired pid {live} to be gone"), || !alive(live));
        live = new;
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    // Every check attempt was reaped: baton's only child is the live app.
    rig.assert_children(1);
}

#[test]
fn exec_mode_is_ready_once_the_exec_worked() {
    let mut rig = Rig::new("exec");
    rig.release("1.0", r#""never_ready": true"#);
    rig.release("2.0", r#""never_ready": true"#);
    rig.point("1.0");
    rig.start(&["--ready", "exec"]);
    rig.wait_live("1.0");
    ready_after(&rig, 1, "exec");
    let load = Load::start(rig.port, 2);
    rig.roll_cleanly_with("2.0", 2, load);
}

/// As `Rig::roll_cleanly`, for apps that send no STATUS=.
trait RollCleanly {
    fn roll_cleanly_with(&self, v: &str, generation: u64, load: Load);
}

impl RollCleanly for Rig {
    fn roll_cleanly_with(&self, v: &str, generation: u64, load: Load) {
        self.point(v);
        let new = self.wait_live(v);
        self.wait_status(&format!(
            "serving app.{v} (pid {new}, generation {generation})"
        ));
        let report = load.stop();
        assert_eq!(report.failed, 0, "{:?}", report.errors);
        self.assert_children(1);
    }
}

#[test]
fn a_releases_ready_key_wins_over_the_flag() {
    // Flag notify; 2.0 never notifies, but says after:200ms: it rolls.
    let (rig, _) = serving(
        "ready-key",
        "",
        r#""notify": false"#,
        &["--ready-timeout", "2s"],
    );
    point_with(&rig, "2.0", r#""ready": "after:200ms""#);
    rig.wait_live("2.0");
    ready_after(&rig, 2, "after:200ms");
    // And the other way: flag exec, 3.0 never notifies and says notify: it
    // is never ready, and 2.0 serves on.
    let (rig, pid) = serving(
        "ready-key-back",
        r#""never_ready": true"#,
        r#""never_ready": true"#,
        &["--ready", "exec", "--ready-timeout", "2s"],
    );
    point_with(&rig, "2.0", r#""ready": "notify""#);
    rig.wait_log(
        "rollout of app.2.0 failed: not ready within --ready-timeout 2s; still serving app.1.0",
    );
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
}

#[test]
fn a_releases_env_reaches_its_generations_only_and_baton_s_variables_win() {
    let (rig, one) = serving("env-release", "", "", &[]);
    let load = Load::start(rig.port, 2);
    point_with(
        &rig,
        "2.0",
        r#""env": {"GREETING": "hello from 2.0", "LANG": "C.UTF-8", "EMPTY": ""}"#,
    );
    let two = rig.wait_live("2.0");
    let env = &info(&rig, two)["env"];
    assert_eq!(env["GREETING"], "hello from 2.0");
    assert_eq!(env["LANG"], "C.UTF-8");
    assert_eq!(env["EMPTY"], "");
    assert_eq!(env["LISTEN_FDS"], "1");
    assert_eq!(env["LISTEN_PID"], two.to_string());
    assert_eq!(
        env["NOTIFY_SOCKET"],
        path_str(&rig.runtime_dir.join("notify.sock"))
    );
    // Back to 1.0, which sets nothing: nothing of 2.0's is left.
    rig.point("1.0");
    let back = rig.wait_live("1.0");
    assert_ne!(back, one);
    let env = &info(&rig, back)["env"];
    assert_eq!(env["GREETING"], serde_json::Value::Null, "{env:#}");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

#[test]
fn a_change_of_settings_alone_rolls_a_fresh_generation_of_the_same_files() {
    let (rig, one) = serving("settings-change", "", "", &[]);
    let load = Load::start(rig.port, 2);
    point_with(&rig, "1.0", r#""env": {"FEATURE": "on"}"#);
    let two = rig.wait_replaced("1.0", one);
    rig.wait_status(&format!(
        "serving app.1.0 (pid {two}, generation 2): release 1.0 accepting"
    ));
    assert_eq!(info(&rig, two)["env"]["FEATURE"], "on");
    // The same content again is not a change.
    point_with(&rig, "1.0", r#""env": {"FEATURE": "on"}"#);
    rig.wait_log("reads as it did when baton last acted on it (app.1.0); nothing more to do");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(rig.log().matches("started generation").count(), 2);
    rig.assert_children(1);
}

/// Starts `GET /slow?ms=ms` and returns once process `pid` holds the
/// connection (one more fd).
fn slow_request_on(
    rig: &Rig,
    pid: i32,
    ms: u64,
) -> std::thread::JoinHandle<Result<(u16, String), testkit::http::HttpError>> {
    let before = fd_count(pid);
    let port = rig.port;
    let slow = std::thread::spawn(move || http_get(port, &format!("/slow?ms={ms}")));
    rig.wait(&format!("pid {pid} to accept the slow request"), || {
        fd_count(pid) > before
    });
    slow
}

#[test]
fn a_stop_signal_of_quit_lets_an_app_whose_sigterm_is_brutal_drain() {
    // Like uWSGI: SIGQUIT drains, SIGTERM drops what is in flight.
    let brutal = r#""drain_on": ["QUIT"], "exit_on": ["TERM"]"#;
    let (rig, one) = serving("quit", brutal, brutal, &["--stop-signal", "QUIT"]);
    let slow = slow_request_on(&rig, one, 1500);
    rig.point("2.0");
    let two = rig.wait_live("2.0");
    let (code, body) = slow
        .join()
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(
        (code, body.starts_with("release 1.0")),
        (200, true),
        "{body}"
    );
    rig.wait_log(&format!(
        "example-app[{one}] release 1.0: received SIGQUIT; draining"
    ));
    rig.wait("the old generation to be gone", || !alive(one));
    // The release's own "stop.signal" wins over the flag: 1.0 now says
    // TERM, and a request in flight when it is retired is lost, which is
    // what the flag saved above.
    point_with(&rig, "1.0", r#""stop.signal": "TERM""#);
    let three = rig.wait_live("1.0");
    rig.wait("the 2.0 generation to be gone", || !alive(two));
    let slow = slow_request_on(&rig, three, 1500);
    rig.point("2.0");
    rig.wait_live("2.0");
    rig.wait_log(&format!(
        "example-app[{three}] release 1.0: received SIGTERM; exiting at once"
    ));
    assert!(
        slow.join().unwrap().is_err(),
        "SIGTERM to this app drops the request in flight"
    );
    rig.assert_children(1);
}

fn workers_of(leader: i32) -> Vec<i32> {
    procs()
        .iter()
        .filter(|p| p.pgid == leader && p.pid != leader)
        .map(|p| p.pid)
        .collect()
}

#[test]
fn the_stop_signal_goes_to_the_whole_group_or_to_the_leader_alone() {
    let (rig, one) = serving("target", r#""workers": 2"#, r#""workers": 2"#, &[]);
    let first = workers_of(one);
    assert_eq!(first.len(), 2);
    // 2.0 is to be stopped through its leader only.
    point_with(&rig, "2.0", r#""stop.target": "leader""#);
    let two = rig.wait_live("2.0");
    // 1.0 was stopped as a group: its workers heard SIGTERM themselves.
    for w in &first {
        rig.wait_log(&format!(
            "example-app worker[{w}]: received SIGTERM; exiting"
        ));
    }
    let second = workers_of(two);
    assert_eq!(second.len(), 2);
    rig.point("1.0");
    rig.wait_live("1.0");
    rig.wait_log(&format!(
        "example-app[{two}] release 2.0: received SIGTERM; draining"
    ));
    // Its workers heard nothing; they went when their leader exited (the
    // rest of a group is killed once its leader is gone), and none is a
    // zombie.
    rig.wait("2.0's workers to be gone", || {
        second.iter().all(|w| !alive(*w))
    });
    for w in &second {
        assert!(
            !rig.log()
                .contains(&format!("example-app worker[{w}]: received")),
            "{}",
            rig.log()
        );
    }
    rig.assert_children(1);
}

#[test]
fn systemd_notify_in_a_release_script_is_ready_without_a_warning() {
    // systemd-notify --ready sends READY=1, then BARRIER=1 with a pipe's
    // write end, and waits until baton closes it.
    let (rig, _) = serving("sd-notify", "", "", &[]);
    let script = rig.release_dir.join("app.3.0");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsystemd-notify --ready --status='notified by systemd-notify' || exit 1\nexec {APP} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        rig.release_dir.join("cfg.3.0"),
        r#"{"release": "3.0", "notify": false}"#,
    )
    .unwrap();
    let load = Load::start(rig.port, 2);
    rig.point("3.0");
    let three = rig.wait_live("3.0");
    rig.wait_status(&format!(
        "serving app.3.0 (pid {three}, generation 2): notified by systemd-notify"
    ));
    // The app serves only once systemd-notify returned, that is once its
    // barrier was answered; rolling on puts every datagram it sent behind us.
    rig.wait_serving("3.0");
    rig.point("1.0");
    rig.wait_live("1.0");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        !rig.log().contains("dropped a notification"),
        "{}",
        rig.log()
    );
    assert!(!rig.log().contains("not part of any generation"));
}

#[test]
fn an_app_that_asks_for_more_time_is_given_it() {
    let (rig, pid) = serving(
        "extend",
        "",
        r#""ready_delay_ms": 2500, "extend_timeout_ms": 10000"#,
        &["--ready-timeout", "1s"],
    );
    rig.point("2.0");
    rig.wait_line(&[
        "generation 2 (app.2.0",
        "asked for 10s more to become ready (EXTEND_TIMEOUT_USEC)",
    ]);
    let two = rig.wait_live("2.0");
    assert_ne!(two, pid);
    assert!(ready_after(&rig, 2, "notify") >= Duration::from_millis(2500));
    assert!(!rig.log().contains("not ready within"));
    // The first generation's request extends baton's own start under
    // systemd (TimeoutStartSec) as well.
    let mut rig = Rig::new("extend-first");
    rig.release(
        "1.0",
        r#""ready_delay_ms": 1500, "extend_timeout_ms": 10000"#,
    );
    rig.point("1.0");
    rig.start(&["--ready-timeout", "1s"]);
    rig.wait_note("EXTEND_TIMEOUT_USEC=10000000");
    rig.wait_live("1.0");
    rig.wait_note("READY=1");
}
