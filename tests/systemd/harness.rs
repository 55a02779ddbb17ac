//! baton under a real systemd (PID 1 in a throwaway container) for the
//! end-to-end tests: the container itself is testkit's [`nspawn`]; this
//! file puts baton in it.
//!
//! The container gets, read-only, the baton and example-app binaries cargo
//! built (`/opt/baton/`) and the shipped unit files with the binary path and
//! the user substituted (`/opt/baton/units/`, copied into
//! `/run/systemd/system/` once booted), and read-write the app dirs the test
//! controls (`/srv/<app>/`, owned by www-data, which the units run as).
//!
//! Where this cannot work (not root, no systemd-nspawn, unknown cgroup
//! layout) [`Machine::boot`] prints a SKIP line straight to stderr (past the
//! test harness's capture) and returns None; BATON_REQUIRE_SYSTEMD_TESTS=1
//! turns that into a failure.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use baton::state::State;
use testkit::layout::{self, Layout};
use testkit::{TempDir, nspawn};

pub use testkit::cmd::{stderr, stdout};
pub use testkit::http::{HttpError, Reply};
pub use testkit::load::{Load, Tally};
pub use testkit::wait::wait_for;

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");
pub const EXAMPLE_APP: &str = env!("CARGO_BIN_EXE_example-app");
/// Where the binaries appear inside the container.
pub const BIN_DIR: &str = "/opt/baton";
pub const BATON_IN_CONTAINER: &str = "/opt/baton/baton";
/// The user the units run as inside: Debian's www-data (uid 33); the
/// shipped units say `User=app`, a placeholder.
pub const APP_USER: &str = "www-data";
pub const APP_UID: u32 = 33;
/// Where app.socket listens, inside.
pub const APP_ADDR: &str = "127.0.0.1:3000";

// ---- the shipped units ----

/// A unit file from `systemd/` as shipped.
pub fn shipped_unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `text` with each `from` replaced by `to`; every `from` must occur (so a
/// change to the shipped units cannot silently bypass a substitution).
pub fn substitute(name: &str, text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "{name}: expected to find {from:?} to substitute"
        );
        out = out.replace(from, to);
    }
    out
}

/// The shipped unit as the container runs it: the binary from cargo's
/// build, the test's user.
pub fn unit_for_container(name: &str) -> String {
    let (user, group) = (format!("User={APP_USER}"), format!("Group={APP_USER}"));
    let text = shipped_unit(name);
    let mut pairs: Vec<(&str, &str)> = vec![];
    if name.ends_with(".service") {
        pairs.push(("/usr/bin/baton", BATON_IN_CONTAINER));
        if name.contains('@') {
            pairs.push(("User=%i", &user));
            pairs.push(("Group=%i", &group));
        } else {
            pairs.push(("User=app", &user));
            pairs.push(("Group=app", &group));
        }
    }
    substitute(name, &text, &pairs)
}

// ---- skipping ----

/// Says SKIP where everyone can see it (libtest captures print!/eprint!,
/// not writes to the stderr handle), or fails when skipping is not allowed.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("BATON_REQUIRE_SYSTEMD_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: cannot run under systemd here: {why} (BATON_REQUIRE_SYSTEMD_TESTS=1)");
    }
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let name = thread.name().unwrap_or(test);
    let _ = writeln!(
        std::io::stderr(),
        "SKIP systemd::{name}: {why}; this test passed without running"
    );
}

// ---- the machine ----

/// A container with baton's units installed; everything of
/// [`nspawn::Machine`] (exec, systemctl, journal, HTTP from inside) through
/// Deref, and the app dirs here.
pub struct Machine {
    host: nspawn::Machine,
}

impl std::ops::Deref for Machine {
    type Target = nspawn::Machine;
    fn deref(&self) -> &nspawn::Machine {
        &self.host
    }
}

impl Machine {
    /// Boots a container with the shipped units and an app dir for each of
    /// `apps` (`/srv/<app>/release/` with releases 1.0 and 2.0, current.conf
    /// naming 1.0). None (after printing SKIP) where it cannot run.
    pub fn boot(test: &str, apps: &[&str]) -> Option<Machine> {
        if let Some(why) = nspawn::cannot_boot() {
            skip(test, &why);
            return None;
        }
        let name = nspawn::machine_name("bt", test);
        let work = TempDir::at(std::env::temp_dir().join(format!("baton-systemd-{name}")))
            .expect("creating the work dir");
        fs::create_dir_all(work.join("units")).unwrap();
        for unit in [
            "app.socket",
            "app.service",
            "baton@.socket",
            "baton@.service",
        ] {
            fs::write(work.join("units").join(unit), unit_for_container(unit)).unwrap();
        }
        let units = work.join("units");
        let mut boot = nspawn::Boot::new(&name, work)
            .bind_ro(BATON, &format!("{BIN_DIR}/baton"))
            .bind_ro(EXAMPLE_APP, &format!("{BIN_DIR}/example-app"))
            .bind_ro(units, &format!("{BIN_DIR}/units"));
        for app in apps {
            let dir = boot.work.join("srv").join(app);
            fs::create_dir_all(dir.join("release")).unwrap();
            nix::unistd::chown(
                &dir,
                Some(nix::unistd::Uid::from_raw(APP_UID)),
                Some(nix::unistd::Gid::from_raw(APP_UID)),
            )
            .unwrap();
            boot = boot.bind(dir, &format!("/srv/{app}"));
        }
        let m = Machine { host: boot.start() };
        // Installed after boot, as an operator would (units present at the
        // first boot of an empty /etc would be enabled by the presets).
        m.run(&["sh", "-c", "cp /opt/baton/units/* /run/systemd/system/"]);
        m.run(&["systemctl", "daemon-reload"]);
        for app in apps {
            m.add_release(app, "1.0", r#"{"release": "1.0"}"#);
            m.add_release(app, "2.0", r#"{"release": "2.0"}"#);
            m.point_at(app, "1.0");
        }
        Some(m)
    }

    /// Host path of `/srv/<app>`.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.work.join("srv").join(app)
    }

    fn layout(&self, app: &str) -> Layout {
        Layout::new(self.app_dir(app))
    }

    /// `app.<version>` (the example app) and `cfg.<version>` with `cfg`.
    pub fn add_release(&self, app: &str, version: &str, cfg: &str) {
        let l = self.layout(app);
        l.link_bin(version, Path::new(&format!("{BIN_DIR}/example-app")))
            .unwrap();
        write_file(&l.cfg(version), cfg);
    }

    /// current.conf of `app` names release `version`.
    pub fn point_at(&self, app: &str, version: &str) {
        write_file(&self.layout(app).conf, &layout::conf_text(version));
    }

    /// The state baton last wrote for `app`.
    pub fn state(&self, app: &str) -> Option<State> {
        State::read(&self.app_dir(app)).ok()
    }

    /// [`nspawn::Machine::get`] on app.socket's port that must answer 200.
    pub fn get_ok(&self, path: &str) -> Reply {
        match self.get(APP_ADDR, path) {
            Ok(r) if r.status == 200 => r,
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// `threads` clients doing `GET /` on app.socket's port in a loop.
    pub fn load(&self, threads: usize) -> Load {
        let addr: SocketAddr = APP_ADDR.parse().unwrap();
        self.clients(addr, threads).start()
    }
}

/// Writes a file the way an operator's editor would: beside it, then
/// renamed over it, readable by the units' user.
pub fn write_file(path: &Path, text: &str) {
    layout::replace(path, text.as_bytes(), |tmp| {
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o644))
    })
    .unwrap();
}
