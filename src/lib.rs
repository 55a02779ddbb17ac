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
//! none is refused. When the new generation sends READY=1 (checked against
//! the sender's credentials), baton points `app.bin`/`app.cfg` at it and
//! sends SIGTERM to the old generation's process group; the old one drains
//! and exits, or is killed after `--stop-timeout`. A release that fails to
//! become ready is stopped and the old one serves on; a serving release that
//! dies is restarted with backoff, or, if it dies within its probation, the
//! last known good release is started instead.
//!
//! Everything is one single-threaded loop ([`supervisor`]): signals arrive
//! through a signalfd, file changes through inotify ([`watch`]),
//! notifications through a datagram socket ([`notify`]), and deadlines are
//! the poll timeout. The decisions are pure transitions in [`generation`];
//! [`spawn`] holds the one fork/exec; [`systemd`] reports baton's own state.
//! Idle, baton sleeps in `poll` with no timeout.

pub mod cli;
pub mod client;
pub mod config;
pub mod generation;
pub mod logging;
pub mod notify;
pub mod sockets;
pub mod spawn;
pub mod state;
pub mod supervisor;
pub mod systemd;
pub mod watch;
