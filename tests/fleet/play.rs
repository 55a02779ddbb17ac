//! Running deploy/ansible's playbooks as an operator would (ansible-playbook
//! over ssh, from the deploy/ansible directory, with its ansible.cfg), and
//! reading what they said: every output line with the time it came, the
//! batches, the recap, and the per-host lines the role writes to
//! `baton_report`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub struct Ansible {
    /// ansible-playbook.
    pub program: PathBuf,
    /// deploy/ansible.
    pub dir: PathBuf,
    pub inventory: PathBuf,
    /// Where each run's output and report go.
    pub logs: PathBuf,
    /// ANSIBLE_HOME, control sockets, temporary files.
    pub state: PathBuf,
}

/// A run in progress.
pub struct Running {
    pub name: String,
    child: Child,
    t0: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    readers: Vec<JoinHandle<()>>,
    log: PathBuf,
    report: PathBuf,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub code: i32,
    pub wall: Duration,
    /// Every line of stdout and stderr, with when it came.
    pub lines: Vec<(Duration, String)>,
    /// The per-host lines (`fleet-1: serves 2.0; ...`), if the play wrote them.
    pub report: Vec<String>,
    pub log: PathBuf,
}

impl Ansible {
    /// Starts `ansible-playbook PLAYBOOK -e K=V...`; `name` names its log.
    pub fn spawn(&self, name: &str, playbook: &str, extra: &[String]) -> Result<Running> {
        fs::create_dir_all(&self.logs)?;
        let report = self.logs.join(format!("{name}.report"));
        let _ = fs::remove_file(&report);
        let mut cmd = Command::new(&self.program);
        cmd.current_dir(&self.dir)
            .arg("-i")
            .arg(&self.inventory)
            .arg(playbook)
            .arg("-e")
            .arg(format!("baton_report={}", report.display()));
        for e in extra {
            cmd.arg("-e").arg(e);
        }
        cmd.env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.state.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", self.state.join("tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", self.state.join("cp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        let t0 = Instant::now();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = self.logs.join(format!("{name}.log"));
        let file = Arc::new(Mutex::new(fs::File::create(&log)?));
        writeln!(
            file.lock().unwrap(),
            "$ ansible-playbook -i {} {playbook} {}",
            self.inventory.display(),
            extra.join(" ")
        )?;
        let mut readers = Vec::new();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let (lines, file) = (lines.clone(), file.clone());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let at = t0.elapsed();
                    let _ = writeln!(file.lock().unwrap(), "{:8.2} {line}", at.as_secs_f64());
                    lines.lock().unwrap().push((at, line));
                }
            }));
        }
        Ok(Running {
            name: name.to_owned(),
            child,
            t0,
            lines,
            readers,
            log,
            report,
        })
    }

    /// [`Ansible::spawn`] and wait.
    pub fn run(&self, name: &str, playbook: &str, extra: &[String]) -> Result<Run> {
        self.spawn(name, playbook, extra)?.wait()
    }
}

impl Running {
    pub fn lines(&self) -> Vec<(Duration, String)> {
        self.lines.lock().unwrap().clone()
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn wait(mut self) -> Result<Run> {
        let status = self.child.wait()?;
        let wall = self.t0.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let report = fs::read_to_string(&self.report)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Run {
            name: self.name.clone(),
            code: status.code().unwrap_or(-1),
            wall,
            lines: self.lines(),
            report,
            log: self.log.clone(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A batch as the role announced it (`batch 2: fleet-2, fleet-3 to 3.0`).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub number: usize,
    pub hosts: Vec<String>,
    pub at: Duration,
}

impl Run {
    pub fn output(&self) -> String {
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The batches, in the order they started.
    pub fn batches(&self) -> Vec<Batch> {
        let mut out = Vec::new();
        for (at, line) in &self.lines {
            let Some(rest) = line.trim().strip_prefix("msg: 'batch ") else {
                continue;
            };
            let Some((number, rest)) = rest.split_once(": ") else {
                continue;
            };
            let Some((hosts, _version)) = rest.rsplit_once(" to ") else {
                continue;
            };
            let Ok(number) = number.parse() else { continue };
            out.push(Batch {
                number,
                hosts: hosts.split(", ").map(str::to_owned).collect(),
                at: *at,
            });
        }
        out
    }

    /// When the play started checking the result (the last batch ended), if
    /// it got there.
    pub fn time_of(&self, needle: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
    }

    /// How long each run of the task named `task` took (from its TASK line
    /// to the next TASK or PLAY line), in order.
    pub fn task_durations(&self, task: &str) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut started: Option<Duration> = None;
        for (at, line) in &self.lines {
            let header = line.starts_with("TASK [") || line.starts_with("PLAY ");
            if !header {
                continue;
            }
            if let Some(t0) = started.take() {
                out.push(*at - t0);
            }
            if line.starts_with("TASK [") && line.contains(task) {
                started = Some(*at);
            }
        }
        out
    }

    /// PLAY RECAP: host -> (ok, changed, unreachable, failed).
    pub fn recap(&self) -> BTreeMap<String, (u32, u32, u32, u32)> {
        let mut out = BTreeMap::new();
        let mut in_recap = false;
        for (_, line) in &self.lines {
            if line.starts_with("PLAY RECAP") {
                in_recap = true;
                continue;
            }
            if !in_recap {
                continue;
            }
            let Some((host, rest)) = line.split_once(" : ") else {
                continue;
            };
            let field = |name: &str| -> u32 {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                    .unwrap_or(0)
            };
            out.insert(
                host.trim().to_owned(),
                (
                    field("ok"),
                    field("changed"),
                    field("unreachable"),
                    field("failed"),
                ),
            );
        }
        out
    }

    /// The report line for `host`.
    pub fn line_for(&self, host: &str) -> Option<&str> {
        let prefix = format!("{host}: ");
        self.report
            .iter()
            .find(|l| l.starts_with(&prefix))
            .map(String::as_str)
    }
}

/// Writes the inventory the test bed's playbooks run against.
pub fn write_inventory(
    path: &Path,
    hosts: &[(String, String)],
    key: &Path,
    known_hosts: &Path,
    vars: &[(&str, &str)],
) -> Result<()> {
    let mut text = String::from("[app]\n");
    for (name, addr) in hosts {
        text.push_str(&format!("{name} ansible_host={addr}\n"));
    }
    text.push_str("\n[app:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n");
    text.push_str(&format!("ansible_ssh_private_key_file={}\n", key.display()));
    text.push_str(&format!(
        "ansible_ssh_common_args=-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ConnectTimeout=5\n",
        known_hosts.display()
    ));
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    fs::write(path, text)?;
    Ok(())
}
