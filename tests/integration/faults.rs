//! Every failure path of a rollout: baton logs the file and the reason, says
//! so in STATUS, and the serving generation keeps serving.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::*;

/// Writes a bad current.conf; asserts the error names the file and
/// `reason`, STATUS says so, 1.0 keeps serving, the links stay; then a good
/// edit still rolls.
fn bad_conf_keeps_serving(tag: &str, text: &str, reason: &str) {
    let (rig, pid) = serving(tag, "", "", &[]);
    let load = Load::start(rig.port, 2);
    rig.write_conf(text);
    let line = format!("{}: ", rig.conf.display());
    rig.wait(
        &format!("an error naming current.conf and {reason:?}"),
        || {
            rig.log()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(&line) && l.contains(reason))
        },
    );
    rig.wait_status("cannot roll out");
    assert!(
        rig.status().contains(reason) && rig.status().contains("still serving app.1.0"),
        "{}",
        rig.status()
    );
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    assert_eq!(
        std::fs::read_link(rig.app_dir.join("app.bin")).unwrap(),
        rig.release_dir.join("app.1.0")
    );
    // STATUS goes out just before the state file is written: wait for it.
    rig.wait("state: the rollout failed", || {
        rig.state()
            .is_some_and(|s| s["last_rollout"]["result"] == "failed")
    });
    rig.point("2.0");
    rig.wait_live("2.0");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

#[test]
fn invalid_json() {
    bad_conf_keeps_serving("badjson", "{\"bin.file\": \"app.2.0\",", "invalid JSON");
}

#[test]
fn missing_key() {
    bad_conf_keeps_serving(
        "nokey",
        r#"{"bin.file": "app.2.0"}"#,
        "missing key \"cfg.file\"",
    );
}

#[test]
fn missing_binary() {
    bad_conf_keeps_serving(
        "nobin",
        r#"{"bin.file": "app.9.9", "cfg.file": "cfg.2.0"}"#,
        "app.9.9: does not exist",
    );
}

#[test]
fn missing_cfg_file() {
    bad_conf_keeps_serving(
        "nocfg",
        r#"{"bin.file": "app.2.0", "cfg.file": "cfg.9.9"}"#,
        "cfg.9.9: does not exist",
    );
}

#[test]
fn non_executable_binary() {
    let tag = "noexec";
    let (rig, pid) = serving(tag, "", "", &[]);
    let bin = rig.release_dir.join("app.3.0");
    std::fs::copy(APP, &bin).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(rig.release_dir.join("cfg.3.0"), "{}").unwrap();
    rig.point("3.0");
    rig.wait_log("app.3.0: is not executable");
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    rig.wait_status("still serving app.1.0");
}

#[test]
fn unknown_keys_only_warn() {
    let (rig, _) = serving("unknown", "", "", &[]);
    rig.write_conf(r#"{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", "owner": "ops"}"#);
    rig.wait_live("2.0");
    rig.wait_log("unknown key \"owner\" ignored");
    assert!(
        rig.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("unknown key"))
    );
}

#[test]
fn crash_before_ready() {
    let (rig, pid) = serving("crash", "", r#""exit_before_ready": 7"#, &[]);
    let load = Load::start(rig.port, 2);
    rig.point("2.0");
    rig.wait_log(
        "rollout of app.2.0 failed: exited before READY=1 (exit status 7); still serving app.1.0",
    );
    rig.wait_status(
        "rollout of app.2.0 failed: exited before READY=1 (exit status 7); still serving app.1.0",
    );
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    assert_eq!(
        std::fs::read_link(rig.app_dir.join("app.bin")).unwrap(),
        rig.release_dir.join("app.1.0")
    );
    rig.assert_children(1);
    assert_eq!(load.stop().failed, 0);
}

#[test]
fn never_ready_is_stopped_after_the_ready_timeout() {
    let (rig, pid) = serving(
        "never",
        "",
        r#""never_ready": true"#,
        &["--ready-timeout", "1s", "--stop-timeout", "2s"],
    );
    rig.point("2.0");
    rig.wait_log(
        "rollout of app.2.0 failed: not ready within --ready-timeout 1s; still serving app.1.0",
    );
    // The never-ready generation got SIGTERM, drained and was reaped.
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    rig.wait_status("not ready within --ready-timeout 1s");
}

#[test]
fn ready_from_a_stranger_is_ignored() {
    let (rig, pid) = serving(
        "stranger",
        "",
        r#""never_ready": true"#,
        &["--ready-timeout", "3s"],
    );
    rig.point("2.0");
    rig.wait("generation 2 to start", || {
        rig.log().contains("started generation 2")
    });
    let stranger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    stranger
        .send_to(
            b"READY=1\nSTATUS=i am not your app",
            rig.runtime_dir.join("notify.sock"),
        )
        .unwrap();
    rig.wait_log("which is not part of any generation");
    rig.wait_log("not ready within --ready-timeout 3s");
    // Stopped, generation 2 still accepts until its drain begins: ask who
    // serves once it is gone.
    rig.assert_children(1);
    assert_eq!(
        rig.serving(),
        Some(("1.0".into(), pid)),
        "the stranger's READY promoted nothing"
    );
    assert!(!rig.status().contains("i am not your app"));
}

#[test]
fn ready_from_a_worker_in_the_generation_counts() {
    let (rig, _) = serving("worker-ready", "", r#""ready_from_worker": true"#, &[]);
    rig.point("2.0");
    rig.wait_live("2.0");
}

#[test]
fn an_old_generation_that_ignores_sigterm_is_killed_after_stop_timeout() {
    // No load here: an app that ignores SIGTERM keeps accepting until the
    // SIGKILL, and whatever it holds then is lost; no supervisor can help it.
    let (rig, old) = serving(
        "stubborn",
        r#""ignore_sigterm": true"#,
        "",
        &["--stop-timeout", "1s"],
    );
    rig.point("2.0");
    rig.wait_live("2.0");
    rig.wait_log(&format!(
        "generation 1 (app.1.0, pid {old}) did not exit within --stop-timeout 1s; sending SIGKILL"
    ));
    rig.wait_log("killed by SIGKILL");
    rig.wait("the stubborn generation to be gone", || !alive(old));
    rig.assert_children(1);
}

#[test]
fn a_serving_generation_that_dies_is_restarted_with_backoff() {
    let (rig, pid) = serving("dies", "", "", &["--probation", "0"]);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    rig.wait_log(&format!(
        "generation 1 (app.1.0, pid {pid}) died unexpectedly (killed by SIGKILL)"
    ));
    let second = rig.wait_live_anew("1.0", pid);
    assert_ne!(second, pid);
    rig.wait_status("died unexpectedly (killed by SIGKILL); restarted; serving app.1.0");
    // It keeps dying: the second restart waits (backoff), never a tight loop.
    kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
    rig.wait("generation 3", || {
        rig.log().contains("started generation 3")
    });
    let third = rig.wait_live_anew("1.0", second);
    kill(Pid::from_raw(third), Signal::SIGKILL).unwrap();
    rig.wait_log("restarting app.1.0 in 500ms (attempt 2)");
    rig.wait_live("1.0");
    rig.assert_children(1);
}

#[test]
fn a_generations_own_workers_are_retired_with_it() {
    let (rig, old) = serving("workers", r#""workers": 2"#, "", &[]);
    let workers: Vec<i32> = procs()
        .iter()
        .filter(|p| p.pgid == old && p.pid != old)
        .map(|p| p.pid)
        .collect();
    assert_eq!(workers.len(), 2, "the app started two workers in its group");
    rig.point("2.0");
    rig.wait_live("2.0");
    rig.wait("workers gone with their generation", || {
        workers.iter().all(|w| !alive(*w))
    });
    rig.assert_children(1);
    // No zombie anywhere under baton.
    assert!(descendants(rig.baton_pid()).iter().all(|p| {
        procs()
            .iter()
            .find(|q| q.pid == *p)
            .is_none_or(|q| q.state != 'Z')
    }));
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    // The app's workers outlive it when it is SIGKILLed alone: baton is their
    // subreaper, kills the rest of the group, and reaps them.
    let (rig, old) = serving("orphans", r#""workers": 3"#, "", &["--probation", "0"]);
    let workers: Vec<i32> = procs()
        .iter()
        .filter(|p| p.pgid == old && p.pid != old)
        .map(|p| p.pid)
        .collect();
    assert_eq!(workers.len(), 3);
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    rig.wait_replaced("1.0", old);
    rig.wait("orphans gone, none a zombie", || {
        workers.iter().all(|w| !alive(*w))
    });
    rig.assert_children(1);
}

#[test]
fn connections_wait_in_the_queue_while_nothing_serves() {
    // The serving generation is SIGKILLed under load. Requests it held die
    // with it (at most one per client thread); every new connection waits
    // in the socket's queue for the restarted generation: none is refused.
    let (rig, pid) = serving("queue", "", "", &[]);
    let load = Load::start(rig.port, 4);
    rig.wait("some load", || rig.log().contains("is live"));
    std::thread::sleep(Duration::from_millis(200)); // let the load run (not asserted on)
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    rig.wait_replaced("1.0", pid);
    std::thread::sleep(Duration::from_millis(200)); // and run on the new one (not asserted on)
    let report = load.stop();
    assert!(report.ok > 0);
    assert!(
        report.failed <= 4,
        "only requests in flight on the killed process may fail: {:?}",
        report.errors
    );
    assert!(
        report.errors.iter().all(|e| !e.contains("refused")),
        "no connection refused: {:?}",
        report.errors
    );
}

#[test]
fn a_restarted_baton_falls_back_to_what_served_last() {
    // baton stops (systemctl restart, a reboot); meanwhile current.conf is
    // pointed at a release that crashes. The new baton tries it, and serves
    // the release its links name rather than nothing.
    let (mut rig, _) = serving("fallback", "", r#""exit_before_ready": 9"#, &[]);
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    rig.point("2.0");
    rig.start(&[]);
    rig.wait_log("app.1.0 served when baton last ran (app.bin/app.cfg); it is the fallback");
    rig.wait_log(
        "rollout of app.2.0 failed: exited before READY=1 (exit status 9); nothing is serving",
    );
    let pid = rig.wait_live("1.0");
    rig.wait_status(&format!("rollout of app.2.0 failed: exited before READY=1 (exit status 9); still serving app.1.0 (pid {pid}"));
    // And with current.conf unreadable at startup.
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    rig.write_conf("{ not json");
    rig.start(&[]);
    rig.wait_log("starting app.1.0, the release that served last (app.bin/app.cfg)");
    rig.wait_replaced("1.0", pid);
    rig.wait_status("cannot roll out");
}

/// A history file that cannot be parsed (cut short, edited by hand): the
/// next baton says which file and why, starts its history afresh, serves,
/// and writes a whole history file again.
#[test]
fn a_broken_history_file_is_a_warning_and_the_history_starts_afresh() {
    let (mut rig, _) = serving("badhistory", "", "", &[]);
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    let file = rig.app_dir.join("baton.history");
    std::fs::write(&file, "{\"pid\": 1, \"history\": [").unwrap();
    rig.start(&[]);
    rig.wait_line(&[
        "WARN",
        &format!("parsing {}", file.display()),
        "EOF while parsing",
        "the history starts afresh",
    ]);
    let pid = rig.wait_live("1.0");
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    rig.wait("a whole history file again", || {
        rig.history()
            .last()
            .is_some_and(|r| r["trigger"] == "startup" && r["result"] == "succeeded")
    });
}

#[test]
fn a_release_whose_exec_fails_is_a_failed_rollout() {
    // Executable, so it passes every check; only execve can tell that its
    // interpreter does not exist. The loop learns it from the exec-status
    // pipe, without ever waiting for the child.
    let (rig, pid) = serving("execfail", "", "", &[]);
    let bin = rig.release_dir.join("app.3.0");
    std::fs::write(&bin, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(rig.release_dir.join("cfg.3.0"), "{}").unwrap();
    rig.point("3.0");
    rig.wait_log(&format!(
        "rollout of app.3.0 failed: cannot start: {}: execve failed: No such file or directory",
        bin.display()
    ));
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    rig.assert_children(1);
    rig.point("2.0");
    rig.wait_live("2.0");
}

// ---- per-release settings and readiness modes that cannot work ----

fn conf_with(v: &str, extra: &str) -> String {
    format!("{{\"bin.file\": \"app.{v}\", \"cfg.file\": \"cfg.{v}\", {extra}}}")
}

#[test]
fn a_bad_ready_mode_in_current_conf() {
    bad_conf_keeps_serving(
        "badmode",
        &conf_with("2.0", r#""ready": "sometimes""#),
        "\"ready\": 'sometimes' is not a readiness mode; expected notify, after:SPAN (after:2s), check:CMD or exec",
    );
}

#[test]
fn an_after_span_of_zero_in_current_conf() {
    bad_conf_keeps_serving(
        "after0",
        &conf_with("2.0", r#""ready": "after:0""#),
        "\"ready\": after:0: the span must be greater than zero",
    );
}

#[test]
fn an_empty_check_command_in_current_conf() {
    bad_conf_keeps_serving(
        "checkempty",
        &conf_with("2.0", r#""ready": "check: ""#),
        "\"ready\": check: needs a command",
    );
}

#[test]
fn an_after_span_the_ready_timeout_cannot_fit_fails_that_rollout_naming_the_release() {
    bad_conf_keeps_serving(
        "afterlong",
        &conf_with("2.0", r#""ready": "after:2min""#),
        "app.2.0: ready after:2min can never be met: the span must be shorter than --ready-timeout 20s",
    );
}

#[test]
fn a_stop_signal_that_cannot_drain_in_current_conf() {
    bad_conf_keeps_serving(
        "sigkill",
        &conf_with("2.0", r#""stop.signal": "KILL""#),
        "\"stop.signal\": SIGKILL cannot be a stop signal",
    );
}

#[test]
fn an_unknown_stop_target_in_current_conf() {
    bad_conf_keeps_serving(
        "target",
        &conf_with("2.0", r#""stop.target": "master""#),
        "\"stop.target\": 'master' is neither group nor leader",
    );
}

#[test]
fn an_env_naming_a_variable_baton_sets_is_refused() {
    bad_conf_keeps_serving(
        "envnotify",
        &conf_with("2.0", r#""env": {"NOTIFY_SOCKET": "/run/elsewhere"}"#),
        "\"env\": \"NOTIFY_SOCKET\" is baton's to set for each generation (LISTEN_*, NOTIFY_SOCKET); remove it",
    );
    bad_conf_keeps_serving(
        "envlisten",
        &conf_with("2.0", r#""env": {"LISTEN_FDS": "3"}"#),
        "\"env\": \"LISTEN_FDS\" is baton's to set",
    );
}

#[test]
fn an_env_value_that_is_not_a_string_is_refused() {
    bad_conf_keeps_serving(
        "envnum",
        &conf_with("2.0", r#""env": {"PORT": 8000}"#),
        "\"env\": the value of \"PORT\" must be a string",
    );
}

#[test]
fn an_env_name_with_an_equals_sign_is_refused() {
    bad_conf_keeps_serving(
        "envname",
        &conf_with("2.0", r#""env": {"A=B": "1"}"#),
        "\"env\": \"A=B\" is not a variable name (it contains '=' or a NUL byte)",
    );
}

#[test]
fn after_mode_a_release_that_dies_within_its_span_fails_its_rollout() {
    let (rig, pid) = serving(
        "after-dies",
        r#""notify": false"#,
        r#""notify": false, "crash_after_ms": 200"#,
        &["--ready", "after:2s"],
    );
    rig.point("2.0");
    rig.wait_log(
        "rollout of app.2.0 failed: exited before its after:2s span was over (exit status 3); still serving app.1.0",
    );
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    rig.wait_status("still serving app.1.0");
}

#[test]
fn check_mode_a_check_that_never_passes_fails_at_the_ready_timeout_and_the_old_one_serves_on() {
    let (rig, pid) = serving("check-never", "", "", &["--ready-timeout", "2s"]);
    let load = Load::start(rig.port, 2);
    rig.write_conf(&conf_with(
        "2.0",
        r#""ready": "check:echo not yet; exit 7""#,
    ));
    let line = rig.wait_line(&[
        "rollout of app.2.0 failed: not ready within --ready-timeout 2s (",
        " failed, the last: exit status 7: not yet); still serving app.1.0",
    ]);
    // A check attempt starts 100 ms after the last one ended: never more
    // than 2s / 100 ms of them.
    let attempts: u32 = line
        .split("--ready-timeout 2s (")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((1..=20).contains(&attempts), "{line}");
    rig.wait_line(&["generation 2: check: not yet"]);
    // The generation and every check attempt are gone, none a zombie.
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    rig.wait_status("not ready within --ready-timeout 2s");
    // (2.0 accepted connections while it started: they were served.)
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

/// Processes whose command line is exactly `args`.
fn running(args: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    procs()
        .iter()
        .filter(|p| std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| c == want))
        .map(|p| p.pid)
        .collect()
}

#[test]
fn a_hung_check_attempt_is_killed_with_its_process_group() {
    let (rig, pid) = serving("check-hang", "", "", &["--ready-timeout", "7s"]);
    // The shell runs `sleep` as a child of its own: killing only the shell
    // would leave it behind.
    rig.write_conf(&conf_with("2.0", r#""ready": "check:sleep 29.75; true""#));
    rig.wait("the check's sleep to run", || {
        !running(&["sleep", "29.75"]).is_empty()
    });
    rig.wait_line(&[
        "rollout of app.2.0 failed: not ready within --ready-timeout 7s (1 check attempt failed, the last: timed out after 5s)",
    ]);
    rig.wait("no check's sleep left", || {
        running(&["sleep", "29.75"]).is_empty()
    });
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
}

#[test]
fn a_generation_that_dies_while_its_check_runs_fails_and_its_check_is_killed() {
    let (rig, pid) = serving("check-dies", "", r#""crash_after_ms": 300"#, &[]);
    rig.write_conf(&conf_with("2.0", r#""ready": "check:sleep 28.25; true""#));
    rig.wait_log(
        "rollout of app.2.0 failed: exited before its check passed (exit status 3); still serving app.1.0",
    );
    rig.wait("no check's sleep left", || {
        running(&["sleep", "28.25"]).is_empty()
    });
    rig.assert_children(1);
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
}

#[test]
fn a_restarted_baton_falls_back_to_what_served_last_run_the_way_it_ran() {
    // 1.0 never sends READY=1: only its own "ready": "after:300ms" makes it
    // ready. baton restarts while current.conf names a release that
    // crashes; the fallback to 1.0 must keep its readiness mode.
    let mut rig = Rig::new("fallback-opts");
    rig.release("1.0", r#""notify": false"#);
    rig.release("2.0", r#""exit_before_ready": 9"#);
    rig.write_conf(&conf_with("1.0", r#""ready": "after:300ms""#));
    rig.start(&["--ready-timeout", "3s"]);
    rig.wait_live("1.0");
    let opts = rig.app_dir.join("app.opts");
    assert_eq!(
        std::fs::read_to_string(&opts).unwrap(),
        "{\"ready\":\"after:300ms\"}\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&opts).unwrap().permissions().mode() & 0o777,
        0o600
    );
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    rig.point("2.0");
    rig.start(&["--ready-timeout", "3s"]);
    rig.wait_log(
        "rollout of app.2.0 failed: exited before READY=1 (exit status 9); nothing is serving",
    );
    let pid = rig.wait_live("1.0");
    rig.wait_line(&[
        &format!("generation 2 (app.1.0, pid {pid}) is ready after"),
        "(after:300ms)",
    ]);
    // A release with no settings of its own leaves no app.opts behind.
    rig.release("3.0", "");
    rig.point("3.0");
    rig.wait_live("3.0");
    rig.wait("app.opts removed", || !opts.exists());
}

#[test]
fn a_last_known_good_carried_across_a_restart_is_rolled_back_to_the_way_it_ran() {
    // 1.0 never sends READY=1; only its "ready": "after:300ms" makes it
    // ready. It becomes the last known good; baton restarts onto 2.0, which
    // crashes in its probation: the rollback to 1.0 must run it in its mode.
    let mut rig = Rig::new("carried-opts");
    rig.release("1.0", r#""notify": false"#);
    rig.release("2.0", r#""crash_after_ms": 1500"#);
    rig.write_conf(&conf_with("1.0", r#""ready": "after:300ms""#));
    rig.start(&["--probation", "1s", "--ready-timeout", "3s"]);
    rig.wait_live("1.0");
    rig.wait_log("stayed up for --probation 1s; it is the last known good release");
    rig.signal(Signal::SIGTERM);
    assert_eq!(rig.wait_exit().code(), Some(0));
    rig.point("2.0");
    rig.start(&["--probation", "10s", "--ready-timeout", "3s"]);
    rig.wait_line(&["release app.2.0 crashed", "rolled back to app.1.0"]);
    let pid = rig.wait_live("1.0");
    rig.wait_line(&[
        &format!("(app.1.0, pid {pid}) is ready after"),
        "(after:300ms)",
    ]);
}

/// Kills `pid` on drop (a process that is no descendant of the rig's baton).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[test]
fn a_baton_killed_with_sigkill_leaves_its_generations_to_the_next_one() {
    // baton dies (kill -9; under systemd with KillMode=process nothing
    // else is killed) while its live generation has requests in flight.
    // The next baton on the app dir adopts that generation: it answers
    // everything meanwhile, then is retired once the new one serves.
    let (mut rig, old) = serving("survivors", "", "", &[]);
    let _guard = KillOnDrop(old);
    let idle = fd_count(old);
    let slow = std::thread::spawn({
        let port = rig.port;
        move || http_get(port, "/slow?ms=1500")
    });
    // In flight: the generation holds the connection.
    rig.wait("the slow request to be accepted", || fd_count(old) > idle);
    let load = Load::start(rig.port, 2);
    let killed = rig.baton_pid();
    rig.signal(Signal::SIGKILL);
    rig.wait_exit();
    assert!(alive(old), "the generation outlives its baton");
    rig.start(&[]);
    let line = rig.wait_line(&[&format!(
        "generation 1 of baton pid {killed} (app.1.0, pid {old}, live) is still running: adopted as generation 1"
    )]);
    assert!(line.contains("INFO"), "{line}");
    let new = rig.wait_live_anew("1.0", old);
    assert_ne!(new, old);
    rig.wait_line(&[&format!(
        "retiring generation 1 (app.1.0, pid {old}), which served for the baton before this one"
    )]);
    let reply = slow.join().unwrap().expect("the in-flight request");
    assert_eq!(
        reply,
        (200, format!("release 1.0 pid {old} slept 1500 ms\n")),
        "answered by the adopted generation"
    );
    rig.wait("the adopted generation to be gone", || !alive(old));
    rig.wait_line(&[
        "generation 1 (app.1.0, pid",
        "exited; it was not this baton's child",
    ]);
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.pids.contains(&old) && report.pids.contains(&new));
    rig.assert_children(1);
    let state = rig.state().unwrap();
    assert_eq!(state["generations"].as_array().unwrap().len(), 1);
}

#[test]
fn an_upgrade_is_refused_while_generations_of_a_killed_baton_still_run() {
    // They are not baton's children and cannot be handed over to a new
    // image: `baton upgrade` says so and changes nothing.
    let (mut rig, old) = serving("survivor-upgrade", r#""ignore_sigterm": true"#, "", &[]);
    let _guard = KillOnDrop(old);
    rig.signal(Signal::SIGKILL);
    rig.wait_exit();
    rig.start(&["--stop-timeout", "60s"]);
    rig.wait_line(&["is still running: adopted as generation 1"]);
    let new = rig.wait_live_anew("1.0", old);
    rig.wait_line(&["retiring generation 1 (app.1.0, pid"]);
    assert!(alive(old), "it ignores SIGTERM: still draining");
    let baton = rig.baton_pid();
    let (code, out, err) = baton_cmd(&["upgrade", "--config", path_str(&rig.conf), "--wait=20s"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("1 generation(s) of the baton before this one are still running"),
        "{err}"
    );
    assert_eq!(rig.baton_pid(), baton);
    // (The old one, ignoring SIGTERM, still accepts until its SIGKILL: ask
    // the state file who serves.)
    assert_eq!(rig.state().unwrap()["serving"]["pid"], new);
    let line = rig.wait_line(&[
        "ERROR",
        "upgrade failed: 1 generation(s) of the baton before this one are still running",
    ]);
    assert!(line.contains("carries on"), "{line}");
}
