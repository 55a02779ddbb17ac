//! `baton`: parse the command line, run, print the error chain, exit.

use std::process::ExitCode;

use baton::cli::{self, Command, UsageError};

fn main() -> ExitCode {
    ensure_std_fds();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::HandoverCheck => return ExitCode::from(baton::handover::check_stdin()),
        Command::Version => {
            println!("baton {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(args) => {
            baton::logging::init();
            baton::supervisor::run(args).map(|()| 0)
        }
        other => baton::ops::main(other),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is::<UsageError>() => {
            eprintln!("baton: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error!("{e:#}");
            if !log::log_enabled!(log::Level::Error) {
                eprintln!("baton: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// fds 0-2 must be open, or the first socket or file baton opens would take
/// one of those numbers, and a generation would find it where it expects
/// stdin or stderr. (Rust's runtime reopens closed ones on /dev/null
/// before main on Linux already; this keeps it so whatever the runtime
/// does.)
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the descriptor number.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
            // Opened without CLOEXEC on purpose; lands on the lowest free
            // number, which is `fd`, and is kept open (into_raw_fd: an
            // OwnedFd dropped here would close it again at once).
            let _ = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            )
            .map(std::os::fd::IntoRawFd::into_raw_fd);
        }
    }
}
