//! `baton upgrade`: SIGUSR2 to the running baton, which re-executes its
//! binary in place (see the daemon's side in `supervisor::upgrade`), then,
//! with `--wait`, wait until the state file says how it went: the new image
//! serves (exit 0), or the upgrade failed and the old image serves on
//! (exit 1, the reason on stderr).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::wait::{Waited, running_state, wait_for_state};
use super::{EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, not_running, report_failure};
use crate::clock::utc;
use crate::paths::AppPaths;
use crate::span::format_span;
use crate::state::{self, RolloutResult, UpgradeInfo};

pub fn run(p: &AppPaths, wait: Option<Duration>) -> Result<u8> {
    let before = if state::is_running(&p.app_dir) {
        running_state(p)?
    } else {
        None
    };
    let Some(before) = before else {
        report_failure(&format!("{}; nothing to upgrade", not_running(p)));
        return Ok(EXIT_NOT_RUNNING);
    };
    let Some(version) = before.version.as_deref() else {
        // SIGUSR2 would kill it: batons before in-place upgrades do not
        // handle it.
        report_failure(&format!(
            "the running baton (pid {}) predates in-place upgrades; restart it once (systemctl restart) to run the new binary",
            before.pid
        ));
        return Ok(EXIT_FAILED);
    };
    if before.stopping {
        report_failure("baton is stopping; not upgrading");
        return Ok(EXIT_FAILED);
    }
    let seq = before.last_upgrade.as_ref().map_or(0, |u| u.seq);
    let pid = i32::try_from(before.pid).context("baton's pid in the state file")?;
    kill(Pid::from_raw(pid), Signal::SIGUSR2)
        .with_context(|| format!("sending SIGUSR2 to baton (pid {pid})"))?;
    let Some(timeout) = wait else {
        println!(
            "asked baton {version} (pid {pid}) to upgrade in place; `baton status` tells how it went"
        );
        return Ok(EXIT_OK);
    };
    let deadline = Instant::now() + timeout;
    let waited = wait_for_state(&p.app_dir, deadline, |s| {
        if s.pid != before.pid {
            return Some(Err(format!(
                "baton restarted (pid {} -> {}) during the upgrade",
                before.pid, s.pid
            )));
        }
        s.last_upgrade
            .as_ref()
            .filter(|u| u.seq > seq && u.result != RolloutResult::InProgress)
            .map(|u| Ok((u.clone(), s.image_started_at)))
    })?;
    match waited {
        Waited::Done(Ok((u, image))) if u.result == RolloutResult::Succeeded => {
            println!(
                "upgraded in place: baton {} -> {} (pid {pid}, {}; image started {})",
                u.from_version,
                u.to_version.as_deref().unwrap_or("?"),
                u.path.display(),
                image.map(utc).unwrap_or_default()
            );
            Ok(EXIT_OK)
        }
        Waited::Done(Ok((u, _))) => {
            report_failure(&failed(&u));
            Ok(EXIT_FAILED)
        }
        Waited::Done(Err(why)) => {
            report_failure(&format!("upgrade failed: {why}"));
            Ok(EXIT_FAILED)
        }
        Waited::TimedOut(last) => {
            report_failure(&format!(
                "upgrade: no outcome within {}; {}",
                format_span(timeout),
                last.unwrap_or_default()
            ));
            Ok(EXIT_FAILED)
        }
        Waited::NotRunning => {
            report_failure(&format!(
                "upgrade failed: baton exited during the upgrade ({})",
                not_running(p)
            ));
            Ok(EXIT_FAILED)
        }
    }
}

fn failed(u: &UpgradeInfo) -> String {
    format!(
        "upgrade to {} failed: {}; baton {} (pid unchanged) serves on",
        u.path.display(),
        u.reason.as_deref().unwrap_or("no reason given"),
        u.from_version
    )
}
