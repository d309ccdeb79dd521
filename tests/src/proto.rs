//! The deterministic test protocol spoken by `colo-testsrv`, shared by the server,
//! its client mode and the tests that compute what the client must receive.
//!
//! - **bulk**: the client sends `GET <n>\n`; the server answers with the first `n`
//!   bytes of [`bulk_byte`]; the client, having read `n` bytes, closes first, and the
//!   server closes when it sees the client's FIN.
//! - **bulk-close**: the same, but the server closes right after the data (as an
//!   HTTP/1.0 server does), so its FIN comes first.
//! - **echo**: the client sends lines; the server answers each with [`echo_reply`].
//! - **nondet**: like echo, but every reply carries the server's current time in
//!   nanoseconds ([`nondet_reply`]): the primary and the secondary answer differently.

/// Byte `i` of the bulk stream: a counter-based pattern (the top byte of a
/// multiplicative hash of `i`), so that misplaced or repeated bytes are noticed.
#[must_use]
pub const fn bulk_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// The first `n` bytes of the bulk stream.
#[must_use]
pub fn bulk_bytes(n: usize) -> Vec<u8> {
    (0..n as u64).map(bulk_byte).collect()
}

/// Fill `buf` with bulk bytes starting at stream position `start`.
pub fn fill_bulk(start: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = bulk_byte(start + i as u64);
    }
}

/// The bulk request for `n` bytes.
#[must_use]
pub fn bulk_request(n: u64) -> String {
    format!("GET {n}\n")
}

/// Parse a bulk request line (without its newline).
#[must_use]
pub fn parse_bulk_request(line: &str) -> Option<u64> {
    line.strip_prefix("GET ")?.trim().parse().ok()
}

/// Request line number `i` of echo connection `conn` (newline included). Lengths
/// vary from 12 to about 150 bytes so that segments differ in size.
#[must_use]
pub fn echo_request(conn: u32, i: u32) -> String {
    let pad = (conn.wrapping_mul(37).wrapping_add(i.wrapping_mul(53)) % 128) as usize;
    let fill: String = (0..pad)
        .map(|k| char::from(b'a' + ((k as u32 + i) % 26) as u8))
        .collect();
    format!("msg {conn}-{i} {fill}\n")
}

/// The echo server's reply to a request `line` (given without its newline).
#[must_use]
pub fn echo_reply(line: &str) -> String {
    format!("ok {} {line}\n", line.len())
}

/// Everything an echo client of connection `conn` receives for `count` requests.
#[must_use]
pub fn echo_transcript(conn: u32, count: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        let req = echo_request(conn, i);
        out.extend_from_slice(echo_reply(req.trim_end_matches('\n')).as_bytes());
    }
    out
}

/// The nondet server's reply to `line`: the echo reply's prefix, then `t=<nanos>`.
#[must_use]
pub fn nondet_reply(line: &str, nanos: u128) -> String {
    format!("{} t={nanos}\n", nondet_reply_prefix(line))
}

/// The part of a nondet reply that does not depend on time: `ok <len> <line>`.
#[must_use]
pub fn nondet_reply_prefix(line: &str) -> String {
    format!("ok {} {line}", line.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_pattern_is_not_trivially_periodic() {
        let b = bulk_bytes(4096);
        assert_ne!(b[..256], b[256..512]);
        let mut buf = [0u8; 16];
        fill_bulk(100, &mut buf);
        assert_eq!(&buf[..], &b[100..116]);
    }

    #[test]
    fn echo_requests_parse_back() {
        let r = echo_request(3, 7);
        assert!(r.starts_with("msg 3-7 "));
        assert!(r.ends_with('\n'));
        assert_eq!(parse_bulk_request("GET 42"), Some(42));
        assert_eq!(parse_bulk_request("PUT 42"), None);
        assert!(nondet_reply("x", 5).starts_with(&nondet_reply_prefix("x")));
    }
}
