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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TempDir;
use crate::cmd::{stderr, stdout, which};
use crate::http::{self, HttpError, Reply, Timeouts};
use crate::load::Clients;
use crate::procs;
use crate::wait::{poll, wait_for};

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
    fn args(&self) -> Vec<String> {
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

    /// Boots the container and waits (60 s at most) until its systemd has
    /// finished booting; panics if it cannot. Call [`cannot_boot`] first.
    pub fn start(self) -> Machine {
        let layout = cgroups().expect("unknown cgroup layout (see cannot_boot)");
        let cgroup_dirs: Vec<PathBuf> = match layout {
            Cgroups::Hybrid => vec![
                PathBuf::from("/sys/fs/cgroup/systemd").join(&self.name),
                PathBuf::from("/sys/fs/cgroup/unified").join(&self.name),
            ],
            Cgroups::Unified => vec![PathBuf::from("/sys/fs/cgroup").join(&self.name)],
        };
        for d in &cgroup_dirs {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        // The shell moves itself into the container's own cgroups, then
        // becomes nspawn.
        let mut script = String::new();
        for d in &cgroup_dirs {
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", d.display()));
        }
        script.push_str("exec systemd-nspawn \"$@\"");
        let console = fs::File::create(self.work.join("console.log")).unwrap();
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("starting systemd-nspawn");
        let mut m = Machine {
            name: self.name,
            work: self.work,
            pid1: 0,
            netns: Arc::new(fs::File::open("/proc/self/ns/net").unwrap()),
            nspawn,
            cgroup_dirs,
        };
        // From here on, Drop cleans up whatever happens.
        let nspawn_pid = m.nspawn.id() as i32;
        m.pid1 = wait_for("the container's PID 1", Duration::from_secs(20), || {
            container_init(nspawn_pid).ok_or("no child of nspawn with NSpid 1 yet")
        });
        let state = wait_for("systemd to finish booting", Duration::from_secs(60), || {
            let out = m.exec(&["systemctl", "is-system-running", "--wait"]);
            let text = stdout(&out);
            match text.trim() {
                "running" | "degraded" => Ok(text),
                _ => Err(format!("is-system-running: {text} {}", stderr(&out))),
            }
        });
        assert!(!state.is_empty());
        // Only now: nspawn's PID 1 may enter its private network namespace
        // after it exists. It must not be ours.
        let netns = fs::File::open(format!("/proc/{}/ns/net", m.pid1)).expect("opening the netns");
        let ours = fs::metadata("/proc/self/ns/net").unwrap();
        assert_ne!(
            netns.metadata().unwrap().ino(),
            ours.ino(),
            "the container has no network namespace of its own"
        );
        m.netns = Arc::new(netns);
        m
    }
}

// ---- can it run here? ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cgroups {
    /// cgroup v1 controllers + name=systemd + cgroup2 at /unified.
    Hybrid,
    /// cgroup2 only, at /sys/fs/cgroup.
    Unified,
}

fn cgroups() -> Option<Cgroups> {
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

/// The child of nspawn that is PID 1 in its own pid namespace.
fn container_init(nspawn: i32) -> Option<i32> {
    procs::children(nspawn).into_iter().find_map(|p| {
        let st = procs::status(p.pid).ok()?;
        let nspid = st.words("NSpid");
        (nspid.len() > 1 && nspid.last() == Some(&"1")).then_some(p.pid)
    })
}

/// Moves the calling thread (only it) into the network namespace.
fn enter_netns(netns: &fs::File) {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns: {e}"));
}

// ---- the machine ----

/// A booted container; halted and cleaned up on drop (the journal and the
/// console printed first if the test is failing).
pub struct Machine {
    pub name: String,
    /// Host directory holding everything the test controls.
    pub work: TempDir,
    nspawn: Child,
    pub pid1: i32,
    netns: Arc<fs::File>,
    cgroup_dirs: Vec<PathBuf>,
}

impl Machine {
    /// Runs a command inside (all namespaces of PID 1), killed after 120 s.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(["timeout", "-k", "5", "120"])
            .args(args)
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// `exec`, which must succeed; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl", "--no-pager"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// `systemctl show UNIT -p A,B,...` as a map.
    pub fn show(&self, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
        let text = self.run(&["systemctl", "show", unit, "-p", &props.join(",")]);
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.show(unit, &[prop]).remove(prop).unwrap_or_default()
    }

    /// Adds a drop-in `<unit>.d/<name>` in /run/systemd/system and reloads.
    pub fn add_dropin(&self, unit: &str, name: &str, text: &str) {
        let dir = format!("/run/systemd/system/{unit}.d");
        self.run(&[
            "sh",
            "-c",
            "mkdir -p \"$1\" && printf %s \"$2\" > \"$1/$3\"",
            "sh",
            &dir,
            text,
            name,
        ]);
        self.run(&["systemctl", "daemon-reload"]);
    }

    /// `journalctl --no-pager -o cat ARGS`.
    pub fn journal(&self, args: &[&str]) -> String {
        let mut all = vec!["journalctl", "--no-pager", "-o", "cat"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Waits until `journalctl ARGS` has every one of `needles` (journald
    /// takes a moment to store what a process wrote); returns the log.
    pub fn wait_journal(&self, args: &[&str], needles: &[&str]) -> String {
        wait_for(
            &format!("journalctl {} to show {needles:?}", args.join(" ")),
            Duration::from_secs(30),
            || {
                let log = self.journal(args);
                if needles.iter().all(|n| log.contains(n)) {
                    Ok(log)
                } else {
                    Err(format!("journal so far:\n{log}"))
                }
            },
        )
    }

    /// The pids (as the container sees them) in a unit's cgroup.
    pub fn unit_pids(&self, unit: &str) -> BTreeSet<i32> {
        let cg = self.prop(unit, "ControlGroup");
        if cg.is_empty() {
            return BTreeSet::new();
        }
        let script = format!(
            "for d in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do \
               if [ -e \"$d{cg}/cgroup.procs\" ]; then cat \"$d{cg}/cgroup.procs\"; exit 0; fi; \
             done"
        );
        self.run(&["sh", "-c", &script])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Which of `pids` still exist inside.
    pub fn alive(&self, pids: &BTreeSet<i32>) -> BTreeSet<i32> {
        let list: Vec<String> = pids.iter().map(i32::to_string).collect();
        let script = format!(
            "for p in {}; do [ -e /proc/$p ] && echo $p; done; true",
            list.join(" ")
        );
        self.run(&["sh", "-c", &script])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Is something listening on TCP `port` in the container's netns
    /// (read from /proc, without connecting, which would start a
    /// socket-activated service)?
    pub fn listening(&self, port: u16) -> Vec<String> {
        let mut found = Vec::new();
        for file in ["tcp", "tcp6"] {
            let text = fs::read_to_string(format!("/proc/{}/net/{file}", self.pid1)).unwrap();
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local_port = cols
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                if local_port == Some(port) && cols.get(3) == Some(&"0A") {
                    found.push(format!("{file} {}", cols[1]));
                }
            }
        }
        found
    }

    /// One HTTP request from inside the container's network namespace
    /// (30 s timeouts).
    pub fn get(&self, addr: &str, path: &str) -> Result<Reply, HttpError> {
        let netns = self.netns.clone();
        let addr: SocketAddr = addr.parse().expect("socket address");
        let path = path.to_owned();
        std::thread::spawn(move || {
            enter_netns(&netns);
            http::get(addr, &path, Timeouts::all(Duration::from_secs(30)))
        })
        .join()
        .expect("HTTP client thread")
    }

    /// Load clients of `addr` inside the container's network namespace
    /// (20 s timeouts, no limit): start them with [`Clients::start`].
    pub fn clients(&self, addr: SocketAddr, threads: usize) -> Clients {
        let netns = self.netns.clone();
        Clients::new(addr, threads, Timeouts::all(Duration::from_secs(20)))
            .setup(move || enter_netns(&netns))
    }

    /// What to print when a test fails: the journal and the console.
    fn dump(&self) {
        let out = self.exec(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-precise",
            "-n",
            "300",
        ]);
        let console = fs::read_to_string(self.work.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        let _ = writeln!(
            std::io::stderr(),
            "==== {}: journal (last 300 lines) ====\n{}{}\n==== console (last 40 lines) ====\n{}",
            self.name,
            stdout(&out),
            stderr(&out),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Kills whatever is left in the container's cgroups, then removes the
    /// (now empty) trees, deepest first.
    fn remove_cgroups(&self) {
        for root in &self.cgroup_dirs {
            let mut dirs = Vec::new();
            collect_dirs(root, &mut dirs);
            let deadline = Instant::now() + Duration::from_secs(10);
            for d in dirs.iter().rev() {
                let left = deadline.saturating_duration_since(Instant::now());
                let gone = poll(left, Duration::from_millis(20), || {
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
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}: cannot remove {}: {e}",
                        self.name,
                        d.display()
                    );
                }
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() && self.pid1 > 0 {
            self.dump();
        }
        // SIGTERM to nspawn halts the container cleanly; SIGKILL if it hangs.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let nspawn = &mut self.nspawn;
        let halted = poll(
            Duration::from_secs(20),
            Duration::from_millis(20),
            || match nspawn.try_wait() {
                Ok(None) => Err(()),
                Ok(Some(_)) | Err(_) => Ok(()),
            },
        );
        if halted.is_err() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        self.remove_cgroups();
        let _ = fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
        // The work dir goes with the field, after this.
    }
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
