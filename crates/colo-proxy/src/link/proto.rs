//! The link protocol's wire format (docs/link-protocol.md), without I/O.
//!
//! A connection starts with a fixed 11-byte hello from each side: the magic
//! `COLOLINK`, a be16 version and a role byte. Then typed messages, each
//! `be32 length | u8 type | body` where the length counts the type byte and the body
//! and is checked against a maximum before anything is buffered.

use bytes::{Buf as _, Bytes, BytesMut};
use colo_core::Frame;

/// The first eight bytes each side sends.
pub const MAGIC: [u8; 8] = *b"COLOLINK";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Length of the hello.
pub const HELLO_LEN: usize = 11;

const T_CLIENT_FRAME: u8 = 1;
const T_SECONDARY_FRAME: u8 = 2;
const T_CHECKPOINT_DONE: u8 = 3;
const T_HEARTBEAT: u8 = 4;

/// Which proxy is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// `colo-proxy primary` (dials or listens; faces the client).
    Primary,
    /// `colo-proxy secondary`.
    Secondary,
}

impl LinkRole {
    const fn byte(self) -> u8 {
        match self {
            Self::Primary => 1,
            Self::Secondary => 2,
        }
    }

    /// The role the other end must have.
    #[must_use]
    pub const fn peer(self) -> Self {
        match self {
            Self::Primary => Self::Secondary,
            Self::Secondary => Self::Primary,
        }
    }

    /// The role's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// One message after the hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A frame from the client, mirrored by the primary to the secondary.
    ClientFrame(Frame),
    /// A frame of the secondary VM's output (already rewritten), for the primary's
    /// compare engine.
    SecondaryFrame(Frame),
    /// The primary's checkpoint `epoch` has completed (the engine's epoch after it).
    CheckpointDone(u64),
    /// Nothing: proof of life.
    Heartbeat,
}

impl Message {
    /// The message's name, for logs and counters.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::ClientFrame(_) => "client-frame",
            Self::SecondaryFrame(_) => "secondary-frame",
            Self::CheckpointDone(_) => "checkpoint-done",
            Self::Heartbeat => "heartbeat",
        }
    }
}

/// What was wrong with the bytes the peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The hello's first eight bytes are not the magic.
    #[error(
        "the peer does not speak the colo-proxy link protocol (first bytes {got:02x?}, expected \"COLOLINK\"); check that --link points at the other proxy's --link"
    )]
    BadMagic {
        /// What came instead.
        got: Vec<u8>,
    },
    /// The peer speaks another version.
    #[error(
        "the peer speaks link protocol version {got}, this proxy version {VERSION}; run the same colo-proxy version on both hosts"
    )]
    Version {
        /// The peer's version.
        got: u16,
    },
    /// The peer has the wrong role (two primaries, say).
    #[error(
        "the peer says it is a {got} proxy, but a {want} was expected; check both proxies' roles"
    )]
    Role {
        /// What the peer says it is.
        got: String,
        /// What it must be.
        want: &'static str,
    },
    /// A length prefix beyond the maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A type byte this version does not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A body of the wrong size for its type.
    #[error("malformed {kind} message ({len} bytes)")]
    Malformed {
        /// The type's name.
        kind: &'static str,
        /// Body length.
        len: usize,
    },
}

/// The hello `role` sends.
#[must_use]
pub fn hello(role: LinkRole) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_be_bytes());
    h[10] = role.byte();
    h
}

/// Check the peer's hello: it must speak our version and be `want`.
///
/// # Errors
/// Wrong magic, version or role.
pub fn check_hello(bytes: &[u8; HELLO_LEN], want: LinkRole) -> Result<(), LinkError> {
    if bytes[..8] != MAGIC {
        return Err(LinkError::BadMagic {
            got: bytes[..8].to_vec(),
        });
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(LinkError::Version { got: version });
    }
    if bytes[10] != want.byte() {
        let got = match bytes[10] {
            1 => "primary".to_owned(),
            2 => "secondary".to_owned(),
            b => format!("unknown ({b})"),
        };
        return Err(LinkError::Role {
            got,
            want: want.as_str(),
        });
    }
    Ok(())
}

/// Longest fixed part of a message (length, type, then a frame's `vnet_hdr_len` or
/// a checkpoint's epoch).
pub const HEAD_MAX: usize = 13;

/// A message on the wire in two parts: its fixed head, then the frame's bytes (empty
/// for messages without a frame). The frame is shared, not copied, so a message can
/// be queued as `head` + `body` and written with a vectored write.
#[derive(Debug, Clone)]
pub struct Parts {
    head: [u8; HEAD_MAX],
    head_len: usize,
    /// The frame's bytes (shared with the frame), or empty.
    pub body: Bytes,
}

impl Parts {
    /// `msg` split into head and body.
    #[must_use]
    pub fn of(msg: &Message) -> Self {
        let mut head = [0u8; HEAD_MAX];
        let frame = |kind: u8, f: &Frame, head: &mut [u8; HEAD_MAX]| {
            let len = u32::try_from(1 + 4 + f.data.len()).unwrap_or(u32::MAX);
            head[..4].copy_from_slice(&len.to_be_bytes());
            head[4] = kind;
            head[5..9].copy_from_slice(&f.vnet_hdr_len.to_be_bytes());
            (9, f.data.clone())
        };
        let (head_len, body) = match msg {
            Message::ClientFrame(f) => frame(T_CLIENT_FRAME, f, &mut head),
            Message::SecondaryFrame(f) => frame(T_SECONDARY_FRAME, f, &mut head),
            Message::CheckpointDone(epoch) => {
                head[..4].copy_from_slice(&9u32.to_be_bytes());
                head[4] = T_CHECKPOINT_DONE;
                head[5..13].copy_from_slice(&epoch.to_be_bytes());
                (13, Bytes::new())
            }
            Message::Heartbeat => {
                head[..4].copy_from_slice(&1u32.to_be_bytes());
                head[4] = T_HEARTBEAT;
                (5, Bytes::new())
            }
        };
        Self {
            head,
            head_len,
            body,
        }
    }

    /// The fixed head (length, type, fixed fields).
    #[must_use]
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }
}

/// Append `msg` on the wire to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) {
    let parts = Parts::of(msg);
    out.reserve(parts.head().len() + parts.body.len());
    out.extend_from_slice(parts.head());
    out.extend_from_slice(&parts.body);
}

/// `msg` on the wire.
#[must_use]
pub fn encoded(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    encode(msg, &mut out);
    out.freeze()
}

/// Splits the byte stream after the hello into messages; bounded by `max`.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    /// A decoder accepting messages of at most `max` bytes (type byte and body).
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Append received bytes (tests; the link reads into [`Decoder::read_buffer`]).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly, with at least `min_free` bytes of spare
    /// capacity; whatever is appended to it is decoded by the next
    /// [`Decoder::poll`]. Messages are slices of it, so nothing is copied. Room is
    /// made only when less than `min_free` is spare, and then for `chunk` bytes, so
    /// small reads share one allocation (as the frame codec's `read_buffer`).
    pub fn read_buffer(&mut self, min_free: usize, chunk: usize) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < min_free {
            self.buf.reserve(chunk.max(min_free));
        }
        &mut self.buf
    }

    /// The next whole message, if one is buffered.
    ///
    /// # Errors
    /// A length over the maximum, an unknown type or a malformed body: the stream
    /// cannot be trusted any further.
    pub fn poll(&mut self) -> Result<Option<Message>, LinkError> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.max {
            return Err(LinkError::TooLong { len, max: self.max });
        }
        if len == 0 {
            return Err(LinkError::Malformed {
                kind: "empty",
                len: 0,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let mut body = self.buf.split_to(len).freeze();
        let kind = body.get_u8();
        let frame = |body: &mut Bytes, kind: &'static str| -> Result<Frame, LinkError> {
            let malformed = LinkError::Malformed {
                kind,
                len: body.len(),
            };
            if body.len() < 5 {
                return Err(malformed);
            }
            let vnet_hdr_len = body.get_u32();
            if vnet_hdr_len as usize > body.len() {
                return Err(malformed);
            }
            Ok(Frame {
                vnet_hdr_len,
                data: core::mem::take(body),
            })
        };
        let msg = match kind {
            T_CLIENT_FRAME => Message::ClientFrame(frame(&mut body, "client-frame")?),
            T_SECONDARY_FRAME => Message::SecondaryFrame(frame(&mut body, "secondary-frame")?),
            T_CHECKPOINT_DONE if body.len() == 8 => Message::CheckpointDone(body.get_u64()),
            T_CHECKPOINT_DONE => {
                return Err(LinkError::Malformed {
                    kind: "checkpoint-done",
                    len: body.len(),
                });
            }
            T_HEARTBEAT if body.is_empty() => Message::Heartbeat,
            T_HEARTBEAT => {
                return Err(LinkError::Malformed {
                    kind: "heartbeat",
                    len: body.len(),
                });
            }
            other => return Err(LinkError::UnknownType(other)),
        };
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks_magic_version_and_role() {
        let h = hello(LinkRole::Primary);
        assert_eq!(&h[..8], b"COLOLINK");
        assert_eq!(check_hello(&h, LinkRole::Primary), Ok(()));
        assert!(matches!(
            check_hello(&h, LinkRole::Secondary),
            Err(LinkError::Role { .. })
        ));
        let mut v = h;
        v[9] = 9;
        assert_eq!(
            check_hello(&v, LinkRole::Primary),
            Err(LinkError::Version { got: 9 })
        );
        let garbage = *b"GET / HTTP/";
        let e = check_hello(&garbage, LinkRole::Primary).unwrap_err();
        assert!(e.to_string().contains("does not speak"), "{e}");
    }

    #[test]
    fn messages_round_trip_split_anywhere() {
        let msgs = vec![
            Message::ClientFrame(Frame::ethernet(vec![1u8; 60])),
            Message::Heartbeat,
            Message::SecondaryFrame(Frame {
                vnet_hdr_len: 10,
                data: Bytes::from(vec![7u8; 80]),
            }),
            Message::CheckpointDone(42),
        ];
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode(m, &mut wire);
        }
        // The wire format of docs/link-protocol.md, byte for byte.
        assert_eq!(&wire[..9], &[0, 0, 0, 65, 1, 0, 0, 0, 0]);
        assert_eq!(&wire[69..74], &[0, 0, 0, 1, 4]);
        assert_eq!(&wire[74..83], &[0, 0, 0, 85, 2, 0, 0, 0, 10]);
        assert_eq!(
            &wire[wire.len() - 13..],
            &[0, 0, 0, 9, 3, 0, 0, 0, 0, 0, 0, 0, 42]
        );
        for step in [1, 3, 7, wire.len()] {
            let mut d = Decoder::new(256 * 1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.push(chunk);
                while let Some(m) = d.poll().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "step {step}");
        }
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let cases: [(&[u8], &str); 5] = [
            (&[0xff, 0xff, 0xff, 0xff], "exceeds"),
            (&[0, 0, 0, 0], "malformed"),
            (&[0, 0, 0, 1, 99], "unknown"),
            (&[0, 0, 0, 3, 1, 0, 0], "malformed client-frame"),
            (&[0, 0, 0, 2, 4, 0], "malformed heartbeat"),
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::new(1024);
            d.push(bytes);
            let e = d.poll().unwrap_err().to_string();
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
        // A vnet header longer than the frame.
        let mut d = Decoder::new(1024);
        d.push(&[0, 0, 0, 7, 1, 0, 0, 0, 9, 1, 2]);
        assert!(d.poll().is_err());
    }
}
