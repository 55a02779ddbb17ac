//! The harness: a temporary release layout, the real baton binary started as
//! systemd would start it (listening socket on fd 3, LISTEN_FDS=1,
//! LISTEN_PID = baton's pid, NOTIFY_SOCKET = a datagram socket this harness
//! reads, as systemd would), the real example app as the releases, an HTTP
//! client and a load generator. Every wait polls a condition with a deadline;
//! on timeout the test fails with baton's log attached. Dropping a [`Rig`]
//! kills whatever it started.
//!
//! What is not about baton's own process (temp dirs, waiting, HTTP, the
//! load, the release layout, /proc, log timestamps) comes from testkit/,
//! shared with tests/systemd.rs and bench/; it is re-exported here so that
//! every test reads `use crate::util::*`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::cmd::{stderr, stdout};
use testkit::http::HttpError;
use testkit::layout::{self, Layout, cfg_text};
use testkit::wait::child_exit;

pub use testkit::TempDir;
pub use testkit::clock::log_time;
pub use testkit::http::release_pid as parse_hello;
pub use testkit::load::Load;
pub use testkit::procs::{Proc, alive, descendants, fd_count, fd_targets, procs, status_num};
pub use testkit::wait::wait_until;

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");
pub const APP: &str = env!("CARGO_BIN_EXE_example-app");

/// Default patience for anything a test waits on.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Rig {
    pub tmp: TempDir,
    /// `<tmp>/app`: the app dir (links, state).
    pub app_dir: PathBuf,
    /// `<tmp>/app/release`: releases and current.conf.
    pub release_dir: PathBuf,
    pub conf: PathBuf,
    /// `<tmp>/run`: RUNTIME_DIRECTORY given to baton (holds notify.sock).
    pub runtime_dir: PathBuf,
    pub listener: TcpListener,
    pub port: u16,
    systemd: UnixDatagram,
    pub systemd_path: PathBuf,
    notes: Mutex<Vec<String>>,
    pub log_path: PathBuf,
    pub baton: Option<Child>,
    /// Extra sockets passed after the TCP listener (fd 4, 5, ...).
    pub extra_fds: Vec<RawFd>,
    pub env: Vec<(String, String)>,
    /// Run baton as this (uid, gid) instead of the test's own user (set
    /// before `start`; the caller arranges the permissions it needs).
    pub run_as: Option<(u32, u32)>,
    /// The baton binary to start (a copy, for the upgrade tests).
    pub baton_bin: PathBuf,
    /// A command that execs the rest (`unshare -m ...`), put before the
    /// shell that starts baton; baton keeps the pid it gets.
    pub wrap: Vec<String>,
    /// Shell commands run before baton is exec'd (`mount ... &&`).
    pub sh_prefix: String,
    /// Where to read the state file, when not in `app_dir` (an app dir
    /// of baton's own, seen through /proc/PID/root).
    pub state_dir: Option<PathBuf>,
}

impl Rig {
    pub fn new(tag: &str) -> Rig {
        let tmp = TempDir::new(tag);
        let Layout {
            app_dir,
            release_dir,
            conf,
        } = Layout::create(tmp.join("app")).unwrap();
        let runtime_dir = tmp.join("run");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let systemd_path = tmp.0.join("systemd-notify.sock");
        let systemd = UnixDatagram::bind(&systemd_path).unwrap();
        systemd.set_nonblocking(true).unwrap();
        Rig {
            conf,
            log_path: tmp.0.join("baton.log"),
            tmp,
            app_dir,
            release_dir,
            runtime_dir,
            listener,
            port,
            systemd,
            systemd_path,
            notes: Mutex::new(Vec::new()),
            baton: None,
            extra_fds: Vec::new(),
            env: Vec::new(),
            run_as: None,
            baton_bin: PathBuf::from(BATON),
            wrap: Vec::new(),
            sh_prefix: String::new(),
            state_dir: None,
        }
    }

    /// The release layout under the app dir.
    fn layout(&self) -> Layout {
        Layout::new(&self.app_dir)
    }

    /// Writes release `v`: `app.v` (a link to the example app) and `cfg.v`
    /// with `{"release": v}` plus `knobs` (a JSON object body, may be empty).
    pub fn release(&self, v: &str, knobs: &str) {
        self.layout()
            .release(v, Path::new(APP), &cfg_text(v, knobs))
            .unwrap();
    }

    /// Replaces current.conf with `text` the way deploy scripts do: write
    /// beside it, then rename into place.
    pub fn write_conf(&self, text: &str) {
        self.layout().write_conf(text.as_bytes()).unwrap();
    }

    /// Points current.conf at release `v`.
    pub fn point(&self, v: &str) {
        self.layout().point(v).unwrap();
    }

    pub fn start(&mut self, args: &[&str]) {
        let child = self.spawn_baton(args);
        self.baton = Some(child);
    }

    /// Starts baton as systemd would: the listener on fd 3 (and extra fds
    /// after it), LISTEN_FDS, LISTEN_PID = baton's own pid (set by a shell
    /// that then execs baton, so the pid is the same), NOTIFY_SOCKET.
    pub fn spawn_baton(&self, args: &[&str]) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(&self.extra_fds);
        let mut cmd = match self.wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg("/bin/sh");
                c
            }
            None => Command::new("/bin/sh"),
        };
        cmd.arg("-c")
            .arg(format!(
                "{}LISTEN_PID=$$ WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
                self.sh_prefix
            ))
            .arg(&self.baton_bin)
            .arg("run")
            .arg("--config")
            .arg(&self.conf)
            .args(args)
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", vec!["app.socket"; fds.len()].join(":"))
            .env("NOTIFY_SOCKET", &self.systemd_path)
            .env("RUNTIME_DIRECTORY", &self.runtime_dir)
            .env("RUST_LOG", "debug")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let run_as = self.run_as;
        // SAFETY: between fork and exec only dup2, fcntl, setgroups, setgid
        // and setuid, all async-signal-safe system calls, on fds this
        // process owns.
        unsafe {
            cmd.pre_exec(move || {
                // Copy sources above the targets first, then place them.
                let n = fds.len() as RawFd;
                let mut moved = [0 as RawFd; 16];
                for (i, &fd) in fds.iter().enumerate() {
                    moved[i] = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 3 + n);
                }
                for (i, &tmp) in moved.iter().take(fds.len()).enumerate() {
                    if nix::libc::dup2(tmp, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = run_as
                    && (nix::libc::setgroups(0, std::ptr::null()) != 0
                        || nix::libc::setgid(gid) != 0
                        || nix::libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("starting baton")
    }

    pub fn baton_pid(&self) -> i32 {
        self.baton.as_ref().expect("baton started").id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Everything the fake systemd has received so far, one entry per
    /// datagram.
    pub fn notifications(&self) -> Vec<String> {
        self.drain_notifications();
        self.notes.lock().unwrap().clone()
    }

    /// Reads what baton sent the fake systemd, as systemd would promptly:
    /// a unix datagram socket holds only a few unread datagrams
    /// (net.unix.max_dgram_qlen), and a sender blocks when it is full.
    fn drain_notifications(&self) {
        let mut notes = self.notes.lock().unwrap();
        let mut buf = [0u8; 8192];
        while let Ok(n) = self.systemd.recv(&mut buf) {
            notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits for `cond`, failing the test with `what` and baton's log.
    pub fn wait(&self, what: &str, cond: impl FnMut() -> bool) {
        self.wait_for(what, PATIENCE, cond)
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        // Drain the fake systemd while waiting, or baton would block on it.
        let cond = || {
            self.drain_notifications();
            cond()
        };
        if !wait_until(timeout, cond) {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- baton log ---\n{}\n--- notifications ---\n{:#?}",
                self.log(),
                self.notifications()
            );
        }
    }

    pub fn wait_log(&self, needle: &str) {
        self.wait(&format!("log line containing {needle:?}"), || {
            self.log().contains(needle)
        });
    }

    pub fn wait_note(&self, needle: &str) {
        self.wait(&format!("notification containing {needle:?}"), || {
            self.notifications().iter().any(|n| n.contains(needle))
        });
    }

    /// The last STATUS= baton sent to its (fake) systemd.
    pub fn status(&self) -> String {
        self.notifications()
            .iter()
            .flat_map(|n| n.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            .next_back()
            .unwrap_or_default()
    }

    pub fn wait_status(&self, needle: &str) {
        self.wait(&format!("STATUS containing {needle:?}"), || {
            self.status().contains(needle)
        });
    }

    pub fn get(&self, path: &str) -> Result<(u16, String), HttpError> {
        http_get(self.port, path)
    }

    /// `(release, pid)` of whoever answers `GET /`.
    pub fn serving(&self) -> Option<(String, i32)> {
        let (code, body) = self.get("/").ok()?;
        if code != 200 {
            return None;
        }
        parse_hello(&body)
    }

    /// Waits until `GET /` is answered by release `v`; returns its pid.
    pub fn wait_serving(&self, v: &str) -> i32 {
        let mut pid = 0;
        self.wait(&format!("release {v} to serve"), || match self.serving() {
            Some((r, p)) if r == v => {
                pid = p;
                true
            }
            _ => false,
        });
        pid
    }

    /// Waits until the state file says release `v` is live and no rollout
    /// is in flight; returns the live pid.
    pub fn wait_live(&self, v: &str) -> i32 {
        let mut pid = 0;
        self.wait(
            &format!("state: app.{v} live with nothing starting"),
            || {
                let Some(s) = self.state() else { return false };
                let live = s["serving"]["release"]["name"].as_str() == Some(&format!("app.{v}"));
                let starting = s["generations"].as_array().is_some_and(|g| {
                    g.iter()
                        .any(|g| matches!(g["state"].as_str(), Some("starting" | "soaking")))
                });
                pid = s["serving"]["pid"].as_i64().unwrap_or(0) as i32;
                live && !starting
            },
        );
        pid
    }

    /// Waits until release `v` is live in a process other than `old`.
    pub fn wait_replaced(&self, v: &str, old: i32) -> i32 {
        self.wait(
            &format!("a generation other than pid {old} to serve {v}"),
            || {
                self.state().is_some_and(|s| {
                    s["serving"]["pid"]
                        .as_i64()
                        .is_some_and(|p| p as i32 != old)
                })
            },
        );
        self.wait_live(v)
    }

    /// Points current.conf at `v`, waits until generation `generation`
    /// serves it (state and STATUS), then stops `load` and asserts that no
    /// request failed and baton has exactly one child.
    pub fn roll_cleanly(&self, v: &str, generation: u64, load: Load) {
        self.point(v);
        let new = self.wait_live(v);
        self.wait_status(&format!(
            "serving app.{v} (pid {new}, generation {generation}): release {v} accepting"
        ));
        let report = load.stop();
        assert_eq!(report.failed, 0, "{:?}", report.errors);
        self.assert_children(1);
    }

    pub fn state(&self) -> Option<serde_json::Value> {
        let dir = self.state_dir.as_ref().unwrap_or(&self.app_dir);
        let text = std::fs::read(dir.join("baton.state")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The rollouts in the history file, oldest first (none without one).
    pub fn history(&self) -> Vec<serde_json::Value> {
        let dir = self.state_dir.as_ref().unwrap_or(&self.app_dir);
        std::fs::read(dir.join("baton.history"))
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|h| h["history"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Sends `sig` to baton.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.baton_pid()), sig).unwrap();
    }

    /// Waits for baton to exit; returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.baton.as_mut().expect("baton started");
        let status = child_exit(child, PATIENCE, Duration::from_millis(10));
        status.unwrap_or_else(|| panic!("baton did not exit\n{}", self.log()))
    }

    /// Processes whose parent is baton.
    pub fn children(&self) -> Vec<Proc> {
        testkit::procs::children(self.baton_pid())
    }

    /// Asserts baton has no zombie child and exactly `n` live children.
    pub fn assert_children(&self, n: usize) {
        self.wait(
            &format!("baton to have exactly {n} child(ren) and no zombie"),
            || {
                let c = self.children();
                c.iter().all(|p| p.state != 'Z') && c.len() == n
            },
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut b) = self.baton.take() {
            let pid = b.id() as i32;
            // Stop baton first: a running baton would restart a generation
            // killed here (after the list of them was taken), and the new
            // one would outlive the test. Stopped, it forks nothing; wait
            // for the stop to land, so a fork in progress is finished too.
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            wait_until(Duration::from_secs(2), || {
                procs()
                    .iter()
                    .find(|p| p.pid == pid)
                    .is_none_or(|p| matches!(p.state, 'T' | 'Z' | 'X'))
            });
            // Everything baton started (generations and their groups).
            let mut tree = descendants(pid);
            tree.push(pid);
            for p in tree {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            let _ = b.wait();
        }
    }
}

/// A rig serving release 1.0 (cfg knobs `one`), with 2.0 (knobs `two`) on
/// disk, baton started with `args`; returns it and the live pid.
pub fn serving(tag: &str, one: &str, two: &str, args: &[&str]) -> (Rig, i32) {
    let mut rig = Rig::new(tag);
    rig.release("1.0", one);
    rig.release("2.0", two);
    rig.point("1.0");
    rig.start(args);
    let pid = rig.wait_live("1.0");
    (rig, pid)
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a fresh connection
/// (Connection: close): (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), HttpError> {
    testkit::http::get_local(port, path).map(|r| (r.status, r.body))
}

/// A whole HTTP/1.1 reply: (status, body).
pub fn parse_response(buf: &[u8]) -> Result<(u16, String), HttpError> {
    testkit::http::parse(buf).map(|r| (r.status, r.body))
}

/// Runs the baton binary with `args` to completion; (status, stdout, stderr).
pub fn baton_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BATON)
        .args(args)
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Rig {
    /// As [`Rig::write_conf`], with `prepare` run on the new file before it
    /// is renamed into place (chmod, chown: baton must never see the file
    /// before it is ready).
    pub fn write_conf_prepared(&self, text: &[u8], prepare: impl FnOnce(&Path)) {
        layout::replace(&self.conf, text, |tmp| {
            prepare(tmp);
            Ok(())
        })
        .unwrap();
    }

    /// As [`Rig::wait_live`], for a generation other than the one in
    /// process `old`: right after `old` died, the state file may still name
    /// it for a moment.
    pub fn wait_live_anew(&self, v: &str, old: i32) -> i32 {
        self.wait(&format!("a generation of {v} other than pid {old}"), || {
            self.state().is_some_and(|s| {
                s["serving"]["pid"]
                    .as_i64()
                    .is_some_and(|p| p != old as i64)
            })
        });
        self.wait_live(v)
    }

    /// The pid of generation `id` from the state file, once it has one.
    pub fn wait_generation_pid(&self, id: u64) -> i32 {
        let mut pid = 0;
        self.wait(&format!("generation {id} to have a pid"), || {
            let Some(s) = self.state() else { return false };
            let found = s["generations"].as_array().and_then(|g| {
                g.iter()
                    .find(|g| g["generation"] == id)
                    .and_then(|g| g["pid"].as_i64())
            });
            pid = found.unwrap_or(0) as i32;
            pid != 0
        });
        pid
    }

    /// baton's log lines containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a log line containing every one of `needles`; returns it.
    pub fn wait_line(&self, needles: &[&str]) -> String {
        let mut line = String::new();
        self.wait(
            &format!("a log line containing all of {needles:?}"),
            || match self.log_lines(needles).into_iter().next() {
                Some(l) => {
                    line = l;
                    true
                }
                None => false,
            },
        );
        line
    }
}

/// A process in someone else's process group (a generation's), standing in
/// for one of an app's own workers: it sends whatever datagrams the test
/// hands it to a unix datagram socket, so that baton sees a sender that
/// belongs to the generation. Killed and reaped on drop.
pub struct GroupMember {
    pub pid: i32,
    cmd: std::fs::File,
    ack: std::fs::File,
}

/// The most fds one datagram may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

impl GroupMember {
    /// Forks a process that joins process group `pgid` and then waits for
    /// datagrams to send to `socket`.
    pub fn join(pgid: i32, socket: &Path) -> GroupMember {
        use nix::libc;
        use std::os::unix::ffi::OsStrExt;
        // Everything the child uses is allocated before the fork: the test
        // binary has threads, so the child may only make system calls.
        // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        assert!(path.len() < addr.sun_path.len(), "socket path too long");
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let devnull_fd = devnull.as_raw_fd();
        let (cmd_r, cmd_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (ack_r, ack_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (cmd_r_fd, ack_w_fd) = (cmd_r.as_raw_fd(), ack_w.as_raw_fd());
        let mut buf = vec![0u8; 1 << 17];
        let buf_ptr = buf.as_mut_ptr();
        // u64s: a control buffer must be aligned for cmsghdr.
        // SAFETY: CMSG_SPACE is arithmetic.
        let cspace = unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize;
        let mut cbuf = vec![0u64; cspace.div_ceil(8)];
        let cbuf_ptr = cbuf.as_mut_ptr();

        // SAFETY: the child makes only async-signal-safe system calls on
        // memory allocated above, and ends in _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: see above; every pointer is into this process's copy
            // of the buffers.
            unsafe {
                let read_exact = |p: *mut u8, n: usize| -> bool {
                    let mut got = 0;
                    while got < n {
                        let r = libc::read(cmd_r_fd, p.add(got).cast(), n - got);
                        if r < 0 && *libc::__errno_location() == libc::EINTR {
                            continue;
                        }
                        if r <= 0 {
                            return false;
                        }
                        got += r as usize;
                    }
                    true
                };
                let ack = |b: u8| {
                    libc::write(ack_w_fd, (&b as *const u8).cast(), 1);
                };
                // Hold no other fd of the test process: one open for writing
                // on a freshly copied binary would make baton's exec of it
                // fail with ETXTBSY for as long as this process lives.
                let mut keep = [cmd_r_fd, ack_w_fd, devnull_fd];
                keep.sort_unstable();
                let mut from = 3;
                for k in keep {
                    if k > from {
                        libc::syscall(libc::SYS_close_range, from, k - 1, 0);
                    }
                    from = k + 1;
                }
                libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
                if libc::setpgid(0, pgid) != 0 {
                    ack(1);
                    libc::_exit(1);
                }
                let sock = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                ack(if sock < 0 { 1 } else { 0 });
                loop {
                    let mut hdr = [0u8; 8];
                    if !read_exact(hdr.as_mut_ptr(), 8) {
                        libc::_exit(0);
                    }
                    let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
                    let nfds = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
                    if !read_exact(buf_ptr, len) {
                        libc::_exit(0);
                    }
                    let mut iov = libc::iovec {
                        iov_base: buf_ptr.cast(),
                        iov_len: len,
                    };
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_name = (&addr as *const libc::sockaddr_un).cast_mut().cast();
                    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    if nfds > 0 {
                        msg.msg_control = cbuf_ptr.cast();
                        msg.msg_controllen = libc::CMSG_SPACE((nfds * 4) as u32) as usize;
                        let c = libc::CMSG_FIRSTHDR(&msg);
                        (*c).cmsg_level = libc::SOL_SOCKET;
                        (*c).cmsg_type = libc::SCM_RIGHTS;
                        (*c).cmsg_len = libc::CMSG_LEN((nfds * 4) as u32) as usize;
                        let data = libc::CMSG_DATA(c) as *mut libc::c_int;
                        for i in 0..nfds {
                            *data.add(i) = devnull_fd;
                        }
                    }
                    let r = libc::sendmsg(sock, &msg, 0);
                    ack(if r < 0 { 2 } else { 0 });
                }
            }
        }
        drop((cmd_r, ack_w, buf, cbuf, devnull));
        let mut m = GroupMember {
            pid,
            cmd: std::fs::File::from(cmd_w),
            ack: std::fs::File::from(ack_r),
        };
        assert_eq!(m.read_ack(), 0, "the member could not join group {pgid}");
        m
    }

    fn read_ack(&mut self) -> u8 {
        let mut b = [9u8];
        self.ack.read_exact(&mut b).expect("member alive");
        b[0]
    }

    /// Sends one datagram with `nfds` copies of an fd for /dev/null
    /// attached (SCM_RIGHTS); returns once it is sent.
    pub fn send(&mut self, payload: &[u8], nfds: usize) {
        assert!(nfds <= MAX_FDS && payload.len() <= 1 << 17);
        let mut msg = (payload.len() as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&(nfds as u32).to_ne_bytes());
        msg.extend_from_slice(payload);
        self.cmd.write_all(&msg).unwrap();
        assert_eq!(self.read_ack(), 0, "sendmsg failed in the member");
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(self.pid), None);
    }
}

/// xorshift64*: deterministic, so a failure replays exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One STATUS= baton sent its (fake) systemd, and what the state file
/// said at that moment.
#[derive(Debug, Clone)]
pub struct StatusSeen {
    pub status: String,
    /// The state file's `status`, read while baton was stopped right
    /// after the datagram arrived (None: no state file).
    pub state_status: Option<String>,
}

impl Rig {
    /// Until `done` is set: reads every datagram baton sends its (fake)
    /// systemd as soon as it arrives; for each STATUS=, stops baton at once
    /// (SIGSTOP, so it cannot move on), reads the state file, and lets it
    /// go on (SIGCONT). Run it on a thread of its own while another drives
    /// baton without draining the notifications (no [`Rig::wait`]).
    pub fn freeze_on_each_status(&self, done: &std::sync::atomic::AtomicBool) -> Vec<StatusSeen> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let baton = Pid::from_raw(self.baton_pid());
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let mut fds = [PollFd::new(self.systemd.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(10u8)).unwrap_or(0) == 0 {
                continue;
            }
            while let Ok(n) = self.systemd.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let status = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .next_back()
                    .map(str::to_owned);
                if let Some(status) = status {
                    let _ = kill(baton, Signal::SIGSTOP);
                    wait_until(Duration::from_secs(5), || {
                        procs()
                            .iter()
                            .find(|p| p.pid == baton.as_raw())
                            .is_none_or(|p| matches!(p.state, 'T' | 'Z' | 'X'))
                    });
                    let state_status = self
                        .state()
                        .and_then(|s| s["status"].as_str().map(str::to_owned));
                    let _ = kill(baton, Signal::SIGCONT);
                    seen.push(StatusSeen {
                        status,
                        state_status,
                    });
                }
                self.notes.lock().unwrap().push(text);
            }
        }
        seen
    }
}
