//! `baton upgrade`: SIGUSR2 to the running baton, which re-executes its
//! binary in place (see the daemon's side in `supervisor::upgrade`), then,
//! with `--wait`, wait until the state file says how it went: the new image
//! serves (exit 0), or the upgrade failed and the old image serves on
//! (exit 1, the reason on stderr).

use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;

use super::wait::{Waited, wait_for_state};
use super::{EXIT_FAILED, EXIT_OK, not_running, report_failure, running_for, signal};
use crate::clock::utc;
use crate::paths::AppPaths;
use crate::span::format_span;
use crate::state::{RolloutResult, UpgradeInfo};

pub fn run(p: &AppPaths, wait: Option<Duration>) -> Result<u8> {
    let before = match running_for(p, "upgrade")? {
        Ok(s) => s,
        Err(code) => return Ok(code),
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
    let seq = before.last_upgrade.as_ref().map_or(0, |u| u.seq);
    let pid = signal(&before, Signal::SIGUSR2)?;
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
