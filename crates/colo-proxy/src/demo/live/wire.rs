//! The demo's ends of the proxies' sockets: QEMU-framed stream ports (client, VMs)
//! and control-socket clients.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use colo_core::Frame;
use colo_core::codec::{DecoderConfig, FrameDecoder, encode_frame};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long to wait for a proxy's socket to appear.
const CONNECT_ATTEMPTS: u32 = 500;
/// Pause between two connection attempts.
const CONNECT_PAUSE: Duration = Duration::from_millis(10);

async fn connect(path: &Path) -> anyhow::Result<UnixStream> {
    for _ in 0..CONNECT_ATTEMPTS {
        if let Ok(s) = UnixStream::connect(path).await {
            return Ok(s);
        }
        tokio::time::sleep(CONNECT_PAUSE).await;
    }
    bail!(
        "{} never appeared: the proxy did not start (rerun with --log-level debug)",
        path.display()
    )
}

/// A QEMU-framed stream port played by the demo (the client, or one VM's NIC).
pub struct Peer {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    dec: FrameDecoder,
}

impl Peer {
    /// Connect to the proxy's listening port at `path` (retried until it is up).
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let (rd, wr) = connect(path).await?.into_split();
        Ok(Self {
            rd,
            wr,
            dec: FrameDecoder::new(DecoderConfig::default()),
        })
    }

    /// Send `frames`, QEMU-framed (no vnet header).
    pub async fn send(&mut self, frames: &[Frame]) -> anyhow::Result<()> {
        let mut wire = bytes::BytesMut::new();
        for f in frames {
            encode_frame(f, false, &mut wire);
        }
        self.wr.write_all(&wire).await?;
        Ok(())
    }

    /// The next frame from the proxy. Cancel-safe: nothing read is lost.
    pub async fn next(&mut self) -> anyhow::Result<Frame> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.dec.poll_frame()? {
                return Ok(f);
            }
            let n = self.rd.read(&mut buf).await?;
            if n == 0 {
                bail!("the proxy closed the port");
            }
            self.dec.push(&buf[..n]);
        }
    }
}

/// A control-socket client: JSON lines, replies and events.
pub struct Ctl {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
}

impl Ctl {
    /// Connect to the control socket at `path` (retried until it is up).
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let (rd, wr) = connect(path).await?.into_split();
        Ok(Self {
            lines: BufReader::new(rd).lines(),
            wr,
        })
    }

    /// The next line (a reply or an event). Cancel-safe.
    pub async fn line(&mut self) -> anyhow::Result<Value> {
        let line = self
            .lines
            .next_line()
            .await?
            .context("control socket closed")?;
        serde_json::from_str(&line).with_context(|| format!("bad control line {line:?}"))
    }

    /// Send a command and return its reply; events that arrive first go to `events`.
    pub async fn command(&mut self, cmd: &str, events: &mut Vec<Value>) -> anyhow::Result<Value> {
        self.wr
            .write_all(format!("{{\"v\":1,\"cmd\":\"{cmd}\"}}\n").as_bytes())
            .await?;
        loop {
            let v = self.line().await?;
            if v.get("ok").is_some() {
                if v["ok"] != true {
                    bail!("{cmd} failed: {}", v["error"]);
                }
                return Ok(v);
            }
            events.push(v);
        }
    }

    /// The `stats` object, as an operator's `colo-proxy ctl stats` shows it.
    pub async fn stats(&mut self, events: &mut Vec<Value>) -> anyhow::Result<Value> {
        Ok(self.command("stats", events).await?["stats"].take())
    }
}
