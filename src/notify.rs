//! baton's own notify socket: where generations send READY=1 and STATUS=.
//!
//! It plays systemd's part for the generations: a datagram socket with
//! SO_PASSCRED, so every message carries the sender's pid as the kernel saw
//! it. The supervisor accepts a message only from a process of a generation.
//! Messages with file descriptors attached have them closed and are dropped,
//! except a barrier (`BARRIER=1` with one fd, what `sd_notify_barrier(3)` and
//! `systemd-notify --ready` since v246 send): closing its fd is the answer
//! the sender waits for, given once the message was handled (the sender is
//! alive until then, so it can be matched to its generation), and the rest
//! of the message counts as usual.
//! Oversized messages are dropped whole; a flood is read in bounded batches
//! into one buffer, so it can neither block the loop nor grow memory.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, setsockopt,
    sockopt,
};

/// systemd reads notifications into a buffer of this size; so does baton.
pub const MAX_MESSAGE: usize = 4096;

/// At most this many datagrams are read per wake-up, so other events get a
/// turn under a flood.
pub const BATCH: usize = 64;

/// The most fds one datagram can carry (the kernel's SCM_MAX_FD). The
/// control buffer has room for all of them: when it is too small, the
/// kernel still installs as many fds as fit but flags the message
/// MSG_CTRUNC, and nix then refuses to iterate the control messages, so
/// those fds could not be found to be closed and would leak.
pub const MAX_FDS: usize = 253;

pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
    /// A private directory baton created (and removes) for the socket.
    private_dir: Option<PathBuf>,
    buf: Box<[u8; MAX_MESSAGE]>,
    /// The fd of the barrier last received, held until it is answered.
    barrier: Option<OwnedFd>,
}

/// One datagram as received.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A message with the sender's pid and its text.
    Message { pid: i32, text: Vec<u8> },
    /// Dropped before parsing, with the reason (pid if known).
    Dropped { pid: Option<i32>, reason: String },
}

impl NotifySocket {
    /// Binds `notify.sock` in `$RUNTIME_DIRECTORY` (given by systemd), else in
    /// a fresh private directory (mode 0700) under `scratch` ($XDG_RUNTIME_DIR
    /// or the temp dir; see [`crate::inherit`]).
    pub fn bind(runtime_dir: Option<&Path>, scratch: &Path) -> Result<NotifySocket> {
        let (dir, private_dir) = match runtime_dir {
            Some(d) => {
                restrict_dir(d);
                (d.to_owned(), None)
            }
            None => {
                let d = nix::unistd::mkdtemp(&scratch.join("baton.XXXXXX")).with_context(|| {
                    format!("creating a private directory in {}", scratch.display())
                })?;
                (d.clone(), Some(d))
            }
        };
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("creating the notify socket")?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path())?)
            .with_context(|| format!("binding the notify socket {}", path.display()))?;
        setsockopt(&fd, sockopt::PassCred, &true).context("SO_PASSCRED on the notify socket")?;
        // Only baton's user (and root) may send.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(NotifySocket {
            fd,
            path,
            private_dir,
            buf: Box::new([0; MAX_MESSAGE]),
            barrier: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket's fd and the directory baton made for it, if any: what a
    /// new image of baton needs to carry on with it (`baton upgrade`).
    pub fn parts(&self) -> (RawFd, Option<&Path>) {
        (self.fd.as_raw_fd(), self.private_dir.as_deref())
    }

    /// Takes over the notify socket an earlier image of baton bound. It is
    /// checked to be a datagram socket with SO_PASSCRED still set.
    ///
    /// # Safety
    /// `fd` must be an open fd that nothing else owns.
    pub unsafe fn adopt(
        fd: RawFd,
        path: PathBuf,
        private_dir: Option<PathBuf>,
    ) -> Result<NotifySocket> {
        // SAFETY: the caller hands over ownership of the open fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let kind = socket::getsockopt(&fd, sockopt::SockType)
            .with_context(|| format!("notify socket fd {}", fd.as_raw_fd()))?;
        if kind != SockType::Datagram {
            anyhow::bail!(
                "notify socket fd {} is not a datagram socket",
                fd.as_raw_fd()
            );
        }
        setsockopt(&fd, sockopt::PassCred, &true).context("SO_PASSCRED on the notify socket")?;
        Ok(NotifySocket {
            fd,
            path,
            private_dir,
            buf: Box::new([0; MAX_MESSAGE]),
            barrier: None,
        })
    }

    /// Answers the barrier last received (closes its fd: its sender goes
    /// on). [`NotifySocket::recv`] answers it too, if not done by then.
    pub fn answer_barrier(&mut self) {
        self.barrier = None;
    }

    /// Reads one datagram; None when the queue is empty.
    pub fn recv(&mut self) -> Option<Received> {
        self.answer_barrier();
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut self.buf[..])];
        let msg = match socket::recvmsg::<()>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return None,
            Err(nix::errno::Errno::EINTR) => return self.recv(),
            Err(e) => {
                return Some(Received::Dropped {
                    pid: None,
                    reason: format!("recvmsg failed: {e}"),
                });
            }
        };
        let mut pid = None;
        let mut received: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                    ControlMessageOwned::ScmRights(rights) => {
                        for fd in rights {
                            // SAFETY: the kernel installed this fd for us
                            // (MSG_CMSG_CLOEXEC); owning it closes it on drop.
                            received.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                    _ => {}
                }
            }
        }
        let fds = received.len();
        let (bytes, flags) = (msg.bytes, msg.flags);
        let reason = if flags.contains(MsgFlags::MSG_TRUNC) {
            Some(format!("{bytes} bytes, more than {MAX_MESSAGE}"))
        } else if flags.contains(MsgFlags::MSG_CTRUNC) {
            Some("too many control messages".into())
        } else if fds == 1 && is_barrier(&self.buf[..bytes]) {
            // Closing its fd is the answer; held until the message is handled.
            self.barrier = received.pop();
            None
        } else if fds > 0 {
            Some(format!("{fds} file descriptor(s) attached (closed)"))
        } else if pid.is_none() {
            Some("no sender credentials".into())
        } else {
            None
        };
        Some(match (reason, pid) {
            (Some(reason), pid) => Received::Dropped { pid, reason },
            (None, Some(pid)) => Received::Message {
                pid,
                text: self.buf[..bytes].to_vec(),
            },
            (None, None) => unreachable!("no credentials is a reason"),
        })
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(d) = &self.private_dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// $RUNTIME_DIRECTORY should be 0700 (RuntimeDirectoryMode=0700); tighten it
/// if baton owns it and it is not.
fn restrict_dir(d: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Ok(m) = std::fs::metadata(d)
        && m.mode() & 0o077 != 0
        && m.uid() == nix::unistd::geteuid().as_raw()
    {
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
    }
}

/// A `BARRIER=1` line: the sender waits until its fd is closed, which
/// tells it every message it sent before was read.
fn is_barrier(text: &[u8]) -> bool {
    text.split(|b| *b == b'\n').any(|l| l == b"BARRIER=1")
}

/// Nothing but `BARRIER=1`: a message that asks for nothing but its answer
/// (its sender need not belong to a generation, as with systemd).
pub fn only_barrier(text: &[u8]) -> bool {
    text.split(|b| *b == b'\n')
        .all(|l| l.is_empty() || l == b"BARRIER=1")
        && is_barrier(text)
}

/// What a notification says, as far as baton cares.
#[derive(Debug, Default, PartialEq)]
pub struct Message {
    pub ready: bool,
    pub status: Option<String>,
    pub stopping: bool,
    pub reloading: bool,
    /// `EXTEND_TIMEOUT_USEC=`: the sender needs at least this much more
    /// time to become ready (systemd 236+).
    pub extend_timeout: Option<std::time::Duration>,
}

/// Parses `KEY=VALUE` lines (sd_notify(3)). Pure; unknown keys are ignored,
/// as systemd does. Errors only on bytes that are not a notification at all.
pub fn parse(text: &[u8]) -> Result<Message, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_owned())?;
    if text.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let mut m = Message::default();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line without '=': {:?}", truncate(line, 40)));
        };
        match key {
            "READY" => m.ready = value == "1",
            "STATUS" => m.status = Some(truncate(value, 200).to_owned()),
            "STOPPING" => m.stopping = value == "1",
            "RELOADING" => m.reloading = value == "1",
            "EXTEND_TIMEOUT_USEC" => {
                // As systemd does: a value that is not a number is ignored.
                m.extend_timeout = value
                    .parse::<u64>()
                    .ok()
                    .map(std::time::Duration::from_micros)
            }
            _ => {}
        }
    }
    Ok(m)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn parses_notifications() {
        assert_eq!(
            parse(b"READY=1\n").unwrap(),
            Message {
                ready: true,
                ..Default::default()
            }
        );
        let m = parse(b"READY=1\nSTATUS=serving 2.0\nMAINPID=4\nX-CUSTOM=y").unwrap();
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("serving 2.0"));
        assert_eq!(m.extend_timeout, None);
        assert_eq!(
            parse(b"EXTEND_TIMEOUT_USEC=30000000\nSTATUS=warming up")
                .unwrap()
                .extend_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            parse(b"EXTEND_TIMEOUT_USEC=soon").unwrap().extend_timeout,
            None
        );
        assert_eq!(
            parse(b"EXTEND_TIMEOUT_USEC=-1").unwrap().extend_timeout,
            None
        );
        assert!(!parse(b"READY=0").unwrap().ready);
        assert!(parse(b"hello").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert!(parse(b"READY=1\0").is_err());
        assert_eq!(
            parse(format!("STATUS={}", "é".repeat(1000)).as_bytes())
                .unwrap()
                .status
                .unwrap()
                .chars()
                .count(),
            200
        );
    }

    #[test]
    fn credentials_and_oversize() {
        let dir = std::env::temp_dir().join(format!("baton-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = NotifySocket::bind(Some(&dir), &dir).unwrap();
        assert_eq!(s.recv(), None);
        let c = UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1", s.path()).unwrap();
        assert_eq!(
            s.recv(),
            Some(Received::Message {
                pid: std::process::id() as i32,
                text: b"READY=1".to_vec()
            })
        );
        c.send_to(&vec![b'x'; MAX_MESSAGE + 10], s.path()).unwrap();
        assert!(
            matches!(s.recv(), Some(Received::Dropped { reason, .. }) if reason.contains("more than"))
        );
        let path = s.path().to_owned();
        drop(s);
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    /// `BARRIER=1` with one fd (sd_notify_barrier) is a message like any
    /// other, its fd closed; any other fd-carrying message is dropped, its
    /// fds closed too.
    #[test]
    fn a_barrier_keeps_its_message_and_loses_its_fd() {
        let dir = std::env::temp_dir().join(format!("baton-notify-barrier-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = NotifySocket::bind(Some(&dir), &dir).unwrap();
        let c = UnixDatagram::unbound().unwrap();
        let addr = UnixAddr::new(s.path()).unwrap();
        let me = std::process::id() as i32;
        for (text, nfds, kept) in [
            (&b"BARRIER=1"[..], 1, true),
            (b"READY=1\nBARRIER=1", 1, true),
            (b"BARRIER=1\n", 1, true),
            (b"BARRIER=1", 2, false),
            (b"READY=1", 1, false),
            (b"BARRIER=10", 1, false),
            (b"X-BARRIER=1", 1, false),
        ] {
            let (r, w) = nix::unistd::pipe().unwrap();
            let fds = vec![w.as_raw_fd(); nfds];
            socket::sendmsg(
                c.as_raw_fd(),
                &[std::io::IoSlice::new(text)],
                &[socket::ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                Some(&addr),
            )
            .unwrap();
            drop(w);
            let got = s.recv().unwrap();
            let shown = String::from_utf8_lossy(text);
            let hup = || {
                let mut pfd = [nix::poll::PollFd::new(
                    r.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).unwrap();
                pfd[0]
                    .revents()
                    .unwrap()
                    .contains(nix::poll::PollFlags::POLLHUP)
            };
            // A kept barrier is answered once its message was handled.
            assert_eq!(hup(), !kept, "{shown:?}: answered before it was handled");
            s.answer_barrier();
            if kept {
                assert_eq!(
                    got,
                    Received::Message {
                        pid: me,
                        text: text.to_vec()
                    },
                    "{shown:?}"
                );
            } else {
                assert!(
                    matches!(got, Received::Dropped { .. }),
                    "{shown:?}: {got:?}"
                );
            }
            // Every copy of the write end is closed: the read end says EOF,
            // which is what a barrier's sender waits for.
            assert!(hup(), "{shown:?}: the fd was closed");
        }
        let m = parse(b"READY=1\nBARRIER=1").unwrap();
        assert!(m.ready);
        assert!(only_barrier(b"BARRIER=1") && only_barrier(b"BARRIER=1\n"));
        assert!(!only_barrier(b"READY=1\nBARRIER=1") && !only_barrier(b""));
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// As many fds as one datagram can carry: every one is closed. (With a
    /// control buffer too small for them the kernel installed the ones that
    /// fit and flagged MSG_CTRUNC, and those leaked.)
    #[test]
    fn the_most_fds_a_datagram_can_carry_are_all_closed() {
        let dir = std::env::temp_dir().join(format!("baton-notify-fds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = NotifySocket::bind(Some(&dir), &dir).unwrap();
        let c = UnixDatagram::unbound().unwrap();
        // Count fds on a file of this test's own, so that other tests
        // opening and closing fds meanwhile do not matter.
        let marker = dir.join("marker");
        let f = std::fs::File::create(&marker).unwrap();
        let addr = UnixAddr::new(s.path()).unwrap();
        let open_fds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == marker))
                .count()
        };
        for n in [1, 32, 33, MAX_FDS] {
            let fds = vec![f.as_raw_fd(); n];
            let cmsg = [socket::ControlMessage::ScmRights(&fds)];
            socket::sendmsg(
                c.as_raw_fd(),
                &[std::io::IoSlice::new(b"READY=1")],
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            )
            .unwrap();
            assert_eq!(open_fds(), 1);
            let got = s.recv();
            assert_eq!(
                got,
                Some(Received::Dropped {
                    pid: Some(std::process::id() as i32),
                    reason: format!("{n} file descriptor(s) attached (closed)")
                })
            );
            assert_eq!(open_fds(), 1, "{n} fds: every one closed");
        }
        drop((s, f));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
