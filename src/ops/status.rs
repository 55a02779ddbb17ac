//! `baton status`: what serves, every generation, the last rollout, in
//! words or as the state file's JSON; the exit code says whether all is
//! well (0), the last rollout failed or nothing serves (1), or baton is not
//! running (3).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::wait::running_state;
use super::{EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, not_running, pid_text};
use crate::clock::{unix, when};
use crate::paths::AppPaths;
use crate::span::format_span;
use crate::state::{self, RolloutInfo, RolloutResult, State};

pub fn run(p: &AppPaths, json: bool) -> Result<u8> {
    if !state::is_running(&p.app_dir) {
        eprintln!("{}", not_running(p));
        if let Ok(s) = State::read(&p.app_dir) {
            eprintln!(
                "its last state (baton pid {}): {}",
                s.pid,
                if s.stopping { "stopped" } else { &s.status }
            );
        }
        return Ok(EXIT_NOT_RUNNING);
    }
    let Some(s) = running_state(p)? else {
        eprintln!("{}", not_running(p));
        return Ok(EXIT_NOT_RUNNING);
    };
    if json {
        let text = serde_json::to_string_pretty(&s).context("formatting the state")?;
        println!("{text}");
    } else {
        print!("{}", describe_state(&s));
    }
    Ok(health(&s))
}

/// `status`'s exit code for a running baton.
fn health(s: &State) -> u8 {
    let failed = s
        .last_rollout
        .as_ref()
        .is_some_and(|r| r.result == RolloutResult::Failed);
    if failed || s.serving.is_none() {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// The human summary `baton status` prints.
fn describe_state(s: &State) -> String {
    let now = unix(SystemTime::now());
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<16} {text}\n"));
    line(
        "baton:",
        format!(
            "{}pid {}, app dir {}, up since {}",
            s.version
                .as_ref()
                .map(|v| format!("version {v}, "))
                .unwrap_or_default(),
            s.pid,
            s.app_dir.display(),
            when(s.started_at, now)
        ),
    );
    if let Some(image) = s.image_started_at.filter(|t| *t > s.started_at + 0.5) {
        line("image:", format!("running since {}", when(image, now)));
    }
    line("status:", s.status.clone());
    match &s.serving {
        Some(g) => {
            // Live since its rollout finished, if that rollout brought it.
            let since = s
                .last_rollout
                .as_ref()
                .filter(|r| {
                    r.generation == Some(g.generation) && r.result == RolloutResult::Succeeded
                })
                .and_then(|r| r.finished_at)
                .unwrap_or(g.started_at);
            line(
                "serving:",
                format!(
                    "{} (pid {}, generation {}) since {}",
                    g.release.name,
                    pid_text(g.pid),
                    g.generation,
                    when(since, now)
                ),
            );
        }
        None => line("serving:", "nothing".into()),
    }
    if s.generations.is_empty() {
        line("generations:", "none".into());
    } else {
        out.push_str("generations:\n");
        for g in &s.generations {
            out.push_str(&format!(
                "  {:>4}  {:<9} {:<20} pid {:<8} {} started {}\n",
                g.generation,
                g.state.as_str(),
                g.release.name,
                pid_text(g.pid),
                g.trigger.as_str(),
                when(g.started_at, now)
            ));
        }
    }
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<16} {text}\n"));
    match &s.last_rollout {
        Some(r) => line("last rollout:", describe_rollout(r, now)),
        None => line("last rollout:", "none".into()),
    }
    line(
        "last known good:",
        s.last_known_good
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| "none yet".into()),
    );
    if let Some(h) = &s.held_back {
        line(
            "held back:",
            format!(
                "{} ({} at {}); not started again until current.conf changes",
                h.release.name,
                h.reason,
                when(h.at, now)
            ),
        );
    }
    if let Some(b) = &s.last_rollback {
        line(
            "last rollback:",
            format!(
                "{} -> {} ({} crashed {} after going live) at {}",
                b.from.name,
                b.to.name,
                b.from.name,
                format_span(Duration::from_secs_f64(b.after_secs.max(0.0))),
                when(b.at, now)
            ),
        );
    }
    if let Some(u) = &s.last_upgrade {
        let mut text = format!(
            "#{} {} -> {} {}",
            u.seq,
            u.from_version,
            u.to_version.as_deref().unwrap_or("?"),
            u.result.as_str()
        );
        if let Some(f) = u.finished_at {
            text.push_str(&format!(" at {}", when(f, now)));
        }
        if let Some(why) = &u.reason {
            text.push_str(&format!(": {why}"));
        }
        line("last upgrade:", text);
    }
    if s.restarts > 0 {
        line("restarts:", s.restarts.to_string());
    }
    if s.stopping {
        line("stopping:", "yes (baton received SIGTERM)".into());
    }
    out
}

pub fn describe_rollout(r: &RolloutInfo, now: f64) -> String {
    let what = r
        .release
        .as_ref()
        .map(|rel| rel.name.clone())
        .unwrap_or_else(|| "(unreadable current.conf)".into());
    let mut text = format!(
        "#{} {what} ({}) {}",
        r.seq,
        r.trigger.as_str(),
        r.result.as_str()
    );
    if let Some(f) = r.finished_at {
        let took = Duration::from_secs_f64((f - r.started_at).max(0.0));
        text.push_str(&format!(" in {} at {}", format_span(took), when(f, now)));
    } else {
        text.push_str(&format!(", started {}", when(r.started_at, now)));
    }
    if let Some(why) = &r.reason {
        text.push_str(&format!(": {why}"));
    }
    text
}
