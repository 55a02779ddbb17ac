//! A directory of one's own, removed on drop.
//!
//! Tests run in parallel threads of one process, and several test binaries
//! and the bench may run at once: each needs files no one else touches, and
//! must leave nothing behind to confuse the next run, however it ends
//! (a failed assertion unwinds through the drop).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory, removed with everything in it on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `baton-test-<tag>-<pid>-<n>` under the system temp dir: unique within
    /// this process (n counts up) and across processes (pid).
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("baton-test-{tag}-{}-{n}", std::process::id()));
        TempDir::at(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()))
    }

    /// `path`, emptied of whatever an earlier run left there, and created.
    pub fn at(path: impl Into<PathBuf>) -> std::io::Result<TempDir> {
        let path = path.into();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `path` joined to the directory.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.0.join(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_and_removed_on_drop() {
        let (a, b) = (TempDir::new("kit"), TempDir::new("kit"));
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && b.path().is_dir());
        std::fs::write(a.join("f"), "x").unwrap();
        let p = a.path().to_owned();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn at_empties_what_was_there() {
        let base = TempDir::new("kit-at");
        let p = base.join("d");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("old"), "x").unwrap();
        let d = TempDir::at(&p).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
