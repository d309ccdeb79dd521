//! `colo-proxy demo --live`: the real `primary` and `secondary` roles, in this
//! process, over loopback Unix sockets in a temporary directory, with the client and
//! both VMs played by the demo on the QEMU-framed ports.
//!
//! Each connection: the client's SYN goes through the primary to the primary VM and,
//! mirrored over the link and the secondary's rewriter, to the secondary VM; the VMs
//! answer with their own ISNs and segment their responses differently. With
//! `--nondeterministic` some secondary responses differ (another clock): the primary
//! asks for a checkpoint on its control socket, the demo "takes" it (waits
//! `--checkpoint-ms`, makes the secondary VM a copy of the primary, and sends
//! `checkpoint-done`, which the primary forwards to the secondary). At the end the
//! client's byte streams are checked against what the primary VM sent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use colo_core::Frame;
use colo_core::classify::{TcpFlags, classify};
use colo_core::codec::{DecoderConfig, FrameDecoder, encode_frame};
use colo_core::sim::{FlowAddrs, TcpSender, client_tcp};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::cli::{Cli, Command, DemoArgs};

/// Largest response per connection in live mode (every byte crosses real sockets).
const MAX_LIVE_BYTES: u64 = 64 << 20;

/// Run the live demo; exit 0 when every client stream verified.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if args.bytes_per_connection > MAX_LIVE_BYTES {
        bail!("--live supports up to 64M per connection; use a smaller --bytes-per-connection");
    }
    let dir = std::env::temp_dir().join(format!("colo-proxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = rt.block_on(live(args, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn parse<T>(argv: &[String], pick: impl Fn(Command) -> Option<T>) -> anyhow::Result<T> {
    let cli = Cli::try_parse_from(argv).context("building the roles' options")?;
    pick(cli.command).context("unexpected role")
}

async fn live(args: &DemoArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let p = |name: &str| dir.join(name).display().to_string();
    let argv = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let secondary = parse(
        &argv(&[
            "colo-proxy",
            "secondary",
            "--svm",
            &format!("stream:unix:{}", p("svm.sock")),
            "--link",
            &format!("unix:{}", p("link.sock")),
            "--control",
            &p("secondary.ctl"),
        ]),
        |c| match c {
            Command::Secondary(a) => Some(a),
            _ => None,
        },
    )?;
    let primary = parse(
        &argv(&[
            "colo-proxy",
            "primary",
            "--client",
            &format!("stream:unix:{}", p("client.sock")),
            "--pvm",
            &format!("stream:unix:{}", p("pvm.sock")),
            "--link",
            &format!("unix:{},connect", p("link.sock")),
            "--control",
            &p("primary.ctl"),
        ]),
        |c| match c {
            Command::Primary(a) => Some(a),
            _ => None,
        },
    )?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
        "demo finished"
    };
    let sec = crate::secondary::serve(&secondary, stopped(stop_rx.clone()));
    let pri = crate::primary::serve(&primary, stopped(stop_rx));
    let scenario = async {
        let r = scenario(args, dir).await;
        let _ = stop_tx.send(true);
        r
    };
    let (s, p, outcome) = tokio::join!(sec, pri, scenario);
    s.context("secondary")?;
    p.context("primary")?;
    outcome
}

/// A QEMU-framed stream port played by the demo.
struct Peer {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    dec: FrameDecoder,
}

impl Peer {
    async fn connect(path: PathBuf) -> anyhow::Result<Self> {
        for _ in 0..500 {
            if let Ok(s) = UnixStream::connect(&path).await {
                let (rd, wr) = s.into_split();
                return Ok(Self {
                    rd,
                    wr,
                    dec: FrameDecoder::new(DecoderConfig::default()),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("{} never appeared", path.display())
    }

    async fn send(&mut self, frames: &[Frame]) -> anyhow::Result<()> {
        let mut wire = bytes::BytesMut::new();
        for f in frames {
            encode_frame(f, false, &mut wire);
        }
        self.wr.write_all(&wire).await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Frame> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.dec.poll_frame()? {
                return Ok(f);
            }
            let n = self.rd.read(&mut buf).await?;
            if n == 0 {
                bail!("port closed");
            }
            self.dec.push(&buf[..n]);
        }
    }
}

/// A control-socket client.
struct Ctl {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
}

impl Ctl {
    async fn connect(path: PathBuf) -> anyhow::Result<Self> {
        let peer = Peer::connect(path).await?;
        Ok(Self {
            lines: BufReader::new(peer.rd).lines(),
            wr: peer.wr,
        })
    }

    async fn line(&mut self) -> anyhow::Result<Value> {
        let line = self
            .lines
            .next_line()
            .await?
            .context("control socket closed")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Send a command; events that arrive first go to `events`.
    async fn command(&mut self, cmd: &str, events: &mut Vec<Value>) -> anyhow::Result<Value> {
        self.wr
            .write_all(format!("{{\"v\":1,\"cmd\":\"{cmd}\"}}\n").as_bytes())
            .await?;
        loop {
            let v = self.line().await?;
            if v.get("ok").is_some() {
                return Ok(v);
            }
            events.push(v);
        }
    }
}

/// What connection `i`'s server says; the secondary's clock differs on diverging ones.
fn response(i: u32, len: usize, secondary: bool, diverge: bool) -> Vec<u8> {
    let stamp = if secondary && diverge { 2222 } else { 1111 };
    let mut body =
        format!("HTTP/1.1 200 OK\r\nconnection: {i}\r\ntime: {stamp}\r\n\r\n").into_bytes();
    body.extend((0..len).map(|k| ((k as u32).wrapping_mul(31).wrapping_add(i * 7) % 251) as u8));
    body
}

async fn scenario(args: &DemoArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let mut pctl = Ctl::connect(dir.join("primary.ctl")).await?;
    let mut client = Peer::connect(dir.join("client.sock")).await?;
    let mut pvm = Peer::connect(dir.join("pvm.sock")).await?;
    let mut svm = Peer::connect(dir.join("svm.sock")).await?;
    let mut events = Vec::new();
    for _ in 0..500 {
        let st = pctl.command("stats", &mut events).await?;
        if st["stats"]["link"]["up"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let say = |s: String| {
        if !args.quiet && !args.json {
            println!("{s}");
        }
    };
    say(format!(
        "live demo: primary and secondary proxies on Unix sockets in {}",
        dir.display()
    ));
    let len = usize::try_from(args.bytes_per_connection).unwrap_or(usize::MAX);
    let period = args.divergence_period();
    let mut verified = 0u32;
    let mut checkpoints = 0u32;
    for i in 0..args.connections {
        let addrs = FlowAddrs::v4(i);
        let cisn = 40_000 + i * 13;
        let syn = client_tcp(&addrs, cisn, 0, TcpFlags::SYN, b"");
        client.send(&[syn]).await?;
        pvm.next().await?;
        svm.next().await?;
        let mut p = TcpSender::new(addrs, 1_000 + i * 7919, cisn + 1);
        let mut s = TcpSender::new(addrs, 900_000_000 + i * 104_729, cisn + 1);
        pvm.send(&[p.syn_ack()]).await?;
        svm.send(&[s.syn_ack()]).await?;
        client.next().await?;
        let ack = client_tcp(&addrs, cisn + 1, p.isn + 1, TcpFlags::ACK, b"");
        client.send(&[ack]).await?;
        // The secondary must see the client's ACK (its offset) before its VM talks.
        pvm.next().await?;
        svm.next().await?;

        let diverge = period.is_some_and(|n| i % n == n - 1);
        let pbody = response(i, len, false, diverge);
        let sbody = response(i, len, true, diverge);
        let pf = p.segments(&pbody, &[1448]);
        let sf = s.segments(&sbody, &[1000, 1448, 512]);
        pvm.send(&pf).await?;
        svm.send(&sf).await?;
        let mut got = Vec::with_capacity(pbody.len());
        let mut frames = 0;
        while frames < pf.len() {
            tokio::select! {
                f = client.next() => {
                    let f = f?;
                    let c = classify(f.ethernet_bytes());
                    if let Some(t) = c.tcp() {
                        got.extend_from_slice(&f.ethernet_bytes()[t.payload.clone()]);
                    }
                    frames += 1;
                }
                ev = pctl.line() => {
                    let ev = ev?;
                    if ev["event"] != "checkpoint-requested" {
                        continue;
                    }
                    say(format!(
                        "connection {i}: checkpoint requested ({}: {})",
                        ev["reason"].as_str().unwrap_or("?"),
                        ev["detail"].as_str().unwrap_or("")
                    ));
                    // The checkpoint: the secondary VM becomes a copy of the primary.
                    tokio::time::sleep(Duration::from_millis(args.checkpoint_ms)).await;
                    s = p.clone();
                    let done = pctl.command("checkpoint-done", &mut events).await?;
                    checkpoints += 1;
                    say(format!("connection {i}: checkpoint done, epoch {}", done["epoch"]));
                }
            }
        }
        pvm.send(&[p.fin()]).await?;
        svm.send(&[s.fin()]).await?;
        client.next().await?;
        if got == pbody {
            verified += 1;
        } else {
            say(format!(
                "connection {i}: client stream differs from the primary's"
            ));
        }
    }
    let stats = pctl.command("stats", &mut events).await?["stats"].clone();
    let ok = verified == args.connections;
    if args.json {
        println!(
            "{}",
            json!({"mode": "live", "connections": args.connections, "verified": verified,
                   "checkpoints_taken": checkpoints, "primary": stats})
        );
    } else {
        println!(
            "live demo: {verified}/{} connections verified, {} frames released, {checkpoints} checkpoints taken, {} frames compared from the secondary",
            args.connections, stats["released"]["frames"], stats["frames_in"]["secondary"]
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
