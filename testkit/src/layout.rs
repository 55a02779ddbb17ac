//! The release layout on disk, as a deploy leaves it for baton:
//!
//! ```text
//! <app dir>/release/app.V          the release's binary (here a link to a real one)
//! <app dir>/release/cfg.V          its config
//! <app dir>/release/current.conf   {"bin.file": "app.V", "cfg.file": "cfg.V"}
//! ```
//!
//! current.conf is only ever replaced whole, written beside and renamed
//! into place, as deploy scripts and `baton switch` do: baton acts on the
//! rename and must never read half a file. Tests, the systemd harness and
//! the bench all build this layout; here is the one place that knows it.

use std::io;
use std::path::{Path, PathBuf};

/// The paths of one app dir's layout (nothing on disk until asked).
#[derive(Debug, Clone)]
pub struct Layout {
    pub app_dir: PathBuf,
    /// `<app dir>/release`: releases and current.conf.
    pub release_dir: PathBuf,
    /// `<app dir>/release/current.conf`.
    pub conf: PathBuf,
}

impl Layout {
    pub fn new(app_dir: impl Into<PathBuf>) -> Layout {
        let app_dir = app_dir.into();
        let release_dir = app_dir.join("release");
        Layout {
            conf: release_dir.join("current.conf"),
            app_dir,
            release_dir,
        }
    }

    /// [`Layout::new`], with the release dir created.
    pub fn create(app_dir: impl Into<PathBuf>) -> io::Result<Layout> {
        let l = Layout::new(app_dir);
        std::fs::create_dir_all(&l.release_dir)?;
        Ok(l)
    }

    /// `release/app.V`.
    pub fn bin(&self, v: &str) -> PathBuf {
        self.release_dir.join(format!("app.{v}"))
    }

    /// `release/cfg.V`.
    pub fn cfg(&self, v: &str) -> PathBuf {
        self.release_dir.join(format!("cfg.{v}"))
    }

    /// `app.V` as a link to `target` (the link replaced if there is one).
    pub fn link_bin(&self, v: &str, target: &Path) -> io::Result<()> {
        let bin = self.bin(v);
        let _ = std::fs::remove_file(&bin);
        std::os::unix::fs::symlink(target, &bin)
    }

    /// Release `v`: `app.V` linked to `target`, `cfg.V` holding `cfg`
    /// (written in place).
    pub fn release(&self, v: &str, target: &Path, cfg: &str) -> io::Result<()> {
        self.link_bin(v, target)?;
        std::fs::write(self.cfg(v), cfg)
    }

    /// Replaces current.conf with `text` (see [`replace`]).
    pub fn write_conf(&self, text: &[u8]) -> io::Result<()> {
        replace(&self.conf, text, |_| Ok(()))
    }

    /// Points current.conf at release `v`.
    pub fn point(&self, v: &str) -> io::Result<()> {
        self.write_conf(conf_text(v).as_bytes())
    }
}

/// current.conf naming release `v`, relative to the release dir.
pub fn conf_text(v: &str) -> String {
    format!("{{\"bin.file\": \"app.{v}\", \"cfg.file\": \"cfg.{v}\"}}\n")
}

/// The example app's config for release `v`: `{"release": "V"}` plus
/// `knobs`, the body of a JSON object (may be empty), e.g.
/// `"ready_delay_ms": 500`.
pub fn cfg_text(v: &str, knobs: &str) -> String {
    let sep = if knobs.trim().is_empty() { "" } else { ", " };
    format!("{{\"release\": \"{v}\"{sep}{knobs}}}\n")
}

/// Replaces `path` with `text` the way deploy tools do: written to
/// `.<name>.tmp` beside it, `prepare` run on that file (chmod, chown, a
/// timestamp: the reader must never see the file before it is ready),
/// then renamed over `path`.
pub fn replace(
    path: &Path,
    text: &[u8],
    prepare: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text)?;
    prepare(&tmp)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn releases_and_current_conf() {
        let tmp = TempDir::new("kit-layout");
        let l = Layout::create(tmp.join("app")).unwrap();
        assert_eq!(l.conf, tmp.join("app/release/current.conf"));
        l.release("1.0", Path::new("/bin/true"), &cfg_text("1.0", ""))
            .unwrap();
        l.release(
            "1.0",
            Path::new("/bin/false"),
            &cfg_text("1.0", r#""x": 1"#),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(l.bin("1.0")).unwrap(),
            Path::new("/bin/false")
        );
        assert_eq!(
            std::fs::read_to_string(l.cfg("1.0")).unwrap(),
            "{\"release\": \"1.0\", \"x\": 1}\n"
        );
        l.point("1.0").unwrap();
        assert_eq!(
            std::fs::read_to_string(&l.conf).unwrap(),
            "{\"bin.file\": \"app.1.0\", \"cfg.file\": \"cfg.1.0\"}\n"
        );
    }

    #[test]
    fn replace_prepares_the_file_beside_then_renames_it() {
        let tmp = TempDir::new("kit-replace");
        let target = tmp.join("current.conf");
        std::fs::write(&target, "old").unwrap();
        let mut seen = None;
        replace(&target, b"new", |p| {
            seen = Some((p.to_owned(), std::fs::read_to_string(&target)?));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, Some((tmp.join(".current.conf.tmp"), "old".into())));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert!(!tmp.join(".current.conf.tmp").exists());
        // A failed preparation leaves the old file in place.
        let e = replace(&target, b"newer", |_| Err(io::Error::other("no")));
        assert!(e.is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }
}
