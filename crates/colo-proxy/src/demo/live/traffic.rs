//! The demo's traffic: a client and two simulated VMs on the proxies' ports.
//!
//! Each TCP connection: the client's SYN goes through the primary to the primary VM
//! and, mirrored over the link and the secondary's rewriter, to the secondary VM; the
//! VMs answer with their own ISNs and segment their responses differently, so the
//! secondary proxy must learn an offset and rewrite, and the primary must compare
//! streams rather than frames. Then the UDP exchanges: the client's query reaches
//! both VMs, both answer, the primary compares the datagrams. When the replies differ
//! the primary asks for a checkpoint on its control socket; the demo "takes" it
//! (sleeps `--checkpoint-ms`, makes the secondary VM a copy of the primary) and sends
//! `checkpoint-done`.

use std::collections::VecDeque;
use std::time::Duration;

use colo_core::Frame;
use colo_core::classify::TcpFlags;
use colo_core::sim::{FlowAddrs, TcpSender, Towards, client_tcp, udp_frame};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::super::rng::Rng;
use super::super::segment::{datagram_payload, tcp_view};
use super::monitor::Log;
use super::wire::{Ctl, Peer};

/// Body size of the small replies (every other connection).
pub const SMALL_BODY: usize = 300;
/// UDP flows the datagrams are spread over.
const UDP_FLOWS: u32 = 4;

/// What to send.
#[derive(Debug, Clone)]
pub struct Plan {
    /// TCP connections.
    pub connections: u32,
    /// Body of the bulk replies (even connections).
    pub bulk: usize,
    /// UDP exchanges.
    pub datagrams: u32,
    /// Every how many connections and datagrams the secondary diverges.
    pub diverge_every: Option<u32>,
    /// How long a checkpoint takes.
    pub checkpoint: Duration,
    /// Pause between two connections (a quarter of it between two datagrams).
    pub pace: Duration,
    /// Seed of the ISNs and segment sizes.
    pub seed: u64,
    /// Fault injection: the client loses every Nth data frame it receives.
    pub drop_every: Option<u64>,
}

impl Plan {
    fn diverges(&self, i: u32) -> bool {
        self.diverge_every.is_some_and(|n| i % n == n - 1)
    }

    /// Body size of connection `i`.
    pub fn body_len(&self, i: u32) -> usize {
        if i.is_multiple_of(2) {
            self.bulk
        } else {
            SMALL_BODY
        }
    }
}

/// The client's end-to-end check.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verification {
    /// TCP connections run.
    pub connections: u32,
    /// Connections closed by both sides (FINs exchanged and acknowledged).
    pub closed: u32,
    /// Connections whose client stream was exactly the primary VM's.
    pub connections_ok: u32,
    /// Bytes the primary VM sent on all connections.
    pub bytes_expected: u64,
    /// Bytes the client received.
    pub bytes_received: u64,
    /// UDP exchanges run.
    pub datagrams: u32,
    /// Exchanges where the client got exactly the primary VM's reply, once.
    pub datagrams_ok: u32,
    /// Data frames the client lost on purpose (`--fault-drop-released`).
    pub lost_on_purpose: u64,
    /// What went wrong, one line each.
    pub problems: Vec<String>,
}

impl Verification {
    /// Whether everything arrived exactly once and in order.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.connections_ok == self.connections
            && self.datagrams_ok == self.datagrams
    }
}

/// What the client got next.
enum Got {
    Frame(Frame),
    /// A data frame lost on purpose.
    Lost,
    /// A checkpoint was taken; the secondary VM is now a copy of the primary.
    Checkpoint,
}

/// The client, both VMs and the primary's control socket.
pub struct Traffic<'a> {
    client: Peer,
    pvm: Peer,
    svm: Peer,
    pctl: Ctl,
    log: &'a Log,
    poke: &'a Notify,
    plan: Plan,
    events: VecDeque<Value>,
    received_data_frames: u64,
    /// Every checkpoint: the primary's request event and the demo's timing.
    pub checkpoints: Vec<Value>,
    /// The client's verdict.
    pub verification: Verification,
}

impl<'a> Traffic<'a> {
    /// Connect the client and both VMs to the proxies' ports in `dir`.
    pub async fn connect(
        dir: &std::path::Path,
        plan: Plan,
        log: &'a Log,
        poke: &'a Notify,
    ) -> anyhow::Result<Self> {
        let pctl = Ctl::connect(&dir.join("primary.ctl")).await?;
        let client = Peer::connect(&dir.join("client.sock")).await?;
        let pvm = Peer::connect(&dir.join("pvm.sock")).await?;
        let svm = Peer::connect(&dir.join("svm.sock")).await?;
        Ok(Self {
            client,
            pvm,
            svm,
            pctl,
            log,
            poke,
            plan,
            events: VecDeque::new(),
            received_data_frames: 0,
            checkpoints: Vec::new(),
            verification: Verification::default(),
        })
    }

    /// Wait until the primary reports its link to the secondary up.
    pub async fn wait_link_up(&mut self) -> anyhow::Result<()> {
        for _ in 0..500 {
            let mut ev = Vec::new();
            let st = self.pctl.stats(&mut ev).await?;
            self.events.extend(ev);
            if st["link"]["up"] == true {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("the primary's link to the secondary never came up")
    }

    /// The primary's `stats` now.
    pub async fn primary_stats(&mut self) -> anyhow::Result<Value> {
        let mut ev = Vec::new();
        let st = self.pctl.stats(&mut ev).await?;
        self.events.extend(ev);
        Ok(st)
    }

    /// Run every connection, then every UDP exchange.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        for i in 0..self.plan.connections {
            if i > 0 {
                tokio::time::sleep(self.plan.pace).await;
            }
            self.connection(i).await?;
        }
        for j in 0..self.plan.datagrams {
            tokio::time::sleep(self.plan.pace / 4).await;
            self.exchange(j).await?;
        }
        Ok(())
    }

    /// The next thing the client sees: a released frame, or a checkpoint taken.
    async fn next_client(&mut self) -> anyhow::Result<Got> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                if ev["event"] == "checkpoint-requested" {
                    self.checkpoint(ev).await?;
                    return Ok(Got::Checkpoint);
                }
                continue;
            }
            tokio::select! {
                f = self.client.next() => {
                    let f = f?;
                    if let Some(n) = self.plan.drop_every
                        && carries_data(&f)
                    {
                        self.received_data_frames += 1;
                        if self.received_data_frames.is_multiple_of(n) {
                            self.verification.lost_on_purpose += 1;
                            return Ok(Got::Lost);
                        }
                    }
                    return Ok(Got::Frame(f));
                }
                ev = self.pctl.line() => self.events.push_back(ev?),
            }
        }
    }

    /// Take the checkpoint the primary asked for.
    async fn checkpoint(&mut self, ev: Value) -> anyhow::Result<()> {
        let asked_at = self.log.elapsed();
        self.log.event(&format!(
            "checkpoint #{} requested ({}): {}",
            ev["id"],
            ev["reason"].as_str().unwrap_or("?"),
            ev["detail"].as_str().unwrap_or("")
        ));
        self.poke.notify_one();
        tokio::time::sleep(self.plan.checkpoint).await;
        let flushed = |st: &Value| st["released"]["by_flush"].as_u64().unwrap_or(0);
        let before = flushed(&self.primary_stats().await?);
        let mut evs = Vec::new();
        let done = self.pctl.command("checkpoint-done", &mut evs).await?;
        self.events.extend(evs);
        let released = flushed(&self.primary_stats().await?).saturating_sub(before);
        self.log.event(&format!(
            "checkpoint #{} done after {} ms: epoch {}, {released} held frames released{}; \
             the secondary VM is a copy of the primary",
            ev["id"],
            self.plan.checkpoint.as_millis(),
            done["epoch"],
            if done["forwarded"] == true {
                ", checkpoint-done forwarded to the secondary"
            } else {
                ""
            }
        ));
        self.poke.notify_one();
        self.checkpoints.push(json!({
            "id": ev["id"], "reason": ev["reason"], "flow": ev["flow"],
            "detail": ev["detail"], "epoch": done["epoch"], "asked_at_s": asked_at,
            "released_frames": released,
        }));
        Ok(())
    }

    async fn connection(&mut self, i: u32) -> anyhow::Result<()> {
        let mut rng = Rng::derive(self.plan.seed, u64::from(i));
        let addrs = FlowAddrs::v4(i);
        let cisn = rng.next_u32();
        self.client
            .send(&[client_tcp(&addrs, cisn, 0, TcpFlags::SYN, b"")])
            .await?;
        self.pvm.next().await?;
        self.svm.next().await?;
        // Two real endpoints: each VM chooses its own ISN.
        let mut p = TcpSender::new(addrs, rng.next_u32(), cisn.wrapping_add(1));
        let mut s = TcpSender::new(addrs, rng.next_u32(), cisn.wrapping_add(1));
        self.pvm.send(&[p.syn_ack()]).await?;
        self.svm.send(&[s.syn_ack()]).await?;
        self.client_frames(1).await?;
        let ack = client_tcp(
            &addrs,
            cisn.wrapping_add(1),
            p.isn.wrapping_add(1),
            TcpFlags::ACK,
            b"",
        );
        self.client.send(&[ack]).await?;
        // The secondary must see the client's ACK (its offset) before its VM talks.
        self.pvm.next().await?;
        self.svm.next().await?;

        let diverge = self.plan.diverges(i);
        let len = self.plan.body_len(i);
        let pbody = response(i, len, false, diverge);
        let sbody = response(i, len, true, diverge);
        // ... and each segments its output its own way.
        let psizes = [1448];
        let ssizes = [1000 + rng.range(0, 448) as usize, 1448, 512];
        let pf = p.segments(&pbody, &psizes);
        let sf = s.segments(&sbody, &ssizes);
        self.pvm.send(&pf).await?;
        self.svm.send(&sf).await?;
        let mut got = Vec::with_capacity(pbody.len());
        let mut frames = 0;
        while frames < pf.len() {
            match self.next_client().await? {
                Got::Frame(f) => {
                    if let Some(v) = tcp_view(&f) {
                        got.extend_from_slice(&v.payload);
                    }
                    frames += 1;
                }
                Got::Lost => frames += 1,
                Got::Checkpoint => s = p.clone(),
            }
        }
        self.pvm.send(&[p.fin()]).await?;
        self.svm.send(&[s.fin()]).await?;
        self.client_frames(1).await?;
        // The client closes its side too; both VMs acknowledge its FIN.
        let cfin = client_tcp(
            &addrs,
            cisn.wrapping_add(1),
            p.next_seq,
            TcpFlags::FIN.union(TcpFlags::ACK),
            b"",
        );
        self.client.send(&[cfin]).await?;
        self.pvm.next().await?;
        self.svm.next().await?;
        self.pvm.send(&[p.ack_to(cisn.wrapping_add(2))]).await?;
        self.svm.send(&[s.ack_to(cisn.wrapping_add(2))]).await?;
        self.client_frames(1).await?;

        let v = &mut self.verification;
        v.connections += 1;
        v.closed += 1;
        v.bytes_expected += pbody.len() as u64;
        v.bytes_received += got.len() as u64;
        if got == pbody {
            v.connections_ok += 1;
        } else {
            let at = got.iter().zip(&pbody).take_while(|(a, b)| a == b).count();
            v.problems.push(format!(
                "connection {i}: received {} of {} bytes, first difference at offset {at}",
                got.len(),
                pbody.len()
            ));
        }
        Ok(())
    }

    /// Wait for `n` frames released to the client (taking checkpoints meanwhile).
    async fn client_frames(&mut self, n: usize) -> anyhow::Result<()> {
        let mut seen = 0;
        while seen < n {
            if matches!(self.next_client().await?, Got::Frame(_) | Got::Lost) {
                seen += 1;
            }
        }
        Ok(())
    }

    async fn exchange(&mut self, j: u32) -> anyhow::Result<()> {
        let addrs = FlowAddrs {
            vm_port: 53,
            ..FlowAddrs::v4(50_000 + j % UDP_FLOWS)
        };
        let query = format!("query {j}").into_bytes();
        self.client
            .send(&[udp_frame(&addrs, Towards::Vm, &query)])
            .await?;
        self.pvm.next().await?;
        self.svm.next().await?;
        let diverge = self.plan.diverges(j);
        let reply = |secondary: bool| {
            let stamp = if secondary && diverge { 2222 } else { 1111 };
            format!("answer {j} time {stamp}").into_bytes()
        };
        let preply = reply(false);
        self.pvm
            .send(&[udp_frame(&addrs, Towards::Client, &preply)])
            .await?;
        self.svm
            .send(&[udp_frame(&addrs, Towards::Client, &reply(true))])
            .await?;
        let got = loop {
            match self.next_client().await? {
                Got::Frame(f) => break datagram_payload(&f).map(|(_, p)| p),
                Got::Lost => break None,
                Got::Checkpoint => {}
            }
        };
        self.verification.datagrams += 1;
        if got.as_deref() == Some(preply.as_slice()) {
            self.verification.datagrams_ok += 1;
        } else {
            self.verification.problems.push(format!(
                "datagram {j}: the client got {got:?} instead of the primary's reply"
            ));
        }
        Ok(())
    }
}

/// Whether a released frame carries TCP payload or is a datagram.
fn carries_data(f: &Frame) -> bool {
    tcp_view(f).is_none_or(|v| !v.payload.is_empty())
}

/// What connection `i`'s server says; the secondary's clock differs on diverging ones.
fn response(i: u32, len: usize, secondary: bool, diverge: bool) -> Vec<u8> {
    let stamp = if secondary && diverge { 2222 } else { 1111 };
    let mut body =
        format!("HTTP/1.1 200 OK\r\nconnection: {i}\r\ntime: {stamp}\r\n\r\n").into_bytes();
    body.extend((0..len).map(|k| ((k as u32).wrapping_mul(31).wrapping_add(i * 7) % 251) as u8));
    body
}
