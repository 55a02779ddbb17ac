//! The state machine: every generation baton has started and not yet
//! reaped, and the decisions about them, as pure transitions.
//!
//! [`Core`] turns events (current.conf names a release, a generation is
//! ready, a process exited, a deadline passed) into [`Action`]s for the
//! supervisor loop to carry out. It never touches a process, a file or a
//! clock of its own: each event comes with a [`Now`], so its unit tests
//! drive it with made-up pids and instants. Its state is split by concern:
//!
//! - [`lifecycle`]: each generation's phase, with its deadlines inside;
//! - [`recovery`]: what to start when nothing serves, backoff, the last
//!   known good release;
//! - [`history`]: the last rollout, the last rollback, the STATUS= note.
//!
//! Its events are split the same way: `starting` takes a candidate from
//! spawn to live, `failures` handles what will never serve or stopped
//! serving, `carried` takes in what the baton before this one left.
//!
//! Whether a generation is ready is [`crate::readiness`]'s to say; what baton
//! prints about all this is [`crate::report`]'s.

mod carried;
mod failures;
pub mod history;
pub mod lifecycle;
pub mod recovery;
mod starting;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};

use crate::clock::Now;
use crate::config::Release;
use crate::readiness::{self, Progress};
use crate::span::format_span;
use crate::state::Trigger;
use crate::stop::Stop;

use history::{History, Note, Outcome, RolloutRecord};
pub use lifecycle::{Action, GenId, Generation, Phase, Sig};
use recovery::{HeldBack, Recovery};

/// baton's flags: what applies to every release that does not say
/// otherwise in current.conf.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub soak: Duration,
    pub probation: Duration,
    /// `--ready`, unless the release's `"ready"` says otherwise.
    pub ready: readiness::Mode,
    /// `--stop-signal` and `--stop-target`, unless the release's
    /// `"stop.signal"`/`"stop.target"` say otherwise.
    pub stop: Stop,
}

/// A generation of the baton before this one, still running (see
/// [`Core::adopt`]).
#[derive(Debug, Clone)]
pub struct Survivor {
    pub release: Release,
    pub pid: i32,
    /// Its process start time (clock ticks since boot).
    pub start_time: Option<u64>,
    /// It was the live generation.
    pub was_live: bool,
    pub trigger: Trigger,
    pub started_wall: std::time::SystemTime,
}

/// What baton has told systemd about itself, so each message goes once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Told {
    /// READY=1 (the first generation went live).
    ready: bool,
    /// RELOADING=1, not yet answered by READY=1.
    reloading: bool,
}

/// Serializable so that `baton upgrade` can hand it to the next image
/// ([`crate::handover`]); the settings come from that image's command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Core {
    #[serde(skip)]
    settings: Settings,
    gens: BTreeMap<GenId, Generation>,
    next_id: GenId,
    live: Option<GenId>,
    /// Starting or soaking: the generation that will replace the live one.
    candidate: Option<GenId>,
    recovery: Recovery,
    history: History,
    told: Told,
    shutting_down: bool,
    #[serde(skip)]
    actions: Vec<Action>,
}

impl Core {
    pub fn new(settings: Settings) -> Core {
        Core {
            settings,
            gens: BTreeMap::new(),
            next_id: 1,
            live: None,
            candidate: None,
            recovery: Recovery::default(),
            history: History::default(),
            told: Told::default(),
            shutting_down: false,
            actions: Vec::new(),
        }
    }

    /// The same state under `settings` (a new image of baton adopting the
    /// core an earlier one handed over, with its own command line).
    pub fn with_settings(mut self, settings: Settings) -> Core {
        self.settings = settings;
        self
    }

    // ---- read access (report, state file, notify routing) ----

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

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
        self.recovery.last_good()
    }
    /// The release rolled back from, not started again until current.conf
    /// changes.
    pub fn held_back(&self) -> Option<&HeldBack> {
        self.recovery.held_back()
    }
    pub fn last_rollout(&self) -> Option<&RolloutRecord> {
        self.history.last_rollout()
    }
    /// The rollouts kept, oldest first (see [`history::HISTORY_LEN`]).
    pub fn rollouts(&self) -> impl Iterator<Item = &RolloutRecord> {
        self.history.rollouts()
    }
    /// Differs whenever [`Core::rollouts`] differ.
    pub fn history_revision(&self) -> u64 {
        self.history.revision()
    }
    pub fn last_rollback(&self) -> Option<&history::Rollback> {
        self.history.last_rollback()
    }
    pub fn note(&self) -> Option<&Note> {
        self.history.note.as_ref()
    }
    pub fn restarts(&self) -> u64 {
        self.recovery.restarts()
    }
    /// The release waiting out its backoff before a restart, if any.
    pub fn pending_restart(&self) -> Option<&Release> {
        self.recovery
            .restart_at()
            .filter(|_| self.candidate.is_none())
            .and(self.recovery.fallback())
            .map(|(r, _)| r)
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }
    pub fn is_empty(&self) -> bool {
        self.gens.is_empty()
    }
    /// A generation of the baton before this one that serves while this
    /// one has nothing live yet.
    pub fn adopted_serving(&self) -> Option<&Generation> {
        self.gens.values().find(|g| g.phase == Phase::Adopted)
    }
    /// The generation whose leader has this pid.
    pub fn by_pid(&self, pid: i32) -> Option<GenId> {
        self.gens
            .values()
            .find(|g| g.pid == Some(pid))
            .map(|g| g.id)
    }

    /// How generations of `release` show they are ready.
    pub fn mode_of(&self, release: &Release) -> readiness::Mode {
        release
            .opts
            .ready
            .clone()
            .unwrap_or_else(|| self.settings.ready.clone())
    }

    /// How generations of `release` are asked to stop.
    pub fn stop_of(&self, release: &Release) -> Stop {
        Stop {
            signal: release
                .opts
                .stop_signal
                .unwrap_or(self.settings.stop.signal),
            target: release
                .opts
                .stop_target
                .unwrap_or(self.settings.stop.target),
        }
    }

    /// Whether `release` could ever be ready under baton's flags (an
    /// `after:` span no shorter than --ready-timeout could not).
    pub fn check_fits(&self, release: &Release) -> Result<(), String> {
        self.mode_of(release).fits(self.settings.ready_timeout)
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The earliest instant at which `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.gens
            .values()
            .filter_map(|g| g.phase.deadline())
            .chain(self.recovery.restart_at())
            .min()
    }

    // ---- events ----

    /// current.conf's identity (opaque) at the read the loop is about to
    /// report: a hold records it.
    pub fn seen_conf(&mut self, identity: Option<String>) {
        self.recovery.seen_conf(identity);
    }

    /// Nothing serves (current.conf was unusable at startup): start the
    /// fallback release, if there is one.
    pub fn serve_fallback(&mut self, now: Now) {
        if self.live.is_none() && self.candidate.is_none() {
            if let Some((r, _)) = self.recovery.fallback() {
                warn!(
                    "starting {r}, the release that served last (app.bin/app.cfg), until current.conf names one that works"
                );
            }
            self.schedule_recovery(now);
        }
    }

    /// current.conf names `release` (or SIGHUP asked for a fresh one).
    pub fn want(&mut self, release: Release, trigger: Trigger, now: Now) {
        if self.shutting_down {
            return;
        }
        let force = trigger == Trigger::Reload;
        if force {
            self.begin_reload();
        }
        if let Some(good) = self.recovery.named(Some(&release), trigger) {
            self.hold_back(release, good, trigger, now);
            return;
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
                    self.stop(c, now.mono);
                    self.candidate = None;
                    self.superseded(c, now);
                } else {
                    debug!("{release} is already serving");
                }
                self.history.clear_failure();
                self.history
                    .settle_on(release, self.live, trigger, now.wall);
                return;
            }
        }
        if let Some(c) = self.candidate.take() {
            let old = self.gens[&c].describe();
            info!("{old} is superseded by a newer current.conf; stopping it");
            self.stop(c, now.mono);
            self.superseded(c, now);
        }
        self.recovery.fall_back_to_if_unset(&release);
        self.recovery.cancel_restart();
        self.history
            .begin(Some(release.clone()), Some(self.next_id), trigger, now.wall);
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
    pub fn conf_invalid(&mut self, reason: String, trigger: Trigger, now: Now) {
        if self.shutting_down {
            return;
        }
        if trigger == Trigger::Reload {
            self.begin_reload();
        }
        self.recovery.named(None, trigger);
        self.history.begin(None, None, trigger, now.wall);
        self.history.note = Some(Note::Failure(format!("cannot roll out {reason}")));
        self.finish(Outcome::Failed(reason), now);
    }

    /// The Spawn action for `id` failed: no process exists.
    pub fn spawn_failed(&mut self, id: GenId, reason: String, now: Now) {
        if self.gens.remove(&id).is_some() && self.candidate == Some(id) {
            self.fail_candidate(id, format!("cannot start: {reason}"), now);
        }
    }

    /// STATUS= from generation `id`.
    pub fn app_status(&mut self, id: GenId, text: String) {
        if let Some(g) = self.gens.get_mut(&id) {
            g.app_status = Some(text);
        }
    }

    /// Generation `id`'s leader exited (reaped); `how` says how.
    pub fn exited(&mut self, id: GenId, how: &str, now: Now) {
        self.end_checks(id);
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
                    self.history.note = Some(Note::Failure(format!(
                        "rollout of {} failed: {reason}",
                        g.release
                    )));
                    self.history
                        .finish_generation(id, Outcome::Failed(reason.clone()), now.wall);
                    self.finish(Outcome::Failed(reason), now);
                }
                _ => {
                    // Exiting 0 before it is ready is what a program that
                    // daemonizes does.
                    let hint = if how == "exit status 0" {
                        "; a release must run in the foreground (did it daemonize?)"
                    } else {
                        ""
                    };
                    let awaited = self.mode_of(&g.release).awaited();
                    let when = if g.ready_after_exit {
                        format!("right after {awaited}, before baton could act on it")
                    } else {
                        format!("before {awaited}")
                    };
                    self.fail_candidate(id, format!("exited {when} ({how}){hint}"), now)
                }
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
    /// probation, the backoff reset, restart backoff.
    pub fn tick(&mut self, now: Now) {
        // Readiness first: an `after:` span or a check that is due at the
        // very instant of the ready timeout still counts.
        let starting: Vec<GenId> = self
            .gens
            .values()
            .filter(|g| matches!(g.phase, Phase::Starting { .. }))
            .map(|g| g.id)
            .collect();
        for id in starting {
            if let Some(Phase::Starting { progress, .. }) =
                self.gens.get_mut(&id).map(|g| &mut g.phase)
            {
                let step = progress.due(now.mono);
                self.take_step(id, step, now);
            }
        }
        let due: Vec<(GenId, Phase)> = self
            .gens
            .values()
            .filter(|g| match g.phase {
                Phase::Starting { deadline, .. } => deadline <= now.mono,
                Phase::Soaking { until } => until <= now.mono,
                Phase::Stopping { kill_at } => kill_at <= now.mono,
                _ => false,
            })
            .map(|g| (g.id, g.phase.clone()))
            .collect();
        for (id, phase) in due {
            match phase {
                Phase::Starting { progress, .. } => {
                    let mut reason = format!(
                        "not ready within --ready-timeout {}",
                        format_span(self.settings.ready_timeout)
                    );
                    if let Some(story) = progress.story() {
                        reason.push_str(&format!(" ({story})"));
                    }
                    self.stop(id, now.mono);
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
        let (mut proved, mut healthy) = (false, false);
        if let Some(Phase::Live {
            probation_until,
            healthy_at,
            ..
        }) = self
            .live
            .and_then(|id| self.gens.get_mut(&id))
            .map(|g| &mut g.phase)
        {
            if probation_until.is_some_and(|t| t <= now.mono) {
                *probation_until = None;
                proved = true;
            }
            if healthy_at.is_some_and(|t| t <= now.mono) {
                *healthy_at = None;
                healthy = true;
            }
        }
        if proved {
            self.mark_good();
        }
        if healthy {
            self.recovery.healthy();
        }
        if self.recovery.restart_due(now.mono) {
            self.recover(now);
        }
    }

    /// SIGTERM or SIGINT to baton: retire everything, then exit.
    pub fn shutdown(&mut self, now: Now) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.recovery.cancel_restart();
        self.actions.push(Action::SystemdStopping);
        let running: Vec<GenId> = self
            .gens
            .values()
            .filter(|g| !g.phase.is_retiring())
            .map(|g| g.id)
            .collect();
        let signals: std::collections::BTreeSet<String> = running
            .iter()
            .map(|id| self.stop_of(&self.gens[id].release).signal.to_string())
            .collect();
        match (signals.len(), signals.first()) {
            (0, _) => info!("stopping: no generation to stop"),
            (1, Some(sig)) => info!("stopping: sending {sig} to {} generation(s)", running.len()),
            _ => info!(
                "stopping: sending {} generation(s) their stop signals ({})",
                running.len(),
                signals.into_iter().collect::<Vec<_>>().join(", ")
            ),
        }
        for id in running {
            self.stop(id, now.mono);
        }
        if let Some(c) = self.candidate.take() {
            self.superseded(c, now);
        }
        self.live = None;
        if self.gens.is_empty() {
            self.actions.push(Action::Exit);
        }
    }

    // ---- internals ----

    fn begin_reload(&mut self) {
        if !self.told.reloading {
            self.told.reloading = true;
            self.actions.push(Action::SystemdReloading);
        }
    }

    fn start(&mut self, release: Release, trigger: Trigger, now: Now) -> GenId {
        let id = self.next_id;
        self.next_id += 1;
        let progress = Progress::new(&self.mode_of(&release));
        self.gens.insert(
            id,
            Generation {
                id,
                release: release.clone(),
                trigger,
                pid: None,
                started: now.mono,
                started_wall: now.wall,
                phase: Phase::Starting {
                    deadline: now.mono + self.settings.ready_timeout,
                    progress,
                },
                app_status: None,
                start_time: None,
                ready_after_exit: false,
            },
        );
        self.candidate = Some(id);
        self.actions.push(Action::Spawn { id, release });
        id
    }

    /// Candidate `id` will never serve: a newer rollout or a stop came first.
    fn superseded(&mut self, id: GenId, now: Now) {
        self.history
            .finish_generation(id, Outcome::Superseded, now.wall);
        self.finish(Outcome::Superseded, now);
    }

    fn stop(&mut self, id: GenId, now: Instant) {
        self.end_checks(id);
        let stop_timeout = self.settings.stop_timeout;
        let Some(stop) = self.gens.get(&id).map(|g| self.stop_of(&g.release)) else {
            return;
        };
        if let Some(g) = self.gens.get_mut(&id)
            && !g.phase.is_retiring()
        {
            g.phase = Phase::Stopping {
                kill_at: now + stop_timeout,
            };
            self.actions.push(Action::Signal {
                id,
                sig: Sig::Stop(stop),
            });
        }
    }

    fn finish(&mut self, outcome: Outcome, now: Now) {
        self.history.finish(outcome, now.wall);
        if self.told.reloading {
            self.told.reloading = false;
            self.actions.push(Action::SystemdReady);
        }
    }
}
