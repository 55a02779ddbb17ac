//! Finding programs and reading what commands printed.
//!
//! Small, but needed alike by the systemd harness (is systemd-nspawn
//! installed?) and the bench (is wrk?), and by every test that runs a
//! command and shows its output when an assertion fails.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Output;

/// `name` on PATH (/usr/bin:/bin when PATH is unset).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A command's stdout, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some_and(|p| p.is_absolute()));
        assert!(which("no-such-program-anywhere").is_none());
        let out = std::process::Command::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .output()
            .unwrap();
        assert_eq!(
            (stdout(&out), stderr(&out)),
            ("out\n".into(), "err\n".into())
        );
    }
}
