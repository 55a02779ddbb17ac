//! When a starting generation counts as ready.
//!
//! A release picks one of four modes (`--ready MODE`, or `"ready"` in
//! current.conf for that release):
//!
//! - `notify` (the default): the generation (its leader, or a process in
//!   its process group) sends `READY=1` to baton's notify socket, as
//!   sd_notify(3) describes.
//! - `after:SPAN`: the generation is still alive SPAN after its exec
//!   succeeded (einhorn's timer ack). Dying first is a failed rollout.
//! - `check:CMD`: baton runs `/bin/sh -c CMD` after the exec, then again
//!   [`CHECK_INTERVAL`] after each failed attempt, until one exits 0. Each
//!   attempt may run for [`CHECK_TIMEOUT`] before it is killed.
//! - `exec`: the exec succeeded (systemd's Type=exec). The weakest: it says
//!   nothing about whether the app accepts.
//!
//! Every mode is bounded by `--ready-timeout`, counted from the start.
//!
//! The loop reports what it sees as [`Evidence`] and events (the exec
//! worked, a check attempt ended); [`Progress`] is each starting
//! generation's pure state between them: what it waits for, when baton has
//! something to do for it next, and what the last check said. The state
//! machine ([`crate::core`]) holds one per starting generation and asks
//! [`Mode::accepts`] before it treats a generation as ready.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::span::{format_span, parse_span};

/// Between the end of a failed check attempt and the start of the next.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long one check attempt may run before it is killed (its whole
/// process group, with SIGKILL) and counted as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How a release shows it is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Mode {
    /// `READY=1` from the generation (sd_notify(3)).
    #[default]
    Notify,
    /// Still alive this long after its exec succeeded.
    After(Duration),
    /// `/bin/sh -c` this command exits 0.
    Check(String),
    /// Its exec succeeded.
    Exec,
}

/// Something the loop saw that may mean a generation is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// `READY=1` from the generation's leader or its process group.
    Notified,
    /// The exec succeeded (EOF on the exec-status pipe).
    Execd,
    /// Still alive when its `after:` span was over.
    Survived,
    /// A check attempt exited 0.
    CheckPassed,
}

impl Mode {
    /// Parses `notify`, `after:SPAN`, `check:CMD` or `exec`.
    pub fn parse(s: &str) -> Result<Mode, String> {
        if let Some(span) = s.strip_prefix("after:") {
            let d = parse_span(span).map_err(|e| format!("after:{span}: {e}"))?;
            if d.is_zero() {
                return Err(format!(
                    "after:{span}: the span must be greater than zero (for ready at once, use exec)"
                ));
            }
            return Ok(Mode::After(d));
        }
        if let Some(cmd) = s.strip_prefix("check:") {
            if cmd.trim().is_empty() {
                return Err(
                    "check: needs a command, as in check:curl -fsS http://127.0.0.1:8081/health"
                        .into(),
                );
            }
            if cmd.contains('\0') {
                return Err("check: the command contains a NUL byte".into());
            }
            return Ok(Mode::Check(cmd.to_owned()));
        }
        match s {
            "notify" => Ok(Mode::Notify),
            "exec" => Ok(Mode::Exec),
            "" => Err("empty; expected notify, after:SPAN, check:CMD or exec".into()),
            other => Err(format!(
                "'{}' is not a readiness mode; expected notify, after:SPAN (after:2s), check:CMD or exec",
                other.escape_debug()
            )),
        }
    }

    /// Whether a generation of this mode can ever be ready within
    /// `ready_timeout` (counted from its start).
    pub fn fits(&self, ready_timeout: Duration) -> Result<(), String> {
        match self {
            Mode::After(d) if *d >= ready_timeout => Err(format!(
                "ready {self} can never be met: the span must be shorter than --ready-timeout {}",
                format_span(ready_timeout)
            )),
            _ => Ok(()),
        }
    }

    /// Whether `evidence` makes a generation of this mode ready.
    pub fn accepts(&self, evidence: Evidence) -> bool {
        matches!(
            (self, evidence),
            (Mode::Notify, Evidence::Notified)
                | (Mode::After(_), Evidence::Survived)
                | (Mode::Check(_), Evidence::CheckPassed)
                | (Mode::Exec, Evidence::Execd)
        )
    }

    /// What a generation of this mode waits for, for log lines: "exited
    /// before READY=1".
    pub fn awaited(&self) -> String {
        match self {
            Mode::Notify => "READY=1".into(),
            Mode::After(d) => format!("its after:{} span was over", format_span(*d)),
            Mode::Check(_) => "its check passed".into(),
            Mode::Exec => "its exec".into(),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Notify => f.write_str("notify"),
            Mode::After(d) => write!(f, "after:{}", format_span(*d)),
            Mode::Check(cmd) => write!(f, "check:{cmd}"),
            Mode::Exec => f.write_str("exec"),
        }
    }
}

/// What a starting generation waits for next. (Instants cross `baton
/// upgrade` as CLOCK_MONOTONIC readings, as the phases' do.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Wait {
    /// READY=1; nothing for baton to do meanwhile.
    Notify,
    /// The exec's outcome (every other mode starts from it).
    Exec,
    /// `after:`: ready at this instant if still alive.
    Alive {
        #[serde(with = "crate::clock::mono")]
        until: Instant,
    },
    /// `check:`: the next attempt starts at this instant.
    CheckDue {
        #[serde(with = "crate::clock::mono")]
        at: Instant,
    },
    /// `check:`: an attempt runs; it is killed at `kill_at` (None once the
    /// kill was asked for; its exit is still to come).
    Checking {
        #[serde(with = "crate::clock::mono::option")]
        kill_at: Option<Instant>,
    },
    /// Ready: the evidence was handed over; nothing more to do.
    Done,
}

/// What the state machine must do for a starting generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Nothing,
    Ready(Evidence),
    /// Start a check attempt.
    RunCheck,
    /// The running attempt timed out: kill it.
    KillCheck,
}

/// One starting generation's readiness, between events. Pure: instants are
/// passed in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub wait: Wait,
    /// Check attempts started.
    pub attempts: u32,
    /// Check attempts that failed.
    pub failed: u32,
    /// How the last failed check attempt ended.
    pub last: Option<String>,
}

/// A notify generation's (what an image from before the readiness modes
/// hands over, whose generations all were).
impl Default for Progress {
    fn default() -> Progress {
        Progress::new(&Mode::Notify)
    }
}

impl Progress {
    pub fn new(mode: &Mode) -> Progress {
        Progress {
            wait: match mode {
                Mode::Notify => Wait::Notify,
                _ => Wait::Exec,
            },
            attempts: 0,
            failed: 0,
            last: None,
        }
    }

    /// The exec succeeded at `now`.
    pub fn execd(&mut self, mode: &Mode, now: Instant) -> Step {
        if self.wait != Wait::Exec {
            return Step::Nothing;
        }
        match mode {
            Mode::Notify => Step::Nothing,
            Mode::Exec => {
                self.wait = Wait::Done;
                Step::Ready(Evidence::Execd)
            }
            Mode::After(d) => {
                self.wait = Wait::Alive { until: now + *d };
                Step::Nothing
            }
            Mode::Check(_) => self.start_check(now),
        }
    }

    fn start_check(&mut self, now: Instant) -> Step {
        self.attempts += 1;
        self.wait = Wait::Checking {
            kill_at: Some(now + CHECK_TIMEOUT),
        };
        Step::RunCheck
    }

    /// The next instant at which [`Progress::due`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match self.wait {
            Wait::Alive { until } => Some(until),
            Wait::CheckDue { at } => Some(at),
            Wait::Checking { kill_at } => kill_at,
            Wait::Notify | Wait::Exec | Wait::Done => None,
        }
    }

    /// What is due at `now`.
    pub fn due(&mut self, now: Instant) -> Step {
        match self.wait {
            Wait::Alive { until } if until <= now => {
                self.wait = Wait::Done;
                Step::Ready(Evidence::Survived)
            }
            Wait::CheckDue { at } if at <= now => self.start_check(now),
            Wait::Checking { kill_at: Some(t) } if t <= now => {
                self.wait = Wait::Checking { kill_at: None };
                self.failed += 1;
                self.last = Some(format!("timed out after {}", format_span(CHECK_TIMEOUT)));
                Step::KillCheck
            }
            _ => Step::Nothing,
        }
    }

    /// A check attempt ended at `now`: it `passed` (exit 0), or `how`
    /// says how it failed.
    pub fn check_exited(&mut self, passed: bool, how: String, now: Instant) -> Step {
        let Wait::Checking { kill_at } = self.wait else {
            return Step::Nothing;
        };
        if passed && kill_at.is_some() {
            self.wait = Wait::Done;
            return Step::Ready(Evidence::CheckPassed);
        }
        if kill_at.is_some() {
            // A timed-out attempt was counted, with "timed out" as its story.
            self.failed += 1;
            self.last = Some(how);
        }
        self.wait = Wait::CheckDue {
            at: now + CHECK_INTERVAL,
        };
        Step::Nothing
    }

    /// The running check attempt was killed and will not be reported
    /// (`baton upgrade` hands over no check): try again at `now`.
    pub fn interrupt(&mut self, now: Instant) {
        if self.checking() {
            self.wait = Wait::CheckDue { at: now };
        }
    }

    /// A check attempt runs (to be killed if the generation stops
    /// waiting).
    pub fn checking(&self) -> bool {
        matches!(self.wait, Wait::Checking { .. })
    }

    /// For a readiness failure: what the checks said, if any ran.
    pub fn story(&self) -> Option<String> {
        match (&self.last, self.attempts, self.failed) {
            (_, 0, _) => None,
            (None, _, _) => Some("its first check attempt was still running".into()),
            (Some(last), _, n) => Some(format!(
                "{n} check attempt{} failed, the last: {last}",
                if n == 1 { "" } else { "s" }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for (text, mode) in [
            ("notify", Mode::Notify),
            ("exec", Mode::Exec),
            ("after:2s", Mode::After(Duration::from_secs(2))),
            ("after:500ms", Mode::After(Duration::from_millis(500))),
            (
                "check:curl -fsS http://127.0.0.1:8081/",
                Mode::Check("curl -fsS http://127.0.0.1:8081/".into()),
            ),
        ] {
            assert_eq!(Mode::parse(text).as_ref(), Ok(&mode), "{text}");
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(
            Mode::parse("after:1.5").unwrap(),
            Mode::After(Duration::from_millis(1500))
        );
        assert_eq!(
            Mode::parse("check:test -e /tmp/x && true").unwrap(),
            Mode::Check("test -e /tmp/x && true".into()),
            "the command is the shell's, unchanged"
        );
    }

    #[test]
    fn modes_that_cannot_be_met_are_errors() {
        for (text, why) in [
            ("", "empty"),
            ("Notify", "not a readiness mode"),
            ("ready", "not a readiness mode"),
            ("after", "not a readiness mode"),
            ("after:", "empty span"),
            ("after:0", "greater than zero"),
            ("after:0s", "greater than zero"),
            ("after:soon", "after:soon"),
            ("after:-1", "non-negative"),
            ("check:", "needs a command"),
            ("check:   ", "needs a command"),
            ("check:a\0b", "NUL"),
            ("timer:2s", "not a readiness mode"),
        ] {
            let e = Mode::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let sixty = Duration::from_secs(60);
        assert_eq!(Mode::After(Duration::from_secs(59)).fits(sixty), Ok(()));
        let e = Mode::After(sixty).fits(sixty).unwrap_err();
        assert_eq!(
            e,
            "ready after:1min can never be met: the span must be shorter than --ready-timeout 1min"
        );
        assert_eq!(Mode::Check("true".into()).fits(sixty), Ok(()));
    }

    #[test]
    fn each_mode_takes_its_own_evidence_only() {
        let modes = [
            Mode::Notify,
            Mode::After(Duration::from_secs(1)),
            Mode::Check("true".into()),
            Mode::Exec,
        ];
        let evidence = [
            Evidence::Notified,
            Evidence::Survived,
            Evidence::CheckPassed,
            Evidence::Execd,
        ];
        for (i, m) in modes.iter().enumerate() {
            for (j, e) in evidence.iter().enumerate() {
                assert_eq!(m.accepts(*e), i == j, "{m} {e:?}");
            }
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn notify_waits_for_ready_and_ignores_the_exec() {
        let t0 = Instant::now();
        let mut p = Progress::new(&Mode::Notify);
        assert_eq!(p.execd(&Mode::Notify, t0), Step::Nothing);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.due(at(t0, 100_000)), Step::Nothing);
    }

    #[test]
    fn exec_is_ready_at_the_exec() {
        let t0 = Instant::now();
        let mut p = Progress::new(&Mode::Exec);
        assert_eq!(p.due(at(t0, 100_000)), Step::Nothing, "not before the exec");
        assert_eq!(p.execd(&Mode::Exec, t0), Step::Ready(Evidence::Execd));
    }

    #[test]
    fn after_is_ready_its_span_after_the_exec() {
        let t0 = Instant::now();
        let mode = Mode::After(Duration::from_secs(2));
        let mut p = Progress::new(&mode);
        assert_eq!(p.deadline(), None, "the span starts at the exec");
        assert_eq!(p.execd(&mode, at(t0, 30)), Step::Nothing);
        assert_eq!(p.deadline(), Some(at(t0, 2030)));
        assert_eq!(p.due(at(t0, 2029)), Step::Nothing);
        assert_eq!(p.due(at(t0, 2030)), Step::Ready(Evidence::Survived));
        assert_eq!(p.due(at(t0, 2031)), Step::Nothing, "once");
        assert_eq!(p.execd(&mode, at(t0, 2040)), Step::Nothing, "once");
    }

    #[test]
    fn check_runs_after_the_exec_then_again_after_each_failure_until_it_passes() {
        let t0 = Instant::now();
        let mode = Mode::Check("true".into());
        let mut p = Progress::new(&mode);
        assert_eq!(
            p.execd(&mode, t0),
            Step::RunCheck,
            "the first attempt at once"
        );
        assert!(p.checking());
        assert_eq!(p.deadline(), Some(t0 + CHECK_TIMEOUT));
        assert_eq!(p.due(at(t0, 50)), Step::Nothing, "one attempt at a time");
        assert_eq!(
            p.check_exited(false, "exit status 7".into(), at(t0, 40)),
            Step::Nothing
        );
        assert!(!p.checking());
        assert_eq!(
            p.deadline(),
            Some(at(t0, 140)),
            "CHECK_INTERVAL after it ended"
        );
        assert_eq!(p.due(at(t0, 139)), Step::Nothing);
        assert_eq!(p.due(at(t0, 140)), Step::RunCheck);
        assert_eq!(p.attempts, 2);
        assert_eq!(
            p.story().unwrap(),
            "1 check attempt failed, the last: exit status 7"
        );
        assert_eq!(
            p.check_exited(true, "exit status 0".into(), at(t0, 160)),
            Step::Ready(Evidence::CheckPassed)
        );
        assert!(!p.checking(), "nothing left to cancel");
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn a_check_attempt_that_hangs_is_killed_and_counts_as_failed() {
        let t0 = Instant::now();
        let mode = Mode::Check("sleep 100".into());
        let mut p = Progress::new(&mode);
        p.execd(&mode, t0);
        assert_eq!(
            p.story().unwrap(),
            "its first check attempt was still running"
        );
        let kill_at = t0 + CHECK_TIMEOUT;
        assert_eq!(p.due(kill_at), Step::KillCheck);
        assert_eq!(p.deadline(), None, "waiting for the killed attempt's exit");
        assert_eq!(p.due(kill_at + CHECK_TIMEOUT), Step::Nothing, "killed once");
        // Even an exit 0 racing the kill does not count.
        assert_eq!(
            p.check_exited(true, "killed by SIGKILL".into(), kill_at),
            Step::Nothing
        );
        assert_eq!(
            p.story().unwrap(),
            "1 check attempt failed, the last: timed out after 5s"
        );
        assert_eq!(p.due(kill_at + CHECK_INTERVAL), Step::RunCheck);
        assert_eq!(
            p.check_exited(false, "exit status 1".into(), kill_at),
            Step::Nothing
        );
        assert_eq!(
            p.story().unwrap(),
            "2 check attempts failed, the last: exit status 1"
        );
    }

    #[test]
    fn an_interrupted_check_attempt_is_tried_again_at_once() {
        let t0 = Instant::now();
        let mode = Mode::Check("true".into());
        let mut p = Progress::new(&mode);
        p.interrupt(t0);
        assert_eq!(p.wait, Wait::Exec, "nothing running: nothing changes");
        assert_eq!(p.execd(&mode, t0), Step::RunCheck);
        p.interrupt(at(t0, 30));
        assert_eq!(p.deadline(), Some(at(t0, 30)));
        assert_eq!(
            p.check_exited(false, "lost".into(), at(t0, 31)),
            Step::Nothing,
            "not running any more"
        );
        assert_eq!(p.due(at(t0, 30)), Step::RunCheck);
        assert_eq!(p.failed, 0, "an interrupted attempt did not fail");
    }

    #[test]
    fn a_check_exit_with_no_attempt_running_changes_nothing() {
        let t0 = Instant::now();
        let mode = Mode::Check("true".into());
        let mut p = Progress::new(&mode);
        assert_eq!(
            p.check_exited(true, "exit status 0".into(), t0),
            Step::Nothing
        );
        assert_eq!(p.story(), None);
    }
}
