//! What baton tells its own service manager: READY, STATUS, RELOADING,
//! STOPPING, WATCHDOG (sd_notify(3)).
//!
//! NOTIFY_SOCKET and WATCHDOG_* come from [`crate::inherit`], which has
//! removed them from the environment, so no generation can talk to systemd
//! as baton (with NotifyAccess=main systemd would refuse it anyway).
//! Messages are formatted by the sd-notify crate's `NotifyState`; the
//! socket is kept here, since the crate only sends to the address in the
//! (cleared) environment.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use sd_notify::NotifyState;

pub struct Systemd {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_status: String,
}

impl Systemd {
    /// Reports to `notify_socket` (NOTIFY_SOCKET), if baton was given one;
    /// `watchdog` is WATCHDOG_USEC.
    pub fn connect(notify_socket: Option<&OsStr>, watchdog: Option<Duration>) -> Systemd {
        let target = notify_socket.and_then(|s| match connect(s) {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET {}: {e}; not reporting to systemd",
                    s.to_string_lossy()
                );
                None
            }
        });
        Systemd {
            target,
            watchdog,
            last_status: String::new(),
        }
    }

    /// WATCHDOG=1 is due every this often (half of WATCHDOG_USEC).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
            .filter(|_| self.target.is_some())
            .map(|d| d / 2)
    }

    pub fn send(&self, states: &[NotifyState]) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            log::warn!(
                "notifying systemd ({}): {e}",
                msg.trim_end().replace('\n', ", ")
            );
        }
    }

    /// STATUS=, sent only when it changed.
    pub fn status(&mut self, line: &str) {
        if line != self.last_status {
            self.last_status = line.to_owned();
            self.send(&[NotifyState::Status(line)]);
        }
    }

    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_owned();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// EXTEND_TIMEOUT_USEC=: baton's start needs at least `more` longer.
    pub fn extend(&self, more: Duration) {
        let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// `/run/systemd/notify` or `@abstract`.
fn connect(s: &OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let bytes = s.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(s))?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path or @name",
            ));
        }
    };
    // std opens sockets close-on-exec: no generation inherits this one.
    // Non-blocking: a service manager that stops reading must not stall
    // baton's loop (a lost STATUS= is better than a stuck supervisor).
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    Ok((sock, addr))
}
