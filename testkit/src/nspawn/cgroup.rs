//! The cgroups a container runs in, and finding its PID 1: shared by
//! [`super::Machine`] and test beds that run several containers their own
//! way (tests/fleet).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::boot::{Cgroups, cgroups};
use crate::procs;
use crate::wait::poll;

/// The cgroup directories a container named `name` gets on this host's
/// layout (one per hierarchy), or None for a layout systemd-nspawn cannot
/// boot on here ([`super::cannot_boot`] says so).
pub fn cgroup_dirs(name: &str) -> Option<Vec<PathBuf>> {
    let base = Path::new("/sys/fs/cgroup");
    Some(match cgroups()? {
        Cgroups::Hybrid => vec![
            base.join("systemd").join(name),
            base.join("unified").join(name),
        ],
        Cgroups::Unified => vec![base.join(name)],
    })
}

/// Kills whatever is left in the cgroups under `roots` and removes the
/// (then empty) trees, deepest first, trying each for 10 s at most.
/// Returns what could not be removed, and why.
pub fn remove_cgroups(roots: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for root in roots {
        let mut dirs = Vec::new();
        collect_dirs(root, &mut dirs);
        let deadline = Instant::now() + Duration::from_secs(10);
        for d in dirs.iter().rev() {
            let time = deadline.saturating_duration_since(Instant::now());
            let gone = poll(time, Duration::from_millis(20), || {
                if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                    for p in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                match fs::remove_dir(d) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            });
            if let Err(e) = gone {
                left.push(format!("cannot remove {}: {e}", d.display()));
            }
        }
    }
    left
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// The child of nspawn (pid `nspawn`) that is PID 1 in its own pid
/// namespace, once there is one.
pub fn container_init(nspawn: i32) -> Option<i32> {
    procs::children(nspawn).into_iter().find_map(|p| {
        let st = procs::status(p.pid).ok()?;
        let nspid = st.words("NSpid");
        (nspid.len() > 1 && nspid.last() == Some(&"1")).then_some(p.pid)
    })
}
