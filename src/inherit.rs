//! What baton inherits from whoever started it, read in one place.
//!
//! systemd hands baton its sockets and a few variables meant for baton
//! alone: LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES (the sockets), NOTIFY_SOCKET
//! and WATCHDOG_* (where to report), RUNTIME_DIRECTORY (where to put its own
//! notify socket). [`Inherited::take`] reads them all once, at the start of
//! `baton run` while the process is still single-threaded, removes the ones
//! meant for baton alone from the environment, and keeps the rest as the
//! environment every generation starts from. A generation never sees an
//! inherited value of those names: the spawner drops them by name
//! ([`FOR_BATON_ONLY`]) before setting its own, whatever their order.
//!
//! The operator commands read only the two things they share with the
//! daemon: whose home `~/` means ([`home`]) and whether stderr is the
//! journal ([`journal_stream`]). No other module reads the environment.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

/// `baton upgrade` ([`crate::handover`]): names the fd of the memfd holding
/// the handover.
pub const HANDOVER_ENV: &str = "BATON_HANDOVER";
/// Names an fd open on the image that wrote the handover, to go back to.
pub const PREVIOUS_EXE_ENV: &str = "BATON_PREVIOUS_EXE";
/// Why a new image handed the state back (set when it execs the previous
/// image again).
pub const REFUSED_ENV: &str = "BATON_UPGRADE_REFUSED";
/// A fault to inject, for testing the way back: an image started with it
/// refuses to adopt what it was handed, with this reason.
pub const FAIL_ADOPT_ENV: &str = "BATON_FAIL_ADOPT";

/// Variables that describe baton's own service (or hand its state from one
/// image to the next), never a generation's. A generation gets its own
/// values of LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES and NOTIFY_SOCKET from
/// the spawner, and none of the others.
pub const FOR_BATON_ONLY: [&str; 11] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    HANDOVER_ENV,
    PREVIOUS_EXE_ENV,
    REFUSED_ENV,
    FAIL_ADOPT_ENV,
];

/// Everything `baton run` takes from its parent.
#[derive(Debug)]
pub struct Inherited {
    /// The sockets passed for this pid (LISTEN_FDS, LISTEN_PID checked by
    /// listenfd), in order; validated by [`crate::sockets`].
    pub listen_fds: Vec<RawFd>,
    /// Why LISTEN_FDS was set but passed nothing to baton (LISTEN_PID
    /// names another process), for the error if no socket is left.
    pub listen_ignored: Option<String>,
    /// LISTEN_FDNAMES, passed on to generations unchanged.
    pub listen_fdnames: Option<String>,
    /// NOTIFY_SOCKET: where systemd listens for baton's own READY/STATUS.
    pub notify_socket: Option<OsString>,
    /// WATCHDOG_USEC, when WATCHDOG_PID (if set) is baton's pid.
    pub watchdog: Option<Duration>,
    /// RUNTIME_DIRECTORY (the first, if systemd gave several).
    pub runtime_dir: Option<PathBuf>,
    /// Where baton makes a private directory when there is no
    /// RUNTIME_DIRECTORY: $XDG_RUNTIME_DIR, else the temp dir.
    pub scratch_dir: PathBuf,
    /// The rest of the environment: what every generation starts from.
    pub env: Vec<(OsString, OsString)>,
    /// Set when an earlier image of baton exec'd this one (`baton upgrade`).
    pub upgrade: Option<FromImage>,
}

/// What an earlier image of baton left for this one (see [`crate::handover`]).
#[derive(Debug)]
pub struct FromImage {
    /// The memfd holding the handover.
    pub handover: RawFd,
    /// An fd open on the earlier image, to go back to if this one cannot
    /// adopt the handover.
    pub previous_exe: Option<RawFd>,
    /// Set when a newer image could not adopt the handover and exec'd this
    /// one again: why.
    pub refused: Option<String>,
    /// [`FAIL_ADOPT_ENV`]: refuse to adopt, for testing.
    pub fail_adopt: Option<String>,
}

impl Inherited {
    /// Reads what baton inherited and clears the variables meant for baton
    /// alone. Must run before any thread exists (it edits the environment).
    pub fn take() -> Result<Inherited> {
        let listen_fdnames = std::env::var("LISTEN_FDNAMES").ok();
        let listen_pid = std::env::var("LISTEN_PID").ok();
        let watchdog = sd_notify::watchdog_enabled();
        let notify_socket = std::env::var_os("NOTIFY_SOCKET");
        let runtime_dir = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .map(PathBuf::from)
            })
            .filter(|p| p.is_dir());
        let scratch_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let fd_var = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<RawFd>().ok())
                .filter(|fd| *fd > 2)
        };
        let upgrade = fd_var(HANDOVER_ENV).map(|fd| FromImage {
            handover: fd,
            previous_exe: fd_var(PREVIOUS_EXE_ENV),
            refused: std::env::var(REFUSED_ENV).ok(),
            fail_adopt: std::env::var(FAIL_ADOPT_ENV).ok(),
        });
        let listen_fds_var = std::env::var_os("LISTEN_FDS");
        // SAFETY: called from `baton run` before any thread is spawned (see
        // supervisor::run), so nothing can read the environment concurrently.
        unsafe {
            for name in FOR_BATON_ONLY {
                std::env::remove_var(name);
            }
        }
        let (listen_fds, listen_ignored) = listen_fds(listen_fds_var, listen_pid)?;
        if let Some(why) = &listen_ignored {
            log::warn!("{why}");
        }
        Ok(Inherited {
            listen_fds,
            listen_ignored,
            listen_fdnames,
            notify_socket,
            watchdog,
            runtime_dir,
            scratch_dir,
            env: std::env::vars_os().collect(),
            upgrade,
        })
    }
}

/// The sockets LISTEN_FDS passes, as `sd_listen_fds(3)` reads them: fds
/// 3, 4, ... for LISTEN_PID (when it is set) being baton's pid. Checked
/// before baton opens a single fd of its own, so that an fd it opened can
/// never be taken for one passed to it: LISTEN_FDS must be a number, no
/// more than the fd table can hold, and every fd it counts must be open.
/// (Each is checked to be a socket by [`crate::sockets`].) The second
/// value says why LISTEN_FDS was ignored, if it was.
fn listen_fds(
    fds: Option<std::ffi::OsString>,
    pid: Option<String>,
) -> Result<(Vec<RawFd>, Option<String>)> {
    let Some(fds) = fds.filter(|v| !v.is_empty()) else {
        return Ok((Vec::new(), None));
    };
    let me = std::process::id().to_string();
    if let Some(pid) = pid.filter(|p| !p.is_empty() && *p != me) {
        return Ok((
            Vec::new(),
            Some(format!(
                "LISTEN_FDS is meant for pid {pid} (LISTEN_PID), not baton ({me}): ignored"
            )),
        ));
    }
    let text = fds.to_string_lossy();
    let n: u32 = text.parse().map_err(|_| {
        anyhow::anyhow!("LISTEN_FDS={text:?} is not a number of sockets (expected 1, 2, ...)")
    })?;
    let (limit, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 1024));
    if u64::from(n) + 3 > limit {
        anyhow::bail!(
            "LISTEN_FDS={n} counts more sockets than this process can have open (RLIMIT_NOFILE {limit})"
        );
    }
    let fds: Vec<RawFd> = (3..3 + n as RawFd).collect();
    for &fd in &fds {
        // SAFETY: F_GETFD only asks whether the descriptor number is open.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
            anyhow::bail!(
                "LISTEN_FDS={n} but fd {fd} is not open: whoever started baton passed {} socket(s), not {n}",
                fd - 3
            );
        }
    }
    Ok((fds, None))
}

/// The home directory `~/` means in current.conf, for the daemon and the
/// operator commands alike: the passwd entry of the effective user (what a
/// service started by systemd with `User=` has), else $HOME.
pub fn home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
}

/// JOURNAL_STREAM as (device, inode) of the journal's stream socket, if set.
pub fn journal_stream() -> Option<(u64, u64)> {
    let v = std::env::var_os("JOURNAL_STREAM")?;
    let (dev, ino) = v.to_str()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}
