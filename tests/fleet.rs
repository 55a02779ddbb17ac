//! The fleet test bed: deploy/ansible rolling releases across three real
//! systemd hosts behind nginx, under load. Run by tests/fleet/run (which
//! installs what it needs and builds the .debs); `cargo test` leaves it out.
//!
//! Three hosts, each a systemd-nspawn container booting its own systemd, at
//! its own address on a bridge in a network namespace this process creates
//! (tests/fleet/bed.rs). baton goes on them through the role, from the .deb
//! `cargo deb` built, and serves the example app behind app.socket. Ansible
//! reaches them over ssh with a key made here, as operators' Ansible does.
//! nginx on this side has the three as one upstream, and a load generator
//! sends fresh-connection requests through it during every play
//! (tests/fleet/proxy.rs).
//!
//! The cases (each asserts on what the load saw and on what every host
//! serves afterwards, read from the host's own files):
//!
//! 1. a good release across the three hosts in batches;
//! 2. a release that crashes before READY on the canary;
//! 3. a release that becomes ready but fails the HTTP check in batch 2;
//! 4. bad input: a missing artifact, a corrupted one (checksum mismatch),
//!    a different build under a version the hosts already have;
//! 5. a host made unreachable mid-play (its container stopped);
//! 6. install run again changes nothing; a baton upgrade through the role
//!    leaves the app (and baton's own pid) running and drops nothing.
//!
//! and, between 1 and 2, "1b": rollback.yml back to the previous release,
//! then status.yml.
//!
//! Environment (set by tests/fleet/run): BATON_FLEET_DEB and
//! BATON_FLEET_DEB_UPGRADE (two builds of the package), BATON_FLEET_ANSIBLE
//! (ansible-playbook), BATON_FLEET_LOGS (where logs go; kept after the run),
//! BATON_FLEET_CASES (a comma-separated subset, for debugging).

#[path = "fleet/bed.rs"]
mod bed;
#[path = "fleet/cases.rs"]
mod cases;
#[path = "fleet/play.rs"]
mod play;
#[path = "fleet/proxy.rs"]
mod proxy;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any thread exists: the namespaces are this process's own.
    if let Err(e) = cases::prerequisites() {
        eprintln!("fleet: cannot run: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = bed::enter_private_namespaces() {
        eprintln!("fleet: cannot make the test bed's namespaces: {e:#}");
        return ExitCode::FAILURE;
    }
    match cases::run_all() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
