//! The releases beside current.conf: executable files named
//! `NAME.VERSION` with a cfg file of the same version (`app.2.0` with
//! `cfg.2.0`), found by listing the directory; what current.conf names now;
//! and RELEASE as an operator types it (`2.0`, `app.2.0`) resolved to one.

use std::cmp::Ordering;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config;
use crate::inherit;
use crate::paths::AppPaths;
use crate::state::ReleaseInfo;

/// `app.2.0` -> `("app", "2.0")`: the version is everything after the first
/// dot, as in [`config::Release::name`].
pub fn split_version(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
        .filter(|(prefix, version)| !prefix.is_empty() && !version.is_empty())
}

/// What current.conf names now, if it can be read and parsed.
pub struct CurrentConf {
    pub map: serde_json::Map<String, serde_json::Value>,
    pub release: Option<config::Release>,
}

pub fn read_current(p: &AppPaths) -> Option<CurrentConf> {
    let bytes = fs::read(&p.config).ok()?;
    let serde_json::Value::Object(map) = serde_json::from_slice(&bytes).ok()? else {
        return None;
    };
    let release = config::parse(&bytes, &p.release_dir, inherit::home().as_deref())
        .ok()
        .map(|parsed| parsed.release);
    Some(CurrentConf { map, release })
}

/// The name prefix of cfg files (`cfg` in `cfg.2.0`), taken from the cfg
/// file current.conf names.
pub fn cfg_prefix(current: Option<&CurrentConf>) -> String {
    current
        .and_then(|c| c.release.as_ref())
        .and_then(|r| r.cfg.file_name()?.to_str().map(str::to_owned))
        .and_then(|n| split_version(&n).map(|(p, _)| p.to_owned()))
        .unwrap_or_else(|| "cfg".to_owned())
}

/// A release in current.conf's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct OnDisk {
    pub bin: String,
    pub version: String,
    /// The cfg file of the same version, if there is one.
    pub cfg: Option<String>,
}

/// Executable files named `NAME.VERSION` beside current.conf (not the cfg
/// files themselves), with their cfg files, oldest version first.
pub fn releases_in(p: &AppPaths, cfg_prefix: &str) -> Result<Vec<OnDisk>> {
    let conf_name = p.config.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut out = Vec::new();
    let entries = fs::read_dir(&p.release_dir)
        .with_context(|| format!("listing {}", p.release_dir.display()))?;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || name == conf_name {
            continue;
        }
        let Some((prefix, version)) = split_version(&name) else {
            continue;
        };
        if prefix == cfg_prefix {
            continue;
        }
        // Follows symlinks: a release may link to a binary elsewhere.
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() || meta.mode() & 0o111 == 0 {
            continue;
        }
        let cfg = format!("{cfg_prefix}.{version}");
        let cfg = fs::metadata(p.release_dir.join(&cfg))
            .is_ok_and(|m| !m.is_dir())
            .then_some(cfg);
        out.push(OnDisk {
            version: version.to_owned(),
            bin: name,
            cfg,
        });
    }
    out.sort_by(|a, b| compare_versions(&a.version, &b.version).then(a.bin.cmp(&b.bin)));
    Ok(out)
}

/// `1.9` < `1.10`: dot-separated parts compared as numbers when both are.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// The same file name in the same directory (directories compared after
/// resolving symlinks: release files are often links to one binary, so the
/// files themselves are not resolved).
pub fn same_place(a: &Path, b: &Path) -> bool {
    let dir = |p: &Path| {
        let d = p.parent().unwrap_or(Path::new("/"));
        fs::canonicalize(d).unwrap_or_else(|_| d.to_owned())
    };
    a.file_name() == b.file_name() && dir(a) == dir(b)
}

pub fn is_release(info: &ReleaseInfo, bin: &Path, cfg: &Path) -> bool {
    same_place(&info.bin, bin) && same_place(&info.cfg, cfg)
}

/// RELEASE as given -> the bin file name in `dir`.
pub fn resolve_bin(p: &AppPaths, release: &str, cfg_prefix: &str) -> Result<OnDisk> {
    let on_disk = releases_in(p, cfg_prefix)?;
    let names = || {
        if on_disk.is_empty() {
            "none".to_owned()
        } else {
            on_disk
                .iter()
                .map(|r| r.bin.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if !release.contains('/') && p.release_dir.join(release).exists() {
        if let Some(r) = on_disk.iter().find(|r| r.bin == release) {
            return Ok(r.clone());
        }
        let why = match split_version(release) {
            None => "its name has no version (expected NAME.VERSION, as in app.2.0)".to_owned(),
            Some((prefix, _)) if prefix == cfg_prefix => "it is a cfg file".to_owned(),
            Some(_) => "it is not an executable file".to_owned(),
        };
        bail!(
            "{} is not a release: {why}; releases there: {}",
            p.release_dir.join(release).display(),
            names()
        );
    }
    let matches: Vec<&OnDisk> = on_disk.iter().filter(|r| r.version == release).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "no release {release} in {}: no executable file named {release} or NAME.{release}; releases there: {}",
            p.release_dir.display(),
            names()
        ),
        many => bail!(
            "release {release} is ambiguous in {}: {}; name the bin file instead",
            p.release_dir.display(),
            many.iter()
                .map(|r| r.bin.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["1.10", "1.9", "2.0", "1.9.1", "1.a"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, vec!["1.9", "1.9.1", "1.10", "1.a", "2.0"]);
        assert_eq!(split_version("app.2.0"), Some(("app", "2.0")));
        assert_eq!(split_version("app"), None);
        assert_eq!(split_version(".hidden"), None);
    }
}
