//! Faults found by probing what the other tests did not cover: the order
//! in which baton tells things, races between events that arrive together,
//! storms, concurrent operators, a state directory that fills up or turns
//! read-only, exhausted kernel resources, broken input from whoever started
//! baton, and apps that misbehave around READY=1. Each is one clear error
//! naming the file or the reason; the serving generation serves on;
//! nothing leaks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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

/// Two operators run `baton switch --wait` at the same moment, to
/// different releases. The last write wins: its switch reports that its
/// release serves, and the other one (unless its release served first)
/// that current.conf was changed again to the winner. Neither may claim
/// the other's release as a change made after it, nor both fail.
#[test]
fn concurrent_switch_wait_reports_the_last_write_as_the_winner() {
    let mut rig = Rig::new("p-switch2");
    rig.release("1.0", "");
    for v in ["3.0", "4.0"] {
        rig.release(v, r#""ready_delay_ms": 300"#);
    }
    rig.point("1.0");
    rig.start(&[]);
    rig.wait_live("1.0");
    let conf = path_str(&rig.conf).to_owned();
    for round in 0..6 {
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| baton_cmd(&["switch", "3.0", "--config", &conf, "--wait=20s"]));
            let b = scope.spawn(|| baton_cmd(&["switch", "4.0", "--config", &conf, "--wait=20s"]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let text = std::fs::read_to_string(&rig.conf).unwrap();
        let last = if text.contains("app.3.0") {
            "3.0"
        } else {
            "4.0"
        };
        let (winner, other, other_v) = if last == "3.0" {
            (&a, &b, "4.0")
        } else {
            (&b, &a, "3.0")
        };
        assert_eq!(
            winner.0,
            0,
            "round {round}: the last write (app.{last}) must be reported serving: {winner:?}\nthe other: {other:?}\n{}",
            rig.log()
        );
        assert!(
            winner.1.contains(&format!("app.{last} serves")),
            "{winner:?}"
        );
        match other.0 {
            0 => assert!(
                other.1.contains(&format!("app.{other_v} serves")),
                "{other:?}"
            ),
            _ => assert!(
                other.2.contains(&format!(
                    "current.conf was changed again: it now names app.{last}"
                )),
                "round {round}: {other:?}"
            ),
        }
        rig.wait_live(last);
        // What it replaced may take a connection until it has exited.
        rig.assert_children(1);
        assert_eq!(rig.serving().map(|(v, _)| v), Some(last.to_owned()));
        rig.point("1.0");
        rig.wait_live("1.0");
    }
    rig.assert_children(1);
}

/// A storm of SIGHUPs (a script gone wrong) during a rollout: the first
/// reloads at once, the rest fold into one more reload once they stop.
/// The fresh generation gets ready during the storm instead of being
/// superseded by every next SIGHUP, a generation started after the last
/// SIGHUP serves in the end, `baton reload` run in the middle of it
/// answers with such a generation, and nothing fails.
#[test]
fn a_sighup_storm_during_a_rollout_starts_two_generations_not_one_per_signal() {
    let (rig, _) = serving("p-hupstorm", "", r#""ready_delay_ms": 300"#, &[]);
    let load = Load::start(rig.port, 2);
    rig.point("2.0");
    rig.wait_line(&["rolling out app.2.0"]);
    let baton = Pid::from_raw(rig.baton_pid());
    let conf = path_str(&rig.conf).to_owned();
    let storm = Duration::from_millis(2000);
    let (sent, reload) = std::thread::scope(|scope| {
        let storm = scope.spawn(|| {
            let t0 = Instant::now();
            let mut sent = 0;
            while t0.elapsed() < storm {
                kill(baton, Signal::SIGHUP).unwrap();
                sent += 1;
                std::thread::sleep(Duration::from_millis(20)); // the storm's pace, not a wait
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(500)); // into the storm, not a wait
        let reload = baton_cmd(&["reload", "--config", &conf, "--timeout", "20s"]);
        (storm.join().unwrap(), reload)
    });
    // Every SIGHUP is logged (those folded into the next reload at debug).
    rig.wait(
        &format!("baton to have read {sent} SIGHUPs or fewer"),
        || !rig.log_lines(&["received SIGHUP"]).is_empty(),
    );
    let pid = rig.wait_live("2.0");
    let last_hup = rig.log_lines(&["received SIGHUP"]).pop().unwrap();
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(reload.0, 0, "baton reload during the storm: {reload:?}");
    assert!(
        reload.1.starts_with("reloaded: app.2.0 serves"),
        "{reload:?}"
    );
    let started = rig.log_lines(&["started generation"]).len();
    assert!(
        started <= 5,
        "{sent} SIGHUPs started {started} generations (1.0, 2.0, the first reload, the one after the storm, and the one after baton reload's SIGHUP at most)\n{}",
        rig.log()
    );
    // A generation got ready while the storm went on.
    let lines: Vec<String> = rig.log().lines().map(str::to_owned).collect();
    let end = lines.iter().position(|l| *l == last_hup).unwrap();
    assert!(
        lines[..end].iter().any(|l| l.contains("is live; retiring")),
        "nothing went live during the storm\n{}",
        rig.log()
    );
    // What serves in the end was started after the last SIGHUP.
    let last_start = lines
        .iter()
        .rposition(|l| l.contains("started generation") && l.contains(&format!("pid {pid})")))
        .unwrap();
    assert!(last_start > end, "{}", rig.log());
    rig.assert_children(1);
}

/// Writes release `v` as a shell script that daemonizes the example app:
/// it starts it in a session (and process group) of its own, waits until
/// it is there, and exits 0, as `daemon(3)` does. The daemon serves the
/// inherited socket and sends READY=1 from outside the generation.
fn daemonizing_release(rig: &Rig, v: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let pidfile = rig.tmp.join(format!("daemon.{v}.pid"));
    let cfg = rig.release_dir.join(format!("cfg.{v}"));
    std::fs::write(&cfg, format!("{{\"release\": \"{v}\"}}\n")).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         (setsid sh -c 'echo $$ > {pid}.tmp && mv {pid}.tmp {pid} && LISTEN_PID=$$ exec {app} -c {cfg}' &)\n\
         until [ -s {pid} ]; do sleep 0.01; done\n\
         exit 0\n",
        pid = pidfile.display(),
        app = APP,
        cfg = cfg.display(),
    );
    let bin = rig.release_dir.join(format!("app.{v}"));
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    pidfile
}

/// A release that daemonizes before READY=1 (double fork, the leader exits
/// 0): its rollout fails with the reason and a hint, and the daemon, which
/// left the generation's process group and would otherwise serve the
/// failed release on the shared socket forever, is retired (SIGTERM, so
/// what it holds is answered) and reaped. The old generation serves on.
#[test]
fn a_release_that_daemonizes_before_ready_fails_and_its_daemon_is_retired() {
    let (mut rig, old) = serving("p-daemon", "", "", &[]);
    let pidfile = daemonizing_release(&rig, "5.0");
    let load = Load::start(rig.port, 2);
    rig.point("5.0");
    rig.wait_line(&[
        "ERROR",
        "rollout of app.5.0 failed: exited before READY=1 (exit status 0); a release must run in the foreground (did it daemonize?); still serving app.1.0",
    ]);
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // (Named `sh` or `example-app`: found when its leader exits, maybe
    // before it has exec'd the app.)
    let line = rig.wait_line(&[
        &format!("pid {daemon} ("),
        &format!(
            "left its generation's process group (it leads group {daemon}) and was orphaned to baton"
        ),
    ]);
    assert!(
        line.contains("ERROR") && line.contains("retiring it and its group"),
        "{line}"
    );
    rig.wait("the daemon to be gone", || !alive(daemon));
    // (Drained and exited 0, or killed by the SIGTERM if it came before
    // the app set up its handling: either way, reaped.)
    rig.wait_line(&[&format!("stray pid {daemon} exited (")]);
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(rig.serving(), Some(("1.0".into(), old)));
    rig.assert_children(1);
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
}
/// Writes release `v` as a shell script that runs the example app as its
/// grandchild: in the generation's process group, or (`leave`) in a
/// session of its own. The script itself waits for it.
fn grandchild_release(rig: &Rig, v: &str, leave: bool) {
    use std::os::unix::fs::PermissionsExt;
    let cfg = rig.release_dir.join(format!("cfg.{v}"));
    std::fs::write(&cfg, format!("{{\"release\": \"{v}\"}}\n")).unwrap();
    let inner = format!("LISTEN_PID=$$ exec {APP} -c {}", cfg.display());
    let run = if leave {
        format!("setsid sh -c '{inner}' &\nwait\n")
    } else {
        format!(
            "sh -c 'sh -c \"{}\" & wait' &\nwait\n",
            inner.replace('$', "\\$")
        )
    };
    let bin = rig.release_dir.join(format!("app.{v}"));
    std::fs::write(&bin, format!("#!/bin/sh\n{run}")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// READY=1 from a grandchild in the generation's process group counts:
/// the release goes live. From one that left the group it does not: it is
/// ignored with a warning saying whose descendant sent it, the rollout
/// fails at --ready-timeout, and the grandchild is retired with its
/// generation. The old generation serves on throughout.
#[test]
fn ready_from_a_grandchild_counts_only_from_within_the_generations_group() {
    let (rig, old) = serving("p-grandchild", "", "", &["--ready-timeout", "3s"]);
    grandchild_release(&rig, "6.0", false);
    grandchild_release(&rig, "7.0", true);
    let load = Load::start(rig.port, 2);
    rig.point("7.0");
    let line = rig.wait_line(&[
        "ignored \"READY=1",
        "(example-app), a descendant of generation 2 outside its process group",
    ]);
    assert!(line.contains("WARN"), "{line}");
    let stray: i32 = line
        .split("from pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    rig.wait_line(&[
        "ERROR",
        "rollout of app.7.0 failed: not ready within --ready-timeout 3s; still serving app.1.0",
    ]);
    rig.wait_line(&[&format!(
        "pid {stray} (example-app) left its generation's process group"
    )]);
    rig.wait("the grandchild that left to be gone", || !alive(stray));
    assert_eq!(rig.serving(), Some(("1.0".into(), old)));
    // Within the group, its READY=1 is the generation's.
    rig.point("6.0");
    rig.wait_live("6.0");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    rig.assert_children(1);
}

/// Stops baton (SIGSTOP) until it is stopped, so that what happens next
/// reaches it all at once, in one wake-up, when [`resume`] lets it go.
fn freeze(rig: &Rig) {
    kill(Pid::from_raw(rig.baton_pid()), Signal::SIGSTOP).unwrap();
    rig.wait("baton to be stopped", || {
        procs()
            .iter()
            .any(|p| p.pid == rig.baton_pid() && p.state == 'T')
    });
}

fn resume(rig: &Rig) {
    kill(Pid::from_raw(rig.baton_pid()), Signal::SIGCONT).unwrap();
}

/// A release that sends READY=1 and exits at once, both seen by baton in
/// the same wake-up: the READY=1 is read first (it came first) and is not
/// mistaken for a stranger's, the release is not promoted (it is gone),
/// the rollout fails saying so, and the old generation serves on untouched.
#[test]
fn ready_and_exit_seen_together_fail_the_rollout_and_leave_the_old_generation_alone() {
    let (rig, old) = serving(
        "p-readyexit",
        "",
        r#""ready_delay_ms": 2000, "crash_after_ms": 0"#,
        &[],
    );
    rig.point("2.0");
    let cand = rig.wait_generation_pid(2);
    freeze(&rig);
    rig.wait("generation 2 to send READY=1 and exit", || {
        procs().iter().any(|p| p.pid == cand && p.state == 'Z')
    });
    resume(&rig);
    rig.wait_line(&[
        "ERROR",
        "rollout of app.2.0 failed: exited right after READY=1, before baton could act on it (exit status 3); still serving app.1.0 (generation 1)",
    ]);
    assert!(
        rig.log_lines(&["not part of any generation"]).is_empty(),
        "{}",
        rig.log()
    );
    assert!(
        rig.log_lines(&["retiring generation 1"]).is_empty(),
        "{}",
        rig.log()
    );
    assert_eq!(rig.serving(), Some(("1.0".into(), old)));
    rig.assert_children(1);
}

/// READY=1 from the new generation and an edit naming a third release,
/// seen in the same wake-up: the ready generation goes live (its READY=1
/// is read first), then the edit rolls out; under load, nothing fails and
/// the history says so.
#[test]
fn ready_and_an_edit_seen_together_are_taken_in_turn() {
    let (rig, _) = serving("p-readyedit", "", r#""ready_delay_ms": 1500"#, &[]);
    rig.release("3.0", "");
    let load = Load::start(rig.port, 2);
    rig.point("2.0");
    let cand = rig.wait_generation_pid(2);
    rig.wait_line(&[&format!("generation 2 (pid {cand}) exec'd")]);
    freeze(&rig);
    // 2.0 sends READY=1 1.5 s after it starts: wait for it to be in the
    // notify socket's queue (the app logs nothing, so look at the socket).
    rig.wait("2.0's READY=1 to be queued for baton", || {
        notify_queue(&rig) > 0
    });
    rig.point("3.0");
    resume(&rig);
    let new = rig.wait_live("3.0");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let history: Vec<(String, String)> = rig
        .history()
        .iter()
        .map(|r| {
            (
                r["release"]["name"].as_str().unwrap_or("").to_owned(),
                r["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        history[history.len() - 2..],
        [
            ("app.2.0".to_owned(), "succeeded".to_owned()),
            ("app.3.0".to_owned(), "succeeded".to_owned())
        ],
        "{history:?}"
    );
    assert_ne!(new, cand);
    rig.assert_children(1);
}

/// Bytes waiting in baton's notify socket (its receive queue, as `ss`
/// reports it).
fn notify_queue(rig: &Rig) -> u64 {
    let sock = rig.runtime_dir.join("notify.sock");
    let out = std::process::Command::new("ss")
        .args(["-Hxa", "src", path_str(&sock)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A rig whose app dir (state, links) is a 256 KiB tmpfs in baton's own
/// mount namespace (so nothing is mounted on the host), serving 1.0 with
/// 2.0 on disk; the rig reads the state file through /proc/PID/root. The
/// second value is the app dir as baton sees it.
fn state_on_a_tmpfs(tag: &str) -> (Rig, PathBuf, i32) {
    let mut rig = Rig::new(tag);
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    let state = rig.tmp.join("state");
    std::fs::create_dir_all(&state).unwrap();
    rig.wrap = ["unshare", "--mount", "--propagation", "private"]
        .map(String::from)
        .to_vec();
    rig.sh_prefix = format!(
        "mount -t tmpfs -o size=256k,mode=0755 baton-test {} && ",
        state.display()
    );
    rig.start(&["--app-dir", path_str(&state)]);
    rig.state_dir = Some(PathBuf::from(format!(
        "/proc/{}/root{}",
        rig.baton_pid(),
        state.display()
    )));
    let pid = rig.wait_live("1.0");
    (rig, state, pid)
}

/// Runs a shell command in baton's mount namespace.
fn in_batons_mounts(rig: &Rig, script: &str) {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &rig.baton_pid().to_string(), "-m", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

/// The state file says what serves, or there is none: never a stale one.
fn state_is_current_or_absent(rig: &Rig, v: &str) {
    if let Some(s) = rig.state() {
        assert_eq!(
            s["serving"]["release"]["name"],
            format!("app.{v}").as_str(),
            "a stale state file\n{}",
            rig.log()
        );
    }
}

/// The app dir fills up: rollouts go on, one error line names the state
/// file and the reason (not one per change), STATUS says it is not
/// written, the file is never left stale, and once there is room again it
/// is written again by itself.
#[test]
fn a_full_state_directory_is_one_error_and_the_serving_goes_on() {
    let (rig, state, _) = state_on_a_tmpfs("p-full");
    let file = state.join("baton.state");
    // Full to the last byte, the state file included.
    in_batons_mounts(
        &rig,
        &format!(
            "rm {f} && (cat /dev/zero > {d}/fill 2>/dev/null; true)",
            f = file.display(),
            d = state.display()
        ),
    );
    let load = Load::start(rig.port, 2);
    rig.point("2.0");
    let pid2 = rig.wait_serving("2.0");
    let line = rig.wait_line(&[
        "ERROR",
        &format!("cannot write {}: No space left on device", file.display()),
    ]);
    assert!(line.contains("serving on, retrying"), "{line}");
    rig.wait_status(&format!(
        "serving app.2.0 (pid {pid2}, generation 2): release 2.0 accepting; {} not written: No space left on device",
        file.display()
    ));
    rig.point("1.0");
    let pid1 = rig.wait_serving("1.0");
    rig.wait_status(&format!("serving app.1.0 (pid {pid1}, generation 3)"));
    state_is_current_or_absent(&rig, "1.0");
    assert_eq!(
        rig.log_lines(&["ERROR", "cannot write", "baton.state:"])
            .len(),
        1,
        "one error, not one per change\n{}",
        rig.log()
    );
    // The history file had room in its old place (or one error of its own).
    assert!(
        rig.log_lines(&["ERROR", "cannot write", "baton.history:"])
            .len()
            <= 1,
        "{}",
        rig.log()
    );
    // Room again: written by itself, without another change.
    in_batons_mounts(&rig, &format!("rm {}/fill", state.display()));
    rig.wait_line(&[&format!("wrote {} again", file.display())]);
    assert_eq!(rig.wait_live("1.0"), pid1);
    rig.wait_status(&format!(
        "serving app.1.0 (pid {pid1}, generation 3): release 1.0 accepting"
    ));
    assert!(
        !rig.state_dir
            .as_ref()
            .unwrap()
            .join(".baton.state.tmp")
            .exists()
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    rig.assert_children(1);
}

/// The app dir turns read-only (a read-only mount over it): rollouts go
/// on, one error line for the state file (whose old content cannot be
/// removed, and says so), one for the history file and one per rollout
/// for the links, STATUS says the state is not written; writable again,
/// both are written again.
#[test]
fn a_state_directory_turned_read_only_is_one_error_and_the_serving_goes_on() {
    let (rig, state, _) = state_on_a_tmpfs("p-ro");
    let file = state.join("baton.state");
    in_batons_mounts(
        &rig,
        &format!(
            "mount --bind {d} {d} && mount -o remount,bind,ro {d}",
            d = state.display()
        ),
    );
    let load = Load::start(rig.port, 2);
    rig.point("2.0");
    let pid2 = rig.wait_serving("2.0");
    let line = rig.wait_line(&[
        "ERROR",
        &format!("cannot write {}: Read-only file system", file.display()),
    ]);
    assert!(
        line.contains("the old one cannot be removed either (Read-only file system"),
        "{line}"
    );
    let links = rig.wait_line(&["ERROR", "cannot point", "at app.2.0"]);
    assert!(
        links.contains("Read-only file system")
            && links.contains("a restarted baton will not know that app.2.0 served last"),
        "{links}"
    );
    rig.wait_status(&format!(
        "serving app.2.0 (pid {pid2}, generation 2): release 2.0 accepting; {} not written: Read-only file system",
        file.display()
    ));
    // One error per file, not one per change: the state file's, and the
    // history file's (the rollout to 2.0 began and ended).
    for f in ["baton.state:", "baton.history:"] {
        assert_eq!(
            rig.log_lines(&["ERROR", "cannot write", f]).len(),
            1,
            "{f}\n{}",
            rig.log()
        );
    }
    // (Lazily: 2.0's working directory is on it.)
    in_batons_mounts(&rig, &format!("umount -l {}", state.display()));
    rig.wait_line(&[&format!("wrote {} again", file.display())]);
    rig.wait_line(&[&format!("wrote {}/baton.history again", state.display())]);
    assert_eq!(rig.wait_live("2.0"), pid2);
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    rig.assert_children(1);
}

/// `app.bin` and `app.cfg` replaced by directories: each rollout is one
/// error line naming them and saying what it costs; serving goes on; a
/// restarted baton says they are no links rather than failing.
#[test]
fn app_dir_links_replaced_by_directories_are_one_error_per_rollout() {
    let (mut rig, _) = crate::util::serving("p-linkdirs", "", "", &[]);
    for l in ["app.bin", "app.cfg"] {
        let p = rig.app_dir.join(l);
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("keep"), "an operator's file").unwrap();
    }
    rig.point("2.0");
    let pid = rig.wait_live("2.0");
    let line = rig.wait_line(&["ERROR", "cannot point", "at app.2.0"]);
    assert!(
        line.contains(&format!(
            "{} is a directory, not a link (remove it)",
            rig.app_dir.join("app.bin").display()
        )) && line.contains(&format!(
            "{} is a directory, not a link (remove it)",
            rig.app_dir.join("app.cfg").display()
        )),
        "{line}"
    );
    assert_eq!(rig.log_lines(&["cannot point"]).len(), 1);
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("2.0".into(), pid)));
    assert!(rig.app_dir.join("app.bin/keep").exists(), "never deleted");
    // A restarted baton: no fallback from them, and it says why.
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    rig.start(&[]);
    rig.wait_line(&[
        "WARN",
        &format!(
            "{} is not a link baton made",
            rig.app_dir.join("app.bin").display()
        ),
    ]);
    rig.wait_live("2.0");
    rig.assert_children(1);
}

/// baton started on an app dir that is read-only already (its lock file
/// there from an earlier run): it takes the lock read-only and serves,
/// with one error line for the lock and one for the state file.
#[test]
fn a_read_only_state_directory_at_start_still_serves() {
    let mut rig = Rig::new("p-rostart");
    rig.release("1.0", "");
    rig.point("1.0");
    let state = rig.tmp.join("state");
    std::fs::create_dir_all(&state).unwrap();
    rig.wrap = ["unshare", "--mount", "--propagation", "private"]
        .map(String::from)
        .to_vec();
    rig.sh_prefix = format!(
        "mount -t tmpfs -o size=256k,mode=0755 baton-test {d} && touch {d}/baton.lock && mount -o remount,ro {d} && ",
        d = state.display()
    );
    rig.start(&["--app-dir", path_str(&state)]);
    let pid = rig.wait_serving("1.0");
    let lock = rig.wait_line(&[
        "ERROR",
        &format!("{}/baton.lock: Read-only file system", state.display()),
    ]);
    assert!(
        lock.contains("taking the lock read-only: serving"),
        "{lock}"
    );
    rig.wait_line(&[
        "ERROR",
        &format!(
            "cannot write {}/baton.state: Read-only file system",
            state.display()
        ),
    ]);
    rig.wait_status(&format!(
        "serving app.1.0 (pid {pid}, generation 1): release 1.0 accepting; {}/baton.state not written",
        state.display()
    ));
    rig.assert_children(1);
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
}

/// baton in a user namespace of its own whose inotify limit `limit`
/// (`max_inotify_instances` or `max_inotify_watches`, per user namespace,
/// so the host's limits are untouched) is 0: baton starts and serves, one
/// error names the limit, edits go unseen but SIGHUP still reads
/// current.conf; once the limit is raised again, baton watches by itself
/// and sees edits again.
fn inotify_exhausted(tag: &str, limit: &str, reason: &str) {
    let mut rig = Rig::new(tag);
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.release("3.0", "");
    rig.point("1.0");
    rig.wrap = ["unshare", "--user", "--map-root-user"]
        .map(String::from)
        .to_vec();
    rig.sh_prefix = format!("echo 0 > /proc/sys/user/{limit} && ");
    rig.start(&[]);
    let pid1 = rig.wait_live("1.0");
    let line = rig.wait_line(&[
        "ERROR",
        &format!("cannot watch {} for changes", rig.conf.display()),
    ]);
    assert!(
        line.contains(reason) && line.contains("SIGHUP, `baton reload`, still reads it"),
        "{line}"
    );
    let load = Load::start(rig.port, 2);
    // An edit is not seen; a reload reads it.
    rig.point("2.0");
    rig.signal(Signal::SIGHUP);
    rig.wait_replaced("2.0", pid1);
    assert_eq!(
        rig.log_lines(&["ERROR", "cannot watch"]).len(),
        1,
        "one error"
    );
    // `baton switch --wait` under the same limit says which.
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &rig.baton_pid().to_string(),
            "-U",
            BATON,
            "switch",
            "2.0",
        ])
        .args(["--config", path_str(&rig.conf), "--wait=5s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && err.contains("cannot wait for baton")
            && err.contains(reason),
        "{out:?}"
    );
    // The limit back up: watched again, by itself, and edits are seen.
    let out = std::process::Command::new("nsenter")
        .args(["-t", &rig.baton_pid().to_string(), "-U", "sh", "-c"])
        .arg(format!("echo 128 > /proc/sys/user/{limit}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    rig.wait_line(&[&format!("watching {} again", rig.conf.display())]);
    rig.point("3.0");
    rig.wait_live("3.0");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    rig.assert_children(1);
}

#[test]
fn no_inotify_instance_left_is_one_error_and_a_reload_still_works() {
    inotify_exhausted(
        "p-inotify-inst",
        "max_inotify_instances",
        "too many inotify instances for this user (fs.inotify.max_user_instances)",
    );
}

#[test]
fn no_inotify_watch_left_is_one_error_and_a_reload_still_works() {
    inotify_exhausted(
        "p-inotify-watch",
        "max_inotify_watches",
        "inotify watches exhausted for this user (fs.inotify.max_user_watches)",
    );
}

/// Starts baton with `env` over what the rig sets (and `extra` fds after
/// the listener) and waits for it to exit: it must refuse with exit 1 and
/// one error line holding `reason`, having started nothing.
fn refused_at_start(tag: &str, env: &[(&str, &str)], extra: Vec<i32>, reason: &str) {
    let mut rig = Rig::new(tag);
    rig.release("1.0", "");
    rig.point("1.0");
    rig.extra_fds = extra;
    rig.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    rig.start(&[]);
    let status = rig.wait_exit();
    let errors = rig.log_lines(&["ERROR"]);
    assert!(
        status.code() == Some(1) && errors.len() == 1 && errors[0].contains(reason),
        "{status:?}\n{}",
        rig.log()
    );
    assert!(
        rig.log_lines(&["started generation"]).is_empty(),
        "{}",
        rig.log()
    );
    assert!(rig.state().is_none(), "nothing written");
}

/// LISTEN_FDS that does not describe what baton was given: each is one
/// error line saying so, at once (a huge count does not hang baton while
/// it looks), and baton takes none of its own fds for a socket.
#[test]
fn bad_listen_fds_are_refused_with_the_reason() {
    refused_at_start(
        "p-lfds-nan",
        &[("LISTEN_FDS", "abc")],
        vec![],
        "LISTEN_FDS=\"abc\" is not a number of sockets",
    );
    refused_at_start(
        "p-lfds-neg",
        &[("LISTEN_FDS", "-1")],
        vec![],
        "LISTEN_FDS=\"-1\" is not a number of sockets",
    );
    refused_at_start(
        "p-lfds-few",
        &[("LISTEN_FDS", "3")],
        vec![],
        "LISTEN_FDS=3 but fd 4 is not open: whoever started baton passed 1 socket(s), not 3",
    );
    refused_at_start(
        "p-lfds-huge",
        &[("LISTEN_FDS", "2147483647")],
        vec![],
        "LISTEN_FDS=2147483647 counts more sockets than this process can have open",
    );
    let file = std::fs::File::open("/dev/null").unwrap();
    refused_at_start(
        "p-lfds-file",
        &[],
        vec![std::os::fd::AsRawFd::as_raw_fd(&file)],
        "inherited fd 4 (from LISTEN_FDS) is not a socket",
    );
}

/// LISTEN_FDS meant for another process (LISTEN_PID): ignored, and with no
/// --listen the usage error says why there is no socket.
#[test]
fn listen_fds_for_another_pid_are_ignored_and_the_error_says_so() {
    let rig = Rig::new("p-lpid");
    rig.release("1.0", "");
    rig.point("1.0");
    let out = std::process::Command::new(BATON)
        .args(["run", "--config", path_str(&rig.conf)])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no listening socket")
            && err.contains("(LISTEN_FDS is meant for pid 1 (LISTEN_PID), not baton ("),
        "{err}"
    );
}

/// An RLIMIT_NOFILE too low for baton is refused at start with the
/// numbers, instead of failing later while starting a generation ("Too
/// many open files"); at exactly what it needs, it serves and rolls.
#[test]
fn a_low_open_file_limit_is_refused_at_start_and_enough_serves() {
    let mut rig = Rig::new("p-nofile");
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    rig.wrap = ["prlimit", "--nofile=20:20", "--"]
        .map(String::from)
        .to_vec();
    rig.start(&[]);
    assert_eq!(rig.wait_exit().code(), Some(1), "{}", rig.log());
    rig.wait_line(&[
        "ERROR",
        "RLIMIT_NOFILE is 20 (hard limit 20): baton needs at least 34 open files",
    ]);
    assert!(rig.log_lines(&["started generation"]).is_empty());
    rig.wrap = ["prlimit", "--nofile=34:34", "--"]
        .map(String::from)
        .to_vec();
    rig.start(&[]);
    rig.wait_live("1.0");
    rig.point("2.0");
    rig.wait_live("2.0");
    rig.assert_children(1);
}

/// Started with stdin, stdout and stderr closed: baton has /dev/null there
/// (so nothing it opens takes those numbers), and so do its generations;
/// it serves and rolls.
#[test]
fn closed_stdio_at_start_is_dev_null_for_baton_and_its_generations() {
    let mut rig = Rig::new("p-stdio");
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    rig.sh_prefix = "exec 0<&- 1>&- 2>&-; ".into();
    rig.start(&[]);
    rig.wait_live("1.0");
    let target = |pid: i32, fd: i32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| format!("closed ({e})"))
    };
    for fd in 0..3 {
        assert_eq!(target(rig.baton_pid(), fd), "/dev/null", "baton's fd {fd}");
    }
    assert!(target(rig.baton_pid(), 3).starts_with("socket:"));
    rig.point("2.0");
    let pid = rig.wait_live("2.0");
    // Until 1.0 has drained and exited it may still take a connection.
    rig.assert_children(1);
    let (_, info) = rig.get("/info").unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let fds = info["fds_at_start"].as_array().unwrap();
    for (fd, f) in fds.iter().take(3).enumerate() {
        assert_eq!(f, &serde_json::json!([fd, "/dev/null"]), "{info}");
    }
    assert_eq!(info["pid"], pid);
    rig.assert_children(1);
}

/// Rapid rollouts through slow-draining releases: three generations
/// drain at once, each with requests in flight. Each finishes what it
/// holds and exits (the one whose request outlasts --stop-timeout is
/// killed at its own deadline, and only that request fails); the state
/// file shows them all stopping meanwhile; no zombie, no fd left behind.
#[test]
fn three_generations_draining_at_once_each_finish_on_their_own_deadline() {
    let mut rig = Rig::new("p-drain3");
    for v in ["1.0", "2.0", "3.0", "4.0"] {
        rig.release(v, "");
    }
    rig.point("1.0");
    rig.start(&["--stop-timeout", "6s", "--probation", "0"]);
    let first = rig.wait_live("1.0");
    rig.wait_line(&[&format!("generation 1 (pid {first}) exec'd")]);
    let baton = rig.baton_pid();
    let fds_before = fd_count(baton);
    // The listening socket, as /proc names it.
    let listener = std::fs::read_link(format!("/proc/{baton}/fd/3"))
        .unwrap()
        .display()
        .to_string();
    let load = Load::start(rig.port, 2);
    let port = rig.port;
    let slow = |ms: u64| std::thread::spawn(move || http_get(port, &format!("/slow?ms={ms}")));
    let mut held = vec![];
    // 1.0 holds one request longer than --stop-timeout, and one shorter.
    let idle = fd_count(first);
    held.push(("1.0", first, 2_500, slow(20_000)));
    held.push(("1.0", first, 2_500, slow(2_500)));
    rig.wait("1.0 to hold both", || fd_count(first) >= idle + 2);
    let mut pids = vec![first];
    for (v, g) in [("2.0", 2), ("3.0", 3)] {
        rig.point(v);
        let pid = rig.wait_live(v);
        rig.wait_line(&[&format!("generation {g} (pid {pid}) exec'd")]);
        // The generation it replaced takes connections until it has left
        // accept() and closed its copy of the socket; then only `v` does.
        let before = *pids.last().unwrap();
        rig.wait(&format!("pid {before} to stop accepting"), || {
            !fd_targets(before).contains(&listener)
        });
        // Long enough to still be in flight when the next two rollouts
        // are done, on a loaded machine too; shorter than --stop-timeout.
        let idle = fd_count(pid);
        held.push((v, pid, 4_000, slow(4_000)));
        rig.wait(&format!("{v} to hold its request"), || fd_count(pid) > idle);
        pids.push(pid);
    }
    rig.point("4.0");
    let last = rig.wait_live("4.0");
    rig.wait("three generations draining at once", || {
        rig.state().is_some_and(|s| {
            s["generations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| g["state"] == "stopping")
                .count()
                == 3
        })
    });
    for (v, pid, ms, h) in held {
        let r = h.join().unwrap();
        match r {
            Ok((200, body)) => assert!(
                body.starts_with(&format!("release {v} pid {pid} slept {ms} ms")),
                "{body}"
            ),
            Ok(other) => panic!("{other:?}"),
            // Only the request that outlasts --stop-timeout dies, with 1.0.
            Err(e) => assert_eq!(pid, first, "{v}: {e}"),
        }
    }
    rig.wait_line(&[&format!(
        "generation 1 (app.1.0, pid {first}) did not exit within --stop-timeout 6s; sending SIGKILL"
    )]);
    for (g, pid) in pids.iter().enumerate().skip(1) {
        rig.wait_line(&[&format!(
            "generation {} (app.{}.0, pid {pid}) exited (exit status 0)",
            g + 1,
            g + 1
        )]);
    }
    assert_eq!(
        rig.log_lines(&["did not exit within --stop-timeout"]).len(),
        1,
        "only 1.0 is killed\n{}",
        rig.log()
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    rig.assert_children(1);
    assert_eq!(rig.wait_live("4.0"), last);
    rig.wait(&format!("baton's fd count back to {fds_before}"), || {
        fd_count(baton) == fds_before
    });
}
