//! A load generator that misses nothing: client threads doing `GET /` on
//! fresh connections until stopped, tallying which release (and which
//! process) answered each request and every failure with when it happened.
//!
//! A fresh connection per request puts every request through accept(), the
//! path a handover must keep open; the tally is what a test asserts on ("no
//! request failed", "both releases served", "the new pid answered"). For
//! throughput figures the bench uses wrk instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::{self, HttpError, Reply, Timeouts};
use crate::wait::wait_for;

/// What the clients of a [`Load`] saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// 200 replies.
    pub ok: u64,
    /// Every other outcome: refused, reset, timed out, short, not 200.
    pub failed: u64,
    /// Each failure, with when it happened (since the load began).
    pub errors: Vec<String>,
    /// Of the failures, connections refused.
    pub refused: u64,
    /// 200 replies per release (as the example app names it).
    pub by_release: BTreeMap<String, u64>,
    /// The pids that answered.
    pub pids: BTreeSet<i32>,
    /// When each pid first answered (since the load began).
    pub first_reply: BTreeMap<i32, Duration>,
    /// The longest a request took, and when it began (a connection that
    /// waited in the socket's queue while nothing accepted shows here).
    pub slowest: Option<(Duration, Duration)>,
}

impl Tally {
    /// 200 replies from `release`.
    pub fn served(&self, release: &str) -> u64 {
        self.by_release.get(release).copied().unwrap_or(0)
    }

    /// Counts one request's outcome, `at` into the load.
    pub fn record(&mut self, at: Duration, r: Result<Reply, HttpError>) {
        match r {
            Ok(reply) if reply.status == 200 => {
                self.ok += 1;
                if let Some((release, pid)) = reply.release_pid() {
                    *self.by_release.entry(release).or_default() += 1;
                    self.pids.insert(pid);
                    self.first_reply.entry(pid).or_insert(at);
                }
            }
            Ok(reply) => {
                self.failed += 1;
                self.errors
                    .push(format!("{at:?}: status {} {:?}", reply.status, reply.body));
            }
            Err(e) => {
                self.failed += 1;
                if e == HttpError::Refused {
                    self.refused += 1;
                }
                self.errors.push(format!("{at:?}: {e}"));
            }
        }
    }

    /// [`Tally::record`] for a request that began `began` into the load
    /// and took `took`.
    pub fn record_timed(&mut self, began: Duration, took: Duration, r: Result<Reply, HttpError>) {
        if self.slowest.is_none_or(|(t, _)| took > t) {
            self.slowest = Some((took, began));
        }
        self.record(began + took, r);
    }
}

/// Code a client thread runs before its first request (entering another
/// network namespace, say).
pub type Setup = Arc<dyn Fn() + Send + Sync>;

/// What a [`Load`] does: `threads` clients of `addr`.
#[derive(Clone)]
pub struct Clients {
    pub addr: SocketAddr,
    pub path: String,
    pub threads: usize,
    pub timeouts: Timeouts,
    /// The clients stop by themselves after this long (a safety net for a
    /// test that never stops them); None: only when stopped or dropped.
    pub limit: Option<Duration>,
    pub setup: Option<Setup>,
}

impl Clients {
    /// `threads` clients doing `GET /` on `addr`, with no limit and no setup.
    pub fn new(addr: SocketAddr, threads: usize, timeouts: Timeouts) -> Clients {
        Clients {
            addr,
            path: "/".into(),
            threads,
            timeouts,
            limit: None,
            setup: None,
        }
    }

    pub fn limit(self, limit: Duration) -> Clients {
        Clients {
            limit: Some(limit),
            ..self
        }
    }

    /// Each client thread runs `f` first.
    pub fn setup(self, f: impl Fn() + Send + Sync + 'static) -> Clients {
        Clients {
            setup: Some(Arc::new(f)),
            ..self
        }
    }

    pub fn start(self) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t0 = Instant::now();
        let threads = (0..self.threads)
            .map(|_| {
                let (stop, tally, c) = (stop.clone(), tally.clone(), self.clone());
                std::thread::spawn(move || {
                    if let Some(setup) = &c.setup {
                        setup();
                    }
                    while !stop.load(Ordering::SeqCst) && c.limit.is_none_or(|l| t0.elapsed() < l) {
                        let began = t0.elapsed();
                        let r = http::get(c.addr, &c.path, c.timeouts);
                        let took = t0.elapsed() - began;
                        tally.lock().unwrap().record_timed(began, took, r);
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
            t0,
        }
    }
}

/// Client threads at work; stopped by [`Load::stop`] or on drop.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
    /// When the clients began: the origin of every time in the tally.
    t0: Instant,
}

impl Load {
    /// `threads` clients of 127.0.0.1:`port` ([`http::LOCAL`] timeouts),
    /// stopping by themselves after 120 s.
    pub fn start(port: u16, threads: usize) -> Load {
        Load::start_for(port, threads, Duration::from_secs(120))
    }

    /// As [`Load::start`], with a different safety limit (a soak runs for
    /// longer than 120 s).
    pub fn start_for(port: u16, threads: usize, limit: Duration) -> Load {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Clients::new(addr, threads, http::LOCAL)
            .limit(limit)
            .start()
    }

    /// Now, on the tally's clock (since the clients began).
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// The tally so far.
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Waits (30 s at most) until at least `n` more requests than now
    /// succeeded with `release` (so the clients really ran across an event).
    pub fn wait_served(&self, release: &str, n: u64) {
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

    /// Stops the clients, waits for each to finish its request; the tally.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_releases_pids_and_failures_by_kind() {
        let mut t = Tally::default();
        let ok = |body: &str| {
            Ok(Reply {
                status: 200,
                body: body.into(),
            })
        };
        let at = Duration::from_millis(5);
        t.record(at, ok("release 1.0 pid 7\n"));
        t.record(at, ok("release 2.0 pid 8\n"));
        t.record(at, ok("release 2.0 pid 8\n"));
        t.record(at, ok("not the example app"));
        t.record(at, Err(HttpError::Refused));
        t.record(at, Err(HttpError::Other("read: reset".into())));
        t.record(
            at,
            Ok(Reply {
                status: 502,
                body: "bad gateway".into(),
            }),
        );
        assert_eq!((t.ok, t.failed, t.refused), (4, 3, 1));
        assert_eq!(
            (t.served("1.0"), t.served("2.0"), t.served("3.0")),
            (1, 2, 0)
        );
        assert_eq!(t.pids, BTreeSet::from([7, 8]));
        assert_eq!(t.errors.len(), 3);
        assert!(
            t.errors[0].ends_with(": connection refused"),
            "{:?}",
            t.errors
        );
        assert!(t.errors[2].contains("status 502"), "{:?}", t.errors);
    }

    #[test]
    fn counts_every_refused_request_until_stopped() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let load = Load::start(port, 2);
        crate::wait::wait_for("some refused requests", Duration::from_secs(10), || {
            let t = load.snapshot();
            if t.refused >= 10 {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        });
        let t = load.stop();
        assert_eq!((t.ok, t.failed), (0, t.refused));
        assert_eq!(t.errors.len() as u64, t.failed);
    }
}
