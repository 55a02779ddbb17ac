//! The listening sockets: taken from systemd (LISTEN_FDS, read by
//! [`crate::inherit`]) or bound for `--listen`. baton holds them open for its whole life and never accepts on
//! them, so a connection that arrives while no generation accepts waits in
//! the kernel's queue instead of being refused.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr,
    setsockopt, sockopt,
};
use nix::sys::stat::{SFlag, fstat};

/// One `--listen` address.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// `unix:/run/app.sock`
    Unix(PathBuf),
    /// `unix:@name`: Linux abstract namespace.
    Abstract(Vec<u8>),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(rest) = s.strip_prefix("unix:") {
            return match rest.strip_prefix('@') {
                Some(name) if !name.is_empty() => {
                    Ok(ListenAddr::Abstract(name.as_bytes().to_vec()))
                }
                _ if rest.starts_with('/') => Ok(ListenAddr::Unix(PathBuf::from(rest))),
                _ => Err("expected unix:/absolute/path or unix:@abstract-name".into()),
            };
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| "expected HOST:PORT (127.0.0.1:3000, [::]:3000) or unix:/path".into())
    }
}

/// The sockets every generation inherits as fds 3, 4, ...
#[derive(Debug)]
pub struct Listeners {
    pub fds: Vec<OwnedFd>,
    /// LISTEN_FDNAMES as systemd gave it, passed on unchanged.
    pub names: Option<String>,
    /// Socket files baton created for `--listen unix:/path`, removed at exit.
    created_paths: Vec<PathBuf>,
}

impl Listeners {
    /// Takes the sockets systemd passed ([`crate::inherit`]), each checked
    /// to be a socket and marked close-on-exec.
    pub fn adopt(raw: &[RawFd], names: Option<String>) -> Result<Listeners> {
        let mut fds = Vec::with_capacity(raw.len());
        for &fd in raw {
            fds.push(validate(fd)?);
        }
        Ok(Listeners {
            fds,
            names,
            created_paths: Vec::new(),
        })
    }

    /// Binds each `--listen` address.
    pub fn bind(addrs: &[String]) -> Result<Listeners> {
        let mut l = Listeners {
            fds: Vec::new(),
            names: None,
            created_paths: Vec::new(),
        };
        for a in addrs {
            let addr = ListenAddr::parse(a).map_err(|e| anyhow::anyhow!("--listen {a}: {e}"))?;
            let fd = l
                .bind_one(&addr)
                .with_context(|| format!("binding --listen {a}"))?;
            l.fds.push(fd);
        }
        Ok(l)
    }

    fn bind_one(&mut self, addr: &ListenAddr) -> Result<OwnedFd> {
        let flags = SockFlag::SOCK_CLOEXEC;
        let fd = match addr {
            ListenAddr::Tcp(sa) => {
                let family = if sa.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                };
                let fd = socket::socket(family, SockType::Stream, flags, None)?;
                setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                match sa {
                    SocketAddr::V4(v4) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*v4))?,
                    SocketAddr::V6(v6) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*v6))?,
                }
                fd
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
                socket::bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path())?)?;
                self.created_paths.push(path.clone());
                fd
            }
            ListenAddr::Abstract(name) => {
                let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
                socket::bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name)?)?;
                fd
            }
        };
        socket::listen(&fd, Backlog::MAXCONN)?;
        Ok(fd)
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Socket files baton created (and removes at exit).
    pub fn created_paths(&self) -> &[PathBuf] {
        &self.created_paths
    }

    /// Takes over the sockets an earlier image of baton held (`baton
    /// upgrade`), with the socket files it is to remove at exit.
    pub fn adopt_from_image(
        raw: &[RawFd],
        names: Option<String>,
        created_paths: Vec<PathBuf>,
    ) -> Result<Listeners> {
        let mut l = Listeners::adopt(raw, names)?;
        l.created_paths = created_paths;
        Ok(l)
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for p in &self.created_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An inherited fd must be a socket; it is marked CLOEXEC so that it reaches
/// a generation only where the spawner places it.
fn validate(raw: RawFd) -> Result<OwnedFd> {
    // SAFETY: `raw` was passed to baton by systemd and handed over by
    // listenfd (take_raw_fd); nothing else in baton owns it; if it is not open, fstat says so and
    // the OwnedFd's close fails harmlessly.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = fstat(&fd).with_context(|| format!("inherited fd {raw} is not open"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        std::mem::forget(fd);
        bail!("inherited fd {raw} (from LISTEN_FDS) is not a socket");
    }
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .with_context(|| format!("marking inherited fd {raw} close-on-exec"))?;
    Ok(fd)
}

/// A socket file left by an earlier run is removed; one that still accepts
/// connections belongs to a live server and is an error.
fn remove_stale_socket(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use by a running server", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}

/// How an address looks in logs: `127.0.0.1:3000`, `unix:/run/app.sock`.
pub fn describe(fd: &OwnedFd) -> String {
    match socket::getsockname::<socket::SockaddrStorage>(fd.as_raw_fd()) {
        Ok(ss) => {
            if let Some(u) = ss.as_unix_addr() {
                match (u.path(), u.as_abstract()) {
                    (Some(p), _) => format!("unix:{}", p.display()),
                    (_, Some(a)) => format!("unix:@{}", String::from_utf8_lossy(a)),
                    _ => "unix:(unnamed)".into(),
                }
            } else {
                ss.to_string()
            }
        }
        Err(e) => format!("fd {} ({e})", fd.as_raw_fd()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:3000"),
            Ok(ListenAddr::Tcp("127.0.0.1:3000".parse().unwrap()))
        );
        assert!(matches!(
            ListenAddr::parse("[::]:3000"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert_eq!(
            ListenAddr::parse("unix:/run/a.sock"),
            Ok(ListenAddr::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:@app"),
            Ok(ListenAddr::Abstract(b"app".to_vec()))
        );
        for bad in ["3000", "localhost", "unix:rel", "unix:@", ""] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn binds_tcp_and_unix() {
        let dir = std::env::temp_dir().join(format!("baton-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let l =
            Listeners::bind(&["127.0.0.1:0".into(), format!("unix:{}", path.display())]).unwrap();
        assert_eq!(l.fds.len(), 2);
        assert!(describe(&l.fds[0]).starts_with("127.0.0.1:"));
        assert_eq!(describe(&l.fds[1]), format!("unix:{}", path.display()));
        drop(l);
        assert!(!path.exists(), "socket file removed on drop");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn bad_inherited_fd_is_named() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(f);
        let e = validate(raw).unwrap_err().to_string();
        assert!(
            e.contains(&format!("fd {raw}")) && e.contains("not a socket"),
            "{e}"
        );
        nix::unistd::close(raw).unwrap();
    }
}
