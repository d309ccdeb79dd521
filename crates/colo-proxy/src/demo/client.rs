//! The simulated client: opens the demo's TCP connections, sends one request on each,
//! acknowledges what the proxy releases, closes; sends the UDP queries. It only ever
//! sees released primary frames, and reassembles each connection by sequence number
//! so that the demo can check what arrived against what the primary sent.

use std::collections::{BTreeMap, HashMap};

use colo_core::classify::TcpFlags;
use colo_core::flow::FlowKey;
use colo_core::sim::{FlowAddrs, Segment, Towards, tcp_frame, udp_frame};
use colo_core::{Frame, Instant};

use super::content;
use super::rng::Rng;
use super::segment::{TcpView, datagram_payload, flow_of, tcp_view};

/// A byte stream rebuilt from segments that may arrive out of order or twice.
#[derive(Debug, Default)]
pub struct Reassembly {
    data: Vec<u8>,
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes received more than once (identical each time).
    pub duplicate_bytes: u64,
    /// Bytes received more than once with different values.
    pub conflicting_bytes: u64,
}

impl Reassembly {
    /// Add `bytes` at stream offset `offset`.
    pub fn insert(&mut self, offset: u64, bytes: &[u8]) {
        let have = self.data.len() as u64;
        let end = offset + bytes.len() as u64;
        let mut offset = offset;
        let mut bytes = bytes;
        if offset < have {
            let overlap_end = end.min(have);
            let n = (overlap_end - offset) as usize;
            let old = &self.data[offset as usize..overlap_end as usize];
            let (same, conflicting) = overlap_counts(old, &bytes[..n]);
            self.duplicate_bytes += same;
            self.conflicting_bytes += conflicting;
            bytes = &bytes[n..];
            offset = overlap_end;
        }
        if bytes.is_empty() {
            return;
        }
        if offset > have {
            match self.pending.get_mut(&offset) {
                Some(old) => {
                    let n = old.len().min(bytes.len());
                    let (same, conflicting) = overlap_counts(&old[..n], &bytes[..n]);
                    self.duplicate_bytes += same;
                    self.conflicting_bytes += conflicting;
                    if bytes.len() > old.len() {
                        old.extend_from_slice(&bytes[n..]);
                    }
                }
                None => {
                    self.pending.insert(offset, bytes.to_vec());
                }
            }
            return;
        }
        self.data.extend_from_slice(bytes);
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.data.len() as u64 {
                break;
            }
            let (at, chunk) = entry.remove_entry();
            self.insert(at, &chunk);
        }
    }

    /// The contiguous bytes from offset 0.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes held beyond a gap.
    #[must_use]
    pub fn pending_bytes(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
}

fn overlap_counts(old: &[u8], new: &[u8]) -> (u64, u64) {
    let differ = old.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
    (old.len() as u64 - differ, differ)
}

/// One client connection.
#[derive(Debug)]
struct ClientConn {
    addrs: FlowAddrs,
    isn: u32,
    snd_nxt: u32,
    server_isn: Option<u32>,
    ts_base: u32,
    ts_recent: u32,
    rx: Reassembly,
    fin_at: Option<u64>,
    fin_sent: bool,
    /// The server acknowledged our FIN.
    fin_acked: bool,
    done: bool,
    frames: u64,
}

impl ClientConn {
    fn segment(&self, now: Instant, seq: u32, flags: TcpFlags, payload: &[u8]) -> Frame {
        let ack = self
            .server_isn
            .unwrap_or(0)
            .wrapping_add(1)
            .wrapping_add(self.acked());
        let tsval = self.ts_base.wrapping_add((now.as_micros() / 1000) as u32);
        tcp_frame(
            &self.addrs,
            Towards::Vm,
            &Segment {
                seq,
                ack,
                flags,
                window: 65535,
                timestamps: Some((tsval, self.ts_recent)),
                payload,
            },
        )
    }

    /// Sequence space acknowledged: contiguous bytes, plus the FIN once reached.
    fn acked(&self) -> u32 {
        let n = self.rx.data().len() as u64;
        let fin = self.fin_at.is_some_and(|f| f == n);
        (n as u32).wrapping_add(u32::from(fin))
    }
}

/// What the client got on one connection, for verification.
#[derive(Debug)]
pub struct ConnReport<'a> {
    /// The bytes received, in order.
    pub data: &'a [u8],
    /// Bytes held beyond a gap (never delivered).
    pub pending_bytes: usize,
    /// Bytes received twice, identically.
    pub duplicate_bytes: u64,
    /// Bytes received twice, differently.
    pub conflicting_bytes: u64,
    /// Stream offset of the server's FIN, if received.
    pub fin_at: Option<u64>,
    /// The connection closed both ways.
    pub done: bool,
}

/// The simulated client.
#[derive(Debug)]
pub struct Client {
    conns: Vec<ClientConn>,
    by_flow: HashMap<FlowKey, usize>,
    udp_flows: Vec<FlowAddrs>,
    /// Per query: how often its answer arrived, and the first answer.
    answers: Vec<(u32, Option<Vec<u8>>)>,
    unexpected_frames: u64,
}

impl Client {
    /// A client for the TCP connections on `tcp`, sending `queries` UDP queries spread
    /// over the `udp` flows.
    #[must_use]
    pub fn new(seed: u64, tcp: &[FlowAddrs], udp: &[FlowAddrs], queries: u32) -> Self {
        let mut rng = Rng::derive(seed, 0x3000_0000);
        let conns: Vec<ClientConn> = tcp
            .iter()
            .map(|a| {
                let isn = rng.next_u32();
                ClientConn {
                    addrs: *a,
                    isn,
                    snd_nxt: isn,
                    server_isn: None,
                    ts_base: rng.next_u32(),
                    ts_recent: 0,
                    rx: Reassembly::default(),
                    fin_at: None,
                    fin_sent: false,
                    fin_acked: false,
                    done: false,
                    frames: 0,
                }
            })
            .collect();
        let mut by_flow = HashMap::new();
        for (i, c) in conns.iter().enumerate() {
            let syn = tcp_frame(&c.addrs, Towards::Vm, &Segment::default());
            by_flow.insert(flow_of(&syn), i);
        }
        Self {
            conns,
            by_flow,
            udp_flows: udp.to_vec(),
            answers: vec![(0, None); queries as usize],
            unexpected_frames: 0,
        }
    }

    /// The connection a frame belongs to.
    #[must_use]
    pub fn conn_of(&self, key: &FlowKey) -> Option<usize> {
        self.by_flow.get(key).copied()
    }

    /// Open connection `conn`: its SYN.
    pub fn open(&mut self, now: Instant, conn: usize) -> Option<Frame> {
        let c = self.conns.get_mut(conn)?;
        let f = c.segment(now, c.isn, TcpFlags::SYN, &[]);
        c.snd_nxt = c.isn.wrapping_add(1);
        Some(f)
    }

    /// UDP query number `index`, on flow `index % flows`.
    #[must_use]
    pub fn query(&self, index: u32) -> Option<Frame> {
        let n = self.udp_flows.len();
        let addrs = self.udp_flows.get(index as usize % n.max(1))?;
        Some(udp_frame(addrs, Towards::Vm, &content::udp_query(index)))
    }

    /// A frame released by the proxy arrived; returns the client's replies.
    pub fn on_released(&mut self, now: Instant, frame: &Frame) -> Vec<Frame> {
        if let Some(v) = tcp_view(frame) {
            return match self.conn_of(&v.key) {
                Some(conn) => self.on_tcp(now, conn, &v),
                None => {
                    self.unexpected_frames += 1;
                    Vec::new()
                }
            };
        }
        match datagram_payload(frame)
            .and_then(|(_, p)| content::udp_index(&p).map(|i| (i, p)))
            .and_then(|(i, p)| Some((self.answers.get_mut(i as usize)?, p)))
        {
            Some((slot, payload)) => {
                slot.0 += 1;
                slot.1.get_or_insert(payload);
            }
            None => self.unexpected_frames += 1,
        }
        Vec::new()
    }

    fn on_tcp(&mut self, now: Instant, conn: usize, v: &TcpView) -> Vec<Frame> {
        let Some(c) = self.conns.get_mut(conn) else {
            return Vec::new();
        };
        c.frames += 1;
        if let Some((val, _)) = v.timestamps {
            c.ts_recent = val;
        }
        if v.has(TcpFlags::SYN) {
            if c.server_isn.is_some() {
                return Vec::new(); // a duplicate SYN-ACK: already answered
            }
            c.server_isn = Some(v.seq());
            let request = content::http_request(conn);
            let seq = c.snd_nxt;
            c.snd_nxt = seq.wrapping_add(request.len() as u32);
            return vec![c.segment(now, seq, TcpFlags::ACK.union(TcpFlags::PSH), &request)];
        }
        let Some(server_isn) = c.server_isn else {
            return Vec::new();
        };
        let offset = u64::from(v.seq().wrapping_sub(server_isn.wrapping_add(1)));
        if !v.payload.is_empty() {
            c.rx.insert(offset, &v.payload);
        }
        if v.has(TcpFlags::FIN) {
            c.fin_at.get_or_insert(offset + v.payload.len() as u64);
        }
        if c.fin_sent && v.has(TcpFlags::ACK) && v.ack() == c.snd_nxt {
            c.fin_acked = true;
        }
        let done = c.fin_acked && c.fin_at == Some(c.rx.data().len() as u64);
        if done && !c.done {
            tracing::debug!(conn, bytes = c.rx.data().len(), "client connection closed");
        }
        c.done = done;
        if v.payload.is_empty() && !v.has(TcpFlags::FIN) {
            return Vec::new();
        }
        // Like an HTTP/1.1 client done with the connection: close once the whole
        // response (by its Content-Length) is in.
        let complete = content::response_length(c.rx.data()) == Some(c.rx.data().len());
        if complete && !c.fin_sent {
            c.fin_sent = true;
            let seq = c.snd_nxt;
            c.snd_nxt = seq.wrapping_add(1);
            return vec![c.segment(now, seq, TcpFlags::FIN.union(TcpFlags::ACK), &[])];
        }
        vec![c.segment(now, c.snd_nxt, TcpFlags::ACK, &[])]
    }

    /// Whether every connection closed and every query was answered.
    #[must_use]
    pub fn all_done(&self) -> bool {
        self.conns.iter().all(|c| c.done) && self.answers.iter().all(|a| a.0 > 0)
    }

    /// Connections that closed both ways.
    #[must_use]
    pub fn connections_done(&self) -> usize {
        self.conns.iter().filter(|c| c.done).count()
    }

    /// What connection `conn` received.
    #[must_use]
    pub fn report(&self, conn: usize) -> Option<ConnReport<'_>> {
        let c = self.conns.get(conn)?;
        Some(ConnReport {
            data: c.rx.data(),
            pending_bytes: c.rx.pending_bytes(),
            duplicate_bytes: c.rx.duplicate_bytes,
            conflicting_bytes: c.rx.conflicting_bytes,
            fin_at: c.fin_at,
            done: c.done,
        })
    }

    /// How often the answer to query `index` arrived, and the first one.
    #[must_use]
    pub fn answer(&self, index: u32) -> Option<(u32, Option<&[u8]>)> {
        let (n, p) = self.answers.get(index as usize)?;
        Some((*n, p.as_deref()))
    }

    /// Released frames the client could not place.
    #[must_use]
    pub fn unexpected_frames(&self) -> u64 {
        self.unexpected_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembly_handles_order_duplicates_and_conflicts() {
        let mut r = Reassembly::default();
        r.insert(4, b"efgh");
        assert_eq!(r.data(), b"");
        assert_eq!(r.pending_bytes(), 4);
        r.insert(0, b"abcd");
        assert_eq!(r.data(), b"abcdefgh");
        assert_eq!(r.pending_bytes(), 0);
        r.insert(2, b"cdefgh");
        assert_eq!(r.duplicate_bytes, 6);
        r.insert(6, b"gHij");
        assert_eq!(r.data(), b"abcdefghij");
        assert_eq!(r.conflicting_bytes, 1);
        assert_eq!(r.duplicate_bytes, 7);
        // Overlapping out-of-order pieces merge once the gap closes.
        r.insert(14, b"opq");
        r.insert(12, b"mnop");
        r.insert(12, b"mn");
        r.insert(10, b"kl");
        assert_eq!(r.data(), b"abcdefghijklmnopq");
        assert_eq!(r.duplicate_bytes, 7 + 2 + 2);
        assert_eq!(r.conflicting_bytes, 1);
    }
}
