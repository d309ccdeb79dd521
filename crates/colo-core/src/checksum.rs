//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The rewriter changes a few words of a TCP header (sequence and acknowledgement
//! numbers, SACK blocks, timestamps) and the engine may clamp a window; both patch the
//! existing checksum instead of recomputing it over the whole segment. The update uses
//! RFC 1624's equation 3, `HC' = ~(~HC + ~m + m')`, in one's complement arithmetic
//! with end-around carry. For any checksum that was correct before (a TCP checksum
//! computed over data that includes the non-zero pseudo-header protocol number) the
//! result is bit-for-bit what a full recomputation gives, including the `0x0000`
//! versus `0xffff` corner.
//!
//! Alignment: the checksum sums 16-bit big-endian words counted from the start of the
//! checksummed data (for TCP: the pseudo-header, then the segment, whose first byte is
//! at an even position). A replaced region must therefore be summed with the right
//! byte parity: [`update_bytes`] assumes it starts at an even offset, [`update_bytes_at`]
//! takes the offset.
//!
//! Partial checksums: when a virtio-net header carries
//! [`VIRTIO_NET_HDR_F_NEEDS_CSUM`], the TCP checksum field holds only the folded
//! pseudo-header sum and the device (or host stack) completes it over the whole
//! segment later. Header rewrites are then covered by that final sum and the field must
//! be left alone; see [`vnet_needs_csum`].

/// Offset of the checksum field within a TCP header.
pub const TCP_CHECKSUM_OFFSET: usize = 16;

/// The virtio-net header flag meaning "checksum is partial: complete it from
/// `csum_start` and store it at `csum_start + csum_offset`".
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 0x01;

/// Whether a virtio-net header (the bytes before the Ethernet frame; possibly empty)
/// says the frame's transport checksum is partial and will be completed by the device.
/// An empty header means a normal, complete checksum.
#[must_use]
pub fn vnet_needs_csum(vnet_hdr: &[u8]) -> bool {
    vnet_hdr
        .first()
        .is_some_and(|flags| flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0)
}

/// Unfolded sum of the 16-bit big-endian words of `data`. When `odd_start` is true the
/// first byte sits at an odd position of the checksummed data, so it is the low byte of
/// its word. A trailing lone byte is the high byte of a word padded with zero.
fn sum_words(data: &[u8], odd_start: bool) -> u64 {
    let mut acc = 0u64;
    let mut rest = data;
    if odd_start && let Some((&first, tail)) = rest.split_first() {
        acc += u64::from(first);
        rest = tail;
    }
    let mut pairs = rest.chunks_exact(2);
    for pair in &mut pairs {
        acc += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold an unfolded sum to 16 bits with end-around carry. Zero only for zero.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves at most 0xffff.
    acc as u16
}

/// RFC 1624 eqn. 3 from folded sums of the old and new data.
fn apply(csum: u16, old_sum: u16, new_sum: u16) -> u16 {
    !fold(u64::from(!csum) + u64::from(!old_sum) + u64::from(new_sum))
}

/// Update a checksum after one 16-bit word (at an even offset) changed from `old` to `new`.
#[must_use]
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    apply(csum, old, new)
}

/// Update a checksum after a 32-bit field at an even offset (a TCP sequence or
/// acknowledgement number, say) changed from `old` to `new`.
#[must_use]
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let old_sum = fold(u64::from(old >> 16) + u64::from(old & 0xffff));
    let new_sum = fold(u64::from(new >> 16) + u64::from(new & 0xffff));
    apply(csum, old_sum, new_sum)
}

/// Update a checksum after the bytes `old` were replaced by `new` at the same place.
///
/// Requirements: both slices have the same length and start at an **even** offset of the
/// checksummed data (for TCP, an even offset within the TCP header, since the header
/// itself starts at an even position). An odd length is fine: the last byte is then the
/// high byte of its word, which is correct for an even start. For a region at an odd
/// offset use [`update_bytes_at`]. If the lengths differ the result is the checksum of
/// the data with `old`'s words taken out and `new`'s put in, which is only meaningful
/// when the caller also accounts for the length change.
#[must_use]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    update_bytes_at(csum, 0, old, new)
}

/// Like [`update_bytes`], for a region that starts `offset` bytes into the checksummed
/// data (only the parity of `offset` matters), so any alignment is handled.
#[must_use]
pub fn update_bytes_at(csum: u16, offset: usize, old: &[u8], new: &[u8]) -> u16 {
    let odd = offset % 2 == 1;
    apply(csum, fold(sum_words(old, odd)), fold(sum_words(new, odd)))
}

/// Full TCP checksum over an IPv4 pseudo-header and `segment` (TCP header with options,
/// then payload). The current contents of the checksum field are ignored, as if zero.
/// `segment` must be exactly the TCP segment (no Ethernet padding), at most 65535 bytes.
#[must_use]
pub fn tcp_checksum_ipv4(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> u16 {
    let len = u64::try_from(segment.len()).unwrap_or(u64::MAX);
    let pseudo = sum_words(&src, false) + sum_words(&dst, false) + 6 + len;
    !fold(pseudo + segment_sum(segment))
}

/// Full TCP checksum over an IPv6 pseudo-header and `segment`; see [`tcp_checksum_ipv4`].
#[must_use]
pub fn tcp_checksum_ipv6(src: [u8; 16], dst: [u8; 16], segment: &[u8]) -> u16 {
    let len = u64::try_from(segment.len()).unwrap_or(u64::MAX);
    let pseudo = sum_words(&src, false) + sum_words(&dst, false) + 6 + (len >> 16) + (len & 0xffff);
    !fold(pseudo + segment_sum(segment))
}

/// Sum of a TCP segment with the checksum field skipped.
fn segment_sum(segment: &[u8]) -> u64 {
    let head = segment.len().min(TCP_CHECKSUM_OFFSET);
    let tail = segment.get(TCP_CHECKSUM_OFFSET + 2..).unwrap_or(&[]);
    sum_words(&segment[..head], false) + sum_words(tail, false)
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    use super::*;

    fn stored_checksum(segment: &[u8]) -> u16 {
        u16::from_be_bytes([segment[16], segment[17]])
    }

    fn set_checksum(segment: &mut [u8], c: u16) {
        segment[16..18].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data, false)), 0xddf2);
        // Odd start: the same bytes shifted by one position sum byte-swapped.
        assert_eq!(fold(sum_words(&data, true)), 0xf2dd);
    }

    #[test]
    fn update_u16_matches_recompute() {
        let mut data = [0x12u8, 0x34, 0xab, 0xcd, 0xff, 0xff, 0x00, 0x01];
        let csum = !fold(sum_words(&data, false));
        data[2..4].copy_from_slice(&0x5555u16.to_be_bytes());
        assert_eq!(
            update_u16(csum, 0xabcd, 0x5555),
            !fold(sum_words(&data, false))
        );
    }

    #[test]
    fn result_zero_is_kept_zero_like_a_full_recompute() {
        // Data whose sum is 0xffff has checksum 0x0000; reach it by an update.
        let before = [0xff, 0x00, 0x00, 0xfe];
        let after = [0xff, 0x00, 0x00, 0xff];
        let csum = !fold(sum_words(&before, false));
        let updated = update_bytes(csum, &before[2..], &after[2..]);
        assert_eq!(updated, !fold(sum_words(&after, false)));
        assert_eq!(updated, 0x0000);
    }

    #[test]
    fn odd_offset_and_odd_length() {
        let mut data: Vec<u8> = (0..41u8).map(|b| b.wrapping_mul(37)).collect();
        let csum = !fold(sum_words(&data, false));
        let old = data[7..18].to_vec();
        let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
        data[7..18].copy_from_slice(&new);
        assert_eq!(
            update_bytes_at(csum, 7, &old, &new),
            !fold(sum_words(&data, false))
        );
    }

    #[test]
    fn vnet_flag() {
        assert!(!vnet_needs_csum(&[]));
        assert!(!vnet_needs_csum(&[0; 12]));
        assert!(vnet_needs_csum(&[1, 0, 0, 0]));
        assert!(vnet_needs_csum(&[3]));
    }

    fn tcp_frame(v6: bool, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = if v6 {
            eth.ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfe; 16],
                64,
            )
        } else {
            eth.ipv4([192, 168, 1, 10], [10, 9, 8, 7], 64)
        };
        let b = ip
            .tcp(40000, 443, seq, 29200)
            .ack(ack)
            .options_raw(options)
            .unwrap();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// (offset of the TCP segment, its length, full checksum computed by etherparse).
    fn locate(frame: &[u8]) -> (usize, usize, u16) {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("not tcp")
        };
        let start = tcp.slice().as_ptr() as usize - frame.as_ptr() as usize;
        let sum = match &p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
            }
            _ => panic!("not ip"),
        };
        (start, tcp.slice().len(), sum)
    }

    #[test]
    fn full_checksum_agrees_with_etherparse() {
        for v6 in [false, true] {
            let frame = tcp_frame(v6, 1, 2, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], b"odd");
            let (start, len, expected) = locate(&frame);
            let seg = &frame[start..start + len];
            let got = if v6 {
                tcp_checksum_ipv6(
                    frame[22..38].try_into().unwrap(),
                    frame[38..54].try_into().unwrap(),
                    seg,
                )
            } else {
                tcp_checksum_ipv4(
                    frame[26..30].try_into().unwrap(),
                    frame[30..34].try_into().unwrap(),
                    seg,
                )
            };
            assert_eq!(got, expected);
            assert_eq!(stored_checksum(seg), expected);
        }
    }

    proptest! {
        /// A random TCP packet; random rewrite of seq, ack and option bytes, applied with
        /// the incremental helpers: the result equals a full recomputation.
        #[test]
        fn incremental_equals_recompute(
            v6 in any::<bool>(),
            seq in any::<u32>(),
            ack in any::<u32>(),
            new_seq in any::<u32>(),
            new_ack in any::<u32>(),
            opt_words in 0usize..=10,
            opt_seed in proptest::collection::vec(any::<u8>(), 40),
            opt_new in proptest::collection::vec(any::<u8>(), 40),
            edit in (0usize..40, 0usize..40),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let options = &opt_seed[..opt_words * 4];
            let mut frame = tcp_frame(v6, seq, ack, options, &payload);
            let (start, len, _) = locate(&frame);
            let seg = &mut frame[start..start + len];
            let mut csum = stored_checksum(seg);

            seg[4..8].copy_from_slice(&new_seq.to_be_bytes());
            csum = update_u32(csum, seq, new_seq);
            seg[8..12].copy_from_slice(&new_ack.to_be_bytes());
            csum = update_u32(csum, ack, new_ack);

            let olen = opt_words * 4;
            if olen > 0 {
                // A random sub-range of the options, at any alignment.
                let (a, b) = (edit.0 % olen, edit.1 % olen);
                let (lo, hi) = (a.min(b), a.max(b) + 1);
                let old = seg[20 + lo..20 + hi].to_vec();
                seg[20 + lo..20 + hi].copy_from_slice(&opt_new[lo..hi]);
                csum = update_bytes_at(csum, 20 + lo, &old, &opt_new[lo..hi]);
            }
            set_checksum(seg, csum);
            let (_, _, expected) = locate(&frame);
            prop_assert_eq!(csum, expected);
        }

        /// Whole-header replacement with `update_bytes` (even start, the rewriter's way).
        #[test]
        fn whole_header_update(
            v6 in any::<bool>(),
            seq in any::<u32>(),
            words in proptest::collection::vec(any::<u8>(), 40),
            new_words in proptest::collection::vec(any::<u8>(), 40),
            payload in proptest::collection::vec(any::<u8>(), 0..17),
        ) {
            let mut frame = tcp_frame(v6, seq, 0, &words, &payload);
            let (start, len, _) = locate(&frame);
            let seg = &mut frame[start..start + len];
            let old: Vec<u8> = seg[..60].to_vec();
            seg[20..60].copy_from_slice(&new_words);
            let csum = update_bytes(stored_checksum(seg), &old, &seg[..60]);
            set_checksum(seg, csum);
            let (_, _, expected) = locate(&frame);
            prop_assert_eq!(csum, expected);
        }
    }
}
