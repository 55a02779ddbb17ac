//! Signals to a generation through its pidfd, immune to pid reuse: the
//! leader alone or its whole process group.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;
use nix::unistd::Pid;

use super::Child;

/// A pidfd for `pid` (None where the kernel has none, or it is gone).
pub fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (always
    // close-on-exec) or -1. (For an unreaped child the pid cannot have been
    // recycled; a caller passing any other pid checks what it opened.)
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2); signal 0 only checks that the process is not
/// reaped yet.
fn pidfd_send_signal(fd: &OwnedFd, sig: libc::c_int) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd we own, a valid signal number
    // (or 0), no siginfo and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// Sends `sig` through the pidfd (immune to pid reuse), or by pid where the
/// kernel has no pidfds. ESRCH (already gone) is not an error.
pub fn signal_leader(child: &Child, sig: nix::sys::signal::Signal) -> nix::Result<()> {
    let r = match &child.pidfd {
        Some(fd) => pidfd_send_signal(fd, sig as libc::c_int),
        None => nix::sys::signal::kill(child.pid, sig),
    };
    match r {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Signals a generation: its whole process group (the leader and its own
/// workers) when the leader still leads it, else the leader alone.
///
/// A process group has no pidfd (PIDFD_SIGNAL_PROCESS_GROUP needs Linux 6.9
/// and follows the leader into whatever group it is in now), so the group
/// is signalled by number, the leader's pid. That number is safe while the
/// leader is unreaped (even a zombie holds its pid), and the pidfd says
/// whether it is: a reaped leader's pid may be someone else's by now, so
/// nothing is sent. Only baton reaps its children, in the same thread, so
/// nothing can reap the leader between the check and the signal.
pub fn signal_group(child: &Child, sig: nix::sys::signal::Signal) -> nix::Result<()> {
    if let Some(fd) = &child.pidfd {
        match pidfd_send_signal(fd, 0) {
            Err(nix::errno::Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
    }
    match nix::unistd::getpgid(Some(child.pid)) {
        Ok(pgid) if pgid == child.pid => match nix::sys::signal::killpg(child.pid, sig) {
            Err(nix::errno::Errno::ESRCH) => signal_leader(child, sig),
            other => other,
        },
        _ => signal_leader(child, sig),
    }
}
