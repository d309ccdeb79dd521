//! What the simulated applications say: the client's HTTP-like requests, the
//! servers' responses (header plus a deterministic body) and the UDP exchange.
//!
//! Everything is a pure function of its arguments, so both VMs produce the same bytes
//! unless they are given different clock readings, which is how the demo models a
//! nondeterministic reply.

use bytes::Bytes;

use super::rng::Rng;

/// The simulated wall clock's origin: 2026-01-01T00:00:00Z, in Unix seconds.
pub const CLOCK_ORIGIN_UNIX: u64 = 1_767_225_600;

/// Length of one body line.
const LINE: usize = 64;

/// Base32 alphabet (RFC 4648), for readable body bytes.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The request the client sends on connection `conn`.
#[must_use]
pub fn http_request(conn: usize) -> Vec<u8> {
    format!(
        "GET /objects/{conn} HTTP/1.1\r\nHost: vm.colo.demo\r\nUser-Agent: colo-demo-client\r\n\r\n"
    )
    .into_bytes()
}

/// A complete request has been received when it ends with an empty line.
#[must_use]
pub fn request_complete(buf: &[u8]) -> bool {
    buf.ends_with(b"\r\n\r\n")
}

/// The total length (header and body) of the HTTP response at the start of `buf`,
/// once its header is complete and carries a `Content-Length`.
#[must_use]
pub fn response_length(buf: &[u8]) -> Option<usize> {
    let header_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let header = std::str::from_utf8(&buf[..header_end]).ok()?;
    header.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
            .map(|body| header_end + body)
    })
}

/// The response to connection `conn`: a header carrying a `Date` read from the
/// server's clock (`clock_micros` since [`CLOCK_ORIGIN_UNIX`]), then `body_len`
/// deterministic bytes.
#[must_use]
pub fn http_response(seed: u64, conn: usize, body_len: usize, clock_micros: u64) -> Bytes {
    let date = http_date(CLOCK_ORIGIN_UNIX + clock_micros / 1_000_000);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nServer: colo-demo\r\nDate: {date}\r\n\
         Content-Type: text/plain\r\nContent-Length: {body_len}\r\n\
         X-Object: {conn}\r\n\r\n"
    )
    .into_bytes();
    out.reserve(body_len);
    append_body(&mut out, seed, conn, body_len);
    Bytes::from(out)
}

/// `len` bytes of 64-byte text lines: connection, line number, random base32.
fn append_body(out: &mut Vec<u8>, seed: u64, conn: usize, len: usize) {
    let mut rng = Rng::derive(seed, 0x1000_0000 + conn as u64);
    let end = out.len() + len;
    let mut line_no = 0u64;
    let mut line = Vec::with_capacity(LINE);
    while out.len() < end {
        line.clear();
        line.extend_from_slice(format!("{conn:05} {line_no:08} ").as_bytes());
        while line.len() < LINE - 1 {
            let r = rng.next_u64();
            for i in 0..12 {
                if line.len() < LINE - 1 {
                    line.push(ALPHABET[((r >> (5 * i)) & 31) as usize]);
                }
            }
        }
        line.push(b'\n');
        let take = line.len().min(end - out.len());
        out.extend_from_slice(&line[..take]);
        line_no += 1;
    }
}

/// An RFC 9110 IMF-fixdate: `Thu, 01 Jan 2026 00:00:00 GMT`.
#[must_use]
pub fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01 (H. Hinnant's
/// algorithm, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The client's UDP query number `index`.
#[must_use]
pub fn udp_query(index: u32) -> Vec<u8> {
    format!("Q {index:06} lookup object-{index}.colo.demo\n").into_bytes()
}

/// The server's answer to query `index`, stamped with its clock.
#[must_use]
pub fn udp_reply(seed: u64, index: u32, clock_micros: u64) -> Vec<u8> {
    let value = Rng::derive(seed, 0x2000_0000 + u64::from(index)).next_u64();
    format!("R {index:06} value={value:016x} served-at={clock_micros}us\n").into_bytes()
}

/// The exchange number a query or reply carries.
#[must_use]
pub fn udp_index(payload: &[u8]) -> Option<u32> {
    let digits = payload.get(2..8)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_http() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(CLOCK_ORIGIN_UNIX),
            "Thu, 01 Jan 2026 00:00:00 GMT"
        );
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn responses_are_deterministic_and_sized() {
        let a = http_response(1, 3, 10_000, 5);
        let b = http_response(1, 3, 10_000, 5);
        assert_eq!(a, b);
        let header = a.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(a.len() - header, 10_000);
        assert!(a[header..].starts_with(b"00003 00000000 "));
        assert_ne!(
            a,
            http_response(2, 3, 10_000, 5),
            "the seed changes the body"
        );
        assert_ne!(
            a,
            http_response(1, 3, 10_000, 2_000_000),
            "the clock changes the date"
        );
        let empty = http_response(1, 3, 0, 0);
        assert!(empty.ends_with(b"Content-Length: 0\r\nX-Object: 3\r\n\r\n"));
        assert_eq!(response_length(&empty), Some(empty.len()));
        assert_eq!(response_length(&a), Some(a.len()));
        assert_eq!(response_length(&a[..header]), Some(a.len()));
        assert_eq!(response_length(&a[..header - 1]), None);
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[test]
    fn requests_and_datagrams_round_trip() {
        assert!(request_complete(&http_request(4)));
        assert!(!request_complete(b"GET / HTTP/1.1\r\n"));
        assert_eq!(udp_index(&udp_query(42)), Some(42));
        assert_eq!(udp_index(&udp_reply(1, 42, 7)), Some(42));
        assert_eq!(udp_index(b"R x"), None);
        assert_eq!(udp_reply(1, 5, 9), udp_reply(1, 5, 9));
        assert_ne!(udp_reply(1, 5, 9), udp_reply(1, 5, 10));
    }
}
