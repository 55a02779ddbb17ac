//! How a generation is asked to stop: which signal means "drain and exit"
//! to this app, and whether it goes to the whole process group or only to
//! the leader.
//!
//! Servers disagree. Most drain on SIGTERM; uWSGI treats SIGTERM as a brutal
//! reload and drains on SIGQUIT (or SIGINT); nginx drains on SIGQUIT. Some
//! masters must be the only ones told (their workers are signalled through
//! them, and a worker told directly dies mid-request), others expect the
//! whole group to hear it. systemd offers `KillSignal=` and `KillMode=` for
//! this; baton offers `--stop-signal` and `--stop-target` (and per release,
//! `"stop.signal"` and `"stop.target"` in current.conf).
//!
//! Whatever they say, SIGKILL after `--stop-timeout` goes to the whole group,
//! and whatever is left of the group when the leader exits is killed.

use std::fmt;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// The signal that asks a generation to drain and exit. Kept as its number
/// (plain data); [`StopSignal::signal`] turns it back into a [`Signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StopSignal(i32);

impl Default for StopSignal {
    fn default() -> StopSignal {
        StopSignal(Signal::SIGTERM as i32)
    }
}

impl StopSignal {
    pub const TERM: StopSignal = StopSignal(Signal::SIGTERM as i32);

    /// `TERM`, `SIGTERM`, `term`, `15`: any standard signal an app can
    /// catch. SIGKILL and SIGSTOP are refused (neither can be caught, so
    /// neither can mean "drain"; baton sends SIGKILL itself after
    /// `--stop-timeout`), and so is anything that is not a signal.
    pub fn parse(s: &str) -> Result<StopSignal, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty signal; expected a name like TERM, QUIT or INT, or a number".into());
        }
        let sig = if t.bytes().all(|b| b.is_ascii_digit()) {
            let n: i32 = t
                .parse()
                .map_err(|_| format!("'{t}' is not a signal number"))?;
            Signal::try_from(n).map_err(|_| format!("{n} is not a signal number (1-31)"))?
        } else {
            let upper = t.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<Signal>().map_err(|_| {
                format!("'{t}' is not a signal name (e.g. TERM, QUIT, INT, HUP, USR1, USR2, WINCH)")
            })?
        };
        match sig {
            Signal::SIGKILL => Err(
                "SIGKILL cannot be a stop signal: it cannot be caught, so nothing drains \
                 (baton sends SIGKILL itself after --stop-timeout)"
                    .into(),
            ),
            Signal::SIGSTOP => Err(
                "SIGSTOP cannot be a stop signal: it suspends the app instead of stopping it"
                    .into(),
            ),
            s => Ok(StopSignal(s as i32)),
        }
    }

    pub fn signal(self) -> Signal {
        Signal::try_from(self.0).unwrap_or(Signal::SIGTERM)
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.signal().as_str())
    }
}

/// Who receives the stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopTarget {
    /// The generation's whole process group: the leader and every process
    /// it started that stayed in its group (systemd's KillMode=control-group).
    #[default]
    Group,
    /// The leader alone, which stops its own workers (systemd's
    /// KillMode=mixed, before the SIGKILL).
    Leader,
}

impl StopTarget {
    pub fn parse(s: &str) -> Result<StopTarget, String> {
        match s.trim() {
            "group" => Ok(StopTarget::Group),
            "leader" => Ok(StopTarget::Leader),
            other => Err(format!("'{other}' is neither group nor leader")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StopTarget::Group => "group",
            StopTarget::Leader => "leader",
        }
    }
}

impl fmt::Display for StopTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one generation is stopped: its release's settings over baton's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Stop {
    pub signal: StopSignal,
    pub target: StopTarget,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            StopTarget::Group => write!(f, "{} to its process group", self.signal),
            StopTarget::Leader => write!(f, "{} to its leader", self.signal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        for (text, want) in [
            ("TERM", Signal::SIGTERM),
            ("SIGTERM", Signal::SIGTERM),
            ("term", Signal::SIGTERM),
            (" QUIT ", Signal::SIGQUIT),
            ("SIGQUIT", Signal::SIGQUIT),
            ("INT", Signal::SIGINT),
            ("HUP", Signal::SIGHUP),
            ("USR1", Signal::SIGUSR1),
            ("usr2", Signal::SIGUSR2),
            ("WINCH", Signal::SIGWINCH),
            ("15", Signal::SIGTERM),
            ("3", Signal::SIGQUIT),
            ("28", Signal::SIGWINCH),
        ] {
            assert_eq!(StopSignal::parse(text).unwrap().signal(), want, "{text}");
        }
        assert_eq!(StopSignal::default(), StopSignal::TERM);
        assert_eq!(StopSignal::parse("QUIT").unwrap().to_string(), "SIGQUIT");
    }

    #[test]
    fn signals_that_cannot_mean_drain_are_refused() {
        for (text, why) in [
            ("", "empty"),
            ("KILL", "cannot be caught"),
            ("9", "cannot be caught"),
            ("SIGSTOP", "suspends"),
            ("0", "not a signal number"),
            ("99", "not a signal number"),
            ("99999999999", "not a signal number"),
            ("-15", "not a signal name"),
            ("TERMINATE", "not a signal name"),
            ("SIG", "not a signal name"),
            ("RTMIN+3", "not a signal name"),
        ] {
            let e = StopSignal::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(StopTarget::parse("group"), Ok(StopTarget::Group));
        assert_eq!(StopTarget::parse("leader"), Ok(StopTarget::Leader));
        assert_eq!(StopTarget::default(), StopTarget::Group);
        assert!(
            StopTarget::parse("master")
                .unwrap_err()
                .contains("neither group nor leader")
        );
        let s = Stop {
            signal: StopSignal::parse("QUIT").unwrap(),
            target: StopTarget::Leader,
        };
        assert_eq!(s.to_string(), "SIGQUIT to its leader");
    }
}
