//! Starting a generation (or any program baton runs): fork + execve, done
//! by hand.
//!
//! `std::process::Command` cannot do what socket activation needs: the
//! environment must carry `LISTEN_PID=<the child's own pid>`, which exists only
//! after the fork. So everything (argv, envp with a reserved `LISTEN_PID=`
//! buffer, the fd plan) is allocated before `fork`, and the child does nothing
//! but async-signal-safe system calls: move the sockets to fds 3.., write its
//! pid's digits into the buffer, reset signals, `setpgid`, `chdir`, `execve`.
//! A failure in the child is reported through a close-on-exec pipe: EOF
//! means the exec worked, 8 bytes name the step and errno that failed. The
//! parent does not wait for either; the supervisor polls the pipe.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc;
use nix::unistd::Pid;

use crate::config::Release;
use crate::inherit::FOR_BATON_ONLY;

/// What a generation's process is given besides its release.
pub struct Spec<'a> {
    pub release: &'a Release,
    /// Become fds 3, 4, ... in the child, in this order.
    pub listeners: &'a [RawFd],
    /// LISTEN_FDNAMES as received from systemd, if any.
    pub fdnames: Option<&'a str>,
    /// baton's own notify socket, given to the child as NOTIFY_SOCKET.
    pub notify_socket: &'a Path,
    /// The environment baton was started with ([`crate::inherit`]).
    pub env: &'a [(OsString, OsString)],
    /// Working directory (the app dir).
    pub cwd: &'a Path,
}

/// A started generation's leader process.
#[derive(Debug)]
pub struct Child {
    pub pid: Pid,
    /// pidfd of the leader, so a signal can never reach a recycled pid.
    /// None on kernels without pidfd_open (before 5.3).
    pub pidfd: Option<OwnedFd>,
    /// Read end of the exec-status pipe until the outcome is known: EOF
    /// when the exec worked, a report when it failed (see `exec_outcome`).
    pub exec_status: Option<OwnedFd>,
}

/// Why a generation could not be started.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnError {
    pub step: &'static str,
    pub errno: i32,
    /// pid of the child that failed before exec, left for the reaper.
    pub pid: Option<i32>,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed: {}",
            self.step,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for SpawnError {}

/// Steps the child can fail at, reported as an index through the pipe.
const STEPS: [&str; 6] = [
    "moving fds",
    "resetting signals",
    "setpgid",
    "chdir to the app dir",
    "execve",
    "dup",
];

fn cstring(bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError {
        step: "building argv/env (NUL byte)",
        errno: libc::EINVAL,
        pid: None,
    })
}

fn os_err(step: &'static str) -> SpawnError {
    SpawnError {
        step,
        errno: std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
        pid: None,
    }
}

/// close_range(2) flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the digits of any pid, plus the NUL.
const PID_DIGITS: usize = 20;

/// What every program baton starts for a release begins with: what baton
/// inherited, minus every variable meant for baton alone
/// ([`FOR_BATON_ONLY`]: an inherited NOTIFY_SOCKET or LISTEN_FDS is dropped,
/// never merely shadowed), then the release's own `"env"` (replacing an
/// inherited variable of the same name). current.conf never names a
/// variable baton sets itself (see `config::parse_opts`).
pub fn release_environment(
    inherited: &[(OsString, OsString)],
    release: &Release,
) -> Vec<(OsString, OsString)> {
    let own = &release.opts.env;
    let mut env: Vec<(OsString, OsString)> = inherited
        .iter()
        .filter(|(k, _)| {
            !FOR_BATON_ONLY.iter().any(|n| k.as_bytes() == n.as_bytes())
                && !k.to_str().is_some_and(|k| own.contains_key(k))
        })
        .cloned()
        .collect();
    env.extend(own.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// The generation's environment, less LISTEN_PID (written by the child):
/// [`release_environment`], then the generation's own LISTEN_FDS,
/// LISTEN_FDNAMES and NOTIFY_SOCKET, set last so nothing overrides them.
fn environment(spec: &Spec) -> Result<Vec<CString>, SpawnError> {
    let base = release_environment(spec.env, spec.release);
    let mut env = Vec::with_capacity(base.len() + 3);
    for (k, v) in &base {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstring(&kv)?);
    }
    env.push(cstring(
        format!("LISTEN_FDS={}", spec.listeners.len()).as_bytes(),
    )?);
    if let Some(names) = spec.fdnames {
        env.push(cstring(format!("LISTEN_FDNAMES={names}").as_bytes())?);
    }
    let mut notify = b"NOTIFY_SOCKET=".to_vec();
    notify.extend_from_slice(spec.notify_socket.as_os_str().as_bytes());
    env.push(cstring(&notify)?);
    Ok(env)
}

/// A program to start, with everything it needs prepared before the fork.
pub struct Exec {
    path: CString,
    /// argv, argv[0] first.
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Add `LISTEN_PID=<the child's own pid>` (socket activation).
    listen_pid: bool,
    /// Become fds 3, 4, ... in the child, in this order.
    fds: Vec<RawFd>,
    /// Replace fds 0, 1, 2 in the child (None: keep baton's).
    stdio: [Option<RawFd>; 3],
    cwd: CString,
}

impl Exec {
    /// A generation: `bin -c cfg` with the listening sockets at fds 3..,
    /// the environment of `environment` and LISTEN_PID.
    pub fn generation(spec: &Spec) -> Result<Exec, SpawnError> {
        let path = cstring(spec.release.bin.as_os_str().as_bytes())?;
        Ok(Exec {
            argv: vec![
                path.clone(),
                cstring(b"-c")?,
                cstring(spec.release.cfg.as_os_str().as_bytes())?,
            ],
            path,
            env: environment(spec)?,
            listen_pid: true,
            fds: spec.listeners.to_vec(),
            stdio: [None; 3],
            cwd: cstring(spec.cwd.as_os_str().as_bytes())?,
        })
    }

    /// Any other program baton runs: `path` with `args`, exactly `env`, in
    /// `cwd`, with no fds beyond 0-2.
    pub fn program(
        path: &Path,
        args: &[&OsStr],
        env: &[(OsString, OsString)],
        cwd: &Path,
    ) -> Result<Exec, SpawnError> {
        let path = cstring(path.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for a in args {
            argv.push(cstring(a.as_bytes())?);
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstring(&kv)?);
        }
        Ok(Exec {
            path,
            argv,
            env: envp,
            listen_pid: false,
            fds: Vec::new(),
            stdio: [None; 3],
            cwd: cstring(cwd.as_os_str().as_bytes())?,
        })
    }

    /// Puts `fd` at fd `n` (0, 1 or 2) in the child.
    pub fn stdio(mut self, n: usize, fd: RawFd) -> Exec {
        self.stdio[n] = Some(fd);
        self
    }
}

/// Starts a generation (see [`Exec::generation`]).
pub fn spawn(spec: &Spec) -> Result<Child, SpawnError> {
    start(&Exec::generation(spec)?)
}

/// Forks and execs `e` in a process group of its own. Returns at once: the
/// exec's outcome is read later from [`Child::exec_status`].
pub fn start(e: &Exec) -> Result<Child, SpawnError> {
    // ---- everything the child needs, allocated before the fork ----
    let mut argv: Vec<*const libc::c_char> = e.argv.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());

    // LISTEN_PID=: the child writes its pid's digits here, then a NUL.
    let mut listen_pid = vec![0u8; LISTEN_PID_PREFIX.len() + PID_DIGITS + 1];
    listen_pid[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
    // One base pointer for both uses: envp reads the buffer, the child
    // writes the digits into it.
    let listen_pid_base: *mut u8 = listen_pid.as_mut_ptr();
    let mut envp: Vec<*const libc::c_char> = e.env.iter().map(|c| c.as_ptr()).collect();
    let listen_pid_digits: *mut u8 = if e.listen_pid {
        envp.push(listen_pid_base.cast_const().cast());
        // SAFETY: the prefix is shorter than the buffer (sized above).
        unsafe { listen_pid_base.add(LISTEN_PID_PREFIX.len()) }
    } else {
        std::ptr::null_mut()
    };
    envp.push(std::ptr::null());

    // Where each source fd goes: stdio first, then the sockets at 3, 4, ...
    let mut sources: Vec<RawFd> = Vec::with_capacity(e.fds.len() + 3);
    let mut targets: Vec<RawFd> = Vec::with_capacity(e.fds.len() + 3);
    for (n, fd) in e.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            sources.push(*fd);
            targets.push(n as RawFd);
        }
    }
    for (i, fd) in e.fds.iter().enumerate() {
        sources.push(*fd);
        targets.push(3 + i as RawFd);
    }
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let moved_ptr = moved.as_mut_ptr();
    // Temporary copies land at or above this, clear of the targets 3..3+n.
    let floor = 3 + e.fds.len() as RawFd;

    let mut pipe_fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we own; O_CLOEXEC keeps
    // them out of every exec'd program; O_NONBLOCK lets the loop read the
    // outcome without waiting (the child's one 8-byte write never blocks).
    if unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(os_err("creating the exec status pipe"));
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    let (err_r, err_w) = unsafe {
        (
            OwnedFd::from_raw_fd(pipe_fds[0]),
            OwnedFd::from_raw_fd(pipe_fds[1]),
        )
    };
    let err_w_raw = err_w.as_raw_fd();

    // SAFETY: baton is single-threaded (the supervisor never spawns threads),
    // so the child is a faithful copy; it only runs `child_exec`, which makes
    // async-signal-safe calls on memory allocated above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see `child_exec`.
        unsafe {
            child_exec(ChildPlan {
                path: e.path.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                cwd: e.cwd.as_ptr(),
                sources: &sources,
                targets: &targets,
                moved: moved_ptr,
                floor,
                listen_pid_digits,
                err_w: err_w_raw,
            })
        }
    }

    // ---- parent ----
    drop(err_w);
    let child = Pid::from_raw(pid);
    // Also set the group from this side, so that a signal to the group can
    // never miss a child that has not reached its own setpgid yet. After the
    // exec this fails with EACCES, which means the child already did it.
    let _ = nix::unistd::setpgid(child, child);
    // The child's copies of argv/envp are its own (copy-on-write): ours can
    // go. Whether the exec worked is read from `exec_status` when the loop
    // sees it readable, so baton never waits for a child's exec.
    drop((argv, envp, listen_pid, moved));
    Ok(Child {
        pid: child,
        pidfd: pidfd_open(child),
        exec_status: Some(err_r),
    })
}

/// What the exec-status pipe says: None while the child has neither exec'd
/// nor failed, Some(Ok) once it exec'd (EOF), Some(Err) with the step that
/// failed. The report is 8 bytes, written at once (less than PIPE_BUF), so
/// it is read whole or not at all.
pub fn exec_outcome(pipe: &OwnedFd, pid: Pid) -> Option<Result<(), SpawnError>> {
    let mut report = [0u8; 8];
    loop {
        // SAFETY: reading into our own buffer from the pipe we own.
        let n = unsafe { libc::read(pipe.as_raw_fd(), report.as_mut_ptr().cast(), report.len()) };
        if n == 0 {
            return Some(Ok(()));
        }
        if n == report.len() as isize {
            let step = u32::from_ne_bytes(report[..4].try_into().unwrap()) as usize;
            let errno = i32::from_ne_bytes(report[4..].try_into().unwrap());
            return Some(Err(SpawnError {
                step: STEPS.get(step).copied().unwrap_or("exec"),
                errno,
                pid: Some(pid.as_raw()),
            }));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) if n < 0 => continue,
            Some(libc::EAGAIN) if n < 0 => return None,
            _ => {
                return Some(Err(SpawnError {
                    step: "reading the exec status",
                    errno: libc::EIO,
                    pid: Some(pid.as_raw()),
                }));
            }
        }
    }
}

/// Raw pointers into memory the parent allocated before forking.
struct ChildPlan<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    sources: &'a [RawFd],
    targets: &'a [RawFd],
    moved: *mut RawFd,
    floor: RawFd,
    listen_pid_digits: *mut u8,
    err_w: RawFd,
}

/// The child's side of `spawn`. Only async-signal-safe calls; no allocation.
///
/// # Safety
/// Must be called only in the child right after `fork`, with every pointer in
/// `plan` valid (they point into the parent's copy-on-write memory).
unsafe fn child_exec(plan: ChildPlan) -> ! {
    // SAFETY (whole body): each call below is async-signal-safe per
    // signal-safety(7) or a plain system call (fcntl, dup2, close_range, getrlimit, sigprocmask, sigaction, setpgid, chdir,
    // getpid, execve, write, _exit), and writes go only to buffers the parent
    // sized for them before the fork.
    unsafe {
        // The error pipe first: it may sit on one of the target numbers.
        let err = libc::fcntl(plan.err_w, libc::F_DUPFD_CLOEXEC, plan.floor);
        if err < 0 {
            libc::_exit(127);
        }
        let fail = |step: u32| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&step.to_ne_bytes());
            msg[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(err, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        };
        // Copy every source above the targets (close-on-exec), then place the
        // copies at their targets (0-2 for stdio, 3, 4, ... for sockets).
        // dup2 from a different fd clears FD_CLOEXEC on the target, which is
        // what lets the socket cross the exec.
        for (i, &src) in plan.sources.iter().enumerate() {
            let tmp = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, plan.floor);
            if tmp < 0 {
                fail(5);
            }
            *plan.moved.add(i) = tmp;
        }
        for (i, &target) in plan.targets.iter().enumerate() {
            if libc::dup2(*plan.moved.add(i), target) < 0 {
                fail(0);
            }
        }
        // Whatever baton itself inherited without CLOEXEC (a shell's stray
        // fds, say) must not reach the app: mark everything from `floor` up
        // close-on-exec. Our own copies there already are.
        if libc::syscall(
            libc::SYS_close_range,
            plan.floor as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            // Kernels before 5.11: walk the fd table by hand.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(65536) as RawFd
            } else {
                1024
            };
            for fd in plan.floor..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        // Default signal mask and dispositions (baton blocks the signals it
        // reads through signalfd, and Rust ignores SIGPIPE; neither may leak).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            fail(1);
        }
        // The raw system call: glibc's sigaction() refuses the two
        // real-time signals it reserves (32, 33), but an ignored one would
        // still be inherited. All-zero is SIG_DFL, no flags, empty mask.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(2);
        }
        if libc::chdir(plan.cwd) != 0 {
            fail(3);
        }
        // LISTEN_PID = our own pid, digits written into the reserved buffer.
        if !plan.listen_pid_digits.is_null() {
            write_pid(plan.listen_pid_digits);
        }
        libc::execve(plan.path, plan.argv, plan.envp);
        fail(4)
    }
}

/// Writes our pid's digits and a NUL at `out`.
///
/// # Safety
/// `out` must have room for [`PID_DIGITS`] + 1 bytes. Async-signal-safe.
unsafe fn write_pid(out: *mut u8) {
    // SAFETY: getpid is async-signal-safe; the writes stay within the
    // PID_DIGITS + 1 bytes the caller reserved.
    unsafe {
        let mut pid = libc::getpid() as u64;
        let mut digits = [0u8; PID_DIGITS];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            *out.add(i) = digits[n - 1 - i];
        }
        *out.add(n) = 0;
    }
}

mod signal;
pub use signal::{pidfd_open, signal_group, signal_leader};

#[cfg(test)]
mod tests;
