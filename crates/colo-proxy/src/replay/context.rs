//! Pass 3 (only when something diverged): read the captures again and collect, for
//! each connection's first divergence, the bytes around it on both sides, the packets
//! that carried it, and with `--evidence` a small pcapng holding both sides' frames.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use colo_core::classify::{L4, TcpFlags, classify};
use colo_core::engine::{Close, DivergenceKind};
use colo_core::flow::FlowProto;

use super::args::ReplayArgs;
use super::capture::{CaptureReader, normalize};
use super::headers;
use super::index::CaptureIndex;
use super::progress::Progress;
use super::report::{DivergenceReport, Excerpt, hex_text, time_str};
use super::run::{State, Track, capture_time};

/// Frames kept per side for an evidence file.
const EVIDENCE_FRAMES: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A stream offset.
    Offset(u64),
    /// A datagram index.
    Datagram(u64),
}

#[derive(Debug, Default)]
struct Found {
    window: Vec<Option<u8>>,
    packet: Option<(u64, u64)>,
    frames: Vec<(u64, Vec<u8>)>,
    track: Track,
}

fn close_at(c: Close) -> Option<u64> {
    match c {
        Close::Open => None,
        Close::Fin(x) | Close::Rst(x) => Some(x),
    }
}

/// Collect the context of every divergence; returns the report entries by connection.
pub fn gather(
    args: &ReplayArgs,
    ix: &[CaptureIndex],
    state: &mut State,
    progress: &mut Progress,
) -> HashMap<usize, DivergenceReport> {
    let mut targets: HashMap<usize, Target> = HashMap::new();
    for (id, c) in state.conns.iter().enumerate() {
        let Some(d) = &c.divergence else { continue };
        let fallback = c.track[0].end.min(c.track[1].end);
        let t = match &d.kind {
            DivergenceKind::Payload { offset, .. }
            | DivergenceKind::Retransmission { offset, .. } => Target::Offset(*offset),
            DivergenceKind::CloseMismatch { primary, secondary } => Target::Offset(
                close_at(*primary)
                    .or_else(|| close_at(*secondary))
                    .unwrap_or(fallback),
            ),
            DivergenceKind::Handshake { .. } => Target::Offset(0),
            DivergenceKind::Datagram { index, .. } => Target::Datagram(*index),
            _ if c.proto == FlowProto::Tcp => Target::Offset(fallback),
            _ => Target::Datagram(c.track[0].datagrams.min(c.track[1].datagrams)),
        };
        targets.insert(id, t);
    }
    let mut out = HashMap::new();
    if targets.is_empty() {
        return out;
    }
    let ctx = args.context.max(1) as u64;
    let mut found: [HashMap<usize, Found>; 2] = [HashMap::new(), HashMap::new()];
    let paths = [args.primary.as_path(), args.secondary.as_path()];
    progress.stage(
        "pass 3 (divergence context)",
        ix.iter().map(|i| i.size).sum(),
    );
    for s in 0..2 {
        progress.set_base(if s == 1 { ix[0].size } else { 0 });
        scan(paths[s], s, state, &targets, ctx, &mut found[s], progress);
    }
    if let Some(dir) = &args.evidence {
        let _ = std::fs::create_dir_all(dir);
    }
    for (&id, &target) in &targets {
        let c = &state.conns[id];
        let Some(d) = &c.divergence else { continue };
        let excerpt = |s: usize| -> Option<Excerpt> {
            c.info[s].as_ref()?;
            let f = found[s].get(&id);
            let (from, mark) = match target {
                Target::Offset(x) => (x.saturating_sub(ctx), (x - x.saturating_sub(ctx)) as usize),
                Target::Datagram(_) => (0, usize::MAX),
            };
            let window = f.map(|f| f.window.clone()).unwrap_or_default();
            let (hex, text) = hex_text(&window, mark);
            let packet = f.and_then(|f| f.packet);
            Some(Excerpt {
                packet: packet.map(|p| p.0),
                time: packet.map(|p| time_str(p.1)),
                from_offset: from,
                hex,
                text,
            })
        };
        let mut evidence = None;
        if let Some(dir) = &args.evidence {
            let name = format!("conn{}-{}.pcapng", id + 1, d.reason().as_str());
            let path = dir.join(&name);
            let mut frames: Vec<(u64, u32, &[u8])> = Vec::new();
            for (s, fs) in found.iter().enumerate() {
                if let Some(f) = fs.get(&id) {
                    frames.extend(f.frames.iter().map(|(t, b)| (*t, s as u32, b.as_slice())));
                }
            }
            frames.sort_by_key(|f| f.0);
            match write_pcapng(&path, &frames) {
                Ok(()) => evidence = Some(path.display().to_string()),
                Err(e) => eprintln!("warning: cannot write {}: {e}", path.display()),
            }
        }
        out.insert(
            id,
            DivergenceReport {
                reason: d.reason().as_str(),
                description: d.to_string(),
                time: time_str(capture_time(&state.zero, 0, d.at)),
                offset: match target {
                    Target::Offset(x) => Some(x),
                    Target::Datagram(_) => None,
                },
                datagram: match target {
                    Target::Datagram(i) => Some(i),
                    Target::Offset(_) => None,
                },
                primary: excerpt(0),
                secondary: excerpt(1),
                evidence,
            },
        );
    }
    out
}

fn scan(
    path: &Path,
    s: usize,
    state: &State,
    targets: &HashMap<usize, Target>,
    ctx: u64,
    found: &mut HashMap<usize, Found>,
    progress: &mut Progress,
) {
    let Ok(mut reader) = CaptureReader::open(path) else {
        return;
    };
    let mut eth = Vec::new();
    while let Ok(Some(p)) = reader.next_packet() {
        let (number, ts) = (p.number, p.ts_ns);
        let missing = normalize(&p, &mut eth).unwrap_or(0);
        progress.tick(reader.position());
        let c = classify(&eth);
        let Some(id) = state.maps[s].get(&c.key, number) else {
            continue;
        };
        let Some(&target) = targets.get(&id) else {
            continue;
        };
        let conn = &state.conns[id];
        let Some(info) = &conn.info[s] else { continue };
        let non_ip = matches!(
            c.key.proto,
            FlowProto::Arp | FlowProto::Ethertype(_) | FlowProto::Unparsed
        );
        let from_vm = if non_ip {
            state.vm[s].macs.is_empty() || state.vm[s].is_vm_mac(headers::src_mac(&eth))
        } else {
            c.dir == info.vm_dir
        };
        if !from_vm {
            continue;
        }
        let f = found.entry(id).or_default();
        let keep = match (&c.l4, target) {
            (L4::Tcp(t), Target::Offset(x)) => {
                let start = f.track.tcp(t.seq.0, t.flags, t.payload_len() + missing);
                let from = x.saturating_sub(ctx) as i64;
                let to = (x + ctx) as i64;
                if f.window.is_empty() {
                    f.window = vec![None; (to - from) as usize];
                }
                let payload = &eth[t.payload.clone()];
                for (i, b) in payload.iter().enumerate() {
                    let o = start + i as i64;
                    if o >= from && o < to {
                        let slot = &mut f.window[(o - from) as usize];
                        if slot.is_none() {
                            *slot = Some(*b);
                        }
                    }
                }
                let end = start + payload.len() as i64;
                let xi = x as i64;
                let ctl = t.flags.contains(TcpFlags::SYN)
                    || t.flags.contains(TcpFlags::FIN)
                    || t.flags.contains(TcpFlags::RST);
                let hit = (start <= xi && xi < end)
                    || (ctl && payload.is_empty() && start == xi)
                    || (t.flags.contains(TcpFlags::FIN) && end == xi)
                    || (x == 0 && t.flags.contains(TcpFlags::SYN));
                if hit && f.packet.is_none() {
                    f.packet = Some((number, ts));
                }
                end >= from - 4 * ctx as i64 && start <= to + 4 * ctx as i64
            }
            (L4::Datagram(dm), Target::Datagram(i)) => {
                let idx = f.track.datagrams;
                f.track.datagrams += 1;
                if idx == i {
                    f.packet = Some((number, ts));
                    f.window = eth[dm.body.clone()]
                        .iter()
                        .take(2 * ctx as usize)
                        .map(|b| Some(*b))
                        .collect();
                }
                idx + 3 >= i && idx <= i + 3
            }
            _ => false,
        };
        if keep && f.frames.len() < EVIDENCE_FRAMES {
            f.frames.push((ts, eth.clone()));
        }
    }
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

fn block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
    let len = (12 + body.len()) as u32;
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&len.to_le_bytes());
}

/// Write a pcapng with two Ethernet interfaces (0 = primary, 1 = secondary,
/// nanosecond timestamps) and the given frames `(time ns, interface, bytes)`.
pub fn pcapng_bytes(frames: &[(u64, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    // Section header: byte-order magic, version 1.0, unknown section length.
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    for name in ["primary", "secondary"] {
        let mut idb = Vec::new();
        idb.extend_from_slice(&1u16.to_le_bytes()); // LINKTYPE_ETHERNET
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&0u32.to_le_bytes()); // snaplen: unlimited
        idb.extend_from_slice(&2u16.to_le_bytes()); // if_name
        idb.extend_from_slice(&(name.len() as u16).to_le_bytes());
        idb.extend_from_slice(name.as_bytes());
        pad4(&mut idb);
        idb.extend_from_slice(&9u16.to_le_bytes()); // if_tsresol = 10^-9
        idb.extend_from_slice(&1u16.to_le_bytes());
        idb.extend_from_slice(&[9, 0, 0, 0]);
        idb.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
        block(&mut out, 1, &idb);
    }
    for (ts, iface, data) in frames {
        let mut epb = Vec::new();
        epb.extend_from_slice(&iface.to_le_bytes());
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*ts as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        pad4(&mut epb);
        block(&mut out, 6, &epb);
    }
    out
}

fn write_pcapng(path: &Path, frames: &[(u64, u32, &[u8])]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(&pcapng_bytes(frames))
}
