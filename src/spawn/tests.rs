use super::*;
use nix::sys::signal::Signal;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

fn sleeper(own_group: bool) -> std::process::Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    if own_group {
        cmd.process_group(0);
    }
    cmd.spawn().unwrap()
}

/// A new process with exactly `pid`, made by pointing the kernel's
/// next pid at it (needs CAP_SYS_ADMIN; None without it, or if other
/// processes keep taking the number first).
fn recycle(pid: i32, own_group: bool) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut c = sleeper(own_group);
        if c.id() as i32 == pid {
            return Some(c);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    None
}

/// A generation whose leader was reaped keeps its `Child` (as a bug or a
/// race might leave it). Its pid is then handed to an unrelated process:
/// neither `signal_leader` nor `signal_group` may reach that process.
#[test]
fn a_stale_child_never_signals_a_recycled_pid() {
    for own_group in [false, true] {
        let mut first = sleeper(true);
        let pid = Pid::from_raw(first.id() as i32);
        let stale = Child {
            pid,
            pidfd: pidfd_open(pid),
            exec_status: None,
        };
        assert!(stale.pidfd.is_some(), "this kernel has pidfds");
        first.kill().unwrap();
        first.wait().unwrap(); // reaped: the pid is free again
        assert_eq!(signal_leader(&stale, Signal::SIGKILL), Ok(()));
        assert_eq!(signal_group(&stale, Signal::SIGKILL), Ok(()));
        let Some(mut other) = recycle(pid.as_raw(), own_group) else {
            eprintln!("could not recycle pid {pid} (not root?); only ESRCH was checked");
            return;
        };
        assert_eq!(
            nix::unistd::getpgid(Some(pid)).unwrap() == pid,
            own_group,
            "the recycled process leads a group numbered like the old one: {own_group}"
        );
        assert_eq!(signal_leader(&stale, Signal::SIGKILL), Ok(()));
        assert_eq!(signal_group(&stale, Signal::SIGKILL), Ok(()));
        // Had a SIGKILL reached it, it would be dying of SIGKILL already
        // (a fatal signal sets the exit code when it is sent); it dies of
        // our SIGTERM instead.
        nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        let status = other.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "the recycled pid {pid} was signalled through the stale child (own group: {own_group})"
        );
    }
}

/// The environment a generation of `release` gets with `listeners` and
/// baton's own environment `inherited`.
fn environment_of(
    release: &Release,
    listeners: &[RawFd],
    inherited: &[(&str, &str)],
) -> Vec<String> {
    let env: Vec<(OsString, OsString)> = inherited
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    let spec = Spec {
        release,
        listeners,
        fdnames: None,
        notify_socket: Path::new("/run/app/notify.sock"),
        env: &env,
        cwd: Path::new("/"),
    };
    environment(&spec)
        .unwrap()
        .into_iter()
        .map(|c| c.into_string().unwrap())
        .collect()
}

#[test]
fn a_generation_never_inherits_variables_meant_for_baton() {
    let release = Release {
        bin: "/r/app.1.0".into(),
        cfg: "/r/cfg.1.0".into(),
        ..Default::default()
    };
    let got = environment_of(
        &release,
        &[3, 4],
        &[
            ("PATH", "/usr/bin"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LISTEN_FDS", "9"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "other"),
            ("WATCHDOG_USEC", "1000"),
            ("LANG", "C.UTF-8"),
        ],
    );
    assert_eq!(
        got,
        [
            "PATH=/usr/bin",
            "LANG=C.UTF-8",
            "LISTEN_FDS=2",
            "NOTIFY_SOCKET=/run/app/notify.sock"
        ]
    );
}

#[test]
fn a_releases_own_variables_replace_inherited_ones_and_never_baton_s() {
    let mut release = Release {
        bin: "/r/app.1.0".into(),
        cfg: "/r/cfg.1.0".into(),
        ..Default::default()
    };
    release.opts.env = [("PATH", "/opt/app/bin"), ("APP_MODE", "fast")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let got = environment_of(
        &release,
        &[3],
        &[
            ("PATH", "/usr/bin"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LANG", "C.UTF-8"),
        ],
    );
    assert_eq!(
        got,
        [
            "LANG=C.UTF-8",
            "APP_MODE=fast",
            "PATH=/opt/app/bin",
            "LISTEN_FDS=1",
            "NOTIFY_SOCKET=/run/app/notify.sock"
        ]
    );
}

/// A plain program: exactly the environment given, stdout where it was
/// put, no fd beyond 0-2, no LISTEN_PID, its own process group.
#[test]
fn a_program_gets_its_stdio_and_environment_and_nothing_else() {
    let (r, w) = nix::unistd::pipe().unwrap();
    let env = [(OsString::from("FOO"), OsString::from("bar"))];
    let script = "echo \"$FOO ${LISTEN_PID:-none} $(ps -o pgid= -p $$ | tr -d ' ') $$\"; \
                  [ -e /proc/$$/fd/3 ] && echo leak || echo clean";
    let exec = Exec::program(
        Path::new("/bin/sh"),
        &[OsStr::new("-c"), OsStr::new(script)],
        &env,
        Path::new("/"),
    )
    .unwrap()
    .stdio(1, w.as_raw_fd());
    let child = start(&exec).unwrap();
    drop(w);
    let status = nix::sys::wait::waitpid(child.pid, None).unwrap();
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
    assert_eq!(
        exec_outcome(child.exec_status.as_ref().unwrap(), child.pid),
        Some(Ok(()))
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
    let pid = child.pid.as_raw();
    assert_eq!(out, format!("bar none {pid} {pid}\nclean\n"));
}

#[test]
fn signals_reach_the_leader_and_its_group() {
    let mut leader = sleeper(true);
    let pid = Pid::from_raw(leader.id() as i32);
    let child = Child {
        pid,
        pidfd: pidfd_open(pid),
        exec_status: None,
    };
    signal_group(&child, Signal::SIGTERM).unwrap();
    assert_eq!(leader.wait().unwrap().signal(), Some(libc::SIGTERM));
    // Dead and reaped now: nothing to signal, and not an error.
    assert_eq!(signal_group(&child, Signal::SIGKILL), Ok(()));
    assert_eq!(signal_leader(&child, Signal::SIGKILL), Ok(()));
}
