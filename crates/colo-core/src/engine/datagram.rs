//! Datagrams (UDP, ICMP, ARP, other IP, other ethertypes, unparsable frames):
//! compared in FIFO order per flow, on the header fields that matter and the body.

use crate::classify::DatagramMeta;
use crate::frame::{Frame, Side};

use super::conn::{Need, Proto};
use super::output::DivergenceKind;
use super::tcp::set_pending;
use super::{DropReason, Engine, first_difference};

impl Engine {
    pub(super) fn datagram_frame(
        &mut self,
        slot: u32,
        side: Side,
        frame: Frame,
        meta: DatagramMeta,
    ) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        match side {
            Side::Primary => {
                if !self.admit(slot, side, frame.data.len()) {
                    return;
                }
                let len = frame.data.len();
                let held = self.hold(frame, Need::Datagram(meta));
                let Some(conn) = self.table.get_mut(slot) else {
                    return;
                };
                conn.held_bytes += len;
                conn.held.push_back(held);
            }
            Side::Secondary => {
                if conn.diverged {
                    self.stats.drop(side, DropReason::SecondaryDiscarded, 1);
                    return;
                }
                let body = frame.data.slice(
                    usize::try_from(frame.vnet_hdr_len).unwrap_or(0) + meta.body.start
                        ..usize::try_from(frame.vnet_hdr_len).unwrap_or(0) + meta.body.end,
                );
                let len = meta.header().len() + body.len();
                if !self.admit(slot, side, len) {
                    return;
                }
                let Some(conn) = self.table.get_mut(slot) else {
                    return;
                };
                if let Proto::Datagram(dg) = &mut conn.proto {
                    dg.secondary.push_back((meta, body));
                    conn.buffered_bytes += len;
                }
            }
        }
        self.match_datagrams(slot);
    }

    fn match_datagrams(&mut self, slot: u32) {
        loop {
            let now = self.now;
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            let Proto::Datagram(dg) = &mut conn.proto else {
                return;
            };
            if conn.diverged {
                return;
            }
            let (Some(head), Some((smeta, sbody))) = (conn.held.front(), dg.secondary.front())
            else {
                let pending = !dg.secondary.is_empty();
                set_pending(conn, pending, now);
                return;
            };
            let Need::Datagram(pmeta) = &head.need else {
                return;
            };
            let vnet = usize::try_from(head.frame.vnet_hdr_len).unwrap_or(0);
            let pbody = head
                .frame
                .data
                .get(vnet + pmeta.body.start..vnet + pmeta.body.end)
                .unwrap_or(&[]);
            let equal = pmeta.header() == smeta.header() && pbody == &sbody[..];
            if !equal {
                let first = (pbody.len() == sbody.len())
                    .then(|| first_difference(pbody, sbody))
                    .flatten();
                let kind = DivergenceKind::Datagram {
                    index: dg.index,
                    primary_len: pmeta.header().len() + pbody.len(),
                    secondary_len: smeta.header().len() + sbody.len(),
                    first_difference: first,
                };
                self.diverge_conn(slot, kind);
                return;
            }
            let Some((smeta, sbody)) = dg.secondary.pop_front() else {
                return;
            };
            dg.index += 1;
            conn.buffered_bytes -= conn.buffered_bytes.min(smeta.header().len() + sbody.len());
            let Some(held) = conn.held.pop_front() else {
                return;
            };
            conn.held_bytes -= held.frame.data.len();
            self.stats.held_frames -= 1;
            self.stats.datagrams_matched += 1;
            self.release(held.frame);
        }
    }
}
