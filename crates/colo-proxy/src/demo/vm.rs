//! A simulated VM: on every demo connection an HTTP-like server that answers one
//! request with one response and closes, and a UDP responder.
//!
//! Both VMs run this same deterministic program; what makes them differ is their
//! [`VmProfile`]: TCP segmentation, pacing, their own ISNs and timestamp clocks, and,
//! on replies chosen to diverge, a skewed wall clock. A checkpoint turns the secondary
//! into a copy of the primary ([`Vm::become_copy_of`]).

use bytes::Bytes;
use colo_core::classify::TcpFlags;
use colo_core::sim::{FlowAddrs, TcpSender, Towards, udp_frame};
use colo_core::{Duration, Frame, Instant, Side};

use super::content;
use super::rng::Rng;
use super::segment::TcpView;

/// How much unacknowledged response data a VM keeps in flight per connection.
pub const SEND_WINDOW: usize = 64 * 1024;

/// What distinguishes one simulated VM from the other.
#[derive(Debug, Clone)]
pub struct VmProfile {
    /// Which VM this is.
    pub side: Side,
    /// Segment sizes its TCP stack uses, one picked at random per segment.
    pub segment_sizes: &'static [usize],
    /// Microseconds between two segments of one connection (inclusive range).
    pub pace_us: (u64, u64),
    /// Microseconds from a complete request to the first response byte.
    pub think_us: (u64, u64),
    /// Added to this VM's clock readings on replies chosen to diverge.
    pub clock_skew_us: u64,
    /// Origin of its TCP timestamp clocks.
    pub ts_base: u32,
    /// Stream of its random choices.
    pub rng_stream: u64,
}

impl VmProfile {
    /// The primary's host: full-size segments, steady pacing.
    #[must_use]
    pub fn primary() -> Self {
        Self {
            side: Side::Primary,
            segment_sizes: &[1448],
            pace_us: (150, 350),
            think_us: (300, 600),
            clock_skew_us: 0,
            ts_base: 0x1000_0000,
            rng_stream: 0x10,
        }
    }

    /// The secondary's host: other segment sizes, jumpier pacing, a clock 1.25 s ahead.
    #[must_use]
    pub fn secondary() -> Self {
        Self {
            side: Side::Secondary,
            segment_sizes: &[700, 1400, 1400],
            pace_us: (120, 450),
            think_us: (200, 900),
            clock_skew_us: 1_250_000,
            ts_base: 0x7000_0000,
            rng_stream: 0x20,
        }
    }
}

/// The demo's scenario parameters every VM needs.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Seed of all content.
    pub seed: u64,
    /// Response body bytes per connection.
    pub body_len: usize,
    /// Every how many connections and datagrams the secondary's replies differ.
    pub diverge_every: Option<u32>,
}

impl Workload {
    /// Whether reply number `n` (a connection or a datagram index) is one that
    /// differs between the VMs.
    #[must_use]
    pub fn diverges(&self, n: u64) -> bool {
        self.diverge_every
            .is_some_and(|every| (n + 1).is_multiple_of(u64::from(every)))
    }
}

/// One connection's server state.
#[derive(Debug, Clone)]
struct VmConn {
    addrs: FlowAddrs,
    /// This VM's ISN for the connection.
    isn: u32,
    /// The TCP sender once the client's SYN has arrived.
    tx: Option<TcpSender>,
    request: Vec<u8>,
    response: Option<Bytes>,
    /// Response bytes sent.
    sent: usize,
    /// Response bytes the client acknowledged.
    acked: usize,
    /// Size of the next segment.
    next_segment: usize,
    fin_sent: bool,
    /// The client closed its side.
    client_fin: bool,
    /// No response byte before this time (the server "thinks").
    ready_at: Instant,
}

/// A simulated VM.
#[derive(Debug)]
pub struct Vm {
    profile: VmProfile,
    work: Workload,
    conns: Vec<VmConn>,
    rng: Rng,
}

impl Vm {
    /// A VM serving connections on `addrs`, with ISN `isns[i]` on connection `i`.
    #[must_use]
    pub fn new(profile: VmProfile, work: Workload, addrs: &[FlowAddrs], isns: &[u32]) -> Self {
        let mut rng = Rng::derive(work.seed, profile.rng_stream);
        let conns = addrs
            .iter()
            .zip(isns)
            .map(|(a, isn)| VmConn {
                addrs: *a,
                isn: *isn,
                tx: None,
                request: Vec::new(),
                response: None,
                sent: 0,
                acked: 0,
                next_segment: pick(&mut rng, profile.segment_sizes),
                fin_sent: false,
                client_fin: false,
                ready_at: Instant::ZERO,
            })
            .collect();
        Self {
            profile,
            work,
            conns,
            rng,
        }
    }

    /// The complete response of connection `conn`, once the request has arrived.
    #[must_use]
    pub fn response(&self, conn: usize) -> Option<&Bytes> {
        self.conns.get(conn)?.response.as_ref()
    }

    /// A random delay between two segments of one connection.
    pub fn pace(&mut self) -> Duration {
        let (lo, hi) = self.profile.pace_us;
        Duration::from_micros(self.rng.range(lo, hi))
    }

    /// A random number for the VM's network path (reordering, duplicates, delays).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn clock_micros(&self, now: Instant, diverging: bool) -> u64 {
        let skew = if diverging {
            self.profile.clock_skew_us
        } else {
            0
        };
        now.as_micros() + skew
    }

    /// A client TCP segment of connection `conn` arrived (already in this VM's
    /// sequence space). Returns the frames sent in immediate reply.
    pub fn on_client_tcp(&mut self, now: Instant, conn: usize, seg: &TcpView) -> Vec<Frame> {
        let diverging = self.work.diverges(conn as u64);
        let clock = self.clock_micros(now, diverging);
        let think = {
            let (lo, hi) = self.profile.think_us;
            Duration::from_micros(self.rng.range(lo, hi))
        };
        let ts_base = self.profile.ts_base;
        let (seed, body_len) = (self.work.seed, self.work.body_len);
        let Some(c) = self.conns.get_mut(conn) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if seg.has(TcpFlags::SYN) {
            let tx = c.tx.get_or_insert_with(|| {
                let mut tx = TcpSender::new(c.addrs, c.isn, seg.seq().wrapping_add(1));
                tx.ts_base = Some(ts_base.wrapping_add(conn as u32 * 7919));
                tx
            });
            if let Some((val, _)) = seg.timestamps {
                tx.ts_ecr = val;
            }
            out.push(tx.syn_ack());
            return out;
        }
        let Some(tx) = c.tx.as_mut() else {
            return out; // no SYN seen: nothing to talk about
        };
        if let Some((val, _)) = seg.timestamps {
            tx.ts_ecr = val;
        }
        if seg.has(TcpFlags::ACK) {
            // Acknowledged response bytes: ack - (ISN + 1), ignoring anything that is not
            // within what was sent (a wrong translation would show up here as a stall).
            let off = seg.ack().wrapping_sub(c.isn.wrapping_add(1)) as usize;
            if off <= c.sent + usize::from(c.fin_sent) {
                c.acked = c.acked.max(off.min(c.sent));
            } else {
                tracing::warn!(
                    side = self.profile.side.name(),
                    conn,
                    ack = seg.ack(),
                    "client acknowledges data never sent"
                );
            }
        }
        let mut expected = tx.ack;
        if !seg.payload.is_empty() && seg.seq() == expected {
            c.request.extend_from_slice(&seg.payload);
            expected = expected.wrapping_add(seg.payload.len() as u32);
            tx.ack = expected;
            if c.response.is_none() && content::request_complete(&c.request) {
                let response = content::http_response(seed, conn, body_len, clock);
                tracing::debug!(
                    side = self.profile.side.name(),
                    conn,
                    bytes = response.len(),
                    "request complete, responding"
                );
                c.response = Some(response);
                c.ready_at = now + think;
            }
        }
        if seg.has(TcpFlags::FIN) && seg.seq().wrapping_add(seg.payload.len() as u32) == expected {
            // The client is done: close too, with a FIN (acknowledging the client's)
            // once the whole response is out. The client closes first on purpose: a
            // server closing first sends its last ACK after its own FIN, and
            // colo-core's engine currently holds such an ACK (stream offset FIN + 1,
            // beyond the matched bytes) until the compare timeout asks for a
            // checkpoint.
            tx.ack = expected.wrapping_add(1);
            c.client_fin = true;
        }
        out
    }

    /// A client datagram number `index` arrived on `addrs`: the reply.
    pub fn on_client_datagram(&mut self, now: Instant, addrs: &FlowAddrs, index: u32) -> Frame {
        let diverging = self.work.diverges(u64::from(index));
        let clock = self.clock_micros(now, diverging);
        let reply = content::udp_reply(self.work.seed, index, clock);
        udp_frame(addrs, Towards::Client, &reply)
    }

    /// When connection `conn` can send its next segment, if it has one and the window
    /// allows (`now` at the earliest).
    #[must_use]
    pub fn ready_at(&self, now: Instant, conn: usize) -> Option<Instant> {
        let c = self.conns.get(conn)?;
        c.tx.as_ref()?;
        let response = c.response.as_ref()?;
        if c.fin_sent {
            return None;
        }
        let remaining = response.len() - c.sent;
        let next = c.next_segment.min(remaining);
        let ready = if remaining == 0 {
            c.client_fin
        } else {
            c.sent + next <= c.acked + SEND_WINDOW
        };
        ready.then_some(now.max(c.ready_at))
    }

    /// Send the next segment of connection `conn` (data, or the FIN once the whole
    /// response is out and the client has closed), if [`Vm::ready_at`] allows it now.
    pub fn send_next(&mut self, now: Instant, conn: usize) -> Option<Frame> {
        if self.ready_at(now, conn)? > now {
            return None;
        }
        let sizes = self.profile.segment_sizes;
        let next_size = pick(&mut self.rng, sizes);
        let c = self.conns.get_mut(conn)?;
        let response = c.response.clone()?;
        let tx = c.tx.as_mut()?;
        if c.sent == response.len() {
            c.fin_sent = true;
            return Some(tx.fin());
        }
        let n = c.next_segment.min(response.len() - c.sent);
        let frame = tx.data(&response[c.sent..c.sent + n]);
        c.sent += n;
        c.next_segment = next_size;
        Some(frame)
    }

    /// Take over `other`'s state, as a checkpoint does: afterwards this VM continues
    /// exactly where `other` is, with `other`'s sequence numbers and clocks. Its own
    /// profile (segmentation, pacing, clock skew) stays: those model the host. So do
    /// its ISNs for connections not opened yet: a guest's ISN generator mixes in time,
    /// so they differ again right after a checkpoint.
    pub fn become_copy_of(&mut self, other: &Self) {
        for (mine, theirs) in self.conns.iter_mut().zip(&other.conns) {
            let isn = if theirs.tx.is_some() {
                theirs.isn
            } else {
                mine.isn
            };
            mine.clone_from(theirs);
            mine.isn = isn;
        }
    }
}

fn pick(rng: &mut Rng, sizes: &[usize]) -> usize {
    let i = rng.range(0, sizes.len().saturating_sub(1) as u64) as usize;
    sizes.get(i).copied().unwrap_or(1448).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::segment::tcp_view;
    use colo_core::sim::client_tcp;

    fn profile(side: Side) -> VmProfile {
        VmProfile {
            side,
            segment_sizes: &[1000],
            pace_us: (10, 10),
            think_us: (0, 0),
            clock_skew_us: 0,
            ts_base: 1,
            rng_stream: 1,
        }
    }

    fn client(a: &FlowAddrs, seq: u32, ack: u32, flags: TcpFlags, payload: &[u8]) -> TcpView {
        tcp_view(&client_tcp(a, seq, ack, flags, payload)).unwrap()
    }

    #[test]
    fn serves_one_response_within_the_window_and_closes_after_the_client() {
        let a = FlowAddrs::v4(0);
        let work = Workload {
            seed: 1,
            body_len: 100_000,
            diverge_every: None,
        };
        let mut vm = Vm::new(profile(Side::Primary), work, &[a], &[500]);
        let t = Instant::ZERO;
        assert!(vm.ready_at(t, 0).is_none());
        let synack = vm.on_client_tcp(t, 0, &client(&a, 99, 0, TcpFlags::SYN, &[]));
        assert_eq!(synack.len(), 1);
        let req = content::http_request(0);
        let req_end = 100 + req.len() as u32;
        let none = vm.on_client_tcp(t, 0, &client(&a, 100, 501, TcpFlags::ACK, &req));
        assert!(none.is_empty());
        let total = vm.response(0).unwrap().len();
        let mut sent = 0;
        while let Some(f) = vm.send_next(t, 0) {
            sent += tcp_view(&f).unwrap().payload.len();
        }
        assert_eq!(sent, SEND_WINDOW / 1000 * 1000, "stops at the window");
        // Each acknowledgement opens the window again, until everything is out.
        loop {
            let ack = 501 + sent as u32;
            vm.on_client_tcp(t, 0, &client(&a, req_end, ack, TcpFlags::ACK, &[]));
            let before = sent;
            while let Some(f) = vm.send_next(t, 0) {
                let v = tcp_view(&f).unwrap();
                assert!(!v.has(TcpFlags::FIN));
                sent += v.payload.len();
            }
            if sent == before {
                break;
            }
        }
        assert_eq!(sent, total);
        assert!(vm.ready_at(t, 0).is_none(), "no FIN before the client's");
        let fin_ack = TcpFlags::FIN.union(TcpFlags::ACK);
        vm.on_client_tcp(t, 0, &client(&a, req_end, 501 + sent as u32, fin_ack, &[]));
        let fin = tcp_view(&vm.send_next(t, 0).unwrap()).unwrap();
        assert!(fin.has(TcpFlags::FIN));
        assert_eq!(fin.ack(), req_end + 1);
        assert!(vm.send_next(t, 0).is_none());
    }

    #[test]
    fn diverging_replies_use_the_skewed_clock() {
        let work = Workload {
            seed: 1,
            body_len: 10,
            diverge_every: Some(2),
        };
        assert!(!work.diverges(0) && work.diverges(1) && work.diverges(3));
        let a = FlowAddrs::v4(0);
        let mut p = Vm::new(profile(Side::Primary), work.clone(), &[a], &[1]);
        let mut skewed = profile(Side::Secondary);
        skewed.clock_skew_us = 1_250_000;
        let mut s = Vm::new(skewed, work, &[a], &[1]);
        let t = Instant::from_millis(3);
        assert_eq!(
            p.on_client_datagram(t, &a, 0),
            s.on_client_datagram(t, &a, 0)
        );
        assert_ne!(
            p.on_client_datagram(t, &a, 1),
            s.on_client_datagram(t, &a, 1)
        );
    }
}
