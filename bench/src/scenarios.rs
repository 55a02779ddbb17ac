//! The scenarios without load: the fork+exec floor, churn and idle cost,
//! a burst of edits, 64 sockets.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::http::{self, HttpError, Timeouts};
use testkit::layout;

use crate::baton::{self, AppDir, Baton, Sockets};
use crate::logs::{self, Split};
use crate::stats::Summary;
use crate::sys::{self, Notify, SpawnOpts};
use crate::{Ctx, ports};

/// One GET to 127.0.0.1:`port`: a reply must come within seconds.
fn get(port: u16, path: &str) -> Result<(u16, String), HttpError> {
    let t = Timeouts {
        connect: Some(Duration::from_secs(2)),
        io: Duration::from_secs(5),
    };
    http::get(SocketAddr::from(([127, 0, 0, 1], port)), path, t).map(|r| (r.status, r.body))
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The floor: the example app spawned directly (fork + exec with the socket
/// at fd 3, as baton does), one sample at a time: fork -> exec (the CLOEXEC
/// pipe's EOF) and exec -> READY=1 on a notify socket of the bench's own.
/// Sampled between baton's rollouts, so both see the same machine.
pub struct Floor {
    pub fork_to_exec: Summary,
    pub exec_to_ready: Summary,
    pub fork_to_ready: Summary,
}

struct FloorRig {
    args: Vec<String>,
    sock: OwnedFd,
    notify: Notify,
    err: std::fs::File,
    samples: [Vec<f64>; 3],
}

impl FloorRig {
    fn new(ctx: &Ctx) -> Result<FloorRig, String> {
        let dir = ctx.tmp.join("floor");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cfg = dir.join("cfg.a");
        std::fs::write(&cfg, layout::cfg_text("a", "")).map_err(|e| e.to_string())?;
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), ports::FLOOR);
        Ok(FloorRig {
            args: vec!["-c".to_string(), cfg.display().to_string()],
            sock: sys::listen_tcp(addr).map_err(|e| format!("binding {addr}: {e}"))?,
            notify: Notify::bind(&dir.join("notify.sock")).map_err(|e| e.to_string())?,
            err: std::fs::File::create(ctx.logs.join("floor.log")).map_err(|e| e.to_string())?,
            samples: Default::default(),
        })
    }

    fn sample(&mut self, ctx: &Ctx) -> Result<(), String> {
        self.notify.drain();
        let mut s = sys::spawn(&SpawnOpts {
            prog: &ctx.app,
            args: &self.args,
            env: &[self.notify.env()],
            listen: &[self.sock.as_raw_fd()],
            stderr: Some(self.err.as_raw_fd()),
        })
        .map_err(|e| format!("spawning the example app: {e}"))?;
        let r = self
            .notify
            .wait_ready(Duration::from_secs(10))
            .ok_or("the example app sent no READY=1")?;
        self.samples[0].push((s.exec_at - s.fork_at).as_micros() as f64);
        self.samples[1].push((r - s.exec_at).as_micros() as f64);
        self.samples[2].push((r - s.fork_at).as_micros() as f64);
        s.proc.stop(Duration::from_secs(10));
        Ok(())
    }

    fn done(self) -> Floor {
        let [a, b, c] = self.samples;
        Floor {
            fork_to_exec: Summary::of(a),
            exec_to_ready: Summary::of(b),
            fork_to_ready: Summary::of(c),
        }
    }
}

impl Floor {
    pub fn json(&self) -> Value {
        json!({
            "unit": "us",
            "fork_to_exec": self.fork_to_exec.json(),
            "exec_to_ready": self.exec_to_ready.json(),
            "fork_to_ready": self.fork_to_ready.json(),
        })
    }
}

/// `rollouts` in a row (one every 130 ms: edits closer than baton's 100 ms
/// settle would be folded into one), each followed half a slot later by a
/// floor sample; then `idle` with nothing to do.
pub struct Churn {
    pub rollouts: usize,
    pub errors: Vec<String>,
    pub wall: Duration,
    pub start: sys::Snapshot,
    /// After a tenth of the rollouts (allocator warm).
    pub warm: sys::Snapshot,
    pub end: sys::Snapshot,
    pub idle_secs: f64,
    pub idle_end: sys::Snapshot,
    pub samples: Vec<Value>,
    pub split: Split,
    pub serving_after: String,
    pub floor: Floor,
}

impl Churn {
    pub fn cpu_per_rollout_us(&self) -> f64 {
        (self.end.cpu_ns - self.start.cpu_ns) as f64 / 1000.0 / self.rollouts.max(1) as f64
    }
    /// Bytes baton wrote per rollout (its log to a pipe included).
    pub fn written_per_rollout(&self) -> f64 {
        (self.end.wchar - self.start.wchar) as f64 / self.rollouts.max(1) as f64
    }
    pub fn idle_wakeups(&self) -> u64 {
        self.idle_end.ctx_switches - self.end.ctx_switches
    }
    pub fn idle_cpu_us(&self) -> f64 {
        (self.idle_end.cpu_ns - self.end.cpu_ns) as f64 / 1000.0
    }

    pub fn json(&self) -> Value {
        json!({
            "rollouts": self.rollouts,
            "rollout_errors": self.errors,
            "wall_s": crate::stats::round(self.wall.as_secs_f64(), 2),
            "at_start": self.start.json(),
            "after_first_tenth": self.warm.json(),
            "at_end": self.end.json(),
            "samples": self.samples,
            "cpu_per_rollout_us": crate::stats::round(self.cpu_per_rollout_us(), 1),
            "bytes_written_per_rollout": crate::stats::round(self.written_per_rollout(), 0),
            "ctx_switches_per_rollout": crate::stats::round(
                (self.end.ctx_switches - self.start.ctx_switches) as f64 / self.rollouts.max(1) as f64, 1),
            "idle": {
                "secs": self.idle_secs,
                "wakeups": self.idle_wakeups(),
                "wakeups_per_s": crate::stats::round(self.idle_wakeups() as f64 / self.idle_secs, 3),
                "cpu_us": crate::stats::round(self.idle_cpu_us(), 1),
                "at_end": self.idle_end.json(),
            },
            "serving_after": self.serving_after,
            "latency_split": self.split.json(),
            "floor": self.floor.json(),
        })
    }
}

pub fn churn(ctx: &Ctx, rollouts: usize, idle: Duration, realtime: bool) -> Result<Churn, String> {
    let name = if realtime { "churn_rt" } else { "churn" };
    let app =
        AppDir::new(ctx, name, &[("a", ""), ("b", "")]).map_err(|e| format!("app dir: {e}"))?;
    let listen = [format!("127.0.0.1:{}", ports::CHURN)];
    // --probation 1s: the one timer a live generation sets (its probation)
    // is over before the idle window starts.
    let mut b = Baton::start_as(
        ctx,
        app,
        Sockets::Listen(&listen),
        &["--probation", "1s"],
        name,
        realtime,
    )?;
    let pid = b.pid();
    std::thread::sleep(Duration::from_millis(1500));
    let snap = || sys::snapshot(pid).map_err(|e| format!("/proc/{pid}: {e}"));
    let start = snap()?;
    let mut warm = start.clone();
    let mut samples = vec![json!({"rollouts": 0, "snapshot": start.json()})];
    let mut errors = Vec::new();
    let t0 = Instant::now();
    let every = (rollouts / 10).max(1);
    let mut rig = FloorRig::new(ctx)?;
    let slot = Duration::from_millis(130);
    for i in 0..rollouts {
        sleep_until(t0 + slot * i as u32);
        let g = i as u64 + 2;
        if let Err(e) = b.rollout(if g.is_multiple_of(2) { "b" } else { "a" }, g) {
            errors.push(e);
            if errors.len() > 10 {
                break;
            }
        }
        // The floor, half a slot later: after as long a quiet spell.
        sleep_until(t0 + slot * i as u32 + slot / 2);
        rig.sample(ctx)?;
        if (i + 1) % every == 0 {
            let s = snap()?;
            if i + 1 == every {
                warm = s.clone();
            }
            samples.push(json!({"rollouts": i + 1, "snapshot": s.json()}));
        }
    }
    let wall = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let end = snap()?;
    if !idle.is_zero() {
        eprintln!("  idle: {} s with nothing to do", idle.as_secs());
        std::thread::sleep(idle);
    }
    let idle_end = snap()?;
    let serving_after = get(ports::CHURN, "/")
        .map(|(c, body)| format!("{c} {}", body.trim()))
        .unwrap_or_else(|e| format!("GET / failed: {e}"));
    b.stop();
    Ok(Churn {
        rollouts,
        errors,
        wall,
        start,
        warm,
        end,
        idle_secs: idle.as_secs_f64(),
        idle_end,
        samples,
        split: b.split(),
        serving_after,
        floor: rig.done(),
    })
}

/// `edits` rewrites of current.conf within `over`, alternating a and b and
/// ending on c: baton must end up serving c, having started few generations.
pub fn burst(ctx: &Ctx, edits: usize, over: Duration) -> Result<Value, String> {
    let app = AppDir::new(ctx, "burst", &[("a", ""), ("b", ""), ("c", "")])
        .map_err(|e| format!("app dir: {e}"))?;
    let listen = [format!("127.0.0.1:{}", ports::BURST)];
    let mut b = Baton::start(ctx, app, Sockets::Listen(&listen), &[], "burst")?;
    let from = b.log.lines.len();
    let t0 = Instant::now();
    let mut last_write = 0;
    for i in 0..edits {
        sleep_until(t0 + over * i as u32 / edits as u32);
        let rel = if i + 1 == edits {
            "c"
        } else if i % 2 == 0 {
            "b"
        } else {
            "a"
        };
        last_write = b
            .app
            .switch(rel)
            .map_err(|e| format!("writing current.conf: {e}"))?;
    }
    let burst_secs = t0.elapsed().as_secs_f64();
    let mut alive: BTreeSet<u64> = BTreeSet::from([1]);
    let mut live_c: Option<(u64, i64)> = None;
    let settled = b
        .log
        .wait_for(Duration::from_secs(15), baton::POLL, baton::POLL, |l| {
            if let Some(g) = logs::started_gen(l) {
                alive.insert(g);
            }
            for g in alive.clone() {
                if logs::is_exited(l, g) {
                    alive.remove(&g);
                }
                if logs::is_live(l, g) && l.msg.contains("(app.c,") {
                    live_c = Some((g, l.ts));
                }
            }
            live_c.is_some_and(|(g, _)| alive.len() == 1 && alive.contains(&g))
        });
    let started = baton::started_since(&b.log.lines, from);
    let seen = b.log.lines[from..]
        .iter()
        .filter(|l| l.msg.contains(" changed ("))
        .count();
    let serving = get(ports::BURST, "/")
        .map(|(c, body)| format!("{c} {}", body.trim()))
        .unwrap_or_else(|e| format!("GET / failed: {e}"));
    b.stop();
    Ok(json!({
        "edits": edits,
        "burst_s": crate::stats::round(burst_secs, 3),
        "change_events_logged": seen,
        "generations_started": started.len(),
        "settled_on_last": settled.is_some() && serving.contains("release c "),
        "serving_after": serving,
        "last_write_to_live_us": live_c.map(|(_, ts)| ts - last_write),
    }))
}

/// baton started with `n` listening sockets through LISTEN_FDS (as systemd
/// passes them), rolled `rollouts` times; every port must answer before and
/// after.
pub fn sockets(ctx: &Ctx, n: u16, rollouts: usize) -> Result<Value, String> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    for i in 0..n {
        let a = SocketAddrV4::new([127, 0, 0, 1].into(), ports::MANY + i);
        fds.push(sys::listen_tcp(a).map_err(|e| format!("binding {a}: {e}"))?);
    }
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let app = AppDir::new(ctx, "sockets", &[("a", ""), ("b", "")])
        .map_err(|e| format!("app dir: {e}"))?;
    let mut b = Baton::start(ctx, app, Sockets::Fds(&raw), &[], "sockets")?;
    drop(fds);
    let all_answer = |rel: &str| -> usize {
        (0..n)
            .filter(|i| {
                get(ports::MANY + i, "/")
                    .is_ok_and(|(c, body)| c == 200 && body.starts_with(&format!("release {rel} ")))
            })
            .count()
    };
    let info: Value = get(ports::MANY, "/info")
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or(Value::Null);
    let app_sockets = info["fds_at_start"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e[1].as_str().is_some_and(|t| t.starts_with("socket:")))
                .count()
        })
        .unwrap_or(0);
    let before = all_answer("a");
    let snap_before = sys::snapshot(b.pid()).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for i in 0..rollouts {
        std::thread::sleep(Duration::from_millis(130));
        let g = i as u64 + 2;
        if let Err(e) = b.rollout(if g.is_multiple_of(2) { "b" } else { "a" }, g) {
            errors.push(e);
        }
    }
    let last = if (rollouts + 1).is_multiple_of(2) {
        "b"
    } else {
        "a"
    };
    let after = all_answer(last);
    let snap_after = sys::snapshot(b.pid()).map_err(|e| e.to_string())?;
    b.stop();
    let split = b.split();
    Ok(json!({
        "sockets": n,
        "app_saw_listen_fds": info["listen_fds"],
        "app_sockets_at_start": app_sockets,
        "ports_answering_before": before,
        "rollouts": rollouts,
        "rollout_errors": errors,
        "ports_answering_after": after,
        "baton_before": snap_before.json(),
        "baton_after": snap_after.json(),
        "latency_split": split.json(),
    }))
}
