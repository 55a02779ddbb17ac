//! baton's benchmarks. `bench/run [--quick]` (see bench/README.md).
//!
//! 1. Rollouts under load: wrk at saturation while current.conf flips N
//!    times, beside a steady run, a naive stop/rebind/start deploy, a
//!    socket-activated stop-then-start, and gunicorn's HUP reload.
//! 2. Rollout latency split, from baton's debug log, beside the bare
//!    fork+exec floor.
//! 3. Cost while idle and per rollout.
//! 4. Scale and leaks: 1,000 rollouts, a 1,000-edit burst, 64 sockets.
//! 5. Exposure: what a release that accepts but never becomes ready
//!    answers before `--ready-timeout` gives up on it.
//!
//! Prints a table per part and writes bench/results/latest.json.

mod baton;
mod exposure;
mod load;
mod logs;
mod scenarios;
mod stats;
mod sys;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{TempDir, clock, cmd};

use crate::baton::{AppDir, Baton, Sockets};
use crate::load::{Plan, Shape};
use crate::stats::{Summary, round, us};

/// Ports on 127.0.0.1 (never 3000: the tests use it).
pub mod ports {
    pub const BATON: u16 = 18080;
    pub const NAIVE: u16 = 18081;
    pub const SOCKET: u16 = 18082;
    pub const GUNICORN: u16 = 18083;
    pub const CHURN: u16 = 18084;
    pub const EXPOSURE: u16 = 18085;
    pub const BURST: u16 = 18086;
    pub const FLOOR: u16 = 18087;
    /// 18100 .. 18163
    pub const MANY: u16 = 18100;
}

pub struct Ctx {
    pub baton: PathBuf,
    pub app: PathBuf,
    pub wrk: PathBuf,
    pub tmp: PathBuf,
    pub logs: PathBuf,
}

struct Args {
    quick: bool,
    install: bool,
    only: Option<Vec<String>>,
}

const PARTS: [&str; 6] = ["load", "gunicorn", "churn", "burst", "sockets", "exposure"];

const USAGE: &str = "\
baton-bench: rollouts under load beside the alternatives, rollout latency,
cost while idle and per rollout, scale and leaks.

Usage: bench/run [--quick] [--only PART,...]
   or: cargo run --release --manifest-path bench/Cargo.toml -- [OPTIONS]

Options:
  --quick        a smoke test (~2 min) instead of the full run (~10 min)
  --install      install wrk (apt-get) and gunicorn (pip, else apt-get) if
                 missing; bench/run passes it
  --only PARTS   run only these parts: load, gunicorn, churn (with the
                 fork+exec floor and idle), burst, sockets, exposure
                 (comma-separated)
  -h, --help     show this help

Writes bench/results/latest.json and the logs of every process it started
to bench/results/logs/.
";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        install: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--install" => a.install = true,
            "--only" => {
                let v = it.next().ok_or("--only needs a list of parts")?;
                let parts: Vec<String> = v.split(',').map(str::to_owned).collect();
                if let Some(bad) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: unknown part {bad:?}"));
                }
                a.only = Some(parts);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("baton-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = real_main(&args) {
        eprintln!("baton-bench: {e}");
        std::process::exit(1);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_owned()
}

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(s.trim().to_owned())
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// The command that runs gunicorn: `gunicorn`, else `python3 -m gunicorn`.
fn gunicorn_cmd() -> Option<Vec<String>> {
    if let Some(p) = cmd::which("gunicorn")
        && run_ok(
            Command::new(&p)
                .arg("--version")
                .stdout(std::process::Stdio::null()),
        )
    {
        return Some(vec![p.display().to_string()]);
    }
    if run_ok(Command::new("python3").args(["-c", "import gunicorn"])) {
        return Some(vec!["python3".into(), "-m".into(), "gunicorn".into()]);
    }
    None
}

fn apt_install(pkg: &str) -> bool {
    let root = nix_is_root();
    let mut update = Command::new(if root { "apt-get" } else { "sudo" });
    let mut install = Command::new(if root { "apt-get" } else { "sudo" });
    if !root {
        update.arg("apt-get");
        install.arg("apt-get");
    }
    update.args(["update", "-qq"]);
    install
        .args(["install", "-y", "-qq", pkg])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_ok(&mut update) && run_ok(&mut install)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn tools(args: &Args) -> Result<(PathBuf, Option<Vec<String>>), String> {
    if cmd::which("wrk").is_none() && args.install {
        eprintln!("installing wrk (apt-get install wrk)");
        apt_install("wrk");
    }
    let wrk = cmd::which("wrk").ok_or(
        "wrk is not installed: run bench/run (which installs it), or `apt-get install wrk`",
    )?;
    if gunicorn_cmd().is_none() && args.install {
        eprintln!("installing gunicorn (pip install gunicorn, else apt-get install gunicorn)");
        if !run_ok(Command::new("python3").args(["-m", "pip", "install", "-q", "gunicorn"])) {
            apt_install("gunicorn");
        }
    }
    let gunicorn = gunicorn_cmd();
    if gunicorn.is_none() {
        eprintln!(
            "note: gunicorn is not installed; its rows are skipped (`pip install gunicorn` or `apt-get install gunicorn`)"
        );
    }
    Ok((wrk, gunicorn))
}

fn build(root: &Path) -> Result<PathBuf, String> {
    eprintln!("building baton and example-app (cargo build --release)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ok = run_ok(
        Command::new(cargo)
            .args(["build", "--release", "--bins", "--quiet", "--manifest-path"])
            .arg(root.join("Cargo.toml")),
    );
    if !ok {
        return Err("cargo build --release failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release"))
}

fn machine(wrk: &Path, gunicorn: &Option<Vec<String>>, root: &Path) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let git = sh(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )
    .unwrap_or_default();
    let dirty = sh(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "mem_gib": round(mem_kib as f64 / 1024.0 / 1024.0, 1),
        "loadavg_at_start": read("/proc/loadavg").trim(),
        "wrk": sh(&wrk.display().to_string(), &["-v"]).and_then(|s| s.lines().next().map(str::to_owned)),
        "gunicorn": gunicorn.as_ref().and_then(|c| sh(&c[0], &c[1..].iter().map(String::as_str).chain(["--version"]).collect::<Vec<_>>())),
        "baton_commit": format!("{git}{}", if dirty { " (src modified)" } else { "" }),
    })
}

fn check_ports() -> Result<(), String> {
    let mut all = vec![
        ports::BATON,
        ports::NAIVE,
        ports::SOCKET,
        ports::GUNICORN,
        ports::CHURN,
        ports::BURST,
        ports::FLOOR,
    ];
    all.extend((0..64).map(|i| ports::MANY + i));
    for p in all {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            return Err(format!("port 127.0.0.1:{p} is not free ({e})"));
        }
    }
    Ok(())
}

fn real_main(args: &Args) -> Result<(), String> {
    let began = Instant::now();
    let root = repo_root();
    let (wrk, gunicorn) = tools(args)?;
    let bin = build(&root)?;
    check_ports()?;
    let results = root.join("bench/results");
    let logs_dir = results.join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(|e| format!("{}: {e}", logs_dir.display()))?;
    // Removed when the bench returns (on a signal, by the handler).
    let tmp = TempDir::at(std::env::temp_dir().join(format!("baton-bench-{}", std::process::id())))
        .map_err(|e| e.to_string())?;
    sys::stop_children_on_signal(tmp.0.clone());
    let ctx = Ctx {
        // BENCH_BATON: measure another build of baton (the example app stays).
        baton: std::env::var_os("BENCH_BATON")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin.join("baton")),
        app: bin.join("example-app"),
        wrk,
        tmp: tmp.0.clone(),
        logs: logs_dir,
    };
    let want = |p: &str| args.only.as_ref().is_none_or(|o| o.iter().any(|x| x == p));
    let q = args.quick;
    let mut report = json!({
        "command": format!("bench/run{}", std::env::args().skip(1).filter(|a| a != "--install").map(|a| format!(" {a}")).collect::<String>()),
        "quick": q,
        "started_at": clock::now_us() / 1_000_000,
        "machine": machine(&ctx.wrk, &gunicorn, &root),
    });
    let shape = Shape {
        threads: 2,
        conns: 32,
        close: false,
    };
    // Each row: `rounds` segments of wrk, every row's segment of a round
    // run back to back, so a noisy stretch of the machine hits all rows
    // alike; N = rounds x flips rollouts per row.
    let plan = Plan {
        flips: if q { 12 } else { 27 },
        period: Duration::from_millis(150),
        margin: Duration::from_millis(500),
        slack: if q {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(950)
        },
    };
    // The same segment length with rollouts 1.25 s apart: how the p99 cost
    // scales with the rollout rate.
    let sparse = Plan {
        flips: if q { 1 } else { 4 },
        period: Duration::from_millis(1250),
        margin: Duration::from_millis(500),
        slack: if q {
            Duration::from_millis(750)
        } else {
            Duration::from_millis(0)
        },
    };
    let rounds = if q { 2 } else { 8 };
    let mut targets: Vec<Value> = Vec::new();
    let mut target = |name: &str, goal: &str, value: String, met: bool| {
        targets.push(json!({"target": name, "goal": goal, "value": value, "met": met}));
    };

    // ---------------- 1. rollouts under load ----------------
    let close = Shape {
        close: true,
        ..shape
    };
    let row = |key, label, steady, shape, port| load::Row {
        key,
        label,
        steady,
        shape,
        port,
        plan,
        segs: Vec::new(),
    };
    let mut rows: Vec<load::Row> = Vec::new();
    if want("load") {
        for (s, st, sfx) in [(shape, "steady", ""), (close, "steady_close", "_close")] {
            let lbl = |a: &'static str, b: &'static str| if sfx.is_empty() { a } else { b };
            rows.push(row(
                st,
                lbl(
                    "steady: no rollout (example app, baton)",
                    "steady, new connection per request",
                ),
                None,
                s,
                ports::BATON,
            ));
            rows.push(row(
                if sfx.is_empty() {
                    "baton"
                } else {
                    "baton_close"
                },
                lbl(
                    "baton: current.conf flips",
                    "baton, new connection per request",
                ),
                Some(st),
                s,
                ports::BATON,
            ));
            rows.push(row(
                if sfx.is_empty() {
                    "baton_upgrade"
                } else {
                    "baton_upgrade_close"
                },
                lbl(
                    "baton upgrade: in-place re-exec, same generation",
                    "baton upgrade, new connection per request",
                ),
                Some(st),
                s,
                ports::BATON,
            ));
            if sfx.is_empty() {
                rows.push(load::Row {
                    plan: sparse,
                    ..row(
                        "baton_sparse",
                        "baton, one rollout every 1.25 s",
                        Some(st),
                        s,
                        ports::BATON,
                    )
                });
            }
            rows.push(row(
                if sfx.is_empty() {
                    "naive"
                } else {
                    "naive_close"
                },
                lbl(
                    "(a) stop, close port, bind, start",
                    "(a) same, new connection per request",
                ),
                Some(st),
                s,
                ports::NAIVE,
            ));
            rows.push(row(
                if sfx.is_empty() {
                    "socket_restart"
                } else {
                    "socket_restart_close"
                },
                lbl(
                    "(b) socket held, stop then start",
                    "(b) same, new connection per request",
                ),
                Some(st),
                s,
                ports::SOCKET,
            ));
        }
    }
    let gunicorn = if want("gunicorn") { gunicorn } else { None };
    if gunicorn.is_some() {
        rows.push(row(
            "gunicorn_steady",
            "gunicorn steady (2 gthread workers)",
            None,
            shape,
            ports::GUNICORN,
        ));
        rows.push(row(
            "gunicorn_hup",
            "gunicorn: kill -HUP (its own reload)",
            Some("gunicorn_steady"),
            shape,
            ports::GUNICORN,
        ));
    } else if want("gunicorn") {
        eprintln!("1. gunicorn: skipped (not installed)");
    }
    let mut under_load_split = None;
    if !rows.is_empty() {
        eprintln!(
            "1. rollouts under load: {rounds} rounds of {} rows, {:.0} s each",
            rows.len(),
            plan.secs()
        );
        let mut b = None;
        let mut naive = None;
        let mut sock = None;
        let mut gun = None;
        if want("load") {
            let app =
                AppDir::new(&ctx, "load", &[("a", ""), ("b", "")]).map_err(|e| e.to_string())?;
            let listen = [format!("127.0.0.1:{}", ports::BATON)];
            b = Some(Baton::start(
                &ctx,
                app,
                Sockets::Listen(&listen),
                &[],
                "load",
            )?);
            naive = Some(load::PlainDeploy::start(&ctx, "naive", ports::NAIVE, true)?);
            sock = Some(load::PlainDeploy::start(
                &ctx,
                "socket_restart",
                ports::SOCKET,
                false,
            )?);
        }
        if let Some(cmd) = &gunicorn {
            gun = Some(load::Gunicorn::start(&ctx, cmd, ports::GUNICORN, 2)?);
        }
        let mut next_gen = 2;
        let mut load_per_round = Vec::new();
        for round in 0..rounds {
            let la = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            eprintln!("  round {} of {rounds} (loadavg {})", round + 1, la.trim());
            load_per_round.push(la.trim().to_owned());
            for r in rows.iter_mut() {
                let name = format!("{}-{}", r.key, round + 1);
                let dep: Option<&mut dyn load::Deployer> = match r.key {
                    k if k.starts_with("baton_upgrade") => {
                        let mut d = load::UpgradeDeploy {
                            baton: b.as_mut().ok_or("no baton")?,
                        };
                        r.segs.push(load::run(
                            &ctx,
                            &name,
                            r.port,
                            r.shape,
                            &r.plan,
                            Some(&mut d),
                        )?);
                        continue;
                    }
                    k if k.starts_with("baton") => {
                        let mut d = load::BatonDeploy {
                            baton: b.as_mut().ok_or("no baton")?,
                            next_gen,
                        };
                        let out = load::run(&ctx, &name, r.port, r.shape, &r.plan, Some(&mut d))?;
                        next_gen += out.flips as u64;
                        r.segs.push(out);
                        continue;
                    }
                    k if k.starts_with("naive") => {
                        naive.as_mut().map(|d| d as &mut dyn load::Deployer)
                    }
                    k if k.starts_with("socket") => {
                        sock.as_mut().map(|d| d as &mut dyn load::Deployer)
                    }
                    "gunicorn_hup" => gun.as_mut().map(|d| d as &mut dyn load::Deployer),
                    _ => None,
                };
                r.segs
                    .push(load::run(&ctx, &name, r.port, r.shape, &r.plan, dep)?);
            }
        }
        if let Some(mut b) = b {
            b.stop();
            under_load_split = Some(b.split());
        }
        for d in [naive.as_mut(), sock.as_mut()].into_iter().flatten() {
            d.stop();
        }
        if let Some(g) = gun.as_mut() {
            g.stop();
        }
        let mut section = serde_json::Map::new();
        section.insert(
            "shape".into(),
            json!({"wrk_threads": shape.threads, "connections": shape.conns,
                   "rounds": rounds, "secs_per_segment": plan.secs(),
                   "rollouts_per_segment": plan.flips,
                   "rollout_every_ms": plan.period.as_millis(),
                   "loadavg_at_each_round": load_per_round}),
        );
        for r in &rows {
            section.insert(r.key.into(), r.json(&rows));
        }
        report["under_load"] = Value::Object(section);
        for (k, mode) in [
            ("baton", "keep-alive"),
            ("baton_close", "new connection per request"),
            ("baton_upgrade", "keep-alive, in-place upgrades"),
            (
                "baton_upgrade_close",
                "new connection per request, in-place upgrades",
            ),
        ] {
            if let Some(r) = rows.iter().find(|r| r.key == k) {
                target(
                    &format!("baton: failed requests during rollouts ({mode})"),
                    "0",
                    format!(
                        "{} of {} ({} rollouts)",
                        r.failed(),
                        r.requests(),
                        r.flips()
                    ),
                    r.failed() == 0 && r.rollout_errors().is_empty(),
                );
                if let Some(x) = r.ratio(&rows) {
                    target(
                        &format!(
                            "baton: p99 during rollouts vs steady ({mode}; median of {rounds} rounds)"
                        ),
                        "<= 2x",
                        format!(
                            "{x:.2}x ({} vs {}, medians)",
                            us(r.p99()),
                            us(rows
                                .iter()
                                .find(|s| Some(s.key) == r.steady)
                                .map(|s| s.p99())
                                .unwrap_or(0.0))
                        ),
                        x <= 2.0,
                    );
                }
            }
        }
    }

    // ---------------- 3/4. churn, idle ----------------
    let churn = if want("churn") {
        let n = if q { 100 } else { 1000 };
        let idle = Duration::from_secs(if q { 10 } else { 60 });
        eprintln!("3. {n} rollouts in a row, then idle");
        let c = scenarios::churn(&ctx, n, idle, false)?;
        report["churn"] = c.json();
        report["floor"] = c.floor.json();
        Some(c)
    } else {
        None
    };
    // The same with baton at SCHED_FIFO (its generations stay SCHED_OTHER):
    // how much of event -> exec is baton waiting for a CPU after the exec.
    let churn_rt = if want("churn") {
        let n = if q { 50 } else { 200 };
        eprintln!("3. {n} more rollouts with baton under chrt --fifo --reset-on-fork");
        match scenarios::churn(&ctx, n, Duration::ZERO, true) {
            Ok(c) => {
                report["churn_realtime"] = c.json();
                Some(c)
            }
            Err(e) => {
                eprintln!("  skipped: {e}");
                report["churn_realtime"] = json!({"skipped": e});
                None
            }
        }
    } else {
        None
    };
    if let Some(u) = &under_load_split {
        report["under_load_latency_split"] = u.json();
    }
    let burst = if want("burst") {
        eprintln!("4. a burst of 1000 edits in 1 s");
        let v = scenarios::burst(&ctx, 1000, Duration::from_secs(1))?;
        report["burst"] = v.clone();
        Some(v)
    } else {
        None
    };
    let many = if want("sockets") {
        eprintln!("4. 64 listening sockets");
        let v = scenarios::sockets(&ctx, 64, if q { 5 } else { 20 })?;
        report["sockets64"] = v.clone();
        Some(v)
    } else {
        None
    };

    // ---------------- 5. exposure ----------------
    let mut exposure = Vec::new();
    if want("exposure") {
        // The default before readiness modes (60s), and today's.
        let runs: [(&str, &[&str]); 2] = if q {
            [
                ("exposure-6s", &["--ready-timeout", "6s"]),
                ("exposure-3s", &["--ready-timeout", "3s"]),
            ]
        } else {
            [
                ("exposure-60s", &["--ready-timeout", "60s"]),
                ("exposure-default", &[]),
            ]
        };
        for (name, extra) in runs {
            eprintln!(
                "5. a release that accepts but never becomes ready, baton {}",
                if extra.is_empty() {
                    "with its defaults".to_owned()
                } else {
                    extra.join(" ")
                }
            );
            exposure.push(exposure::run(&ctx, name, extra)?);
        }
        report["exposure"] = json!(exposure.iter().map(|e| e.json()).collect::<Vec<_>>());
    }

    // ---------------- targets for parts 2-4 ----------------
    if let Some(c) = &churn {
        let s = &c.split;
        target(
            "baton's share: inotify event -> exec (median)",
            "< 1 ms",
            us(s.event_to_exec.p50),
            s.event_to_exec.n > 0 && s.event_to_exec.p50 < 1000.0,
        );
        target(
            "baton's share: inotify event -> exec (p99)",
            "< 5 ms",
            us(s.event_to_exec.p99),
            s.event_to_exec.n > 0 && s.event_to_exec.p99 < 5000.0,
        );
        target(
            "baton's share: READY=1 -> SIGTERM (median)",
            "< 1 ms",
            us(s.ready_to_sigterm.p50),
            s.ready_to_sigterm.n > 0 && s.ready_to_sigterm.p50 < 1000.0,
        );
        target(
            "baton's share: READY=1 -> SIGTERM (p99)",
            "< 5 ms",
            us(s.ready_to_sigterm.p99),
            s.ready_to_sigterm.n > 0 && s.ready_to_sigterm.p99 < 5000.0,
        );
        let hwm = c.idle_end.hwm_kib.max(c.end.hwm_kib);
        target(
            "baton's RSS (VmHWM, peak over the whole churn)",
            "< 4 MiB",
            format!(
                "{:.2} MiB (VmRSS idle {:.2} MiB)",
                hwm as f64 / 1024.0,
                c.idle_end.rss_kib as f64 / 1024.0
            ),
            hwm < 4096,
        );
        target(
            "baton's wakeups while idle",
            "0",
            format!("{} in {:.0} s", c.idle_wakeups(), c.idle_secs),
            c.idle_wakeups() == 0,
        );
        target(
            &format!(
                "no growth over {} rollouts: fds, children; zero zombies",
                c.rollouts
            ),
            "equal; 0",
            format!(
                "fds {} -> {}, children {} -> {}, zombies {}",
                c.start.fds, c.end.fds, c.start.children, c.end.children, c.end.zombies
            ),
            c.start.fds == c.end.fds
                && c.start.children == c.end.children
                && c.end.zombies == 0
                && c.errors.is_empty(),
        );
        let grow = c.end.rss_kib as i64 - c.warm.rss_kib as i64;
        target(
            "no RSS growth after the first tenth of the rollouts",
            "<= 64 KiB",
            format!("{} -> {} KiB ({grow:+} KiB)", c.warm.rss_kib, c.end.rss_kib),
            grow <= 64,
        );
    }
    if let Some(b) = &burst {
        let n = b["generations_started"].as_u64().unwrap_or(0);
        target(
            "1000 edits in 1 s: settles on the last, few generations",
            "last release serves; <= 5 generations",
            format!(
                "serving {:?}; {n} generations",
                b["serving_after"].as_str().unwrap_or("")
            ),
            b["settled_on_last"].as_bool() == Some(true) && n <= 5,
        );
    }
    if let Some(m) = &many {
        let (bf, af) = (
            m["ports_answering_before"].as_u64().unwrap_or(0),
            m["ports_answering_after"].as_u64().unwrap_or(0),
        );
        target(
            "64 listening sockets passed through (LISTEN_FDS), all answer after rollouts",
            "64 and 64",
            format!("{bf} before, {af} after"),
            bf == 64 && af == 64,
        );
    }
    report["targets"] = json!(targets);
    report["elapsed_s"] = json!(began.elapsed().as_secs());
    report["loadavg_at_end"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let out = results.join("latest.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    print_report(
        &report,
        &rows,
        churn.as_ref(),
        churn_rt.as_ref(),
        under_load_split.as_ref(),
    );
    if !exposure.is_empty() {
        println!(
            "\n5. A release that accepts but never becomes ready (fresh connections, 4 clients)"
        );
        println!(
            "{:<26} {:>9} {:>10} {:>22} {:>7} {:>7}",
            "baton", "window", "answered", "by the failed release", "share", "failed"
        );
        for e in &exposure {
            println!(
                "{:<26} {:>8.1}s {:>10} {:>22} {:>6.1}% {:>7}",
                e.label,
                e.window.as_secs_f64(),
                e.answered,
                e.by_failed,
                e.share() * 100.0,
                e.failed
            );
        }
    }
    println!("\nwrote {}", out.display());
    Ok(())
}

/// A row of the split table: label, the step, the floor's figure for it.
type SplitLine<'a> = (&'a str, fn(&logs::Split) -> &Summary, Option<&'a Summary>);

fn print_report(
    report: &Value,
    rows: &[load::Row],
    churn: Option<&scenarios::Churn>,
    churn_rt: Option<&scenarios::Churn>,
    loaded: Option<&logs::Split>,
) {
    let m = &report["machine"];
    println!(
        "\nmachine: {} x {}, kernel {}, {} GiB; {}; baton {}",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["mem_gib"],
        m["wrk"].as_str().unwrap_or("wrk ?"),
        m["baton_commit"].as_str().unwrap_or("?"),
    );
    if !rows.is_empty() {
        let sh = &report["under_load"]["shape"];
        println!(
            "\n1. Rollouts under load: wrk -t{} -c{}; each row {} segments of {} s ({} rollouts each, one every {} ms), interleaved with the other rows",
            sh["wrk_threads"],
            sh["connections"],
            sh["rounds"],
            sh["secs_per_segment"],
            sh["rollouts_per_segment"],
            sh["rollout_every_ms"]
        );
        println!(
            "{:<40} {:>8} {:>9} {:>8} {:>22} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
            "",
            "rollouts",
            "requests",
            "req/s",
            "failed",
            "p50",
            "p90",
            "p99",
            "max",
            "p99/std",
            "rollout"
        );
        for r in rows {
            let ratio = r
                .ratio(rows)
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into());
            let d = r.deploy();
            let dep = if d.n > 0 { us(d.p50) } else { "-".into() };
            println!(
                "{:<40} {:>8} {:>9} {:>8.0} {:>22} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
                r.label,
                r.flips(),
                r.requests(),
                r.rps(),
                r.errors_text(),
                us(r.p50()),
                us(r.p90()),
                us(r.p99()),
                us(r.max()),
                ratio,
                dep
            );
            for e in r.rollout_errors().iter().take(3) {
                println!("    rollout error: {e}");
            }
        }
        println!(
            "  requests and failed: totals; req/s, p50, p90, p99: medians over the segments; max: over all; p99/std: median over rounds of p99 / the steady segment's p99 in the same round"
        );
        println!(
            "  rollout: median duration: baton write -> old generation exited; (a)/(b) SIGTERM -> new READY=1; gunicorn HUP -> old workers gone"
        );
    }
    let floor = churn.map(|c| &c.floor);
    if churn.is_some() || loaded.is_some() {
        println!("\n2. Rollout latency split (median / p99)");
        println!(
            "{:<34} {:>24} {:>24} {:>24} {:>24}",
            "",
            churn
                .map(|c| format!("unloaded ({} rollouts)", c.split.complete))
                .unwrap_or_default(),
            churn_rt
                .map(|c| format!("baton SCHED_FIFO ({})", c.split.complete))
                .unwrap_or_default(),
            loaded
                .map(|l| format!("under load ({})", l.complete))
                .unwrap_or_default(),
            "floor: bare fork+exec"
        );
        let cell = |s: Option<&Summary>| {
            s.filter(|s| s.n > 0)
                .map(|s| format!("{} / {}", us(s.p50), us(s.p99)))
                .unwrap_or_default()
        };
        let lines: [SplitLine; 6] = [
            ("current.conf written -> event", |s| &s.write_to_event, None),
            (
                "event -> exec'd (baton)",
                |s| &s.event_to_exec,
                floor.map(|f| &f.fork_to_exec),
            ),
            (
                "exec'd -> READY=1 (the app)",
                |s| &s.exec_to_ready,
                floor.map(|f| &f.exec_to_ready),
            ),
            (
                "READY=1 -> SIGTERM old (baton)",
                |s| &s.ready_to_sigterm,
                None,
            ),
            (
                "SIGTERM -> old exited (the app)",
                |s| &s.sigterm_to_exited,
                None,
            ),
            (
                "written -> old exited (total)",
                |s| &s.write_to_exited,
                None,
            ),
        ];
        for (label, f, fl) in lines {
            println!(
                "{:<34} {:>24} {:>24} {:>24} {:>24}",
                label,
                cell(churn.map(|c| f(&c.split))),
                cell(churn_rt.map(|c| f(&c.split))),
                cell(loaded.map(f)),
                cell(fl)
            );
        }
        println!(
            "  unloaded: part 3's rollouts; SCHED_FIFO: more of them with baton under chrt --fifo --reset-on-fork (its generations stay SCHED_OTHER); under load: part 1's baton rows; floor: the example app spawned by the bench between the unloaded rollouts"
        );
        for (what, s) in [
            ("unloaded", churn.map(|c| &c.split)),
            ("SCHED_FIFO", churn_rt.map(|c| &c.split)),
            ("under load", loaded),
        ] {
            if let Some(s) = s.filter(|s| s.deferred > 0) {
                println!(
                    "  {what}: {} rollout(s) held back by the 100 ms settle (two edits seen < 100 ms apart) are not timed",
                    s.deferred
                );
            }
        }
        if let (Some(c), Some(f)) = (churn, floor)
            && f.fork_to_exec.p50 > 0.0
        {
            println!(
                "  baton event -> exec is {:.2}x the bare fork -> exec at the median ({} vs {})",
                c.split.event_to_exec.p50 / f.fork_to_exec.p50,
                us(c.split.event_to_exec.p50),
                us(f.fork_to_exec.p50)
            );
        }
    }
    if let Some(c) = churn {
        println!("\n3. Cost");
        let mib = |k: u64| format!("{:.2} MiB", k as f64 / 1024.0);
        println!(
            "  RSS: {} at start, {} after {} rollouts, {} after idle; peak (VmHWM) {}",
            mib(c.start.rss_kib),
            mib(c.end.rss_kib),
            c.rollouts,
            mib(c.idle_end.rss_kib),
            mib(c.idle_end.hwm_kib)
        );
        println!(
            "  idle {:.0} s: {} wakeups, {:.0} us CPU",
            c.idle_secs,
            c.idle_wakeups(),
            c.idle_cpu_us()
        );
        println!(
            "  churn: {:.0} us CPU, {:.1} wakeups and {:.1} KiB written per rollout",
            c.cpu_per_rollout_us(),
            (c.end.ctx_switches - c.start.ctx_switches) as f64 / c.rollouts.max(1) as f64,
            c.written_per_rollout() / 1024.0
        );
        println!("\n4. Scale and leaks");
        println!(
            "  {} rollouts in {:.0} s: fds {} -> {}, children {} -> {}, zombies {}, RSS {} -> {}; serving after: {}",
            c.rollouts,
            c.wall.as_secs_f64(),
            c.start.fds,
            c.end.fds,
            c.start.children,
            c.end.children,
            c.end.zombies,
            mib(c.start.rss_kib),
            mib(c.end.rss_kib),
            c.serving_after
        );
    }
    if let Some(b) = report.get("burst") {
        println!(
            "  burst: {} edits in {} s -> {} generations started, settled on the last: {} ({} us after the last write)",
            b["edits"],
            b["burst_s"],
            b["generations_started"],
            b["settled_on_last"],
            b["last_write_to_live_us"]
        );
    }
    if let Some(s) = report.get("sockets64") {
        println!(
            "  64 sockets: app saw LISTEN_FDS={}, {} ports answered before, {} after {} rollouts; baton fds {}; event -> exec median {} us",
            s["app_saw_listen_fds"],
            s["ports_answering_before"],
            s["ports_answering_after"],
            s["rollouts"],
            s["baton_after"]["fds"],
            s["latency_split"]["event_to_exec"]["p50"]
        );
    }
    if let Some(t) = report["targets"].as_array()
        && !t.is_empty()
    {
        println!("\nTargets");
        for x in t {
            println!(
                "  [{}] {}: {} (goal {})",
                if x["met"].as_bool() == Some(true) {
                    "met"
                } else {
                    "MISSED"
                },
                x["target"].as_str().unwrap_or(""),
                x["value"].as_str().unwrap_or(""),
                x["goal"].as_str().unwrap_or("")
            );
        }
    }
}
