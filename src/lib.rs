//! baton: roll a socket-activated web application forward and back with no
//! dropped request.
//!
//! # Theory of operation
//!
//! systemd owns the port (`app.socket`) and starts baton, which takes the
//! listening sockets (LISTEN_FDS) and keeps them open for its whole life.
//! baton never accepts on them. It watches `release/current.conf`, which
//! names a release (a binary and its config), and runs each release as a
//! *generation*: the binary with the sockets as fds 3.., `-c <cfg>`,
//! LISTEN_FDS/LISTEN_PID for it, and NOTIFY_SOCKET pointing at baton.
//!
//! A rollout starts a new generation beside the serving one. Both accept on
//! the same sockets; the kernel queues connections while neither does, so
//! none is refused. When the new generation is ready (by its release's
//! readiness mode: READY=1 checked against the sender's credentials, a span
//! survived after its exec, a check command that passed, or the exec
//! itself), baton points `app.bin`/`app.cfg` at it and sends the old
//! generation its stop signal (SIGTERM unless its release says otherwise),
//! to its process group or its leader alone; the old one drains and exits,
//! or its whole group is killed after `--stop-timeout`. A release that
//! fails to become ready is stopped and the old one serves on; a serving
//! release that dies is restarted with backoff, or, if it dies within its
//! probation, the last known good release is started instead (the rule,
//! which releases count as good and for how long, is in
//! [`core::recovery`]).
//!
//! ## The daemon
//!
//! Everything is one single-threaded loop ([`supervisor`]): signals arrive
//! through a signalfd, file changes through inotify ([`watch`]),
//! notifications through a datagram socket ([`notify`]), and deadlines are
//! the poll timeout. Idle, baton sleeps in `poll` with no timeout.
//!
//! - **Intake.** What baton inherits (sockets, NOTIFY_SOCKET, the rest of
//!   the environment) is read once, before anything else, by [`inherit`];
//!   the sockets are validated by [`sockets`]. No other module reads the
//!   environment, and a generation never sees a variable meant for baton.
//! - **Decisions** are pure transitions in [`core`], which is handed a
//!   reading of both clocks ([`clock::Now`]) with each event and answers
//!   with actions; whether a generation is ready is [`readiness`]'s to say.
//!   What baton says about it all (STATUS=, the state file) is rendered by
//!   [`report`] and sent by [`systemd`].
//! - **Edits** are debounced: the first edit after a quiet spell acts at
//!   once, edits closer together than 100 ms are a burst read once more
//!   when the file has been quiet that long ([`supervisor::SETTLE`]), and
//!   acted on only if it now reads differently: one edit, one attempt.
//!   current.conf is parsed and checked by [`config`].
//! - **Per-release settings** (`"ready"`, `"stop.signal"`, `"stop.target"`,
//!   `"env"` in current.conf) are part of the release, over the flags:
//!   changing one is a new release to roll out. [`readiness`] and [`stop`]
//!   parse them.
//! - **Starting a generation** is the one fork/exec, in [`spawn`]:
//!   everything is allocated before the fork, the child makes only
//!   async-signal-safe calls, and it reports a failed exec through a
//!   close-on-exec pipe. The loop polls that pipe like any other event
//!   (EOF: the exec worked), so baton never waits for a child. A readiness
//!   check attempt is started the same way ([`spawn::Exec::program`]): a
//!   child in its own process group, its output a pipe the loop polls,
//!   killed on its deadline.
//! - **Reaping** happens in exactly one place, on SIGCHLD, until nothing is
//!   left. A leader is first seen with WNOWAIT, so that while its zombie
//!   still holds the process group id, the rest of its group is killed;
//!   only then is it reaped (the same for a check attempt). baton is a
//!   child subreaper, so orphaned
//!   grandchildren are reaped too. Signals go through pidfds, so a recycled
//!   pid is never hit.
//! - **A baton that died** (kill -9, a crash) leaves its generations
//!   running under the shipped units (`KillMode=process`). The next baton
//!   recognises them from the state file (pid, process start time from
//!   [`procfs`], boot id), lets the live one serve until its own generation
//!   is live and then retires it; it watches them through their pidfds,
//!   since they are not its children.
//! - **Upgrading itself** (`baton upgrade`, SIGUSR2) replaces the program,
//!   not the process: the running image writes its state as a
//!   [`handover`], has the new binary check it in a child, then execs that
//!   binary with the sockets, the notify socket and every generation's
//!   pidfd left open. The pid systemd watches, the children and the
//!   deadlines stay; a new image that cannot adopt the handover execs the
//!   previous one again.
//!
//! ## The operator side
//!
//! `baton status`, `switch`, `reload`, `releases`, `upgrade` and `history`
//! ([`ops`]) are separate processes that share no memory with the daemon
//! and import neither the loop nor the state machine. They meet it in the
//! file system: the state file it replaces atomically whenever something
//! changes and the flock it holds while it runs ([`state`], laid out by
//! [`paths`]), current.conf (which `switch` replaces atomically), SIGHUP
//! for `reload` and SIGUSR2 for `upgrade`. The state file outlives the
//! daemon: `history` reads it whether baton runs or not, and a new baton
//! carries its history, last known good and held-back release over
//! ([`core::recovery`]). They wait with inotify on the app dir and a
//! deadline, never by polling. They read `~/` in current.conf exactly as
//! the daemon does ([`inherit::home`]).
//!
//! ## The rest
//!
//! [`cli`] parses the command line (spans through [`span`]); [`logging`]
//! writes stderr in the journal's format when stderr is the journal.

pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod handover;
pub mod inherit;
pub mod logging;
pub mod notify;
pub mod ops;
pub mod paths;
pub mod procfs;
pub mod readiness;
pub mod report;
pub mod sockets;
pub mod span;
pub mod spawn;
pub mod state;
pub mod stop;
pub mod supervisor;
pub mod systemd;
pub mod watch;
