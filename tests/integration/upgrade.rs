//! `baton upgrade`: the running baton re-executes its binary in place. Its
//! pid, the sockets and every generation stay; nothing is dropped; a new
//! binary that cannot take over leaves the old image serving.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::util::*;

/// A rig whose baton runs from its own copy of the binary (`<tmp>/bin/baton`),
/// which the test can replace the way a package upgrade does.
fn upgradable(tag: &str, args: &[&str]) -> (Rig, i32) {
    let mut rig = Rig::new(tag);
    let bin = rig.tmp.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    rig.baton_bin = bin.join("baton");
    std::fs::copy(BATON, &rig.baton_bin).unwrap();
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    rig.start(args);
    let pid = rig.wait_live("1.0");
    (rig, pid)
}

/// Puts `install` at the binary's path as dpkg does: written beside it,
/// then renamed over it (a new inode; the running image keeps the old one).
fn install(rig: &Rig, write: impl FnOnce(&Path)) {
    let new = rig.baton_bin.with_extension("dpkg-new");
    let _ = std::fs::remove_file(&new);
    write(&new);
    std::fs::rename(&new, &rig.baton_bin).unwrap();
}

fn install_script(rig: &Rig, body: &str) {
    install(rig, |p| {
        std::fs::write(p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
}

fn upgrade(rig: &Rig, wait: &str) -> (i32, String, String) {
    baton_cmd(&[
        "upgrade",
        "--config",
        path_str(&rig.conf),
        &format!("--wait={wait}"),
    ])
}

fn state_f64(rig: &Rig, key: &str) -> f64 {
    rig.state().and_then(|s| s[key].as_f64()).unwrap_or(0.0)
}

fn exe_inode(pid: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

#[test]
fn upgrade_under_load_keeps_baton_and_every_generation_and_drops_nothing() {
    let (rig, gen_pid) = upgradable("upgrade-load", &[]);
    let pid = rig.baton_pid();
    let image_before = state_f64(&rig, "image_started_at");
    let fds_before = fd_count(pid);
    let load = Load::start(rig.port, 4);
    load.wait_served("1.0", 100);
    install(&rig, |p| {
        std::fs::copy(BATON, p).unwrap();
    });
    let new_inode = std::fs::metadata(&rig.baton_bin).unwrap().ino();
    assert_ne!(exe_inode(pid), new_inode, "still the old image before");

    let (code, out, err) = upgrade(&rig, "20s");
    assert_eq!(code, 0, "{out}{err}\n{}", rig.log());
    assert!(out.contains("upgraded in place"), "{out}");
    load.wait_served("1.0", 100);
    let tally = load.stop();
    eprintln!(
        "upgrade under load: {} requests, {} failed; baton pid {pid} -> {}, generation pid {gen_pid} -> {:?}",
        tally.ok + tally.failed,
        tally.failed,
        rig.baton_pid(),
        rig.serving().map(|(_, p)| p)
    );
    assert_eq!(tally.failed, 0, "{:?}\n{}", tally.errors, rig.log());
    assert!(alive(pid), "baton's pid is unchanged");
    assert_eq!(exe_inode(pid), new_inode, "runs the new binary");
    assert_eq!(rig.serving().map(|(_, p)| p), Some(gen_pid));
    let s = rig.state().unwrap();
    assert_eq!(s["pid"].as_i64(), Some(pid as i64));
    assert_eq!(s["last_upgrade"]["result"], "succeeded", "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(state_f64(&rig, "image_started_at") > image_before);
    assert_eq!(fd_count(pid), fds_before, "no fd leaked or lost");
    rig.assert_children(1);
    // The new image carries on as the old one would have.
    rig.point("2.0");
    rig.wait_replaced("2.0", gen_pid);
    assert!(rig.log().contains(&format!(
        "upgraded in place: baton {v} -> {v} (pid {pid})",
        v = env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn a_rollout_in_flight_across_the_upgrade_finishes_on_its_own_deadlines() {
    let (rig, old) = upgradable("upgrade-inflight", &["--ready-timeout", "4s"]);
    rig.release("2.0", r#""ready_delay_ms": 2500"#);
    rig.release("3.0", r#""never_ready": true"#);
    rig.point("2.0");
    let candidate = rig.wait_generation_pid(2);
    let (code, out, err) = upgrade(&rig, "20s");
    assert_eq!(code, 0, "{out}{err}\n{}", rig.log());
    // Promoted by the new image, on READY=1 from the same process.
    let live = rig.wait_replaced("2.0", old);
    assert_eq!(live, candidate);
    rig.wait_for("the old generation to exit", PATIENCE, || !alive(old));
    let s = rig.state().unwrap();
    assert_eq!(s["last_rollout"]["result"], "succeeded", "{s}");
    assert_eq!(s["last_rollout"]["generation"], 2);

    // A ready timeout that began before an upgrade ends when it would have:
    // 4 s after the rollout, not 4 s after the upgrade.
    rig.point("3.0");
    rig.wait_generation_pid(3);
    let began = rig.wait_line(&["rolling out app.3.0"]);
    // Half way through its 4 s: a deadline re-based by the upgrade would
    // end 2 s late.
    rig.wait_for("2 s into the rollout", PATIENCE, || {
        testkit::clock::now_us() as f64 / 1e6 - log_time(&began) >= 2.0
    });
    let (code, out, err) = upgrade(&rig, "20s");
    assert_eq!(code, 0, "{out}{err}");
    rig.wait_for("the second upgrade", PATIENCE, || {
        rig.log_lines(&["upgraded in place"]).len() == 2
    });
    let upgraded = rig.log_lines(&["upgraded in place"]).pop().unwrap();
    let failed = rig.wait_line(&["rollout of app.3.0 failed", "--ready-timeout 4s"]);
    let (t0, tu, tf) = (log_time(&began), log_time(&upgraded), log_time(&failed));
    assert!(tu > t0, "the upgrade came after the rollout began");
    assert!(
        tu - t0 >= 2.0 && tf - t0 < 5.0 && tf - t0 >= 3.9,
        "timed out {:.2}s after the rollout began (upgrade at +{:.2}s)",
        tf - t0,
        tu - t0
    );
    rig.wait_serving("2.0");
}

/// Each way a new binary can be unable to take over: the upgrade fails
/// with the reason, and the running image serves on, untouched.
#[test]
fn an_upgrade_to_a_binary_that_cannot_take_over_leaves_the_old_baton_serving() {
    let (rig, gen_pid) = upgradable("upgrade-broken", &[]);
    let pid = rig.baton_pid();
    let load = Load::start(rig.port, 2);
    type Breaker = Box<dyn Fn(&Rig)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "missing",
            Box::new(|r: &Rig| std::fs::remove_file(&r.baton_bin).unwrap()),
            "No such file",
        ),
        (
            "not executable",
            Box::new(|r: &Rig| {
                install(r, |p| {
                    std::fs::copy(BATON, p).unwrap();
                    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
                })
            }),
            "Permission denied",
        ),
        (
            "crashes",
            Box::new(|r: &Rig| install_script(r, "kill -SEGV $$")),
            "killed by SIGSEGV",
        ),
        (
            "refuses the handover",
            Box::new(|r: &Rig| {
                install_script(
                    r,
                    "cat >/dev/null; echo 'baton 9.0 cannot adopt a handover of format 1' >&2; exit 1",
                )
            }),
            "cannot adopt a handover of format 1",
        ),
    ];
    for (what, break_it, reason) in cases {
        let image = state_f64(&rig, "image_started_at");
        break_it(&rig);
        let (code, out, err) = upgrade(&rig, "20s");
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(
            err.contains("upgrade to") && err.contains(reason) && err.contains("serves on"),
            "{what}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(alive(pid), "{what}");
        assert_eq!(
            state_f64(&rig, "image_started_at"),
            image,
            "{what}: same image"
        );
        assert_eq!(rig.serving().map(|(_, p)| p), Some(gen_pid), "{what}");
        let line = rig.wait_line(&["upgrade failed", reason]);
        assert!(line.contains("ERROR"), "{what}: {line}");
        let (code, _, _) = baton_cmd(&["status", "--config", path_str(&rig.conf)]);
        assert_eq!(code, 0, "{what}: the service is fine");
    }
    let tally = load.stop();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(tally.ok > 0);
    rig.assert_children(1);
}

/// The new image cannot adopt what the check accepted (a fault injected
/// after the exec): it goes back to the previous image, which takes its
/// state back; nothing is lost.
#[test]
fn a_new_image_that_cannot_adopt_goes_back_to_the_previous_one() {
    let (rig, gen_pid) = upgradable("upgrade-back", &[]);
    let pid = rig.baton_pid();
    let real = rig.tmp.0.join("bin/baton.real");
    std::fs::copy(BATON, &real).unwrap();
    install_script(
        &rig,
        &format!(
            "[ \"$1\" = handover-check ] && exec {real} \"$@\"\nBATON_FAIL_ADOPT=injected exec {real} \"$@\"",
            real = real.display()
        ),
    );
    let load = Load::start(rig.port, 2);
    let (code, out, err) = upgrade(&rig, "20s");
    assert_eq!(code, 1, "{out}{err}\n{}", rig.log());
    assert!(
        err.contains("could not adopt") && err.contains("injected"),
        "{err}"
    );
    rig.wait_line(&["going back to the previous image"]);
    let tally = load.stop();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(alive(pid));
    assert_eq!(rig.serving().map(|(_, p)| p), Some(gen_pid));
    // Still in charge: a rollout works.
    rig.point("2.0");
    rig.wait_replaced("2.0", gen_pid);
    rig.assert_children(1);
}

#[test]
fn a_check_that_never_answers_is_killed_and_the_upgrade_fails() {
    let (rig, gen_pid) = upgradable("upgrade-hang", &[]);
    let marker = rig.tmp.0.join("hung");
    install_script(&rig, &format!("touch {}; exec sleep 600", marker.display()));
    let (code, out, err) = upgrade(&rig, "30s");
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("did not answer within 10s"), "{err}");
    assert!(marker.exists(), "the check ran");
    // The check (and its group) was killed and reaped: no sleep left.
    rig.wait_for("the check to be gone", PATIENCE, || {
        rig.children().len() == 1
    });
    rig.assert_children(1);
    assert_eq!(rig.serving().map(|(_, p)| p), Some(gen_pid));
}

#[test]
fn upgrade_of_a_baton_that_is_not_running_says_so() {
    let tmp = TempDir::new("upgrade-none");
    let conf: PathBuf = tmp.0.join("app/release/current.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    let (code, _, err) = baton_cmd(&["upgrade", "--config", path_str(&conf), "--wait"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not running"), "{err}");
}

/// Check attempts are not handed over: the one running at the upgrade is
/// killed, and the new image checks again at once.
#[test]
fn a_readiness_check_running_across_an_upgrade_is_run_again_by_the_new_image() {
    let (rig, _) = upgradable("upgrade-check", &[]);
    let marks = rig.tmp.0.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    rig.release(
        "2.0",
        &format!(
            r#""notify": false, "ready_file": "{}/ready.%p""#,
            marks.display()
        ),
    );
    rig.write_conf(&format!(
        r#"{{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", "ready": "check:sleep 1.5; test -e {}/ready.$BATON_PID"}}"#,
        marks.display()
    ));
    rig.wait_line(&["generation 2: check attempt started as pid"]);
    install(&rig, |p| {
        std::fs::copy(BATON, p).unwrap();
    });
    let (code, out, err) = upgrade(&rig, "20s");
    assert_eq!(code, 0, "{out}{err}\n{}", rig.log());
    rig.wait_live("2.0");
    rig.wait_line(&[
        "generation 2 (app.2.0",
        "is ready after",
        "(check:sleep 1.5;",
    ]);
    rig.assert_children(1);
}
