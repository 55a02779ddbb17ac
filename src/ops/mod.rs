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

use anyhow::{Result, bail};

use crate::cli::{Command, Target};
use crate::paths::AppPaths;

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

fn pid_text(pid: Option<i32>) -> String {
    pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}
