//! Rollouts under load: wrk at saturation against one server while a
//! deployer rolls it N times, for baton and for what a user would pick
//! instead.

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::layout;
use testkit::wait::{child_exit, poll};

use crate::Ctx;
use crate::baton::Baton;
use crate::logs::Log;
use crate::sys::{self, Guard, Notify, Proc, SpawnOpts};

/// Writes wrk's summary as one JSON object to $BENCH_WRK_JSON (wrk's own
/// `done` hook: the numbers come from wrk itself, not from its text output).
const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(os.getenv("BENCH_WRK_JSON"), "w"))
  f:write(string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
  f:close()
end
"#;

/// How wrk is run: one shape for every row, so that only the handover
/// differs.
#[derive(Clone, Copy)]
pub struct Shape {
    pub threads: u32,
    pub conns: u32,
    /// A new connection per request (`Connection: close`) instead of
    /// keep-alive: every request then goes through accept().
    pub close: bool,
}

#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub json: serde_json::Value,
}

impl WrkResult {
    pub fn n(&self, k: &str) -> u64 {
        self.json[k].as_f64().unwrap_or(0.0) as u64
    }
    pub fn requests(&self) -> u64 {
        self.n("requests")
    }
    pub fn failed(&self) -> u64 {
        ["connect", "read", "write", "status", "timeout"]
            .iter()
            .map(|k| self.n(k))
            .sum()
    }
    pub fn p50(&self) -> f64 {
        self.n("p50_us") as f64
    }
    pub fn p90(&self) -> f64 {
        self.n("p90_us") as f64
    }
    pub fn p99(&self) -> f64 {
        self.n("p99_us") as f64
    }
    pub fn max(&self) -> f64 {
        self.n("max_us") as f64
    }
    pub fn rps(&self) -> f64 {
        self.requests() as f64 / (self.n("duration_us").max(1) as f64 / 1e6)
    }
}

struct Wrk {
    child: Guard,
    json: PathBuf,
    secs: f64,
}

fn start_wrk(ctx: &Ctx, name: &str, port: u16, shape: Shape, secs: f64) -> Result<Wrk, String> {
    let lua = ctx.tmp.join("bench.lua");
    std::fs::write(&lua, WRK_LUA).map_err(|e| e.to_string())?;
    let json = ctx.tmp.join(format!("wrk-{name}.json"));
    let _ = std::fs::remove_file(&json);
    let out = std::fs::File::create(ctx.logs.join(format!("wrk-{name}.txt")))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&ctx.wrk);
    cmd.args([
        "-t",
        &shape.threads.to_string(),
        "-c",
        &shape.conns.to_string(),
        "-d",
        &format!("{}s", secs.ceil() as u64),
        "--timeout",
        "2s",
        "--latency",
        "-s",
    ])
    .arg(&lua);
    if shape.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}/"))
        .env("BENCH_WRK_JSON", &json)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out);
    let child = cmd.spawn().map_err(|e| format!("starting wrk: {e}"))?;
    Ok(Wrk {
        child: Guard::new(child),
        json,
        secs,
    })
}

impl Wrk {
    fn finish(mut self) -> Result<WrkResult, String> {
        let limit = Duration::from_secs_f64(self.secs + 20.0);
        child_exit(&mut self.child.0, limit, Duration::from_millis(20))
            .ok_or("wrk did not finish in time")?;
        let text = std::fs::read_to_string(&self.json)
            .map_err(|e| format!("wrk wrote no summary ({e})"))?;
        let json = serde_json::from_str(&text).map_err(|e| format!("wrk summary: {e}"))?;
        Ok(WrkResult { json })
    }
}

/// Something that rolls the server under test to its next release.
pub trait Deployer {
    /// Rollout number `i` (0-based); returns when it is complete.
    fn deploy(&mut self, i: usize) -> Result<(), String>;
}

#[derive(Clone, Copy)]
pub struct Plan {
    pub flips: usize,
    pub period: Duration,
    /// Load before the first and after the last flip.
    pub margin: Duration,
    /// Room for rollouts that take longer than `period` under load.
    pub slack: Duration,
}

impl Plan {
    pub fn secs(&self) -> f64 {
        (self.margin * 2 + self.period * self.flips as u32 + self.slack).as_secs_f64()
    }
}

/// One segment: one wrk run, with or without rollouts.
pub struct Outcome {
    pub wrk: WrkResult,
    pub flips: usize,
    /// How long each rollout took, µs.
    pub deploy_us: Vec<f64>,
    pub deploy_errors: Vec<String>,
}

/// wrk for `plan.secs()`, with `dep` rolling the server `plan.flips` times,
/// one every `plan.period` (each starting once the last is complete).
pub fn run(
    ctx: &Ctx,
    name: &str,
    port: u16,
    shape: Shape,
    plan: &Plan,
    dep: Option<&mut dyn Deployer>,
) -> Result<Outcome, String> {
    let secs = plan.secs();
    eprintln!("    {name}");
    let wrk = start_wrk(ctx, name, port, shape, secs)?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut flips = 0;
    let mut took = Vec::new();
    let mut errors = Vec::new();
    if let Some(d) = dep {
        for i in 0..plan.flips {
            let at = t0 + plan.margin + plan.period * i as u32;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if Instant::now() + plan.margin / 2 > end {
                break;
            }
            let s = Instant::now();
            match d.deploy(i) {
                Ok(()) => took.push(s.elapsed().as_micros() as f64),
                Err(e) => errors.push(format!("rollout {i}: {e}")),
            }
            flips += 1;
        }
    }
    let wrk = wrk.finish()?;
    Ok(Outcome {
        wrk,
        flips,
        deploy_us: took,
        deploy_errors: errors,
    })
}

/// baton: current.conf flips between releases a and b.
pub struct BatonDeploy<'a> {
    pub baton: &'a mut Baton,
    /// The generation the next rollout starts.
    pub next_gen: u64,
}

impl Deployer for BatonDeploy<'_> {
    fn deploy(&mut self, _i: usize) -> Result<(), String> {
        let g = self.next_gen;
        self.next_gen += 1;
        // Generation 1 runs a, so even generations run b.
        let rel = if g.is_multiple_of(2) { "b" } else { "a" };
        self.baton.rollout(rel, g)
    }
}

/// baton re-executes itself in place (SIGUSR2), the generation serving on.
pub struct UpgradeDeploy<'a> {
    pub baton: &'a mut Baton,
}

impl Deployer for UpgradeDeploy<'_> {
    fn deploy(&mut self, _i: usize) -> Result<(), String> {
        self.baton.upgrade()
    }
}

/// The same example app without baton: (a) stop, close the port, bind it
/// again, start (a naive deploy); (b) the port held open by the service
/// manager, stop then start (socket activation with a plain restart).
pub struct PlainDeploy {
    app: PathBuf,
    cfgs: [PathBuf; 2],
    addr: SocketAddrV4,
    sock: Option<OwnedFd>,
    proc: Option<Proc>,
    notify: Notify,
    rebind: bool,
    stderr: std::fs::File,
}

impl PlainDeploy {
    pub fn start(ctx: &Ctx, name: &str, port: u16, rebind: bool) -> Result<PlainDeploy, String> {
        let dir = ctx.tmp.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cfgs = Vec::new();
        for r in ["a", "b"] {
            let p = dir.join(format!("cfg.{r}"));
            std::fs::write(&p, layout::cfg_text(r, "")).map_err(|e| e.to_string())?;
            cfgs.push(p);
        }
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let mut d = PlainDeploy {
            app: ctx.app.clone(),
            cfgs: [cfgs[0].clone(), cfgs[1].clone()],
            addr,
            sock: Some(sys::listen_tcp(addr).map_err(|e| format!("binding {addr}: {e}"))?),
            proc: None,
            notify: Notify::bind(&dir.join("notify.sock")).map_err(|e| e.to_string())?,
            rebind,
            stderr: std::fs::File::create(ctx.logs.join(format!("{name}.log")))
                .map_err(|e| e.to_string())?,
        };
        d.spawn(0)?;
        Ok(d)
    }

    fn spawn(&mut self, which: usize) -> Result<(), String> {
        self.notify.drain();
        let sock = self.sock.as_ref().ok_or("no socket")?.as_raw_fd();
        let args = vec!["-c".to_string(), self.cfgs[which].display().to_string()];
        let s = sys::spawn(&SpawnOpts {
            prog: &self.app,
            args: &args,
            env: &[self.notify.env()],
            listen: &[sock],
            stderr: Some(self.stderr.as_raw_fd()),
        })
        .map_err(|e| format!("starting the app: {e}"))?;
        self.proc = Some(s.proc);
        self.notify
            .wait_ready(Duration::from_secs(10))
            .map(|_| ())
            .ok_or_else(|| "the app sent no READY=1 within 10 s".to_string())
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }
}

impl Deployer for PlainDeploy {
    fn deploy(&mut self, i: usize) -> Result<(), String> {
        self.stop();
        if self.rebind {
            self.sock = None;
            let addr = self.addr;
            let sock = poll(Duration::from_secs(2), Duration::from_millis(1), || {
                sys::listen_tcp(addr)
            })
            .map_err(|e| format!("binding {addr} again: {e}"))?;
            self.sock = Some(sock);
        }
        self.spawn((i + 1) % 2)
    }
}

impl Drop for PlainDeploy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// gunicorn's own graceful reload: SIGHUP to the master, which starts new
/// workers and retires the old ones.
pub struct Gunicorn {
    master: Guard,
    log: Log,
    workers: usize,
}

const WSGI_APP: &str = r#"import os

def app(environ, start_response):
    body = ("release gunicorn pid %d\n" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

impl Gunicorn {
    pub fn start(ctx: &Ctx, cmd: &[String], port: u16, workers: usize) -> Result<Gunicorn, String> {
        let dir = ctx.tmp.join("gunicorn");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("wsgiapp.py"), WSGI_APP).map_err(|e| e.to_string())?;
        let (log, w) = Log::create(&ctx.logs.join("gunicorn.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["--bind", &format!("127.0.0.1:{port}"), "--workers"])
            .arg(workers.to_string())
            .args(["--worker-class", "gthread", "--threads", "8"])
            .args(["--log-level", "info", "--chdir"])
            .arg(&dir)
            .arg("wsgiapp:app")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(w)
            .spawn()
            .map_err(|e| format!("starting gunicorn: {e}"))?;
        let mut g = Gunicorn {
            master: Guard::new(child),
            log,
            workers,
        };
        g.wait_workers()?;
        Ok(g)
    }

    fn pid(&self) -> i32 {
        self.master.0.id() as i32
    }

    /// `workers` new workers booted, then only `workers` children left.
    fn wait_workers(&mut self) -> Result<(), String> {
        let mut booted = 0;
        let n = self.workers;
        self.log
            .wait_for(
                Duration::from_secs(10),
                Duration::ZERO,
                Duration::from_millis(2),
                |l| {
                    if l.msg.contains("Booting worker with pid") {
                        booted += 1;
                    }
                    booted == n
                },
            )
            .ok_or_else(|| format!("gunicorn booted {booted} of {n} workers in 10 s"))?;
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        poll(Duration::from_secs(10), Duration::from_millis(2), || {
            let kids = std::fs::read_to_string(&path)
                .map(|s| s.split_whitespace().count())
                .unwrap_or(0);
            if kids == n { Ok(()) } else { Err(kids) }
        })
        .map_err(|kids| format!("gunicorn still has {kids} workers after 10 s"))
    }

    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let every = Duration::from_millis(10);
        child_exit(&mut self.master.0, Duration::from_secs(40), every);
    }
}

impl Deployer for Gunicorn {
    fn deploy(&mut self, _i: usize) -> Result<(), String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
        self.wait_workers()
    }
}

/// One row of the table: the same scenario over several segments,
/// interleaved with the other rows (round 1 of every row, then round 2...),
/// so that every row sees the same stretches of a noisy machine.
pub struct Row {
    pub key: &'static str,
    pub label: &'static str,
    /// The steady row this one is compared with, segment by segment.
    pub steady: Option<&'static str>,
    pub shape: Shape,
    pub port: u16,
    /// Rollouts per segment and how far apart.
    pub plan: Plan,
    pub segs: Vec<Outcome>,
}

const ERROR_KINDS: [&str; 5] = ["connect", "read", "write", "status", "timeout"];

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Row {
    pub fn flips(&self) -> usize {
        self.segs.iter().map(|s| s.flips).sum()
    }
    pub fn requests(&self) -> u64 {
        self.segs.iter().map(|s| s.wrk.requests()).sum()
    }
    pub fn failed(&self) -> u64 {
        self.segs.iter().map(|s| s.wrk.failed()).sum()
    }
    pub fn errors(&self, kind: &str) -> u64 {
        self.segs.iter().map(|s| s.wrk.n(kind)).sum()
    }
    pub fn errors_text(&self) -> String {
        let parts: Vec<String> = ERROR_KINDS
            .iter()
            .filter(|k| self.errors(k) > 0)
            .map(|k| format!("{} {k}", self.errors(k)))
            .collect();
        if parts.is_empty() {
            "0".into()
        } else {
            parts.join(", ")
        }
    }
    pub fn rollout_errors(&self) -> Vec<String> {
        self.segs
            .iter()
            .flat_map(|s| s.deploy_errors.iter().cloned())
            .collect()
    }
    /// Median over segments.
    pub fn p50(&self) -> f64 {
        median(self.segs.iter().map(|s| s.wrk.p50()).collect())
    }
    /// Median over segments.
    pub fn p90(&self) -> f64 {
        median(self.segs.iter().map(|s| s.wrk.p90()).collect())
    }
    /// Median over segments.
    pub fn p99(&self) -> f64 {
        median(self.segs.iter().map(|s| s.wrk.p99()).collect())
    }
    /// Over all segments.
    pub fn max(&self) -> f64 {
        self.segs.iter().map(|s| s.wrk.max()).fold(0.0, f64::max)
    }
    pub fn rps(&self) -> f64 {
        median(self.segs.iter().map(|s| s.wrk.rps()).collect())
    }
    pub fn deploy(&self) -> crate::stats::Summary {
        crate::stats::Summary::of(
            self.segs
                .iter()
                .flat_map(|s| s.deploy_us.iter().copied())
                .collect(),
        )
    }
    /// p99 / the steady row's p99, segment by segment (same round).
    pub fn ratios(&self, rows: &[Row]) -> Vec<f64> {
        let Some(st) = self.steady.and_then(|k| rows.iter().find(|r| r.key == k)) else {
            return Vec::new();
        };
        self.segs
            .iter()
            .zip(&st.segs)
            .filter(|(_, b)| b.wrk.p99() > 0.0)
            .map(|(a, b)| a.wrk.p99() / b.wrk.p99())
            .collect()
    }
    /// The median of the per-round ratios.
    pub fn ratio(&self, rows: &[Row]) -> Option<f64> {
        let r = self.ratios(rows);
        (!r.is_empty()).then(|| median(r))
    }

    pub fn json(&self, rows: &[Row]) -> serde_json::Value {
        let plan = &self.plan;
        let r = crate::stats::round;
        serde_json::json!({
            "label": self.label,
            "wrk_command": format!(
                "wrk -t{} -c{} -d{}s --timeout 2s --latency{} http://127.0.0.1:{}/",
                self.shape.threads, self.shape.conns, plan.secs().ceil(),
                if self.shape.close { " -H 'Connection: close'" } else { "" }, self.port),
            "segments": self.segs.len(),
            "rollout_every_ms": if plan.flips > 0 && self.steady.is_some() { Some(plan.period.as_millis()) } else { None },
            "rollouts": self.flips(),
            "requests": self.requests(),
            "failed_requests": self.failed(),
            "errors": ERROR_KINDS.iter().map(|k| (k.to_string(), serde_json::json!(self.errors(k)))).collect::<serde_json::Map<_, _>>(),
            "requests_per_s_median": self.rps().round(),
            "p50_us_median": self.p50(),
            "p90_us_median": self.p90(),
            "p99_us_median": self.p99(),
            "max_us": self.max(),
            "steady_row": self.steady,
            "p99_ratio_per_round": self.ratios(rows).into_iter().map(|x| r(x, 2)).collect::<Vec<_>>(),
            "p99_ratio_median": self.ratio(rows).map(|x| r(x, 2)),
            "rollout_duration_us": self.deploy().json(),
            "rollout_errors": self.rollout_errors(),
            "wrk_per_segment": self.segs.iter().map(|s| s.wrk.json.clone()).collect::<Vec<_>>(),
        })
    }
}
