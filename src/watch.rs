//! Watching current.conf with raw inotify.
//!
//! A watch on the file itself dies when an editor saves by rename (the inode
//! goes away: IN_DELETE_SELF, IN_IGNORED). So baton watches the directory
//! that holds it and matches the name: a save by rename (IN_MOVED_TO), an
//! in-place write (IN_CLOSE_WRITE; IN_MODIFY fires mid-write and is not
//! watched), a create (IN_CREATE, for `ln -s` and delete-then-create) are all
//! seen. The parent directory is watched too, so that when the directory
//! itself is deleted and re-created, renamed over, or is a symlink that gets
//! swapped, the watch is re-established. A queue overflow means events were
//! lost: the caller re-reads the file.
//!
//! The inotify fd is opened close-on-exec and non-blocking by the inotify
//! crate: no generation inherits it, and reading it never blocks the loop.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// What happened, as far as current.conf is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Written and closed, renamed into place: complete content to read.
    Written,
    /// Created: may still be empty (a write follows) or a complete symlink.
    Created,
    /// Deleted or renamed away.
    Removed,
    /// The kernel dropped events: re-read.
    Overflow,
    /// The directory went away; watching its parent for its return.
    DirLost,
    /// The directory is back (re-created, renamed into place, link swapped).
    DirBack,
    /// The directory is back but cannot be watched again (see
    /// [`Watcher::broken`]).
    Broken,
}

pub struct Watcher {
    /// None while the kernel refuses an inotify instance.
    inotify: Option<Inotify>,
    file_name: OsString,
    dir: PathBuf,
    dir_name: Option<OsString>,
    dir_wd: Option<WatchDescriptor>,
    parent_wd: Option<WatchDescriptor>,
    /// Why the directory is not watched, while it is not (see
    /// [`Watcher::broken`]).
    broken: Option<String>,
    /// Said once that the parent cannot be watched.
    parent_warned: bool,
    buf: Vec<u8>,
}

/// An inotify failure, with the limit behind it named: the kernel's own
/// words (`Too many open files`, `No space left on device`) point at the
/// wrong thing.
pub fn explain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::EMFILE) => format!(
            "{e}: too many inotify instances for this user (fs.inotify.max_user_instances), or too many open files"
        ),
        Some(nix::libc::ENOSPC) => {
            format!("{e}: inotify watches exhausted for this user (fs.inotify.max_user_watches)")
        }
        _ => e.to_string(),
    }
}

const DIR_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

const PARENT_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

impl Watcher {
    /// Watches the directory holding `file` (which must be absolute) and
    /// that directory's parent. If the kernel refuses (inotify instances
    /// or watches exhausted), the watcher is [`broken`](Watcher::broken)
    /// until a [`retry`](Watcher::retry) succeeds; only a path without a
    /// directory or a file name is an error.
    pub fn new(file: &Path) -> Result<Watcher> {
        let dir = file
            .parent()
            .context("current.conf has no directory")?
            .to_owned();
        let file_name = file
            .file_name()
            .context("current.conf has no file name")?
            .to_owned();
        let mut w = Watcher {
            inotify: None,
            file_name,
            dir_name: dir.file_name().map(ToOwned::to_owned),
            dir,
            dir_wd: None,
            parent_wd: None,
            broken: None,
            parent_warned: false,
            buf: vec![0; 64 * 1024],
        };
        w.retry();
        Ok(w)
    }

    /// Why current.conf's directory is not watched (edits go unseen), if
    /// it is not.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Tries to watch again what is not watched; true when all is watched
    /// now.
    pub fn retry(&mut self) -> bool {
        if self.inotify.is_none() {
            match Inotify::init() {
                Ok(i) => self.inotify = Some(i),
                Err(e) => {
                    self.broken = Some(format!("inotify_init: {}", explain(&e)));
                    return false;
                }
            }
        }
        if self.dir_wd.is_none() && !self.rewatch_dir() {
            return false;
        }
        if self.parent_wd.is_none()
            && !self.parent_warned
            && let (Some(parent), Some(_), Some(inotify)) =
                (self.dir.parent(), &self.dir_name, &mut self.inotify)
        {
            // Not fatal: without it, only a re-created directory goes unseen.
            match inotify.watches().add(parent, PARENT_MASK) {
                Ok(wd) => self.parent_wd = Some(wd),
                Err(e) => {
                    self.parent_warned = true;
                    log::warn!(
                        "cannot watch {}: {}; a re-created {} will not be noticed",
                        parent.display(),
                        explain(&e),
                        self.dir.display()
                    )
                }
            }
        }
        self.broken = None;
        true
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drains the inotify queue (never blocks). Changes come in order;
    /// events for other names are dropped here.
    pub fn read(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        let Some(inotify) = self.inotify.as_mut() else {
            return out;
        };
        loop {
            let events = match inotify.read_events(&mut self.buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("reading inotify events: {e}");
                    break;
                }
            };
            let mut any = false;
            let mut lost = false;
            let mut back = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    out.push(Change::Overflow);
                    continue;
                }
                if Some(&ev.wd) == self.parent_wd.as_ref() {
                    if ev.name.is_some_and(|n| Some(n) == self.dir_name.as_deref()) {
                        back = true;
                    }
                    continue;
                }
                if Some(&ev.wd) != self.dir_wd.as_ref() {
                    continue;
                }
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
                {
                    lost = true;
                    continue;
                }
                if ev.name != Some(self.file_name.as_os_str()) {
                    continue;
                }
                if ev
                    .mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
                {
                    out.push(Change::Written);
                } else if ev.mask.contains(EventMask::CREATE) {
                    out.push(Change::Created);
                } else if ev
                    .mask
                    .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
                {
                    out.push(Change::Removed);
                }
            }
            if lost {
                if let Some(wd) = self.dir_wd.take() {
                    // Already gone after IN_IGNORED; needed after IN_MOVE_SELF.
                    let _ = inotify.watches().remove(wd);
                }
                out.push(Change::DirLost);
                // It may be back already (renamed over, link swapped).
                back = true;
            }
            if back {
                match add_dir(inotify, &self.dir, &mut self.dir_wd) {
                    Ok(()) => out.push(Change::DirBack),
                    // Not there (yet): the parent's watch says when it is.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        self.broken =
                            Some(format!("watching {}: {}", self.dir.display(), explain(&e)));
                        out.push(Change::Broken);
                    }
                }
            }
            if !any {
                break;
            }
        }
        out
    }

    /// Re-adds the directory watch by path (following a swapped symlink).
    fn rewatch_dir(&mut self) -> bool {
        let Some(inotify) = self.inotify.as_mut() else {
            return false;
        };
        match add_dir(inotify, &self.dir, &mut self.dir_wd) {
            Ok(()) => true,
            Err(e) => {
                self.broken = Some(format!("watching {}: {}", self.dir.display(), explain(&e)));
                false
            }
        }
    }

    /// The inotify fd to poll, while there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }
}

fn add_dir(
    inotify: &mut Inotify,
    dir: &Path,
    wd_slot: &mut Option<WatchDescriptor>,
) -> std::io::Result<()> {
    let wd = inotify.watches().add(dir, DIR_MASK)?;
    if let Some(old) = wd_slot.replace(wd.clone())
        && old != wd
    {
        let _ = inotify.watches().remove(old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("baton-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("release")).unwrap();
        d
    }

    #[test]
    fn sees_write_rename_create_delete_and_ignores_others() {
        let d = tmp("kinds");
        let conf = d.join("release/current.conf");
        let mut w = Watcher::new(&conf).unwrap();
        assert_eq!(w.read(), vec![]);
        std::fs::write(&conf, "x").unwrap();
        assert_eq!(w.read(), vec![Change::Created, Change::Written]);
        std::fs::write(d.join("release/other"), "x").unwrap();
        assert_eq!(w.read(), vec![]);
        std::fs::write(d.join("release/tmp"), "y").unwrap();
        std::fs::rename(d.join("release/tmp"), &conf).unwrap();
        assert_eq!(w.read(), vec![Change::Written]);
        std::fs::remove_file(&conf).unwrap();
        assert_eq!(w.read(), vec![Change::Removed]);
        std::os::unix::fs::symlink("elsewhere", &conf).unwrap();
        assert_eq!(w.read(), vec![Change::Created]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rewatches_a_recreated_directory() {
        let d = tmp("dir");
        let conf = d.join("release/current.conf");
        let mut w = Watcher::new(&conf).unwrap();
        std::fs::remove_dir_all(d.join("release")).unwrap();
        assert_eq!(w.read(), vec![Change::DirLost]);
        std::fs::create_dir(d.join("release")).unwrap();
        assert_eq!(w.read(), vec![Change::DirBack]);
        std::fs::write(&conf, "x").unwrap();
        assert_eq!(w.read(), vec![Change::Created, Change::Written]);
        // replaced by a rename
        std::fs::create_dir(d.join("release.new")).unwrap();
        std::fs::remove_file(&conf).unwrap();
        w.read();
        std::fs::remove_dir(d.join("release")).unwrap();
        std::fs::rename(d.join("release.new"), d.join("release")).unwrap();
        let ch = w.read();
        assert!(ch.contains(&Change::DirBack), "{ch:?}");
        std::fs::write(&conf, "y").unwrap();
        assert!(w.read().contains(&Change::Written));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
