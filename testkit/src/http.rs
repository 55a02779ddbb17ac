//! One HTTP/1.1 GET on a fresh connection (`Connection: close`), the whole
//! reply read, and every failure told apart.
//!
//! Tests count failed requests during a rollout, so the client must not
//! hide one: no retry, no pooling, no redirect; a refused connection (the
//! thing baton exists to prevent) is its own kind of error. A crate would
//! do all the things this must not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a request may wait.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the connection to be accepted; None: as long as the kernel tries.
    pub connect: Option<Duration>,
    /// For each read and write.
    pub io: Duration,
}

impl Timeouts {
    /// `t` to connect and `t` for each read and write.
    pub const fn all(t: Duration) -> Timeouts {
        Timeouts {
            connect: Some(t),
            io: t,
        }
    }
}

/// What [`get_local`] waits: the kernel's own connect timeout, 30 s a read.
pub const LOCAL: Timeouts = Timeouts {
    connect: None,
    io: Duration::from_secs(30),
};

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The example app's `release 2.0 pid 40` -> ("2.0", 40).
    pub fn release_pid(&self) -> Option<(String, i32)> {
        release_pid(&self.body)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// ECONNREFUSED: nothing listened.
    Refused,
    /// Anything else, with the step that failed.
    Other(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused => f.write_str("connection refused"),
            HttpError::Other(e) => f.write_str(e),
        }
    }
}

/// `GET path` to `addr`; the whole reply or what went wrong.
pub fn get(addr: SocketAddr, path: &str, t: Timeouts) -> Result<Reply, HttpError> {
    let connected = match t.connect {
        Some(c) => TcpStream::connect_timeout(&addr, c),
        None => TcpStream::connect(addr),
    };
    let mut s = connected.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => HttpError::Refused,
        _ => HttpError::Other(format!("connect: {e}")),
    })?;
    let step = |what: &str, e: std::io::Error| HttpError::Other(format!("{what}: {e}"));
    s.set_read_timeout(Some(t.io))
        .map_err(|e| step("socket", e))?;
    s.set_write_timeout(Some(t.io))
        .map_err(|e| step("socket", e))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| step("write", e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| step("read", e))?;
    parse(&raw)
}

/// [`get`] to 127.0.0.1:`port` with [`LOCAL`] timeouts.
pub fn get_local(port: u16, path: &str) -> Result<Reply, HttpError> {
    get(SocketAddr::from(([127, 0, 0, 1], port)), path, LOCAL)
}

/// A whole HTTP/1.1 reply: the status code and the body.
pub fn parse(raw: &[u8]) -> Result<Reply, HttpError> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(HttpError::Other(format!("incomplete reply: {text:?}")));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Other(format!("bad status line: {head:?}")))?;
    Ok(Reply {
        status,
        body: body.to_owned(),
    })
}

/// The example app's `release 2.0 pid 40` -> ("2.0", 40).
pub fn release_pid(body: &str) -> Option<(String, i32)> {
    let mut w = body.split_whitespace();
    match (w.next(), w.next(), w.next(), w.next()) {
        (Some("release"), Some(r), Some("pid"), Some(p)) => Some((r.to_owned(), p.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_a_reply_and_the_example_apps_body() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\nrelease 2.0 pid 40\n").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.release_pid(), Some(("2.0".into(), 40)));
        assert!(
            matches!(parse(b"HTTP/1.1 200 OK\r\n"), Err(HttpError::Other(e)) if e.starts_with("incomplete"))
        );
        assert!(
            matches!(parse(b"HTTP/1.1 x\r\n\r\n"), Err(HttpError::Other(e)) if e.starts_with("bad status"))
        );
        assert_eq!(release_pid("hello"), None);
    }

    #[test]
    fn a_closed_port_is_refused_and_says_so() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get_local(port, "/").unwrap_err();
        assert_eq!(e, HttpError::Refused);
        assert!(e.to_string().contains("refused"));
    }

    #[test]
    fn sends_a_get_and_reads_the_whole_reply() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 503 Busy\r\n\r\nlater").unwrap();
            String::from_utf8(req).unwrap()
        });
        let r = get(addr, "/x", Timeouts::all(Duration::from_secs(5))).unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "later"));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /x HTTP/1.1\r\n") && req.contains("Connection: close"));
    }
}
