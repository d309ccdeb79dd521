//! The frames colo-bench sends: one template per flow, patched per segment.
//!
//! Templates are built once per flow with `colo_core::sim` (valid checksums). Segment
//! `k` of a flow differs from the template in one 32-bit field: the TCP sequence
//! number, or for UDP a counter in the first four payload bytes. That field is patched
//! and the checksum updated incrementally (RFC 1624), so building a frame costs a copy.
//!
//! With `--sec-split N` (TCP only) the secondary gets the same bytes cut at other
//! points: each segment as `N` pieces at pseudo-random offsets (deterministic per flow
//! and segment), each piece a valid frame with its own IP length and full checksums.

use bytes::{BufMut, BytesMut};
use colo_core::checksum::{tcp_checksum_ipv4, update_u16, update_u32};
use colo_core::sim::{FlowAddrs, TcpSender, Towards, udp_frame};

/// Ethernet + IPv4 header length.
const ETH_IP: usize = 14 + 20;
/// Offset of the IPv4 total length.
const IP_LEN_OFF: usize = 14 + 2;
/// Offset of the IPv4 header checksum.
const IP_CSUM_OFF: usize = 14 + 10;
/// Offset of the IPv4 source address.
const SRC_IP_OFF: usize = 14 + 12;
/// Offset of the IPv4 destination address (the client's).
const DST_IP_OFF: usize = 14 + 16;
/// Offset of the TCP/UDP destination port (the client's).
const DST_PORT_OFF: usize = ETH_IP + 2;
/// Ethernet + IPv4 + TCP headers without options.
const TCP_HEADERS: usize = ETH_IP + 20;
/// Ethernet + IPv4 + UDP headers.
const UDP_HEADERS: usize = ETH_IP + 8;
/// Size of the (all-zero) virtio-net header sent with `--vnet-hdr`.
pub const VNET_LEN: usize = 10;

/// Which transport the flows use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// TCP segments (VM → client); the proxy compares byte streams.
    Tcp,
    /// UDP datagrams (VM → client); the proxy compares datagram by datagram.
    Udp,
}

impl Proto {
    /// The name used on the command line and in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// Header bytes in front of the payload.
    #[must_use]
    pub const fn headers(self) -> usize {
        match self {
            Self::Tcp => TCP_HEADERS,
            Self::Udp => UDP_HEADERS,
        }
    }

    /// Offset of the per-segment field and of the checksum covering it.
    const fn patch_offsets(self) -> (usize, usize) {
        match self {
            // TCP sequence number, TCP checksum.
            Self::Tcp => (ETH_IP + 4, ETH_IP + 16),
            // First 4 payload bytes (a counter), UDP checksum.
            Self::Udp => (UDP_HEADERS, ETH_IP + 6),
        }
    }
}

/// The flows' templates and how to derive every segment from them.
#[derive(Debug)]
pub struct FlowSet {
    proto: Proto,
    /// Bytes in front of the Ethernet frame in every template (vnet header).
    voff: usize,
    /// Length of one template (vnet header + Ethernet frame).
    stride: usize,
    /// Payload bytes per segment.
    plen: usize,
    /// All templates, back to back.
    templates: Vec<u8>,
    /// Per flow: the value of the patched field in the template.
    base: Vec<u32>,
    /// Whether the vnet_hdr_len field is on the wire.
    vnet: bool,
}

/// The payload every segment carries (the same bytes each time).
fn payload(plen: usize) -> Vec<u8> {
    (0..plen).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Adds the 32-bit `v` at `eth[off..]` to the one's complement checksum at `csum_off`.
fn patch_u32(eth: &mut [u8], off: usize, csum_off: usize, new: u32) {
    let old = u32::from_be_bytes([eth[off], eth[off + 1], eth[off + 2], eth[off + 3]]);
    let hc = u16::from_be_bytes([eth[csum_off], eth[csum_off + 1]]);
    let c = update_u32(hc, old, new);
    eth[off..off + 4].copy_from_slice(&new.to_be_bytes());
    eth[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
}

impl FlowSet {
    /// Builds `n` flows of `frame_size`-byte Ethernet frames.
    #[must_use]
    pub fn build(proto: Proto, n: u32, frame_size: usize, vnet: bool) -> Self {
        let plen = frame_size - proto.headers();
        let payload = payload(plen);
        let voff = if vnet { VNET_LEN } else { 0 };
        let stride = voff + frame_size;
        let mut templates = Vec::with_capacity(stride * n as usize);
        let mut base = Vec::with_capacity(n as usize);
        for i in 0..n {
            templates.resize(templates.len() + voff, 0);
            match proto {
                Proto::Tcp => {
                    let isn = 1000u32.wrapping_add(i.wrapping_mul(7919));
                    let mut s = TcpSender::new(FlowAddrs::v4(i), isn, 5000 + i);
                    base.push(s.next_seq);
                    templates.extend_from_slice(&s.data(&payload).data);
                }
                Proto::Udp => {
                    let mut p = payload.clone();
                    p[..4].copy_from_slice(&0u32.to_be_bytes());
                    base.push(0);
                    templates
                        .extend_from_slice(&udp_frame(&FlowAddrs::v4(i), Towards::Client, &p).data);
                }
            }
        }
        Self {
            proto,
            voff,
            stride,
            plen,
            templates,
            base,
            vnet,
        }
    }

    /// Number of flows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.base.len()
    }

    /// Bytes of one primary frame on the wire (framing included).
    #[must_use]
    pub const fn wire_len(&self) -> usize {
        self.stride + if self.vnet { 8 } else { 4 }
    }

    fn template(&self, flow: usize) -> &[u8] {
        &self.templates[flow * self.stride..(flow + 1) * self.stride]
    }

    fn value(&self, flow: usize, k: u32) -> u32 {
        match self.proto {
            Proto::Tcp => self.base[flow].wrapping_add(k.wrapping_mul(self.plen as u32)),
            Proto::Udp => k,
        }
    }

    fn put_header(&self, len: usize, buf: &mut BytesMut) {
        buf.put_u32(len as u32);
        if self.vnet {
            buf.put_u32(VNET_LEN as u32);
        }
    }

    /// Writes segment `k` of `flow` (vnet header + Ethernet frame) into `out` (the
    /// reference the fast paths are tested against).
    #[cfg(test)]
    pub fn write_segment(&self, flow: usize, k: u32, out: &mut [u8]) {
        out.copy_from_slice(self.template(flow));
        let (off, csum) = self.proto.patch_offsets();
        patch_u32(&mut out[self.voff..], off, csum, self.value(flow, k));
    }

    /// Appends segment `k` of `flow`, QEMU-framed, to `buf` (the primary's frame).
    pub fn put_primary(&self, flow: usize, k: u32, buf: &mut BytesMut) {
        self.put_header(self.stride, buf);
        let start = buf.len();
        buf.extend_from_slice(self.template(flow));
        let (off, csum) = self.proto.patch_offsets();
        patch_u32(
            &mut buf[start + self.voff..],
            off,
            csum,
            self.value(flow, k),
        );
    }

    /// Whether the secondary's copy of a segment is the primary's frame itself (no
    /// `--sec-split`, or UDP), so one buffer can be written to both inputs.
    #[must_use]
    pub fn secondary_is_primary(&self, split: u32) -> bool {
        self.proto == Proto::Udp || split <= 1 || self.plen <= 1
    }

    /// Appends what the secondary sends for segment `k` of `flow`: the same frame when
    /// `split` is 1 (or for UDP), else the same payload bytes as `split` TCP segments
    /// cut at pseudo-random points. Returns the number of frames appended.
    pub fn put_secondary(&self, flow: usize, k: u32, split: u32, buf: &mut BytesMut) -> u32 {
        let pieces = (split as usize).min(self.plen);
        if self.proto == Proto::Udp || pieces <= 1 {
            self.put_primary(flow, k, buf);
            return 1;
        }
        let t = &self.template(flow)[self.voff..];
        let seq = self.value(flow, k);
        let spacing = self.plen / pieces;
        let mut rng = splitmix((flow as u64) << 32 | u64::from(k));
        let mut from = 0usize;
        for j in 1..=pieces {
            let to = if j == pieces {
                self.plen
            } else {
                rng = splitmix(rng);
                j * spacing - spacing / 2 + (rng % spacing as u64) as usize
            };
            self.put_piece(t, seq, from, to, buf);
            from = to;
        }
        pieces as u32
    }

    /// Appends a TCP frame carrying payload bytes `from..to` of template `t`.
    fn put_piece(&self, t: &[u8], seq: u32, from: usize, to: usize, buf: &mut BytesMut) {
        let len = TCP_HEADERS + (to - from);
        self.put_header(self.voff + len, buf);
        buf.put_bytes(0, self.voff);
        let start = buf.len();
        buf.extend_from_slice(&t[..TCP_HEADERS]);
        buf.extend_from_slice(&t[TCP_HEADERS + from..TCP_HEADERS + to]);
        let f = &mut buf[start..];
        let old_len = u16::from_be_bytes([f[IP_LEN_OFF], f[IP_LEN_OFF + 1]]);
        let new_len = (len - 14) as u16;
        let ipc = u16::from_be_bytes([f[IP_CSUM_OFF], f[IP_CSUM_OFF + 1]]);
        f[IP_LEN_OFF..IP_LEN_OFF + 2].copy_from_slice(&new_len.to_be_bytes());
        f[IP_CSUM_OFF..IP_CSUM_OFF + 2]
            .copy_from_slice(&update_u16(ipc, old_len, new_len).to_be_bytes());
        f[ETH_IP + 4..ETH_IP + 8].copy_from_slice(&seq.wrapping_add(from as u32).to_be_bytes());
        let ip4 = |o: usize| [f[o], f[o + 1], f[o + 2], f[o + 3]];
        let (src, dst) = (ip4(SRC_IP_OFF), ip4(DST_IP_OFF));
        let c = tcp_checksum_ipv4(src, dst, &f[ETH_IP..]);
        f[ETH_IP + 16..ETH_IP + 18].copy_from_slice(&c.to_be_bytes());
    }

    /// Which flow a released frame (vnet header + Ethernet) belongs to.
    #[must_use]
    pub fn flow_of(&self, data: &[u8]) -> Option<usize> {
        let eth = data.get(self.voff..)?;
        if eth.len() < UDP_HEADERS {
            return None;
        }
        let host = u32::from(u16::from_be_bytes([
            eth[DST_IP_OFF + 2],
            eth[DST_IP_OFF + 3],
        ]));
        let port = u32::from(u16::from_be_bytes([
            eth[DST_PORT_OFF],
            eth[DST_PORT_OFF + 1],
        ]));
        let f = (host * 60_000 + port.checked_sub(1024)?) as usize;
        (f < self.len()).then_some(f)
    }

    /// Whether `data` is exactly segment `k` of `flow`: the template's bytes except
    /// the patched field and its checksum, which must hold segment `k`'s values
    /// (compared in place, without building the expected frame).
    #[must_use]
    pub fn is_segment(&self, flow: usize, k: u32, data: &[u8]) -> bool {
        let t = self.template(flow);
        if data.len() != t.len() {
            return false;
        }
        let (off, csum_off) = self.proto.patch_offsets();
        let (off, csum_off) = (self.voff + off, self.voff + csum_off);
        let old = u32::from_be_bytes([t[off], t[off + 1], t[off + 2], t[off + 3]]);
        let new = self.value(flow, k);
        let csum = update_u32(u16::from_be_bytes([t[csum_off], t[csum_off + 1]]), old, new);
        // The two patched ranges in offset order, then every byte around them.
        let (a, b) = if off < csum_off {
            ((off, 4), (csum_off, 2))
        } else {
            ((csum_off, 2), (off, 4))
        };
        data[off..off + 4] == new.to_be_bytes()
            && data[csum_off..csum_off + 2] == csum.to_be_bytes()
            && data[..a.0] == t[..a.0]
            && data[a.0 + a.1..b.0] == t[a.0 + a.1..b.0]
            && data[b.0 + b.1..] == t[b.0 + b.1..]
    }

    /// Which segment of `flow` `data` is, if it is exactly one of them.
    #[must_use]
    pub fn segment_of(&self, flow: usize, data: &[u8]) -> Option<u32> {
        let v = self.field_of(data)?;
        let k = match self.proto {
            Proto::Tcp => {
                let d = v.wrapping_sub(self.base[flow]);
                let plen = self.plen as u32;
                (d % plen == 0).then_some(d / plen)?
            }
            Proto::Udp => v,
        };
        self.is_segment(flow, k, data).then_some(k)
    }

    /// The patched field of a released frame, for error messages.
    #[must_use]
    pub fn field_of(&self, data: &[u8]) -> Option<u32> {
        let (off, _) = self.proto.patch_offsets();
        let b = data.get(self.voff + off..self.voff + off + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// SplitMix64: a small deterministic mixer for the cut points.
const fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use colo_core::codec::{DecoderConfig, FrameDecoder};

    use super::*;

    fn decode(buf: &BytesMut, vnet: bool) -> Vec<Vec<u8>> {
        let mut d = FrameDecoder::new(DecoderConfig {
            vnet_hdr: vnet,
            ..DecoderConfig::default()
        });
        d.push(buf);
        let mut out = Vec::new();
        while let Some(f) = d.poll_frame().unwrap() {
            out.push(f.data.to_vec());
        }
        out
    }

    #[test]
    fn patched_tcp_segments_equal_freshly_built_ones() {
        for size in [130usize, 1514] {
            let set = FlowSet::build(Proto::Tcp, 3, size, false);
            let payload = payload(size - TCP_HEADERS);
            for i in 0..3u32 {
                let mut s = TcpSender::new(FlowAddrs::v4(i), 1000 + i * 7919, 5000 + i);
                let mut got = vec![0; size];
                for k in 0..3000u32 {
                    let want = s.data(&payload);
                    set.write_segment(i as usize, k, &mut got);
                    assert_eq!(&got[..], &want.data[..], "size {size} flow {i} seg {k}");
                }
                assert_eq!(set.flow_of(&got), Some(i as usize));
                assert_eq!(set.segment_of(i as usize, &got), Some(2999));
                got[100] ^= 1;
                assert_eq!(set.segment_of(i as usize, &got), None);
            }
        }
    }

    #[test]
    fn split_pieces_equal_freshly_built_segments() {
        let size = 1514;
        let set = FlowSet::build(Proto::Tcp, 2, size, true);
        let payload = payload(size - TCP_HEADERS);
        for split in [2u32, 3, 7] {
            for flow in 0..2u32 {
                let mut s = TcpSender::new(FlowAddrs::v4(flow), 1000 + flow * 7919, 5000 + flow);
                for k in 0..50u32 {
                    let mut buf = BytesMut::new();
                    assert_eq!(set.put_secondary(flow as usize, k, split, &mut buf), split);
                    let pieces = decode(&buf, true);
                    assert_eq!(pieces.len(), split as usize);
                    let mut total = 0;
                    for p in &pieces {
                        let plen = p.len() - VNET_LEN - TCP_HEADERS;
                        assert!(plen > 0);
                        let want = s.data(&payload[total..total + plen]);
                        assert_eq!(&p[VNET_LEN..], &want.data[..], "split {split} k {k}");
                        total += plen;
                    }
                    assert_eq!(total, payload.len());
                }
            }
        }
    }

    #[test]
    fn udp_segments_carry_a_counter_and_a_valid_checksum() {
        let set = FlowSet::build(Proto::Udp, 70_000, 130, false);
        let mut got = vec![0; 130];
        for flow in [0usize, 1, 65_000, 69_999] {
            for k in [0u32, 1, 2, 1000, u32::MAX] {
                set.write_segment(flow, k, &mut got);
                let mut p = payload(130 - UDP_HEADERS);
                p[..4].copy_from_slice(&k.to_be_bytes());
                let want = udp_frame(&FlowAddrs::v4(flow as u32), Towards::Client, &p);
                // The incremental update may give 0x0000 where a full computation
                // gives 0xffff (both are valid for UDP); compare everything else.
                let mut a = got.clone();
                let mut b = want.data.to_vec();
                for f in [&mut a, &mut b] {
                    if f[ETH_IP + 6..ETH_IP + 8] == [0, 0] {
                        f[ETH_IP + 6..ETH_IP + 8].copy_from_slice(&[0xff, 0xff]);
                    }
                }
                assert_eq!(a, b, "flow {flow} k {k}");
                assert_eq!(set.flow_of(&got), Some(flow));
                assert_eq!(set.field_of(&got), Some(k));
                assert_eq!(set.segment_of(flow, &got), Some(k));
            }
        }
    }

    #[test]
    fn flow_of_rejects_unknown_flows() {
        let set = FlowSet::build(Proto::Tcp, 4, 130, false);
        let other = FlowSet::build(Proto::Tcp, 10, 130, false);
        let mut f = vec![0; 130];
        other.write_segment(9, 0, &mut f);
        assert_eq!(set.flow_of(&f), None);
        assert_eq!(set.flow_of(&f[..20]), None);
    }

    #[test]
    fn put_primary_frames_the_reference_segment() {
        for (proto, vnet) in [(Proto::Tcp, false), (Proto::Tcp, true), (Proto::Udp, true)] {
            let set = FlowSet::build(proto, 5, 200, vnet);
            for (flow, k) in [(0usize, 0u32), (3, 7), (4, u32::MAX)] {
                let mut buf = BytesMut::new();
                set.put_primary(flow, k, &mut buf);
                let mut want = vec![0; set.stride];
                set.write_segment(flow, k, &mut want);
                assert_eq!(decode(&buf, vnet), vec![want]);
                assert_eq!(buf.len(), set.wire_len());
            }
        }
    }

    #[test]
    fn is_segment_rejects_any_changed_byte_and_other_lengths() {
        for (proto, vnet) in [(Proto::Tcp, false), (Proto::Udp, true)] {
            let set = FlowSet::build(proto, 3, 120, vnet);
            let mut f = vec![0; set.stride];
            set.write_segment(2, 41, &mut f);
            assert!(set.is_segment(2, 41, &f));
            assert!(!set.is_segment(2, 40, &f));
            assert!(!set.is_segment(1, 41, &f));
            for i in 0..f.len() {
                f[i] ^= 0x10;
                assert!(!set.is_segment(2, 41, &f), "{proto:?}: byte {i} changed");
                f[i] ^= 0x10;
            }
            assert!(!set.is_segment(2, 41, &f[..f.len() - 1]));
            let mut longer = f.clone();
            longer.push(0);
            assert!(!set.is_segment(2, 41, &longer));
        }
    }
}
