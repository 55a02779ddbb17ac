//! Command line: `baton run|reload|status|switch|releases|upgrade|history`.
//!
//! Hand-written rather than pulled from a parser crate: seven subcommands and a
//! dozen flags do not need one, and the exact error lines (one line, exit 2)
//! are part of the contract.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::readiness::Mode;
use crate::sockets::ListenAddr;
use crate::span::parse_span;
use crate::stop::{Stop, StopSignal, StopTarget};

mod help;
pub use help::*;

/// What `baton run` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct RunArgs {
    pub config: PathBuf,
    pub app_dir: Option<PathBuf>,
    pub listen: Vec<String>,
    pub ready: Mode,
    pub ready_timeout: Duration,
    pub stop: Stop,
    pub stop_timeout: Duration,
    pub soak: Duration,
    pub probation: Duration,
    pub insecure_permissions: bool,
}

/// Where the client commands find a running baton.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub config: PathBuf,
    pub app_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(RunArgs),
    Reload {
        target: Target,
        timeout: Duration,
    },
    Status {
        target: Target,
        json: bool,
    },
    Switch {
        release: String,
        target: Target,
        wait: Option<Duration>,
    },
    Releases {
        target: Target,
    },
    Upgrade {
        target: Target,
        wait: Option<Duration>,
    },
    /// Internal, run by a baton that is about to upgrade: can this binary
    /// adopt the handover on stdin?
    HandoverCheck,
    History {
        target: Target,
        json: bool,
    },
    /// Print this text to stdout and exit 0.
    Help(&'static str),
    Version,
}

/// A command line that cannot be run: printed on one line, exit status 2.
#[derive(Debug, PartialEq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// A starting generation already accepts on the shared socket: one that
/// never becomes ready serves its share of the traffic until this runs out.
/// 20 s fits the servers baton is tested with (each ready within a few
/// seconds) while cutting that exposure to a third of the 60 s it was; an
/// app that needs longer asks for it (EXTEND_TIMEOUT_USEC=) or is given
/// `--ready-timeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage("missing command; try 'baton --help'"));
    };
    match sub.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help(MAIN_HELP)),
        "-V" | "--version" => Ok(Command::Version),
        "run" => parse_run(rest),
        "reload" => client(rest, RELOAD_HELP, |c| Command::Reload {
            target: c.target,
            timeout: c.timeout.unwrap_or(DEFAULT_WAIT),
        }),
        "status" => client(rest, STATUS_HELP, |c| Command::Status {
            target: c.target,
            json: c.json,
        }),
        "switch" => {
            let c = match parse_client_args(rest, SWITCH_HELP, true)? {
                Ok(c) => c,
                Err(help) => return Ok(help),
            };
            let release = c.positional.ok_or_else(|| {
                usage("switch: missing RELEASE (e.g. 'baton switch 2.0 --config PATH')")
            })?;
            Ok(Command::Switch {
                release,
                target: c.target,
                wait: c.wait,
            })
        }
        "releases" => client(rest, RELEASES_HELP, |c| Command::Releases {
            target: c.target,
        }),
        "upgrade" => client(rest, UPGRADE_HELP, |c| Command::Upgrade {
            target: c.target,
            wait: c.wait,
        }),
        "handover-check" if rest.is_empty() => Ok(Command::HandoverCheck),
        "history" => client(rest, HISTORY_HELP, |c| Command::History {
            target: c.target,
            json: c.json,
        }),
        other if other.starts_with('-') => Err(usage(format!(
            "unknown option '{other}' before the command; try 'baton --help'"
        ))),
        other => Err(usage(format!(
            "unknown command '{other}'; try 'baton --help'"
        ))),
    }
}

/// Splits `--flag=value` and hands out values for `--flag value`.
struct Args<'a> {
    items: std::slice::Iter<'a, String>,
    command: &'static str,
}

impl<'a> Args<'a> {
    /// Next (flag, inline value) pair, or a positional argument as flag.
    fn next(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        let arg = self.items.next()?;
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => Some((flag, Some(value))),
            _ => Some((arg.as_str(), None)),
        }
    }

    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, UsageError> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .items
                .next()
                .map(String::as_str)
                .ok_or_else(|| usage(format!("{}: {flag} needs a value", self.command))),
        }
    }

    fn span(&mut self, flag: &str, inline: Option<&'a str>) -> Result<Duration, UsageError> {
        let v = self.value(flag, inline)?;
        parse_span(v).map_err(|e| usage(format!("{}: {flag} '{v}': {e}", self.command)))
    }

    fn no_value(&self, flag: &str, inline: Option<&str>) -> Result<(), UsageError> {
        match inline {
            Some(_) => Err(usage(format!("{}: {flag} takes no value", self.command))),
            None => Ok(()),
        }
    }

    fn unknown(&self, flag: &str) -> UsageError {
        usage(format!(
            "{}: unknown option '{flag}'; try 'baton {} --help'",
            self.command, self.command
        ))
    }
}

fn parse_run(rest: &[String]) -> Result<Command, UsageError> {
    let mut a = Args {
        items: rest.iter(),
        command: "run",
    };
    let mut config = None;
    let mut run = RunArgs {
        config: PathBuf::new(),
        app_dir: None,
        listen: Vec::new(),
        ready: Mode::Notify,
        ready_timeout: DEFAULT_READY_TIMEOUT,
        stop: Stop::default(),
        stop_timeout: Duration::from_secs(30),
        soak: Duration::ZERO,
        probation: Duration::from_secs(10),
        insecure_permissions: false,
    };
    while let Some((flag, inline)) = a.next() {
        match flag {
            "-h" | "--help" => return Ok(Command::Help(RUN_HELP)),
            "--config" => config = Some(PathBuf::from(a.value(flag, inline)?)),
            "--app-dir" => run.app_dir = Some(PathBuf::from(a.value(flag, inline)?)),
            "--listen" => {
                let addr = a.value(flag, inline)?;
                ListenAddr::parse(addr)
                    .map_err(|e| usage(format!("run: --listen '{addr}': {e}")))?;
                run.listen.push(addr.to_owned());
            }
            "--ready" => {
                let v = a.value(flag, inline)?;
                run.ready =
                    Mode::parse(v).map_err(|e| usage(format!("run: --ready '{v}': {e}")))?;
            }
            "--stop-signal" => {
                let v = a.value(flag, inline)?;
                run.stop.signal = StopSignal::parse(v)
                    .map_err(|e| usage(format!("run: --stop-signal '{v}': {e}")))?;
            }
            "--stop-target" => {
                let v = a.value(flag, inline)?;
                run.stop.target = StopTarget::parse(v)
                    .map_err(|e| usage(format!("run: --stop-target '{v}': {e}")))?;
            }
            "--ready-timeout" => run.ready_timeout = nonzero(a.span(flag, inline)?, flag)?,
            "--stop-timeout" => run.stop_timeout = nonzero(a.span(flag, inline)?, flag)?,
            "--soak" => run.soak = a.span(flag, inline)?,
            "--probation" => run.probation = a.span(flag, inline)?,
            "--insecure-permissions" => {
                a.no_value(flag, inline)?;
                run.insecure_permissions = true;
            }
            other if other.starts_with('-') => return Err(a.unknown(other)),
            other => return Err(usage(format!("run: unexpected argument '{other}'"))),
        }
    }
    run.config = config
        .ok_or_else(|| usage("run: --config PATH is required (the current.conf to watch)"))?;
    run.ready
        .fits(run.ready_timeout)
        .map_err(|e| usage(format!("run: --ready: {e}")))?;
    Ok(Command::Run(run))
}

fn nonzero(d: Duration, flag: &str) -> Result<Duration, UsageError> {
    if d.is_zero() {
        Err(usage(format!("run: {flag} must be greater than zero")))
    } else {
        Ok(d)
    }
}

struct ClientArgs {
    target: Target,
    json: bool,
    wait: Option<Duration>,
    timeout: Option<Duration>,
    positional: Option<String>,
}

/// Parses a client command that takes no positional argument.
fn client(
    rest: &[String],
    help: &'static str,
    build: impl FnOnce(ClientArgs) -> Command,
) -> Result<Command, UsageError> {
    Ok(match parse_client_args(rest, help, false)? {
        Ok(c) => build(c),
        Err(help) => help,
    })
}

/// `Ok(Err(Help))` when --help was asked for.
fn parse_client_args(
    rest: &[String],
    help: &'static str,
    takes_release: bool,
) -> Result<Result<ClientArgs, Command>, UsageError> {
    let command = help
        .split(':')
        .next()
        .unwrap_or("baton")
        .trim_start_matches("baton ");
    let command: &'static str = match command {
        "reload" => "reload",
        "status" => "status",
        "switch" => "switch",
        "upgrade" => "upgrade",
        "history" => "history",
        _ => "releases",
    };
    let mut a = Args {
        items: rest.iter(),
        command,
    };
    let mut c = ClientArgs {
        target: Target {
            config: PathBuf::new(),
            app_dir: None,
        },
        json: false,
        wait: None,
        timeout: None,
        positional: None,
    };
    let mut config = None;
    while let Some((flag, inline)) = a.next() {
        match flag {
            "-h" | "--help" => return Ok(Err(Command::Help(help))),
            "--config" => config = Some(PathBuf::from(a.value(flag, inline)?)),
            "--app-dir" => c.target.app_dir = Some(PathBuf::from(a.value(flag, inline)?)),
            "--json" if matches!(command, "status" | "history") => {
                a.no_value(flag, inline)?;
                c.json = true;
            }
            "--timeout" if command == "reload" => c.timeout = Some(a.span(flag, inline)?),
            "--wait" if command == "switch" || command == "upgrade" => {
                c.wait = Some(match inline {
                    Some(_) => a.span(flag, inline)?,
                    None => DEFAULT_WAIT,
                })
            }
            other if other.starts_with('-') && other.len() > 1 => return Err(a.unknown(other)),
            other if takes_release && c.positional.is_none() => {
                c.positional = Some(other.to_owned())
            }
            other => return Err(usage(format!("{command}: unexpected argument '{other}'"))),
        }
    }
    c.target.config =
        config.ok_or_else(|| usage(format!("{command}: --config PATH is required")))?;
    Ok(Ok(c))
}

#[cfg(test)]
mod tests;
