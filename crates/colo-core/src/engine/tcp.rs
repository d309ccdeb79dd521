//! TCP: both VMs' output as byte streams, compared as soon as both sides hold the
//! same stream offset, whatever the segmentation; primary frames released in their
//! original order once every byte and flag they carry is matched and the ACK gate
//! allows.

use crate::classify::{TcpFlags, TcpMeta};
use crate::frame::{Frame, Side};
use crate::reassembly::ReassemblyError;
use crate::seq::Seq;

use super::config::SeqAlignment;
use super::conn::{Conn, Need, Proto, TcpConn};
use super::output::{Close, DivergenceKind, Limit};
use super::{DropReason, Engine, first_difference};

/// How many bytes of each side a payload divergence report carries.
const EXCERPT: usize = 16;

impl Engine {
    pub(super) fn tcp_frame(&mut self, slot: u32, side: Side, frame: Frame, t: &TcpMeta) {
        let s = side.index();
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.diverged && side == Side::Secondary {
            self.stats.drop(side, DropReason::SecondaryDiscarded, 1);
            return;
        }
        let cost = match side {
            Side::Primary => frame.data.len() + t.payload_len(),
            Side::Secondary => t.payload_len(),
        };
        if !self.admit(slot, side, cost) {
            return;
        }
        let alignment = self.config.seq_alignment;
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let diverged = conn.diverged;
        let Proto::Tcp(tcp) = &mut conn.proto else {
            return;
        };
        let syn = t.flags.contains(TcpFlags::SYN);
        if side == Side::Secondary
            && alignment == SeqAlignment::Shared
            && tcp.sides[0].base.is_none()
            && !(syn && t.payload_len() == 0)
        {
            // Only the primary defines the origin of the shared sequence space: a
            // secondary segment cannot be placed before the primary has been seen.
            tcp.parked_bytes += frame.data.len();
            tcp.parked.push((frame, t.clone()));
            let now = self.now;
            set_pending(conn, true, now);
            return;
        }
        learn_origin(tcp, side, t, alignment);
        let base = tcp.sides[s].base.unwrap_or(t.seq);
        let payload_seq = if syn { t.seq.add(1) } else { t.seq };

        // Map the segment onto stream offsets relative to the compared front, so
        // streams longer than 2^31 bytes never confuse the wrapping arithmetic.
        let front = tcp.streams[s].front();
        let front_seq = base.add(front as u32);
        let mut start = front as i64 + payload_seq.diff(front_seq);
        // A FIN takes a sequence number but no stream byte: whatever follows it
        // (the final ACK) sits at the FIN's offset, not one past the stream's end.
        if let Some(fin) = tcp.sides[s].fin_at {
            start = start.min(fin as i64);
        }
        let payload = &frame.ethernet_bytes()[t.payload.clone()];
        let end = start + payload.len() as i64;
        let end_u = end.max(0) as u64;

        let mut problem = None;
        if !diverged {
            let skip = usize::try_from((-start).max(0))
                .unwrap_or(usize::MAX)
                .min(payload.len());
            self.stats.stale_bytes[s] += skip as u64;
            let mut rest = &payload[skip..];
            let mut at = start.max(0) as u64;
            // Fast path: nothing held on this side and the segment starts at the front:
            // compare it in place against what the other side holds, so matched bytes
            // are copied once per pair instead of once per side.
            let [first, second] = &mut tcp.streams;
            let (mine, other) = if s == 0 {
                (first, second)
            } else {
                (second, first)
            };
            if at == mine.front() && mine.buffered_bytes() == 0 {
                let n = other.contiguous().len().min(rest.len());
                if n > 0 && other.contiguous()[..n] == rest[..n] && mine.skip_empty(n) {
                    other.consume(n);
                    self.stats.bytes_matched += n as u64;
                    rest = &rest[n..];
                    at += n as u64;
                }
            }
            if !rest.is_empty() {
                match tcp.streams[s].insert(at, rest) {
                    Ok(inserted) => self.stats.stale_bytes[s] += inserted.stale_bytes as u64,
                    Err(ReassemblyError::Conflict {
                        offset,
                        held,
                        offered,
                    }) => {
                        problem = Some(DivergenceKind::Retransmission {
                            side,
                            offset,
                            held,
                            offered,
                        });
                    }
                    Err(ReassemblyError::TooManyHoles { .. }) => {
                        problem = Some(DivergenceKind::LimitReached {
                            limit: Limit::ReassemblyHoles,
                        });
                    }
                    Err(ReassemblyError::WindowExceeded { .. }) => {
                        problem = Some(DivergenceKind::LimitReached {
                            limit: Limit::ConnBytes,
                        });
                    }
                }
            }
        }

        let st = &mut tcp.sides[s];
        if t.flags.contains(TcpFlags::FIN) && st.fin_at.is_none() {
            st.fin_at = Some(end_u);
        }
        if t.flags.contains(TcpFlags::RST) && st.rst_at.is_none() {
            st.rst_at = Some(start.max(0) as u64);
        }
        if t.flags.contains(TcpFlags::ACK) {
            st.max_ack = Some(st.max_ack.map_or(t.ack, |m| m.max(t.ack)));
        }
        st.window = Some(t.window);
        let seq_end =
            payload_seq.add(t.payload_len() as u32 + u32::from(t.flags.contains(TcpFlags::FIN)));
        st.next_seq = Some(st.next_seq.map_or(seq_end, |n| n.max(seq_end)));

        if side == Side::Primary {
            let flags = TcpFlags(
                t.flags.0 & (TcpFlags::SYN.0 | TcpFlags::FIN.0 | TcpFlags::RST.0 | TcpFlags::ACK.0),
            );
            let need = Need::Tcp {
                end: end_u,
                flags,
                ctl_at: start.max(0) as u64,
                ack: t.flags.contains(TcpFlags::ACK).then_some(t.ack),
            };
            let len = frame.data.len();
            let held = self.hold(frame, need);
            if let Some(conn) = self.table.get_mut(slot) {
                conn.held_bytes += len;
                conn.held.push_back(held);
            }
        }

        match problem {
            Some(DivergenceKind::LimitReached { limit }) => {
                self.conn_limit(slot, limit, "holding the connection for a checkpoint");
            }
            Some(kind) => self.diverge_conn(slot, kind),
            None => {}
        }
        self.compare_tcp(slot);
        self.release_tcp(slot);
        self.update_secondary_pending(slot);
        if side == Side::Primary {
            self.replay_parked(slot);
        }
    }

    /// Feed parked secondary segments now that the primary has set the origin.
    fn replay_parked(&mut self, slot: u32) {
        let Some(tcp) = self.table.get_mut(slot).and_then(Conn::tcp) else {
            return;
        };
        if tcp.parked.is_empty() || tcp.sides[0].base.is_none() {
            return;
        }
        let parked = core::mem::take(&mut tcp.parked);
        tcp.parked_bytes = 0;
        for (frame, meta) in parked {
            self.tcp_frame(slot, Side::Secondary, frame, &meta);
        }
    }

    /// Compare both sides' contiguous bytes and consume the matching prefix.
    fn compare_tcp(&mut self, slot: u32) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.diverged {
            return;
        }
        let Proto::Tcp(tcp) = &mut conn.proto else {
            return;
        };
        let [p, s] = &mut tcp.streams;
        let n = p.contiguous().len().min(s.contiguous().len());
        if n == 0 {
            return;
        }
        let (pc, sc) = (&p.contiguous()[..n], &s.contiguous()[..n]);
        match first_difference(pc, sc) {
            None => {
                p.consume(n);
                s.consume(n);
                self.stats.bytes_matched += n as u64;
            }
            Some(i) => {
                let offset = p.front() + i as u64;
                let primary = p.contiguous()[i..].iter().take(EXCERPT).copied().collect();
                let secondary = s.contiguous()[i..].iter().take(EXCERPT).copied().collect();
                // Bytes before the difference did match: consume them, so a report of
                // the stream position stays exact.
                p.consume(i);
                s.consume(i);
                self.stats.bytes_matched += i as u64;
                self.diverge_conn(
                    slot,
                    DivergenceKind::Payload {
                        offset,
                        primary,
                        secondary,
                    },
                );
            }
        }
    }

    /// Release held primary frames from the front while everything they say is matched.
    fn release_tcp(&mut self, slot: u32) {
        let ack_gate = self.config.ack_gate;
        loop {
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            if conn.diverged {
                return;
            }
            let Some(head) = conn.held.front() else {
                return;
            };
            let Proto::Tcp(tcp) = &conn.proto else { return };
            let verdict = match &head.need {
                Need::Tcp {
                    end,
                    flags,
                    ctl_at,
                    ack,
                } => check_release(tcp, *end, *flags, *ctl_at, *ack, ack_gate),
                Need::Nothing | Need::Datagram(_) => Verdict::Release,
            };
            match verdict {
                Verdict::Wait => return,
                Verdict::Diverged(kind) => {
                    self.diverge_conn(slot, kind);
                    return;
                }
                Verdict::Release => {
                    let Some(conn) = self.table.get_mut(slot) else {
                        return;
                    };
                    let Some(head) = conn.held.pop_front() else {
                        return;
                    };
                    conn.held_bytes -= head.frame.data.len();
                    self.stats.held_frames -= 1;
                    let window = match &conn.proto {
                        Proto::Tcp(tcp) if self.config.clamp_window => tcp.sides[1].window,
                        _ => None,
                    };
                    let frame = match window {
                        Some(w) => self.clamp_window(head.frame, w),
                        None => head.frame,
                    };
                    self.release(frame);
                }
            }
        }
    }

    fn clamp_window(&mut self, frame: Frame, window: u16) -> Frame {
        match crate::engine::window::clamp(&frame, window) {
            Some(clamped) => {
                self.stats.window_clamped += 1;
                clamped
            }
            None => frame,
        }
    }

    pub(super) fn diverge_conn(&mut self, slot: u32, kind: DivergenceKind) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        conn.diverged = true;
        let flow = conn.key.flow;
        self.divergence(Some(flow), kind);
    }

    /// Track whether secondary output waits unmatched (for the compare timeout).
    fn update_secondary_pending(&mut self, slot: u32) {
        let now = self.now;
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let Proto::Tcp(tcp) = &conn.proto else { return };
        let [p, s] = &tcp.sides;
        let pending = tcp.streams[1].buffered_bytes() > 0
            || !tcp.parked.is_empty()
            || s.fin_at.is_some() && p.fin_at.is_none()
            || s.rst_at.is_some() && p.rst_at.is_none()
            || s.syn.is_some() && p.syn.is_none();
        set_pending(conn, pending, now);
    }
}

/// Track the primary's send position while comparison is off (pass-through), so the
/// next epoch starts where the primary really is.
pub(super) fn note_primary_position(conn: &mut Conn, t: &TcpMeta) {
    let Proto::Tcp(tcp) = &mut conn.proto else {
        return;
    };
    let st = &mut tcp.sides[0];
    let start = if t.flags.contains(TcpFlags::SYN) {
        t.seq.add(1)
    } else {
        t.seq
    };
    let end = start.add(t.payload_len() as u32 + u32::from(t.flags.contains(TcpFlags::FIN)));
    st.next_seq = Some(st.next_seq.map_or(end, |n| n.max(end)));
    st.base.get_or_insert(start);
}

pub(super) fn set_pending(conn: &mut Conn, pending: bool, now: crate::time::Instant) {
    if !pending {
        conn.secondary_pending_since = None;
    } else if conn.secondary_pending_since.is_none() {
        conn.secondary_pending_since = Some(now);
    }
}

enum Verdict {
    Release,
    Wait,
    Diverged(DivergenceKind),
}

/// May a primary frame carrying payload up to `end`, control `flags` at `ctl_at`
/// and acknowledgement `ack` be released?
fn check_release(
    tcp: &TcpConn,
    end: u64,
    flags: TcpFlags,
    ctl_at: u64,
    ack: Option<Seq>,
    ack_gate: bool,
) -> Verdict {
    let matched = tcp.streams[0].front();
    if end > matched {
        return Verdict::Wait;
    }
    let sec = &tcp.sides[1];
    if flags.contains(TcpFlags::SYN) {
        let want = TcpFlags(flags.0 & (TcpFlags::SYN.0 | TcpFlags::ACK.0));
        match sec.syn {
            None => return Verdict::Wait,
            Some(got) if got != want => {
                return Verdict::Diverged(DivergenceKind::Handshake {
                    primary: want,
                    secondary: got,
                });
            }
            Some(_) => {}
        }
    }
    let secondary_close = match (sec.fin_at, sec.rst_at) {
        (_, Some(at)) => Close::Rst(at),
        (Some(at), None) => Close::Fin(at),
        (None, None) => Close::Open,
    };
    if flags.contains(TcpFlags::FIN) {
        match secondary_close {
            Close::Open => return Verdict::Wait,
            Close::Fin(at) if at == end => {}
            other => {
                return Verdict::Diverged(DivergenceKind::CloseMismatch {
                    primary: Close::Fin(end),
                    secondary: other,
                });
            }
        }
    }
    if flags.contains(TcpFlags::RST) {
        match secondary_close {
            Close::Rst(_) => {}
            // The secondary may still send its RST (after data or a FIN): wait; the
            // compare timeout turns a missing one into a checkpoint.
            Close::Open | Close::Fin(_) => return Verdict::Wait,
        }
    } else if let (Close::Rst(at), false) = (secondary_close, flags.contains(TcpFlags::FIN)) {
        // The secondary reset a stream the primary is still using.
        if end >= at && matched >= at {
            return Verdict::Diverged(DivergenceKind::CloseMismatch {
                primary: Close::Open,
                secondary: Close::Rst(at),
            });
        }
    }
    let _ = ctl_at;
    if ack_gate && let Some(ack) = ack {
        match sec.max_ack {
            Some(m) if !ack.after(m) => {}
            _ => return Verdict::Wait,
        }
    }
    Verdict::Release
}

/// Set the stream origin of `side` from this segment, if it is not known yet.
fn learn_origin(tcp: &mut TcpConn, side: Side, t: &TcpMeta, alignment: SeqAlignment) {
    let s = side.index();
    let o = 1 - s;
    if t.flags.contains(TcpFlags::SYN) {
        tcp.sides[s].syn = Some(TcpFlags(t.flags.0 & (TcpFlags::SYN.0 | TcpFlags::ACK.0)));
        // In the shared space the secondary's SYN still carries its own ISN (the
        // rewriter cannot know the offset yet): only the primary's SYN sets the origin.
        let own = alignment == SeqAlignment::PerSideIsn || side == Side::Primary;
        if own && tcp.sides[s].base.is_none() {
            let base = t.seq.add(1);
            tcp.sides[s].base = Some(base);
            if alignment == SeqAlignment::Shared {
                tcp.sides[o].base = Some(base);
            }
        }
        return;
    }
    if tcp.sides[s].base.is_none() {
        let base = match alignment {
            SeqAlignment::Shared => tcp.sides[o].base.unwrap_or(t.seq),
            SeqAlignment::PerSideIsn => t.seq,
        };
        tcp.sides[s].base = Some(base);
        if alignment == SeqAlignment::Shared {
            tcp.sides[o].base = Some(base);
        }
    }
}
