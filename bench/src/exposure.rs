//! A candidate accepts on the shared socket from its first accept(), before
//! it is ready. This part measures what that costs when a release accepts
//! but never becomes ready: under a fresh-connection load, how many requests
//! the failed release answered between current.conf naming it and baton
//! giving up on it (`--ready-timeout`), for each timeout measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::http::{self, Timeouts};

use crate::baton::{AppDir, Baton, POLL, Sockets};
use crate::{Ctx, ports};

/// Client threads, each doing `GET /` on a new connection after another.
const CLIENTS: usize = 4;

pub struct Exposure {
    /// What baton was given (`--ready-timeout 60s`, or nothing).
    pub label: String,
    /// From the rename of current.conf to baton's "rollout ... failed".
    pub window: Duration,
    /// Requests answered within the window, in all and by the failed release.
    pub answered: u64,
    pub by_failed: u64,
    /// Requests that failed (refused, reset, not 200) within the window.
    pub failed: u64,
}

impl Exposure {
    pub fn share(&self) -> f64 {
        self.by_failed as f64 / self.answered.max(1) as f64
    }

    pub fn json(&self) -> Value {
        json!({
            "baton_args": self.label,
            "window_s": crate::stats::round(self.window.as_secs_f64(), 2),
            "answered": self.answered,
            "answered_by_the_release_that_never_became_ready": self.by_failed,
            "share": crate::stats::round(self.share(), 3),
            "failed": self.failed,
            "clients": CLIENTS,
        })
    }
}

/// Per phase (0 before the edit, 1 in the window, 2 after): answered by
/// 1.0, answered by 2.0, failed.
struct Counts([[AtomicU64; 3]; 3]);

/// Serves release 1.0, then names 2.0 (the example app with never_ready:
/// it accepts, never sends READY=1) under load, and counts who answered
/// until baton reports the rollout failed.
pub fn run(ctx: &Ctx, name: &str, extra: &[&str]) -> Result<Exposure, String> {
    let app = AppDir::new(ctx, name, &[("1.0", ""), ("2.0", r#""never_ready": true"#)])
        .map_err(|e| format!("app dir: {e}"))?;
    let port = ports::EXPOSURE;
    let listen = [format!("127.0.0.1:{port}")];
    let mut b = Baton::start(ctx, app, Sockets::Listen(&listen), extra, name)?;
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts(Default::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (phase, stop, counts) = (phase.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let who = match get(port) {
                        Some(r) if r == "1.0" => 0,
                        Some(r) if r == "2.0" => 1,
                        _ => 2,
                    };
                    let p = phase.load(Ordering::Relaxed) as usize;
                    counts.0[p][who].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    phase.store(1, Ordering::Relaxed);
    b.app
        .switch("2.0")
        .map_err(|e| format!("writing current.conf: {e}"))?;
    let failed = b
        .log
        .wait_for(Duration::from_secs(120), POLL, POLL * 20, |l| {
            l.msg.starts_with("rollout of app.2.0 failed")
        });
    phase.store(2, Ordering::Relaxed);
    let window = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    if failed.is_none() {
        return Err(format!(
            "{name}: the rollout of 2.0 did not fail within 120 s"
        ));
    }
    let n = |who: usize| counts.0[1][who].load(Ordering::Relaxed);
    Ok(Exposure {
        label: if extra.is_empty() {
            "(defaults)".into()
        } else {
            extra.join(" ")
        },
        window,
        answered: n(0) + n(1),
        by_failed: n(1),
        failed: n(2),
    })
}

/// `GET /` on a new connection; the release that answered.
fn get(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let reply = http::get(addr, "/", Timeouts::all(Duration::from_secs(10))).ok()?;
    (reply.status == 200)
        .then(|| reply.release_pid())
        .flatten()
        .map(|(release, _)| release)
}
