//! Waiting for a running baton to say something: inotify on the app dir,
//! woken when a new state file is renamed into place (or the lock file is
//! closed, which is how a baton that died is noticed), and a `poll` whose
//! timeout is what is left of the deadline. No polling loops.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use inotify::{EventMask, Inotify, WatchMask};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::paths::{AppPaths, LOCK_FILE, STATE_FILE};
use crate::state::{self, State};

/// How long `status` and `reload` wait for a baton that holds its lock but
/// has not written its first state file yet (it writes one at once).
const FIRST_STATE: Duration = Duration::from_secs(2);

/// How a [`wait_for_state`] ended.
pub enum Waited<T> {
    /// The check was satisfied.
    Done(T),
    /// The deadline passed; the status line of the last state read, if any.
    TimedOut(Option<String>),
    /// baton stopped holding its lock (it exited or was killed).
    NotRunning,
}

/// Waits until `check` returns something for the state file, baton stops
/// running, or `deadline` passes. The state is checked once at once (after
/// the watch is in place, so no change can slip between the two), then each
/// time baton renames a new state file into place. A baton that dies closes
/// the lock file it holds open for writing: IN_CLOSE_WRITE on it wakes the
/// wait to notice.
pub fn wait_for_state<T>(
    app_dir: &Path,
    deadline: Instant,
    mut check: impl FnMut(&State) -> Option<T>,
) -> Result<Waited<T>> {
    // CLOEXEC and NONBLOCK (set by the inotify crate): reads never block;
    // poll() does the waiting.
    let mut inotify = Inotify::init().map_err(|e| {
        anyhow::anyhow!(
            "cannot wait for baton: inotify_init: {}",
            crate::watch::explain(&e)
        )
    })?;
    inotify
        .watches()
        .add(
            app_dir,
            WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot wait for baton: watching {}: {}",
                app_dir.display(),
                crate::watch::explain(&e)
            )
        })?;
    let mut buf = [0u8; 4096];
    let mut last = None;
    loop {
        if let Ok(s) = State::read(app_dir) {
            if let Some(v) = check(&s) {
                return Ok(Waited::Done(v));
            }
            last = Some(s.status);
        }
        if !state::is_running(app_dir) {
            return Ok(Waited::NotRunning);
        }
        // Sleep until the state file is replaced, the lock is closed, or the
        // deadline passes.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Waited::TimedOut(last));
            }
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128 - 1) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll on inotify"),
            }
            let events = match inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading inotify events"),
            };
            let relevant = events.into_iter().any(|e| {
                e.mask.contains(EventMask::Q_OVERFLOW)
                    || e.name.is_some_and(|n| n == STATE_FILE || n == LOCK_FILE)
            });
            if relevant {
                break;
            }
        }
    }
}

/// The state of a running baton, waiting briefly for its first state file.
pub fn running_state(p: &AppPaths) -> Result<Option<State>> {
    let deadline = Instant::now() + FIRST_STATE;
    match wait_for_state(&p.app_dir, deadline, |s| Some(s.clone()))? {
        Waited::Done(s) => Ok(Some(s)),
        Waited::NotRunning => Ok(None),
        Waited::TimedOut(_) => bail!(
            "baton runs for {} but {} cannot be read",
            p.app_dir.display(),
            p.state_file().display()
        ),
    }
}
