//! The example release baton ships: a small HTTP server for the socket it
//! inherits (fd 3, 4, ... with LISTEN_FDS/LISTEN_PID checked by listenfd).
//!
//! `example-app -c cfg.json`; the config names the release and, for tests,
//! how it should misbehave:
//!
//! ```json
//! {"release": "2.0", "ready_delay_ms": 0, "never_ready": false,
//!  "notify": true, "ready_file": null, "extend_timeout_ms": null,
//!  "exit_before_ready": null, "crash_after_ms": null, "ignore_sigterm": false,
//!  "drain_on": ["TERM", "INT"], "exit_on": [],
//!  "workers": 0, "ready_from_worker": false, "status": null}
//! ```
//!
//! `GET /` answers `release 2.0 pid 1234`; `GET /info` answers JSON about
//! what the process inherited; `GET /slow?ms=N` answers after N ms. It
//! accepts at once and is ready `ready_delay_ms` later (never, with
//! `never_ready`): then it sends READY=1 (unless `notify` is false) and
//! creates `ready_file` (`%p` in it is its pid), which a `check:` can look
//! for. On a signal in `drain_on` it stops accepting, finishes what is in
//! flight (answering each keep-alive connection's next request with
//! `Connection: close`) and exits 0; on one in `exit_on` it exits 0 at once,
//! dropping what is in flight (as servers whose SIGTERM is brutal do). It
//! logs each of those signals as it receives it, and so do its workers;
//! once drained it waits up to 2 s for its workers to exit.
//! With `extend_timeout_ms` it first asks for that much more time to start
//! (EXTEND_TIMEOUT_USEC).
//!
//! The listening socket is left in blocking mode (its O_NONBLOCK flag is
//! shared with every other generation): each socket has an accept thread in
//! a blocking accept(), which SIGTERM handling interrupts with SIGUSR1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One log line to stderr in one write(2): the leader, its workers and baton
/// share the pipe, and `eprintln!` on unbuffered stderr writes a formatted
/// line in pieces, which interleave with another process's pieces. A write of
/// up to PIPE_BUF bytes to a pipe is atomic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    release: Option<String>,
    ready_delay_ms: u64,
    never_ready: bool,
    exit_before_ready: Option<i32>,
    crash_after_ms: Option<u64>,
    ignore_sigterm: bool,
    workers: u32,
    ready_from_worker: bool,
    status: Option<String>,
    #[serde(default = "yes")]
    notify: bool,
    ready_file: Option<String>,
    extend_timeout_ms: Option<u64>,
    #[serde(default = "drain_signals")]
    drain_on: Vec<String>,
    exit_on: Vec<String>,
}

fn yes() -> bool {
    true
}

fn drain_signals() -> Vec<String> {
    vec!["TERM".into(), "INT".into()]
}

fn signal_named(name: &str) -> Signal {
    let full = if name.starts_with("SIG") {
        name.to_owned()
    } else {
        format!("SIG{name}")
    };
    full.parse()
        .unwrap_or_else(|_| fail(&format!("unknown signal {name:?}")))
}

/// What a worker waits for: the signals a stop could bring.
const WORKER_SIGNALS: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

static DRAINING: AtomicBool = AtomicBool::new(false);

struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

fn main() {
    let fds_at_start = open_fds();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        // A long-lived worker in the app's process group; with
        // --notify-ready it reports READY=1 on its leader's behalf first
        // (baton accepts it by process group: the sender must still exist
        // when baton reads the datagram, as with systemd's NotifyAccess).
        let mut set = SigSet::empty();
        for s in WORKER_SIGNALS {
            set.add(s);
        }
        set.thread_block().expect("sigmask");
        // Tell the leader it is up (signals now wait for sigwait), as a
        // worker tells its master it booted.
        println!("up");
        if args.get(2).map(String::as_str) == Some("--notify-ready") {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        }
        let sig = set.wait().expect("sigwait");
        say!(
            "example-app worker[{}]: received {sig}; exiting",
            std::process::id()
        );
        std::process::exit(0);
    }
    let cfg_path = match args
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| args.get(i + 1))
    {
        Some(p) => p.clone(),
        None => fail("usage: example-app -c CONFIG"),
    };
    let text =
        std::fs::read_to_string(&cfg_path).unwrap_or_else(|e| fail(&format!("{cfg_path}: {e}")));
    let cfg: Config =
        serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("{cfg_path}: {e}")));
    let release = cfg.release.clone().unwrap_or_else(|| {
        let name = std::path::Path::new(&cfg_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        name.and_then(|n| n.split_once('.').map(|(_, v)| v.to_owned()))
            .unwrap_or_else(|| "unknown".into())
    });
    let pid = std::process::id();
    let info = info_json(&release, &fds_at_start);

    // The stop signals (drain_on, exit_on) are read by the main thread with
    // sigwait; SIGUSR1 only interrupts a blocking accept (no SA_RESTART).
    let drain_on: Vec<Signal> = cfg.drain_on.iter().map(|n| signal_named(n)).collect();
    let exit_on: Vec<Signal> = cfg.exit_on.iter().map(|n| signal_named(n)).collect();
    let mut term = SigSet::empty();
    for s in drain_on.iter().chain(&exit_on) {
        term.add(*s);
    }
    if cfg.ignore_sigterm {
        term.add(Signal::SIGTERM);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&term), None).expect("sigmask");
    extern "C" fn wake(_: nix::libc::c_int) {}
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe {
        sigaction(
            Signal::SIGUSR1,
            &SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty()),
        )
    }
    .expect("sigaction");

    let mut listeners: Vec<OwnedFd> = Vec::new();
    let mut lfd = listenfd::ListenFd::from_env();
    for i in 0..lfd.len() {
        if let Ok(Some(fd)) = lfd.take_raw_fd(i) {
            // SAFETY: listenfd hands over the inherited fd, owned by nobody else.
            listeners.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    if listeners.is_empty() {
        fail("no listening socket: LISTEN_FDS/LISTEN_PID not set for this process");
    }
    say!(
        "example-app[{pid}] release {release}: serving {} socket(s)",
        listeners.len()
    );

    if let Some(ms) = cfg.extend_timeout_ms {
        let usec = u32::try_from(ms * 1000).unwrap_or(u32::MAX);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(usec)]);
    }
    if let Some(code) = cfg.exit_before_ready {
        say!(
            "example-app[{pid}] release {release}: exiting with {code} before READY (as configured)"
        );
        std::process::exit(code);
    }
    // Workers live in the app's process group; baton retires them with it.
    // The group's signal ends them; after its drain the leader waits a
    // little for them (as a master does), then leaves the rest to baton.
    let mut workers: Vec<std::process::Child> = (0..cfg.workers)
        .map(|_| {
            let exe = std::env::current_exe().expect("current_exe");
            std::process::Command::new(exe)
                .arg("--worker")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawning worker")
        })
        .collect();
    // Ready only once every worker is up: a stop from then on reaches a
    // worker that handles it.
    for w in &mut workers {
        let mut up = String::new();
        if let Some(out) = w.stdout.as_mut() {
            let _ = BufReader::new(out).read_line(&mut up);
        }
    }

    let inflight = Arc::new(InFlight {
        count: Mutex::new(0),
        idle: Condvar::new(),
    });
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut acceptors = Vec::new();
    for l in listeners {
        let (inflight, release, info, accepted) = (
            inflight.clone(),
            release.clone(),
            info.clone(),
            accepted.clone(),
        );
        acceptors.push(std::thread::spawn(move || {
            accept_loop(l, inflight, release, info, accepted)
        }));
    }

    if !cfg.never_ready {
        std::thread::sleep(Duration::from_millis(cfg.ready_delay_ms));
        if cfg.ready_from_worker {
            let exe = std::env::current_exe().expect("current_exe");
            // It lives on in the group, like any worker; never waited for.
            let worker = std::process::Command::new(exe)
                .args(["--worker", "--notify-ready"])
                .spawn();
            std::mem::forget(worker);
        } else if cfg.notify {
            let status = cfg
                .status
                .clone()
                .unwrap_or_else(|| format!("release {release} accepting"));
            let _ = sd_notify::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&status),
            ]);
        }
        if let Some(f) = &cfg.ready_file {
            let path = f.replace("%p", &pid.to_string());
            if let Err(e) = std::fs::write(&path, format!("{pid}\n")) {
                fail(&format!("{path}: {e}"));
            }
        }
    }
    if let Some(ms) = cfg.crash_after_ms {
        let release = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            say!("example-app[{pid}] release {release}: crashing after {ms} ms (as configured)");
            std::process::exit(3);
        });
    }

    loop {
        let sig = term.wait().expect("sigwait");
        if cfg.ignore_sigterm && sig == Signal::SIGTERM {
            say!("example-app[{pid}]: ignoring SIGTERM (as configured)");
            continue;
        }
        if exit_on.contains(&sig) {
            say!(
                "example-app[{pid}] release {release}: received {sig}; exiting at once, dropping what is in flight"
            );
            std::process::exit(0);
        }
        say!("example-app[{pid}] release {release}: received {sig}; draining");
        break;
    }
    let t = Instant::now();
    DRAINING.store(true, Ordering::SeqCst);
    // Interrupt every accept thread until it has left accept().
    for a in acceptors {
        while !a.is_finished() {
            // SAFETY: the thread is alive (not finished) and joinable, so its
            // pthread_t is valid; SIGUSR1's handler is a no-op.
            unsafe { nix::libc::pthread_kill(a.as_pthread_t(), nix::libc::SIGUSR1) };
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = a.join();
    }
    let mut n = inflight.count.lock().unwrap();
    while *n > 0 {
        n = inflight.idle.wait(n).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until
        && workers
            .iter_mut()
            .any(|w| w.try_wait().is_ok_and(|s| s.is_none()))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    say!(
        "example-app[{pid}] release {release}: drained in {} ms after {} connection(s); exiting",
        t.elapsed().as_millis(),
        accepted.load(Ordering::SeqCst)
    );
}

fn fail(msg: &str) -> ! {
    say!("example-app: {msg}");
    std::process::exit(1);
}

fn accept_loop(
    l: OwnedFd,
    inflight: Arc<InFlight>,
    release: String,
    info: String,
    accepted: Arc<AtomicUsize>,
) {
    while !DRAINING.load(Ordering::SeqCst) {
        // SAFETY: accept4 on our listening fd with null address arguments.
        let fd = unsafe {
            nix::libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                nix::libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(nix::libc::EINTR) | Some(nix::libc::ECONNABORTED) => continue,
                // Another release set O_NONBLOCK on the shared socket: wait
                // for a connection rather than spin.
                Some(nix::libc::EAGAIN) => {
                    let mut pfd = nix::libc::pollfd {
                        fd: l.as_raw_fd(),
                        events: nix::libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: poll on one pollfd we own, for at most 100 ms.
                    unsafe { nix::libc::poll(&mut pfd, 1, 100) };
                    continue;
                }
                _ => {
                    say!("example-app: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        *inflight.count.lock().unwrap() += 1;
        let (inflight, release, info) = (inflight.clone(), release.clone(), info.clone());
        std::thread::spawn(move || {
            // SAFETY: accept4 returned a new fd that we own.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            serve(conn, &release, &info);
            let mut n = inflight.count.lock().unwrap();
            *n -= 1;
            inflight.idle.notify_all();
        });
    }
    // Dropping `l` closes only this process's fd; the shared socket stays
    // open in baton and the other generations.
}

/// One connection: HTTP/1.1 requests until close, idle timeout, or drain.
fn serve(conn: OwnedFd, release: &str, info: &str) {
    let stream = std::net::TcpStream::from(conn);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    let mut idle_since = Instant::now();
    loop {
        let mut head = Vec::new();
        // Read a request head, waking every 100 ms to check idleness.
        loop {
            match reader.read_until(b'\n', &mut head) {
                Ok(0) => return,
                Ok(_) if head.ends_with(b"\r\n\r\n") || head == b"\r\n" => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let idle = idle_since.elapsed();
                    let limit = if DRAINING.load(Ordering::SeqCst) {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(30)
                    };
                    if head.is_empty() && idle >= limit {
                        return;
                    }
                }
                Err(_) => return,
            }
            if head.len() > 64 * 1024 {
                return;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let (method, target, version) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/"),
            parts.next().unwrap_or(""),
        );
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            let _ = std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink());
        }
        let wants_close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || (version == "HTTP/1.0"
                && !headers
                    .get("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")));
        let (code, body) = route(method, target, release, info);
        let close = wants_close || DRAINING.load(Ordering::SeqCst);
        let reply = format!(
            "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        if out.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
        idle_since = Instant::now();
    }
}

fn route(method: &str, target: &str, release: &str, info: &str) -> (&'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET" | "HEAD", "/") => (
            "200 OK",
            format!("release {release} pid {}\n", std::process::id()),
        ),
        ("GET", "/info") => ("200 OK", info.to_owned()),
        ("GET", "/slow") => {
            let ms = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000u64);
            std::thread::sleep(Duration::from_millis(ms.min(600_000)));
            (
                "200 OK",
                format!(
                    "release {release} pid {} slept {ms} ms\n",
                    std::process::id()
                ),
            )
        }
        _ => ("404 Not Found", "not found\n".to_owned()),
    }
}

/// The fds open when main() began, as `fd -> target`.
fn open_fds() -> Vec<(RawFd, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok())
                && let Ok(target) = std::fs::read_link(e.path())
            {
                out.push((fd, target.to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    out
}

fn info_json(release: &str, fds: &[(RawFd, String)]) -> String {
    let env = |k: &str| std::env::var(k).ok();
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("SigBlk:"))
                .map(|l| l[7..].trim().to_owned())
        });
    let ignored = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("SigIgn:"))
                .map(|l| l[7..].trim().to_owned())
        });
    let v = serde_json::json!({
        "release": release,
        "pid": std::process::id(),
        "ppid": nix::unistd::getppid().as_raw(),
        "pgid": nix::unistd::getpgrp().as_raw(),
        "listen_pid": env("LISTEN_PID"),
        "listen_fds": env("LISTEN_FDS"),
        "listen_fdnames": env("LISTEN_FDNAMES"),
        "notify_socket": env("NOTIFY_SOCKET"),
        "watchdog_usec": env("WATCHDOG_USEC"),
        "cwd": std::env::current_dir().ok(),
        "argv": std::env::args().collect::<Vec<_>>(),
        "fds_at_start": fds.iter().map(|(fd, t)| serde_json::json!([fd, t])).collect::<Vec<_>>(),
        "sig_blocked": mask,
        "sig_ignored": ignored,
        "env": std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect::<BTreeMap<_, _>>(),
    });
    format!("{v}\n")
}
