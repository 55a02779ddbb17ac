//! `baton reload`: SIGHUP to the running baton (what `systemctl reload`
//! does through ExecReload), then wait until the fresh generation serves
//! (exit 0) or its rollout fails (exit 1, the reason on stderr).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use nix::sys::signal::Signal;

use super::status::describe_rollout;
use super::wait::{Waited, wait_for_state};
use super::{EXIT_FAILED, EXIT_OK, not_running, pid_text, report_failure, running_for, signal};
use crate::clock::unix;
use crate::paths::AppPaths;
use crate::span::format_span;
use crate::state::RolloutResult;

pub fn run(p: &AppPaths, timeout: Duration) -> Result<u8> {
    let deadline = Instant::now() + timeout;
    let before = match running_for(p, "reload")? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let seq = before.last_rollout.as_ref().map_or(0, |r| r.seq);
    // A rollout that began before this SIGHUP is not its answer, even if
    // it finishes after: SIGHUPs close together are one burst, and the
    // reload that answers it begins after the last of them.
    let sent = unix(SystemTime::now());
    signal(&before, Signal::SIGHUP)?;
    let waited = wait_for_state(&p.app_dir, deadline, |s| {
        if s.pid != before.pid {
            return Some(Err(format!(
                "baton restarted (pid {} -> {}) before the reload finished",
                before.pid, s.pid
            )));
        }
        if let Some(r) = s
            .last_rollout
            .as_ref()
            .filter(|r| r.seq > seq && r.started_at >= sent)
            && r.result != RolloutResult::InProgress
        {
            return Some(Ok((r.clone(), s.serving.clone())));
        }
        if s.stopping {
            return Some(Err("baton is stopping; the reload was abandoned".into()));
        }
        None
    })?;
    match waited {
        Waited::Done(Ok((r, serving))) if r.result == RolloutResult::Succeeded => {
            match serving {
                Some(g) => println!(
                    "reloaded: {} serves as generation {} (pid {})",
                    g.release.name,
                    g.generation,
                    pid_text(g.pid)
                ),
                None => println!(
                    "reloaded: {}",
                    describe_rollout(&r, unix(SystemTime::now()))
                ),
            }
            Ok(EXIT_OK)
        }
        Waited::Done(Ok((r, _))) => {
            let what = r.release.map(|rel| rel.name).unwrap_or_default();
            report_failure(&format!(
                "reload of {what} {}: {}",
                r.result.as_str(),
                r.reason.as_deref().unwrap_or("no reason given")
            ));
            Ok(EXIT_FAILED)
        }
        Waited::Done(Err(why)) => {
            report_failure(&format!("reload failed: {why}"));
            Ok(EXIT_FAILED)
        }
        Waited::TimedOut(last) => {
            report_failure(&format!(
                "reload: no outcome within {}; {}",
                format_span(timeout),
                last.unwrap_or_default()
            ));
            Ok(EXIT_FAILED)
        }
        Waited::NotRunning => {
            report_failure(&format!(
                "reload failed: baton exited before the reload finished ({})",
                not_running(p)
            ));
            Ok(EXIT_FAILED)
        }
    }
}
