//! Generations and the decisions about them, as pure transitions.
//!
//! [`Fleet`] holds every generation baton has started and not yet reaped,
//! and turns events (current.conf names a release, READY=1 arrived, a process
//! exited, a deadline passed) into [`Action`]s for the supervisor loop to
//! carry out. It never touches a process, a file or a clock of its own, so
//! its unit tests drive it with made-up pids and instants.
//!
//! A generation's life:
//!
//! ```text
//!   Starting --READY=1--> (Soaking --soak over-->) Live --newer one live--> Stopping --> Killed
//!      |  exited / ready-timeout                    | died: restart (backoff) or roll back
//!      +-> rollout failed, old one keeps serving    v
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};

use crate::cli::format_span;
use crate::config::Release;

pub type GenId = u64;

/// Why a generation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The first release baton runs.
    Startup,
    /// current.conf changed.
    Edit,
    /// SIGHUP (`systemctl reload`, `baton reload`).
    Reload,
    /// The serving generation died; the same release again.
    Restart,
    /// The new release died in probation; the last known good one again.
    Rollback,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Spawned; waiting for READY=1 until `deadline`.
    Starting { deadline: Instant },
    /// Ready, serving beside the live generation until `until` (`--soak`).
    Soaking { until: Instant },
    /// The generation that serves.
    Live { since: Instant },
    /// Sent SIGTERM, draining; SIGKILL at `kill_at`.
    Stopping { kill_at: Instant },
    /// Sent SIGKILL; waiting to be reaped.
    Killed,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting { .. } => "starting",
            Phase::Soaking { .. } => "soaking",
            Phase::Live { .. } => "live",
            Phase::Stopping { .. } => "stopping",
            Phase::Killed => "killed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub id: GenId,
    pub release: Release,
    pub trigger: Trigger,
    /// Set once the process exists (right after the Spawn action).
    pub pid: Option<i32>,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub phase: Phase,
    /// The app's own STATUS=, relayed into baton's.
    pub app_status: Option<String>,
}

impl Generation {
    fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("generation {} ({}, pid {pid})", self.id, self.release),
            None => format!("generation {} ({})", self.id, self.release),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

/// What the supervisor loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start `release` as generation `id`; report back with `spawned` or
    /// `spawn_failed`.
    Spawn { id: GenId, release: Release },
    /// Signal the generation's process group.
    Signal { id: GenId, sig: Sig },
    /// Generation `id` is now live: point the links at its release.
    Promote { id: GenId },
    /// READY=1 to systemd (first generation live, or a reload finished).
    SystemdReady,
    /// RELOADING=1 to systemd (a SIGHUP rollout began).
    SystemdReloading,
    /// STOPPING=1 to systemd.
    SystemdStopping,
    /// Every generation is gone after a shutdown: exit 0.
    Exit,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    InProgress,
    Succeeded,
    Failed(String),
    Superseded,
}

/// The last rollout an operator asked for (edit, reload, startup).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub seq: u64,
    pub release: Option<Release>,
    pub generation: Option<GenId>,
    pub trigger: Trigger,
    pub started: SystemTime,
    pub finished: Option<SystemTime>,
    pub outcome: Outcome,
}

/// A release that crashed in probation and the one baton went back to.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub from: Release,
    pub to: Release,
    pub after: Duration,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub soak: Duration,
    pub probation: Duration,
}

#[derive(Debug, Clone, PartialEq)]
enum Note {
    /// Something failed; the live generation (if any) is unchanged.
    Failure(String),
    /// baton recovered from something; what serves now is its doing.
    Recovery(String),
}

/// Restart delays for a release that keeps dying: the first restart is
/// immediate, then 0.5 s doubling up to this cap.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The backoff resets once a restarted release has stayed up for its
/// probation, and never sooner than this, so that even `--probation 0`
/// cannot turn a release that dies right after READY into a tight loop.
pub const MIN_HEALTHY: Duration = Duration::from_secs(1);

pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(500) * 2u32.saturating_pow((n - 2).min(16))).min(BACKOFF_CAP),
    }
}

#[derive(Debug)]
pub struct Fleet {
    settings: Settings,
    gens: BTreeMap<GenId, Generation>,
    next_id: GenId,
    live: Option<GenId>,
    /// Starting or soaking: the generation that will replace the live one.
    candidate: Option<GenId>,
    /// What to (re)start when nothing serves and nothing starts.
    fallback: Option<(Release, Trigger)>,
    restart_at: Option<Instant>,
    /// Consecutive attempts to get something serving again (for backoff).
    failures: u32,
    /// The live generation is on probation until then.
    probation_until: Option<Instant>,
    /// The live generation counts as healthy (backoff reset) from then.
    healthy_at: Option<Instant>,
    last_good: Option<Release>,
    last_rollout: Option<RolloutRecord>,
    last_rollback: Option<Rollback>,
    restarts: u64,
    rollout_seq: u64,
    note: Option<Note>,
    reloading: bool,
    announced_ready: bool,
    shutting_down: bool,
    actions: Vec<Action>,
}

impl Fleet {
    pub fn new(settings: Settings) -> Fleet {
        Fleet {
            settings,
            gens: BTreeMap::new(),
            next_id: 1,
            live: None,
            candidate: None,
            fallback: None,
            restart_at: None,
            failures: 0,
            probation_until: None,
            healthy_at: None,
            last_good: None,
            last_rollout: None,
            last_rollback: None,
            restarts: 0,
            rollout_seq: 0,
            note: None,
            reloading: false,
            announced_ready: false,
            shutting_down: false,
            actions: Vec::new(),
        }
    }

    // ---- read access (status, state file, notify routing) ----

    pub fn generations(&self) -> impl Iterator<Item = &Generation> {
        self.gens.values()
    }
    pub fn get(&self, id: GenId) -> Option<&Generation> {
        self.gens.get(&id)
    }
    pub fn live(&self) -> Option<&Generation> {
        self.live.and_then(|id| self.gens.get(&id))
    }
    pub fn candidate(&self) -> Option<&Generation> {
        self.candidate.and_then(|id| self.gens.get(&id))
    }
    pub fn last_good(&self) -> Option<&Release> {
        self.last_good.as_ref()
    }
    pub fn last_rollout(&self) -> Option<&RolloutRecord> {
        self.last_rollout.as_ref()
    }
    pub fn last_rollback(&self) -> Option<&Rollback> {
        self.last_rollback.as_ref()
    }
    pub fn restarts(&self) -> u64 {
        self.restarts
    }
    pub fn is_empty(&self) -> bool {
        self.gens.is_empty()
    }
    /// The generation whose leader has this pid.
    pub fn by_pid(&self, pid: i32) -> Option<GenId> {
        self.gens
            .values()
            .find(|g| g.pid == Some(pid))
            .map(|g| g.id)
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The earliest instant at which `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let phases = self.gens.values().filter_map(|g| match g.phase {
            Phase::Starting { deadline } => Some(deadline),
            Phase::Soaking { until } => Some(until),
            Phase::Stopping { kill_at } => Some(kill_at),
            Phase::Live { .. } | Phase::Killed => None,
        });
        phases
            .chain(self.restart_at)
            .chain(self.probation_until)
            .min()
    }

    /// baton's STATUS= line: what serves (release, pid, generation) and the
    /// last failure, if one is worth telling.
    pub fn status_line(&self) -> String {
        if self.shutting_down {
            return format!(
                "stopping: waiting for {} generation(s) to exit",
                self.gens.len()
            );
        }
        let serving = self.live().map(|g| {
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
        let mut line = match (&self.note, &serving) {
            (Some(Note::Failure(n)), Some(s)) => format!("{n}; still serving {s}"),
            (Some(Note::Recovery(n)), Some(s)) => format!("{n}; serving {s}"),
            (Some(n), None) => {
                let n = match n {
                    Note::Failure(n) | Note::Recovery(n) => n,
                };
                format!("{n}; nothing serving")
            }
            (None, Some(s)) => format!("serving {s}"),
            (None, None) => "nothing serving yet".to_owned(),
        };
        if let Some(c) = self.candidate() {
            line.push_str(&format!(
                "; {} {} (generation {})",
                c.phase.name(),
                c.release,
                c.id
            ));
        }
        if let (Some(at), None) = (self.restart_at, self.candidate)
            && let Some((r, _)) = &self.fallback
        {
            let _ = at;
            line.push_str(&format!("; restarting {r} after backoff"));
        }
        line
    }

    // ---- events ----

    /// The release that served when baton last ran (its links): what to
    /// fall back to if current.conf cannot be rolled out at startup.
    pub fn remember_last_live(&mut self, release: Release) {
        self.fallback = Some((release, Trigger::Rollback));
    }

    /// Nothing serves (current.conf was unusable at startup): start the
    /// fallback release, if there is one.
    pub fn serve_fallback(&mut self, now: Instant) {
        if self.live.is_none() && self.candidate.is_none() {
            if let Some((r, _)) = &self.fallback {
                warn!(
                    "starting {r}, the release that served last (app.bin/app.cfg), until current.conf names one that works"
                );
            }
            self.schedule_recovery(now);
        }
    }

    /// current.conf names `release` (or SIGHUP asked for a fresh one).
    pub fn want(&mut self, release: Release, trigger: Trigger, now: Instant) {
        if self.shutting_down {
            return;
        }
        let force = trigger == Trigger::Reload;
        if force && !self.reloading {
            self.reloading = true;
            self.actions.push(Action::SystemdReloading);
        }
        let in_flight = self.candidate().map(|g| g.release.clone());
        let serving = self.live().map(|g| g.release.clone());
        if !force {
            if in_flight.as_ref() == Some(&release) {
                debug!("{release} is already rolling out");
                return;
            }
            if serving.as_ref() == Some(&release) {
                if let Some(c) = self.candidate {
                    info!(
                        "current.conf names the serving release {release} again; abandoning the rollout of {}",
                        in_flight.as_ref().map(Release::name).unwrap_or_default()
                    );
                    self.stop(c, now);
                    self.candidate = None;
                    self.finish(Outcome::Superseded);
                } else {
                    debug!("{release} is already serving");
                }
                if matches!(self.note, Some(Note::Failure(_))) {
                    self.note = None;
                }
                // current.conf names what serves again: that is a rollout
                // that succeeded, as far as `baton status` is concerned.
                let settled = self.last_rollout.as_ref().is_some_and(|r| {
                    r.outcome == Outcome::Succeeded && r.release.as_ref() == Some(&release)
                });
                if !settled {
                    self.rollout_seq += 1;
                    let now_wall = SystemTime::now();
                    self.last_rollout = Some(RolloutRecord {
                        seq: self.rollout_seq,
                        release: Some(release),
                        generation: self.live,
                        trigger,
                        started: now_wall,
                        finished: Some(now_wall),
                        outcome: Outcome::Succeeded,
                    });
                }
                return;
            }
        }
        if let Some(c) = self.candidate.take() {
            let old = self.gens[&c].describe();
            info!("{old} is superseded by a newer current.conf; stopping it");
            self.stop(c, now);
            self.finish(Outcome::Superseded);
        }
        if self.fallback.is_none() {
            self.fallback = Some((release.clone(), Trigger::Restart));
        }
        self.restart_at = None;
        self.rollout_seq += 1;
        self.last_rollout = Some(RolloutRecord {
            seq: self.rollout_seq,
            release: Some(release.clone()),
            generation: Some(self.next_id),
            trigger,
            started: SystemTime::now(),
            finished: None,
            outcome: Outcome::InProgress,
        });
        let verb = match (trigger, &serving) {
            (Trigger::Reload, _) => "reloading: starting a fresh generation of",
            (_, None) => "starting",
            (_, Some(_)) => "rolling out",
        };
        info!(
            "{verb} {release} (bin {}, cfg {})",
            release.bin.display(),
            release.cfg.display()
        );
        self.start(release, trigger, now);
    }

    /// current.conf could not be read or is not a release baton may run.
    pub fn conf_invalid(&mut self, reason: String, trigger: Trigger) {
        if self.shutting_down {
            return;
        }
        if trigger == Trigger::Reload && !self.reloading {
            self.reloading = true;
            self.actions.push(Action::SystemdReloading);
        }
        self.rollout_seq += 1;
        self.last_rollout = Some(RolloutRecord {
            seq: self.rollout_seq,
            release: None,
            generation: None,
            trigger,
            started: SystemTime::now(),
            finished: None,
            outcome: Outcome::InProgress,
        });
        self.note = Some(Note::Failure(format!("cannot roll out {reason}")));
        self.finish(Outcome::Failed(reason));
    }

    /// The Spawn action for `id` started process `pid`.
    pub fn spawned(&mut self, id: GenId, pid: i32) {
        if let Some(g) = self.gens.get_mut(&id) {
            g.pid = Some(pid);
            info!(
                "started {} as `{} -c {}`",
                g.describe(),
                g.release.bin.display(),
                g.release.cfg.display()
            );
        }
    }

    /// The Spawn action for `id` failed: no process exists.
    pub fn spawn_failed(&mut self, id: GenId, reason: String, now: Instant) {
        if self.gens.remove(&id).is_some() && self.candidate == Some(id) {
            self.fail_candidate(id, format!("cannot start: {reason}"), now);
        }
    }

    /// READY=1 arrived from generation `id`.
    pub fn ready(&mut self, id: GenId, now: Instant) {
        let Some(g) = self.gens.get_mut(&id) else {
            return;
        };
        if !matches!(g.phase, Phase::Starting { .. }) {
            debug!(
                "{} sent READY=1 again while {}",
                g.describe(),
                g.phase.name()
            );
            return;
        }
        let elapsed = now.saturating_duration_since(g.started);
        if self.settings.soak > Duration::ZERO && self.live.is_some() {
            g.phase = Phase::Soaking {
                until: now + self.settings.soak,
            };
            info!(
                "{} is ready after {}; soaking for {} beside the serving generation",
                g.describe(),
                format_span(elapsed),
                format_span(self.settings.soak)
            );
        } else {
            info!("{} is ready after {}", g.describe(), format_span(elapsed));
            self.promote(id, now);
        }
    }

    /// STATUS= from generation `id`.
    pub fn app_status(&mut self, id: GenId, text: String) {
        if let Some(g) = self.gens.get_mut(&id) {
            g.app_status = Some(text);
        }
    }

    /// Generation `id`'s leader exited (reaped); `how` says how.
    pub fn exited(&mut self, id: GenId, how: &str, now: Instant) {
        let Some(g) = self.gens.remove(&id) else {
            return;
        };
        if self.candidate == Some(id) {
            match g.phase {
                Phase::Soaking { .. } => {
                    self.candidate = None;
                    let reason = format!(
                        "generation {} died during its {} soak ({how})",
                        g.id,
                        format_span(self.settings.soak)
                    );
                    error!(
                        "rollout of {} failed: {reason}; the old generation carries on",
                        g.release
                    );
                    self.note = Some(Note::Failure(format!(
                        "rollout of {} failed: {reason}",
                        g.release
                    )));
                    self.finish(Outcome::Failed(reason));
                }
                _ => self.fail_candidate(id, format!("exited before READY=1 ({how})"), now),
            }
        } else if self.live == Some(id) {
            self.live = None;
            self.live_died(g, how, now);
        } else if let Some(pid) = g.pid {
            info!(
                "generation {} ({}, pid {pid}) exited ({how})",
                g.id, g.release
            );
        }
        if self.shutting_down && self.gens.is_empty() {
            self.actions.push(Action::Exit);
        }
    }

    /// Deadlines: ready timeouts, soaks, SIGKILL after stop-timeout,
    /// probation, restart backoff.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<(GenId, Phase)> = self
            .gens
            .values()
            .filter(|g| match g.phase {
                Phase::Starting { deadline } => deadline <= now,
                Phase::Soaking { until } => until <= now,
                Phase::Stopping { kill_at } => kill_at <= now,
                _ => false,
            })
            .map(|g| (g.id, g.phase.clone()))
            .collect();
        for (id, phase) in due {
            match phase {
                Phase::Starting { .. } => {
                    let reason = format!(
                        "not ready within --ready-timeout {}",
                        format_span(self.settings.ready_timeout)
                    );
                    self.stop(id, now);
                    self.fail_candidate(id, reason, now);
                }
                Phase::Soaking { .. } => {
                    info!("{} survived its soak", self.gens[&id].describe());
                    self.promote(id, now);
                }
                Phase::Stopping { .. } => {
                    let g = self.gens.get_mut(&id).expect("due generation exists");
                    warn!(
                        "{} did not exit within --stop-timeout {}; sending SIGKILL",
                        g.describe(),
                        format_span(self.settings.stop_timeout)
                    );
                    g.phase = Phase::Killed;
                    self.actions.push(Action::Signal { id, sig: Sig::Kill });
                }
                _ => {}
            }
        }
        if self.probation_until.is_some_and(|t| t <= now) {
            self.probation_until = None;
            self.mark_good();
        }
        if self.healthy_at.is_some_and(|t| t <= now) {
            self.healthy_at = None;
            self.failures = 0;
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            self.recover(now);
        }
    }

    /// SIGTERM or SIGINT to baton: retire everything, then exit.
    pub fn shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.restart_at = None;
        self.probation_until = None;
        self.healthy_at = None;
        self.actions.push(Action::SystemdStopping);
        let running: Vec<GenId> = self
            .gens
            .values()
            .filter(|g| !matches!(g.phase, Phase::Stopping { .. } | Phase::Killed))
            .map(|g| g.id)
            .collect();
        info!(
            "stopping: sending SIGTERM to {} generation(s)",
            running.len()
        );
        for id in running {
            self.stop(id, now);
        }
        if self.candidate.take().is_some() {
            self.finish(Outcome::Superseded);
        }
        self.live = None;
        if self.gens.is_empty() {
            self.actions.push(Action::Exit);
        }
    }

    // ---- internals ----

    fn start(&mut self, release: Release, trigger: Trigger, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        self.gens.insert(
            id,
            Generation {
                id,
                release: release.clone(),
                trigger,
                pid: None,
                started: now,
                started_wall: SystemTime::now(),
                phase: Phase::Starting {
                    deadline: now + self.settings.ready_timeout,
                },
                app_status: None,
            },
        );
        self.candidate = Some(id);
        self.actions.push(Action::Spawn { id, release });
    }

    fn stop(&mut self, id: GenId, now: Instant) {
        if let Some(g) = self.gens.get_mut(&id)
            && !matches!(g.phase, Phase::Stopping { .. } | Phase::Killed)
        {
            g.phase = Phase::Stopping {
                kill_at: now + self.settings.stop_timeout,
            };
            self.actions.push(Action::Signal { id, sig: Sig::Term });
        }
    }

    fn promote(&mut self, id: GenId, now: Instant) {
        let old = self.live.replace(id);
        self.candidate = None;
        let g = self.gens.get_mut(&id).expect("promoted generation exists");
        g.phase = Phase::Live { since: now };
        let (release, trigger) = (g.release.clone(), g.trigger);
        self.actions.push(Action::Promote { id });
        if let Some(old) = old {
            info!(
                "{} is live; retiring {}",
                self.gens[&id].describe(),
                self.gens[&old].describe()
            );
            self.stop(old, now);
        } else {
            info!("{} is live", self.gens[&id].describe());
        }
        self.fallback = Some((release.clone(), Trigger::Restart));
        self.restart_at = None;
        self.healthy_at = Some(now + self.settings.probation.max(MIN_HEALTHY));
        if self.settings.probation.is_zero() {
            self.probation_until = None;
            self.mark_good();
        } else {
            self.probation_until = Some(now + self.settings.probation);
        }
        if matches!(trigger, Trigger::Startup | Trigger::Edit | Trigger::Reload) {
            if self
                .last_rollout
                .as_ref()
                .is_some_and(|r| r.generation == Some(id))
            {
                self.note = None;
                self.finish(Outcome::Succeeded);
            }
        } else if trigger == Trigger::Restart && matches!(self.note, Some(Note::Failure(_))) {
            self.note = None;
        }
        if !self.announced_ready {
            self.announced_ready = true;
            self.actions.push(Action::SystemdReady);
        }
    }

    fn mark_good(&mut self) {
        let Some(g) = self.live() else { return };
        let release = g.release.clone();
        if self.last_good.as_ref() != Some(&release) {
            info!(
                "{release} stayed up for --probation {}; it is the last known good release",
                format_span(self.settings.probation)
            );
        }
        self.last_good = Some(release);
    }

    /// A candidate that will never be live. The old generation serves on.
    fn fail_candidate(&mut self, id: GenId, reason: String, now: Instant) {
        if self.candidate == Some(id) {
            self.candidate = None;
        }
        let release = self
            .last_rollout
            .as_ref()
            .filter(|r| r.generation == Some(id))
            .and_then(|r| r.release.clone());
        let what = match &release {
            Some(r) => format!("rollout of {r}"),
            None => format!("generation {id}"),
        };
        match self.live() {
            Some(l) => error!(
                "{what} failed: {reason}; still serving {} (generation {})",
                l.release, l.id
            ),
            None => error!("{what} failed: {reason}; nothing is serving"),
        }
        self.note = Some(Note::Failure(format!("{what} failed: {reason}")));
        if release.is_some() {
            self.finish(Outcome::Failed(reason));
        }
        if self.live.is_none() {
            self.schedule_recovery(now);
        }
    }

    /// The live generation died on its own.
    fn live_died(&mut self, g: Generation, how: &str, now: Instant) {
        let up = match g.phase {
            Phase::Live { since } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        let in_probation = self.probation_until.take().is_some_and(|t| now < t);
        self.healthy_at = None;
        let rollback_to = self
            .last_good
            .clone()
            .filter(|good| in_probation && *good != g.release);
        if let Some(to) = rollback_to {
            let msg = format!(
                "release {} crashed {} s after going live; rolled back to {to}",
                g.release,
                up.as_secs()
            );
            error!(
                "{msg} ({} {how}); current.conf is left as it is",
                g.describe()
            );
            if let Some(r) = self
                .last_rollout
                .as_mut()
                .filter(|r| r.release.as_ref() == Some(&g.release))
            {
                r.outcome = Outcome::Failed(msg.clone());
                r.finished = Some(SystemTime::now());
            }
            self.last_rollback = Some(Rollback {
                from: g.release.clone(),
                to: to.clone(),
                after: up,
                at: SystemTime::now(),
            });
            self.note = Some(Note::Recovery(msg));
            self.fallback = Some((to, Trigger::Rollback));
        } else {
            error!(
                "{} died unexpectedly ({how}) after {}",
                g.describe(),
                format_span(up)
            );
            self.note = Some(Note::Recovery(format!(
                "generation {} ({}) died unexpectedly ({how}); restarted",
                g.id, g.release
            )));
            self.fallback = Some((g.release.clone(), Trigger::Restart));
        }
        if let Some(c) = self.candidate {
            if matches!(self.gens[&c].phase, Phase::Soaking { .. }) {
                info!("promoting the soaking {} at once", self.gens[&c].describe());
                self.promote(c, now);
            } else {
                info!(
                    "the rollout in progress ({}) will take over",
                    self.gens[&c].describe()
                );
            }
        } else {
            self.schedule_recovery(now);
        }
    }

    /// Nothing serves and nothing starts: start the fallback release now or
    /// after backoff.
    fn schedule_recovery(&mut self, now: Instant) {
        if self.shutting_down
            || self.live.is_some()
            || self.candidate.is_some()
            || self.fallback.is_none()
        {
            return;
        }
        self.failures += 1;
        let delay = backoff(self.failures);
        if delay.is_zero() {
            self.recover(now);
        } else {
            let (r, _) = self.fallback.as_ref().expect("checked above");
            warn!(
                "restarting {r} in {} (attempt {})",
                format_span(delay),
                self.failures
            );
            self.restart_at = Some(now + delay);
        }
    }

    fn recover(&mut self, now: Instant) {
        if self.shutting_down || self.live.is_some() || self.candidate.is_some() {
            return;
        }
        if let Some((release, trigger)) = self.fallback.clone() {
            self.restarts += 1;
            info!(
                "{} {release}",
                if trigger == Trigger::Rollback {
                    "rolling back to"
                } else {
                    "restarting"
                }
            );
            self.start(release, trigger, now);
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(r) = self
            .last_rollout
            .as_mut()
            .filter(|r| r.outcome == Outcome::InProgress)
        {
            r.outcome = outcome;
            r.finished = Some(SystemTime::now());
        }
        if self.reloading {
            self.reloading = false;
            self.actions.push(Action::SystemdReady);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str) -> Release {
        Release {
            bin: format!("/r/app.{v}").into(),
            cfg: format!("/r/cfg.{v}").into(),
        }
    }

    fn settings() -> Settings {
        Settings {
            ready_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(3),
            soak: Duration::ZERO,
            probation: Duration::from_secs(10),
        }
    }

    /// Drives a fleet the way the loop does, giving each Spawn a pid.
    struct Rig {
        f: Fleet,
        t0: Instant,
        next_pid: i32,
        log: Vec<Action>,
    }

    impl Rig {
        fn new(s: Settings) -> Rig {
            Rig {
                f: Fleet::new(s),
                t0: Instant::now(),
                next_pid: 100,
                log: vec![],
            }
        }
        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }
        /// Runs the pending actions; returns them.
        fn run(&mut self) -> Vec<Action> {
            let acts = self.f.take_actions();
            for a in &acts {
                if let Action::Spawn { id, .. } = a {
                    self.next_pid += 1;
                    self.f.spawned(*id, self.next_pid);
                }
            }
            self.log.extend(acts.clone());
            acts
        }
        fn want(&mut self, v: &str, t: f64) -> Vec<Action> {
            self.f.want(rel(v), Trigger::Edit, self.at(t));
            self.run()
        }
        fn ready(&mut self, id: GenId, t: f64) -> Vec<Action> {
            self.f.ready(id, self.at(t));
            self.run()
        }
        fn exited(&mut self, id: GenId, t: f64) -> Vec<Action> {
            self.f.exited(id, "exit status 1", self.at(t));
            self.run()
        }
        fn tick(&mut self, t: f64) -> Vec<Action> {
            self.f.tick(self.at(t));
            self.run()
        }
        fn live(&self) -> Option<(GenId, String)> {
            self.f.live().map(|g| (g.id, g.release.name()))
        }
    }

    fn spawn(id: GenId, v: &str) -> Action {
        Action::Spawn {
            id,
            release: rel(v),
        }
    }
    fn term(id: GenId) -> Action {
        Action::Signal { id, sig: Sig::Term }
    }

    #[test]
    fn first_release_then_rollout_retires_old_after_ready() {
        let mut r = Rig::new(settings());
        assert_eq!(r.want("1.0", 0.0), vec![spawn(1, "1.0")]);
        assert_eq!(
            r.ready(1, 0.1),
            vec![Action::Promote { id: 1 }, Action::SystemdReady]
        );
        assert_eq!(r.want("2.0", 1.0), vec![spawn(2, "2.0")]);
        assert_eq!(
            r.live(),
            Some((1, "app.1.0".into())),
            "old serves until the new is ready"
        );
        assert_eq!(r.ready(2, 1.2), vec![Action::Promote { id: 2 }, term(1)]);
        assert_eq!(r.live(), Some((2, "app.2.0".into())));
        assert!(
            r.f.status_line()
                .starts_with("serving app.2.0 (pid 102, generation 2)"),
            "{}",
            r.f.status_line()
        );
        assert_eq!(r.f.last_rollout().unwrap().outcome, Outcome::Succeeded);
        // the retired one gets SIGKILL only after stop-timeout
        assert_eq!(r.tick(3.0), vec![]);
        assert_eq!(
            r.tick(4.3),
            vec![Action::Signal {
                id: 1,
                sig: Sig::Kill
            }]
        );
        assert_eq!(r.exited(1, 4.4), vec![]);
        assert_eq!(r.f.generations().count(), 1);
    }

    #[test]
    fn same_release_is_not_rolled_again_but_reload_is() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        assert_eq!(r.want("1.0", 1.0), vec![]);
        r.f.want(rel("1.0"), Trigger::Reload, r.at(2.0));
        assert_eq!(r.run(), vec![Action::SystemdReloading, spawn(2, "1.0")]);
        assert_eq!(
            r.ready(2, 2.1),
            vec![Action::Promote { id: 2 }, term(1), Action::SystemdReady]
        );
    }

    #[test]
    fn crash_before_ready_keeps_old_serving() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.want("2.0", 1.0);
        assert_eq!(r.exited(2, 1.1), vec![], "no restart of a failed rollout");
        assert_eq!(r.live(), Some((1, "app.1.0".into())));
        let s = r.f.status_line();
        assert!(s.starts_with("rollout of app.2.0 failed: exited before READY=1 (exit status 1); still serving app.1.0 (pid 101"), "{s}");
        assert!(matches!(
            r.f.last_rollout().unwrap().outcome,
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn ready_timeout_stops_the_candidate() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.want("2.0", 1.0);
        assert_eq!(r.f.next_deadline(), Some(r.at(6.0)));
        assert_eq!(r.tick(6.0), vec![term(2)]);
        assert!(
            r.f.status_line()
                .contains("not ready within --ready-timeout 5s")
        );
        assert_eq!(
            r.tick(9.0),
            vec![Action::Signal {
                id: 2,
                sig: Sig::Kill
            }]
        );
        assert_eq!(r.live(), Some((1, "app.1.0".into())));
    }

    #[test]
    fn newer_edit_supersedes_rollout_and_back_to_live_abandons_it() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.want("2.0", 1.0);
        assert_eq!(r.want("3.0", 1.1), vec![term(2), spawn(3, "3.0")]);
        assert_eq!(r.want("3.0", 1.2), vec![], "same content again: nothing");
        assert_eq!(
            r.want("1.0", 1.3),
            vec![term(3)],
            "back to the serving release"
        );
        assert!(r.f.candidate().is_none());
        let last = r.f.last_rollout().unwrap();
        assert_eq!(
            (&last.outcome, last.release.as_ref().map(Release::name)),
            (&Outcome::Succeeded, Some("app.1.0".into()))
        );
        // a late READY from a superseded generation promotes nothing
        assert_eq!(r.ready(3, 1.4), vec![]);
        assert_eq!(r.live(), Some((1, "app.1.0".into())));
    }

    #[test]
    fn live_death_restarts_with_backoff_and_resets_after_probation() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.tick(10.1); // probation over: 1.0 is last known good
        assert_eq!(
            r.exited(1, 20.0),
            vec![spawn(2, "1.0")],
            "first restart is immediate"
        );
        assert_eq!(r.exited(2, 20.1), vec![], "second waits");
        assert_eq!(r.f.next_deadline(), Some(r.at(20.6)));
        assert_eq!(r.tick(20.6), vec![spawn(3, "1.0")]);
        assert_eq!(r.exited(3, 20.7), vec![]);
        assert_eq!(r.f.next_deadline(), Some(r.at(21.7)), "1 s after 0.5 s");
        assert_eq!(r.tick(21.7), vec![spawn(4, "1.0")]);
        r.ready(4, 21.8);
        r.tick(31.8); // survived probation: backoff resets
        assert_eq!(r.exited(4, 40.0), vec![spawn(5, "1.0")]);
        assert!(r.f.restarts() >= 4);
    }

    #[test]
    fn no_probation_still_backs_off_a_release_that_dies_right_after_ready() {
        let mut r = Rig::new(Settings {
            probation: Duration::ZERO,
            ..settings()
        });
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        assert_eq!(r.exited(1, 0.2), vec![spawn(2, "1.0")]);
        r.ready(2, 0.3);
        assert_eq!(r.exited(2, 0.4), vec![], "dead within MIN_HEALTHY: backoff");
        r.tick(0.9);
        r.ready(3, 1.0);
        r.tick(2.0); // healthy for MIN_HEALTHY: reset
        assert_eq!(r.exited(3, 5.0), vec![spawn(4, "1.0")]);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(100), BACKOFF_CAP);
    }

    #[test]
    fn crash_in_probation_rolls_back_to_last_known_good() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.tick(10.1);
        assert_eq!(r.f.last_good().unwrap().name(), "app.1.0");
        r.want("2.0", 20.0);
        r.ready(2, 20.1);
        r.exited(1, 20.2);
        assert_eq!(
            r.exited(2, 23.5),
            vec![spawn(3, "1.0")],
            "back to 1.0, not 2.0"
        );
        r.ready(3, 23.6);
        let s = r.f.status_line();
        assert!(s.starts_with("release app.2.0 crashed 3 s after going live; rolled back to app.1.0; serving app.1.0"), "{s}");
        assert!(
            matches!(&r.f.last_rollout().unwrap().outcome, Outcome::Failed(m) if m.contains("rolled back"))
        );
        assert_eq!(r.f.last_rollback().unwrap().from.name(), "app.2.0");
        // a later edit tries again
        assert_eq!(r.want("2.0", 30.0), vec![spawn(4, "2.0")]);
    }

    #[test]
    fn soak_keeps_old_until_new_has_proven_itself() {
        let mut r = Rig::new(Settings {
            soak: Duration::from_secs(5),
            ..settings()
        });
        r.want("1.0", 0.0);
        assert_eq!(
            r.ready(1, 0.1),
            vec![Action::Promote { id: 1 }, Action::SystemdReady],
            "no soak without an old one"
        );
        r.want("2.0", 1.0);
        assert_eq!(r.ready(2, 1.1), vec![], "soaking: nobody retired");
        assert_eq!(r.f.candidate().unwrap().phase.name(), "soaking");
        // dies in the soak: old carries on, nothing restarted
        assert_eq!(r.exited(2, 3.0), vec![]);
        assert_eq!(r.live(), Some((1, "app.1.0".into())));
        assert!(r.f.status_line().contains("died during its 5s soak"));
        // a good one survives the soak and is promoted
        r.want("3.0", 4.0);
        r.ready(3, 4.1);
        assert_eq!(r.tick(9.1), vec![Action::Promote { id: 3 }, term(1)]);
    }

    #[test]
    fn startup_failure_retries_with_backoff_and_edit_tries_at_once() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        assert_eq!(r.exited(1, 0.1), vec![spawn(2, "1.0")]);
        assert_eq!(r.exited(2, 0.2), vec![]);
        assert!(r.f.next_deadline().is_some());
        assert_eq!(r.want("2.0", 0.3), vec![spawn(3, "2.0")]);
        assert_eq!(
            r.ready(3, 0.4),
            vec![Action::Promote { id: 3 }, Action::SystemdReady]
        );
    }

    #[test]
    fn back_to_the_serving_release_after_a_failure_is_a_success() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.want("2.0", 1.0);
        r.exited(2, 1.1);
        assert!(matches!(
            r.f.last_rollout().unwrap().outcome,
            Outcome::Failed(_)
        ));
        assert_eq!(r.want("1.0", 2.0), vec![]);
        assert_eq!(r.f.last_rollout().unwrap().outcome, Outcome::Succeeded);
        assert_eq!(r.f.last_rollout().unwrap().generation, Some(1));
        assert!(r.f.status_line().starts_with("serving app.1.0"));
    }

    #[test]
    fn the_last_live_release_is_the_fallback_at_startup() {
        let mut r = Rig::new(settings());
        r.f.remember_last_live(rel("1.0"));
        r.want("2.0", 0.0);
        assert_eq!(
            r.exited(1, 0.1),
            vec![spawn(2, "1.0")],
            "2.0 fails: the last live one serves"
        );
        r.ready(2, 0.2);
        assert!(
            r.f.status_line().starts_with("rollout of app.2.0 failed"),
            "{}",
            r.f.status_line()
        );
        // current.conf unusable at startup: the fallback serves at once.
        let mut r = Rig::new(settings());
        r.f.remember_last_live(rel("1.0"));
        r.f.conf_invalid("/r/current.conf: invalid JSON".into(), Trigger::Startup);
        r.f.serve_fallback(r.at(0.0));
        assert_eq!(r.run(), vec![spawn(1, "1.0")]);
    }

    #[test]
    fn shutdown_terms_everything_then_exits() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.want("2.0", 1.0);
        r.f.shutdown(r.at(2.0));
        assert_eq!(r.run(), vec![Action::SystemdStopping, term(1), term(2)]);
        assert_eq!(r.want("3.0", 2.1), vec![], "no rollouts while stopping");
        assert_eq!(r.exited(1, 2.2), vec![]);
        assert_eq!(r.exited(2, 2.3), vec![Action::Exit]);
    }

    #[test]
    fn conf_invalid_is_a_failed_rollout_and_the_fix_clears_it() {
        let mut r = Rig::new(settings());
        r.want("1.0", 0.0);
        r.ready(1, 0.1);
        r.f.conf_invalid("/r/current.conf: invalid JSON".into(), Trigger::Edit);
        assert!(
            r.f.status_line().starts_with(
                "cannot roll out /r/current.conf: invalid JSON; still serving app.1.0"
            )
        );
        assert!(matches!(
            r.f.last_rollout().unwrap().outcome,
            Outcome::Failed(_)
        ));
        r.want("1.0", 1.0);
        assert!(r.f.status_line().starts_with("serving app.1.0"));
    }
}
