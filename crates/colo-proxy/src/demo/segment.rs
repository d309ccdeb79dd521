//! Reading simulated frames back: the TCP fields the simulated endpoints react to.

use colo_core::Frame;
use colo_core::classify::{L4, TcpFlags, TcpMeta, classify};
use colo_core::flow::FlowKey;
use etherparse::{TcpHeaderSlice, TcpOptionElement};

/// One received TCP segment, as an endpoint sees it.
#[derive(Debug, Clone)]
pub struct TcpView {
    /// The flow it belongs to.
    pub key: FlowKey,
    /// Header fields.
    pub meta: TcpMeta,
    /// The payload.
    pub payload: Vec<u8>,
    /// TSval and TSecr, when the timestamps option is present.
    pub timestamps: Option<(u32, u32)>,
}

impl TcpView {
    /// Whether all of `flags` are set.
    #[must_use]
    pub fn has(&self, flags: TcpFlags) -> bool {
        self.meta.flags.contains(flags)
    }

    /// Sequence number.
    #[must_use]
    pub fn seq(&self) -> u32 {
        self.meta.seq.0
    }

    /// Acknowledgement number.
    #[must_use]
    pub fn ack(&self) -> u32 {
        self.meta.ack.0
    }
}

/// The flow key of any frame (TCP or not).
#[must_use]
pub fn flow_of(frame: &Frame) -> FlowKey {
    classify(frame.ethernet_bytes()).key
}

/// The payload of a datagram frame (UDP), or `None` for TCP.
#[must_use]
pub fn datagram_payload(frame: &Frame) -> Option<(FlowKey, Vec<u8>)> {
    let eth = frame.ethernet_bytes();
    let c = classify(eth);
    match c.l4 {
        L4::Datagram(d) => Some((c.key, eth.get(d.body)?.to_vec())),
        L4::Tcp(_) => None,
    }
}

/// Parse a TCP frame; `None` for anything else.
#[must_use]
pub fn tcp_view(frame: &Frame) -> Option<TcpView> {
    let eth = frame.ethernet_bytes();
    let c = classify(eth);
    let L4::Tcp(meta) = c.l4 else { return None };
    let payload = eth.get(meta.payload.clone())?.to_vec();
    let timestamps = eth
        .get(meta.tcp_offset..)
        .and_then(|tcp| TcpHeaderSlice::from_slice(tcp).ok())
        .and_then(|h| {
            h.options_iterator().find_map(|o| match o {
                Ok(TcpOptionElement::Timestamp(val, ecr)) => Some((val, ecr)),
                _ => None,
            })
        });
    Some(TcpView {
        key: c.key,
        meta,
        payload,
        timestamps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::sim::{FlowAddrs, Segment, Towards, tcp_frame, udp_frame};

    #[test]
    fn reads_back_what_the_builders_wrote() {
        let a = FlowAddrs::v4(3);
        let f = tcp_frame(
            &a,
            Towards::Vm,
            &Segment {
                seq: 10,
                ack: 20,
                timestamps: Some((5, 6)),
                payload: b"hi",
                ..Segment::default()
            },
        );
        let v = tcp_view(&f).unwrap();
        assert_eq!((v.seq(), v.ack()), (10, 20));
        assert_eq!(v.payload, b"hi");
        assert_eq!(v.timestamps, Some((5, 6)));
        assert!(v.has(TcpFlags::ACK));
        assert_eq!(v.key, flow_of(&f));

        let u = udp_frame(&a, Towards::Client, b"dgram");
        assert!(tcp_view(&u).is_none());
        assert_eq!(datagram_payload(&u).unwrap().1, b"dgram");
        assert!(datagram_payload(&f).is_none());
    }
}
