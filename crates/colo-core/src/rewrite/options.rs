//! A strict, allocation-free walk over the TCP option list, locating the two options
//! the rewriter changes: timestamps (kind 8) and SACK (kind 5).
//!
//! Any inconsistency (a length byte missing, a length below 2 or past the header end,
//! a timestamps option that is not 10 bytes, a SACK option that is not `2 + 8n` bytes
//! with `1 <= n <= 4`, either option twice) is an error: the rewriter then leaves the
//! options alone rather than guess which bytes are which.

use thiserror::Error;

/// Kind of the end-of-option-list option.
pub const KIND_EOL: u8 = 0;
/// Kind of the no-operation (padding) option.
pub const KIND_NOP: u8 = 1;
/// Kind of the SACK option (RFC 2018).
pub const KIND_SACK: u8 = 5;
/// Kind of the timestamps option (RFC 7323).
pub const KIND_TIMESTAMPS: u8 = 8;

/// Length of the fixed part of a TCP header.
const FIXED_HEADER_LEN: usize = 20;

/// Where the options the rewriter cares about sit, as offsets from the start of the
/// TCP header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Offset of the timestamps option's TSval; its TSecr follows 4 bytes later.
    pub timestamps: Option<usize>,
    /// Offset of the first SACK block and the number of blocks (1 to 4). Each block is
    /// a left edge then a right edge, 4 bytes each.
    pub sack: Option<(usize, usize)>,
}

/// Why an option list was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OptionError {
    /// The TCP header is shorter than 20 bytes.
    #[error("TCP header of {0} bytes is shorter than 20")]
    ShortHeader(usize),
    /// An option's length byte lies past the end of the header.
    #[error("option kind {kind} at offset {at} has no length byte")]
    Truncated {
        /// The option kind.
        kind: u8,
        /// Its offset in the TCP header.
        at: usize,
    },
    /// An option's length is below 2 or runs past the end of the header.
    #[error("option kind {kind} at offset {at} has bad length {len}")]
    BadLength {
        /// The option kind.
        kind: u8,
        /// Its offset in the TCP header.
        at: usize,
        /// The length byte.
        len: u8,
    },
    /// A timestamps option whose length is not 10.
    #[error("timestamps option has length {0}, not 10")]
    BadTimestamps(u8),
    /// A SACK option whose length is not 2 + 8n with n from 1 to 4.
    #[error("SACK option has length {0}, not 2 + 8n (n = 1..=4)")]
    BadSack(u8),
    /// Timestamps or SACK appear more than once.
    #[error("option kind {0} appears more than once")]
    Duplicate(u8),
}

/// Walk the options of `header` (a whole TCP header, options included, exactly
/// `data offset * 4` bytes long).
///
/// # Errors
/// Any inconsistency in the option list; see [`OptionError`].
pub fn parse_options(header: &[u8]) -> Result<TcpOptions, OptionError> {
    if header.len() < FIXED_HEADER_LEN {
        return Err(OptionError::ShortHeader(header.len()));
    }
    let mut found = TcpOptions::default();
    let mut at = FIXED_HEADER_LEN;
    while let Some(&kind) = header.get(at) {
        match kind {
            KIND_EOL => break,
            KIND_NOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let Some(&len) = header.get(at + 1) else {
            return Err(OptionError::Truncated { kind, at });
        };
        let end = at + usize::from(len);
        if len < 2 || end > header.len() {
            return Err(OptionError::BadLength { kind, at, len });
        }
        match kind {
            KIND_TIMESTAMPS => {
                if len != 10 {
                    return Err(OptionError::BadTimestamps(len));
                }
                if found.timestamps.replace(at + 2).is_some() {
                    return Err(OptionError::Duplicate(kind));
                }
            }
            KIND_SACK => {
                let body = usize::from(len) - 2;
                if body == 0 || body % 8 != 0 || body / 8 > 4 {
                    return Err(OptionError::BadSack(len));
                }
                if found.sack.replace((at + 2, body / 8)).is_some() {
                    return Err(OptionError::Duplicate(kind));
                }
            }
            _ => {}
        }
        at = end;
    }
    Ok(found)
}

/// Read a big-endian u32 at `at` (the caller has checked the bounds via [`parse_options`]).
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Write a big-endian u32 at `at`; does nothing if out of bounds.
pub(crate) fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    if let Some(b) = bytes.get_mut(at..at + 4) {
        b.copy_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(options: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h.extend_from_slice(options);
        h
    }

    #[test]
    fn typical_lists() {
        // NOP NOP TS: Linux's usual layout.
        let h = header(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(
            parse_options(&h),
            Ok(TcpOptions {
                timestamps: Some(24),
                sack: None
            })
        );
        // MSS, SACK-permitted, TS (unaligned), NOP, wscale.
        let h = header(&[
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        assert_eq!(parse_options(&h).unwrap().timestamps, Some(28));
        // NOP NOP TS NOP NOP SACK(2 blocks).
        let mut o = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18];
        o.extend_from_slice(&[0; 16]);
        let t = parse_options(&header(&o)).unwrap();
        assert_eq!(t.timestamps, Some(24));
        assert_eq!(t.sack, Some((36, 2)));
        // EOL stops the walk even if garbage follows.
        assert_eq!(
            parse_options(&header(&[0, 8, 99, 1])),
            Ok(TcpOptions::default())
        );
        assert_eq!(parse_options(&header(&[])), Ok(TcpOptions::default()));
    }

    #[test]
    fn inconsistent_lists() {
        assert_eq!(parse_options(&[0; 19]), Err(OptionError::ShortHeader(19)));
        assert_eq!(
            parse_options(&header(&[1, 1, 1, 2])),
            Err(OptionError::Truncated { kind: 2, at: 23 })
        );
        assert_eq!(
            parse_options(&header(&[2, 8, 0, 0])),
            Err(OptionError::BadLength {
                kind: 2,
                at: 20,
                len: 8
            })
        );
        assert_eq!(
            parse_options(&header(&[2, 1, 0, 0])),
            Err(OptionError::BadLength {
                kind: 2,
                at: 20,
                len: 1
            })
        );
        assert_eq!(
            parse_options(&header(&[8, 8, 0, 0, 0, 0, 0, 0])),
            Err(OptionError::BadTimestamps(8))
        );
        assert_eq!(
            parse_options(&header(&[5, 6, 0, 0, 0, 0, 1, 1])),
            Err(OptionError::BadSack(6))
        );
        assert_eq!(
            parse_options(&header(&[5, 2, 1, 1])),
            Err(OptionError::BadSack(2))
        );
        // Five blocks cannot fit in 40 option bytes: the length runs past the header.
        let mut o = vec![5, 42];
        o.extend_from_slice(&[0; 40 - 2]);
        assert_eq!(
            parse_options(&header(&o)),
            Err(OptionError::BadLength {
                kind: 5,
                at: 20,
                len: 42
            })
        );
        let two_ts = [8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_options(&header(&two_ts)),
            Err(OptionError::Duplicate(8))
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_offsets_are_in_bounds(
            opts in proptest::collection::vec(proptest::num::u8::ANY, 0..=40)
        ) {
            let h = header(&opts);
            if let Ok(t) = parse_options(&h) {
                if let Some(ts) = t.timestamps {
                    proptest::prop_assert!(ts + 8 <= h.len());
                }
                if let Some((at, n)) = t.sack {
                    proptest::prop_assert!(at + 8 * n <= h.len());
                }
            }
        }
    }
}
