//! Logs go to stderr through env_logger (RUST_LOG, default `info`). When
//! stderr is the journal (JOURNAL_STREAM names its device and inode), each
//! line starts with a `<N>` syslog priority so journald keeps the level, and
//! the timestamp is left to journald.

use std::io::Write;
use std::os::fd::AsFd;

pub fn init() {
    let journal = stderr_is_journal();
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        b.format(|buf, record| {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>{}", record.args())
        });
    } else {
        b.format(|buf, record| {
            writeln!(
                buf,
                "{} baton[{}] {:<5} {}",
                buf.timestamp_micros(),
                std::process::id(),
                record.level(),
                record.args()
            )
        });
    }
    b.init();
}

/// JOURNAL_STREAM is "DEV:INODE" of the journal's stream socket; it is
/// inherited, so stderr must be checked to be that very socket.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>() == Ok(st.st_dev) && ino.parse::<u64>() == Ok(st.st_ino)
}
