//! The three sockets to the proxy: `unix:PATH` (or a bare path) and `tcp:HOST:PORT`,
//! either listened on (the proxy connects, as QEMU's `-chardev socket,path=P` does) or
//! connected to (`--connect`, the proxy listens).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Pause after connecting, before the first frame (see [`setup`]).
const CONNECT_SETTLE: Duration = Duration::from_millis(200);

/// Where one of the proxy's sockets is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix stream socket.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(a) = s.strip_prefix("tcp:") {
            if a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("expected tcp:HOST:PORT, got {s:?}"));
            }
            return Ok(Self::Tcp(a.to_owned()));
        }
        let p = s.strip_prefix("unix:").unwrap_or(s);
        if p.is_empty() {
            return Err("empty socket path".to_owned());
        }
        Ok(Self::Unix(PathBuf::from(p)))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A connected stream of either kind.
#[derive(Debug)]
pub enum Stream {
    /// Unix stream socket.
    Unix(UnixStream),
    /// TCP connection (`TCP_NODELAY` set).
    Tcp(TcpStream),
}

impl Stream {
    /// Sets the read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(t),
            Self::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// Switches non-blocking mode on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_nonblocking(on),
            Self::Tcp(s) => s.set_nonblocking(on),
        }
    }

    /// Sets the write timeout (a proxy that stops reading makes writes fail).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_write_timeout(t),
            Self::Tcp(s) => s.set_write_timeout(t),
        }
    }

    fn tcp(s: TcpStream) -> io::Result<Self> {
        s.set_nodelay(true)?;
        Ok(Self::Tcp(s))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn bind(ep: &Endpoint) -> anyhow::Result<Self> {
        let l = match ep {
            Endpoint::Unix(p) => {
                // A stale socket file from an earlier run would make bind fail.
                let _ = std::fs::remove_file(p);
                Self::Unix(UnixListener::bind(p).with_context(|| format!("bind {ep}"))?)
            }
            Endpoint::Tcp(a) => {
                Self::Tcp(TcpListener::bind(a).with_context(|| format!("bind {ep}"))?)
            }
        };
        match &l {
            Self::Unix(u) => u.set_nonblocking(true)?,
            Self::Tcp(t) => t.set_nonblocking(true)?,
        }
        Ok(l)
    }

    fn accept_within(&self, what: &str, deadline: Instant) -> anyhow::Result<Stream> {
        loop {
            let r = match self {
                Self::Unix(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    Ok(Stream::Unix(s))
                }),
                Self::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    Stream::tcp(s)
                }),
            };
            match r {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).with_context(|| format!("accept on {what}")),
            }
            if Instant::now() > deadline {
                bail!("nobody connected to {what} in time");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn connect_within(ep: &Endpoint, deadline: Instant) -> anyhow::Result<Stream> {
    loop {
        let r = match ep {
            Endpoint::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
            Endpoint::Tcp(a) => TcpStream::connect(a.as_str()).and_then(Stream::tcp),
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connect to {ep}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The three connected streams.
#[derive(Debug)]
pub struct Conns {
    /// To the proxy's primary_in.
    pub pri: Stream,
    /// To the proxy's secondary_in.
    pub sec: Stream,
    /// From the proxy's outdev.
    pub out: Stream,
}

/// Connects to (or listens for) the proxy's three sockets within `timeout`.
pub fn setup(eps: [&Endpoint; 3], connect: bool, timeout: Duration) -> anyhow::Result<Conns> {
    let deadline = Instant::now() + timeout;
    let [p, s, o] = eps;
    if connect {
        // outdev first, and a pause before sending: a listening QEMU accepts on its
        // main loop some time after the kernel completed the connection, and frames
        // it releases before it has accepted outdev are lost.
        let out = connect_within(o, deadline)?;
        let pri = connect_within(p, deadline)?;
        let sec = connect_within(s, deadline)?;
        std::thread::sleep(CONNECT_SETTLE);
        return Ok(Conns { pri, sec, out });
    }
    let (lp, ls, lo) = (Listener::bind(p)?, Listener::bind(s)?, Listener::bind(o)?);
    Ok(Conns {
        pri: lp.accept_within("primary_in", deadline)?,
        sec: ls.accept_within("secondary_in", deadline)?,
        out: lo.accept_within("outdev", deadline)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!("/tmp/a".parse(), Ok(Endpoint::Unix("/tmp/a".into())));
        assert_eq!("unix:/tmp/a".parse(), Ok(Endpoint::Unix("/tmp/a".into())));
        assert_eq!(
            "tcp:127.0.0.1:9000".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:9000".into()))
        );
        assert!("tcp:127.0.0.1".parse::<Endpoint>().is_err());
        assert!("tcp::80".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
    }
}
