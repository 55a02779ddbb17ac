//! The fleet's set-up and its cases. Each case returns its figures or the
//! first assertion that failed; every wait polls a condition with a
//! deadline.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::bed::{self, Host, HostSpec, Layers, SUBNET_PREFIX, poll};
use crate::play::{Ansible, Run, write_inventory};
use crate::proxy::{Access, Load, Nginx, Tally};

const HOSTS: usize = 3;
/// The example app cargo built with the test, unless BATON_FLEET_APP names
/// another build of it (tests/fleet/run passes the release build: a tenth of
/// the size to copy to every host).
const APP: &str = env!("CARGO_BIN_EXE_example-app");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// nginx, on this side of the bridge.
const LB: &str = "127.0.0.1:8080";
/// The load: clients x requests a second each, never longer than this.
const CLIENTS: usize = 4;
const PER_CLIENT_PER_SECOND: u32 = 25;
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// Releases kept per host: small, so that pruning happens within the cases.
const KEEP: usize = 2;

fn env_path(name: &str) -> Result<PathBuf> {
    let v = std::env::var_os(name)
        .with_context(|| format!("{name} is not set (run tests/fleet/run)"))?;
    let p = PathBuf::from(v);
    ensure!(p.exists(), "{name}={}: no such file", p.display());
    Ok(p)
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Everything the bed needs, or why it cannot run.
pub fn prerequisites() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (containers, namespaces)"
    );
    for prog in [
        "systemd-nspawn",
        "nsenter",
        "ip",
        "mount",
        "ssh",
        "ssh-keygen",
        "nginx",
    ] {
        ensure!(
            which(prog).is_some(),
            "{prog} is not installed (tests/fleet/run installs it)"
        );
    }
    ensure!(
        Path::new("/usr/sbin/sshd").exists(),
        "openssh-server is not installed (tests/fleet/run installs it)"
    );
    for var in [
        "BATON_FLEET_DEB",
        "BATON_FLEET_DEB_UPGRADE",
        "BATON_FLEET_ANSIBLE",
    ] {
        env_path(var)?;
    }
    Ok(())
}

// ---- the fleet ----

/// Fields drop in order: the hosts (their overlays) before the tmpfs under
/// them.
struct Fleet {
    hosts: Vec<Host>,
    nginx: Nginx,
    ansible: Ansible,
    /// The release artifacts, as a build would leave them.
    build: PathBuf,
    logs: PathBuf,
    deb: PathBuf,
    deb_upgrade: PathBuf,
    _layers: Layers,
    work: PathBuf,
}

/// What a host serves, from its baton.state.
#[derive(Debug, Clone, PartialEq)]
struct Serving {
    version: String,
    generation: u64,
    pid: i64,
    generations: usize,
}

/// What must not change on a host a play did not reach.
#[derive(Debug, Clone, PartialEq)]
struct Untouched {
    conf: Option<String>,
    conf_mtime: Option<std::time::SystemTime>,
    last_rollout_seq: Option<u64>,
    releases: Vec<String>,
}

impl Fleet {
    fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    fn state(&self, i: usize) -> Option<Value> {
        serde_json::from_str(&self.host(i).read("/srv/app/baton.state")?).ok()
    }

    fn serving(&self, i: usize) -> Option<Serving> {
        let s = self.state(i)?;
        let g = s.get("serving")?;
        let bin = g.pointer("/release/bin")?.as_str()?;
        let name = Path::new(bin).file_name()?.to_str()?;
        Some(Serving {
            version: name.strip_prefix("app.")?.to_owned(),
            generation: g.get("generation")?.as_u64()?,
            pid: g.get("pid")?.as_i64()?,
            generations: s.get("generations")?.as_array()?.len(),
        })
    }

    /// The version current.conf names.
    fn named(&self, i: usize) -> Option<String> {
        let conf: Value =
            serde_json::from_str(&self.host(i).read("/srv/app/release/current.conf")?).ok()?;
        let bin = conf.get("bin.file")?.as_str()?;
        Some(
            Path::new(bin)
                .file_name()?
                .to_str()?
                .strip_prefix("app.")?
                .to_owned(),
        )
    }

    /// Versions on the host (app.VERSION), and any other file in the
    /// release dir besides current.conf and cfg.VERSION of those versions.
    fn releases(&self, i: usize) -> Vec<String> {
        self.host(i).list("/srv/app/release")
    }

    fn untouched(&self, i: usize) -> Untouched {
        let conf_path = self.host(i).root.join("srv/app/release/current.conf");
        Untouched {
            conf: self.host(i).read("/srv/app/release/current.conf"),
            conf_mtime: fs::metadata(conf_path).and_then(|m| m.modified()).ok(),
            last_rollout_seq: self
                .state(i)
                .and_then(|s| s.pointer("/last_rollout/seq")?.as_u64()),
            releases: self.releases(i),
        }
    }

    /// Every host: `version` serves alone and current.conf names it.
    fn assert_serves(&self, hosts: &[usize], version: &str) -> Result<()> {
        for &i in hosts {
            let h = &self.host(i).name;
            let s = self.wait_alone(i, Duration::from_secs(60))?;
            ensure!(
                s.version == version,
                "{h} serves {} (generation {}), expected {version}; status: {}",
                s.version,
                s.generation,
                self.status_line(i)
            );
            ensure!(
                self.named(i).as_deref() == Some(version),
                "{h}: current.conf names {:?}, expected {version}",
                self.named(i)
            );
        }
        Ok(())
    }

    /// Waits until one generation is left on host `i` (a retired one may
    /// still be draining right after a play).
    fn wait_alone(&self, i: usize, timeout: Duration) -> Result<Serving> {
        poll(
            Instant::now() + timeout,
            &format!("{} to serve one generation", self.host(i).name),
            || match self.serving(i) {
                Some(s) if s.generations == 1 => Ok(s),
                other => Err(format!("{other:?}; status: {}", self.status_line(i))),
            },
        )
    }

    fn status_line(&self, i: usize) -> String {
        self.state(i)
            .and_then(|s| s.get("status")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "(no state)".into())
    }

    /// The last rollout on host `i` as (release name, result, started,
    /// finished).
    fn last_rollout(&self, i: usize) -> Option<(String, String, f64, f64)> {
        let s = self.state(i)?;
        let r = s.get("last_rollout")?;
        Some((
            r.pointer("/release/name")?.as_str()?.to_owned(),
            r.get("result")?.as_str()?.to_owned(),
            r.get("started_at")?.as_f64()?,
            r.get("finished_at")?.as_f64()?,
        ))
    }

    fn artifact(&self, name: &str, content: &[u8]) -> Result<PathBuf> {
        let p = self.build.join(name);
        fs::write(&p, content)?;
        Ok(p)
    }

    /// `sha256sum FILES > NAME` in the build dir.
    fn sums(&self, name: &str, files: &[&str]) -> Result<PathBuf> {
        let mut args = vec!["--"];
        args.extend_from_slice(files);
        let out = std::process::Command::new("sha256sum")
            .current_dir(&self.build)
            .args(&args)
            .output()?;
        ensure!(out.status.success(), "sha256sum failed");
        let p = self.build.join(name);
        fs::write(&p, out.stdout)?;
        Ok(p)
    }

    fn path(&self, name: &str) -> String {
        self.build.join(name).display().to_string()
    }

    /// Runs a playbook under the load, and books the run and what the load
    /// saw.
    fn play(
        &self,
        fig: &mut Figures,
        label: &str,
        playbook: &str,
        vars: &[String],
    ) -> Result<(Run, Tally, Vec<Access>)> {
        let (run, tally, access) = self.under_load(|| self.ansible.run(label, playbook, vars))?;
        fig.add_run(&run);
        fig.add_load(&tally);
        Ok((run, tally, access))
    }

    /// The variables of a rollout of `version` from the build's files `bin`
    /// and `cfg`.
    fn release(&self, version: &str, bin: &str, cfg: &str) -> Vec<String> {
        vec![
            format!("version={version}"),
            format!("bin={}", self.path(bin)),
            format!("cfg={}", self.path(cfg)),
        ]
    }

    /// Runs `f` with the load going through nginx; returns what it saw and
    /// nginx's log of the same time.
    fn under_load<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Tally, Vec<Access>)> {
        let mark = self.nginx.mark();
        let load = Load::start(self.nginx.addr, CLIENTS, PER_CLIENT_PER_SECOND, LOAD_LIMIT);
        // The load is really going before the play starts.
        poll(
            Instant::now() + Duration::from_secs(30),
            "the load's first replies",
            || {
                let t = load.snapshot();
                if t.ok >= CLIENTS {
                    Ok(())
                } else {
                    Err(format!("{t:?}"))
                }
            },
        )?;
        let r = f();
        let tally = load.stop();
        let access = self.nginx.since(mark);
        Ok((r?, tally, access))
    }
}

fn contains(run: &Run, needle: &str) -> bool {
    run.output().contains(needle) || run.report.iter().any(|l| l.contains(needle))
}

fn expect_failure(run: &Run) -> Result<()> {
    ensure!(
        run.code != 0,
        "{} succeeded (exit 0) but should have failed; see {}",
        run.name,
        run.log.display()
    );
    Ok(())
}

fn expect_success(run: &Run) -> Result<()> {
    if run.code == 0 {
        return Ok(());
    }
    let mut said: Vec<String> = run.report.clone();
    if said.is_empty() {
        said = run
            .lines
            .iter()
            .filter(|(_, l)| l.starts_with("[ERROR]") || l.starts_with("fatal:"))
            .map(|(_, l)| l.clone())
            .collect();
    }
    bail!(
        "{} failed (exit {}):\n{}\nsee {}",
        run.name,
        run.code,
        said.join("\n"),
        run.log.display()
    )
}

fn expect_line(run: &Run, host: &str, needles: &[&str]) -> Result<()> {
    let line = run
        .line_for(host)
        .with_context(|| format!("{}: no line for {host} in {:?}", run.name, run.report))?;
    for n in needles {
        ensure!(
            line.contains(n),
            "{}: the line for {host} should say {n:?}: {line}",
            run.name
        );
    }
    Ok(())
}

fn no_failures(what: &str, t: &Tally) -> Result<()> {
    ensure!(t.ok > 0, "{what}: no request succeeded through nginx");
    ensure!(
        t.failures.is_empty(),
        "{what}: {} of {} requests through nginx failed: {:#?}",
        t.failures.len(),
        t.requests(),
        &t.failures[..t.failures.len().min(20)]
    );
    Ok(())
}

// ---- figures ----

#[derive(Debug, Clone, Default)]
struct Figures {
    hosts: usize,
    batches: usize,
    requests: usize,
    failed: usize,
    /// Lines for the report (batch times, switch times, notes).
    notes: Vec<String>,
}

impl Figures {
    fn add_load(&mut self, t: &Tally) {
        self.requests += t.requests();
        self.failed += t.failures.len();
    }

    fn add_run(&mut self, run: &Run) {
        self.batches += run.batches().len();
        let b = run.batches();
        let end = run
            .time_of("PLAY [Check that every host serves the release]")
            .or_else(|| run.time_of("PLAY RECAP"))
            .unwrap_or(run.wall);
        let times: Vec<String> = b
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let until = b.get(k + 1).map(|n| n.at).unwrap_or(end);
                format!(
                    "batch {} ({}) {:.1}s",
                    x.number,
                    x.hosts.join(","),
                    (until - x.at).as_secs_f64()
                )
            })
            .collect();
        self.notes.push(format!(
            "{}: exit {}, {:.1}s{}{}",
            run.name,
            run.code,
            run.wall.as_secs_f64(),
            if times.is_empty() { "" } else { "; " },
            times.join(", ")
        ));
    }
}

struct Outcome {
    name: &'static str,
    title: &'static str,
    wall: Duration,
    figures: Figures,
    result: Result<()>,
}

// ---- set-up ----

fn setup() -> Result<Fleet> {
    let work = std::env::temp_dir().join(format!("baton-fleet-{}", std::process::id()));
    let logs = std::env::var_os("BATON_FLEET_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/fleet-logs"));
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs)?;
    fs::create_dir_all(work.join("ssh"))?;
    let key = work.join("ssh/id_ed25519");
    bed::run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "baton-fleet-test",
            "-f",
            key.to_str().unwrap(),
        ],
    )?;
    let public = fs::read_to_string(key.with_extension("pub"))?;

    let t0 = Instant::now();
    let layers = Layers::mount(&work.join("layers"))?;
    let mut hosts = Vec::new();
    for n in 1..=HOSTS {
        hosts.push(Host::create(
            &layers,
            &HostSpec {
                name: format!("fleet-{n}"),
                addr: format!("{SUBNET_PREFIX}.{}", 10 + n),
                authorized_key: public.clone(),
            },
        )?);
    }
    for h in &mut hosts {
        h.start()?;
    }
    for h in &mut hosts {
        h.wait_booted(Duration::from_secs(90))?;
    }
    println!(
        "fleet: {HOSTS} hosts booted in {:.1}s ({})",
        t0.elapsed().as_secs_f64(),
        hosts
            .iter()
            .map(|h| format!("{} {}", h.name, h.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Operators' ssh: the hosts' keys known in advance, checked strictly.
    let known = work.join("ssh/known_hosts");
    fs::write(
        &known,
        hosts
            .iter()
            .map(|h| format!("{} {}\n", h.addr, h.host_key))
            .collect::<String>(),
    )?;
    let inventory = work.join("inventory");
    let keep = KEEP.to_string();
    write_inventory(
        &inventory,
        &hosts
            .iter()
            .map(|h| (h.name.clone(), h.addr.clone()))
            .collect::<Vec<_>>(),
        &key,
        &known,
        &[("baton_keep_releases", &keep)],
    )?;
    let ansible = Ansible {
        program: env_path("BATON_FLEET_ANSIBLE")?,
        dir: Path::new(REPO).join("deploy/ansible"),
        inventory,
        logs: logs.clone(),
        state: work.join("ansible"),
    };
    let build = work.join("build");
    fs::create_dir_all(&build)?;
    let app = std::env::var_os("BATON_FLEET_APP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(APP));
    fs::copy(&app, build.join("app"))
        .with_context(|| format!("copying the example app {}", app.display()))?;
    let nginx = Nginx::start(
        &work.join("nginx"),
        LB,
        &hosts
            .iter()
            .map(|h| format!("{}:3000", h.addr))
            .collect::<Vec<_>>(),
    )?;
    Ok(Fleet {
        hosts,
        nginx,
        ansible,
        build,
        logs,
        deb: env_path("BATON_FLEET_DEB")?,
        deb_upgrade: env_path("BATON_FLEET_DEB_UPGRADE")?,
        _layers: layers,
        work,
    })
}

/// The role installs baton from the .deb and the first release goes out to
/// every host at once (nothing serves yet, so there is nothing to protect).
fn install_and_first_release(f: &Fleet, fig: &mut Figures) -> Result<()> {
    let install = f.ansible.run(
        "setup-install",
        "install.yml",
        &[format!("deb={}", f.deb.display())],
    )?;
    fig.add_run(&install);
    expect_success(&install)?;
    for (h, (_, changed, _, _)) in install.recap() {
        if h != "localhost" {
            ensure!(changed > 0, "the first install changed nothing on {h}");
        }
    }
    let want = deb_version(&f.deb)?;
    for h in &f.hosts {
        let v = h.run(&["dpkg-query", "-W", "-f", "${Version}", "baton"])?;
        ensure!(
            v == want,
            "{}: baton {v} installed, expected {want}",
            h.name
        );
        let enabled = h.run(&["systemctl", "is-enabled", "app.socket"])?;
        ensure!(
            enabled.trim() == "enabled",
            "{}: app.socket is {enabled}",
            h.name
        );
    }
    f.artifact("cfg.1.0", br#"{"release": "1.0"}"#)?;
    let first = f.ansible.run(
        "setup-first-release",
        "rollout.yml",
        &[
            f.release("1.0", "app", "cfg.1.0"),
            vec!["baton_serial=100%".into()],
        ]
        .concat(),
    )?;
    fig.add_run(&first);
    expect_success(&first)?;
    f.assert_serves(&[0, 1, 2], "1.0")?;
    let reply = crate::proxy::get(f.nginx.addr, "/", Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("GET through nginx: {e}"))?;
    ensure!(
        reply.status == 200 && reply.body.starts_with("release 1.0 "),
        "through nginx: {reply:?}"
    );
    Ok(())
}

fn deb_version(deb: &Path) -> Result<String> {
    Ok(
        bed::run("dpkg-deb", &["--field", deb.to_str().unwrap(), "Version"])?
            .trim()
            .to_owned(),
    )
}

// ---- the cases ----

/// Case 1: a good release across all three hosts in batches: 0 failed requests
/// through nginx, every host serves it, the batch order held.
fn case_good_release(f: &Fleet, fig: &mut Figures) -> Result<()> {
    f.artifact("cfg.2.0", br#"{"release": "2.0"}"#)?;
    let sums = f.sums("SHA256SUMS", &["app", "cfg.2.0"])?;
    let (run, tally, _) = f.play(
        fig,
        "case1-rollout-2.0",
        "rollout.yml",
        &[
            f.release("2.0", "app", "cfg.2.0"),
            vec![format!("sha256sums={}", sums.display())],
        ]
        .concat(),
    )?;
    expect_success(&run)?;
    let batches: Vec<Vec<String>> = run.batches().into_iter().map(|b| b.hosts).collect();
    ensure!(
        batches == [["fleet-1"], ["fleet-2"], ["fleet-3"]],
        "batches: {batches:?}, expected the canary fleet-1, then fleet-2 (25 %), then fleet-3"
    );
    f.assert_serves(&[0, 1, 2], "2.0")?;
    // Batch order, from each host's own record of its switch.
    let mut switches = Vec::new();
    for i in 0..HOSTS {
        let (name, result, started, finished) = f
            .last_rollout(i)
            .with_context(|| format!("{}: no last rollout", f.host(i).name))?;
        ensure!(
            name == "app.2.0" && result == "succeeded",
            "{}: last rollout {name} {result}",
            f.host(i).name
        );
        switches.push((started, finished));
        fig.notes.push(format!(
            "{} switch (baton: current.conf change to the new generation live) {:.0} ms",
            f.host(i).name,
            (finished - started) * 1000.0
        ));
    }
    let gates: Vec<String> = run
        .task_durations("Switch to the release and wait until it serves")
        .iter()
        .map(|d| format!("{:.2}s", d.as_secs_f64()))
        .collect();
    fig.notes.push(format!(
        "`baton switch --wait` as Ansible ran it (ssh and module included), per batch: {}",
        gates.join(", ")
    ));
    for k in 1..HOSTS {
        ensure!(
            switches[k].0 >= switches[k - 1].1,
            "{} started switching ({}) before {} had finished ({})",
            f.host(k).name,
            switches[k].0,
            f.host(k - 1).name,
            switches[k - 1].1
        );
    }
    for i in 0..HOSTS {
        expect_line(
            &run,
            &f.host(i).name,
            &["serves 2.0", "rolled out in batch"],
        )?;
    }
    no_failures("case 1", &tally)?;
    ensure!(
        tally.by_release.get("1.0").copied().unwrap_or(0) > 0
            && tally.by_release.get("2.0").copied().unwrap_or(0) > 0,
        "the load did not span the rollout: {:?}",
        tally.by_release
    );
    fig.notes
        .push(format!("replies by release: {:?}", tally.by_release));
    Ok(())
}

/// Case 1b: rollback.yml puts the whole fleet back on the previous release the
/// same way; status.yml then tells each host's state in one line.
fn case_rollback_playbook(f: &Fleet, fig: &mut Figures) -> Result<()> {
    let (run, tally, _) = f.play(
        fig,
        "case1b-rollback-1.0",
        "rollback.yml",
        &["version=1.0".into()],
    )?;
    expect_success(&run)?;
    ensure!(run.batches().len() == 3, "batches: {:?}", run.batches());
    f.assert_serves(&[0, 1, 2], "1.0")?;
    no_failures("case 1b", &tally)?;
    let status = f.ansible.run("case1b-status", "status.yml", &[])?;
    fig.notes
        .push(format!("status.yml {:.1}s", status.wall.as_secs_f64()));
    expect_success(&status)?;
    for i in 0..HOSTS {
        let s = f.serving(i).context("no state")?;
        expect_line(
            &status,
            &f.host(i).name,
            &[
                &format!("serving 1.0 (generation {})", s.generation),
                "last rollout: app.1.0 succeeded",
                "last known good:",
            ],
        )?;
    }
    Ok(())
}

/// Case 2: a release that crashes before READY on the canary: the play stops
/// after the canary, no other host was touched, 0 failed requests.
fn case_crash_on_canary(f: &Fleet, fig: &mut Figures) -> Result<()> {
    f.artifact("cfg.2.1", br#"{"release": "2.1", "exit_before_ready": 4}"#)?;
    let before: Vec<Untouched> = (1..HOSTS).map(|i| f.untouched(i)).collect();
    let (run, tally, _) = f.play(
        fig,
        "case2-rollout-2.1-crashes",
        "rollout.yml",
        &f.release("2.1", "app", "cfg.2.1"),
    )?;
    expect_failure(&run)?;
    let batches = run.batches();
    ensure!(
        batches.len() == 1 && batches[0].hosts == ["fleet-1"],
        "the play went past the canary: {batches:?}"
    );
    f.assert_serves(&[0], "1.0")?;
    for i in 1..HOSTS {
        ensure!(
            f.untouched(i) == before[i - 1],
            "{} was touched: {:?} -> {:?}",
            f.host(i).name,
            before[i - 1],
            f.untouched(i)
        );
    }
    expect_line(
        &run,
        "fleet-1",
        &[
            "serves 1.0 again",
            "stopped here in batch 1",
            "exited before READY=1",
        ],
    )?;
    expect_line(&run, "fleet-2", &["serves 1.0", "untouched"])?;
    expect_line(&run, "fleet-3", &["serves 1.0", "untouched"])?;
    no_failures("case 2", &tally)?;
    ensure!(
        !tally.by_release.contains_key("2.1"),
        "release 2.1 answered: {:?}",
        tally.by_release
    );
    Ok(())
}

/// Case 3: a release that becomes ready but fails the HTTP check in batch 2:
/// batch 1 and 2 are back on the previous release, batch 3 never changed,
/// the play fails with a line per host.
fn case_http_check_fails_in_batch_2(f: &Fleet, fig: &mut Figures) -> Result<()> {
    fs::copy(
        Path::new(REPO).join("tests/fleet/unhealthy-app.py"),
        f.build.join("unhealthy-app"),
    )?;
    f.artifact(
        "cfg.3.0",
        br#"{"release": "3.0", "unhealthy_on": ["fleet-2"]}"#,
    )?;
    let before = f.untouched(2);
    let (run, tally, access) = f.play(
        fig,
        "case3-rollout-3.0-unhealthy-on-fleet-2",
        "rollout.yml",
        &[
            f.release("3.0", "unhealthy-app", "cfg.3.0"),
            vec!["baton_http_check_url=http://127.0.0.1:3000/".into()],
        ]
        .concat(),
    )?;
    expect_failure(&run)?;
    let batches: Vec<Vec<String>> = run.batches().into_iter().map(|b| b.hosts).collect();
    ensure!(
        batches == [["fleet-1"], ["fleet-2"]],
        "batches: {batches:?}, expected fleet-1 then fleet-2 and no third"
    );
    f.assert_serves(&[0, 1], "1.0")?;
    ensure!(
        f.untouched(2) == before,
        "fleet-3 was touched: {before:?} -> {:?}",
        f.untouched(2)
    );
    expect_line(
        &run,
        "fleet-1",
        &["serves 1.0 again", "rolled back from 3.0"],
    )?;
    expect_line(
        &run,
        "fleet-2",
        &[
            "serves 1.0 again",
            "stopped here in batch 2",
            "HTTP check failed",
            "answered 503, expected 200",
        ],
    )?;
    expect_line(&run, "fleet-3", &["serves 1.0", "untouched"])?;
    // The unhealthy release did serve on fleet-2; nginx stepped around it.
    let stepped = access
        .iter()
        .filter(|a| {
            a.upstreams
                .first()
                .is_some_and(|u| u.starts_with(&format!("{}:", f.host(1).addr)))
                && a.upstream_statuses.first().is_some_and(|s| s == "503")
        })
        .count();
    let bad = access.iter().filter(|a| a.status != 200).count();
    ensure!(bad == 0, "nginx answered {bad} request(s) with an error");
    ensure!(
        stepped > 0,
        "nginx never saw fleet-2's 503s: was the unhealthy release live there?"
    );
    fig.notes.push(format!(
        "nginx retried {stepped} request(s) that fleet-2's unhealthy release answered 503; replies by release: {:?}",
        tally.by_release
    ));
    no_failures("case 3", &tally)?;
    // Pruning (keep 2): fleet-1 put 3.0 in place, so its oldest spare
    // release went; 1.0 (what it served before, its last known good) stayed.
    let r = f.releases(0);
    for want in ["app.1.0", "cfg.1.0", "app.2.1", "app.3.0", "current.conf"] {
        ensure!(r.contains(&want.to_owned()), "fleet-1 lost {want}: {r:?}");
    }
    ensure!(
        !r.contains(&"app.2.0".to_owned()) && !r.contains(&"cfg.2.0".to_owned()),
        "fleet-1 kept 2.0 past the newest {KEEP}: {r:?}"
    );
    Ok(())
}

/// Case 3b: the other rollback policies, with batches of one host then two
/// and the same release (healthy on fleet-1 and fleet-3, unhealthy on
/// fleet-2). `batch` puts fleet-3 (fleet-2's batch) back and leaves fleet-1
/// (batch 1) on 3.0; `none` puts back only fleet-2. rollback.yml then brings
/// the fleet back to 1.0.
fn case_rollback_policies(f: &Fleet, fig: &mut Figures) -> Result<()> {
    let args = |policy: &str| {
        [
            f.release("3.0", "unhealthy-app", "cfg.3.0"),
            vec![
                "baton_http_check_url=http://127.0.0.1:3000/".into(),
                r#"{"baton_serial": [1, 2]}"#.into(),
                format!("baton_rollback={policy}"),
            ],
        ]
        .concat()
    };
    let two_batches = |run: &Run| -> Result<()> {
        let batches: Vec<Vec<String>> = run.batches().into_iter().map(|b| b.hosts).collect();
        ensure!(
            batches == [vec!["fleet-1"], vec!["fleet-2", "fleet-3"]],
            "{}: batches {batches:?}, expected fleet-1 then fleet-2 and fleet-3",
            run.name
        );
        Ok(())
    };

    let (run, tally, _) = f.play(fig, "case3b-rollback-batch", "rollout.yml", &args("batch"))?;
    expect_failure(&run)?;
    two_batches(&run)?;
    f.assert_serves(&[0], "3.0")?;
    f.assert_serves(&[1, 2], "1.0")?;
    expect_line(
        &run,
        "fleet-1",
        &["serves 3.0", "kept (baton_rollback=batch"],
    )?;
    expect_line(&run, "fleet-2", &["serves 1.0 again", "HTTP check failed"])?;
    expect_line(
        &run,
        "fleet-3",
        &["serves 1.0 again", "rolled back from 3.0"],
    )?;
    no_failures("case 3b, rollback=batch", &tally)?;

    let (run, tally, _) = f.play(fig, "case3b-rollback-none", "rollout.yml", &args("none"))?;
    expect_failure(&run)?;
    two_batches(&run)?;
    f.assert_serves(&[0, 2], "3.0")?;
    f.assert_serves(&[1], "1.0")?;
    expect_line(&run, "fleet-1", &["serves 3.0", "already served it"])?;
    expect_line(&run, "fleet-2", &["serves 1.0 again", "HTTP check failed"])?;
    expect_line(
        &run,
        "fleet-3",
        &["serves 3.0", "kept (baton_rollback=none"],
    )?;
    no_failures("case 3b, rollback=none", &tally)?;

    let (run, tally, _) = f.play(
        fig,
        "case3b-rollback-1.0",
        "rollback.yml",
        &["version=1.0".into()],
    )?;
    expect_success(&run)?;
    f.assert_serves(&[0, 1, 2], "1.0")?;
    no_failures("case 3b, rollback.yml", &tally)?;
    Ok(())
}

/// Case 4: bad input: a missing artifact, a corrupted one (its sha256 does not
/// match the build's SHA256SUMS: it never reaches current.conf on any
/// host), and a different build under a version the hosts already have
/// (releases are immutable). Each names the file or host and the reason.
fn case_bad_artifacts(f: &Fleet, fig: &mut Figures) -> Result<()> {
    let before: Vec<Untouched> = (0..HOSTS).map(|i| f.untouched(i)).collect();
    let unchanged = |what: &str| -> Result<()> {
        for (i, was) in before.iter().enumerate() {
            let now = f.untouched(i);
            ensure!(
                now == *was,
                "{what}: {} changed: {was:?} -> {now:?}",
                f.host(i).name
            );
        }
        Ok(())
    };

    // 4a. A missing file: refused on the controller.
    let missing = f.path("no-such-app");
    let (run, tally, _) = f.play(
        fig,
        "case4a-missing-artifact",
        "rollout.yml",
        &[
            "version=3.1".into(),
            format!("bin={missing}"),
            format!("cfg={}", f.path("cfg.2.0")),
        ],
    )?;
    expect_failure(&run)?;
    ensure!(
        contains(
            &run,
            &format!("bin={missing}: no such file on the controller")
        ),
        "no message naming {missing}; see {}",
        run.log.display()
    );
    unchanged("4a")?;
    no_failures("case 4a", &tally)?;

    // 4b. A corrupted artifact: the build's digests say one thing, the file
    // another.
    let mut bytes = fs::read(f.build.join("app"))?;
    f.artifact("app-3.1", &bytes)?;
    f.artifact("cfg.3.1", br#"{"release": "3.1"}"#)?;
    let sums = f.sums("SHA256SUMS-3.1", &["app-3.1", "cfg.3.1"])?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    f.artifact("app-3.1", &bytes)?;
    let (run, tally, _) = f.play(
        fig,
        "case4b-corrupted-artifact",
        "rollout.yml",
        &[
            f.release("3.1", "app-3.1", "cfg.3.1"),
            vec![format!("sha256sums={}", sums.display())],
        ]
        .concat(),
    )?;
    expect_failure(&run)?;
    ensure!(run.batches().len() == 1, "batches: {:?}", run.batches());
    expect_line(
        &run,
        "fleet-1",
        &[
            "serves 1.0",
            "checksum mismatch",
            "/srv/app/release/.app.3.1.incoming",
            &format!("bin={}", f.path("app-3.1")),
            "SHA256SUMS-3.1",
        ],
    )?;
    unchanged("4b")?;
    for i in 0..HOSTS {
        ensure!(
            f.named(i).as_deref() == Some("1.0"),
            "{}: current.conf names {:?}",
            f.host(i).name,
            f.named(i)
        );
    }
    no_failures("case 4b", &tally)?;

    // 4c. Release 1.0 again, with another config: refused.
    f.artifact("cfg.1.0-other", br#"{"release": "1.0", "other": true}"#)?;
    let (run, tally, _) = f.play(
        fig,
        "case4c-same-version-other-build",
        "rollout.yml",
        &f.release("1.0", "app", "cfg.1.0-other"),
    )?;
    expect_failure(&run)?;
    expect_line(
        &run,
        "fleet-1",
        &[
            "already on this host with other content",
            "/srv/app/release/cfg.1.0",
        ],
    )?;
    unchanged("4c")?;
    no_failures("case 4c", &tally)?;
    Ok(())
}

/// Case 5: a host unreachable mid-play (its container stopped once the canary
/// has switched): the play stops, the reachable hosts are consistent, the
/// message names the host.
fn case_host_lost_mid_play(f: &mut Fleet, fig: &mut Figures) -> Result<()> {
    f.artifact("cfg.4.0", br#"{"release": "4.0"}"#)?;
    let before = f.untouched(2);
    let mut stopped_after = Duration::ZERO;
    let mut stop_took = Duration::ZERO;
    let mark = f.nginx.mark();
    let load = Load::start(f.nginx.addr, CLIENTS, PER_CLIENT_PER_SECOND, LOAD_LIMIT);
    let running = f.ansible.spawn(
        "case5-rollout-4.0-fleet-2-lost",
        "rollout.yml",
        &f.release("4.0", "app", "cfg.4.0"),
    )?;
    let waited = poll(
        Instant::now() + Duration::from_secs(300),
        "the canary fleet-1 to serve 4.0",
        || match f.serving(0) {
            Some(s) if s.version == "4.0" && s.generations == 1 => Ok(()),
            other => Err(format!("fleet-1: {other:?}")),
        },
    );
    if waited.is_ok() {
        stopped_after = running.elapsed();
        stop_took = f.hosts[1].stop()?;
    }
    let run = running.wait()?;
    let tally = load.stop();
    let access = f.nginx.since(mark);
    waited?;
    fig.add_run(&run);
    fig.add_load(&tally);
    // Judged now, reported after fleet-2 is back (the next case needs it).
    let verdict = (|| -> Result<()> {
        fig.notes.push(format!(
            "fleet-2 stopped {:.1}s into the play (halting took {:.1}s)",
            stopped_after.as_secs_f64(),
            stop_took.as_secs_f64()
        ));
        expect_failure(&run)?;
        let batches: Vec<Vec<String>> = run.batches().into_iter().map(|b| b.hosts).collect();
        ensure!(
            batches == [["fleet-1"], ["fleet-2"]],
            "batches: {batches:?}, expected the play to stop in fleet-2's batch"
        );
        expect_line(&run, "fleet-2", &["unreachable", "stopped here in batch 2"])?;
        expect_line(
            &run,
            "fleet-1",
            &["serves 1.0 again", "rolled back from 4.0"],
        )?;
        expect_line(&run, "fleet-3", &["serves 1.0", "untouched"])?;
        ensure!(
            contains(&run, "fleet-2") && contains(&run, "unreachable"),
            "the output does not name fleet-2 as unreachable"
        );
        // The reachable hosts are consistent: both on 1.0.
        f.assert_serves(&[0, 2], "1.0")?;
        ensure!(
            f.untouched(2) == before,
            "fleet-3 was touched: {before:?} -> {:?}",
            f.untouched(2)
        );
        // Pruning kept what fleet-1 went back to.
        let r = f.releases(0);
        for want in ["app.1.0", "cfg.1.0", "app.3.0", "app.4.0"] {
            ensure!(r.contains(&want.to_owned()), "fleet-1 lost {want}: {r:?}");
        }
        ensure!(
            !r.contains(&"app.2.1".to_owned()),
            "fleet-1 kept 2.1 past the newest {KEEP}: {r:?}"
        );
        let retried = access.iter().filter(|a| a.upstreams.len() > 1).count();
        fig.notes.push(format!(
            "nginx retried {retried} request(s) on another host while fleet-2 went away"
        ));
        no_failures("case 5", &tally)?;
        Ok(())
    })();

    // fleet-2 comes back for the next case, on what it served.
    let t0 = Instant::now();
    f.hosts[1].start()?;
    f.hosts[1].wait_booted(Duration::from_secs(90))?;
    // app.socket listens from boot; the first connection starts baton.
    let addr: std::net::SocketAddr = format!("{}:3000", f.host(1).addr).parse()?;
    let reply = crate::proxy::get(addr, "/", Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("GET fleet-2 after its reboot: {e}"))?;
    ensure!(reply.status == 200, "fleet-2 after its reboot: {reply:?}");
    let s = f.wait_alone(1, Duration::from_secs(60))?;
    fig.notes.push(format!(
        "fleet-2 rebooted in {:.1}s and serves {} (current.conf names {:?})",
        t0.elapsed().as_secs_f64(),
        s.version,
        f.named(1)
    ));
    verdict?;
    ensure!(
        s.version == "1.0",
        "fleet-2 came back serving {}: the play switched it before it was stopped",
        s.version
    );
    Ok(())
}

/// Case 6: install run again: it changes nothing. A baton upgrade through the
/// role (a newer .deb): the app keeps its pid (and baton its own), nothing
/// is dropped, and the running baton is the new binary.
fn case_install_idempotent_and_upgrade(f: &Fleet, fig: &mut Figures) -> Result<()> {
    let old = deb_version(&f.deb)?;
    let new = deb_version(&f.deb_upgrade)?;
    ensure!(old != new, "the two packages are both {old}");
    // Every host runs baton (fleet-2 was rebooted and started on demand).
    let mut before = BTreeMap::new();
    for i in 0..HOSTS {
        let s = f.wait_alone(i, Duration::from_secs(30))?;
        let main = main_pid(f.host(i))?;
        before.insert(i, (s, main));
    }
    let ((again, upgrade), tally, _) = f.under_load(|| {
        let again = f.ansible.run(
            "case6-install-again",
            "install.yml",
            &[format!("deb={}", f.deb.display())],
        )?;
        let upgrade = f.ansible.run(
            "case6-install-upgrade",
            "install.yml",
            &[format!("deb={}", f.deb_upgrade.display())],
        )?;
        Ok((again, upgrade))
    })?;
    fig.add_run(&again);
    fig.add_run(&upgrade);
    fig.add_load(&tally);
    expect_success(&again)?;
    for (h, (_, changed, _, _)) in again.recap() {
        ensure!(
            changed == 0,
            "the second install changed {changed} thing(s) on {h}"
        );
    }
    // Whatever the upgrade did, the app was not restarted and the load saw
    // no failure.
    for i in 0..HOSTS {
        let h = f.host(i);
        let (s0, main0) = &before[&i];
        let s = f.wait_alone(i, Duration::from_secs(30))?;
        ensure!(
            s.pid == s0.pid && s.generation == s0.generation,
            "{}: the app was restarted: generation {} pid {} -> generation {} pid {}",
            h.name,
            s0.generation,
            s0.pid,
            s.generation,
            s.pid
        );
        let main = main_pid(h)?;
        ensure!(
            main == *main0,
            "{}: baton's pid changed {main0} -> {main}",
            h.name
        );
    }
    no_failures("case 6", &tally)?;
    // Each host's answers came from one generation throughout.
    let mut per_host: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (host, _, pid) in tally.generations.keys() {
        per_host.entry(host.as_str()).or_default().push(*pid);
    }
    for (host, pids) in &per_host {
        ensure!(
            pids.len() == 1,
            "{host} answered from several app pids during the install runs: {pids:?}"
        );
    }
    fig.notes
        .push(format!("app pids that answered, per host: {per_host:?}"));
    // And the upgrade itself: the new package, and the running baton is the
    // new /usr/bin/baton (not the file dpkg unlinked), under the same pid.
    expect_success(&upgrade).context("upgrading baton through the role")?;
    for i in 0..HOSTS {
        let h = f.host(i);
        let v = h.run(&["dpkg-query", "-W", "-f", "${Version}", "baton"])?;
        ensure!(v == new, "{}: baton {v} installed, expected {new}", h.name);
        let main = main_pid(h)?;
        let exe = h.run(&["readlink", &format!("/proc/{main}/exe")])?;
        ensure!(
            exe.trim() == "/usr/bin/baton",
            "{}: baton (pid {main}) still runs {}",
            h.name,
            exe.trim()
        );
        let same = h.run(&[
            "sh",
            "-c",
            &format!("[ /proc/{main}/exe -ef /usr/bin/baton ] && echo same || echo different"),
        ])?;
        ensure!(
            same.trim() == "same",
            "{}: baton runs another file than /usr/bin/baton",
            h.name
        );
    }
    let third = f.ansible.run(
        "case6-install-upgrade-again",
        "install.yml",
        &[format!("deb={}", f.deb_upgrade.display())],
    )?;
    fig.add_run(&third);
    expect_success(&third)?;
    for (h, (_, changed, _, _)) in third.recap() {
        ensure!(
            changed == 0,
            "installing {new} again changed {changed} thing(s) on {h}"
        );
    }
    Ok(())
}

fn main_pid(h: &Host) -> Result<i64> {
    let text = h.run(&[
        "systemctl",
        "show",
        "app.service",
        "-p",
        "MainPID",
        "--value",
    ])?;
    let pid: i64 = text.trim().parse().context("MainPID")?;
    ensure!(pid > 0, "{}: app.service has no main pid", h.name);
    Ok(pid)
}

// ---- the run ----

fn selected(name: &str) -> bool {
    match std::env::var("BATON_FLEET_CASES") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|c| c.trim() == name),
        _ => true,
    }
}

/// Runs the set-up and every case; prints each case's figures and a
/// closing `N passed, N failed` line. Ok(true) when every case passed.
pub fn run_all() -> Result<bool> {
    let t0 = Instant::now();
    let mut f = setup()?;
    let started = Instant::now();
    let mut setup_figs = Figures {
        hosts: HOSTS,
        ..Figures::default()
    };
    let setup_result = install_and_first_release(&f, &mut setup_figs);
    print_row(
        "setup",
        "install from the .deb, first release everywhere",
        started.elapsed(),
        &setup_figs,
        &setup_result,
    );
    if let Err(e) = setup_result {
        for h in &f.hosts {
            eprintln!("==== {} journal ====\n{}", h.name, h.journal_tail(60));
        }
        bail!("set-up failed: {e:#}");
    }

    type Case = fn(&mut Fleet, &mut Figures) -> Result<()>;
    let cases: Vec<(&'static str, &'static str, Case)> = vec![
        ("1", "good release in batches", |f, x| {
            case_good_release(f, x)
        }),
        ("1b", "rollback.yml, then status.yml", |f, x| {
            case_rollback_playbook(f, x)
        }),
        ("2", "crash before READY on the canary", |f, x| {
            case_crash_on_canary(f, x)
        }),
        ("3", "ready, fails the HTTP check in batch 2", |f, x| {
            case_http_check_fails_in_batch_2(f, x)
        }),
        ("3b", "rollback=batch, then none (serial 1, 2)", |f, x| {
            case_rollback_policies(f, x)
        }),
        ("4", "missing, corrupted, rebuilt artifacts", |f, x| {
            case_bad_artifacts(f, x)
        }),
        ("5", "host unreachable mid-play", case_host_lost_mid_play),
        ("6", "install twice; upgrade baton in place", |f, x| {
            case_install_idempotent_and_upgrade(f, x)
        }),
    ];
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (name, title, case) in cases {
        if !selected(name) {
            continue;
        }
        let mut figures = Figures {
            hosts: HOSTS,
            ..Figures::default()
        };
        figures
            .notes
            .push(format!("load average at the start: {}", loadavg()));
        let t = Instant::now();
        let result = case(&mut f, &mut figures);
        let wall = t.elapsed();
        print_row(name, title, wall, &figures, &result);
        outcomes.push(Outcome {
            name,
            title,
            wall,
            figures,
            result,
        });
    }

    println!();
    println!(
        "{:<5} {:<40} {:>5} {:>7} {:>8} {:>6} {:>8}  result",
        "case", "", "hosts", "batches", "requests", "failed", "wall"
    );
    let (mut passed, mut failed) = (0, 0);
    for o in &outcomes {
        let x = &o.figures;
        if o.result.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
        println!(
            "{:<5} {:<40} {:>5} {:>7} {:>8} {:>6} {:>7.1}s  {}",
            o.name,
            o.title,
            x.hosts,
            x.batches,
            x.requests,
            x.failed,
            o.wall.as_secs_f64(),
            if o.result.is_ok() { "ok" } else { "FAILED" }
        );
    }
    for o in outcomes.iter().filter(|o| o.result.is_err()) {
        if let Err(e) = &o.result {
            println!("case {} FAILED: {e:#}", o.name);
        }
    }
    println!(
        "fleet: test bed {:.1}s in all (boot, set-up and cases); logs in {}",
        t0.elapsed().as_secs_f64(),
        f.logs.display()
    );
    let work = f.work.clone();
    drop(f);
    remove_work(&work);
    println!("fleet: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The 1-minute load average: the machine is shared, and the figures move
/// with it.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn print_row(name: &str, title: &str, wall: Duration, x: &Figures, result: &Result<()>) {
    println!(
        "case {name} ({title}): hosts {}, batches {}, requests {}, failed {}, wall {:.1}s: {}",
        x.hosts,
        x.batches,
        x.requests,
        x.failed,
        wall.as_secs_f64(),
        match result {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("FAILED: {e:#}"),
        }
    );
    for n in &x.notes {
        println!("    {n}");
    }
}

/// Removes the work dir once nothing is mounted under it (never recurse into
/// a host's root).
fn remove_work(work: &Path) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = work.display().to_string();
    if mounts.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|m| m.starts_with(&prefix))
    }) {
        eprintln!("fleet: {prefix} still has mounts under it; left in place");
        return;
    }
    let _ = fs::remove_dir_all(work);
}
