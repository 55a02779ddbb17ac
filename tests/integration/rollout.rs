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
    let (rig, _) = serving("inflight", "", "", &[]);
    let port = rig.port;
    let slow = std::thread::spawn(move || http_get(port, "/slow?ms=1500"));
    rig.wait("the slow request to be in flight", || {
        rig.log().contains("generation 1") && rig.serving().is_some()
    });
    std::thread::sleep(Duration::from_millis(100)); // let it reach the app before the flip (not asserted on)
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
    let port = rig.port;
    let slow = std::thread::spawn(move || http_get(port, "/slow?ms=1000"));
    std::thread::sleep(Duration::from_millis(200)); // let the request reach the app (not asserted on)
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
    let last_is = |s: &serde_json::Value, trigger: &str| {
        s["history"]
            .as_array()
            .and_then(|h| h.last())
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
    let six = rig.wait_live_anew("1.0", five);
    rig.wait("state: the rollback succeeded", || {
        rig.state().is_some_and(|s| last_is(&s, "rollback"))
    });
    kill(six);
    rig.wait_live_anew("1.0", six);
    rig.wait("state: the restart succeeded", || {
        rig.state().is_some_and(|s| last_is(&s, "restart"))
    });
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
            .is_some_and(|s| s["pid"] == second && last_is(&s, "rollback"))
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
