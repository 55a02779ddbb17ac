//! baton's test kit: the helpers that tests/integration, tests/systemd.rs
//! and bench/ share, so that each exists once.
//!
//! Everything here starts or talks to real processes, files and sockets;
//! nothing fakes baton. What it knows of baton is only what a user can see
//! from outside: the release layout on disk, the log's timestamps, the
//! example app's `release V pid P` reply. It does not link baton (a
//! dev-dependency cycle): a test that wants baton's typed state file reads
//! it with `baton::state` itself.
//!
//! - [`tempdir`]: a directory removed on drop.
//! - [`wait`]: polling a condition with a deadline, the one way to wait.
//! - [`http`]: one GET on a fresh connection, every failure told apart.
//! - [`load`]: client threads doing GETs until stopped, with a tally.
//! - [`layout`]: app dir, releases, current.conf renamed into place.
//! - [`clock`]: civil dates, for the timestamps in baton's log.
//! - [`procs`]: what /proc says: processes, children, fds, status fields.
//! - [`cmd`]: finding and running commands, reading their output.
//! - [`nspawn`]: a real systemd as PID 1 in a throwaway container.

pub mod clock;
pub mod cmd;
pub mod http;
pub mod layout;
pub mod load;
pub mod nspawn;
pub mod procs;
pub mod tempdir;
pub mod wait;

pub use tempdir::TempDir;
