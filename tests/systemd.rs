//! End to end under a real systemd 252: the shipped units (systemd/), baton
//! and the example app, in a container booted per test (see
//! tests/systemd/harness.rs). Each test names what it asserts; every wait
//! polls a condition with a deadline.
//!
//! These need root and systemd-nspawn; elsewhere each test prints a SKIP
//! line and passes (BATON_REQUIRE_SYSTEMD_TESTS=1 makes that a failure).

#[path = "systemd/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Load, Machine, Tally, stderr, stdout, unit_for_container, wait_for};

const CONF: &str = "/srv/app/release/current.conf";
const LONG: Duration = Duration::from_secs(30);

/// `systemctl enable --now app.socket`, as docs/systemd.md says.
fn enable_socket(m: &Machine) {
    m.run(&["systemctl", "enable", "--now", "app.socket"]);
    wait_for("app.socket to listen", LONG, || {
        let s = m.prop("app.socket", "SubState");
        if s == "listening" { Ok(()) } else { Err(s) }
    });
}

/// The socket enabled and the service started by a first connection, which
/// release `version` answers.
fn serving(m: &Machine, version: &str) -> baton::state::State {
    enable_socket(m);
    let reply = m.get_ok("/");
    assert!(
        reply.body.starts_with(&format!("release {version} ")),
        "{reply:?}"
    );
    wait_serving(m, version)
}

/// Waits until baton's state says `app.<version>` serves and it is the
/// only generation left.
fn wait_serving(m: &Machine, version: &str) -> baton::state::State {
    let name = format!("app.{version}");
    wait_for(&format!("{name} alone to serve"), LONG, || {
        let s = m.state("app").ok_or("no state file yet".to_string())?;
        let live = s.serving.as_ref().map(|g| g.release.name.clone());
        if live.as_deref() == Some(name.as_str()) && s.generations.len() == 1 {
            Ok(s)
        } else {
            Err(format!(
                "serving {live:?}, {} generation(s), status {:?}",
                s.generations.len(),
                s.status
            ))
        }
    })
}

/// `baton ARGS --config CONF` inside the container.
fn baton(m: &Machine, args: &[&str]) -> std::process::Output {
    let mut all = vec![harness::BATON_IN_CONTAINER];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", CONF]);
    m.exec(&all)
}

fn assert_no_failures(what: &str, t: &Tally) {
    eprintln!(
        "{what}: {} ok {:?}, {} failed, {} generation pid(s) answered",
        t.ok,
        t.by_release,
        t.errors.len(),
        t.pids.len()
    );
    assert!(
        t.errors.is_empty(),
        "{what}: {} of {} requests failed ({} refused): {:#?}",
        t.errors.len(),
        t.ok + t.failed,
        t.refused,
        t.errors
    );
    assert!(t.ok > 0, "{what}: no request succeeded: {t:?}");
}

/// The pids in app.service's cgroup are exactly baton and the serving
/// generation: every older generation is gone.
fn assert_only_baton_and(m: &Machine, s: &baton::state::State) {
    let gen_pid = s.serving.as_ref().and_then(|g| g.pid).expect("serving pid");
    let want: BTreeSet<i32> = [s.pid as i32, gen_pid].into();
    wait_for(
        "app.service to hold only baton and the live generation",
        LONG,
        || {
            let pids = m.unit_pids("app.service");
            if pids == want {
                Ok(())
            } else {
                Err(format!("cgroup has {pids:?}, want {want:?}"))
            }
        },
    );
}

// ---- the unit files ----

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        harness::skip(
            "shipped_units_pass_systemd_analyze_verify",
            "systemd-analyze is not installed",
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("baton-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // verify checks that ExecStart's binary exists: point it at cargo's.
    // Templates are verified as an instance (baton@shop.*).
    for (unit, as_name) in [
        ("app.socket", "app.socket"),
        ("app.service", "app.service"),
        ("baton@.socket", "baton@shop.socket"),
        ("baton@.service", "baton@shop.service"),
    ] {
        let text = harness::shipped_unit(unit);
        let text = if unit.ends_with(".service") {
            harness::substitute(unit, &text, &[("/usr/bin/baton", harness::BATON)])
        } else {
            text
        };
        std::fs::write(dir.join(as_name), text).unwrap();
    }
    for pair in [
        ["app.socket", "app.service"],
        ["baton@shop.socket", "baton@shop.service"],
    ] {
        let out = Command::new(analyze)
            .arg("verify")
            .args(pair.iter().map(|u| dir.join(u)))
            .env("SYSTEMD_LOG_LEVEL", "notice")
            .output()
            .unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify {pair:?}: {}: {text}",
            out.status
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- socket activation ----

#[test]
fn port_listens_before_the_service_runs_and_the_first_connection_starts_it() {
    let Some(m) = Machine::boot("activation", &["app"]) else {
        return;
    };
    assert!(
        m.listening(3000).is_empty(),
        "nothing listens before app.socket is enabled"
    );
    enable_socket(&m);
    let listening = m.listening(3000);
    assert!(
        !listening.is_empty(),
        "port 3000 is not listening after enable --now app.socket"
    );
    let svc = m.show("app.service", &["ActiveState", "MainPID"]);
    assert_eq!(
        svc["ActiveState"], "inactive",
        "app.service must not run before a connection: {svc:?}"
    );
    assert_eq!(svc["MainPID"], "0", "{svc:?}");
    assert!(
        m.unit_pids("app.service").is_empty(),
        "no process of app.service may exist yet"
    );
    assert!(
        m.state("app").is_none(),
        "baton must not have run yet (it writes its state at once)"
    );

    // The first connection starts app.service and is answered by 1.0. (The
    // generation may answer a moment before baton's READY=1 reaches systemd.)
    let reply = m.get_ok("/");
    assert!(reply.body.starts_with("release 1.0 pid "), "{reply:?}");
    let svc = wait_for("app.service to be active", LONG, || {
        let svc = m.show(
            "app.service",
            &["ActiveState", "SubState", "MainPID", "NRestarts"],
        );
        if svc["ActiveState"] == "activating" {
            Err(format!("{svc:?}"))
        } else {
            Ok(svc)
        }
    });
    assert_eq!(svc["ActiveState"], "active", "{svc:?}");
    assert_eq!(svc["SubState"], "running", "{svc:?}");
    assert_eq!(svc["NRestarts"], "0", "{svc:?}");
    let s = m.state("app").expect("state file");
    assert_eq!(svc["MainPID"], s.pid.to_string(), "MainPID is baton");

    // Dual stack: IPv4 and IPv6 loopback reach the same generation.
    let v6 = m
        .get("[::1]:3000", "/")
        .unwrap_or_else(|e| panic!("GET over IPv6: {e}"));
    assert_eq!(v6.release_pid(), reply.release_pid(), "IPv6 reply: {v6:?}");
}

#[test]
fn status_text_and_main_pid_name_the_serving_release_and_baton() {
    let Some(m) = Machine::boot("statustext", &["app"]) else {
        return;
    };
    let s = serving(&m, "1.0");
    let g = s.serving.clone().unwrap();
    let want = format!(
        "serving app.1.0 (pid {}, generation {})",
        g.pid.unwrap(),
        g.generation
    );
    let show = wait_for("StatusText to name app.1.0", LONG, || {
        let show = m.show("app", &["StatusText", "MainPID"]);
        if show["StatusText"].starts_with(&want) {
            Ok(show)
        } else {
            Err(format!("{show:?}, want StatusText starting {want:?}"))
        }
    });
    assert_eq!(show["MainPID"], s.pid.to_string(), "MainPID is baton's pid");
    let comm = m.run(&["cat", &format!("/proc/{}/comm", s.pid)]);
    assert_eq!(comm.trim(), "baton", "MainPID's process is baton");

    // After a rollout it names the new release and generation.
    m.point_at("app", "2.0");
    let s2 = wait_serving(&m, "2.0");
    let g2 = s2.serving.unwrap();
    let want = format!(
        "serving app.2.0 (pid {}, generation {})",
        g2.pid.unwrap(),
        g2.generation
    );
    wait_for("StatusText to name app.2.0", LONG, || {
        let show = m.show("app", &["StatusText", "MainPID"]);
        if show["StatusText"].starts_with(&want) && show["MainPID"] == s.pid.to_string() {
            Ok(())
        } else {
            Err(format!("{show:?}, want {want:?} and MainPID {}", s.pid))
        }
    });
}

// ---- rolling ----

#[test]
fn rolling_forward_and_back_under_load_drops_nothing() {
    let Some(m) = Machine::boot("rolling", &["app"]) else {
        return;
    };
    // Each release takes a moment to get ready, so old and new overlap.
    m.add_release("app", "1.0", r#"{"release": "1.0", "ready_delay_ms": 300}"#);
    m.add_release("app", "2.0", r#"{"release": "2.0", "ready_delay_ms": 300}"#);
    let first = serving(&m, "1.0");
    let load = m.load(4);
    load.wait_served("1.0", 50);

    m.point_at("app", "2.0");
    let second = wait_serving(&m, "2.0");
    load.wait_served("2.0", 50);
    assert_only_baton_and(&m, &second);

    m.point_at("app", "1.0");
    let third = wait_serving(&m, "1.0");
    load.wait_served("1.0", 50);
    assert_only_baton_and(&m, &third);

    let t = load.stop();
    assert_no_failures("rolling 1.0 -> 2.0 -> 1.0", &t);
    assert!(t.served("1.0") > 0 && t.served("2.0") > 0, "{t:?}");
    let gen_pids: BTreeSet<i32> = [&first, &second, &third]
        .iter()
        .map(|s| s.serving.as_ref().unwrap().pid.unwrap())
        .collect();
    assert_eq!(gen_pids.len(), 3, "three distinct generations");
    assert!(
        gen_pids.is_subset(&t.pids),
        "each generation answered: {gen_pids:?} vs {:?}",
        t.pids
    );
    let old: BTreeSet<i32> = [&first, &second]
        .iter()
        .map(|s| s.serving.as_ref().unwrap().pid.unwrap())
        .collect();
    assert!(
        m.alive(&old).is_empty(),
        "old generations still exist: {:?}",
        m.alive(&old)
    );
    assert_eq!(
        third.pid, first.pid,
        "baton itself was not restarted by rollouts"
    );
}

// ---- systemctl reload ----

#[test]
fn reload_starts_a_fresh_generation_blocks_until_it_serves_and_drops_nothing() {
    let Some(m) = Machine::boot("reload", &["app"]) else {
        return;
    };
    // Slow to get ready: `systemctl reload` must wait that long.
    let delay = Duration::from_millis(800);
    m.add_release(
        "app",
        "1.0",
        &format!(
            r#"{{"release": "1.0", "ready_delay_ms": {}}}"#,
            delay.as_millis()
        ),
    );
    let before = serving(&m, "1.0");
    let old = before.serving.clone().unwrap();
    let load = m.load(4);
    load.wait_served("1.0", 50);

    let t0 = Instant::now();
    let out = m.systemctl(&["reload", "app"]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "systemctl reload app: {}: {}",
        out.status,
        stderr(&out)
    );
    assert!(
        took >= delay,
        "systemctl reload returned after {took:?}, before the new generation could be ready ({delay:?})"
    );
    // No waiting here: when reload returns, the fresh generation serves.
    let s = m.state("app").unwrap();
    let new = s.serving.clone().expect("something serves");
    assert!(
        new.generation > old.generation,
        "a fresh generation serves: {new:?} (was {old:?})"
    );
    assert_eq!(new.trigger.as_str(), "reload");
    assert_eq!(new.release.name, "app.1.0");
    let r = s.last_rollout.clone().unwrap();
    assert_eq!(
        (r.trigger.as_str(), r.result.as_str()),
        ("reload", "succeeded")
    );
    let svc = m.show("app", &["ActiveState", "MainPID"]);
    assert_eq!(svc["ActiveState"], "active", "{svc:?}");
    assert_eq!(svc["MainPID"], before.pid.to_string(), "same baton");

    let s = wait_serving(&m, "1.0");
    assert_only_baton_and(&m, &s);
    let new_pid = new.pid.unwrap();
    wait_for("the fresh generation to answer", LONG, || {
        let t = load.snapshot();
        if t.pids.contains(&new_pid) {
            Ok(())
        } else {
            Err(format!("pids seen: {:?}", t.pids))
        }
    });
    let t = load.stop();
    assert_no_failures("systemctl reload", &t);
    assert!(t.pids.contains(&old.pid.unwrap()), "old generation served");
    // ExecReload's outcome is in the journal.
    m.wait_journal(
        &["-u", "app"],
        &[&format!(
            "reloaded: app.1.0 serves as generation {}",
            new.generation
        )],
    );
}

#[test]
fn reload_of_a_bad_release_fails_with_the_reason_in_the_journal() {
    let Some(m) = Machine::boot("badreload", &["app"]) else {
        return;
    };
    let before = serving(&m, "1.0");
    let old = before.serving.clone().unwrap();
    // The release current.conf names is broken in place; only a reload
    // notices (baton does not watch cfg files).
    m.add_release(
        "app",
        "1.0",
        r#"{"release": "1.0", "exit_before_ready": 4}"#,
    );
    let out = m.systemctl(&["reload", "app"]);
    assert!(
        !out.status.success(),
        "systemctl reload of a bad release must fail: {}",
        stdout(&out)
    );
    // The reason, at error priority, from `baton reload` (ExecReload).
    let reason = "reload of app.1.0 failed: exited before READY=1 (exit status 4)";
    m.wait_journal(&["-u", "app", "-p", "err"], &[reason]);
    let svc = wait_for("StatusText to report the failure", LONG, || {
        let svc = m.show("app", &["ActiveState", "SubState", "MainPID", "StatusText"]);
        if svc["StatusText"].contains("failed") {
            Ok(svc)
        } else {
            Err(format!("{svc:?}"))
        }
    });
    assert_eq!(
        svc["ActiveState"], "active",
        "the service stays up: {svc:?}"
    );
    assert_eq!(svc["MainPID"], before.pid.to_string(), "{svc:?}");
    assert!(
        svc["StatusText"].contains("failed: exited before READY=1"),
        "{svc:?}"
    );
    let reply = m.get_ok("/");
    assert_eq!(
        reply.release_pid(),
        Some(("1.0".to_owned(), old.pid.unwrap())),
        "the old generation serves on"
    );
}

// ---- restarts ----

/// Serves 1.0, rolls to 2.0, and starts 4 clients that have already been
/// answered by 2.0: the starting point for restarting baton under load.
fn rolled_to_2_0_under_load(m: &Machine) -> (baton::state::State, Load) {
    serving(m, "1.0");
    m.point_at("app", "2.0");
    let before = wait_serving(m, "2.0");
    let load = m.load(4);
    load.wait_served("2.0", 50);
    (before, load)
}

#[test]
fn restart_refuses_no_connection_and_comes_back_on_the_current_release() {
    let Some(m) = Machine::boot("restart", &["app"]) else {
        return;
    };
    let (before, load) = rolled_to_2_0_under_load(&m);

    let out = m.systemctl(&["restart", "app"]);
    assert!(
        out.status.success(),
        "systemctl restart app: {}",
        stderr(&out)
    );
    let after = wait_serving(&m, "2.0");
    assert_ne!(after.pid, before.pid, "a new baton");
    let svc = m.show("app", &["MainPID", "ActiveState"]);
    assert_eq!(svc["MainPID"], after.pid.to_string(), "{svc:?}");
    load.wait_served("2.0", 50);
    let new_pid = after.serving.as_ref().unwrap().pid.unwrap();
    wait_for("the new baton's generation to answer", LONG, || {
        let t = load.snapshot();
        if t.pids.contains(&new_pid) {
            Ok(())
        } else {
            Err(format!("pids seen: {:?}", t.pids))
        }
    });
    let t = load.stop();
    assert_eq!(t.refused, 0, "connections refused during restart: {t:?}");
    assert_no_failures("systemctl restart", &t);
    assert_eq!(
        t.served("1.0"),
        0,
        "only the release current.conf names: {t:?}"
    );
}

#[test]
fn kill_9_of_baton_is_restarted_by_systemd_without_refusing_a_connection() {
    let Some(m) = Machine::boot("kill9", &["app"]) else {
        return;
    };
    let (before, load) = rolled_to_2_0_under_load(&m);

    m.run(&["kill", "-9", &before.pid.to_string()]);
    let after = wait_for("systemd to restart baton", LONG, || {
        let svc = m.show("app", &["NRestarts", "MainPID", "ActiveState"]);
        let s = m.state("app");
        match s {
            Some(s)
                if svc["NRestarts"] == "1"
                    && s.pid != before.pid
                    && svc["ActiveState"] == "active"
                    && s.serving.is_some() =>
            {
                Ok(s)
            }
            _ => Err(format!("{svc:?}")),
        }
    });
    assert_eq!(
        after.serving.as_ref().unwrap().release.name,
        "app.2.0",
        "back on the release current.conf names"
    );
    load.wait_served("2.0", 50);
    let t = load.stop();
    eprintln!(
        "kill -9: {} ok {:?}, failures {:?}",
        t.ok, t.by_release, t.errors
    );
    assert_eq!(
        t.refused, 0,
        "connections refused while baton was down: {:#?}",
        t.errors
    );
    // KillMode=process: systemd leaves the generation alone, it serves on
    // while baton is down, and the new baton retires it once its own
    // serves. No request fails.
    assert_no_failures("kill -9", &t);
    assert!(t.ok > 100, "{t:?}");
}

/// `baton upgrade` under systemd: the binary at ExecStart's path is
/// replaced (as a package upgrade does) and baton re-executes it in place.
/// MainPID stays, the unit stays active the whole time, the generation
/// keeps serving, and nothing is dropped.
#[test]
fn baton_upgrade_in_place_keeps_main_pid_and_the_unit_active_under_load() {
    let Some(m) = Machine::boot("upgrade", &["app"]) else {
        return;
    };
    // baton runs from a path the test can replace (the binary the test
    // built is bound read-only at its usual place).
    const BIN: &str = "/run/baton-bin/baton";
    m.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /run/baton-bin && cp {} {BIN}",
            harness::BATON_IN_CONTAINER
        ),
    ]);
    let exec = unit_for_container("app.service")
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("app.service has an ExecStart")
        .replace(harness::BATON_IN_CONTAINER, BIN);
    m.add_dropin(
        "app.service",
        "upgradable.conf",
        &format!("[Service]\nExecStart=\n{exec}\n"),
    );
    let (before, load) = rolled_to_2_0_under_load(&m);
    let gen_pid = before.serving.as_ref().and_then(|g| g.pid).unwrap();
    assert_eq!(m.prop("app", "MainPID"), before.pid.to_string());
    m.run(&[
        "sh",
        "-c",
        &format!(
            "cp {} {BIN}.dpkg-new && mv {BIN}.dpkg-new {BIN}",
            harness::BATON_IN_CONTAINER
        ),
    ]);
    assert!(
        m.run(&["readlink", &format!("/proc/{}/exe", before.pid)])
            .contains("(deleted)"),
        "the old image's file was replaced"
    );
    let states = std::sync::Mutex::new(BTreeSet::new());
    let looks = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let s = m.show("app", &["ActiveState", "SubState", "MainPID"]);
                states.lock().unwrap().insert(format!(
                    "{}/{} pid {}",
                    s["ActiveState"], s["SubState"], s["MainPID"]
                ));
                looks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let out = baton(&m, &["upgrade", "--wait=30s"]);
        // A few more looks once the upgrade is over.
        let seen = looks.load(std::sync::atomic::Ordering::SeqCst);
        wait_for("two more looks at the unit", LONG, || {
            if looks.load(std::sync::atomic::Ordering::SeqCst) >= seen + 2 {
                Ok(())
            } else {
                Err("looking")
            }
        });
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });
    eprintln!(
        "upgrade: {} looks at app.service during and after it",
        looks.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("upgraded in place"),
        "{}",
        stdout(&out)
    );
    let seen = states.into_inner().unwrap();
    assert_eq!(
        seen,
        BTreeSet::from([format!("active/running pid {}", before.pid)]),
        "systemd saw the unit active with the same MainPID throughout"
    );
    let after = m.state("app").unwrap();
    assert_eq!(after.pid, before.pid);
    assert_eq!(after.serving.as_ref().and_then(|g| g.pid), Some(gen_pid));
    assert!(
        after.image_started_at > before.image_started_at,
        "{after:?}"
    );
    assert_eq!(
        after.last_upgrade.as_ref().map(|u| u.result.as_str()),
        Some("succeeded")
    );
    assert_eq!(m.prop("app", "NRestarts"), "0");
    let exe = m.run(&["readlink", &format!("/proc/{}/exe", before.pid)]);
    assert_eq!(exe.trim(), BIN, "runs the new file");
    let journal = m.wait_journal(&["-u", "app"], &["upgraded in place"]);
    // Nor did systemd see the main process exit, or the unit stop or reload.
    for word in [
        "Main process exited",
        "Stopping",
        "Reloading",
        "Deactivated",
    ] {
        assert!(!journal.contains(word), "{word:?} in:\n{journal}");
    }
    load.wait_served("2.0", 50);
    let t = load.stop();
    assert_no_failures("upgrade", &t);
    assert_eq!(
        t.pids,
        BTreeSet::from([gen_pid]),
        "one generation served it all"
    );
}

/// KillMode=process: a kill -9 of baton leaves its generations to the
/// baton systemd restarts. It adopts them: the live one serves on until the
/// new baton's own generation is live and is then retired (drained), the
/// one that was starting is retired at once, and once the new baton serves
/// nothing of the killed one is left in the cgroup. systemd kills none of
/// them.
#[test]
fn baton_killed_with_sigkill_leaves_its_generations_to_the_next_baton_which_retires_them() {
    let Some(m) = Machine::boot("nothingleft", &["app"]) else {
        return;
    };
    // A live generation with two workers, and a rollout in progress whose
    // generation (with two workers) takes 3 s to get ready.
    m.add_release("app", "1.0", r#"{"release": "1.0", "workers": 2}"#);
    m.add_release(
        "app",
        "4.0",
        r#"{"release": "4.0", "workers": 2, "ready_delay_ms": 3000}"#,
    );
    let s = serving(&m, "1.0");
    let live = s.serving.as_ref().and_then(|g| g.pid).unwrap();
    m.point_at("app", "4.0");
    let (old_pids, starting) = wait_for("baton + 2 generations x 3 processes", LONG, || {
        let pids = m.unit_pids("app.service");
        let st = m.state("app");
        let starting = st
            .as_ref()
            .and_then(|s| s.generations.iter().find(|g| g.release.name == "app.4.0"))
            .and_then(|g| g.pid);
        match starting {
            Some(p) if pids.len() == 7 => Ok((pids, p)),
            _ => Err(format!("cgroup {pids:?}, state {st:?}")),
        }
    });
    assert!(old_pids.contains(&(s.pid as i32)));
    let load = m.load(2);
    load.wait_served("1.0", 20);

    m.run(&["kill", "-9", &s.pid.to_string()]);
    let new = wait_for("systemd to restart baton", LONG, || {
        let svc = m.show("app", &["NRestarts", "MainPID"]);
        match m.state("app") {
            Some(st)
                if svc["NRestarts"] == "1"
                    && st.pid != s.pid
                    && svc["MainPID"] == st.pid.to_string() =>
            {
                Ok(st)
            }
            _ => Err(format!("{svc:?}")),
        }
    });
    m.wait_journal(
        &["-u", "app"],
        &[
            &format!("generation 1 of baton pid {} (app.1.0, pid {live}, live) is still running: adopted as generation", s.pid),
            &format!("generation 2 of baton pid {} (app.4.0, pid {starting}, starting) is still running: adopted as generation", s.pid),
        ],
    );
    // The new baton's own 4.0 gets ready 3 s after it starts; until then
    // the adopted 1.0 answers.
    let after = wait_serving(&m, "4.0");
    let t = load.stop();
    assert_no_failures("kill -9 with a rollout in progress", &t);
    assert!(
        t.pids.contains(&live),
        "the adopted generation answered: {t:?}"
    );
    let left = m.alive(&old_pids);
    assert!(
        left.is_empty(),
        "processes of the killed baton's generations survive: {left:?}"
    );
    let now = m.unit_pids("app.service");
    assert!(now.is_disjoint(&old_pids), "{now:?} vs {old_pids:?}");
    assert_eq!(
        now.len(),
        4,
        "the new baton and its generation of 3: {now:?}"
    );
    assert_eq!(after.pid, new.pid);
    let journal = m.journal(&["-u", "app"]);
    for p in &old_pids {
        assert!(
            !journal.contains(&format!("Killing process {p} ")),
            "systemd killed {p}:\n{journal}"
        );
    }
    // And a stop afterwards leaves nothing.
    let out = m.systemctl(&["stop", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(m.prop("app", "Result"), "success");
    assert!(m.unit_pids("app.service").is_empty());
}

/// Requests in flight on the generation when baton is killed with
/// SIGKILL are answered in full, by that generation, and no request of a
/// load across the kill fails or is refused.
#[test]
fn kill_9_of_baton_loses_no_request_in_flight() {
    let Some(m) = Machine::boot("kill9inflight", &["app"]) else {
        return;
    };
    let s = serving(&m, "1.0");
    let gen_pid = s.serving.as_ref().and_then(|g| g.pid).unwrap();
    let slow_ms = 3000;
    let path = format!("/slow?ms={slow_ms}");
    let (slow, t) = std::thread::scope(|scope| {
        let slow: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| m.get(harness::APP_ADDR, &path)))
            .collect();
        wait_for("4 slow requests in flight on the generation", LONG, || {
            let ss = m.run(&["ss", "-Htnp", "state", "established", "( sport = :3000 )"]);
            if ss.matches(&format!("pid={gen_pid},")).count() >= 4 {
                Ok(())
            } else {
                Err(ss)
            }
        });
        let load = m.load(4);
        load.wait_served("1.0", 50);
        m.run(&["kill", "-9", &s.pid.to_string()]);
        let slow: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        let after = wait_for("the new baton's generation to serve alone", LONG, || {
            let st = m.state("app").ok_or("no state")?;
            match st.serving.as_ref().and_then(|g| g.pid) {
                Some(p) if st.pid != s.pid && p != gen_pid && st.generations.len() == 1 => Ok(p),
                _ => Err(format!("{:?}", st.status)),
            }
        });
        wait_for("the new generation to answer", LONG, || {
            if load.snapshot().pids.contains(&after) {
                Ok(())
            } else {
                Err("not yet")
            }
        });
        (slow, load.stop())
    });
    for r in &slow {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("an in-flight request failed: {e}"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (
                200,
                format!("release 1.0 pid {gen_pid} slept {slow_ms} ms\n").as_str()
            )
        );
    }
    assert_no_failures("kill -9 with requests in flight", &t);
    assert_eq!(t.refused, 0);
    wait_for("the killed baton's generation to be gone", LONG, || {
        if m.alive(&[gen_pid].into()).is_empty() {
            Ok(())
        } else {
            Err("still there")
        }
    });
    m.wait_journal(
        &["-u", "app"],
        &[&format!("example-app[{gen_pid}] release 1.0: drained in")],
    );
}

// ---- failures ----

#[test]
fn a_bad_release_keeps_the_service_up_and_reports_the_failure() {
    let Some(m) = Machine::boot("badrelease", &["app"]) else {
        return;
    };
    m.add_release(
        "app",
        "3.0",
        r#"{"release": "3.0", "exit_before_ready": 4}"#,
    );
    let s = serving(&m, "1.0");
    let old = s.serving.clone().unwrap();
    m.point_at("app", "3.0");
    let status = wait_for("StatusText to report the failed rollout", LONG, || {
        let st = m.prop("app", "StatusText");
        if st.contains("rollout of app.3.0 failed") {
            Ok(st)
        } else {
            Err(st)
        }
    });
    assert!(
        status.contains("exited before READY=1 (exit status 4)")
            && status.contains("still serving app.1.0"),
        "{status}"
    );
    let svc = m.show("app", &["ActiveState", "SubState", "NRestarts", "MainPID"]);
    assert_eq!(
        (svc["ActiveState"].as_str(), svc["SubState"].as_str()),
        ("active", "running"),
        "{svc:?}"
    );
    assert_eq!(svc["NRestarts"], "0");
    assert_eq!(svc["MainPID"], s.pid.to_string());
    let reply = m.get_ok("/");
    assert_eq!(reply.release_pid(), Some(("1.0".into(), old.pid.unwrap())));
    m.wait_journal(
        &["-u", "app", "-p", "err"],
        &["rollout of app.3.0 failed: exited before READY=1 (exit status 4)"],
    );
}

// ---- stopping ----

#[test]
fn stop_lets_generations_finish_in_flight_requests_within_the_timeout() {
    let Some(m) = Machine::boot("stop", &["app"]) else {
        return;
    };
    let s = serving(&m, "1.0");
    let gen_pid = s.serving.as_ref().unwrap().pid.unwrap();
    let slow_ms = 2500;
    let path = format!("/slow?ms={slow_ms}");
    let (reply, took) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| m.get("127.0.0.1:3000", &path));
        // In flight = accepted by the generation (ss shows its pid).
        wait_for("the slow request to be accepted", LONG, || {
            let ss = m.run(&["ss", "-Htnp", "state", "established", "( sport = :3000 )"]);
            if ss.contains(&format!("pid={gen_pid},")) {
                Ok(())
            } else {
                Err(ss)
            }
        });
        let t0 = Instant::now();
        let out = m.systemctl(&["stop", "app"]);
        let took = t0.elapsed();
        assert!(out.status.success(), "systemctl stop app: {}", stderr(&out));
        (slow.join().unwrap(), took)
    });
    let reply = reply.unwrap_or_else(|e| panic!("the in-flight /slow request failed: {e}"));
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        format!("release 1.0 pid {gen_pid} slept {slow_ms} ms\n"),
        "answered by the generation that was stopped"
    );
    assert!(
        took < Duration::from_secs(35),
        "stop took {took:?}, past TimeoutStopSec"
    );
    let svc = m.show("app", &["ActiveState", "Result", "MainPID"]);
    assert_eq!(svc["ActiveState"], "inactive", "{svc:?}");
    assert_eq!(svc["Result"], "success", "no timeout, no SIGKILL: {svc:?}");
    assert!(m.unit_pids("app.service").is_empty());
    // baton sent SIGTERM; the generation drained and exited; no SIGKILL.
    let log = m.wait_journal(
        &["-u", "app"],
        &[
            "stopping: sending SIGTERM to 1 generation(s)",
            &format!("example-app[{gen_pid}] release 1.0: drained in"),
            "all generations stopped; exiting",
        ],
    );
    assert!(!log.contains("SIGKILL"), "nothing was killed:\n{log}");
    assert_eq!(
        m.prop("app.socket", "SubState"),
        "listening",
        "the socket outlives the service"
    );
}

// ---- the client commands ----

#[test]
fn baton_status_exits_3_when_not_running_0_when_serving_1_after_a_failure() {
    let Some(m) = Machine::boot("status", &["app"]) else {
        return;
    };
    m.add_release(
        "app",
        "3.0",
        r#"{"release": "3.0", "exit_before_ready": 4}"#,
    );
    enable_socket(&m);
    let out = baton(&m, &["status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "not running yet: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("baton is not running"),
        "{}",
        stderr(&out)
    );

    let s = serving(&m, "1.0");
    let out = baton(&m, &["status"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let g = s.serving.as_ref().unwrap();
    assert!(
        text.contains(&format!(
            "app.1.0 (pid {}, generation {})",
            g.pid.unwrap(),
            g.generation
        )),
        "{text}"
    );
    assert!(text.contains("succeeded"), "{text}");

    let out = baton(&m, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(v["pid"], s.pid);
    assert_eq!(v["serving"]["release"]["name"], "app.1.0");

    m.point_at("app", "3.0");
    let out = wait_for("status to report the failed rollout", LONG, || {
        let out = baton(&m, &["status"]);
        if out.status.code() == Some(1) {
            Ok(out)
        } else {
            Err(format!("{:?}: {}", out.status.code(), stdout(&out)))
        }
    });
    let text = stdout(&out);
    assert!(
        text.contains("app.3.0 (edit) failed") && text.contains("exited before READY=1"),
        "{text}"
    );

    m.run(&["systemctl", "stop", "app"]);
    let out = baton(&m, &["status"]);
    assert_eq!(out.status.code(), Some(3), "stopped: {}", stderr(&out));
}

#[test]
fn baton_switch_wait_returns_once_the_release_serves_or_fails() {
    let Some(m) = Machine::boot("switch", &["app"]) else {
        return;
    };
    m.add_release("app", "2.0", r#"{"release": "2.0", "ready_delay_ms": 500}"#);
    m.add_release(
        "app",
        "3.0",
        r#"{"release": "3.0", "exit_before_ready": 4}"#,
    );
    serving(&m, "1.0");

    let t0 = Instant::now();
    let out = baton(&m, &["switch", "2.0", "--wait"]);
    let took = t0.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("app.2.0 serves"), "{}", stdout(&out));
    assert!(
        took >= Duration::from_millis(500),
        "returned after {took:?}"
    );
    // When it returns, 2.0 serves: no waiting here.
    let s = m.state("app").unwrap();
    assert_eq!(s.serving.unwrap().release.name, "app.2.0");
    // (1.0, retired, still accepts until its drain begins: ask who answers
    // once it is gone.)
    let retired_gone = || {
        wait_for("the retired generation to be gone", LONG, || {
            let s = m.state("app").unwrap();
            if s.generations.len() == 1 {
                Ok(())
            } else {
                Err(format!("{:?}", s.generations))
            }
        })
    };
    retired_gone();
    assert!(m.get_ok("/").body.starts_with("release 2.0 "));
    let conf = std::fs::read_to_string(m.app_dir("app").join("release/current.conf")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"bin.file": "app.2.0", "cfg.file": "cfg.2.0"}),
        "relative paths kept"
    );

    // Already serving: at once.
    let out = baton(&m, &["switch", "app.2.0", "--wait=5s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = baton(&m, &["switch", "3.0", "--wait=30s"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("rollout of app.3.0 failed: exited before READY=1 (exit status 4)"),
        "{}",
        stderr(&out)
    );

    let out = baton(&m, &["switch", "9.9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no release 9.9") && stderr(&out).contains("app.1.0"),
        "{}",
        stderr(&out)
    );
    // Back to 1.0 with --wait: the rollout back succeeds.
    let out = baton(&m, &["switch", "1.0", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    retired_gone();
    assert!(m.get_ok("/").body.starts_with("release 1.0 "));
}

#[test]
fn baton_releases_lists_releases_and_marks_the_serving_one() {
    let Some(m) = Machine::boot("releases", &["app"]) else {
        return;
    };
    m.add_release(
        "app",
        "3.0",
        r#"{"release": "3.0", "exit_before_ready": 4}"#,
    );
    // Not releases: a bin without cfg, a plain file.
    let dir = m.app_dir("app").join("release");
    std::os::unix::fs::symlink("/opt/baton/example-app", dir.join("app.5.0")).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    serving(&m, "1.0");
    m.point_at("app", "3.0");
    wait_for("the rollout of 3.0 to fail", LONG, || {
        let s = m.state("app").unwrap();
        let r = s.last_rollout.unwrap();
        if r.result.as_str() == "failed" {
            Ok(())
        } else {
            Err(r.result.as_str())
        }
    });
    let s = m.state("app").unwrap();
    let g = s.serving.unwrap();
    let out = baton(&m, &["releases"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(|l| l.to_owned()).collect();
    let want = [
        format!(
            "* app.1.0  cfg.1.0  serving (generation {}, pid {})",
            g.generation,
            g.pid.unwrap()
        ),
        "  app.2.0  cfg.2.0".to_owned(),
        "* app.3.0  cfg.3.0  named by current.conf".to_owned(),
    ];
    assert_eq!(lines, want, "baton releases output");
}

// ---- template units ----

#[test]
fn template_units_run_several_apps_one_on_a_drop_in_port() {
    let Some(m) = Machine::boot("template", &["shop", "blog"]) else {
        return;
    };
    m.add_release("blog", "2.0", r#"{"release": "blog-2.0"}"#);
    m.point_at("blog", "2.0");
    // shop gets a TCP port from a drop-in; blog keeps the default socket.
    m.add_dropin(
        "baton@shop.socket",
        "port.conf",
        "[Socket]\nListenStream=\nListenStream=3001\n",
    );
    m.run(&[
        "systemctl",
        "enable",
        "--now",
        "baton@shop.socket",
        "baton@blog.socket",
    ]);
    let shop = m
        .get("127.0.0.1:3001", "/")
        .unwrap_or_else(|e| panic!("GET shop on :3001: {e}"));
    assert!(shop.body.starts_with("release 1.0 "), "{shop:?}");
    let blog = m.run(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--unix-socket",
        "/run/baton/blog.sock",
        "http://blog/",
    ]);
    assert!(blog.starts_with("release blog-2.0 "), "{blog}");
    for (unit, release) in [
        ("baton@shop.service", "app.1.0"),
        ("baton@blog.service", "app.2.0"),
    ] {
        wait_for(&format!("{unit} to serve {release}"), LONG, || {
            let svc = m.show(unit, &["ActiveState", "StatusText"]);
            if svc["ActiveState"] == "active"
                && svc["StatusText"].starts_with(&format!("serving {release} "))
            {
                Ok(())
            } else {
                Err(format!("{svc:?}"))
            }
        });
    }
    // Each instance has its own runtime dir (notify socket) and state.
    m.run(&["test", "-S", "/run/shop/notify.sock"]);
    m.run(&["test", "-S", "/run/blog/notify.sock"]);
    assert!(m.state("shop").is_some() && m.state("blog").is_some());

    // Moving a running instance to another port, as docs/systemd.md says:
    // a drop-in, then a restart of the socket (its service restarts too).
    let before = m.state("shop").unwrap().pid;
    m.add_dropin(
        "baton@shop.socket",
        "port.conf",
        "[Socket]\nListenStream=\nListenStream=3002\n",
    );
    m.run(&["systemctl", "restart", "baton@shop.socket"]);
    let moved = m
        .get("127.0.0.1:3002", "/")
        .unwrap_or_else(|e| panic!("GET shop on :3002 after the move: {e}"));
    assert!(moved.body.starts_with("release 1.0 "), "{moved:?}");
    assert_eq!(
        m.get("127.0.0.1:3001", "/").err(),
        Some(harness::HttpError::Refused),
        "the old port is closed"
    );
    // baton@shop.service was restarted with its socket. (A generation may
    // answer before its new baton first writes its state: wait for it.)
    wait_for("a new baton for shop", LONG, || match m.state("shop") {
        Some(s) if s.pid != before => Ok(()),
        other => Err(format!("state pid {:?}", other.map(|s| s.pid))),
    });
    assert!(unit_for_container("baton@.service").contains("/srv/%i/release/current.conf"));
}

// ---- the install steps, run as the docs write them ----

/// The first code block indented by four spaces after the line `heading`.
fn indented_block_after(doc: &str, heading: &str) -> Vec<String> {
    doc.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .skip_while(|l| !l.starts_with("    "))
        .take_while(|l| l.starts_with("    "))
        .map(|l| l[4..].to_owned())
        .collect()
}

/// Every ```sh block between the line `heading` and the next `## `
/// heading, unindented as far as its fence is.
fn sh_blocks_under(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for l in doc
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
    {
        let indent = l.len() - l.trim_start().len();
        match (&mut current, l.trim()) {
            (None, "```sh") => current = Some((indent, Vec::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap().1),
            (Some((fence, lines)), _) => lines.push(l.get(*fence..).unwrap_or("").to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

/// The steps as a shell script run in a checkout: `cargo build --release`
/// is dropped (cargo built the baton under test; the checkout has it where
/// the build puts it), everything else runs as written.
fn as_written(lines: &[String]) -> String {
    let script: Vec<String> = lines
        .iter()
        .map(|l| l.replace("cargo build --release && ", ""))
        .filter(|l| l.trim() != "cargo build --release")
        .collect();
    assert!(
        script.iter().any(|l| l.starts_with("useradd ")),
        "no useradd among the steps: {lines:#?}"
    );
    script.join("\n")
}

/// Inside the container, what a checkout of baton after `cargo build
/// --release` holds (`target/release/baton`, the shipped `systemd/` units
/// as they are), and the `build/myapp` and `build/config` the steps name
/// (the example app as release 1.0). /usr is the host's, read-only, in the
/// container: an overlay on /usr/bin (its upper layer in the container's
/// /run) takes the installed baton. The units the harness installed are
/// removed, so only the steps' own run.
fn checkout(m: &Machine) {
    m.run(&[
        "sh",
        "-ec",
        "mkdir -p /run/usr-bin/upper /run/usr-bin/work
         mount -t overlay overlay -o lowerdir=/usr/bin,upperdir=/run/usr-bin/upper,workdir=/run/usr-bin/work /usr/bin
         rm -f /run/systemd/system/app.* /run/systemd/system/baton@.*
         systemctl daemon-reload
         mkdir -p /root/checkout/target/release /root/checkout/build /root/checkout/systemd
         cp /opt/baton/baton /root/checkout/target/release/baton
         cp /opt/baton/example-app /root/checkout/build/myapp
         printf '{\"release\": \"1.0\"}\\n' > /root/checkout/build/config",
    ]);
    for unit in [
        "app.socket",
        "app.service",
        "baton@.socket",
        "baton@.service",
    ] {
        m.run(&[
            "sh",
            "-ec",
            "printf %s \"$2\" > \"/root/checkout/systemd/$1\"",
            "sh",
            unit,
            &harness::shipped_unit(unit),
        ]);
    }
}

/// Runs `script` in the checkout, echoing each command.
fn run_steps(m: &Machine, script: &str) {
    let out = m.exec(&["sh", "-exc", &format!("cd /root/checkout\n{script}")]);
    assert!(
        out.status.success(),
        "the steps failed ({}):\n{script}\n--- output ---\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
}

/// `user` and its own group exist (a system user, home /srv/<user>, no
/// login), and /srv/<user> belongs to them; returns (uid, gid).
fn assert_user_and_group(m: &Machine, user: &str) -> (u32, u32) {
    let pw = m.run(&["getent", "passwd", user]);
    let f: Vec<&str> = pw.trim().split(':').collect();
    assert_eq!(f.len(), 7, "{pw}");
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    assert!(uid < 1000, "a system user: {pw}");
    assert_eq!(
        (f[5], f[6]),
        (format!("/srv/{user}").as_str(), "/usr/sbin/nologin"),
        "{pw}"
    );
    let gr = m.run(&["getent", "group", user]);
    assert_eq!(
        gr.trim().split(':').nth(2),
        Some(gid.to_string().as_str()),
        "{user}'s primary group is its own group {user}: {gr} / {pw}"
    );
    let owner = m.run(&["stat", "-c", "%U:%G %a", &format!("/srv/{user}")]);
    assert_eq!(owner.trim(), format!("{user}:{user} 750"));
    (uid, gid)
}

/// `unit` is active, serving app.1.0, and its main process (baton) and the
/// generation run as (uid, gid).
fn assert_serving_as(m: &Machine, unit: &str, ids: (u32, u32)) {
    let main = wait_for(&format!("{unit} to serve app.1.0"), LONG, || {
        let svc = m.show(unit, &["ActiveState", "StatusText", "MainPID"]);
        if svc["ActiveState"] == "active" && svc["StatusText"].starts_with("serving app.1.0 ") {
            Ok(svc["MainPID"].clone())
        } else {
            Err(format!("{svc:?}"))
        }
    });
    let want = format!("{0}\t{0}\t{0}\t{0} {1}\t{1}\t{1}\t{1}", ids.0, ids.1);
    let pids = m.unit_pids(unit);
    assert_eq!(pids.len(), 2, "baton and one generation: {pids:?}");
    assert!(pids.contains(&main.parse().unwrap()), "{main} in {pids:?}");
    for pid in pids {
        let status = m.run(&["cat", &format!("/proc/{pid}/status")]);
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        assert_eq!(
            format!("{} {}", field("Uid:"), field("Gid:")),
            want,
            "pid {pid} of {unit}"
        );
    }
}

#[test]
fn readme_install_steps_work_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let steps = as_written(&indented_block_after(&readme, "## Running under systemd"));
    let Some(m) = Machine::boot("readme_install", &[]) else {
        return;
    };
    // An empty /etc, as on a host whose login.defs does not say
    // USERGROUPS_ENAB yes: useradd makes a group only when asked to.
    m.run(&["test", "!", "-e", "/etc/login.defs"]);
    checkout(&m);
    run_steps(&m, &steps);
    let ids = assert_user_and_group(&m, "app");
    let reply = m.get_ok("/");
    assert!(reply.body.starts_with("release 1.0 pid "), "{reply:?}");
    assert_serving_as(&m, "app.service", ids);
}

#[test]
fn docs_install_steps_work_as_written() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/systemd.md")).unwrap();
    let install: Vec<String> = sh_blocks_under(&doc, "## Install").concat();
    let template = sh_blocks_under(&doc, "## Several apps on one host: the template units");
    let (install, template) = (
        as_written(&install),
        as_written(
            template
                .first()
                .expect("a ```sh block for the template units"),
        ),
    );
    let Some(m) = Machine::boot("docs_install", &[]) else {
        return;
    };
    m.run(&["test", "!", "-e", "/etc/login.defs"]);
    checkout(&m);
    run_steps(&m, &install);
    let ids = assert_user_and_group(&m, "app");
    let reply = m.get_ok("/");
    assert!(reply.body.starts_with("release 1.0 pid "), "{reply:?}");
    assert_serving_as(&m, "app.service", ids);

    // The template units for an app `shop`, then its releases "as above".
    run_steps(&m, &template);
    run_steps(
        &m,
        "install -m 0755 build/myapp /srv/shop/release/app.1.0
         install -m 0644 build/config /srv/shop/release/cfg.1.0
         printf '{\"bin.file\": \"app.1.0\", \"cfg.file\": \"cfg.1.0\"}\\n' > /srv/shop/release/current.conf",
    );
    let ids = assert_user_and_group(&m, "shop");
    let reply = m.run(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--unix-socket",
        "/run/baton/shop.sock",
        "http://shop/",
    ]);
    assert!(reply.starts_with("release 1.0 pid "), "{reply}");
    assert_serving_as(&m, "baton@shop.service", ids);
}

// ---- what a kill -9 of baton costs, by KillMode ----

/// What one KillMode did to a kill -9 of baton (see
/// `kill_9_costs_by_kill_mode`).
#[derive(Debug)]
struct KillCost {
    mode: String,
    /// Slow requests in flight on the generation at the kill: answered,
    /// failed (with the errors).
    in_flight_ok: usize,
    in_flight_failed: Vec<String>,
    /// GET / load across the kill: ok, failed, refused.
    load: Tally,
    /// From the kill to the first reply from a generation of the new baton.
    to_new_generation: Duration,
    /// The longest GET / of the load (one that waited in the queue).
    slowest: Duration,
    /// Processes of the killed baton's generations still running once the
    /// new baton serves and the slow requests are over (+2 s).
    survivors_after: usize,
    /// `systemctl stop app`, idle, and what it left in the cgroup.
    stop: Duration,
    left_after_stop: usize,
    /// The killed baton's generation.
    old_gen: i32,
    /// `systemctl restart app`, idle: until it returns, and until a new
    /// generation answers.
    restart: Duration,
    restart_to_serving: Duration,
}

fn kill_9_cost(mode: &str, slow_ms: u64, slow_n: usize) -> KillCost {
    let m = Machine::boot(&format!("km-{mode}"), &["app"]).expect("systemd-nspawn");
    if mode != "shipped" {
        m.add_dropin(
            "app.service",
            "killmode.conf",
            &format!("[Service]\nKillMode={mode}\n"),
        );
    }
    let s = serving(&m, "1.0");
    let gen_pid = s.serving.as_ref().and_then(|g| g.pid).unwrap();
    let old_pids = m.unit_pids("app.service");
    let path = format!("/slow?ms={slow_ms}");
    std::thread::scope(|scope| {
        let slow: Vec<_> = (0..slow_n)
            .map(|_| scope.spawn(|| m.get(harness::APP_ADDR, &path)))
            .collect();
        wait_for("the slow requests to be accepted", LONG, || {
            let ss = m.run(&["ss", "-Htnp", "state", "established", "( sport = :3000 )"]);
            let n = ss.matches(&format!("pid={gen_pid},")).count();
            if n >= slow_n { Ok(()) } else { Err(ss) }
        });
        let load = m.load(4);
        load.wait_served("1.0", 50);
        let kill_at = load.elapsed();
        m.run(&["kill", "-9", &s.pid.to_string()]);
        let new_pid = wait_for("a generation of the new baton to answer", LONG, || {
            let t = load.snapshot();
            t.pids
                .iter()
                .find(|p| !old_pids.contains(p))
                .copied()
                .ok_or(format!("{t:?}"))
        });
        let first_new = load.snapshot().first_reply[&new_pid];
        let slow: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        let in_flight_ok = slow
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200))
            .count();
        let in_flight_failed = slow
            .iter()
            .filter_map(|r| match r {
                Ok(r) if r.status == 200 => None,
                Ok(r) => Some(format!("status {}", r.status)),
                Err(e) => Some(e.to_string()),
            })
            .collect();
        // The slow requests are over: give what is left 2 s to go.
        let settle = load.elapsed() + Duration::from_secs(2);
        wait_for("2 s to pass", LONG, || {
            if load.elapsed() >= settle {
                Ok(())
            } else {
                Err("waiting")
            }
        });
        let t = load.stop();
        if std::env::var_os("BATON_KILL_DUMP").is_some() {
            eprintln!("{}", m.journal(&["-u", "app", "-o", "short-precise"]));
        }
        let survivors_after = m
            .alive(&old_pids)
            .into_iter()
            .filter(|p| *p != s.pid as i32)
            .count();
        let t0 = Instant::now();
        let out = m.systemctl(&["stop", "app"]);
        let stop = t0.elapsed();
        assert!(out.status.success(), "{}", stderr(&out));
        let left_after_stop = m
            .unit_pids("app.service")
            .union(&m.alive(&old_pids))
            .count();
        m.run(&["systemctl", "start", "app"]);
        let before = wait_serving(&m, "1.0");
        let t0 = Instant::now();
        let out = m.systemctl(&["restart", "app"]);
        let restart = t0.elapsed();
        assert!(out.status.success(), "{}", stderr(&out));
        let restart_to_serving = wait_for("the restarted baton to serve", LONG, || {
            match m.state("app") {
                Some(s2) if s2.pid != before.pid && s2.serving.is_some() => {
                    m.get_ok("/");
                    Ok(t0.elapsed())
                }
                _ => Err("not yet"),
            }
        });
        KillCost {
            mode: mode.to_owned(),
            in_flight_ok,
            in_flight_failed,
            to_new_generation: first_new.saturating_sub(kill_at),
            slowest: t.slowest.map(|(d, _)| d).unwrap_or_default(),
            load: t,
            survivors_after,
            old_gen: gen_pid,
            stop,
            left_after_stop,
            restart,
            restart_to_serving,
        }
    })
}

/// Measures what a kill -9 of baton costs under each KillMode (the
/// figures in docs/systemd.md): `cargo test --release --test systemd --
/// --ignored kill_9_costs_by_kill_mode --nocapture`. Opt-in: it boots a
/// container per mode and prints a table; it asserts nothing.
#[test]
#[ignore]
fn kill_9_costs_by_kill_mode() {
    if let Some(why) = testkit::nspawn::cannot_boot() {
        harness::skip("kill_9_costs_by_kill_mode", &why);
        return;
    }
    let modes: Vec<String> = std::env::var("BATON_KILL_MODES")
        .unwrap_or_else(|_| "shipped,mixed,control-group,process".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let slow_ms = 3000;
    for mode in modes {
        let c = kill_9_cost(&mode, slow_ms, 4);
        eprintln!(
            "KILLMODE {:<14} in-flight /slow?ms={slow_ms}: {} of 4 answered {:?} | load: {} ok, {} failed, {} refused, slowest {:?} | kill -> new generation answers {:?} | survivors +2s: {} | stop {:?} (left {}) | restart {:?}, serving after {:?}",
            c.mode,
            c.in_flight_ok,
            c.in_flight_failed,
            c.load.ok,
            c.load.failed,
            c.load.refused,
            c.slowest,
            c.to_new_generation,
            c.survivors_after,
            c.stop,
            c.left_after_stop,
            c.restart,
            c.restart_to_serving,
        );
        eprintln!(
            "KILLMODE {:<14} answered by pids {:?} (old generation {}); errors {:?}",
            c.mode, c.load.pids, c.old_gen, c.load.errors
        );
    }
}
