//! The compatibility matrix (docs/apps.md): servers nobody on this project
//! wrote, each rolled forward and back by the real baton under a load of
//! fresh connections, run exactly as docs/apps.md tells an operator to.
//!
//! Each test makes its releases with `tests/apps/mkrelease` (the files
//! docs/apps.md shows; `docs_show_the_release_files_the_matrix_runs` checks
//! that they are the same), reads the release's settings (readiness mode,
//! stop signal and target) from the `current.conf` block of that server's
//! section in docs/apps.md and writes them into current.conf as they stand,
//! then starts baton with no flag of its own. It rolls between releases 1.0
//! and 2.0 (10 rollouts, `BATON_MATRIX_ROLLOUTS=N` for more), with a slow
//! request in flight on the old generation at each rollout, then to a
//! release whose config that server refuses; it asserts that no request
//! failed, that every slow request was answered by the generation that had
//! it, that the broken release failed with the reason while the old one
//! served on, and that the socket's backlog is systemd's still. Each prints
//! one line past the test harness's capture:
//!
//!     matrix: uvicorn 0.55.0 (CPython 3.11.2): 10 rollouts, N requests, 0 failed; ready ...
//!
//! A server whose runtime is not installed (`tests/apps/install` installs
//! them all) is skipped with a SKIP line; BATON_REQUIRE_APP_TESTS=1 (set by
//! .ci/run) makes that a failure.
//!
//! For measuring what docs/apps.md warns against, three variables change what
//! runs (the line then says so, and the test usually fails):
//! `BATON_MATRIX_STOCK=1` makes the releases with `mkrelease --stock`
//! (uvicorn without its drain protocol, puma with its reactor), and
//! `BATON_MATRIX_STOP_SIGNAL=SIG` and `BATON_MATRIX_STOP_TARGET=group|leader`
//! replace the doc's stop signal and target.

#[path = "integration/util.rs"]
// The integration tests' harness (Rig: the real baton, the socket as
// systemd passes it); re-exports this binary does not use are fine.
#[allow(unused_imports)]
mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Map, Value};
use util::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// What the load does: four clients, a new connection per request.
const CLIENTS: usize = 4;
/// How long the request in flight at each rollout takes, at least: it must
/// outlast the new generation's start, so that its generation is retired
/// while it is in flight; it is twice the slowest start so far if that is
/// longer (puma's workers took 2.3 s to boot under load).
const SLOW: Duration = Duration::from_millis(1500);
/// app.socket's `Backlog=`: what the shared socket must keep.
const BACKLOG: i32 = 4096;

/// One server of the matrix.
struct Server {
    /// mkrelease's name for it.
    name: &'static str,
    /// Its section in docs/apps.md.
    heading: &'static str,
    /// What it logs when release 9.9's config is broken (from baton's log:
    /// a generation's output goes there).
    says_when_broken: &'static str,
}

// ---- the runtimes ----

fn venv() -> PathBuf {
    std::env::var_os("BATON_APPS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/apps/venv"))
}

/// The first line `cmd` printed (stdout, else stderr), or why it could not
/// run.
fn first_line(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    Ok(String::from_utf8_lossy(text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

fn word(line: &str, n: usize) -> String {
    line.split_whitespace()
        .nth(n)
        .unwrap_or("?")
        .trim_end_matches(')')
        .to_owned()
}

/// The version of `server`'s runtime, as its own tools say it; Err: why it
/// cannot run here.
fn version(server: &str) -> Result<String, String> {
    let v = venv();
    let go_systemd = "/usr/share/gocode/src/github.com/coreos/go-systemd";
    match server {
        "gunicorn" => {
            // "gunicorn (version 27.0.1)"
            let g = first_line(Command::new(v.join("bin/gunicorn")).arg("--version"))?;
            let py = first_line(Command::new(v.join("bin/python")).arg("-V"))?;
            Ok(format!("{} ({py})", word(&g, 2)))
        }
        "uvicorn" => {
            // "Running uvicorn 0.55.0 with CPython 3.11.2 on Linux"
            let u = first_line(Command::new(v.join("bin/uvicorn")).arg("--version"))?;
            Ok(format!("{} ({} {})", word(&u, 2), word(&u, 4), word(&u, 5)))
        }
        "puma" => {
            // "puma version 5.6.5"; READY=1 needs the sd_notify gem.
            let p = first_line(Command::new("puma").arg("--version"))?;
            let r = first_line(Command::new("ruby").args([
                "-e",
                r#"require "sd_notify"; print "Ruby #{RUBY_VERSION}, sd_notify #{Gem::Specification.find_by_name("sd_notify").version}""#,
            ]))?;
            Ok(format!("{} ({r})", word(&p, 2)))
        }
        "node" => first_line(Command::new("node").arg("--version")),
        "go-stdlib" => Ok(word(&first_line(Command::new("go").arg("version"))?, 2)),
        "go-systemd" => {
            let go = word(&first_line(Command::new("go").arg("version"))?, 2);
            if !Path::new(go_systemd).is_dir() {
                return Err(format!(
                    "{go_systemd} is missing (golang-github-coreos-go-systemd-dev)"
                ));
            }
            let pkg = first_line(Command::new("dpkg-query").args([
                "-W",
                "-f=${Version}",
                "golang-github-coreos-go-systemd-dev",
            ]))
            .unwrap_or_else(|_| "not from a Debian package".into());
            Ok(format!("{go}, go-systemd {pkg}"))
        }
        "example" => Ok(format!(
            "baton {}",
            word(&first_line(Command::new(BATON).arg("--version"))?, 1)
        )),
        other => panic!("no such server in the matrix: {other}"),
    }
}

/// Says SKIP where everyone can see it (libtest captures print!/eprint!,
/// not writes to the stderr handle), or fails when skipping is not allowed.
fn skip(server: &str, why: &str) {
    if std::env::var_os("BATON_REQUIRE_APP_TESTS").is_some_and(|v| v == "1") {
        panic!("{server}: its runtime is not installed: {why} (BATON_REQUIRE_APP_TESTS=1)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP apps::{server}: its runtime is not installed ({why}); tests/apps/install installs it; this test passed without running"
    );
}

// ---- docs/apps.md ----

fn doc() -> String {
    std::fs::read_to_string(Path::new(REPO).join("docs/apps.md")).unwrap()
}

/// The fenced block whose info string is `info` (```` ```json current.conf
/// ````) between the line `heading` and the next `## ` heading, unindented
/// as far as its fence is (a block in a list item is indented).
fn doc_block(doc: &str, heading: &str, info: &str) -> String {
    assert!(
        doc.lines().any(|l| l == heading),
        "docs/apps.md has no line {heading:?}"
    );
    let fence = format!("```{info}");
    let mut section = doc
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "));
    let Some(open) = section.by_ref().find(|l| l.trim() == fence) else {
        panic!("docs/apps.md, {heading:?}: no {fence} block");
    };
    let indent = open.len() - open.trim_start().len();
    let block: Vec<&str> = section
        .take_while(|l| l.trim() != "```")
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect();
    block.join("\n") + "\n"
}

/// The settings docs/apps.md gives a release of the server in `heading`:
/// its `current.conf` block, less the two files.
fn doc_settings(heading: &str) -> Map<String, Value> {
    let text = doc_block(&doc(), heading, "json current.conf");
    let mut conf: Map<String, Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("docs/apps.md, {heading:?}: current.conf: {e}: {text}"));
    for (key, file) in [("bin.file", "app.2.0"), ("cfg.file", "cfg.2.0")] {
        assert_eq!(
            conf.remove(key),
            Some(Value::String(file.into())),
            "docs/apps.md, {heading:?}: current.conf names release 2.0's {key} as {file:?}"
        );
    }
    conf
}

/// current.conf naming release `v`, with `settings`.
fn conf(v: &str, settings: &Map<String, Value>) -> String {
    let mut m = Map::new();
    m.insert("bin.file".into(), format!("app.{v}").into());
    m.insert("cfg.file".into(), format!("cfg.{v}").into());
    m.extend(settings.clone());
    Value::Object(m).to_string()
}

// ---- the releases ----

/// `tests/apps/mkrelease server dir v [flag]`.
fn mkrelease(server: &str, dir: &Path, v: &str, flag: Option<&str>) {
    let mut cmd = Command::new(Path::new(REPO).join("tests/apps/mkrelease"));
    cmd.arg(server).arg(dir).arg(v).args(flag);
    cmd.env("BATON_EXAMPLE_APP", APP);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "mkrelease {server} {v} {flag:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env_flag(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

// ---- the shared socket ----

/// The listen backlog of the socket on 127.0.0.1:`port` (ss shows it as
/// Send-Q for a listening socket).
fn backlog(port: u16) -> i64 {
    let line = first_line(Command::new("ss").args([
        "-Hltn",
        "state",
        "listening",
        &format!("( sport = :{port} )"),
    ]))
    .unwrap();
    // With a state filter ss leaves the State column out: Recv-Q Send-Q ...
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("ss: no listening socket on port {port}: {line:?}"))
}

/// The processes holding the server's end of the connection from local
/// port `client` to `port`: who accepted it.
fn accepted_by(port: u16, client: u16) -> Vec<i32> {
    let out = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            &format!("( sport = :{port} and dport = :{client} )"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split("pid=")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// A `GET /slow?ms=N` on its own connection, in flight.
struct Slow {
    client_port: u16,
    reply: JoinHandle<Result<(u16, String), String>>,
}

impl Slow {
    fn send(port: u16, slow: Duration) -> Slow {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = s.local_addr().unwrap().port();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let req = format!(
            "GET /slow?ms={} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            slow.as_millis()
        );
        s.write_all(req.as_bytes()).unwrap();
        let reply = std::thread::spawn(move || {
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
            parse_response(&raw).map_err(|e| e.to_string())
        });
        Slow { client_port, reply }
    }
}

fn pgid_of(pid: i32) -> Option<i32> {
    procs().into_iter().find(|p| p.pid == pid).map(|p| p.pgid)
}

/// The processes of the process group led by `leader`.
fn group(leader: i32) -> Vec<i32> {
    procs()
        .into_iter()
        .filter(|p| p.pgid == leader)
        .map(|p| p.pid)
        .collect()
}

/// Waits until the load has had 20 more replies from release `v` (so that
/// it ran across the rollout); on timeout, baton's log and the tally.
fn served(rig: &Rig, load: &Load, v: &str) {
    let base = load.snapshot().served(v);
    let done = wait_until(PATIENCE, || {
        rig.notifications();
        load.snapshot().served(v) >= base + 20
    });
    if !done {
        let sockets = Command::new("ss")
            .args(["-Htanp", &format!("( sport = :{} )", rig.port)])
            .output()
            .unwrap();
        panic!(
            "timed out after {PATIENCE:?} waiting for 20 more replies from release {v}\n\
             tally: {:?}\nprocesses under baton: {:?}\n--- the port's sockets ---\n{}\n--- baton log ---\n{}",
            load.snapshot(),
            descendants(rig.baton_pid()),
            String::from_utf8_lossy(&sockets.stdout),
            rig.log()
        );
    }
}

/// The spans of every "is ready after" line in baton's log.
fn ready_spans(log: &str) -> Vec<Duration> {
    log.lines()
        .filter_map(|l| l.split(" is ready after ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .filter_map(|s| baton::span::parse_span(s).ok())
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

// ---- the test ----

fn matrix(server: Server) {
    // The test asks ss who holds a connection; bin/accepting needs it too.
    if let Err(why) = first_line(Command::new("ss").arg("-V")) {
        return skip(server.name, &format!("ss (iproute2): {why}"));
    }
    let version = match version(server.name) {
        Ok(v) => v,
        Err(why) => return skip(server.name, &why),
    };
    let rollouts: usize = env_flag("BATON_MATRIX_ROLLOUTS").map_or(10, |n| n.parse().unwrap());
    let stock = env_flag("BATON_MATRIX_STOCK").is_some_and(|v| v == "1");
    let mut settings = doc_settings(server.heading);
    let mut deviations = Vec::new();
    for (var, key) in [
        ("BATON_MATRIX_STOP_SIGNAL", "stop.signal"),
        ("BATON_MATRIX_STOP_TARGET", "stop.target"),
    ] {
        if let Some(value) = env_flag(var) {
            deviations.push(format!("{key} {value}, not the doc's"));
            settings.insert(key.into(), value.into());
        }
    }
    if stock {
        deviations.push("mkrelease --stock, not the doc's releases".into());
    }
    let setting = |key: &str, default: &str| {
        settings
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let (ready, stop_signal, stop_target) = (
        setting("ready", "notify"),
        setting("stop.signal", "TERM"),
        setting("stop.target", "group"),
    );

    let mut rig = Rig::new(&format!("apps-{}", server.name));
    // As app.socket: Backlog=4096.
    nix::sys::socket::listen(
        &rig.listener,
        nix::sys::socket::Backlog::new(BACKLOG).unwrap(),
    )
    .unwrap();
    // The readiness check docs/apps.md has the servers that never send
    // READY=1 use, where it tells an operator to put it (the check runs in
    // the app dir).
    let bin = rig.app_dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(
        Path::new(REPO).join("tests/apps/accepting"),
        bin.join("accepting"),
    )
    .unwrap();
    let flag = stock.then_some("--stock");
    mkrelease(server.name, &rig.release_dir, "1.0", flag);
    mkrelease(server.name, &rig.release_dir, "2.0", flag);
    mkrelease(server.name, &rig.release_dir, "9.9", Some("--broken"));
    rig.write_conf(&conf("1.0", &settings));
    rig.start(&[]);
    let mut live = rig.wait_live("1.0");

    // Load::start's clients stop by themselves after 120 s, which 40
    // rollouts of puma outlast; a rollout takes less than 30 s.
    let limit = Duration::from_secs(60 + 30 * rollouts as u64);
    let load = Load::start_for(rig.port, CLIENTS, limit);
    served(&rig, &load, "1.0");
    let (mut drained, mut slow_errors) = (0, Vec::new());
    let mut from = "1.0";
    for i in 0..rollouts {
        let to = if i % 2 == 0 { "2.0" } else { "1.0" };
        // A slow request, accepted by the serving generation before the
        // rollout begins: it must be answered, by that generation, however
        // its stop signal reaches it.
        let slowest = ready_spans(&rig.log())
            .into_iter()
            .max()
            .unwrap_or_default();
        let slow = Slow::send(rig.port, SLOW.max(slowest * 2).min(Duration::from_secs(10)));
        rig.wait(
            &format!("the slow request to be accepted by generation {live}'s group"),
            || {
                accepted_by(rig.port, slow.client_port)
                    .iter()
                    .any(|&p| pgid_of(p) == Some(live))
            },
        );
        rig.write_conf(&conf(to, &settings));
        let new = rig.wait_live_anew(to, live);
        // Retired (the state says the new one serves) with it in flight?
        if !slow.reply.is_finished() {
            drained += 1;
        }
        rig.wait_for(
            &format!("retired generation {live} and its whole group to be gone"),
            Duration::from_secs(40),
            || group(live).is_empty(),
        );
        match slow.reply.join().unwrap() {
            Ok((200, body)) if body.starts_with(&format!("release {from} ")) => {}
            other => slow_errors.push(format!("rollout {}: {other:?}", i + 1)),
        }
        served(&rig, &load, to);
        live = new;
        from = to;
    }

    // A release whose config the server refuses: the rollout fails with
    // baton's reason and the server's own, and the old one serves on.
    rig.write_conf(&conf("9.9", &settings));
    let failed = "rollout of app.9.9 failed: exited before ";
    let serving_on = format!("; still serving app.{from} (");
    let line = rig.wait_line(&[failed, &serving_on]);
    rig.wait_status(failed);
    rig.wait_status(&format!("; still serving app.{from} (pid {live}"));
    assert!(
        rig.log().contains(server.says_when_broken),
        "the broken release's own reason ({:?}) is in baton's log:\n{}",
        server.says_when_broken,
        rig.log()
    );
    served(&rig, &load, from);
    assert_eq!(
        rig.state().and_then(|s| s["serving"]["pid"].as_i64()),
        Some(live as i64)
    );
    let tally = load.stop();

    let requests = tally.ok + tally.failed;
    let spans = ready_spans(&rig.log());
    let (fastest, slowest) = (
        spans.iter().min().copied().unwrap_or_default(),
        spans.iter().max().copied().unwrap_or_default(),
    );
    // The socket's flags belong to it, shared with this test's copy.
    let flags = nix::fcntl::fcntl(&rig.listener, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let nonblocking =
        nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK);
    let reason = line
        .split("failed: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or("?")
        .to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "matrix: {} {version}: {rollouts} rollouts, {requests} requests, {} failed; ready {ready} after {}-{} s; \
         stop {stop_signal} to the {stop_target}; slow requests answered by their generation {}/{rollouts} ({drained} in flight at its stop); \
         broken release: {reason}; socket: O_NONBLOCK {}, backlog {}{}",
        server.name,
        tally.failed,
        secs(fastest),
        secs(slowest),
        rollouts - slow_errors.len(),
        if nonblocking { "set" } else { "not set" },
        backlog(rig.port),
        if deviations.is_empty() {
            String::new()
        } else {
            format!(" [{}]", deviations.join("; "))
        }
    );

    assert_eq!(
        tally.failed, 0,
        "{} of {requests} requests failed: {:#?}",
        tally.failed, tally.errors
    );
    assert!(
        tally.served("1.0") > 0 && tally.served("2.0") > 0,
        "{tally:?}"
    );
    assert!(
        slow_errors.is_empty(),
        "slow requests not answered by the generation that accepted them: {slow_errors:#?}"
    );
    // Each retirement had a request to finish, so the drain was exercised.
    assert!(
        drained * 2 >= rollouts,
        "only {drained} of {rollouts} slow requests were still in flight when their generation was retired"
    );
    assert_eq!(
        backlog(rig.port),
        BACKLOG as i64,
        "a generation changed the shared socket's listen backlog"
    );
    rig.assert_children(1);
}

#[test]
fn gunicorn() {
    matrix(Server {
        name: "gunicorn",
        heading: "## Python: gunicorn",
        says_when_broken: "Failed to find attribute 'no_such_callable' in 'wsgi'",
    });
}

#[test]
fn uvicorn() {
    matrix(Server {
        name: "uvicorn",
        heading: "## Python: uvicorn",
        says_when_broken: "json.decoder.JSONDecodeError",
    });
}

#[test]
fn puma() {
    matrix(Server {
        name: "puma",
        heading: "## Ruby: Puma",
        says_when_broken: "undefined method `no_such_puma_setting'",
    });
}

#[test]
fn node() {
    matrix(Server {
        name: "node",
        heading: "## Node.js",
        says_when_broken: "SyntaxError: Unexpected end of JSON input",
    });
}

#[test]
fn go_stdlib() {
    matrix(Server {
        name: "go-stdlib",
        heading: "## Go (standard library)",
        says_when_broken: "unexpected end of JSON input",
    });
}

#[test]
fn go_systemd() {
    matrix(Server {
        name: "go-systemd",
        heading: "## Go with github.com/coreos/go-systemd",
        says_when_broken: "unexpected end of JSON input",
    });
}

#[test]
fn example_app() {
    matrix(Server {
        name: "example",
        heading: "## Rust: the example app",
        says_when_broken: "EOF while parsing a value",
    });
}

/// docs/apps.md shows the release files the matrix runs as mkrelease writes
/// them, with a deployment's paths (the virtualenv in /srv/app/venv, the
/// app's code in /srv/app/code-2.0) in place of this checkout's; comments
/// may differ.
#[test]
fn docs_show_the_release_files_the_matrix_runs() {
    let doc = doc();
    let tmp = TempDir::new("apps-doc");
    for (server, heading, files) in [
        ("gunicorn", "## Python: gunicorn", &["python cfg.2.0"][..]),
        ("uvicorn", "## Python: uvicorn", &["sh app.2.0"]),
        ("puma", "## Ruby: Puma", &["sh app.2.0", "ruby cfg.2.0"]),
    ] {
        let dir = tmp.join(server);
        let out = Command::new(Path::new(REPO).join("tests/apps/mkrelease"))
            .args([server, dir.to_str().unwrap(), "2.0"])
            .env("BATON_APPS_VENV", "/srv/app/venv")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        for info in files {
            let file = info.split_whitespace().nth(1).unwrap();
            let written = std::fs::read_to_string(dir.join(file))
                .unwrap()
                .replace(&format!("{REPO}/tests/apps/{server}"), "/srv/app/code-2.0");
            assert_eq!(
                code(&doc_block(&doc, heading, info)),
                code(&written),
                "docs/apps.md, {heading}: {file} as mkrelease writes it:\n{written}"
            );
        }
    }
}

/// The lines of a script or config that are neither blank nor comments.
fn code(text: &str) -> Vec<&str> {
    let comment = |l: &str| l.trim_start().starts_with('#') && !l.starts_with("#!");
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !comment(l))
        .collect()
}
