//! The operator commands: `baton status`, `reload`, `switch`, `releases`,
//! `upgrade`, `history`, one file each.
//!
//! They talk to a running baton only through the file system: the state
//! file it replaces atomically on every change ([`crate::state`]), the flock
//! it holds on `<app-dir>/baton.lock` while it runs, current.conf, and
//! SIGHUP for `reload`. They share the path rules with the daemon
//! ([`crate::paths`], [`crate::inherit::home`]) and never import the loop
//! or the state machine. Waiting for an outcome is `wait`: inotify on the
//! app dir and a `poll` whose timeout is what is left of the deadline.

mod catalog;
mod history;
mod releases;
mod reload;
mod status;
mod switch;
mod upgrade;
mod wait;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{Command, Target};
use crate::paths::AppPaths;
use crate::state::{self, State};

/// Serving, and the last rollout did not fail.
pub const EXIT_OK: u8 = 0;
/// The last rollout failed, nothing serves, or a wait ended badly.
pub const EXIT_FAILED: u8 = 1;
/// No baton holds the app dir's lock.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Runs an operator command; returns the exit code.
pub fn main(command: Command) -> Result<u8> {
    match command {
        Command::Status { target, json } => status::run(&paths(&target)?, json),
        Command::Reload { target, timeout } => reload::run(&paths(&target)?, timeout),
        Command::Switch {
            release,
            target,
            wait,
        } => switch::run(&paths(&target)?, &release, wait),
        Command::Releases { target } => releases::run(&paths(&target)?),
        Command::Upgrade { target, wait } => upgrade::run(&paths(&target)?, wait),
        Command::History { target, json } => history::run(&paths(&target)?, json),
        other => bail!("{other:?} is not an operator command"),
    }
}

fn paths(target: &Target) -> Result<AppPaths> {
    AppPaths::new(&target.config, target.app_dir.as_deref())
}

/// `baton is not running for /srv/app (nothing holds /srv/app/baton.lock)`.
fn not_running(p: &AppPaths) -> String {
    format!(
        "baton is not running for {} (nothing holds {})",
        p.app_dir.display(),
        p.lock_file().display()
    )
}

/// A failure on stderr. When stderr is the journal (`baton reload` as
/// ExecReload) the line carries the error priority, as baton's own log does,
/// so `journalctl -u app -p err` shows it.
fn report_failure(msg: &str) {
    if crate::logging::stderr_is_journal() {
        eprintln!("<3>baton: {msg}");
    } else {
        eprintln!("baton: {msg}");
    }
}

/// The state of the baton running for `p`, for a command that is about to
/// signal it (`doing`: "reload", "upgrade"); Err(exit code) once the reason
/// it cannot is on stderr.
fn running_for(p: &AppPaths, doing: &str) -> Result<Result<State, u8>> {
    let state = if state::is_running(&p.app_dir) {
        wait::running_state(p)?
    } else {
        None
    };
    let Some(state) = state else {
        report_failure(&format!("{}; nothing to {doing}", not_running(p)));
        return Ok(Err(EXIT_NOT_RUNNING));
    };
    if state.stopping {
        report_failure(&format!("baton is stopping; not {doing}ing"));
        return Ok(Err(EXIT_FAILED));
    }
    Ok(Ok(state))
}

/// Sends `sig` to the baton whose state is `s`; returns its pid.
fn signal(s: &State, sig: Signal) -> Result<i32> {
    let pid = i32::try_from(s.pid).context("baton's pid in the state file")?;
    kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to baton (pid {pid})"))?;
    Ok(pid)
}

fn pid_text(pid: Option<i32>) -> String {
    pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}
