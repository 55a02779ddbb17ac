//! current.conf -> [`Release`].
//!
//! The file is JSON naming the live pair:
//! `{"bin.file": "~/app/release/app.2.0", "cfg.file": "~/app/release/cfg.2.0"}`,
//! optionally with settings for that release alone ([`Opts`]): `"ready"`
//! (a readiness mode), `"stop.signal"`, `"stop.target"` and `"env"` (an
//! object of variables).
//! Paths in it follow [`crate::paths::expand`]: `~/` is the home of the user
//! baton runs as, a relative path is relative to the directory holding
//! current.conf. Every error names the file and the reason, and none of them
//! is fatal: the caller keeps serving.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::inherit::FOR_BATON_ONLY;
use crate::readiness;
use crate::stop::{StopSignal, StopTarget};

/// current.conf is a few hundred bytes; anything past this is refused
/// unread, so a runaway file cannot grow baton's memory.
pub const MAX_CONF_BYTES: u64 = 64 * 1024;

/// What current.conf names: what one generation runs. Two releases are the
/// same only if every field is: a change of any setting is a new release
/// to roll out, even with the same files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// Absolute path of the executable, as named (symlinks are resolved by
    /// the kernel at exec time, so a swapped link takes effect on the next
    /// generation).
    pub bin: PathBuf,
    /// Absolute path of the config file, passed as `-c`.
    pub cfg: PathBuf,
    /// Settings for this release alone, over baton's flags. (Absent from
    /// the state an older baton hands over: none.)
    #[serde(default)]
    pub opts: Opts,
}

/// The optional per-release keys of current.conf. Each `None` (or an empty
/// `env`) means baton's flag (or nothing) applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Opts {
    /// `"ready"`: how this release shows it is ready (over `--ready`).
    pub ready: Option<readiness::Mode>,
    /// `"stop.signal"`: what asks it to drain (over `--stop-signal`).
    pub stop_signal: Option<StopSignal>,
    /// `"stop.target"`: group or leader (over `--stop-target`).
    pub stop_target: Option<StopTarget>,
    /// `"env"`: variables set for its generations (and its checks), over
    /// what baton inherited; never LISTEN_* or NOTIFY_SOCKET.
    pub env: BTreeMap<String, String>,
}

impl Opts {
    pub fn is_empty(&self) -> bool {
        *self == Opts::default()
    }

    /// The keys as current.conf spells them, for a file that carries them
    /// (see `supervisor::links`); [`parse_opts`] reads them back.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(r) = &self.ready {
            m.insert("ready".into(), Value::String(r.to_string()));
        }
        if let Some(s) = self.stop_signal {
            m.insert("stop.signal".into(), Value::String(s.to_string()));
        }
        if let Some(t) = self.stop_target {
            m.insert("stop.target".into(), Value::String(t.to_string()));
        }
        if !self.env.is_empty() {
            let env = self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            m.insert("env".into(), Value::Object(env));
        }
        m
    }
}

impl Release {
    /// The same files, whatever the settings.
    pub fn same_files(&self, other: &Release) -> bool {
        self.bin == other.bin && self.cfg == other.cfg
    }

    /// Short name for logs and STATUS: the bin file's name (`app.2.0`), with
    /// the cfg file's name when it does not carry the same version.
    pub fn name(&self) -> String {
        let bin = file_name(&self.bin);
        let cfg = file_name(&self.cfg);
        let version = |n: &str| n.split_once('.').map(|(_, v)| v.to_owned());
        match (version(&bin), version(&cfg)) {
            (Some(a), Some(b)) if a == b => bin,
            _ => format!("{bin} ({cfg})"),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or(p.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Why current.conf could not be rolled out: the file and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfError {
    pub path: PathBuf,
    pub reason: String,
    /// The file was read but is still being written (empty, or cut short
    /// after a create): wait for the write to finish before complaining.
    pub maybe_partial: bool,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for ConfError {}

/// What a release is checked against before it runs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Home of the user baton runs as, for `~/`.
    pub home: Option<PathBuf>,
    /// baton's effective uid: files must be owned by it or by root.
    pub uid: u32,
    /// `--insecure-permissions`: allow world-writable or foreign-owned files.
    pub insecure_permissions: bool,
}

/// A parsed current.conf, with the warnings it deserves (unknown keys).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub release: Release,
    pub warnings: Vec<String>,
}

/// Reads, parses and checks current.conf. Never blocks (a FIFO in its place
/// is refused), never reads more than [`MAX_CONF_BYTES`].
pub fn load(path: &Path, policy: &Policy) -> Result<Parsed, ConfError> {
    let err = |reason: String| ConfError {
        path: path.to_owned(),
        reason,
        maybe_partial: false,
    };
    let bytes = read_capped(path, policy).map_err(err)?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let parsed = parse(&bytes, base, policy.home.as_deref()).map_err(|reason| ConfError {
        path: path.to_owned(),
        reason,
        maybe_partial: bytes.is_empty()
            || serde_json::from_slice::<serde_json::Value>(&bytes).is_err_and(|e| e.is_eof()),
    })?;
    check_release(&parsed.release, policy).map_err(err)?;
    Ok(parsed)
}

fn read_capped(path: &Path, policy: &Policy) -> Result<Vec<u8>, String> {
    // O_NONBLOCK: opening a FIFO put in place of current.conf must not wait
    // for a writer. The type is checked on the open file, not the name.
    let file = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| describe_io(&e))?;
    let meta = file.metadata().map_err(|e| describe_io(&e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(format!("is {}, not a regular file", kind_of(&ft)));
    }
    check_owner("current.conf", &meta, policy)?;
    check_dir(path, policy)?;
    if meta.len() > MAX_CONF_BYTES {
        return Err(format!(
            "is {} bytes, more than the {MAX_CONF_BYTES} a current.conf may be",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONF_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| describe_io(&e))?;
    if bytes.len() as u64 > MAX_CONF_BYTES {
        return Err(format!(
            "grew past the {MAX_CONF_BYTES} bytes a current.conf may be"
        ));
    }
    Ok(bytes)
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// current.conf's identity: the device, inode and change time of the name
/// and, when it is a symlink, of the file it names. Any edit changes it (a
/// rename or symlink swap brings another inode, a write in place a new
/// change time), so a baton can tell, from a recorded identity, whether
/// current.conf changed while it was not watching. None when it cannot be
/// read.
pub fn identity(path: &Path) -> Option<String> {
    let one = |m: &std::fs::Metadata| {
        format!(
            "{}:{}:{}.{:09}",
            m.dev(),
            m.ino(),
            m.ctime(),
            m.ctime_nsec()
        )
    };
    let name = std::fs::symlink_metadata(path).ok()?;
    if !name.file_type().is_symlink() {
        return Some(one(&name));
    }
    let target = std::fs::metadata(path).ok()?;
    Some(format!("{} -> {}", one(&name), one(&target)))
}

/// An io::Error as an operator reads it.
pub fn describe_io(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::ENOENT) => "does not exist".into(),
        Some(nix::libc::EACCES) => "permission denied".into(),
        Some(nix::libc::ELOOP) => "too many levels of symbolic links (a symlink loop?)".into(),
        Some(nix::libc::ENOTDIR) => "a component of the path is not a directory".into(),
        _ => e.to_string(),
    }
}

/// Parses current.conf's bytes. Pure: no file system access.
pub fn parse(bytes: &[u8], base: &Path, home: Option<&Path>) -> Result<Parsed, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("is empty; expected {\"bin.file\": ..., \"cfg.file\": ...}".into());
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("must be a JSON object like {\"bin.file\": ..., \"cfg.file\": ...}".into());
    };
    let get = |key: &str| -> Result<PathBuf, String> {
        match map.get(key) {
            None => Err(format!("missing key \"{key}\"")),
            Some(Value::String(s)) if s.is_empty() => Err(format!("\"{key}\" is empty")),
            Some(Value::String(s)) if s.contains('\0') => {
                Err(format!("\"{key}\" contains a NUL byte"))
            }
            Some(Value::String(s)) => {
                crate::paths::expand(s, base, home).map_err(|e| format!("\"{key}\": {e}"))
            }
            Some(_) => Err(format!("\"{key}\" must be a string (a path)")),
        }
    };
    let release = Release {
        bin: get("bin.file")?,
        cfg: get("cfg.file")?,
        opts: parse_opts(&map)?,
    };
    let warnings = map
        .keys()
        .filter(|k| {
            !matches!(k.as_str(), "bin.file" | "cfg.file") && !OPT_KEYS.contains(&k.as_str())
        })
        .map(|k| format!("unknown key \"{}\" ignored", k.escape_debug()))
        .collect();
    Ok(Parsed { release, warnings })
}

/// The per-release keys ([`Opts`]).
pub const OPT_KEYS: [&str; 4] = ["ready", "stop.signal", "stop.target", "env"];

/// Reads the per-release keys of a current.conf object (others are not
/// looked at). Errors name the key and the reason.
pub fn parse_opts(map: &Map<String, Value>) -> Result<Opts, String> {
    let text = |key: &str| -> Result<Option<&str>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("\"{key}\" must be a string")),
        }
    };
    let ready = text("ready")?
        .map(|s| readiness::Mode::parse(s).map_err(|e| format!("\"ready\": {e}")))
        .transpose()?;
    let stop_signal = match map.get("stop.signal") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err("\"stop.signal\" must be a signal name or number, as in \"QUIT\"".into());
        }
    }
    .map(|s| StopSignal::parse(&s).map_err(|e| format!("\"stop.signal\": {e}")))
    .transpose()?;
    let stop_target = text("stop.target")?
        .map(|s| StopTarget::parse(s).map_err(|e| format!("\"stop.target\": {e}")))
        .transpose()?;
    let env = match map.get("env") {
        None => BTreeMap::new(),
        Some(Value::Object(vars)) => {
            let mut env = BTreeMap::new();
            for (name, value) in vars {
                check_env_name(name)?;
                let Value::String(value) = value else {
                    return Err(format!(
                        "\"env\": the value of \"{}\" must be a string",
                        name.escape_debug()
                    ));
                };
                if value.contains('\0') {
                    return Err(format!(
                        "\"env\": the value of \"{}\" contains a NUL byte",
                        name.escape_debug()
                    ));
                }
                env.insert(name.clone(), value.clone());
            }
            env
        }
        Some(_) => {
            return Err("\"env\" must be an object of strings, as in {\"PORT\": \"8000\"}".into());
        }
    };
    Ok(Opts {
        ready,
        stop_signal,
        stop_target,
        env,
    })
}

/// A variable a release may set: a name the environment can hold (not
/// empty, no '=' or NUL), and not one of the variables baton sets for each
/// generation (LISTEN_*, NOTIFY_SOCKET) or keeps for itself: those are
/// refused rather than ignored, so a release never runs believing it set
/// one.
fn check_env_name(name: &str) -> Result<(), String> {
    let shown = name.escape_debug();
    if name.is_empty() {
        return Err("\"env\": a variable name is empty".into());
    }
    if name.contains('=') || name.contains('\0') {
        return Err(format!(
            "\"env\": \"{shown}\" is not a variable name (it contains '=' or a NUL byte)"
        ));
    }
    if name.starts_with("LISTEN_") || FOR_BATON_ONLY.contains(&name) {
        return Err(format!(
            "\"env\": \"{shown}\" is baton's to set for each generation (LISTEN_*, NOTIFY_SOCKET); remove it"
        ));
    }
    Ok(())
}

/// The files a release names exist, are of the right kind, and are safe to
/// run (sshd's StrictModes: anyone who can write them could run code as the
/// service).
pub fn check_release(release: &Release, policy: &Policy) -> Result<(), String> {
    let bin = std::fs::metadata(&release.bin)
        .map_err(|e| format!("bin.file {}: {}", release.bin.display(), describe_io(&e)))?;
    if !bin.is_file() {
        return Err(format!(
            "bin.file {}: is {}, not a regular file",
            release.bin.display(),
            kind_of(&bin.file_type())
        ));
    }
    if nix::unistd::access(&release.bin, nix::unistd::AccessFlags::X_OK).is_err()
        || bin.mode() & 0o111 == 0
    {
        return Err(format!(
            "bin.file {}: is not executable",
            release.bin.display()
        ));
    }
    check_owner(&format!("bin.file {}", release.bin.display()), &bin, policy)?;
    let cfg = std::fs::metadata(&release.cfg)
        .map_err(|e| format!("cfg.file {}: {}", release.cfg.display(), describe_io(&e)))?;
    if cfg.is_dir() {
        return Err(format!(
            "cfg.file {}: is a directory",
            release.cfg.display()
        ));
    }
    check_owner(&format!("cfg.file {}", release.cfg.display()), &cfg, policy)?;
    check_dir(&release.bin, policy)?;
    check_dir(&release.cfg, policy)
}

/// The directory holding a file matters as much as the file: whoever can
/// write it can put another file in its place. A world-writable directory is
/// refused unless it is sticky (like /tmp, where only owners may replace).
pub fn check_dir(file: &Path, policy: &Policy) -> Result<(), String> {
    let Some(dir) = file.parent() else {
        return Ok(());
    };
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("{}: {}", dir.display(), describe_io(&e)))?;
    if policy.insecure_permissions {
        return Ok(());
    }
    let what = format!("directory {} (holding {})", dir.display(), file_name(file));
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(format!(
            "{what} is world-writable (mode {:o}): anyone could replace what it holds; \
             chmod o-w it, or pass --insecure-permissions",
            meta.mode() & 0o7777
        ));
    }
    check_uid(&what, &meta, policy)
}

fn check_owner(what: &str, meta: &std::fs::Metadata, policy: &Policy) -> Result<(), String> {
    if policy.insecure_permissions {
        return Ok(());
    }
    if meta.mode() & 0o002 != 0 {
        return Err(format!(
            "{what} is world-writable (mode {:o}): anyone could run code as this service; \
             chmod o-w it, or pass --insecure-permissions",
            meta.mode() & 0o7777
        ));
    }
    check_uid(what, meta, policy)
}

fn check_uid(what: &str, meta: &std::fs::Metadata, policy: &Policy) -> Result<(), String> {
    if policy.insecure_permissions {
        return Ok(());
    }
    if meta.uid() != 0 && meta.uid() != policy.uid {
        return Err(format!(
            "{what} is owned by uid {}, neither root nor baton's uid {}: that user could run code as this service; \
             chown it, or pass --insecure-permissions",
            meta.uid(),
            policy.uid
        ));
    }
    Ok(())
}

/// True when a directory entry name is the watched file's.
pub fn same_name(entry: &OsStr, path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes() == entry.as_bytes())
}

#[cfg(test)]
mod tests;
