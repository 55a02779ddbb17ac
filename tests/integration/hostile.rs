//! Hostile and broken input: the notify socket (strangers, oversized,
//! malformed, fds attached, floods) and current.conf (huge, deep, not
//! UTF-8, a symlink loop, a FIFO, a directory, unreadable, unsafe
//! permissions). Each is a clear error naming the file or sender and the
//! reason, and the serving generation serves on, untouched.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use nix::unistd::{Uid, User};

use crate::util::*;

/// A rig serving release 1.0 (2.0 on disk with `two`), started with `args`.
fn serving(tag: &str, two: &str, args: &[&str]) -> (Rig, i32) {
    crate::util::serving(tag, "", two, args)
}

fn notify_sock(rig: &Rig) -> PathBuf {
    rig.runtime_dir.join("notify.sock")
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn nobody() -> User {
    User::from_name("nobody")
        .unwrap()
        .expect("a user named nobody")
}

fn is_root() -> bool {
    Uid::effective().is_root()
}

// ---- the notify socket ----

/// Serving 1.0, with 2.0 (which never sends READY=1 itself) starting, and
/// a process in 2.0's process group standing in for one of its workers.
fn candidate(tag: &str) -> (Rig, i32, i32, GroupMember) {
    let (rig, pid) = serving(tag, r#""never_ready": true"#, &["--ready-timeout", "60s"]);
    rig.point("2.0");
    let cand = rig.wait_generation_pid(2);
    // Its exec seen: baton has closed the exec-status pipe, so that fd
    // counts taken from now on hold still.
    rig.wait_line(&["timing: generation 2 exec'd"]);
    let member = GroupMember::join(cand, &notify_sock(&rig));
    (rig, pid, cand, member)
}

/// Sends a malformed notification from the member and waits until baton
/// has logged it: everything the member sent before has been handled.
fn barrier(rig: &Rig, member: &mut GroupMember, tag: &str) {
    member.send(tag.as_bytes(), 0);
    rig.wait_log(&format!(
        "generation 2 (pid {}) sent a malformed notification: line without '=': {tag:?}",
        member.pid
    ));
}

/// Nothing the member sent so far promoted generation 2: 1.0 serves on.
fn not_promoted(rig: &Rig, old: i32, cand: i32) {
    assert!(
        rig.log_lines(&[&format!("generation 2 (app.2.0, pid {cand}) is ready")])
            .is_empty(),
        "{}",
        rig.log()
    );
    // (2.0 accepts connections while it starts, so who answers GET / says
    // nothing here; the state file says who serves.)
    assert!(alive(old));
    let state = rig.state().unwrap();
    assert_eq!(state["serving"]["pid"], old);
    assert!(
        state["generations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["generation"] == 2 && g["state"] == "starting"),
        "{state:#}"
    );
    assert!(rig.status().contains(&format!(
        "serving app.1.0 (pid {old}, generation 1): release 1.0 accepting; starting app.2.0 (generation 2)"
    )));
}

/// Then a well-formed READY=1 from the same member promotes 2.0: the
/// member counts as part of the generation, so what was dropped before was
/// dropped for what it was, not for who sent it.
fn then_ready_promotes(rig: &Rig, member: &mut GroupMember, cand: i32) {
    member.send(b"READY=1", 0);
    assert_eq!(rig.wait_live("2.0"), cand);
    rig.wait_log(&format!("READY=1 from generation 2 (pid {})", member.pid));
}

#[test]
fn notifications_from_strangers_are_ignored_with_a_rate_limited_warning() {
    let (rig, pid) = serving("n-stranger", "", &[]);
    let stranger = UnixDatagram::unbound().unwrap();
    let me = std::process::id();
    let started = Instant::now();
    for _ in 0..200 {
        stranger
            .send_to(b"READY=1\nSTATUS=i am not your app", notify_sock(&rig))
            .unwrap();
    }
    let first = rig.wait_line(&[&format!(
        "ignored \"READY=1\\nSTATUS=i am not your app\" from pid {me} ("
    )]);
    assert!(
        first.contains("WARN")
            && first.contains(&format!("{}: ", notify_sock(&rig).display()))
            && first.ends_with("which is not part of any generation"),
        "{first}"
    );
    // One warning a second at most; the next one counts what it left out.
    let mut polls = 0;
    rig.wait("a warning counting the suppressed ones", || {
        polls += 1;
        if polls % 10 == 0 {
            let _ = stranger.send_to(b"READY=1", notify_sock(&rig));
        }
        !rig.log_lines(&["similar suppressed)"]).is_empty()
    });
    let warnings = rig.log_lines(&["which is not part of any generation"]);
    let secs = started.elapsed().as_secs() as usize;
    assert!(
        warnings.len() <= secs + 2,
        "{} warnings in {secs}s",
        warnings.len()
    );
    let suppressed: u64 = warnings[1]
        .rsplit_once(" (")
        .and_then(|(_, n)| n.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", warnings[1]));
    assert!(suppressed >= 199, "{}", warnings[1]);
    // Nothing came of it: same process, STATUS untouched, no rollout.
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    assert_eq!(
        rig.status(),
        format!("serving app.1.0 (pid {pid}, generation 1): release 1.0 accepting")
    );
    let state = rig.state().unwrap();
    assert_eq!(state["generations"].as_array().unwrap().len(), 1);
    assert_eq!(state["last_rollout"]["trigger"], "startup");
    rig.assert_children(1);
}

#[test]
fn an_oversized_notification_is_dropped_even_from_the_generation() {
    let (rig, old, cand, mut member) = candidate("n-oversize");
    let big = format!("READY=1\nSTATUS={}", "x".repeat(5000));
    assert!(big.len() > 4096);
    member.send(big.as_bytes(), 0);
    let line = rig.wait_line(&[&format!(
        "{}: dropped a notification from pid {}: {} bytes, more than 4096",
        notify_sock(&rig).display(),
        member.pid,
        big.len()
    )]);
    assert!(line.contains("WARN"), "{line}");
    barrier(&rig, &mut member, "after-oversize");
    not_promoted(&rig, old, cand);
    then_ready_promotes(&rig, &mut member, cand);
}

/// How many of `pid`'s fds are open on /dev/null (what the senders attach).
fn devnull_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == Path::new("/dev/null")))
        .count()
}

#[test]
fn notifications_with_fds_attached_are_dropped_and_the_fds_closed() {
    let (rig, old, cand, mut member) = candidate("n-fds");
    let baton = rig.baton_pid();
    let before = fd_count(baton);
    let devnull_before = devnull_fds(baton);
    member.send(b"READY=1", 1);
    let line = rig.wait_line(&[&format!(
        "dropped a notification from pid {}: 1 file descriptor(s) attached (closed)",
        member.pid
    )]);
    assert!(line.contains(&notify_sock(&rig).display().to_string()));
    // More fds than baton makes room for, and a stranger's stream of them.
    member.send(b"READY=1", MAX_FDS);
    let stranger = UnixDatagram::unbound().unwrap();
    let f = std::fs::File::open("/dev/null").unwrap();
    let fds = [f.as_raw_fd(); 3];
    let addr = nix::sys::socket::UnixAddr::new(&notify_sock(&rig)).unwrap();
    for _ in 0..300 {
        nix::sys::socket::sendmsg(
            stranger.as_raw_fd(),
            &[std::io::IoSlice::new(b"READY=1")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::empty(),
            Some(&addr),
        )
        .unwrap();
    }
    for _ in 0..100 {
        member.send(b"READY=1", 7);
    }
    barrier(&rig, &mut member, "after-fds");
    // 1 + 253 + 900 + 700 fds arrived; every one was closed.
    rig.wait(&format!("baton's fd count back to {before}"), || {
        fd_count(baton) == before
    });
    assert_eq!(
        devnull_fds(baton),
        devnull_before,
        "no /dev/null received from the senders is left open"
    );
    not_promoted(&rig, old, cand);
    then_ready_promotes(&rig, &mut member, cand);
}

/// A barrier (`BARRIER=1` with one fd, what sd_notify_barrier(3) and
/// `systemd-notify --ready` send) has its fd closed and counts as a
/// message, with no warning; READY=1 in the same datagram counts. Any other
/// fd-carrying datagram, a barrier with two fds included, is still dropped
/// with the warning.
#[test]
fn a_barrier_is_answered_without_a_warning_and_its_message_counts() {
    let (rig, old, cand, mut member) = candidate("n-barrier");
    let baton = rig.baton_pid();
    let before = fd_count(baton);
    member.send(b"BARRIER=1", 2);
    rig.wait_line(&[&format!(
        "dropped a notification from pid {}: 2 file descriptor(s) attached (closed)",
        member.pid
    )]);
    for _ in 0..50 {
        member.send(b"BARRIER=1", 1);
    }
    barrier(&rig, &mut member, "after-barriers");
    assert_eq!(
        rig.log_lines(&["dropped a notification"]).len(),
        1,
        "{}",
        rig.log()
    );
    rig.wait(&format!("baton's fd count back to {before}"), || {
        fd_count(baton) == before
    });
    not_promoted(&rig, old, cand);
    member.send(b"READY=1\nSTATUS=ready behind a barrier\nBARRIER=1", 1);
    assert_eq!(rig.wait_live("2.0"), cand);
    rig.wait_status("ready behind a barrier");
    assert_eq!(rig.log_lines(&["dropped a notification"]).len(), 1);
}

#[test]
fn malformed_and_non_utf8_notifications_are_ignored() {
    let (rig, old, cand, mut member) = candidate("n-malformed");
    let cases: [(&[u8], &str); 4] = [
        (b"READY=1\n\xff\xfe", "not UTF-8"),
        (b"READY=1\0", "contains a NUL byte"),
        (b"READY=1\nnonsense", "line without '=': \"nonsense\""),
        (
            &[b'y'; 3000],
            "line without '=': \"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\"",
        ),
    ];
    for (payload, reason) in cases {
        member.send(payload, 0);
        let line = rig.wait_line(&[&format!(
            "generation 2 (pid {}) sent a malformed notification: {reason}",
            member.pid
        )]);
        assert!(line.contains("WARN") && line.ends_with(reason), "{line}");
    }
    // An empty datagram says nothing, and is no error.
    member.send(b"", 0);
    barrier(&rig, &mut member, "after-malformed");
    not_promoted(&rig, old, cand);
    then_ready_promotes(&rig, &mut member, cand);
}

#[test]
fn a_flood_of_notifications_neither_blocks_the_loop_nor_grows_memory() {
    let (rig, old) = serving("n-flood", "", &[]);
    let baton = rig.baton_pid();
    let fds_before = fd_count(baton);
    let rss_before = status_num(baton, "VmRSS");
    let load = Load::start(rig.port, 2);
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sock = notify_sock(&rig);
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            // A blocking socket: the flood goes exactly as fast as baton
            // drains it.
            let s = UnixDatagram::unbound().unwrap();
            let big = vec![b'x'; 6000];
            let f = std::fs::File::open("/dev/null").unwrap();
            let fds = [f.as_raw_fd()];
            let addr = nix::sys::socket::UnixAddr::new(&sock).unwrap();
            let mut n = 0u64;
            while !(stop.load(Ordering::SeqCst) && n >= 100_000) {
                let r = match n % 5 {
                    0 => s.send_to(b"READY=1\nSTATUS=flood", &sock).map(|_| ()),
                    1 => s.send_to(&big, &sock).map(|_| ()),
                    2 => s.send_to(b"\xff\xfe\xfd", &sock).map(|_| ()),
                    3 => nix::sys::socket::sendmsg(
                        s.as_raw_fd(),
                        &[std::io::IoSlice::new(b"READY=1")],
                        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                        nix::sys::socket::MsgFlags::empty(),
                        Some(&addr),
                    )
                    .map(|_| ())
                    .map_err(std::io::Error::from),
                    _ => s.send_to(b"STOPPING=1", &sock).map(|_| ()),
                };
                r.expect("flood send");
                n += 1;
                sent.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    let started = Instant::now();
    let mut rss_max = rss_before;
    let mut sample = || rss_max = rss_max.max(status_num(baton, "VmRSS"));
    rig.wait("the flood to be under way", || {
        sample();
        sent.load(Ordering::SeqCst) >= 10_000
    });
    // A rollout in the middle of it: the real generation's READY=1 gets
    // through, and the old generation is retired as usual.
    rig.point("2.0");
    let new = rig.wait_live("2.0");
    rig.wait_log(&format!("READY=1 from generation 2 (pid {new})"));
    rig.wait("the old generation to be retired", || !alive(old));
    assert!(
        !stop.load(Ordering::SeqCst) && !flood.is_finished(),
        "the rollout happened during the flood"
    );
    rig.wait("100k datagrams", || {
        sample();
        sent.load(Ordering::SeqCst) >= 100_000
    });
    stop.store(true, Ordering::SeqCst);
    let total = flood.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    sample();
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(total >= 100_000);
    // Bounded memory: baton reads into one fixed buffer.
    assert!(
        rss_max <= rss_before + 2048,
        "VmRSS grew from {rss_before} KiB to {rss_max} KiB under the flood"
    );
    rig.wait(&format!("baton's fd count back to {fds_before}"), || {
        fd_count(baton) == fds_before
    });
    // And a bounded log: one warning a second.
    let warnings = rig.log_lines(&["notify.sock: "]).len();
    assert!(
        warnings as f64 <= secs + 2.0,
        "{warnings} warnings in {secs:.1}s"
    );
    eprintln!(
        "flood: {total} datagrams in {secs:.1}s, VmRSS {rss_before} -> max {rss_max} KiB, {warnings} warnings"
    );
    rig.wait_status(&format!(
        "serving app.2.0 (pid {new}, generation 2): release 2.0 accepting"
    ));
    rig.assert_children(1);
}

// ---- current.conf ----

/// Puts a bad current.conf in place with `place`; asserts the ERROR names
/// the file and `reason`, STATUS says so, 1.0 serves on (same process),
/// the state file records the failed rollout.
fn refused(rig: &Rig, pid: i32, place: impl FnOnce(&Rig), reason: &str) {
    place(rig);
    let line = rig.wait_line(&[
        &format!("{}: ", rig.conf.display()),
        reason,
        "still serving app.1.0",
    ]);
    assert!(line.contains("ERROR"), "{line}");
    let (head, tail) = (
        format!("cannot roll out {}: ", rig.conf.display()),
        format!("; still serving app.1.0 (pid {pid}, generation 1): release 1.0 accepting"),
    );
    rig.wait(&format!("STATUS {head}...{reason}...{tail}"), || {
        let s = rig.status();
        s.starts_with(&head) && s.contains(reason) && s.ends_with(&tail)
    });
    assert_eq!(rig.serving(), Some(("1.0".into(), pid)));
    // (STATUS goes out just before the state file is written.)
    rig.wait("state: the failed rollout and its reason", || {
        rig.state().is_some_and(|s| {
            s["last_rollout"]["result"] == "failed"
                && s["last_rollout"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(reason))
        })
    });
    let state = rig.state().unwrap();
    assert_eq!(state["serving"]["pid"], pid);
    assert_eq!(state["generations"].as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_link(rig.app_dir.join("app.bin")).unwrap(),
        rig.release_dir.join("app.1.0")
    );
}

/// After the refusals, a good current.conf still rolls, and the load saw
/// no failure.
fn then_a_good_edit_rolls(rig: &Rig, load: Load) {
    if rig.conf.is_dir() {
        std::fs::remove_dir(&rig.conf).unwrap();
    }
    rig.roll_cleanly("2.0", 2, load);
}

/// Valid JSON naming 2.0, padded to `len` bytes.
fn padded_conf(len: usize) -> String {
    let head = r#"{"bin.file": "app.2.0", "cfg.file": "cfg.2.0", "pad": ""#;
    format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
}

#[test]
fn current_conf_larger_than_64_kib_is_refused_unread() {
    let (rig, pid) = serving("c-huge", "", &[]);
    let load = Load::start(rig.port, 2);
    // Otherwise valid: it would roll 2.0 out but for its size.
    let huge = padded_conf(64 * 1024 + 1);
    refused(
        &rig,
        pid,
        |r| r.write_conf(&huge),
        "is 65537 bytes, more than the 65536 a current.conf may be",
    );
    let ten_mib = padded_conf(10 << 20);
    refused(
        &rig,
        pid,
        |r| r.write_conf(&ten_mib),
        "is 10485760 bytes, more than the 65536 a current.conf may be",
    );
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn deeply_nested_json_is_refused() {
    let (rig, pid) = serving("c-deep", "", &[]);
    let load = Load::start(rig.port, 2);
    // 100k levels do not fit under the size cap...
    refused(
        &rig,
        pid,
        |r| r.write_conf(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
        "is 200000 bytes, more than the 65536",
    );
    // ...and deep documents that do stop at the parser's depth limit.
    refused(
        &rig,
        pid,
        |r| r.write_conf(&format!("{}{}", "{\"a\":".repeat(6_000), "}".repeat(6_000))),
        "invalid JSON: recursion limit exceeded",
    );
    refused(
        &rig,
        pid,
        |r| r.write_conf(&"[".repeat(30_000)),
        "invalid JSON: recursion limit exceeded",
    );
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn non_utf8_current_conf_is_refused() {
    let (rig, pid) = serving("c-utf8", "", &[]);
    let load = Load::start(rig.port, 2);
    refused(
        &rig,
        pid,
        |r| {
            r.write_conf_prepared(
                b"{\"bin.file\": \"app.2.0\xff\xfe\", \"cfg.file\": \"cfg.2.0\"}",
                |_| {},
            )
        },
        "invalid JSON: invalid unicode code point",
    );
    refused(
        &rig,
        pid,
        |r| r.write_conf_prepared(b"\xef\xbb\xbf\xff{}", |_| {}),
        "invalid JSON: expected value at line 1 column 1",
    );
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn a_symlink_loop_in_place_of_current_conf_is_refused() {
    let (rig, pid) = serving("c-loop", "", &[]);
    let load = Load::start(rig.port, 2);
    refused(
        &rig,
        pid,
        |r| {
            let d = &r.release_dir;
            std::os::unix::fs::symlink("loop.b", d.join("loop.a")).unwrap();
            std::os::unix::fs::symlink("loop.a", d.join("loop.b")).unwrap();
            let tmp = d.join(".link");
            std::os::unix::fs::symlink("loop.a", &tmp).unwrap();
            std::fs::rename(&tmp, &r.conf).unwrap();
        },
        "too many levels of symbolic links (a symlink loop?)",
    );
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn a_fifo_in_place_of_current_conf_is_refused_without_blocking() {
    let (rig, pid) = serving("c-fifo", "", &[]);
    let load = Load::start(rig.port, 2);
    refused(
        &rig,
        pid,
        |r| {
            let tmp = r.release_dir.join(".fifo");
            nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            std::fs::rename(&tmp, &r.conf).unwrap();
        },
        "is a FIFO, not a regular file",
    );
    // baton did not wait for a writer: it still rolls out (and a SIGHUP,
    // which reads current.conf again, does not hang it either).
    rig.signal(nix::sys::signal::Signal::SIGHUP);
    rig.wait("the SIGHUP's read to fail the same way", || {
        rig.state()
            .is_some_and(|s| s["last_rollout"]["trigger"] == "reload")
    });
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn a_directory_in_place_of_current_conf_is_refused() {
    let (rig, pid) = serving("c-dir", "", &[]);
    let load = Load::start(rig.port, 2);
    refused(
        &rig,
        pid,
        |r| {
            std::fs::remove_file(&r.conf).unwrap();
            std::fs::create_dir(&r.conf).unwrap();
        },
        "is a directory, not a regular file",
    );
    then_a_good_edit_rolls(&rig, load);
}

/// baton runs as root here, and root reads anything; so this baton runs as
/// `nobody` (set up in the harness's fork before exec), with its app and
/// runtime directories given to nobody and the fake systemd socket open to
/// it. The release files stay root's (allowed: root or baton's own user).
/// As a non-root test user, baton simply runs as that user.
#[test]
fn an_unreadable_current_conf_is_refused() {
    let mut rig = Rig::new("c-eacces");
    rig.release("1.0", "");
    rig.release("2.0", "");
    rig.point("1.0");
    let as_user = if is_root() {
        let n = nobody();
        for d in [&rig.app_dir, &rig.runtime_dir] {
            nix::unistd::chown(d.as_path(), Some(n.uid), Some(n.gid)).unwrap();
        }
        chmod(&rig.systemd_path, 0o777);
        rig.run_as = Some((n.uid.as_raw(), n.gid.as_raw()));
        n.uid
    } else {
        Uid::effective()
    };
    rig.start(&[]);
    let pid = rig.wait_live("1.0");
    let uid = std::fs::read_to_string(format!("/proc/{}/status", rig.baton_pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(str::to_owned))
        .unwrap();
    assert!(
        uid.split_whitespace()
            .all(|u| u == as_user.as_raw().to_string()),
        "baton runs as uid {as_user}: {uid}"
    );
    let load = Load::start(rig.port, 2);
    refused(
        &rig,
        pid,
        |r| {
            r.write_conf_prepared(br#"{"bin.file": "app.2.0", "cfg.file": "cfg.2.0"}"#, |p| {
                chmod(p, 0o000)
            })
        },
        "permission denied",
    );
    then_a_good_edit_rolls(&rig, load);
}

// ---- permissions (StrictModes) ----

/// Release `v` with its own copy of the app binary (so that its mode and
/// owner can be changed); returns (bin, cfg).
fn own_copy(rig: &Rig, v: &str) -> (PathBuf, PathBuf) {
    let bin = rig.release_dir.join(format!("app.{v}"));
    let cfg = rig.release_dir.join(format!("cfg.{v}"));
    std::fs::copy(APP, &bin).unwrap();
    chmod(&bin, 0o755);
    std::fs::write(&cfg, format!("{{\"release\": \"{v}\"}}")).unwrap();
    (bin, cfg)
}

fn conf_for(v: &str) -> Vec<u8> {
    format!("{{\"bin.file\": \"app.{v}\", \"cfg.file\": \"cfg.{v}\"}}").into_bytes()
}

const CHMOD: &str =
    "anyone could run code as this service; chmod o-w it, or pass --insecure-permissions";

#[test]
fn world_writable_bin_cfg_or_current_conf_is_refused() {
    let (rig, pid) = serving("p-world", "", &[]);
    let load = Load::start(rig.port, 2);
    let (bin, _) = own_copy(&rig, "3.0");
    chmod(&bin, 0o777);
    refused(
        &rig,
        pid,
        |r| r.point("3.0"),
        &format!(
            "bin.file {} is world-writable (mode 777): {CHMOD}",
            bin.display()
        ),
    );
    let (_, cfg) = own_copy(&rig, "4.0");
    chmod(&cfg, 0o666);
    refused(
        &rig,
        pid,
        |r| r.point("4.0"),
        &format!(
            "cfg.file {} is world-writable (mode 666): {CHMOD}",
            cfg.display()
        ),
    );
    refused(
        &rig,
        pid,
        |r| r.write_conf_prepared(&conf_for("2.0"), |p| chmod(p, 0o646)),
        &format!("current.conf is world-writable (mode 646): {CHMOD}"),
    );
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn bin_cfg_or_current_conf_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: only root can give a file to another user");
        return;
    }
    let (rig, pid) = serving("p-owner", "", &[]);
    let load = Load::start(rig.port, 2);
    let n = nobody();
    let give = |p: &Path| nix::unistd::chown(p, Some(n.uid), Some(n.gid)).unwrap();
    let chown = |what: String| {
        format!(
            "{what} is owned by uid {}, neither root nor baton's uid 0: that user could run code as this service; chown it, or pass --insecure-permissions",
            n.uid
        )
    };
    let (bin, _) = own_copy(&rig, "3.0");
    give(&bin);
    refused(
        &rig,
        pid,
        |r| r.point("3.0"),
        &chown(format!("bin.file {}", bin.display())),
    );
    let (_, cfg) = own_copy(&rig, "4.0");
    give(&cfg);
    refused(
        &rig,
        pid,
        |r| r.point("4.0"),
        &chown(format!("cfg.file {}", cfg.display())),
    );
    refused(
        &rig,
        pid,
        |r| r.write_conf_prepared(&conf_for("2.0"), give),
        &chown("current.conf".into()),
    );
    then_a_good_edit_rolls(&rig, load);
}

#[test]
fn insecure_permissions_rolls_them_out_knowingly() {
    let mut rig = Rig::new("p-insecure");
    rig.release("1.0", "");
    rig.point("1.0");
    rig.start(&["--insecure-permissions"]);
    rig.wait_live("1.0");
    let warning = rig.wait_line(&[
        "--insecure-permissions: world-writable or foreign-owned releases will be run",
    ]);
    assert!(warning.contains("WARN"), "{warning}");
    let load = Load::start(rig.port, 2);
    // Everything world-writable and, where root can arrange it, owned by
    // another user.
    let (bin, cfg) = own_copy(&rig, "2.0");
    chmod(&bin, 0o777);
    chmod(&cfg, 0o666);
    let unsafe_file = |p: &Path| {
        chmod(p, 0o666);
        if is_root() {
            let n = nobody();
            nix::unistd::chown(p, Some(n.uid), Some(n.gid)).unwrap();
        }
    };
    if is_root() {
        unsafe_file(&cfg);
        let n = nobody();
        nix::unistd::chown(&bin, Some(n.uid), Some(n.gid)).unwrap();
    }
    rig.write_conf_prepared(&conf_for("2.0"), unsafe_file);
    let new = rig.wait_live("2.0");
    rig.wait_status(&format!(
        "serving app.2.0 (pid {new}, generation 2): release 2.0 accepting"
    ));
    assert!(
        rig.log_lines(&["ERROR"]).is_empty(),
        "nothing refused:\n{}",
        rig.log()
    );
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

#[test]
fn a_release_in_a_world_writable_directory_is_refused_unless_sticky() {
    let (rig, pid) = serving("p-dir", "", &[]);
    let load = Load::start(rig.port, 2);
    let shared = rig.release_dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::symlink(APP, shared.join("app.5.0")).unwrap();
    std::fs::write(shared.join("cfg.5.0"), r#"{"release": "5.0"}"#).unwrap();
    chmod(&shared, 0o777);
    refused(
        &rig,
        pid,
        |r| r.write_conf(r#"{"bin.file": "shared/app.5.0", "cfg.file": "shared/cfg.5.0"}"#),
        &format!(
            "directory {} (holding app.5.0) is world-writable (mode 777): anyone could replace what it holds",
            shared.display()
        ),
    );
    // Sticky, like /tmp: only a file's owner may replace it.
    chmod(&shared, 0o1777);
    rig.write_conf(r#"{"bin.file": "shared/app.5.0", "cfg.file": "shared/cfg.5.0"}"#);
    rig.wait_live("5.0");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}
