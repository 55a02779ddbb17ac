//! Handing baton's state to a new image of itself, for `baton upgrade`.
//!
//! An upgrade replaces the program baton runs, not the process: the pid
//! (systemd's MainPID), the listening sockets, the notify socket, the lock,
//! and every generation (still baton's children, so `waitpid` keeps
//! working) stay. What the old image knows goes to the new one as a
//! [`Handover`]: JSON in a memfd whose fd number is in [`ENV`], with the fds
//! it names left open across the exec. Deadlines travel as CLOCK_MONOTONIC
//! readings ([`crate::clock::mono`]), so a generation's ready timeout or
//! probation ends when it would have.
//!
//! The old image execs only after the new binary has read this very
//! handover and said it can adopt it (`baton handover-check`, run as a
//! child with the handover on stdin). The format is versioned: an image
//! adopts only [`FORMAT`]. If the new image still cannot adopt after the
//! exec, it execs the previous image again (an fd to it is in
//! [`PREVIOUS_EXE_ENV`]), which takes its state back and records the
//! upgrade as failed with the reason in [`REFUSED_ENV`].

use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::core::{Core, GenId};
use crate::state::UpgradeInfo;

/// The handover's format. Bump it whenever [`Handover`] (or anything it
/// holds, the core's state included) changes in a way an image of the
/// other format would misread.
///
/// 2: the core keeps a bounded history of rollouts (not just the last), and
/// the release held back after a crash in probation.
/// 3: releases carry their own settings (readiness, stop signal, env) and a
/// starting generation its readiness progress; an image of format 2 would
/// drop them silently.
pub const FORMAT: u32 = 3;

// The variables that carry it across the exec are read with everything else
// baton inherits.
pub use crate::inherit::{FAIL_ADOPT_ENV, HANDOVER_ENV as ENV, PREVIOUS_EXE_ENV, REFUSED_ENV};

/// Everything one image of baton hands the next.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    pub format: u32,
    /// The version of the image that wrote it.
    pub version: String,
    /// baton's pid: the image that adopts must be the same process.
    pub pid: u32,
    /// When baton (the process) started.
    pub started: SystemTime,
    pub core: Core,
    /// Every generation leader not yet reaped, with its fds.
    pub children: Vec<ChildFds>,
    pub listen_fds: Vec<RawFd>,
    pub listen_fdnames: Option<String>,
    /// Socket files baton created for `--listen unix:/path`.
    pub created_paths: Vec<PathBuf>,
    pub notify_fd: RawFd,
    pub notify_path: PathBuf,
    pub notify_private_dir: Option<PathBuf>,
    pub lock_fd: RawFd,
    /// systemd's NOTIFY_SOCKET and WATCHDOG_USEC, taken at baton's start.
    pub systemd_socket: Option<OsString>,
    pub watchdog: Option<Duration>,
    /// The environment generations start from.
    pub env: Vec<(OsString, OsString)>,
    /// current.conf as baton last read it (see [`ConfStamp`]).
    pub conf_read: Option<ConfStamp>,
    /// Earlier upgrades' count, and this one (in progress).
    pub upgrade: UpgradeInfo,
}

/// A generation leader's fds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildFds {
    pub id: GenId,
    pub pid: i32,
    pub pidfd: Option<RawFd>,
    /// The exec-status pipe, while the exec's outcome is not known.
    pub exec_status: Option<RawFd>,
}

/// Enough of current.conf's metadata to tell whether it changed since baton
/// last read it (an edit during the exec is then read by the new image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl ConfStamp {
    /// The stamp of `path` now (of the link itself if it is one: swapping a
    /// link is a change).
    pub fn of(path: &std::path::Path) -> Option<ConfStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(ConfStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

impl Handover {
    /// Writes the handover into a new memfd (close-on-exec until the exec
    /// that hands it over clears the flag).
    pub fn to_memfd(&self) -> Result<OwnedFd> {
        let fd =
            nix::sys::memfd::memfd_create("baton-handover", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .context("memfd_create for the handover")?;
        let mut f = std::fs::File::from(fd);
        serde_json::to_writer(&mut f, self).context("writing the handover")?;
        f.flush().context("writing the handover")?;
        f.rewind().context("rewinding the handover")?;
        Ok(OwnedFd::from(f))
    }

    /// Parses a handover and checks that this image can adopt it.
    pub fn parse(bytes: &[u8]) -> Result<Handover> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
            version: String,
        }
        let head: Head =
            serde_json::from_slice(bytes).context("the handover is not a baton handover")?;
        if head.format != FORMAT {
            bail!(
                "baton {} cannot adopt a handover of format {} from baton {} (it adopts format {FORMAT})",
                env!("CARGO_PKG_VERSION"),
                head.format,
                head.version
            );
        }
        serde_json::from_slice(bytes).with_context(|| {
            format!(
                "reading the handover of baton {} (format {FORMAT})",
                head.version
            )
        })
    }

    /// Reads and parses the handover in the memfd `fd`, from its start (the
    /// check that ran before the exec read the same file), leaving the fd
    /// open and its offset alone.
    pub fn read(fd: BorrowedFd) -> Result<Handover> {
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = nix::sys::uio::pread(fd, &mut buf, bytes.len() as i64)
                .context("reading the handover")?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        Handover::parse(&bytes)
    }

    /// Every fd the handover names, for the exec (which must not close them).
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = self.listen_fds.clone();
        fds.push(self.notify_fd);
        fds.push(self.lock_fd);
        for c in &self.children {
            fds.extend(c.pidfd);
            fds.extend(c.exec_status);
        }
        fds
    }
}

/// Sets or clears FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: the fd is borrowed only for this fcntl call; the caller keeps
    // it open.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(|_| ())
}

/// `baton handover-check`: reads a handover on stdin and says whether this
/// binary can adopt it (exit 0) or why not (the reason on stderr, exit 1).
pub fn check_stdin() -> u8 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!(
            "baton {}: reading the handover: {e}",
            env!("CARGO_PKG_VERSION")
        );
        return 1;
    }
    match Handover::parse(&bytes) {
        Ok(h) => {
            println!(
                "baton {} can adopt the handover of baton {} (format {FORMAT}, {} generation(s))",
                env!("CARGO_PKG_VERSION"),
                h.version,
                h.children.len()
            );
            0
        }
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

/// An fd open on the running image itself (for going back to it), or None.
pub fn open_own_image() -> Option<OwnedFd> {
    let f = std::fs::File::open("/proc/self/exe").ok()?;
    let fd = OwnedFd::from(f);
    // Open across the exec (the new image closes it or execs it).
    set_cloexec(fd.as_raw_fd(), false).ok()?;
    Some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        let h = Handover {
            format: FORMAT,
            version: "0.1.0".into(),
            pid: 1,
            started: SystemTime::UNIX_EPOCH,
            core: Core::new(Default::default()),
            children: vec![],
            listen_fds: vec![3],
            listen_fdnames: None,
            created_paths: vec![],
            notify_fd: 4,
            notify_path: "/run/app/notify.sock".into(),
            notify_private_dir: None,
            lock_fd: 5,
            systemd_socket: None,
            watchdog: None,
            env: vec![],
            conf_read: None,
            upgrade: UpgradeInfo {
                seq: 1,
                path: "/usr/bin/baton".into(),
                from_version: "0.1.0".into(),
                to_version: None,
                result: crate::state::RolloutResult::InProgress,
                reason: None,
                started_at: 0.0,
                finished_at: None,
            },
        };
        serde_json::to_value(&h).unwrap()
    }

    #[test]
    fn a_handover_of_another_format_is_refused_with_both_versions_named() {
        let mut v = sample();
        assert!(Handover::parse(v.to_string().as_bytes()).is_ok());
        v["format"] = (FORMAT + 1).into();
        v["version"] = "9.0.0".into();
        let e = format!(
            "{:#}",
            Handover::parse(v.to_string().as_bytes()).unwrap_err()
        );
        assert!(
            e.contains(&format!("format {}", FORMAT + 1))
                && e.contains("baton 9.0.0")
                && e.contains(env!("CARGO_PKG_VERSION")),
            "{e}"
        );
        let mut v = sample();
        v.as_object_mut().unwrap().remove("core");
        let e = format!(
            "{:#}",
            Handover::parse(v.to_string().as_bytes()).unwrap_err()
        );
        assert!(e.contains("core"), "a missing part is named: {e}");
        let e = format!("{:#}", Handover::parse(b"not json").unwrap_err());
        assert!(e.contains("not a baton handover"), "{e}");
    }

    #[test]
    fn the_handover_round_trips_through_a_memfd() {
        let v = sample();
        let h: Handover = serde_json::from_value(v.clone()).unwrap();
        let fd = h.to_memfd().unwrap();
        let back = Handover::read(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        // Read from the start whatever the offset.
        let mut f = std::fs::File::from(fd);
        let mut sink = Vec::new();
        f.read_to_end(&mut sink).unwrap();
        assert!(Handover::read(std::os::fd::AsFd::as_fd(&f)).is_ok());
    }
}
