//! A booted container: started from a [`Boot`], commands run inside it,
//! HTTP from inside its network namespace, and on drop halted, its cgroups
//! and work dir removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::boot::Boot;
use super::cgroup::{cgroup_dirs, container_init, remove_cgroups};
use crate::TempDir;
use crate::cmd::{stderr, stdout};
use crate::http::{self, HttpError, Reply, Timeouts};
use crate::load::Clients;
use crate::wait::{child_exit, wait_for};

impl Boot {
    /// Boots the container and waits (60 s at most) until its systemd has
    /// finished booting; panics if it cannot. Call
    /// [`cannot_boot`](super::cannot_boot) first.
    pub fn start(self) -> Machine {
        let cgroup_dirs = cgroup_dirs(&self.name).expect("unknown cgroup layout (see cannot_boot)");
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

/// Moves the calling thread (only it) into the network namespace.
fn enter_netns(netns: &fs::File) {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns: {e}"));
}

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
        self.pids(&script)
    }

    /// Which of `pids` still exist inside.
    pub fn alive(&self, pids: &BTreeSet<i32>) -> BTreeSet<i32> {
        let list: Vec<String> = pids.iter().map(i32::to_string).collect();
        let script = format!(
            "for p in {}; do [ -e /proc/$p ] && echo $p; done; true",
            list.join(" ")
        );
        self.pids(&script)
    }

    /// The pids a shell script run inside prints.
    fn pids(&self, script: &str) -> BTreeSet<i32> {
        self.run(&["sh", "-c", script])
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
        for why in remove_cgroups(&self.cgroup_dirs) {
            let _ = writeln!(std::io::stderr(), "{}: {why}", self.name);
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
        let every = Duration::from_millis(20);
        if child_exit(&mut self.nspawn, Duration::from_secs(20), every).is_none() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        self.remove_cgroups();
        let _ = fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
        // The work dir goes with the field, after this.
    }
}
