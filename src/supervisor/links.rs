//! `<app-dir>/app.bin` and `app.cfg`: links to the release that serves, and
//! `app.opts`: that release's own settings from current.conf, if it had any.
//!
//! baton points them at each release that goes live, so operators (and
//! tools that expect one fixed path) can find what serves, and so a baton
//! restarted while current.conf names a broken release knows what served
//! last, and how it was run, and can fall back to it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use log::{error, warn};

use crate::config::{self, Opts, Release};
use crate::paths::{BIN_LINK, CFG_LINK, OPTS_FILE};

/// Points both links at `release`, each replaced atomically (a new link,
/// then renamed over the old one), and writes its settings beside them
/// (`app.opts`). What cannot be updated (the app dir full or read-only, a
/// directory in a link's place) is one error line for all of them: serving
/// does not need them, but a restarted baton falls back to what they name.
pub fn point_at(app_dir: &Path, release: &Release) {
    let mut failed = Vec::new();
    for (name, target) in [(BIN_LINK, &release.bin), (CFG_LINK, &release.cfg)] {
        let link = app_dir.join(name);
        let tmp = app_dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let r = std::os::unix::fs::symlink(target, &tmp)
            .map_err(|e| format!("creating {}: {e}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, &link).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    match std::fs::symlink_metadata(&link) {
                        Ok(m) if m.is_dir() => {
                            format!("{} is a directory, not a link (remove it)", link.display())
                        }
                        _ => format!("replacing {}: {e}", link.display()),
                    }
                })
            });
        if let Err(why) = r {
            failed.push(why);
        }
    }
    if let Err(why) = write_opts(app_dir, &release.opts) {
        failed.push(why);
    }
    if !failed.is_empty() {
        error!(
            "cannot point {} and {} at {release}: {}; serving on, but a restarted baton will not know that {release} served last (or how it ran)",
            app_dir.join(BIN_LINK).display(),
            app_dir.join(CFG_LINK).display(),
            failed.join("; ")
        );
    }
}

/// `app.opts`: written (0600, then renamed into place) when the release has
/// settings of its own, removed when it has none.
fn write_opts(app_dir: &Path, opts: &Opts) -> Result<(), String> {
    let path = app_dir.join(OPTS_FILE);
    if opts.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let tmp = app_dir.join(format!(".{OPTS_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut text = serde_json::Value::Object(opts.to_json()).to_string();
    text.push('\n');
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("writing {}: {e}", path.display())
        })
}

/// The release the links name, when both exist and still point at files,
/// with the settings `app.opts` recorded for it.
pub fn last_live(app_dir: &Path) -> Option<Release> {
    let link = |name: &str| {
        let path = app_dir.join(name);
        match std::fs::read_link(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(
                    "{} is not a link baton made ({e}); it says nothing about what served last",
                    path.display()
                );
                None
            }
        }
    };
    let bin = link(BIN_LINK)?;
    let cfg = link(CFG_LINK)?;
    let release = Release {
        bin: app_dir.join(bin),
        cfg: app_dir.join(cfg),
        opts: read_opts(app_dir),
    };
    (release.bin.is_file() && release.cfg.exists()).then_some(release)
}

fn read_opts(app_dir: &Path) -> Opts {
    let path = app_dir.join(OPTS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Opts::default(),
        Err(e) => {
            warn!(
                "{}: {}; running the last live release with baton's flags",
                path.display(),
                config::describe_io(&e)
            );
            return Opts::default();
        }
    };
    let parsed = match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(map)) => config::parse_opts(&map),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    };
    parsed.unwrap_or_else(|e| {
        warn!(
            "{}: {e}; running the last live release with baton's flags",
            path.display()
        );
        Opts::default()
    })
}
