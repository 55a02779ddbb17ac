//! A real systemd as PID 1 in a throwaway container, for end-to-end tests.
//!
//! Follows /work/shared/SYSTEMD-TESTING.md: `systemd-nspawn -D /
//! --volatile=yes --boot --register=no --keep-unit` (the host's /usr, a
//! tmpfs root, nothing to download), in a cgroup of its own (removed
//! afterwards), stopped with SIGTERM to nspawn. Commands run inside with
//! `nsenter -t PID1 -a`; HTTP clients are threads of the test process that
//! joined the container's network namespace (`setns`), so they reach its
//! loopback and see every error exactly (refused, reset, timeout).
//!
//! What goes inside is the caller's: a [`Boot`] names the machine, lends
//! it a work dir (removed with the machine) and lists the binds (binaries,
//! unit files, app dirs) and the network. [`cannot_boot`] says why this
//! cannot work on a machine (not root, no systemd-nspawn, unknown cgroup
//! layout), so that a test can skip instead.

mod boot;
mod cgroup;
mod machine;

pub use boot::{Bind, Boot, Network, cannot_boot, machine_name};
pub use cgroup::{cgroup_dirs, container_init, remove_cgroups};
pub use machine::Machine;
