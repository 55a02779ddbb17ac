//! What baton says about itself, rendered from the state machine: the
//! STATUS= line systemd shows, and the state file and the history file the
//! operator commands read.

use std::path::Path;
use std::time::SystemTime;

use crate::clock::unix;
use crate::config::Release;
use crate::core::history::{Note, Outcome, RolloutRecord};
use crate::core::{Core, Generation};
use crate::state::{
    GenerationInfo, HeldBackInfo, HistoryFile, ReleaseInfo, ReplacedInfo, RollbackInfo,
    RolloutInfo, RolloutResult, State, UpgradeInfo,
};

/// baton's STATUS= line: what serves (release, pid, generation) and the
/// last failure, if one is worth telling.
pub fn status_line(core: &Core) -> String {
    if core.is_shutting_down() {
        return format!(
            "stopping: waiting for {} generation(s) to exit",
            core.generations().count()
        );
    }
    let serving = core.live().map(|g| {
        let mut s = format!(
            "{} (pid {}, generation {})",
            g.release,
            g.pid.unwrap_or(0),
            g.id
        );
        if let Some(app) = &g.app_status {
            s.push_str(": ");
            s.push_str(app);
        }
        s
    });
    // Until this baton has a generation live, one adopted from the baton
    // before it serves.
    let serving = serving.or_else(|| {
        core.adopted_serving().map(|g| {
            format!(
                "{} (pid {}, adopted from the baton before this one)",
                g.release,
                g.pid.unwrap_or(0)
            )
        })
    });
    let mut line = match (core.note(), &serving) {
        (Some(Note::Failure(n)), Some(s)) => format!("{n}; still serving {s}"),
        (Some(Note::Recovery(n)), Some(s)) => format!("{n}; serving {s}"),
        (Some(Note::Failure(n) | Note::Recovery(n)), None) => format!("{n}; nothing serving"),
        (None, Some(s)) => format!("serving {s}"),
        (None, None) => "nothing serving yet".to_owned(),
    };
    if let Some(c) = core.candidate() {
        line.push_str(&format!(
            "; {} {} (generation {})",
            c.phase.name(),
            c.release,
            c.id
        ));
    }
    if let Some(r) = core.pending_restart() {
        line.push_str(&format!("; restarting {r} after backoff"));
    }
    line
}

pub fn release_info(r: &Release) -> ReleaseInfo {
    ReleaseInfo {
        name: r.name(),
        bin: r.bin.clone(),
        cfg: r.cfg.clone(),
    }
}

fn generation_info(g: &Generation) -> GenerationInfo {
    GenerationInfo {
        generation: g.id,
        release: release_info(&g.release),
        pid: g.pid,
        state: g.phase.state(),
        trigger: g.trigger,
        started_at: unix(g.started_wall),
        start_time: g.start_time,
    }
}

/// What the state file says about baton itself, besides the core.
pub struct Daemon<'a> {
    pub config: &'a Path,
    pub app_dir: &'a Path,
    /// When baton (the process) started.
    pub started: SystemTime,
    /// When the running image started (differs after `baton upgrade`).
    pub image_started: SystemTime,
    pub stopping: bool,
    pub last_upgrade: Option<&'a UpgradeInfo>,
    /// This boot's id, read at start.
    pub boot_id: Option<&'a str>,
}

/// The state file's content.
pub fn state(core: &Core, d: &Daemon) -> State {
    State {
        pid: std::process::id(),
        boot_id: d.boot_id.map(str::to_owned),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        image_started_at: Some(unix(d.image_started)),
        config: d.config.to_owned(),
        app_dir: d.app_dir.to_owned(),
        started_at: unix(d.started),
        status: status_line(core),
        serving: core.live().map(generation_info),
        generations: core.generations().map(generation_info).collect(),
        last_known_good: core.last_good().map(release_info),
        held_back: core.held_back().map(|h| HeldBackInfo {
            release: release_info(&h.release),
            reason: h.reason.clone(),
            at: unix(h.at),
            conf: h.conf.clone(),
        }),
        last_rollout: core.last_rollout().map(rollout_info),
        last_rollback: core.last_rollback().map(|b| RollbackInfo {
            from: release_info(&b.from),
            to: release_info(&b.to),
            after_secs: b.after.as_secs_f64(),
            at: unix(b.at),
        }),
        restarts: core.restarts(),
        stopping: d.stopping,
        last_upgrade: d.last_upgrade.cloned(),
    }
}

/// The history file's content.
pub fn history(core: &Core) -> HistoryFile {
    HistoryFile {
        pid: std::process::id(),
        history: core.rollouts().map(rollout_info).collect(),
    }
}

fn rollout_info(r: &RolloutRecord) -> RolloutInfo {
    let (result, reason) = match &r.outcome {
        Outcome::InProgress => (RolloutResult::InProgress, None),
        Outcome::Succeeded => (RolloutResult::Succeeded, None),
        Outcome::Failed(why) => (RolloutResult::Failed, Some(why.clone())),
        Outcome::Superseded => (RolloutResult::Superseded, None),
    };
    RolloutInfo {
        seq: r.seq,
        release: r.release.as_ref().map(release_info),
        generation: r.generation,
        trigger: r.trigger,
        result,
        reason,
        started_at: unix(r.started),
        finished_at: r.finished.map(unix),
        replaced: r.replaced.as_ref().map(|p| ReplacedInfo {
            release: p.release.clone(),
            generation: p.generation,
        }),
        attempts: r.attempts,
        baton_pid: r.baton.unwrap_or_else(std::process::id),
    }
}

/// A history entry from the state file of the baton before this one, as
/// the core keeps it; `pid` is that baton's, for entries that do not say.
pub fn rollout_record(r: &RolloutInfo, pid: u32) -> RolloutRecord {
    let at = |t: f64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    RolloutRecord {
        seq: r.seq,
        release: r.release.as_ref().map(|i| Release {
            bin: i.bin.clone(),
            cfg: i.cfg.clone(),
            opts: Default::default(),
        }),
        generation: r.generation,
        trigger: r.trigger,
        started: at(r.started_at),
        finished: r.finished_at.map(at),
        outcome: match r.result {
            RolloutResult::InProgress => Outcome::InProgress,
            RolloutResult::Succeeded => Outcome::Succeeded,
            RolloutResult::Failed => Outcome::Failed(r.reason.clone().unwrap_or_default()),
            RolloutResult::Superseded => Outcome::Superseded,
        },
        replaced: r.replaced.as_ref().map(|p| crate::core::history::Replaced {
            release: p.release.clone(),
            generation: p.generation,
        }),
        attempts: r.attempts.max(1),
        baton: Some(if r.baton_pid == 0 { pid } else { r.baton_pid }),
    }
}
