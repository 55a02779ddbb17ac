//! A baton under test: its app dir with releases, the process, its log.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::time::Duration;

use testkit::layout::{self, Layout};
use testkit::{clock, cmd};

use crate::Ctx;
use crate::logs::{self, Log};
use crate::sys::{self, Proc, SpawnOpts};

/// `<dir>/release/` with `app.<name>` (a link to example-app) and
/// `cfg.<name>` per release, and current.conf naming the first.
pub struct AppDir {
    pub layout: Layout,
}

impl AppDir {
    /// `releases`: (name, extra JSON fields for the example app's cfg).
    pub fn new(ctx: &Ctx, name: &str, releases: &[(&str, &str)]) -> std::io::Result<AppDir> {
        let layout = Layout::create(ctx.tmp.join(name))?;
        for (r, extra) in releases {
            layout.release(r, &ctx.app, &layout::cfg_text(r, extra))?;
        }
        layout.point(releases[0].0)?;
        Ok(AppDir { layout })
    }

    /// Replaces current.conf atomically (written beside it, then renamed,
    /// as `baton switch` does). The instant of the rename, µs since the epoch.
    pub fn switch(&self, release: &str) -> std::io::Result<i64> {
        let mut at = 0;
        let text = layout::conf_text(release);
        layout::replace(&self.layout.conf, text.as_bytes(), |_| {
            at = clock::now_us();
            Ok(())
        })?;
        Ok(at)
    }
}

/// How often the bench looks at a log it waits on.
pub const POLL: Duration = Duration::from_millis(5);
/// When it first looks after starting a rollout.
pub const FIRST_LOOK: Duration = Duration::from_millis(15);

pub struct Baton {
    pub proc: Proc,
    pub log: Log,
    pub app: AppDir,
    /// Generation -> when the bench renamed current.conf for it.
    pub writes: BTreeMap<u64, i64>,
}

pub enum Sockets<'a> {
    /// `--listen ADDR` for each.
    Listen(&'a [String]),
    /// Passed as LISTEN_FDS, as systemd does.
    Fds(&'a [RawFd]),
}

impl Baton {
    /// Starts `baton run` (RUST_LOG=debug, log to `<logs>/<name>.log`) and
    /// waits for generation 1 to be live.
    pub fn start(
        ctx: &Ctx,
        app: AppDir,
        sockets: Sockets,
        extra: &[&str],
        name: &str,
    ) -> Result<Baton, String> {
        Baton::start_as(ctx, app, sockets, extra, name, false)
    }

    /// `realtime`: baton under `chrt --fifo --reset-on-fork 1`, so that it
    /// preempts the generations it starts (which run SCHED_OTHER as usual).
    pub fn start_as(
        ctx: &Ctx,
        app: AppDir,
        sockets: Sockets,
        extra: &[&str],
        name: &str,
        realtime: bool,
    ) -> Result<Baton, String> {
        let mut args: Vec<String> = Vec::new();
        let prog = if realtime {
            let chrt = cmd::which("chrt").ok_or("chrt (util-linux) is not installed")?;
            args.extend(["--fifo", "--reset-on-fork", "1"].map(String::from));
            args.push(ctx.baton.display().to_string());
            chrt
        } else {
            ctx.baton.clone()
        };
        args.extend(["run".to_string(), "--config".to_string()]);
        args.push(app.layout.conf.display().to_string());
        let fds: &[RawFd] = match sockets {
            Sockets::Listen(addrs) => {
                for a in addrs {
                    args.push("--listen".into());
                    args.push(a.clone());
                }
                &[]
            }
            Sockets::Fds(fds) => fds,
        };
        args.extend(extra.iter().map(|s| s.to_string()));
        let path = ctx.logs.join(format!("{name}.log"));
        let (log, w) = Log::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let env = [("RUST_LOG".to_string(), "debug".to_string())];
        let spawned = sys::spawn(&SpawnOpts {
            prog: &prog,
            args: &args,
            env: &env,
            listen: fds,
            stderr: Some(std::os::fd::AsRawFd::as_raw_fd(&w)),
        })
        .map_err(|e| format!("starting baton: {e}"))?;
        drop(w);
        let mut b = Baton {
            proc: spawned.proc,
            log,
            app,
            writes: BTreeMap::new(),
        };
        if b.log
            .wait_for(Duration::from_secs(20), POLL, POLL, |l| logs::is_live(l, 1))
            .is_none()
        {
            return Err(format!(
                "baton ({name}): generation 1 not live within 20 s; see {}",
                ctx.logs.join(format!("{name}.log")).display()
            ));
        }
        Ok(b)
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid
    }

    /// Points current.conf at `release` and waits until generation `gen` is
    /// live and generation `gen - 1` has exited.
    pub fn rollout(&mut self, release: &str, generation: u64) -> Result<(), String> {
        let w = self
            .app
            .switch(release)
            .map_err(|e| format!("writing current.conf: {e}"))?;
        self.writes.insert(generation, w);
        let (mut live, mut gone) = (false, false);
        // The first look comes after a typical rollout is over, so that
        // the bench does not compete for the CPUs while it runs.
        let hit = self
            .log
            .wait_for(Duration::from_secs(15), FIRST_LOOK, POLL, |l| {
                live |= logs::is_live(l, generation);
                gone |= logs::is_exited(l, generation - 1);
                live && gone
            });
        match hit {
            Some(_) => Ok(()),
            None => Err(format!(
                "generation {generation} ({release}): live {live}, generation {} exited {gone} after 15 s",
                generation - 1
            )),
        }
    }

    /// SIGUSR2: baton re-executes itself in place (`baton upgrade`). Returns
    /// once the new image says it took over.
    pub fn upgrade(&mut self) -> Result<(), String> {
        // SAFETY: kill(2) on the pid of the baton this bench started.
        if unsafe { libc::kill(self.pid(), libc::SIGUSR2) } != 0 {
            return Err(format!("kill -USR2: {}", std::io::Error::last_os_error()));
        }
        let hit = self.log.wait_for(Duration::from_secs(15), POLL, POLL, |l| {
            l.msg.starts_with("upgraded in place") || l.msg.starts_with("upgrade failed")
        });
        match hit {
            Some(i) if self.log.lines[i].msg.starts_with("upgraded in place") => Ok(()),
            Some(i) => Err(self.log.lines[i].msg.clone()),
            None => Err("no outcome of the upgrade after 15 s".into()),
        }
    }

    /// SIGTERM; baton retires its generation and exits. Its exit status.
    pub fn stop(&mut self) -> i32 {
        let st = self.proc.stop(Duration::from_secs(40));
        self.log.pull();
        st
    }

    pub fn split(&self) -> logs::Split {
        logs::split(&self.log.lines, &self.writes)
    }
}

impl Drop for Baton {
    /// A baton left running (an error cut the bench short) is stopped the
    /// way systemd would; any generation that outlives it is killed, if it
    /// is still one of ours (its command line names this app dir).
    fn drop(&mut self) {
        self.stop();
        let ours = self.app.layout.release_dir.display().to_string();
        for l in &self.log.lines {
            let Some(pid) = l
                .msg
                .strip_prefix("started generation ")
                .and_then(|m| m.split_once(", pid "))
                .and_then(|(_, r)| r.split(')').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&ours) {
                // SAFETY: signalling a process group we checked is ours.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

/// Generations started (per the log) from line `from` on.
pub fn started_since(lines: &[logs::Line], from: usize) -> Vec<u64> {
    lines[from.min(lines.len())..]
        .iter()
        .filter_map(logs::started_gen)
        .collect()
}
