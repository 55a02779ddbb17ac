//! The app dir's layout and the path rules, shared by the daemon and the
//! operator commands so that both read the same current.conf the same way.
//!
//! ```text
//!   <app-dir>/                 the app's working directory
//!     app.bin -> release/...   links to what serves (kept by baton)
//!     app.cfg -> release/...
//!     app.opts                 the live release's own settings, if any
//!     baton.state              baton's state (JSON), replaced atomically
//!     baton.lock               flock held while baton runs
//!     release/current.conf     names the live release
//! ```
//!
//! The app dir defaults to the parent of current.conf's directory. In
//! current.conf, `~/x` is the home of the user baton runs as
//! ([`crate::inherit::home`]) and a relative path is relative to the
//! directory holding current.conf.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

pub const STATE_FILE: &str = "baton.state";
pub const HISTORY_FILE: &str = "baton.history";
pub const LOCK_FILE: &str = "baton.lock";
/// Links in the app dir to the live release's files.
pub const BIN_LINK: &str = "app.bin";
pub const CFG_LINK: &str = "app.cfg";
/// Beside the links: the per-release keys of the current.conf that named
/// the live release (JSON, mode 0600: `env` may hold secrets); absent when
/// it had none.
pub const OPTS_FILE: &str = "app.opts";

/// Where one baton's files are, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct AppPaths {
    /// current.conf, absolute.
    pub config: PathBuf,
    /// The directory holding current.conf (the release directory).
    pub release_dir: PathBuf,
    /// The app dir, absolute.
    pub app_dir: PathBuf,
}

impl AppPaths {
    /// `--config PATH [--app-dir DIR]`, made absolute.
    pub fn new(config: &Path, app_dir: Option<&Path>) -> Result<AppPaths> {
        let config = absolute(config)?;
        let release_dir = config
            .parent()
            .with_context(|| format!("{} has no directory", config.display()))?
            .to_owned();
        let app_dir = match app_dir {
            Some(d) => absolute(d)?,
            None => default_app_dir(&config),
        };
        Ok(AppPaths {
            config,
            release_dir,
            app_dir,
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.app_dir.join(STATE_FILE)
    }

    pub fn lock_file(&self) -> PathBuf {
        self.app_dir.join(LOCK_FILE)
    }
}

/// The app dir a config path implies: `~/app/release/current.conf` -> `~/app`.
pub fn default_app_dir(config: &Path) -> PathBuf {
    let dir = config.parent().unwrap_or(Path::new("/"));
    dir.parent().unwrap_or(dir).to_owned()
}

/// `p` made absolute against the current directory (not resolved: links
/// stay links).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        Ok(std::env::current_dir()
            .context("reading the current directory")?
            .join(p))
    }
}

/// A path as current.conf writes it -> absolute: `~/x` -> home/x; relative
/// -> base/x; then `.` and `..` folded lexically.
pub fn expand(s: &str, base: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    let joined = if is_home_relative(s) {
        let home = home.ok_or("no home directory to expand ~ in")?;
        home.join(s.trim_start_matches('~').trim_start_matches('/'))
    } else {
        base.join(s)
    };
    Ok(normalize(&joined))
}

/// `~` or `~/...`: relative to the home directory.
pub fn is_home_relative(s: &str) -> bool {
    s == "~" || s.starts_with("~/")
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("/");
                }
                if out.as_os_str().is_empty() {
                    out.push("/");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_home_relative_and_absolute() {
        let base = Path::new("/srv/app/release");
        let home = Some(Path::new("/home/web"));
        assert_eq!(
            expand("~/app/release/app.2.0", base, home).unwrap(),
            Path::new("/home/web/app/release/app.2.0")
        );
        assert_eq!(expand("~", base, home).unwrap(), Path::new("/home/web"));
        assert_eq!(
            expand("./sub/../cfg.9", base, home).unwrap(),
            Path::new("/srv/app/release/cfg.9")
        );
        assert_eq!(
            expand("/opt/x/../../../bin", base, home).unwrap(),
            Path::new("/bin")
        );
        assert!(expand("~/a", base, None).unwrap_err().contains("home"));
        // `~user` is not ours to expand: it is a relative name.
        assert_eq!(
            expand("~web/a", base, home).unwrap(),
            Path::new("/srv/app/release/~web/a")
        );
    }

    #[test]
    fn app_dir_defaults_to_the_parent_of_the_release_dir() {
        let p = AppPaths::new(Path::new("/srv/app/release/current.conf"), None).unwrap();
        assert_eq!(p.release_dir, Path::new("/srv/app/release"));
        assert_eq!(p.app_dir, Path::new("/srv/app"));
        assert_eq!(p.state_file(), Path::new("/srv/app/baton.state"));
        let p = AppPaths::new(Path::new("/c/current.conf"), Some(Path::new("/x"))).unwrap();
        assert_eq!(p.app_dir, Path::new("/x"));
    }
}
