//! The test's side of the fleet: Debian's nginx in front of the hosts (one
//! upstream, as an operator would run it), and a load generator sending
//! fresh-connection requests through it.
//!
//! nginx retries a request on the next host when a connection fails or a
//! host answers 502/503/504 (`proxy_next_upstream`), the usual setting for
//! idempotent traffic; its access log records every host it tried and what
//! each answered, so a test can tell a request nginx had to steer around a
//! host from one that went through at once.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    access_log: PathBuf,
}

/// One line of nginx's access log.
#[derive(Debug, Clone)]
pub struct Access {
    pub status: u16,
    /// Every host nginx tried, in order (`198.18.0.12:3000`).
    pub upstreams: Vec<String>,
    /// What each answered (`503`, `502`, or `-` for no answer).
    pub upstream_statuses: Vec<String>,
}

impl Nginx {
    /// nginx on `listen` (an address in the test's own namespace) with the
    /// hosts as one upstream.
    pub fn start(dir: &Path, listen: &str, hosts: &[String]) -> Result<Nginx> {
        fs::create_dir_all(dir.join("temp"))?;
        let access_log = dir.join("access.log");
        let servers: String = hosts
            .iter()
            .map(|h| format!("        server {h} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = format!(
            r#"# The fleet test bed's load balancer.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    log_format fleet '$msec|$status|$upstream_addr|$upstream_status|$request_time';
    access_log {log} fleet;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    upstream fleet {{
{servers}    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://fleet;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"#,
            dir = dir.display(),
            log = access_log.display(),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let out = Command::new("nginx")
            .args(["-t", "-q", "-c"])
            .arg(&conf_path)
            .output()
            .context("running nginx -t")?;
        if !out.status.success() {
            bail!(
                "nginx -t: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .context("starting nginx")?;
        let addr: SocketAddr = listen.parse().context("nginx listen address")?;
        let mut n = Nginx {
            child,
            addr,
            access_log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!(
                    "nginx exited: {status}: {}",
                    fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!("nginx does not listen on {listen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    /// Where the access log ends now.
    pub fn mark(&self) -> u64 {
        fs::metadata(&self.access_log).map(|m| m.len()).unwrap_or(0)
    }

    /// The access log's lines after `mark`.
    pub fn since(&self, mark: u64) -> Vec<Access> {
        let text = fs::read(&self.access_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[(mark as usize).min(text.len())..]).into_owned();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                if f.len() < 5 {
                    return None;
                }
                let split = |s: &str| {
                    s.split([',', ':'])
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                };
                Some(Access {
                    status: f[1].parse().ok()?,
                    upstreams: f[2]
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty() && s != "-")
                        .collect(),
                    upstream_statuses: split(f[3]),
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful shutdown; nginx's workers follow.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the load ----

/// What the clients saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub ok: usize,
    /// 200 replies per release (`2.0`).
    pub by_release: BTreeMap<String, usize>,
    /// 200 replies per host that answered (`198.18.0.11:3000`).
    pub by_upstream: BTreeMap<String, usize>,
    /// (host, release, pid) of the generations that answered.
    pub generations: BTreeMap<(String, String, i32), usize>,
    /// Every failed request, with when it happened.
    pub failures: Vec<String>,
}

impl Tally {
    pub fn requests(&self) -> usize {
        self.ok + self.failures.len()
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` threads, each sending at most `per_second` requests a
    /// second (a new connection each) to `addr`, until stopped or until
    /// `limit` has passed.
    pub fn start(addr: SocketAddr, clients: usize, per_second: u32, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t0 = Instant::now();
        let interval = Duration::from_secs(1) / per_second.max(1);
        let threads = (0..clients)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::SeqCst) && t0.elapsed() < limit {
                        let r = get(addr, "/", Duration::from_secs(30));
                        let mut t = tally.lock().unwrap();
                        match r {
                            Ok(reply) if reply.status == 200 => match reply.release_pid() {
                                Some((release, pid)) => {
                                    t.ok += 1;
                                    *t.by_release.entry(release.clone()).or_default() += 1;
                                    let host = reply.upstream.clone();
                                    *t.by_upstream.entry(host.clone()).or_default() += 1;
                                    *t.generations.entry((host, release, pid)).or_default() += 1;
                                }
                                None => t.failures.push(format!(
                                    "{:.3}s: unexpected body {:?}",
                                    t0.elapsed().as_secs_f64(),
                                    reply.body
                                )),
                            },
                            Ok(reply) => t.failures.push(format!(
                                "{:.3}s: status {} from {} {:?}",
                                t0.elapsed().as_secs_f64(),
                                reply.status,
                                reply.upstream,
                                reply.body
                            )),
                            Err(e) => t
                                .failures
                                .push(format!("{:.3}s: {e}", t0.elapsed().as_secs_f64())),
                        }
                        drop(t);
                        next += interval;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
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

    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub upstream: String,
    pub body: String,
}

impl Reply {
    /// `release 2.0 pid 40` -> ("2.0", 40).
    pub fn release_pid(&self) -> Option<(String, i32)> {
        let mut w = self.body.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("release"), Some(r), Some("pid"), Some(p)) => {
                Some((r.to_owned(), p.trim_end_matches(':').parse().ok()?))
            }
            _ => None,
        }
    }
}

/// `GET path` on a new connection (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("incomplete reply: {text:?}"));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let upstream = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-upstream")
                .then(|| v.rsplit(',').next().unwrap_or(v).trim().to_owned())
        })
        .unwrap_or_default();
    Ok(Reply {
        status,
        upstream,
        body: body.to_owned(),
    })
}
