//! What to boot: the machine's name, its work dir, its network, what it
//! sees of the host, its systemd's options; and whether booting can work
//! here at all. Kept apart from the running [`Machine`](super::Machine) so
//! that new options (another network mode, more binds) land in one place.

use std::path::{Path, PathBuf};

use crate::TempDir;
use crate::cmd::which;

/// How the container reaches the network.
#[derive(Debug, Clone, PartialEq)]
pub enum Network {
    /// `--private-network`: a loopback of its own and nothing else, so
    /// the host's ports stay free and only the test reaches the container.
    Private,
}

/// A host path made visible inside.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub inside: String,
    pub read_only: bool,
}

/// How to boot one container.
pub struct Boot {
    /// The machine name (`--machine`), also its cgroup's name: at most 64
    /// characters of [a-zA-Z0-9-] (see [`machine_name`]).
    pub name: String,
    /// Host directory for everything the test controls (binds usually
    /// point into it); removed after the container is gone.
    pub work: TempDir,
    pub network: Network,
    pub binds: Vec<Bind>,
    /// More systemd-nspawn options, after the ones [`Boot::start`] always
    /// gives.
    pub nspawn_args: Vec<String>,
    /// The container's kernel command line, i.e. options for its systemd.
    pub kernel_args: Vec<String>,
}

/// `<prefix>-<tag>-<pid>` as a machine name: underscores made dashes,
/// cut to 60 characters.
pub fn machine_name(prefix: &str, tag: &str) -> String {
    let name = format!("{prefix}-{}-{}", tag.replace('_', "-"), std::process::id());
    name.chars().take(60).collect()
}

impl Boot {
    /// A private network, no binds, and a systemd that neither runs the
    /// first-boot wizard nor starts the host's services
    /// (`systemd.firstboot=off systemd.unit=basic.target`).
    pub fn new(name: &str, work: TempDir) -> Boot {
        Boot {
            name: name.to_owned(),
            work,
            network: Network::Private,
            binds: Vec::new(),
            nspawn_args: Vec::new(),
            kernel_args: vec![
                "systemd.firstboot=off".into(),
                "systemd.unit=basic.target".into(),
            ],
        }
    }

    /// `host` read-only at `inside`.
    pub fn bind_ro(mut self, host: impl Into<PathBuf>, inside: &str) -> Boot {
        self.binds.push(Bind {
            host: host.into(),
            inside: inside.to_owned(),
            read_only: true,
        });
        self
    }

    /// `host` read-write at `inside`.
    pub fn bind(mut self, host: impl Into<PathBuf>, inside: &str) -> Boot {
        self.binds.push(Bind {
            host: host.into(),
            inside: inside.to_owned(),
            read_only: false,
        });
        self
    }

    /// systemd-nspawn's arguments.
    pub(super) fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-D", "/", "--volatile=yes", "--boot"]
            .map(String::from)
            .into();
        match self.network {
            Network::Private => a.push("--private-network".into()),
        }
        a.extend(
            [
                "--register=no",
                "--keep-unit",
                &format!("--machine={}", self.name),
                "--console=read-only",
            ]
            .map(String::from),
        );
        for b in &self.binds {
            let opt = if b.read_only { "--bind-ro" } else { "--bind" };
            a.push(format!("{opt}={}:{}", b.host.display(), b.inside));
        }
        a.extend(self.nspawn_args.iter().cloned());
        a.extend(self.kernel_args.iter().cloned());
        a
    }
}

// ---- can it run here? ----

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Cgroups {
    /// cgroup v1 controllers + name=systemd + cgroup2 at /unified.
    Hybrid,
    /// cgroup2 only, at /sys/fs/cgroup.
    Unified,
}

pub(super) fn cgroups() -> Option<Cgroups> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("systemd/cgroup.procs").exists() && base.join("unified/cgroup.procs").exists() {
        Some(Cgroups::Hybrid)
    } else if base.join("cgroup.controllers").exists() {
        Some(Cgroups::Unified)
    } else {
        None
    }
}

/// Why systemd-in-a-container cannot run here, if it cannot.
pub fn cannot_boot() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (systemd-nspawn needs root)".into());
    }
    for prog in ["systemd-nspawn", "nsenter", "systemctl"] {
        if which(prog).is_none() {
            return Some(format!(
                "{prog} is not installed (apt-get install systemd-container=$(dpkg-query -W -f='${{Version}}' systemd))"
            ));
        }
    }
    if !Path::new("/usr/lib/systemd/systemd").exists()
        && !Path::new("/lib/systemd/systemd").exists()
    {
        return Some("no /usr/lib/systemd/systemd to boot".into());
    }
    if cgroups().is_none() {
        return Some("unknown cgroup layout under /sys/fs/cgroup".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspawn_arguments() {
        let work = TempDir::new("kit-nspawn");
        let b = Boot::new("bt-x-1", work)
            .bind_ro("/opt/a", "/opt/b")
            .bind("/srv/x", "/srv/app");
        let args = b.args();
        let has = |s: &str| args.iter().any(|a| a == s);
        assert!(has("--private-network") && has("--machine=bt-x-1") && has("--register=no"));
        assert!(has("--bind-ro=/opt/a:/opt/b") && has("--bind=/srv/x:/srv/app"));
        assert_eq!(
            args[args.len() - 2..],
            ["systemd.firstboot=off", "systemd.unit=basic.target"]
        );
    }

    #[test]
    fn machine_names_are_short_and_dashed() {
        let n = machine_name("bt", &"a_b".repeat(40));
        assert!(n.starts_with("bt-a-ba-b") && n.len() == 60, "{n}");
    }
}
