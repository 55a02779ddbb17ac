//! `<app-dir>/app.bin` and `app.cfg`: links to the release that serves.
//!
//! baton points them at each release that goes live, so operators (and
//! tools that expect one fixed path) can find what serves, and so a baton
//! restarted while current.conf names a broken release knows what served
//! last and can fall back to it.

use std::path::Path;

use log::warn;

use crate::config::Release;
use crate::paths::{BIN_LINK, CFG_LINK};

/// Points both links at `release`, each replaced atomically (a new link,
/// then renamed over the old one).
pub fn point_at(app_dir: &Path, release: &Release) {
    for (name, target) in [(BIN_LINK, &release.bin), (CFG_LINK, &release.cfg)] {
        let link = app_dir.join(name);
        let tmp = app_dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let r =
            std::os::unix::fs::symlink(target, &tmp).and_then(|()| std::fs::rename(&tmp, &link));
        if let Err(e) = r {
            warn!("updating {} -> {}: {e}", link.display(), target.display());
        }
    }
}

/// The release the links name, when both exist and still point at files.
pub fn last_live(app_dir: &Path) -> Option<Release> {
    let bin = std::fs::read_link(app_dir.join(BIN_LINK)).ok()?;
    let cfg = std::fs::read_link(app_dir.join(CFG_LINK)).ok()?;
    let release = Release {
        bin: app_dir.join(bin),
        cfg: app_dir.join(cfg),
    };
    (release.bin.is_file() && release.cfg.exists()).then_some(release)
}
