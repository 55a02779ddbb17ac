//! The fleet's hosts: systemd-nspawn containers, each booting its own
//! systemd, each at its own address on a bridge, all inside a network and
//! mount namespace of this process's own (nothing it creates is seen
//! outside, and it all goes away when the process exits).
//!
//! A host's root is an overlay: the machine's own root file system read-only
//! below, a tmpfs above, so a host can install a .deb (dpkg writes /usr,
//! /etc and /var/lib/dpkg) without touching the machine, and shares its
//! programs (systemd, sshd, python3) without downloading anything. Before
//! the first boot each root gets its hostname, machine id, ssh host key, the
//! test's public key for root, a unit that puts its address on `host0`, and
//! nothing of the machine's own enabled services. Hosts boot to basic.target
//! plus sshd.
//!
//! Self-contained on purpose: nothing here depends on the rest of the test
//! bed, so it can move into a shared test crate as it is.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use testkit::nspawn::{cgroup_dirs, container_init, remove_cgroups};

/// The bridge every host hangs off, in the test's network namespace.
pub const BRIDGE: &str = "br-fleet";
/// 198.18.0.0/15 is set aside for benchmarking network devices (RFC 2544):
/// these addresses exist only inside the test's own network namespace.
pub const SUBNET_PREFIX: &str = "198.18.0";
pub const GATEWAY: &str = "198.18.0.1";

/// Runs a command to completion; fails with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves this process into a network and a mount namespace of its own, with
/// its loopback up and the bridge the hosts will join. Must be called while
/// the process has a single thread (first thing in main).
pub fn enter_private_namespaces() -> Result<()> {
    // SAFETY: unshare(2) changes only this process's namespaces; no other
    // thread exists yet (CLONE_NEWNS requires that), and no memory is touched.
    let r = unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET | nix::libc::CLONE_NEWNS) };
    if r != 0 {
        bail!(
            "unshare(CLONE_NEWNET | CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        );
    }
    // Mounts made from here on stay in this namespace.
    run("mount", &["--make-rprivate", "/"])?;
    run("ip", &["link", "set", "lo", "up"])?;
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// What a host needs before its first boot.
pub struct HostSpec {
    pub name: String,
    pub addr: String,
    /// The test's public key, for root's authorized_keys.
    pub authorized_key: String,
}

pub struct Host {
    pub name: String,
    pub addr: String,
    /// The host's root as this process sees it (the overlay's mount point).
    pub root: PathBuf,
    /// The public half of its ssh host key (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    console: PathBuf,
    nspawn: Option<Child>,
    pub pid1: i32,
    cgroup_dirs: Vec<PathBuf>,
    pub boots: u32,
}

/// The layers every host's overlay is made of live on one tmpfs.
pub struct Layers {
    pub dir: PathBuf,
}

impl Layers {
    pub fn mount(dir: &Path) -> Result<Layers> {
        fs::create_dir_all(dir)?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "mode=0755",
                "fleet-layers",
                dir.to_str().unwrap(),
            ],
        )?;
        Ok(Layers {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

impl Host {
    /// Makes the host's root (an overlay over `/`) and prepares it; does not
    /// boot it.
    pub fn create(layers: &Layers, spec: &HostSpec) -> Result<Host> {
        let base = layers.dir.join(&spec.name);
        let (upper, work, root) = (base.join("upper"), base.join("work"), base.join("root"));
        for d in [&upper, &work, &root] {
            fs::create_dir_all(d)?;
        }
        // The upper layer must not lie inside the lower one (/): it is on the
        // tmpfs, another file system.
        let opts = format!(
            "lowerdir=/,upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        run(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &opts,
                root.to_str().unwrap(),
            ],
        )?;
        let mut host = Host {
            name: spec.name.clone(),
            addr: spec.addr.clone(),
            root,
            host_key: String::new(),
            console: base.join("console.log"),
            nspawn: None,
            pid1: 0,
            cgroup_dirs: Vec::new(),
            boots: 0,
        };
        host.prepare(spec)?;
        Ok(host)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn write(&self, p: &str, text: &str, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(p);
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Everything a host needs that the machine's own root does not give it.
    /// Changes land in the upper layer only.
    fn prepare(&mut self, spec: &HostSpec) -> Result<()> {
        self.write("/etc/hostname", &format!("{}\n", self.name), 0o644)?;
        let mut raw = [0u8; 16];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .context("reading /dev/urandom")?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.write("/etc/machine-id", &format!("{id}\n"), 0o444)?;
        // None of the machine's enabled services: only what a basic.target
        // boot brings, plus the units below.
        for wants in [
            "multi-user.target.wants",
            "timers.target.wants",
            "getty.target.wants",
            "sockets.target.wants",
            "default.target.wants",
        ] {
            let d = self.path(&format!("/etc/systemd/system/{wants}"));
            if d.exists() {
                fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
        // The address, at every boot.
        self.write(
            "/etc/systemd/system/fleet-address.service",
            &format!(
                "[Unit]\nDescription=Test bed address on host0\nDefaultDependencies=no\n\
                 Before=network.target ssh.service\n\
                 [Service]\nType=oneshot\nRemainAfterExit=yes\n\
                 ExecStart=/usr/sbin/ip link set host0 up\n\
                 ExecStart=/usr/sbin/ip addr replace {}/24 dev host0\n",
                self.addr
            ),
            0o644,
        )?;
        let wants = self.path("/etc/systemd/system/basic.target.wants");
        fs::create_dir_all(&wants)?;
        for (unit, target) in [
            (
                "fleet-address.service",
                "/etc/systemd/system/fleet-address.service",
            ),
            ("ssh.service", "/lib/systemd/system/ssh.service"),
            (
                "systemd-user-sessions.service",
                "/lib/systemd/system/systemd-user-sessions.service",
            ),
        ] {
            let link = wants.join(unit);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link)?;
        }
        // sshd: a host key of its own, root by key only.
        for e in fs::read_dir(self.path("/etc/ssh"))? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())?;
            }
        }
        let key = self.path("/etc/ssh/ssh_host_ed25519_key");
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &format!("root@{}", self.name),
                "-f",
                key.to_str().unwrap(),
            ],
        )?;
        self.host_key = fs::read_to_string(key.with_extension("pub"))?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        self.write(
            "/etc/ssh/sshd_config.d/fleet-test.conf",
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n",
            0o644,
        )?;
        let ssh_dir = self.path("/root/.ssh");
        if ssh_dir.exists() {
            fs::remove_dir_all(&ssh_dir)?;
        }
        self.write(
            "/root/.ssh/authorized_keys",
            &format!("{}\n", spec.authorized_key.trim()),
            0o600,
        )?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// Starts the container (systemd as its PID 1). [`Host::wait_booted`]
    /// waits for it; several hosts boot side by side.
    pub fn start(&mut self) -> Result<()> {
        ensure!(self.nspawn.is_none(), "{} is already running", self.name);
        self.boots += 1;
        let cg_name = format!("baton-fleet-{}-{}", std::process::id(), self.name);
        self.cgroup_dirs =
            cgroup_dirs(&cg_name).context("unknown cgroup layout under /sys/fs/cgroup")?;
        for d in &self.cgroup_dirs {
            fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        // The shell joins the container's own cgroups, then becomes nspawn.
        let mut script = String::new();
        for d in &self.cgroup_dirs {
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", d.display()));
        }
        script.push_str("exec systemd-nspawn \"$@\"");
        let mut console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console)?;
        writeln!(console, "==== boot {} ====", self.boots)?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args([
                "-D",
                self.root.to_str().unwrap(),
                "--boot",
                &format!("--network-bridge={BRIDGE}"),
                "--register=no",
                "--keep-unit",
                &format!("--machine={}", self.name),
                "--console=read-only",
                "systemd.firstboot=off",
                "systemd.unit=basic.target",
            ])
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("starting systemd-nspawn")?;
        self.nspawn = Some(child);
        self.pid1 = 0;
        Ok(())
    }

    /// Waits until systemd inside has booted and sshd listens on the
    /// host's address.
    pub fn wait_booted(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let nspawn_pid = self.nspawn.as_ref().context("not started")?.id() as i32;
        self.pid1 = poll(deadline, &format!("{}: PID 1", self.name), || {
            if let Some(c) = self.nspawn.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("systemd-nspawn exited: {status}"));
            }
            container_init(nspawn_pid).ok_or_else(|| "no PID 1 yet".to_string())
        })
        .map_err(|e| anyhow::anyhow!("{e}; console: {}", self.console_tail()))?;
        // `offline` until systemd inside listens on its private socket.
        poll(deadline, &format!("{}: systemd to boot", self.name), || {
            let left = deadline.saturating_duration_since(Instant::now());
            let out = self
                .exec_timeout(&["systemctl", "is-system-running", "--wait"], left)
                .map_err(|e| e.to_string())?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            match state.as_str() {
                "running" | "degraded" => Ok(()),
                _ => Err(format!("is-system-running: {state}")),
            }
        })
        .map_err(|e| anyhow::anyhow!("{e}; console: {}", self.console_tail()))?;
        poll(
            deadline,
            &format!("{}: sshd on {}:22", self.name, self.addr),
            || {
                let addr: std::net::SocketAddr = format!("{}:22", self.addr).parse().unwrap();
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}; journal: {}", self.journal_tail(40)))?;
        Ok(())
    }

    /// Halts the container (SIGTERM to nspawn: systemd inside shuts down),
    /// killing it if it takes longer than 20 s; removes its cgroups.
    pub fn stop(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        let Some(mut child) = self.nspawn.take() else {
            return Ok(Duration::ZERO);
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = t0 + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let took = t0.elapsed();
        for why in remove_cgroups(&self.cgroup_dirs) {
            eprintln!("{}: {why}", self.name);
        }
        self.cgroup_dirs.clear();
        self.pid1 = 0;
        Ok(took)
    }

    /// Runs a command inside the host (every namespace of its PID 1).
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        ensure!(self.pid1 > 0, "{} is not running", self.name);
        let secs = format!("{}", timeout.as_secs().max(1));
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(["timeout", "-k", "5", &secs])
            .args(args)
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .output()
            .context("running nsenter")
    }

    /// [`Host::exec_timeout`] that must succeed; its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.exec_timeout(args, Duration::from_secs(60))?;
        ensure!(
            out.status.success(),
            "{}: {args:?} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A file inside the host, read through its root.
    pub fn read(&self, p: &str) -> Option<String> {
        fs::read_to_string(self.path(p)).ok()
    }

    /// The names in a directory inside the host, sorted.
    pub fn list(&self, p: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(p))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn console_tail(&self) -> String {
        let text = fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn journal_tail(&self, n: usize) -> String {
        match self.exec_timeout(
            &[
                "journalctl",
                "--no-pager",
                "-o",
                "short-precise",
                "-n",
                &n.to_string(),
            ],
            Duration::from_secs(20),
        ) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(no journal: {e})"),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = Command::new("umount")
            .arg(&self.root)
            .stderr(Stdio::null())
            .status();
    }
}

// ---- cgroups ----

/// Polls `check` every 20 ms until it returns Ok or `deadline` passes.
pub fn poll<T>(
    deadline: Instant,
    what: &str,
    mut check: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => bail!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
