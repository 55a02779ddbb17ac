//! From spawn to live: a candidate's way through its readiness steps
//! ([`crate::readiness`] says what each one means) and its promotion, which
//! retires whatever served before it.

use std::time::Duration;

use log::{debug, info};

use super::Core;
use super::history::{self, Outcome};
use super::lifecycle::{Action, GenId, Generation, Phase};
use super::recovery::MIN_HEALTHY;
use crate::clock::Now;
use crate::readiness::{self, Evidence, Step};
use crate::span::format_span;
use crate::state::Trigger;

impl Core {
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

    /// Generation `id`'s process started at `start_time` (clock ticks
    /// since boot): with its pid, what identifies it to a later baton.
    pub fn started_at_tick(&mut self, id: GenId, start_time: Option<u64>) {
        if let Some(g) = self.gens.get_mut(&id) {
            g.start_time = start_time;
        }
    }

    /// Generation `id`'s exec succeeded (its exec-status pipe said EOF).
    pub fn execd(&mut self, id: GenId, now: Now) {
        let Some(g) = self.gens.get(&id) else {
            return;
        };
        let mode = self.mode_of(&g.release);
        if let Some(Phase::Starting { progress, .. }) = self.gens.get_mut(&id).map(|g| &mut g.phase)
        {
            let step = progress.execd(&mode, now.mono);
            self.take_step(id, step, now);
        }
    }

    /// A check attempt of generation `id` ended: it `passed` (exit 0), or
    /// `how` says how it failed.
    pub fn check_exited(&mut self, id: GenId, passed: bool, how: String, now: Now) {
        let Some(who) = self.gens.get(&id).map(Generation::describe) else {
            return;
        };
        if let Some(Phase::Starting { progress, .. }) = self.gens.get_mut(&id).map(|g| &mut g.phase)
        {
            debug!(
                "{who}: check attempt {} {}",
                progress.attempts,
                if passed { "passed" } else { &how }
            );
            let step = progress.check_exited(passed, how, now.mono);
            self.take_step(id, step, now);
        }
    }

    /// Carries out what a starting generation's readiness asks for.
    pub(super) fn take_step(&mut self, id: GenId, step: Step, now: Now) {
        match step {
            Step::Nothing => {}
            Step::Ready(evidence) => self.ready(id, evidence, now),
            Step::RunCheck => {
                if let Some(readiness::Mode::Check(command)) =
                    self.gens.get(&id).map(|g| self.mode_of(&g.release))
                {
                    self.actions.push(Action::Check { id, command });
                }
            }
            Step::KillCheck => {
                if let Some(g) = self.gens.get(&id) {
                    debug!(
                        "{}: check attempt timed out after {}; killing it",
                        g.describe(),
                        format_span(readiness::CHECK_TIMEOUT)
                    );
                }
                self.actions.push(Action::CancelCheck { id });
            }
        }
    }

    /// Every running check attempt was killed unreported (`baton upgrade`
    /// hands none over): each generation tries again at `now`.
    pub fn interrupt_checks(&mut self, now: Now) {
        for g in self.gens.values_mut() {
            if let Phase::Starting { progress, .. } = &mut g.phase {
                progress.interrupt(now.mono);
            }
        }
    }

    /// Generation `id` stops waiting to be ready (ready, stopped or gone):
    /// a check attempt still running has no purpose left.
    pub(super) fn end_checks(&mut self, id: GenId) {
        if let Some(Phase::Starting { progress, .. }) = self.gens.get(&id).map(|g| &g.phase)
            && progress.checking()
        {
            self.actions.push(Action::CancelCheck { id });
        }
    }

    /// Generation `id` showed `evidence` of being ready.
    pub fn ready(&mut self, id: GenId, evidence: Evidence, now: Now) {
        let Some(g) = self.gens.get(&id) else {
            return;
        };
        let mode = self.mode_of(&g.release);
        if !mode.accepts(evidence) {
            debug!(
                "{} sent {evidence:?}, which its readiness mode ({mode}) ignores",
                g.describe()
            );
            return;
        }
        if !matches!(g.phase, Phase::Starting { .. }) {
            debug!(
                "{} sent READY=1 again while {}",
                g.describe(),
                g.phase.name()
            );
            return;
        }
        self.end_checks(id);
        let g = self.gens.get_mut(&id).expect("checked above");
        let elapsed = now.mono.saturating_duration_since(g.started);
        if self.settings.soak > Duration::ZERO && self.live.is_some() {
            g.phase = Phase::Soaking {
                until: now.mono + self.settings.soak,
            };
            info!(
                "{} is ready after {} ({mode}); soaking for {} beside the serving generation",
                g.describe(),
                format_span(elapsed),
                format_span(self.settings.soak)
            );
        } else {
            info!(
                "{} is ready after {} ({mode})",
                g.describe(),
                format_span(elapsed)
            );
            self.promote(id, now);
        }
    }

    /// EXTEND_TIMEOUT_USEC= from generation `id`: while it starts, its
    /// ready deadline moves to at least `more` from now (as systemd does
    /// with TimeoutStartSec), so a slow app can keep a short
    /// `--ready-timeout` from failing it. While baton itself has not told
    /// systemd READY=1 yet, systemd's start timeout is extended alike.
    pub fn extend_timeout(&mut self, id: GenId, more: Duration, now: Now) {
        if let Some(g) = self.gens.get_mut(&id)
            && let Phase::Starting { deadline, .. } = &mut g.phase
        {
            let asked = now.mono + more;
            if asked > *deadline {
                *deadline = asked;
                info!(
                    "{} asked for {} more to become ready (EXTEND_TIMEOUT_USEC); waiting until then",
                    g.describe(),
                    format_span(more)
                );
                if !self.told.ready {
                    self.actions.push(Action::SystemdExtend { more });
                }
            }
        }
    }

    /// Generation `id` sent READY=1, read only after its leader had
    /// exited: it is not promoted (it is gone); its exit fails it.
    pub fn ready_after_exit(&mut self, id: GenId) {
        if let Some(g) = self.gens.get_mut(&id)
            && matches!(g.phase, Phase::Starting { .. })
        {
            debug!(
                "{} sent READY=1 and exited before baton read it",
                g.describe()
            );
            g.ready_after_exit = true;
        }
    }

    pub(super) fn promote(&mut self, id: GenId, now: Now) {
        let old = self.live.replace(id);
        let replaced = old.map(|o| history::Replaced {
            release: self.gens[&o].release.name(),
            generation: o,
        });
        self.history.went_live(id, replaced, now.wall);
        self.candidate = None;
        let probation = self.settings.probation;
        let g = self.gens.get_mut(&id).expect("promoted generation exists");
        g.phase = Phase::Live {
            since: now.mono,
            probation_until: (!probation.is_zero()).then(|| now.mono + probation),
            healthy_at: Some(now.mono + probation.max(MIN_HEALTHY)),
        };
        let (release, trigger) = (g.release.clone(), g.trigger);
        self.actions.push(Action::Promote { id });
        if let Some(old) = old {
            info!(
                "{} is live; retiring {}",
                self.gens[&id].describe(),
                self.gens[&old].describe()
            );
            let served = self.gens[&old].release.clone();
            if self.recovery.retired_serving(&served) {
                info!(
                    "{served} served until {} replaced it; it is the last known good release",
                    self.gens[&id].describe()
                );
            }
            self.stop(old, now.mono);
        } else {
            info!("{} is live", self.gens[&id].describe());
        }
        let adopted: Vec<GenId> = self
            .gens
            .values()
            .filter(|g| g.phase == Phase::Adopted)
            .map(|g| g.id)
            .collect();
        for a in adopted {
            info!(
                "{} is live; retiring {}, which served for the baton before this one",
                self.gens[&id].describe(),
                self.gens[&a].describe()
            );
            self.stop(a, now.mono);
        }
        self.recovery.fall_back_to(release, Trigger::Restart);
        self.recovery.cancel_restart();
        if probation.is_zero() {
            self.mark_good();
        }
        if matches!(trigger, Trigger::Startup | Trigger::Edit | Trigger::Reload) {
            if self.history.rollout_of(id).is_some() {
                self.history.note = None;
                self.finish(Outcome::Succeeded, now);
            }
        } else if trigger == Trigger::Restart {
            self.history.clear_failure();
        }
        if !self.told.ready {
            self.told.ready = true;
            self.actions.push(Action::SystemdReady);
        }
    }

    pub(super) fn mark_good(&mut self) {
        let Some(g) = self.live() else { return };
        let release = g.release.clone();
        if self.recovery.survived_probation(&release) {
            info!(
                "{release} stayed up for --probation {}; it is the last known good release",
                format_span(self.settings.probation)
            );
        }
    }
}
