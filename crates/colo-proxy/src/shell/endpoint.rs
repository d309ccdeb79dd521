//! Transport endpoints: `unix:PATH` or `tcp:HOST:PORT`, listening (QEMU's
//! `server=on`, the default) or connecting with a `,connect` suffix.
//!
//! A [`Source`] hands out one connection at a time ([`Source::next`]): a listening
//! endpoint accepts the next client (further clients wait in the kernel's backlog
//! until the current one is gone, as with a QEMU chardev server); a connecting
//! endpoint dials with retry and backoff until the peer is there. Either way a peer
//! may come and go: the caller just asks for the next connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// First delay between connection attempts of a `,connect` endpoint.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Largest delay between connection attempts.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Where an endpoint lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

/// One endpoint as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where.
    pub addr: Address,
    /// Dial out (`,connect`) instead of listening.
    pub connect: bool,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rest = s;
        let mut connect = false;
        // Options come after the last comma; paths may contain commas otherwise.
        while let Some((head, opt)) = rest.rsplit_once(',') {
            match opt {
                "connect" | "client" | "server=off" => connect = true,
                "listen" | "server" | "server=on" => connect = false,
                _ => break,
            }
            rest = head;
        }
        let addr = if let Some(path) = rest.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!(
                    "{s:?}: unix: needs a path, as in unix:/run/colo/pri.sock"
                ));
            }
            Address::Unix(PathBuf::from(path))
        } else if let Some(hp) = rest.strip_prefix("tcp:") {
            let Some((host, port)) = hp.rsplit_once(':') else {
                return Err(format!(
                    "{s:?}: tcp: needs HOST:PORT, as in tcp:127.0.0.1:9003"
                ));
            };
            if port.parse::<u16>().is_err() {
                return Err(format!("{s:?}: {port:?} is not a TCP port number"));
            }
            let host = if host.is_empty() { "0.0.0.0" } else { host };
            Address::Tcp(format!("{host}:{port}"))
        } else {
            return Err(format!(
                "{s:?}: an endpoint is unix:PATH or tcp:HOST:PORT, optionally followed by \
                 ,connect to dial out instead of listening"
            ));
        };
        Ok(Self { addr, connect })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Address::Unix(p) => write!(f, "unix:{}", p.display())?,
            Address::Tcp(hp) => write!(f, "tcp:{hp}")?,
        }
        if self.connect {
            f.write_str(",connect")?;
        }
        Ok(())
    }
}

/// A byte stream to a peer, whatever the transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A connection of either transport.
pub type BoxedIo = Box<dyn Io>;

/// A Unix listener that removes its socket file when dropped.
#[derive(Debug)]
pub struct UnixServer {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
}

impl UnixServer {
    /// Bind `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt as _;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug)]
enum Listener {
    Unix(UnixServer),
    Tcp(TcpListener),
}

/// Hands out connections for one endpoint, one at a time.
#[derive(Debug)]
pub struct Source {
    /// Role name for logs (`primary_in`, `outdev`, ...).
    pub role: &'static str,
    endpoint: Endpoint,
    listener: Option<Listener>,
}

impl Source {
    /// Prepare the endpoint: a listening one is bound now, so that address errors
    /// are reported at startup.
    pub async fn bind(role: &'static str, endpoint: Endpoint) -> anyhow::Result<Self> {
        let listener = if endpoint.connect {
            None
        } else {
            Some(match &endpoint.addr {
                Address::Unix(p) => {
                    Listener::Unix(UnixServer::bind(p).with_context(|| format!("--{role}"))?)
                }
                Address::Tcp(hp) => Listener::Tcp(
                    TcpListener::bind(hp)
                        .await
                        .with_context(|| format!("--{role}: cannot listen on tcp:{hp}"))?,
                ),
            })
        };
        match &listener {
            Some(Listener::Tcp(l)) => {
                let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(role, %endpoint, local, "listening");
            }
            Some(Listener::Unix(_)) => tracing::info!(role, %endpoint, "listening"),
            None => {}
        }
        Ok(Self {
            role,
            endpoint,
            listener,
        })
    }

    /// The next connection: accept one, or dial until the peer answers. Never fails;
    /// transient errors are logged and retried.
    pub async fn next(&mut self) -> BoxedIo {
        let role = self.role;
        let mut delay = RETRY_MIN;
        let mut attempts = 0u64;
        loop {
            let result: std::io::Result<(BoxedIo, String)> =
                match (&self.listener, &self.endpoint.addr) {
                    (Some(Listener::Unix(server)), _) => server
                        .listener
                        .accept()
                        .await
                        .map(|(s, _)| (Box::new(s) as BoxedIo, self.endpoint.to_string())),
                    (Some(Listener::Tcp(l)), _) => l.accept().await.map(|(s, peer)| {
                        let _ = s.set_nodelay(true);
                        (Box::new(s) as BoxedIo, format!("tcp:{peer}"))
                    }),
                    (None, Address::Unix(p)) => UnixStream::connect(p)
                        .await
                        .map(|s| (Box::new(s) as BoxedIo, self.endpoint.to_string())),
                    (None, Address::Tcp(hp)) => TcpStream::connect(hp).await.map(|s| {
                        let _ = s.set_nodelay(true);
                        (Box::new(s) as BoxedIo, self.endpoint.to_string())
                    }),
                };
            match result {
                Ok((io, peer)) => {
                    tracing::info!(role, peer, "connected");
                    return io;
                }
                Err(err) => {
                    attempts += 1;
                    // Dialing a peer that is not up yet is expected: say so once, then quietly.
                    if attempts == 1 || self.listener.is_some() {
                        tracing::warn!(role, endpoint = %self.endpoint, %err, "no connection yet; retrying");
                    } else {
                        tracing::debug!(role, endpoint = %self.endpoint, %err, attempts, "retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            "unix:/tmp/a.sock".parse(),
            Ok(Endpoint {
                addr: Address::Unix("/tmp/a.sock".into()),
                connect: false
            })
        );
        assert_eq!(
            "unix:/tmp/a,b.sock,connect".parse(),
            Ok(Endpoint {
                addr: Address::Unix("/tmp/a,b.sock".into()),
                connect: true
            })
        );
        assert_eq!(
            "tcp:127.0.0.1:9000,server=on".parse(),
            Ok(Endpoint {
                addr: Address::Tcp("127.0.0.1:9000".into()),
                connect: false
            })
        );
        assert_eq!(
            "tcp:[::1]:9000,connect".parse::<Endpoint>().unwrap().addr,
            Address::Tcp("[::1]:9000".into())
        );
        assert_eq!(
            "tcp::9000".parse::<Endpoint>().unwrap().addr,
            Address::Tcp("0.0.0.0:9000".into())
        );
        assert!("tcp:host".parse::<Endpoint>().is_err());
        assert!("tcp:host:99999".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
        assert!("/tmp/x".parse::<Endpoint>().is_err());
        let e: Endpoint = "unix:/x,connect".parse().unwrap();
        assert_eq!(e.to_string(), "unix:/x,connect");
    }
}
