//! Processes, sockets and /proc, by hand.
//!
//! [`spawn`] is fork + execve the way systemd and baton start a
//! socket-activated service: the listening sockets land at fds 3, 4, ...,
//! LISTEN_FDS is set, and LISTEN_PID is written with the child's own pid
//! after the fork. A close-on-exec pipe tells the parent the instant the
//! exec happened (EOF), which is the fork+exec floor the bench compares
//! baton with. Every child is held as a [`Proc`] with a pidfd, so waiting
//! for it has no polling delay and dropping it kills and reaps it.

use std::ffi::CString;
use std::io::{self, Read};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::procs;
use testkit::wait::poll;

/// Every child the bench started and has not reaped: what an interrupted
/// bench must stop before it exits.
static CHILDREN: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

pub fn register(pid: i32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(pid);
    }
}

pub fn unregister(pid: i32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|&p| p != pid);
    }
}

/// The write end of the pipe the signal handler reports to.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; one byte from a static.
    unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
}

/// SIGINT/SIGTERM/SIGHUP to the bench: SIGTERM to every child (a baton
/// then retires its generations, an app drains), up to 5 s for them to go,
/// SIGKILL for the rest, then exit. A handler, not a blocked mask: a mask
/// would be inherited by every child std::process::Command starts (a
/// gunicorn master that cannot see SIGHUP), while a handler is reset to
/// the default by exec.
pub fn stop_children_on_signal(tmp: std::path::PathBuf) {
    let mut p = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the array we own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    SIGNAL_PIPE.store(p[1], std::sync::atomic::Ordering::Relaxed);
    // SAFETY: installs a handler that only calls write(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
    let r = p[0];
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        // SAFETY: a blocking read of one byte from our pipe.
        while unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) } != 1 {}
        eprintln!("baton-bench: interrupted; stopping everything it started");
        let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
        for &p in &pids {
            // SAFETY: our own unreaped children.
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &p in &pids {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = poll(left, Duration::from_millis(20), || {
                // SAFETY: reaping our own child; WNOHANG.
                let r = unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
                if r != 0 { Ok(()) } else { Err(()) }
            });
            // SAFETY: as above; harmless if it is gone.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&tmp);
        std::process::exit(130);
    });
}

/// A child process, reaped exactly once (by `wait_timeout`, or killed and
/// reaped on drop).
pub struct Proc {
    pub pid: i32,
    pidfd: OwnedFd,
    status: Option<i32>,
}

/// What to start and what it gets.
pub struct SpawnOpts<'a> {
    pub prog: &'a Path,
    /// argv[1..]
    pub args: &'a [String],
    /// Added to (or replacing in) the bench's own environment.
    pub env: &'a [(String, String)],
    /// Placed at fds 3, 4, ... with LISTEN_FDS/LISTEN_PID set.
    pub listen: &'a [RawFd],
    /// The child's stderr (and stdout); /dev/null when None.
    pub stderr: Option<RawFd>,
}

pub struct Spawned {
    pub proc: Proc,
    /// Right before fork().
    pub fork_at: Instant,
    /// When the parent saw the exec status pipe close: the exec happened.
    pub exec_at: Instant,
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

const LISTEN_PID: &[u8] = b"LISTEN_PID=";

pub fn spawn(o: &SpawnOpts) -> io::Result<Spawned> {
    // ---- everything the child needs, before the fork ----
    let prog = cstr(o.prog.as_os_str().as_bytes())?;
    let mut argv_owned = vec![prog.clone()];
    for a in o.args {
        argv_owned.push(cstr(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());

    let drop_keys = [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ];
    let mut env_owned = Vec::new();
    for (k, v) in std::env::vars_os() {
        let ks = k.to_string_lossy();
        if drop_keys.contains(&ks.as_ref()) || o.env.iter().any(|(ek, _)| *ek == ks) {
            continue;
        }
        let mut kv: Vec<u8> = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_owned.push(cstr(&kv)?);
    }
    for (k, v) in o.env {
        env_owned.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    if !o.listen.is_empty() {
        env_owned.push(cstr(format!("LISTEN_FDS={}", o.listen.len()).as_bytes())?);
    }
    let mut listen_pid = vec![0u8; LISTEN_PID.len() + 21];
    listen_pid[..LISTEN_PID.len()].copy_from_slice(LISTEN_PID);
    let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|c| c.as_ptr()).collect();
    if !o.listen.is_empty() {
        envp.push(listen_pid.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let digits_at: *mut u8 = listen_pid[LISTEN_PID.len()..].as_mut_ptr();

    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null_fd = devnull.as_raw_fd();
    let err_fd = o.stderr.unwrap_or(null_fd);
    let sources: Vec<RawFd> = o.listen.to_vec();
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let moved_ptr = moved.as_mut_ptr();
    let floor = 3 + sources.len() as RawFd;

    let mut p = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_err());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let pipe_w_raw = pipe_w.as_raw_fd();

    let fork_at = Instant::now();
    // SAFETY: the child only makes async-signal-safe calls on memory
    // allocated above, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_err());
    }
    if pid == 0 {
        // SAFETY: (child) dup/dup2/sigaction/sigprocmask/getpid/execve/
        // write/_exit are async-signal-safe; writes go only to buffers sized
        // before the fork.
        unsafe {
            let err = libc::fcntl(pipe_w_raw, libc::F_DUPFD_CLOEXEC, floor);
            if err < 0 {
                libc::_exit(127);
            }
            let fail = || -> ! {
                let errno = *libc::__errno_location();
                libc::write(err, (&errno as *const i32).cast(), 4);
                libc::_exit(127)
            };
            for (i, &src) in sources.iter().enumerate() {
                let t = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, floor);
                if t < 0 {
                    fail();
                }
                *moved_ptr.add(i) = t;
            }
            if libc::dup2(null_fd, 0) < 0 || libc::dup2(err_fd, 1) < 0 || libc::dup2(err_fd, 2) < 0
            {
                fail();
            }
            for i in 0..sources.len() {
                if libc::dup2(*moved_ptr.add(i), 3 + i as RawFd) < 0 {
                    fail();
                }
            }
            // Rust ignores SIGPIPE; an ignored disposition survives exec.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            let mut n = libc::getpid() as u64;
            let mut d = [0u8; 20];
            let mut len = 0;
            loop {
                d[len] = b'0' + (n % 10) as u8;
                len += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for i in 0..len {
                *digits_at.add(i) = d[len - 1 - i];
            }
            *digits_at.add(len) = 0;
            libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail()
        }
    }
    drop(pipe_w);
    let mut errno = [0u8; 4];
    let mut got = 0;
    let mut r = std::fs::File::from(pipe_r);
    while got < 4 {
        match r.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let exec_at = Instant::now();
    // SAFETY: our unreaped child: its pid cannot have been recycled.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = last_err();
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(e);
    }
    // SAFETY: a new fd from the kernel, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    register(pid);
    let proc = Proc {
        pid,
        pidfd,
        status: None,
    };
    if got == 4 {
        drop(proc);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
    drop((argv_owned, env_owned, listen_pid, moved, devnull));
    Ok(Spawned {
        proc,
        fork_at,
        exec_at,
    })
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: pidfd_send_signal on our own pidfd; no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<u8>(),
                0,
            );
        }
    }

    /// Waits for the exit (no polling: the pidfd becomes readable) and
    /// reaps; the wait status, or None on timeout.
    pub fn wait_timeout(&mut self, t: Duration) -> Option<i32> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            let n =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if n > 0 {
                let mut st = 0;
                // SAFETY: reaping our own child.
                if unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) } == self.pid {
                    self.status = Some(st);
                    unregister(self.pid);
                    return self.status;
                }
            }
            if n == 0 || Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. The wait status.
    pub fn stop(&mut self, grace: Duration) -> i32 {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_timeout(grace) {
            return s;
        }
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10)).unwrap_or(-1)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(libc::SIGKILL);
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
            unregister(self.pid);
        }
    }
}

/// A std child killed and reaped when dropped (wrk, gunicorn).
pub struct Guard(pub std::process::Child);

impl Guard {
    pub fn new(c: std::process::Child) -> Guard {
        register(c.id() as i32);
        Guard(c)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        unregister(self.0.id() as i32);
    }
}

/// A blocking TCP listening socket with SO_REUSEADDR and the kernel's
/// maximum backlog: what baton's `--listen` binds.
pub fn listen_tcp(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls on an fd we own; sockaddr_in is built in full.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_err());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(last_err());
        }
        if libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) != 0 {
            return Err(last_err());
        }
        Ok(fd)
    }
}

/// A NOTIFY_SOCKET of the bench's own (what systemd is to a Type=notify
/// service): READY=1 arrives here.
pub struct Notify {
    sock: UnixDatagram,
    pub path: std::path::PathBuf,
}

impl Notify {
    pub fn bind(path: &Path) -> io::Result<Notify> {
        let _ = std::fs::remove_file(path);
        Ok(Notify {
            sock: UnixDatagram::bind(path)?,
            path: path.to_owned(),
        })
    }

    pub fn drain(&self) {
        let _ = self.sock.set_nonblocking(true);
        let mut buf = [0u8; 4096];
        while self.sock.recv(&mut buf).is_ok() {}
        let _ = self.sock.set_nonblocking(false);
    }

    /// The instant READY=1 arrived, or None after `t`.
    pub fn wait_ready(&self, t: Duration) -> Option<Instant> {
        let deadline = Instant::now() + t;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self.sock.set_read_timeout(Some(left));
            if let Ok(n) = self.sock.recv(&mut buf) {
                let at = Instant::now();
                if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") {
                    return Some(at);
                }
            }
        }
    }

    pub fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What /proc says about one process at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub children: u64,
    pub zombies: u64,
    /// voluntary + nonvoluntary context switches: each is a wakeup.
    pub ctx_switches: u64,
    /// Time on CPU (schedstat), ns.
    pub cpu_ns: u64,
    /// Bytes passed to write(2) and the like (`wchar` in /proc/PID/io):
    /// what baton writes, the state and history files above all.
    pub wchar: u64,
}

impl Snapshot {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rss_kib": self.rss_kib, "hwm_kib": self.hwm_kib, "fds": self.fds,
            "threads": self.threads, "children": self.children, "zombies": self.zombies,
            "ctx_switches": self.ctx_switches, "cpu_ns": self.cpu_ns, "wchar": self.wchar,
        })
    }
}

pub fn snapshot(pid: i32) -> io::Result<Snapshot> {
    let status = procs::status(pid)?;
    let field = |k: &str| status.num(k);
    let mut s = Snapshot {
        rss_kib: field("VmRSS"),
        hwm_kib: field("VmHWM"),
        threads: field("Threads"),
        ctx_switches: field("voluntary_ctxt_switches") + field("nonvoluntary_ctxt_switches"),
        ..Snapshot::default()
    };
    s.fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    s.cpu_ns = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    s.wchar = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    for p in procs::children(pid) {
        s.children += 1;
        if p.state == 'Z' {
            s.zombies += 1;
        }
    }
    Ok(s)
}
