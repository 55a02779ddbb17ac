//! Command line: `baton run|reload|status|switch|releases|history`.
//!
//! Hand-written rather than pulled from a parser crate: five subcommands and a
//! dozen flags do not need one, and the exact error lines (one line, exit 2)
//! are part of the contract.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::readiness::Mode;
use crate::sockets::ListenAddr;
use crate::span::parse_span;
use crate::stop::{Stop, StopSignal, StopTarget};

pub const MAIN_HELP: &str = "\
baton: roll a socket-activated web application forward and back with no dropped request

Usage: baton <COMMAND> [OPTIONS]

Commands:
  run       supervise the release named by current.conf (what app.service runs)
  reload    ask the running baton for a fresh generation and wait for the outcome
  status    show what serves, and the last rollout
  switch    point current.conf at another release (optionally wait for it)
  releases  list the releases beside current.conf, marking the serving one
  upgrade   make the running baton re-execute its binary in place (after a
            package upgrade): same pid, sockets and generations
  history   what served when: the last rollouts, restarts and rollbacks

Run 'baton <COMMAND> --help' for the options of each command.

Example:
  baton run --config ~/app/release/current.conf --listen 127.0.0.1:3000
";

pub const RUN_HELP: &str = "\
baton run: supervise the release named by current.conf

Usage: baton run --config PATH [OPTIONS]

current.conf is JSON naming the live release:
  {\"bin.file\": \"~/app/release/app.2.0\", \"cfg.file\": \"~/app/release/cfg.2.0\"}
Each release runs as `bin.file -c cfg.file` with the listening sockets as
fds 3, 4, ... (LISTEN_FDS/LISTEN_PID set for it) and NOTIFY_SOCKET pointing at
baton. Editing current.conf rolls the service to what it names; the old
generation is sent its stop signal (SIGTERM) once the new one is ready.
A release may carry its own settings, over the flags below:
  \"ready\": \"after:2s\", \"stop.signal\": \"QUIT\", \"stop.target\": \"leader\",
  \"env\": {\"PORT\": \"8000\"}

Options:
  --config PATH           current.conf to watch (required)
                          e.g. --config ~/app/release/current.conf
  --app-dir DIR           where the app runs (its working directory) and where
                          baton keeps the links app.bin/app.cfg and its state;
                          default: the parent of current.conf's directory
                          e.g. --app-dir ~/app
  --listen ADDR           bind ADDR when systemd passes no socket; repeatable
                          e.g. --listen 127.0.0.1:3000 --listen [::]:3000
                               --listen unix:/run/app.sock
  --ready MODE            how a new generation shows it is ready [default: notify]
                            notify      it sends READY=1 to NOTIFY_SOCKET
                            after:SPAN  it is still alive SPAN after its exec
                            check:CMD   `/bin/sh -c CMD` exits 0 (run every
                                        100 ms; BATON_PID, BATON_GENERATION,
                                        BATON_RELEASE, BATON_APP_DIR are set)
                            exec        its exec succeeded (the weakest)
                          e.g. --ready after:2s
                               --ready 'check:curl -fsS http://127.0.0.1:8081/health'
  --ready-timeout SPAN    how long a new generation may take to be ready; it
                          already accepts connections meanwhile
                          [default: 20s; an app may ask for more with
                          EXTEND_TIMEOUT_USEC=] e.g. --ready-timeout 1min
  --stop-signal SIG       the signal that asks a generation to drain and exit:
                          a name or a number [default: TERM]
                          e.g. --stop-signal QUIT (uWSGI, nginx), --stop-signal INT
  --stop-target WHO       send it to the generation's whole process group, or
                          only to its leader, which stops its own workers
                          [default: group] e.g. --stop-target leader
  --stop-timeout SPAN     how long a retired generation may drain after its stop
                          signal before SIGKILL to its whole process group
                          [default: 30s] e.g. --stop-timeout 10s
  --soak SPAN             keep the old generation serving beside the new one
                          until the new one has been ready this long
                          [default: 0] e.g. --soak 30s
  --probation SPAN        a release that dies within this span of going live is
                          replaced by the last known good release: the last
                          one that survived its probation or served until a
                          rollout replaced it [default: 10s] e.g. --probation 1min
  --insecure-permissions  roll out files that are world-writable or owned by
                          another user (refused by default)
  -h, --help              show this help

SPAN: seconds (2, 0.5) or a systemd-style span (500ms, 2s, 1min, 1h).

Example:
  baton run --config examples/release/current.conf --listen 127.0.0.1:3000
";

pub const RELOAD_HELP: &str = "\
baton reload: start a fresh generation of the release current.conf names

Sends SIGHUP to the running baton (what `systemctl reload` does) and waits
until the fresh generation serves (exit 0) or its rollout fails (exit 1).

Usage: baton reload --config PATH [--app-dir DIR] [--timeout SPAN]

Options:
  --config PATH     current.conf of the running baton (required)
  --app-dir DIR     as given to `baton run` [default: parent of current.conf's directory]
  --timeout SPAN    give up waiting after SPAN [default: 120s]
  -h, --help        show this help

Example:
  baton reload --config ~/app/release/current.conf
";

pub const STATUS_HELP: &str = "\
baton status: what serves, and how the last rollout went

Exit status: 0 serving and the last rollout succeeded, 1 the last rollout
failed, 3 baton is not running.

Usage: baton status --config PATH [--app-dir DIR] [--json]

Options:
  --config PATH   current.conf of the running baton (required)
  --app-dir DIR   as given to `baton run` [default: parent of current.conf's directory]
  --json          print baton's state file as JSON
  -h, --help      show this help

Example:
  baton status --config ~/app/release/current.conf
";

pub const SWITCH_HELP: &str = "\
baton switch: point current.conf at another release

RELEASE is a bin file in current.conf's directory (app.2.0) or its version
(2.0); the cfg file with the same version (cfg.2.0) goes with it.
current.conf is replaced atomically (written beside it, then renamed).

Usage: baton switch RELEASE --config PATH [--app-dir DIR] [--wait[=SPAN]]

Options:
  --config PATH   current.conf to rewrite (required)
  --app-dir DIR   as given to `baton run` [default: parent of current.conf's directory]
  --wait[=SPAN]   wait until RELEASE serves (exit 0) or its rollout fails
                  (exit 1) [default SPAN: 120s]
  -h, --help      show this help

Example:
  baton switch 2.0 --config ~/app/release/current.conf --wait
";

pub const RELEASES_HELP: &str = "\
baton releases: list the releases beside current.conf

Usage: baton releases --config PATH [--app-dir DIR]

Options:
  --config PATH   current.conf (required)
  --app-dir DIR   as given to `baton run` [default: parent of current.conf's directory]
  -h, --help      show this help

Example:
  baton releases --config ~/app/release/current.conf
";

pub const UPGRADE_HELP: &str = "\
baton upgrade: make the running baton re-execute its binary in place

After a new baton binary was installed at the path baton was started from
(a package upgrade), the running baton runs it in place: same pid (systemd's
MainPID), same listening sockets, every generation kept serving, every
deadline and the rollout in progress carried over. No request is dropped
and no app restarts. The new binary is first asked whether it can take over
(`baton handover-check`); if it is missing, not executable, crashes or
refuses, the running baton carries on unchanged and the upgrade fails with
the reason. Sending SIGUSR2 to baton does the same without waiting.

Usage: baton upgrade --config PATH [--app-dir DIR] [--wait[=SPAN]]

Options:
  --config PATH   current.conf of the running baton (required)
  --app-dir DIR   as given to `baton run` [default: parent of current.conf's directory]
  --wait[=SPAN]   wait until the new image serves (exit 0) or the upgrade
                  fails (exit 1) [default SPAN: 120s]
  -h, --help      show this help

Example:
  apt-get install ./baton_0.2.0_amd64.deb && baton upgrade --config /srv/app/release/current.conf --wait
";

pub const HISTORY_HELP: &str = "\
baton history: what served when

The last 100 rollouts on this app dir, oldest first: when each began, the
release, what triggered it (startup, edit, reload, restart, rollback), how
it ended and how long it took, and the generation it replaced. A run of
restarts of one release is one entry with a count of attempts. The history
is kept in baton's state file and carried over when baton restarts, so it
can be read whether baton runs or not.

Usage: baton history --config PATH [--app-dir DIR] [--json]

Options:
  --config PATH   current.conf of the baton (required)
  --app-dir DIR   as given to `baton run` [default: parent of current.conf's directory]
  --json          print the entries as a JSON array
  -h, --help      show this help

Example:
  baton history --config ~/app/release/current.conf
";

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
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn run_defaults_and_flags() {
        let Command::Run(r) = parse(&args("run --config /x/current.conf")).unwrap() else {
            panic!()
        };
        assert_eq!(r.ready_timeout, Duration::from_secs(20));
        assert_eq!(r.stop_timeout, Duration::from_secs(30));
        assert_eq!(r.probation, Duration::from_secs(10));
        assert_eq!(r.soak, Duration::ZERO);
        let Command::Run(r) = parse(&args(
            "run --config=/c --listen 127.0.0.1:3000 --listen=unix:/tmp/s --ready-timeout 500ms --stop-timeout=2 --soak 1s --insecure-permissions",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.listen, vec!["127.0.0.1:3000", "unix:/tmp/s"]);
        assert_eq!(r.ready_timeout, Duration::from_millis(500));
        assert_eq!(r.stop_timeout, Duration::from_secs(2));
        assert!(r.insecure_permissions);
        assert_eq!(r.ready, Mode::Notify);
        assert_eq!(r.stop, Stop::default());
    }

    #[test]
    fn readiness_and_stop_flags() {
        let parse_run = |v: &[&str]| {
            let mut a = vec!["run".to_owned(), "--config".into(), "/c".into()];
            a.extend(v.iter().map(|s| s.to_string()));
            match parse(&a) {
                Ok(Command::Run(r)) => Ok(r),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.0),
            }
        };
        let r = parse_run(&[
            "--ready",
            "check:curl -fsS http://127.0.0.1:8081/",
            "--stop-signal",
            "QUIT",
            "--stop-target=leader",
        ])
        .unwrap();
        assert_eq!(
            r.ready,
            Mode::Check("curl -fsS http://127.0.0.1:8081/".into())
        );
        assert_eq!(r.stop.signal.to_string(), "SIGQUIT");
        assert_eq!(r.stop.target, StopTarget::Leader);
        let r = parse_run(&["--ready=after:2s", "--stop-signal=2"]).unwrap();
        assert_eq!(r.ready, Mode::After(Duration::from_secs(2)));
        assert_eq!(r.stop.signal.to_string(), "SIGINT");
        assert_eq!(parse_run(&["--ready", "exec"]).unwrap().ready, Mode::Exec);
        for (args, want) in [
            (
                vec!["--ready", "sometimes"],
                "run: --ready 'sometimes': 'sometimes' is not a readiness mode",
            ),
            (vec!["--ready", "after:0"], "greater than zero"),
            (vec!["--ready", "check:"], "check: needs a command"),
            (vec!["--ready"], "--ready needs a value"),
            (
                vec!["--ready", "after:20s"],
                "run: --ready: ready after:20s can never be met: the span must be shorter than --ready-timeout 20s",
            ),
            (
                vec!["--ready", "after:10s", "--ready-timeout", "5s"],
                "shorter than --ready-timeout 5s",
            ),
            (
                vec!["--stop-signal", "KILL"],
                "run: --stop-signal 'KILL': SIGKILL cannot be a stop signal",
            ),
            (vec!["--stop-signal", "NOPE"], "'NOPE' is not a signal name"),
            (
                vec!["--stop-target", "all"],
                "run: --stop-target 'all': 'all' is neither group nor leader",
            ),
        ] {
            let e = parse_run(&args).expect_err(&format!("{args:?}"));
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn usage_errors() {
        for bad in [
            "",
            "frobnicate",
            "run",
            "run --config",
            "run --config /c --bogus",
            "run --config /c --ready-timeout soon",
            "run --config /c --ready-timeout 0",
            "run --config /c --listen nowhere",
            "run --config /c extra",
            "status",
            "switch --config /c",
            "status --config /c --wait",
        ] {
            let e = parse(&args(bad)).expect_err(bad);
            assert!(!e.0.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn client_commands() {
        assert_eq!(
            parse(&args("switch 2.0 --config /c --wait=5s")).unwrap(),
            Command::Switch {
                release: "2.0".into(),
                target: Target {
                    config: "/c".into(),
                    app_dir: None
                },
                wait: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(
            parse(&args("status --config /c --json")).unwrap(),
            Command::Status {
                target: Target {
                    config: "/c".into(),
                    app_dir: None
                },
                json: true
            }
        );
        assert!(matches!(
            parse(&args("reload --help")).unwrap(),
            Command::Help(RELOAD_HELP)
        ));
        assert_eq!(
            parse(&args("history --config /c --json")).unwrap(),
            Command::History {
                target: Target {
                    config: "/c".into(),
                    app_dir: None
                },
                json: true
            }
        );
        assert!(matches!(
            parse(&args("history --help")).unwrap(),
            Command::Help(HISTORY_HELP)
        ));
        assert!(parse(&args("history --config /c --wait")).is_err());
        assert!(HISTORY_HELP.contains(&format!(
            "The last {} rollouts",
            crate::core::history::HISTORY_LEN
        )));
    }
}
