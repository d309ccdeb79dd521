//! Checkpoints for an offline replay of two independent captures.
//!
//! Live, a completed checkpoint makes the secondary VM a copy of the primary
//! ([`Engine::handle_checkpoint_done`]): both restart from the primary's position and
//! the secondary's state is replaced by the primary's. Two captures cannot show that:
//! the secondary's capture goes on with the secondary's own state. To count what the
//! live proxy would have asked for, the replay uses this model instead
//! ([`Engine::handle_checkpoint_resync`]):
//!
//! - A connection that has **not diverged** is left as it is: its matched front, the
//!   bytes each side holds beyond it and its held primary frames stay, so the two
//!   captures keep being compared byte for byte (the secondary, had it been a copy,
//!   would have continued with the same bytes).
//! - A **diverged** connection is resynchronised: its held primary frames are released,
//!   the secondary's unmatched bytes (or datagrams) are discarded, and comparison
//!   restarts with each side at the position *it* had reached: the primary's next byte
//!   after its send position is compared with the secondary's next byte after *its* send
//!   position. A side that had sent nothing yet continues in the primary's offsets.
//!   Control state (SYN, FIN, RST, acknowledgements) is copied from the primary, as a
//!   copy would have it.
//!
//! Every later divergence is then a new checkpoint request through the same gate
//! (`checkpoint_min_interval`, one request outstanding), so the count is exact under
//! this model.

use crate::flow::{FlowDir, FlowKey};
use crate::frame::Side;
use crate::time::Instant;

use super::conn::{DatagramConn, HeldFrame, Proto, TcpConn};
use super::table::ConnKey;
use super::{DropReason, Engine};

impl Engine {
    /// A checkpoint completed during an offline replay of two independent captures,
    /// where the secondary's capture goes on with its own state instead of becoming a
    /// copy of the primary. The live daemon uses [`Engine::handle_checkpoint_done`].
    ///
    /// - A connection that has not diverged is left as it is (matched front, bytes held
    ///   beyond it, held primary frames): the captures keep being compared.
    /// - A diverged connection is resynchronised: its held primary frames are released,
    ///   the secondary's unmatched bytes or datagrams are discarded, and comparison
    ///   restarts with each side at the end of the furthest stream byte it had sent;
    ///   control state (SYN, FIN, RST, acknowledgements) is copied from the primary.
    ///
    /// Later divergences go through the same checkpoint gate, so the requests counted
    /// are exact under this model.
    pub fn handle_checkpoint_resync(&mut self, now: Instant) {
        self.advance(now);
        let mut released: Vec<HeldFrame> = self.overflow.drain(..).collect();
        let mut freed: usize = released.iter().map(|h| h.frame.data.len()).sum();
        let slots: Vec<u32> = self.table.slots().collect();
        for slot in slots {
            let Some(conn) = self.table.get_mut(slot) else {
                continue;
            };
            if !conn.diverged {
                continue;
            }
            let before = conn.bytes();
            released.extend(conn.held.drain());
            let discarded = match &mut conn.proto {
                Proto::Tcp(tcp) => resync_tcp(tcp),
                Proto::Datagram(dg) => resync_datagrams(dg),
            };
            conn.held_bytes = 0;
            conn.buffered_bytes = match &conn.proto {
                Proto::Tcp(tcp) => {
                    tcp.streams[0].buffered_bytes() + tcp.streams[1].buffered_bytes()
                }
                Proto::Datagram(_) => 0,
            };
            conn.diverged = false;
            conn.limit_reported = false;
            conn.secondary_pending_since = None;
            freed += before.saturating_sub(conn.bytes());
            self.stats
                .drop(Side::Secondary, DropReason::SecondaryDiscarded, discarded);
            self.table.mark_quiescent(slot);
            self.schedule(slot);
        }
        released.sort_unstable_by_key(|h| h.arrival);
        self.stats.held_frames = self.stats.held_frames.saturating_sub(released.len() as u64);
        self.stats.released_by_flush += released.len() as u64;
        for held in released {
            self.release(held.frame);
        }
        self.total_bytes = self.total_bytes.saturating_sub(freed);
        self.total_limit_reported = false;
        self.epoch += 1;
        self.stats.checkpoints_done += 1;
        self.gate.done(self.now);
    }

    /// Forget the connection of `flow` (either direction): a new connection of an
    /// offline replay reuses its addresses and ports (a 4-tuple reused after close, as
    /// TIME_WAIT allows, well inside `close_linger`). Its held primary frames are
    /// released. Returns whether it still had something waiting for comparison (held
    /// frames or unmatched secondary output), which the caller reports.
    pub fn forget_connection(&mut self, flow: &FlowKey) -> bool {
        let mut pending = false;
        for dir in [FlowDir::LoToHi, FlowDir::HiToLo] {
            let Some(slot) = self.table.lookup(&ConnKey { flow: *flow, dir }) else {
                continue;
            };
            let Some(mut conn) = self.table.remove(slot) else {
                continue;
            };
            pending |= !conn.is_quiescent() && !conn.diverged;
            self.total_bytes = self.total_bytes.saturating_sub(conn.bytes());
            let held: Vec<HeldFrame> = conn.held.drain().collect();
            self.stats.held_frames = self.stats.held_frames.saturating_sub(held.len() as u64);
            self.stats.connections_expired += 1;
            for h in held {
                self.release(h.frame);
            }
        }
        pending
    }
}

/// Restart a diverged stream with each side at its own send position. Returns the
/// secondary bytes discarded.
fn resync_tcp(tcp: &mut TcpConn) -> u64 {
    let discarded = (tcp.streams[1].buffered_bytes() + tcp.parked_bytes) as u64;
    tcp.parked.clear();
    tcp.parked_bytes = 0;
    // Each side's send position: the end of the furthest stream byte it sent. (Not
    // `next_seq`: in the shared space the secondary's SYN keeps its own number.)
    let primary_at = tcp.streams[0].highest_end();
    let secondary_at = tcp.streams[1].highest_end();
    tcp.streams[0].reset(primary_at);
    tcp.streams[1].reset(primary_at);
    let own = &tcp.sides[1];
    let mut copy = tcp.sides[0].clone();
    // The secondary's byte at `secondary_at` is placed at `primary_at` from now on.
    copy.base = match own.base {
        Some(base) => Some(base.add(secondary_at.wrapping_sub(primary_at) as u32)),
        None => tcp.sides[0].base,
    };
    copy.window = own.window.or(copy.window);
    tcp.sides[1] = copy;
    discarded
}

/// Restart a diverged datagram flow: the secondary's unmatched datagrams are discarded
/// (the primary's were released by the caller); the index keeps counting.
fn resync_datagrams(dg: &mut DatagramConn) -> u64 {
    let n = dg.secondary.len() as u64;
    dg.secondary.clear();
    n
}

#[cfg(test)]
mod tests {
    use super::super::{
        CheckpointReason, Divergence, DivergenceKind, Engine, EngineConfig, Output,
    };
    use crate::classify::classify;
    use crate::frame::{Frame, Side};
    use crate::sim::{FlowAddrs, TcpSender, Towards, udp_frame};
    use crate::time::Instant;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn outputs(e: &mut Engine) -> (Vec<Frame>, Vec<Divergence>, Vec<CheckpointReason>) {
        let (mut rel, mut div, mut req) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(o) = e.poll_output() {
            match o {
                Output::Release(f) => rel.push(f),
                Output::Divergence(d) => div.push(d),
                Output::RequestCheckpoint(r) => req.push(r.cause.reason()),
                Output::LimitReached { .. } => {}
            }
        }
        (rel, div, req)
    }

    /// Two senders of one flow with different ISNs (raw captures, per-side alignment).
    fn senders() -> (TcpSender, TcpSender) {
        let a = FlowAddrs::v4(1);
        (
            TcpSender::new(a, 1000, 5000),
            TcpSender::new(a, 90_000, 5000),
        )
    }

    fn per_side() -> Engine {
        Engine::new(EngineConfig {
            seq_alignment: super::super::SeqAlignment::PerSideIsn,
            ..EngineConfig::default()
        })
    }

    #[test]
    fn resync_continues_each_side_from_its_own_position() {
        let mut e = per_side();
        let (mut p, mut s) = senders();
        // Replies of different lengths: a divergence at offset 3.
        e.handle_frame(ms(0), Side::Primary, p.data(b"abc1\n"));
        e.handle_frame(ms(0), Side::Secondary, s.data(b"abcXYZ\n"));
        let (_, div, req) = outputs(&mut e);
        assert_eq!(div.len(), 1);
        assert_eq!(req, vec![CheckpointReason::Payload]);
        e.handle_checkpoint_resync(ms(1));
        let (released, _, _) = outputs(&mut e);
        assert_eq!(released.len(), 1, "the held primary frame is released");
        // After the checkpoint the next replies are equal: no new divergence, although
        // the streams are 2 bytes apart in each side's own offsets.
        let pf = p.data(b"next reply\n");
        e.handle_frame(ms(200), Side::Primary, pf.clone());
        e.handle_frame(ms(200), Side::Secondary, s.data(b"next reply\n"));
        let (released, div, req) = outputs(&mut e);
        assert!(div.is_empty(), "{div:?}");
        assert!(req.is_empty());
        assert_eq!(released, vec![pf]);
        assert_eq!(e.epoch(), 1);
    }

    #[test]
    fn a_later_divergence_is_a_new_checkpoint() {
        let mut e = per_side();
        let (mut p, mut s) = senders();
        e.handle_frame(ms(0), Side::Primary, p.data(b"t=1\n"));
        e.handle_frame(ms(0), Side::Secondary, s.data(b"t=2\n"));
        assert_eq!(outputs(&mut e).2.len(), 1);
        e.handle_checkpoint_resync(ms(0));
        // Inside checkpoint_min_interval (100 ms): deferred, then requested.
        e.handle_frame(ms(50), Side::Primary, p.data(b"t=3\n"));
        e.handle_frame(ms(50), Side::Secondary, s.data(b"t=4\n"));
        let (_, div, req) = outputs(&mut e);
        assert_eq!(div.len(), 1);
        assert!(req.is_empty(), "deferred by the gate");
        assert_eq!(e.poll_timeout(), Some(ms(100)));
        e.handle_timeout(ms(100));
        assert_eq!(outputs(&mut e).2, vec![CheckpointReason::Payload]);
        e.handle_checkpoint_resync(ms(100));
        e.handle_frame(ms(300), Side::Primary, p.data(b"t=5\n"));
        e.handle_frame(ms(300), Side::Secondary, s.data(b"t=6\n"));
        let (_, div, req) = outputs(&mut e);
        assert_eq!((div.len(), req.len()), (1, 1));
        match &div[0].kind {
            DivergenceKind::Payload { offset, .. } => assert_eq!(*offset, 10, "t=5 at 8 + 2"),
            k => panic!("unexpected {k:?}"),
        }
        assert_eq!(e.stats().checkpoints_total(), 3);
    }

    #[test]
    fn undiverged_connections_keep_their_pending_bytes() {
        let mut e = per_side();
        let (mut p, mut s) = senders();
        let other = FlowAddrs::v4(2);
        let (mut p2, mut s2) = (
            TcpSender::new(other, 7, 1),
            TcpSender::new(other, 70_000, 1),
        );
        // Connection 2: the primary is ahead by one message when the checkpoint comes.
        e.handle_frame(ms(0), Side::Primary, p2.data(b"hello "));
        // Connection 1 diverges.
        e.handle_frame(ms(0), Side::Primary, p.data(b"A"));
        e.handle_frame(ms(0), Side::Secondary, s.data(b"B"));
        let _ = outputs(&mut e);
        e.handle_checkpoint_resync(ms(1));
        let _ = outputs(&mut e);
        // The secondary's copy of connection 2 arrives later and still matches.
        e.handle_frame(ms(2), Side::Secondary, s2.data(b"hello "));
        e.handle_frame(ms(2), Side::Primary, p2.data(b"world"));
        e.handle_frame(ms(2), Side::Secondary, s2.data(b"world"));
        let (released, div, _) = outputs(&mut e);
        assert!(div.is_empty(), "{div:?}");
        assert_eq!(released.len(), 2);
        assert_eq!(e.stats().bytes_matched, 11);
    }

    #[test]
    fn datagrams_resync_without_the_discarded_ones() {
        let mut e = per_side();
        let a = FlowAddrs::v4(3);
        e.handle_frame(ms(0), Side::Primary, udp_frame(&a, Towards::Client, b"one"));
        e.handle_frame(
            ms(0),
            Side::Secondary,
            udp_frame(&a, Towards::Client, b"uno"),
        );
        e.handle_frame(
            ms(0),
            Side::Secondary,
            udp_frame(&a, Towards::Client, b"dos"),
        );
        assert_eq!(outputs(&mut e).1.len(), 1);
        e.handle_checkpoint_resync(ms(1));
        assert_eq!(outputs(&mut e).0.len(), 1, "\"one\" is released");
        e.handle_frame(ms(5), Side::Primary, udp_frame(&a, Towards::Client, b"two"));
        e.handle_frame(
            ms(5),
            Side::Secondary,
            udp_frame(&a, Towards::Client, b"two"),
        );
        let (released, div, _) = outputs(&mut e);
        assert!(div.is_empty(), "{div:?}");
        assert_eq!(released.len(), 1);
        assert_eq!(e.stats().held_bytes, 0);
    }

    #[test]
    fn handle_classified_equals_handle_frame() {
        let (mut p, mut s) = senders();
        let frames: Vec<(Side, Frame)> = (0..20)
            .flat_map(|i| {
                let body = format!("message {i} {}", "x".repeat(i * 37));
                let mut sb = body.clone().into_bytes();
                if i == 13 {
                    sb[3] ^= 1;
                }
                [
                    (Side::Primary, p.data(body.as_bytes())),
                    (Side::Secondary, s.data(&sb)),
                ]
            })
            .collect();
        let run = |classified: bool| {
            let mut e = per_side();
            let mut out = Vec::new();
            for (i, (side, f)) in frames.iter().enumerate() {
                let t = ms(i as u64 * 10);
                if classified {
                    let c = classify(f.ethernet_bytes());
                    e.handle_classified(t, *side, f.clone(), c);
                } else {
                    e.handle_frame(t, *side, f.clone());
                }
                while let Some(o) = e.poll_output() {
                    out.push(o);
                }
            }
            (out, e.stats())
        };
        let (a, sa) = run(false);
        let (b, sb) = run(true);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert!(sa.divergences_total() == 1 && sa.bytes_matched > 1000);
    }

    #[test]
    fn a_classification_of_another_frame_is_not_trusted() {
        let (mut p, _) = senders();
        let long = p.data(&[7u8; 1000]);
        let short = p.data(b"hi");
        let mut e = per_side();
        // The ranges of the long frame's classification lie outside the short frame.
        let wrong = classify(long.ethernet_bytes());
        e.handle_classified(ms(0), Side::Primary, short, wrong);
        assert_eq!(e.stats().tcp_payload_in[0], 2);
    }
}

#[cfg(test)]
mod shared_tests {
    use super::super::{Engine, EngineConfig, Output};
    use crate::frame::Side;
    use crate::sim::{FlowAddrs, TcpSender};
    use crate::time::Instant;

    #[test]
    fn resync_in_the_shared_sequence_space() {
        let mut e = Engine::new(EngineConfig::default());
        let a = FlowAddrs::v4(1);
        let (mut p, mut s) = (TcpSender::new(a, 1000, 1), TcpSender::new(a, 1000, 1));
        e.handle_frame(Instant::ZERO, Side::Primary, p.syn_ack());
        // The secondary's SYN-ACK passes the rewriter with its own ISN.
        let mut own = TcpSender::new(a, 900_000, 1);
        e.handle_frame(Instant::ZERO, Side::Secondary, own.syn_ack());
        s.syn_ack();
        e.handle_frame(Instant::ZERO, Side::Primary, p.data(b"t=100\n"));
        e.handle_frame(Instant::ZERO, Side::Secondary, s.data(b"t=7\n"));
        e.handle_checkpoint_resync(Instant::from_millis(1));
        e.handle_frame(Instant::from_millis(500), Side::Primary, p.data(b"a\n"));
        e.handle_frame(Instant::from_millis(500), Side::Secondary, s.data(b"a\n"));
        e.handle_frame(Instant::from_millis(900), Side::Primary, p.data(b"t=102\n"));
        e.handle_frame(Instant::from_millis(900), Side::Secondary, s.data(b"t=9\n"));
        let mut divs = 0;
        while let Some(o) = e.poll_output() {
            divs += usize::from(matches!(o, Output::Divergence(_)));
        }
        assert_eq!(e.stats().stale_bytes, [0, 0], "{:?}", e.stats());
        assert_eq!(divs, 2, "{:?}", e.stats());
    }
}
