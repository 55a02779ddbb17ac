//! A real systemd (PID 1 in a throwaway container) for the end-to-end tests.
//!
//! Follows /work/shared/SYSTEMD-TESTING.md: `systemd-nspawn -D / --volatile=yes
//! --boot --private-network --register=no --keep-unit`, in a cgroup of its
//! own (removed afterwards), stopped with SIGTERM to nspawn. Commands run
//! inside with `nsenter -t PID1 -a`; HTTP clients are threads of this test
//! process that joined the container's network namespace (`setns`), so they
//! reach its loopback and see every error exactly (refused, reset, timeout).
//!
//! The container gets, read-only, the baton and example-app binaries cargo
//! built (`/opt/baton/`) and the shipped unit files with the binary path and
//! the user substituted (`/opt/baton/units/`, copied into
//! `/run/systemd/system/` once booted), and read-write the app dirs the test
//! controls (`/srv/<app>/`, owned by www-data, which the units run as).
//!
//! Where this cannot work (not root, no systemd-nspawn, unknown cgroup
//! layout) [`Machine::boot`] prints a SKIP line straight to stderr (past the
//! test harness's capture) and returns None; BATON_REQUIRE_SYSTEMD_TESTS=1
//! turns that into a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton::state::State;

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");
pub const EXAMPLE_APP: &str = env!("CARGO_BIN_EXE_example-app");
/// Where the binaries appear inside the container.
pub const BIN_DIR: &str = "/opt/baton";
pub const BATON_IN_CONTAINER: &str = "/opt/baton/baton";
/// The user the units run as inside: Debian's www-data (uid 33); the
/// shipped units say `User=app`, a placeholder.
pub const APP_USER: &str = "www-data";
pub const APP_UID: u32 = 33;

// ---- the shipped units ----

/// A unit file from `systemd/` as shipped.
pub fn shipped_unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `text` with each `from` replaced by `to`; every `from` must occur (so a
/// change to the shipped units cannot silently bypass a substitution).
pub fn substitute(name: &str, text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "{name}: expected to find {from:?} to substitute"
        );
        out = out.replace(from, to);
    }
    out
}

/// The shipped unit as the container runs it: the binary from cargo's
/// build, the test's user.
pub fn unit_for_container(name: &str) -> String {
    let (user, group) = (format!("User={APP_USER}"), format!("Group={APP_USER}"));
    let text = shipped_unit(name);
    let mut pairs: Vec<(&str, &str)> = vec![];
    if name.ends_with(".service") {
        pairs.push(("/usr/local/bin/baton", BATON_IN_CONTAINER));
        if name.contains('@') {
            pairs.push(("User=%i", &user));
            pairs.push(("Group=%i", &group));
        } else {
            pairs.push(("User=app", &user));
            pairs.push(("Group=app", &group));
        }
    }
    substitute(name, &text, &pairs)
}

// ---- skipping ----

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Says SKIP where everyone can see it (libtest captures print!/eprint!,
/// not writes to the stderr handle), or fails when skipping is not allowed.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("BATON_REQUIRE_SYSTEMD_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: cannot run under systemd here: {why} (BATON_REQUIRE_SYSTEMD_TESTS=1)");
    }
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let name = thread.name().unwrap_or(test);
    let _ = writeln!(
        std::io::stderr(),
        "SKIP systemd::{name}: {why}; this test passed without running"
    );
}

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
fn cannot_boot() -> Option<String> {
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

// ---- the machine ----

pub struct Machine {
    pub name: String,
    /// Host directory holding everything the test controls.
    pub work: PathBuf,
    nspawn: Child,
    pub pid1: i32,
    netns: Arc<fs::File>,
    cgroup_dirs: Vec<PathBuf>,
}

impl Machine {
    /// Boots a container with the shipped units and an app dir for each of
    /// `apps` (`/srv/<app>/release/` with releases 1.0 and 2.0, current.conf
    /// naming 1.0). None (after printing SKIP) where it cannot run.
    pub fn boot(test: &str, apps: &[&str]) -> Option<Machine> {
        if let Some(why) = cannot_boot() {
            skip(test, &why);
            return None;
        }
        let name = format!("bt-{}-{}", test.replace('_', "-"), std::process::id());
        let name: String = name.chars().take(60).collect();
        let work = std::env::temp_dir().join(format!("baton-systemd-{name}"));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(work.join("units")).unwrap();
        for unit in [
            "app.socket",
            "app.service",
            "baton@.socket",
            "baton@.service",
        ] {
            fs::write(work.join("units").join(unit), unit_for_container(unit)).unwrap();
        }
        let mut binds = vec![
            format!("--bind-ro={BATON}:{BIN_DIR}/baton"),
            format!("--bind-ro={EXAMPLE_APP}:{BIN_DIR}/example-app"),
            format!("--bind-ro={}:{BIN_DIR}/units", work.join("units").display()),
        ];
        for app in apps {
            let dir = work.join("srv").join(app);
            fs::create_dir_all(dir.join("release")).unwrap();
            nix::unistd::chown(
                &dir,
                Some(nix::unistd::Uid::from_raw(APP_UID)),
                Some(nix::unistd::Gid::from_raw(APP_UID)),
            )
            .unwrap();
            binds.push(format!("--bind={}:/srv/{app}", dir.display()));
        }

        let layout = cgroups().expect("checked by cannot_boot");
        let cgroup_dirs: Vec<PathBuf> = match layout {
            Cgroups::Hybrid => vec![
                PathBuf::from("/sys/fs/cgroup/systemd").join(&name),
                PathBuf::from("/sys/fs/cgroup/unified").join(&name),
            ],
            Cgroups::Unified => vec![PathBuf::from("/sys/fs/cgroup").join(&name)],
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
        let console = fs::File::create(work.join("console.log")).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .args([
                "-D",
                "/",
                "--volatile=yes",
                "--boot",
                "--private-network",
                "--register=no",
                "--keep-unit",
                &format!("--machine={name}"),
                "--console=read-only",
            ])
            .args(&binds)
            .args(["systemd.firstboot=off", "systemd.unit=basic.target"])
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console);
        let nspawn = cmd.spawn().expect("starting systemd-nspawn");
        let mut m = Machine {
            name,
            work,
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
        // Installed after boot, as an operator would (units present at the
        // first boot of an empty /etc would be enabled by the presets).
        m.run(&["sh", "-c", "cp /opt/baton/units/* /run/systemd/system/"]);
        m.run(&["systemctl", "daemon-reload"]);
        for app in apps {
            m.add_release(app, "1.0", r#"{"release": "1.0"}"#);
            m.add_release(app, "2.0", r#"{"release": "2.0"}"#);
            m.point_at(app, "1.0");
        }
        Some(m)
    }

    /// Host path of `/srv/<app>`.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.work.join("srv").join(app)
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

    /// `app.<version>` (the example app) and `cfg.<version>` with `cfg`.
    pub fn add_release(&self, app: &str, version: &str, cfg: &str) {
        let dir = self.app_dir(app).join("release");
        let bin = dir.join(format!("app.{version}"));
        let _ = fs::remove_file(&bin);
        symlink(format!("{BIN_DIR}/example-app"), &bin).unwrap();
        self.write_file(&dir.join(format!("cfg.{version}")), cfg);
    }

    /// Writes a file the way an operator's editor would: beside it, then
    /// renamed over it.
    pub fn write_file(&self, path: &Path, text: &str) {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    /// current.conf of `app` names release `version`.
    pub fn point_at(&self, app: &str, version: &str) {
        self.write_file(
            &self.app_dir(app).join("release/current.conf"),
            &format!(r#"{{"bin.file": "app.{version}", "cfg.file": "cfg.{version}"}}"#),
        );
    }

    /// The state baton last wrote for `app`.
    pub fn state(&self, app: &str) -> Option<State> {
        State::read(&self.app_dir(app)).ok()
    }

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
    /// (read from /proc, without connecting, which would start the service)?
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

    /// One HTTP request from inside the container's network namespace.
    pub fn get(&self, addr: &str, path: &str) -> Result<Reply, HttpError> {
        let netns = self.netns.clone();
        let (addr, path) = (addr.to_owned(), path.to_owned());
        std::thread::spawn(move || {
            enter_netns(&netns);
            http_get(&addr, &path, Duration::from_secs(30))
        })
        .join()
        .expect("HTTP client thread")
    }

    /// [`Machine::get`] on 127.0.0.1:3000 that must answer 200.
    pub fn get_ok(&self, path: &str) -> Reply {
        match self.get("127.0.0.1:3000", path) {
            Ok(r) if r.status == 200 => r,
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// `threads` clients doing `GET /` with `Connection: close` in a loop.
    pub fn load(&self, threads: usize) -> Load {
        Load::start(self.netns.clone(), threads)
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
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() && self.pid1 > 0 {
            self.dump();
        }
        // SIGTERM to nspawn halts the container cleanly; SIGKILL if it hangs.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.nspawn.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Whatever is left in the container's cgroups is killed; then the
        // (now empty) tree is removed, deepest first.
        for root in &self.cgroup_dirs {
            let mut dirs = Vec::new();
            collect_dirs(root, &mut dirs);
            let deadline = Instant::now() + Duration::from_secs(10);
            for d in dirs.iter().rev() {
                loop {
                    if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                        for p in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(p),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                    match fs::remove_dir(d) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e) if Instant::now() >= deadline => {
                            let _ = writeln!(
                                std::io::stderr(),
                                "{}: cannot remove {}: {e}",
                                self.name,
                                d.display()
                            );
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
        let _ = fs::remove_dir_all(&self.work);
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

/// The child of nspawn that is PID 1 in its own pid namespace.
fn container_init(nspawn: i32) -> Option<i32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l[name.len()..].split_whitespace().collect::<Vec<_>>())
        };
        let ppid = field("PPid:").and_then(|v| v.first()?.parse::<i32>().ok());
        let nspid = field("NSpid:").unwrap_or_default();
        if ppid == Some(nspawn) && nspid.len() > 1 && nspid.last() == Some(&"1") {
            return Some(pid);
        }
    }
    None
}

// ---- waiting ----

/// Polls `check` every 20 ms until it returns Ok or `timeout` passes; then
/// panics naming `what` and the last reason it was not yet so.
pub fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---- HTTP from inside the container's network namespace ----

/// Moves the calling thread (only it) into the network namespace.
fn enter_netns(netns: &fs::File) {
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET affects only the
    // calling thread, which is one of ours and only makes sockets.
    let r = unsafe { nix::libc::setns(netns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// `release 2.0 pid 40` -> ("2.0", 40).
    pub fn release_pid(&self) -> Option<(String, i32)> {
        let mut w = self.body.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("release"), Some(r), Some("pid"), Some(p)) => {
                Some((r.to_owned(), p.parse().ok()?))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// ECONNREFUSED: nothing listened.
    Refused,
    Other(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused => f.write_str("connection refused"),
            HttpError::Other(e) => f.write_str(e),
        }
    }
}

/// `GET path` with `Connection: close`; the whole reply or what went wrong.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<Reply, HttpError> {
    let sa: SocketAddr = addr.parse().expect("socket address");
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => HttpError::Refused,
        _ => HttpError::Other(format!("connect: {e}")),
    })?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| HttpError::Other(format!("write: {e}")))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| HttpError::Other(format!("read: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(HttpError::Other(format!("incomplete reply: {text:?}")));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Other(format!("bad status line: {head:?}")))?;
    Ok(Reply {
        status,
        body: body.to_owned(),
    })
}

/// What the clients of a [`Load`] saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub ok: usize,
    /// 200 replies per release.
    pub by_release: BTreeMap<String, usize>,
    /// Generation pids that answered.
    pub pids: BTreeSet<i32>,
    /// Every failure, with when it happened (since the load began).
    pub failures: Vec<String>,
    pub refused: usize,
}

impl Tally {
    pub fn served(&self, release: &str) -> usize {
        self.by_release.get(release).copied().unwrap_or(0)
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(netns: Arc<fs::File>, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t0 = Instant::now();
        let threads = (0..n)
            .map(|_| {
                let (stop, tally, netns) = (stop.clone(), tally.clone(), netns.clone());
                std::thread::spawn(move || {
                    enter_netns(&netns);
                    while !stop.load(Ordering::SeqCst) {
                        let r = http_get("127.0.0.1:3000", "/", Duration::from_secs(20));
                        let mut t = tally.lock().unwrap();
                        match r {
                            Ok(reply) if reply.status == 200 => {
                                t.ok += 1;
                                if let Some((release, pid)) = reply.release_pid() {
                                    *t.by_release.entry(release).or_default() += 1;
                                    t.pids.insert(pid);
                                }
                            }
                            Ok(reply) => t.failures.push(format!(
                                "{:?}: status {} {:?}",
                                t0.elapsed(),
                                reply.status,
                                reply.body
                            )),
                            Err(e) => {
                                if e == HttpError::Refused {
                                    t.refused += 1;
                                }
                                t.failures.push(format!("{:?}: {e}", t0.elapsed()));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Waits until at least `n` more requests than `since` succeeded with
    /// `release` (so the clients really ran across an event).
    pub fn wait_served(&self, release: &str, n: usize) {
        let base = self.snapshot().served(release);
        wait_for(
            &format!("{n} more replies from release {release}"),
            Duration::from_secs(30),
            || {
                let t = self.snapshot();
                if t.served(release) >= base + n {
                    Ok(())
                } else {
                    Err(format!("tally so far: {t:?}"))
                }
            },
        );
    }

    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
