//! Small in-place views of an Ethernet frame's IP and transport headers: where the
//! IP packet ends (to tell a snaplen-cut frame from one that only lost its padding),
//! and rewriting the secondary's addresses, ports and acknowledgement numbers into
//! the primary's connection, as the live rewriter would have done.

/// Where the IP header starts, after any 802.1Q/802.1ad tags, and its ethertype.
fn ip_start(eth: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    loop {
        let ty = u16::from_be_bytes([*eth.get(at)?, *eth.get(at + 1)?]);
        if matches!(ty, 0x8100 | 0x88a8 | 0x9100) {
            at += 4;
            continue;
        }
        return Some((at + 2, ty));
    }
}

/// Source MAC address.
#[must_use]
pub fn src_mac(eth: &[u8]) -> Option<[u8; 6]> {
    eth.get(6..12).map(|m| [m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// The frame length the IP header declares (Ethernet and tags included), or `None`
/// for a non-IP frame or when even the IP header is missing.
#[must_use]
pub fn ip_frame_len(eth: &[u8]) -> Option<usize> {
    let (at, ty) = ip_start(eth)?;
    match ty {
        0x0800 => {
            let t = u16::from_be_bytes([*eth.get(at + 2)?, *eth.get(at + 3)?]);
            Some(at + usize::from(t))
        }
        0x86dd => {
            let p = u16::from_be_bytes([*eth.get(at + 4)?, *eth.get(at + 5)?]);
            Some(at + 40 + usize::from(p))
        }
        _ => None,
    }
}

/// Make a snaplen-cut frame parseable: shrink the IP length field to what was
/// captured, so the classifier still sees its flow, sequence number and flags.
/// Returns the payload bytes that are missing (0 when the frame is whole).
pub fn clip_cut(eth: &mut [u8]) -> usize {
    let Some(declared) = ip_frame_len(eth) else {
        return 0;
    };
    if declared <= eth.len() {
        return 0;
    }
    let missing = declared - eth.len();
    let Some((at, ty)) = ip_start(eth) else {
        return missing;
    };
    let (field, len) = match ty {
        0x0800 => (at + 2, eth.len() - at),
        _ => (at + 4, eth.len().saturating_sub(at + 40)),
    };
    let len = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(f) = eth.get_mut(field..field + 2) {
        f.copy_from_slice(&len);
    }
    missing
}

/// The transport header's offset and protocol number (IPv6 extension headers are
/// not walked: such frames are not rewritten).
fn l4_start(eth: &[u8]) -> Option<(usize, usize, u8, bool)> {
    let (at, ty) = ip_start(eth)?;
    match ty {
        0x0800 => {
            let ihl = usize::from(eth.get(at)? & 0x0f) * 4;
            Some((at, at + ihl, *eth.get(at + 9)?, true))
        }
        0x86dd => {
            // Walk the extension headers (hop-by-hop, routing, destination options,
            // fragment) to the upper-layer header. A non-first fragment has none.
            let mut next = *eth.get(at + 6)?;
            let mut l4 = at + 40;
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let len = (usize::from(*eth.get(l4 + 1)?) + 1) * 8;
                        next = *eth.get(l4)?;
                        l4 += len;
                    }
                    44 => {
                        let offset = u16::from_be_bytes([*eth.get(l4 + 2)?, *eth.get(l4 + 3)?]);
                        next = *eth.get(l4)?;
                        l4 += 8;
                        if offset & 0xfff8 != 0 {
                            return Some((at, l4, 44, false));
                        }
                    }
                    _ => break,
                }
            }
            Some((at, l4, next, false))
        }
        _ => None,
    }
}

/// How to turn a secondary frame into the primary's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// Source address and port (the primary's VM endpoint).
    pub src: ([u8; 16], u16),
    /// Destination address and port (the primary's client endpoint).
    pub dst: ([u8; 16], u16),
    /// Added to the acknowledgement number (the client's ISN differs per capture).
    pub ack_delta: u32,
    /// Added to TCP sequence numbers (alignment by first segment; 0 when the
    /// rewriter aligns them).
    pub seq_delta: u32,
}

fn put_addr(eth: &mut [u8], at: usize, addr: &[u8; 16], v4: bool) {
    if v4 {
        if let Some(d) = eth.get_mut(at..at + 4) {
            d.copy_from_slice(&addr[12..]);
        }
    } else if let Some(d) = eth.get_mut(at..at + 16) {
        d.copy_from_slice(addr);
    }
}

/// Apply `rw` to a TCP or UDP frame in place. Checksums are left as they are: the
/// engine never compares them.
pub fn rewrite(eth: &mut [u8], rw: &Rewrite) {
    let Some((ip, l4, proto, v4)) = l4_start(eth) else {
        return;
    };
    if v4 {
        put_addr(eth, ip + 12, &rw.src.0, true);
        put_addr(eth, ip + 16, &rw.dst.0, true);
    } else {
        put_addr(eth, ip + 8, &rw.src.0, false);
        put_addr(eth, ip + 24, &rw.dst.0, false);
    }
    // ICMP and ICMPv6 echo: the identifier stands for the ports.
    if matches!(proto, 1 | 58) && eth.len() >= l4 + 6 {
        let echo = if proto == 1 { [0, 8] } else { [128, 129] };
        if echo.contains(&eth[l4]) {
            // Both endpoints of an echo flow carry the identifier as their port.
            eth[l4 + 4..l4 + 6].copy_from_slice(&rw.src.1.to_be_bytes());
        }
        return;
    }
    if !matches!(proto, 6 | 17) || eth.len() < l4 + 4 {
        return;
    }
    if proto == 6 && eth.len() >= l4 + 8 && rw.seq_delta != 0 {
        let seq = u32::from_be_bytes([eth[l4 + 4], eth[l4 + 5], eth[l4 + 6], eth[l4 + 7]]);
        eth[l4 + 4..l4 + 8].copy_from_slice(&seq.wrapping_add(rw.seq_delta).to_be_bytes());
    }
    eth[l4..l4 + 2].copy_from_slice(&rw.src.1.to_be_bytes());
    eth[l4 + 2..l4 + 4].copy_from_slice(&rw.dst.1.to_be_bytes());
    if proto == 6 && eth.len() >= l4 + 14 && eth[l4 + 13] & 0x10 != 0 {
        let ack = u32::from_be_bytes([eth[l4 + 8], eth[l4 + 9], eth[l4 + 10], eth[l4 + 11]]);
        eth[l4 + 8..l4 + 12].copy_from_slice(&ack.wrapping_add(rw.ack_delta).to_be_bytes());
    }
}

/// Add `delta` to a TCP frame's sequence number (and `ack_delta` to its
/// acknowledgement), and `ts_delta` to both TCP timestamp option values. Used by
/// tests to make a shifted copy of a capture.
#[cfg(test)]
pub fn shift_tcp(eth: &mut [u8], delta: u32, ack_delta: u32, ts_delta: u32) {
    let Some((_, l4, 6, _)) = l4_start(eth) else {
        return;
    };
    if eth.len() < l4 + 20 {
        return;
    }
    let get = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let seq = get(eth, l4 + 4).wrapping_add(delta);
    eth[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    if eth[l4 + 13] & 0x10 != 0 {
        let ack = get(eth, l4 + 8).wrapping_add(ack_delta);
        eth[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
    }
    let hlen = usize::from(eth[l4 + 12] >> 4) * 4;
    let mut at = l4 + 20;
    let end = (l4 + hlen).min(eth.len());
    while at < end {
        match eth[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let Some(&len) = eth.get(at + 1) else { break };
                let len = usize::from(len);
                if len < 2 || at + len > end {
                    break;
                }
                if kind == 8 && len == 10 {
                    for f in [at + 2, at + 6] {
                        let v = get(eth, f).wrapping_add(ts_delta);
                        eth[f..f + 4].copy_from_slice(&v.to_be_bytes());
                    }
                }
                at += len;
            }
        }
    }
}
