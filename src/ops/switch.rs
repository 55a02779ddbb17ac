//! `baton switch RELEASE`: point current.conf at another release, replacing
//! it atomically in the style it was written (`cfg.2.0`, an absolute path,
//! or `~/...`), and with `--wait` wait until that release serves (exit 0) or
//! its rollout fails (exit 1, the reason on stderr).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::catalog::{cfg_prefix, is_release, read_current, resolve_bin, same_place};
use super::wait::{Waited, wait_for_state};
use super::{EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, not_running, pid_text, report_failure};
use crate::inherit;
use crate::paths::{self, AppPaths};
use crate::span::format_span;
use crate::state::{self, RolloutResult, State};

/// A value for current.conf naming `name` in current.conf's directory, in
/// the style of the value it replaces: `cfg.2.0`, `/srv/app/release/cfg.2.0`
/// or `~/app/release/cfg.2.0` as the old one was written.
fn styled(old: Option<&serde_json::Value>, name: &str, dir: &Path) -> String {
    let head = old
        .and_then(serde_json::Value::as_str)
        .and_then(|o| o.rsplit_once('/'))
        .map(|(head, _)| head);
    let Some(head) = head else {
        return name.to_owned();
    };
    let resolved = if head.is_empty() {
        PathBuf::from("/")
    } else {
        match paths::expand(head, dir, inherit::home().as_deref()) {
            Ok(p) => p,
            Err(_) => return name.to_owned(),
        }
    };
    match (fs::canonicalize(&resolved), fs::canonicalize(dir)) {
        (Ok(a), Ok(b)) if a == b => format!("{head}/{name}"),
        _ => name.to_owned(),
    }
}

/// Replaces `path` with `text` atomically: a temporary file beside it,
/// fsync'd and closed, renamed over it, and the directory fsync'd. Keeps the old file's
/// mode (minus world-write, which baton refuses) and, when run as root, its
/// owner.
fn write_atomically(path: &Path, text: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.baton-switch.{}", std::process::id()));
    let old = fs::metadata(path).ok();
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777 & !0o002);
    let _ = fs::remove_file(&tmp);
    let result = (|| -> Result<()> {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        if let Some(m) = &old
            && nix::unistd::geteuid().is_root()
        {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("chown {}", tmp.display()))?;
        }
        f.write_all(text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        // Closed before the rename, not after: closing a file opened for
        // writing is an event of its own (IN_CLOSE_WRITE), reported under
        // the name the file has by then. After the rename that name is
        // current.conf, and the daemon would see one edit as two.
        drop(f);
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// What current.conf names now, when that is not `bin` with `cfg`: the
/// release's name, or why it names none.
fn names_other(p: &AppPaths, bin: &Path, cfg: &Path) -> Option<String> {
    match read_current(p).and_then(|c| c.release) {
        Some(r) if same_place(&r.bin, bin) && same_place(&r.cfg, cfg) => None,
        Some(r) => Some(r.name()),
        None => Some("something baton cannot run".into()),
    }
}

pub fn run(p: &AppPaths, release: &str, wait: Option<Duration>) -> Result<u8> {
    let current = read_current(p);
    let prefix = cfg_prefix(current.as_ref());
    let chosen = resolve_bin(p, release, &prefix)?;
    let Some(cfg_name) = chosen.cfg.clone() else {
        bail!(
            "{} has no cfg file: {} does not exist",
            chosen.bin,
            p.release_dir
                .join(format!("{prefix}.{}", chosen.version))
                .display()
        );
    };
    let (bin, cfg) = (
        p.release_dir.join(&chosen.bin),
        p.release_dir.join(&cfg_name),
    );

    // Before writing, so that a rollout the edit causes is told apart from
    // any earlier one.
    let running = state::is_running(&p.app_dir);
    let seq_before = if running {
        State::read(&p.app_dir)
            .ok()
            .and_then(|s| s.last_rollout.map(|r| r.seq))
            .unwrap_or(0)
    } else {
        0
    };

    let mut map = current.map(|c| c.map).unwrap_or_default();
    let bin_value = styled(map.get("bin.file"), &chosen.bin, &p.release_dir);
    let cfg_value = styled(map.get("cfg.file"), &cfg_name, &p.release_dir);
    map.insert("bin.file".into(), bin_value.into());
    map.insert("cfg.file".into(), cfg_value.into());
    let mut text = serde_json::to_vec_pretty(&serde_json::Value::Object(map))?;
    text.push(b'\n');
    write_atomically(&p.config, &text)?;
    println!(
        "{} now names {} with {cfg_name}",
        p.config.display(),
        chosen.bin
    );

    let Some(timeout) = wait else {
        if !running {
            println!(
                "baton is not running for {}; it will run {} when it starts",
                p.app_dir.display(),
                chosen.bin
            );
        }
        return Ok(EXIT_OK);
    };
    if !running {
        report_failure(&format!("{}; nothing to wait for", not_running(p)));
        return Ok(EXIT_NOT_RUNNING);
    }
    let deadline = Instant::now() + timeout;
    let waited = wait_for_state(&p.app_dir, deadline, |s| {
        if let Some(g) = s
            .serving
            .as_ref()
            .filter(|g| is_release(&g.release, &bin, &cfg))
        {
            return Some(Ok(g.clone()));
        }
        // Whether someone changed current.conf after this switch is what
        // the file says now, not which rollout baton reports: a rollout
        // of another release may have begun from a write made before this
        // one (another operator's switch at the same moment) and be
        // superseded by this one a moment later.
        if let Some(now_named) = names_other(p, &bin, &cfg) {
            return Some(Err(format!(
                "current.conf was changed again: it now names {now_named}"
            )));
        }
        if let Some(r) = s.last_rollout.as_ref().filter(|r| r.seq > seq_before) {
            let ours = r
                .release
                .as_ref()
                .is_some_and(|rel| is_release(rel, &bin, &cfg));
            if !ours {
                if let (None, Some(why)) = (&r.release, &r.reason) {
                    return Some(Err(format!("current.conf was refused: {why}")));
                }
                // Begun before baton read this switch's write: wait for
                // the rollout of ours.
                return None;
            }
            if !matches!(
                r.result,
                RolloutResult::InProgress | RolloutResult::Succeeded
            ) {
                return Some(Err(format!(
                    "rollout of {} {}{}",
                    chosen.bin,
                    r.result.as_str(),
                    r.reason
                        .as_ref()
                        .map(|why| format!(": {why}"))
                        .unwrap_or_default()
                )));
            }
        }
        if s.stopping {
            return Some(Err("baton is stopping".into()));
        }
        None
    })?;
    match waited {
        Waited::Done(Ok(g)) => {
            println!(
                "{} serves (generation {}, pid {})",
                g.release.name,
                g.generation,
                pid_text(g.pid)
            );
            Ok(EXIT_OK)
        }
        Waited::Done(Err(why)) => {
            report_failure(&why);
            Ok(EXIT_FAILED)
        }
        Waited::TimedOut(last) => {
            report_failure(&format!(
                "{} does not serve after {}; {}",
                chosen.bin,
                format_span(timeout),
                last.unwrap_or_default()
            ));
            Ok(EXIT_FAILED)
        }
        Waited::NotRunning => {
            report_failure(&format!(
                "baton exited before {} served ({})",
                chosen.bin,
                not_running(p)
            ));
            Ok(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::releases_in;
    use super::*;

    fn paths(dir: &Path) -> AppPaths {
        AppPaths {
            config: dir.join("current.conf"),
            release_dir: dir.to_owned(),
            app_dir: dir.parent().unwrap().to_owned(),
        }
    }

    fn touch(path: &Path, mode: u32) {
        fs::write(path, b"{}").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn finds_releases_by_name_or_version() {
        let root = std::env::temp_dir().join(format!("baton-client-{}", std::process::id()));
        let dir = root.join("release");
        fs::create_dir_all(&dir).unwrap();
        for v in ["1.0", "2.0", "10.0"] {
            touch(&dir.join(format!("app.{v}")), 0o755);
            touch(&dir.join(format!("cfg.{v}")), 0o644);
        }
        touch(&dir.join("tool.3.0"), 0o755);
        touch(&dir.join("other.3.0"), 0o755);
        touch(&dir.join("notes.2.0"), 0o644);
        let p = paths(&dir);
        let all = releases_in(&p, "cfg").unwrap();
        let names: Vec<&str> = all.iter().map(|r| r.bin.as_str()).collect();
        assert_eq!(
            names,
            vec!["app.1.0", "app.2.0", "other.3.0", "tool.3.0", "app.10.0"]
        );
        assert_eq!(resolve_bin(&p, "2.0", "cfg").unwrap().bin, "app.2.0");
        assert_eq!(resolve_bin(&p, "app.10.0", "cfg").unwrap().bin, "app.10.0");
        let e = resolve_bin(&p, "3.0", "cfg").unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("tool.3.0"), "{e}");
        let e = resolve_bin(&p, "9.9", "cfg").unwrap_err().to_string();
        assert!(e.contains("no release 9.9") && e.contains("app.1.0"), "{e}");
        let e = resolve_bin(&p, "cfg.2.0", "cfg").unwrap_err().to_string();
        assert!(e.contains("cfg file"), "{e}");
        let e = resolve_bin(&p, "notes.2.0", "cfg").unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");

        // The style of the old value is kept when it points at the same dir.
        let abs = serde_json::Value::from(dir.join("app.1.0").to_str().unwrap());
        assert_eq!(
            styled(Some(&abs), "app.2.0", &dir),
            dir.join("app.2.0").to_str().unwrap()
        );
        let rel = serde_json::Value::from("./app.1.0");
        assert_eq!(styled(Some(&rel), "app.2.0", &dir), "./app.2.0");
        let bare = serde_json::Value::from("app.1.0");
        assert_eq!(styled(Some(&bare), "app.2.0", &dir), "app.2.0");
        let elsewhere = serde_json::Value::from("/opt/app.1.0");
        assert_eq!(styled(Some(&elsewhere), "app.2.0", &dir), "app.2.0");

        let conf = dir.join("current.conf");
        fs::write(&conf, b"old").unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomically(&conf, b"new\n").unwrap();
        assert_eq!(fs::read(&conf).unwrap(), b"new\n");
        assert_eq!(fs::metadata(&conf).unwrap().mode() & 0o777, 0o664);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
