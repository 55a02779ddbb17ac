//! One generation's life, as an enum whose variants carry their own
//! deadlines, and the actions the state machine asks the loop to carry out.
//!
//! ```text
//!   Starting --ready--> (Soaking --soak over-->) Live --newer one live--> Stopping --> Killed
//!      |  exited / ready-timeout                    | died: restart (backoff) or roll back
//!      +-> rollout failed, old one keeps serving    v
//!
//!   Adopted (an earlier baton's, still serving) --a generation of this baton live--> Stopping
//! ```

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Release;
use crate::readiness::Progress;
use crate::state::{GenState, Trigger};
use crate::stop::Stop;

pub type GenId = u64;

// Instants cross `baton upgrade` as CLOCK_MONOTONIC readings (clock::mono).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Spawned; waiting for readiness until `deadline` (`--ready-timeout`),
    /// with what its readiness mode waits for in `progress`.
    Starting {
        #[serde(with = "crate::clock::mono")]
        deadline: Instant,
        #[serde(default)]
        progress: Progress,
    },
    /// Ready, serving beside the live generation until `until` (`--soak`).
    Soaking {
        #[serde(with = "crate::clock::mono")]
        until: Instant,
    },
    /// The generation that serves.
    Live {
        #[serde(with = "crate::clock::mono")]
        since: Instant,
        /// On probation until then (`--probation`): dying before it rolls
        /// back to the last known good release. None once it is over.
        #[serde(with = "crate::clock::mono::option")]
        probation_until: Option<Instant>,
        /// Counts as healthy from then: the restart backoff resets. None
        /// once it has.
        #[serde(with = "crate::clock::mono::option")]
        healthy_at: Option<Instant>,
    },
    /// Sent its stop signal, draining; SIGKILL at `kill_at` (`--stop-timeout`).
    Stopping {
        #[serde(with = "crate::clock::mono")]
        kill_at: Instant,
    },
    /// Sent SIGKILL; waiting to be reaped.
    Killed,
    /// A generation of the baton before this one, still serving when this
    /// one started: not this baton's child. It serves on until a
    /// generation of this baton is live, then is retired (Stopping).
    Adopted,
}

impl Phase {
    pub fn state(&self) -> GenState {
        match self {
            Phase::Starting { .. } => GenState::Starting,
            Phase::Soaking { .. } => GenState::Soaking,
            Phase::Live { .. } => GenState::Live,
            Phase::Stopping { .. } => GenState::Stopping,
            Phase::Killed => GenState::Killed,
            Phase::Adopted => GenState::Adopted,
        }
    }

    pub fn name(&self) -> &'static str {
        self.state().as_str()
    }

    /// The next instant at which this phase has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match *self {
            Phase::Starting {
                deadline,
                ref progress,
            } => progress.deadline().into_iter().chain([deadline]).min(),
            Phase::Soaking { until } => Some(until),
            Phase::Live {
                probation_until,
                healthy_at,
                ..
            } => probation_until.into_iter().chain(healthy_at).min(),
            Phase::Stopping { kill_at } => Some(kill_at),
            Phase::Killed | Phase::Adopted => None,
        }
    }

    /// Sent its stop signal or SIGKILL already.
    pub fn is_retiring(&self) -> bool {
        matches!(self, Phase::Stopping { .. } | Phase::Killed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub id: GenId,
    pub release: Release,
    pub trigger: Trigger,
    /// Set once the process exists (right after the Spawn action).
    pub pid: Option<i32>,
    #[serde(with = "crate::clock::mono")]
    pub started: Instant,
    pub started_wall: SystemTime,
    pub phase: Phase,
    /// The app's own STATUS=, relayed into baton's.
    pub app_status: Option<String>,
    /// When its process started, in clock ticks since boot (its identity
    /// with the pid; see [`crate::procfs::start_time`]).
    #[serde(default)]
    pub start_time: Option<u64>,
    /// It sent READY=1, but baton read it only after it had exited.
    #[serde(default)]
    pub ready_after_exit: bool,
}

impl Generation {
    /// `generation 3 (app.2.0, pid 4487)`, for logs.
    pub fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("generation {} ({}, pid {pid})", self.id, self.release),
            None => format!("generation {} ({})", self.id, self.release),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// The release's stop signal, to its group or its leader
    /// (`--stop-signal`, `--stop-target`, or current.conf's `"stop.*"`).
    Stop(Stop),
    /// SIGKILL, always to the whole process group.
    Kill,
}

/// What the supervisor loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start `release` as generation `id`; report back with `spawned` or
    /// `spawn_failed`.
    Spawn { id: GenId, release: Release },
    /// Signal the generation (see [`Sig`]).
    Signal { id: GenId, sig: Sig },
    /// Start a readiness check attempt for generation `id`: `/bin/sh -c
    /// command`; report its end with `check_exited`.
    Check { id: GenId, command: String },
    /// Kill generation `id`'s running check attempt (timed out, or the
    /// generation no longer waits for it); its end is still reported.
    CancelCheck { id: GenId },
    /// Generation `id` is now live: point the links at its release.
    Promote { id: GenId },
    /// READY=1 to systemd (first generation live, or a reload finished).
    SystemdReady,
    /// EXTEND_TIMEOUT_USEC= to systemd: baton's own start (its first
    /// generation) needs at least this much longer.
    SystemdExtend { more: std::time::Duration },
    /// RELOADING=1 to systemd (a SIGHUP rollout began).
    SystemdReloading,
    /// STOPPING=1 to systemd.
    SystemdStopping,
    /// Every generation is gone after a shutdown: exit 0.
    Exit,
}
