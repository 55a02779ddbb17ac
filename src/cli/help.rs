//! What `baton --help` and `baton COMMAND --help` print.

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
