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
                crate::clock::rfc3339_micros(std::time::SystemTime::now()),
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
    let Some((dev, ino)) = crate::inherit::journal_stream() else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev == st.st_dev && ino == st.st_ino
}
