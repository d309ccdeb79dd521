//! QEMU's socket framing, as spoken by `colo-compare`, `filter-mirror` and
//! `filter-redirector` over a chardev socket (QEMU `net/net.c`, `net_fill_rstate`).
//!
//! Every frame is a big-endian 32-bit length, then (only when vnet header support is
//! enabled on both ends, `vnet_hdr_support=on`) a big-endian 32-bit virtio-net header
//! length, then `len` bytes of data. The virtio-net header is *included* in those
//! `len` bytes, at the front:
//!
//! ```text
//!  without vnet_hdr_support:
//!  +--------+--------+--------+--------+------------------------------------+
//!  |        len (be32, bytes of data)   |  data: Ethernet frame (len bytes)  |
//!  +--------+--------+--------+--------+------------------------------------+
//!
//!  with vnet_hdr_support:
//!  +-------------------+-------------------+--------------------------------------+
//!  | len (be32)        | vnet_hdr_len      |  data (len bytes)                    |
//!  | = vnet + ethernet | (be32, 0..=20)    | +-----------------+----------------+ |
//!  |                   |                   | | virtio-net hdr  | Ethernet frame | |
//!  |                   |                   | | (vnet_hdr_len)  |                | |
//!  |                   |                   | +-----------------+----------------+ |
//!  +-------------------+-------------------+--------------------------------------+
//! ```
//!
//! [`Frame::data`] holds exactly the `len` data bytes, so a decoded frame re-encodes
//! to the same bytes.
//!
//! Everything here is sans-IO: [`FrameDecoder`] is fed with whatever byte chunks the
//! transport delivers ([`FrameDecoder::push`]) and hands out complete frames
//! ([`FrameDecoder::poll_frame`]) without copying them. [`encode_frame`] writes the
//! wire format into a [`BytesMut`]. For `-netdev dgram` (one frame per UDP datagram,
//! no length prefix) see [`frame_from_datagram`].
//!
//! Unlike QEMU, the decoder rejects a zero length (QEMU silently mishandles it) and
//! validates the length prefix as soon as it has arrived, before buffering the body,
//! so a corrupt or hostile prefix can never make it allocate more than
//! [`DecoderConfig::max_frame_len`] + 8 bytes for one frame.

use bytes::{Buf as _, BufMut, Bytes, BytesMut};

use crate::frame::Frame;

/// Largest virtio-net header QEMU accepts (`struct virtio_net_hdr_v1_hash`); QEMU
/// rejects a larger `vnet_hdr_len`. Common values are 0, 10, 12 and 20.
pub const MAX_VNET_HDR_LEN: u32 = 20;

/// Size of the `len` prefix.
const LEN_PREFIX: usize = 4;

/// Size of both prefixes when vnet header support is on.
const LEN_AND_VNET_PREFIX: usize = 8;

/// Default for [`DecoderConfig::max_frame_len`]: 256 KiB.
///
/// QEMU's own receive buffer (`NET_BUFSIZE`) is 4096 + 65536 = 69 632 bytes: a 64 KiB
/// GSO super-frame plus room for the Ethernet and virtio-net headers, and QEMU drops
/// the connection on anything larger. 256 KiB leaves generous headroom above that
/// (should a future QEMU raise the limit, or a peer batch larger GSO frames) while
/// still bounding what one connection can make the proxy buffer. A declared length
/// this large is far more likely a desynchronised stream (for instance the two ends
/// disagreeing on `vnet_hdr_support`) than a real frame.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 * 1024;

/// Why a frame could not be decoded.
///
/// All of these mean the byte stream is unusable from this point on: the
/// [`FrameDecoder`] stays poisoned until [`FrameDecoder::reset`], which is meant for
/// starting over on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is zero. QEMU never sends empty frames, so the stream is
    /// corrupt or out of sync.
    #[error(
        "frame length prefix is zero: the stream is corrupt or out of sync \
         (check that both ends agree on vnet_hdr_support, then reconnect)"
    )]
    ZeroLength,
    /// The declared (or datagram) length exceeds the configured maximum.
    #[error(
        "frame length {len} exceeds max_frame_len {max}: raise max_frame_len \
         or check that both ends agree on vnet_hdr_support"
    )]
    TooLong {
        /// The declared length.
        len: usize,
        /// The configured maximum ([`DecoderConfig::max_frame_len`]).
        max: usize,
    },
    /// The virtio-net header length is larger than [`MAX_VNET_HDR_LEN`] or than the
    /// frame itself.
    #[error(
        "virtio-net header length {vnet_hdr_len} is invalid for a {len}-byte frame \
         (must be at most 20 and at most the frame length): check that both ends \
         agree on vnet_hdr_support"
    )]
    BadVnetHeaderLen {
        /// The declared virtio-net header length.
        vnet_hdr_len: u32,
        /// The declared frame length.
        len: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error(
        "stream ended inside a frame: have {have} of at least {need} bytes \
         (the peer closed the connection mid-frame; the partial frame is dropped)"
    )]
    Truncated {
        /// Bytes of the partial frame (prefixes included) that did arrive.
        have: usize,
        /// Bytes needed to complete it, prefixes included, as far as known: while the
        /// prefixes themselves are incomplete this is just their size.
        need: usize,
    },
}

/// Settings for a [`FrameDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest accepted `len` (virtio-net header included, prefixes excluded).
    /// Defaults to [`DEFAULT_MAX_FRAME_LEN`] (256 KiB); see there for why.
    pub max_frame_len: usize,
    /// Whether the stream carries the `vnet_hdr_len` prefix; must match QEMU's
    /// `vnet_hdr_support` setting on the other end. Defaults to `false`, QEMU's default.
    pub vnet_hdr: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            vnet_hdr: false,
        }
    }
}

impl DecoderConfig {
    /// Size of the prefixes in front of each frame's data: 4, or 8 with vnet headers.
    #[must_use]
    pub const fn prefix_len(&self) -> usize {
        if self.vnet_hdr {
            LEN_AND_VNET_PREFIX
        } else {
            LEN_PREFIX
        }
    }
}

/// What the buffered bytes say about the next frame.
enum Pending {
    /// The prefixes are not complete yet; `need` is their size.
    Prefix { need: usize },
    /// The prefixes are complete and valid.
    Frame {
        prefix: usize,
        total: usize,
        vnet_hdr_len: u32,
    },
}

/// Incremental, zero-copy decoder for QEMU's socket framing.
///
/// Feed it bytes in pieces of any size with [`push`](Self::push), then call
/// [`poll_frame`](Self::poll_frame) until it returns `Ok(None)`. Frames are split off
/// the internal buffer without copying. At end of stream call
/// [`finish`](Self::finish) to learn whether a partial frame was left over.
///
/// Memory: the length prefix is validated as soon as its 4 bytes are in, so the
/// decoder never reserves more than `max_frame_len + 8` bytes for a declared frame.
/// After `poll_frame` has returned `Ok(None)`, at most one incomplete frame
/// (`prefix_len + max_frame_len` bytes) is buffered. Call `poll_frame` after every
/// `push`; bytes pushed without polling are buffered as they come.
///
/// Errors poison the decoder: the buffer is discarded, later `push`es are ignored and
/// `poll_frame` (and `finish`) keep returning the same error until
/// [`reset`](Self::reset).
#[derive(Debug)]
pub struct FrameDecoder {
    config: DecoderConfig,
    buf: BytesMut,
    poisoned: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DecoderConfig::default())
    }
}

impl FrameDecoder {
    /// A decoder with the given settings and an empty buffer.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            buf: BytesMut::new(),
            poisoned: None,
        }
    }

    /// The settings this decoder was created with.
    #[must_use]
    pub const fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Appends bytes as they arrived from the transport (any split, even one byte at a
    /// time). Ignored while the decoder is poisoned.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The decoder's own buffer with at least `min_free` bytes of spare capacity, to
    /// read transport bytes straight into (e.g. with tokio's `read_buf`) instead of
    /// copying them in with [`push`](Self::push). Only append to it, then call
    /// [`poll_frame`](Self::poll_frame) as after a `push`. While the decoder is
    /// poisoned the buffer is emptied on every call, so what is appended then is
    /// dropped, as `push` would ignore it.
    ///
    /// Room is made only when less than `min_free` is spare, and then for `chunk`
    /// bytes (at least `min_free`): successive small reads share one allocation
    /// instead of each asking for a fresh `chunk`-sized one (frames already decoded
    /// are slices of the old buffer, so it cannot be reused in place while they live).
    pub fn read_buffer(&mut self, min_free: usize, chunk: usize) -> &mut BytesMut {
        if self.poisoned.is_some() {
            self.buf = BytesMut::new();
        }
        if self.buf.capacity() - self.buf.len() < min_free {
            self.buf.reserve(chunk.max(min_free));
        }
        &mut self.buf
    }

    /// The next complete frame, `Ok(None)` if more input is needed, or the error that
    /// poisoned the stream (returned again on every call until [`reset`](Self::reset)).
    ///
    /// # Errors
    ///
    /// [`FrameError::ZeroLength`], [`FrameError::TooLong`] or
    /// [`FrameError::BadVnetHeaderLen`] as soon as the offending prefix has arrived.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        match self.pending() {
            Err(err) => {
                self.buf = BytesMut::new();
                self.poisoned = Some(err.clone());
                Err(err)
            }
            Ok(Pending::Prefix { need }) => {
                self.buf.reserve(need - self.buf.len());
                Ok(None)
            }
            Ok(Pending::Frame {
                prefix,
                total,
                vnet_hdr_len,
            }) => {
                if self.buf.len() < total {
                    // The length is validated, so this is bounded by max_frame_len + 8.
                    self.buf.reserve(total - self.buf.len());
                    return Ok(None);
                }
                // Skip the prefixes, then split the frame's bytes off: one new
                // reference to the buffer per frame, not two.
                self.buf.advance(prefix);
                let data = self.buf.split_to(total - prefix).freeze();
                Ok(Some(Frame { vnet_hdr_len, data }))
            }
        }
    }

    /// Checks, at end of stream, that no partial frame is left over.
    ///
    /// Call it after `poll_frame` has returned `Ok(None)`: it does not consume frames,
    /// and complete frames still buffered are not reported.
    ///
    /// # Errors
    ///
    /// [`FrameError::Truncated`] if an incomplete frame is buffered, or the error that
    /// poisoned the decoder (or that a pending prefix would poison it with).
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let have = self.buf.len();
        if have == 0 {
            return Ok(());
        }
        match self.pending()? {
            Pending::Prefix { need } | Pending::Frame { total: need, .. } if have < need => {
                Err(FrameError::Truncated { have, need })
            }
            _ => Ok(()),
        }
    }

    /// Bytes currently buffered (an incomplete frame, or frames not yet polled).
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether an error has poisoned the decoder (see [`reset`](Self::reset)).
    #[must_use]
    pub const fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Drops buffered bytes and any error, ready for a new connection. The settings
    /// are kept.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.poisoned = None;
    }

    /// Parses and validates the prefixes at the front of the buffer.
    fn pending(&self) -> Result<Pending, FrameError> {
        pending(&self.config, &self.buf)
    }
}

/// Parses and validates the prefixes at the front of `buf`.
fn pending(config: &DecoderConfig, buf: &[u8]) -> Result<Pending, FrameError> {
    let prefix = config.prefix_len();
    let Some(len) = read_be32(buf, 0) else {
        return Ok(Pending::Prefix { need: prefix });
    };
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > config.max_frame_len {
        return Err(FrameError::TooLong {
            len: len_usize,
            max: config.max_frame_len,
        });
    }
    let vnet_hdr_len = if config.vnet_hdr {
        let Some(vnet_hdr_len) = read_be32(buf, LEN_PREFIX) else {
            return Ok(Pending::Prefix { need: prefix });
        };
        if vnet_hdr_len > MAX_VNET_HDR_LEN || vnet_hdr_len > len {
            return Err(FrameError::BadVnetHeaderLen { vnet_hdr_len, len });
        }
        vnet_hdr_len
    } else {
        0
    };
    Ok(Pending::Frame {
        prefix,
        total: prefix + len_usize,
        vnet_hdr_len,
    })
}

/// Where the next whole frame lies in `bytes`, which start at a frame boundary of
/// QEMU's framing: the frame's data range and its vnet header length, or `Ok(None)`
/// if `bytes` do not hold all of it yet. Nothing is consumed; the next frame starts
/// at the returned range's end. The same checks as [`FrameDecoder::poll_frame`], for
/// callers that parse frames in place in a buffer of their own.
///
/// # Errors
///
/// As [`FrameDecoder::poll_frame`]: the stream cannot be decoded any further.
pub fn next_frame_in(
    config: &DecoderConfig,
    bytes: &[u8],
) -> Result<Option<(core::ops::Range<usize>, u32)>, FrameError> {
    match pending(config, bytes)? {
        Pending::Frame {
            prefix,
            total,
            vnet_hdr_len,
        } if bytes.len() >= total => Ok(Some((prefix..total, vnet_hdr_len))),
        _ => Ok(None),
    }
}

/// The big-endian u32 at `at`, if all four bytes are there.
fn read_be32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Bytes [`encode_frame`] writes for `frame`: the data plus 4 (or 8 with `vnet_hdr`)
/// bytes of prefix.
#[must_use]
pub fn encoded_len(frame: &Frame, vnet_hdr: bool) -> usize {
    let prefix = if vnet_hdr {
        LEN_AND_VNET_PREFIX
    } else {
        LEN_PREFIX
    };
    prefix + frame.data.len()
}

/// Appends `frame` to `out` in QEMU's socket framing.
///
/// With `vnet_hdr` the `vnet_hdr_len` prefix is written; without it that prefix is
/// omitted, but `data` is still written as-is (so any virtio-net header in it then
/// reaches the peer as part of the Ethernet frame).
///
/// # Panics
///
/// If `frame.data` is longer than `u32::MAX` bytes, which the wire format cannot carry.
pub fn encode_frame(frame: &Frame, vnet_hdr: bool, out: &mut BytesMut) {
    let len = u32::try_from(frame.data.len()).expect("frame data longer than u32::MAX bytes");
    out.reserve(encoded_len(frame, vnet_hdr));
    out.put_u32(len);
    if vnet_hdr {
        out.put_u32(frame.vnet_hdr_len);
    }
    out.extend_from_slice(&frame.data);
}

/// Wraps one `-netdev dgram` datagram (one frame, no prefixes, no virtio-net header)
/// as a [`Frame`], without copying.
///
/// # Errors
///
/// [`FrameError::ZeroLength`] for an empty datagram, [`FrameError::TooLong`] if it is
/// longer than `max_frame_len`.
pub fn frame_from_datagram(datagram: Bytes, max_frame_len: usize) -> Result<Frame, FrameError> {
    if datagram.is_empty() {
        return Err(FrameError::ZeroLength);
    }
    if datagram.len() > max_frame_len {
        return Err(FrameError::TooLong {
            len: datagram.len(),
            max: max_frame_len,
        });
    }
    Ok(Frame {
        vnet_hdr_len: 0,
        data: datagram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(vnet_hdr: bool) -> DecoderConfig {
        DecoderConfig {
            vnet_hdr,
            ..DecoderConfig::default()
        }
    }

    fn drain(dec: &mut FrameDecoder) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = dec.poll_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn read_buffer_has_room_and_is_emptied_while_poisoned() {
        let mut dec = FrameDecoder::new(cfg(false));
        let b = dec.read_buffer(1000, 1000);
        assert!(b.capacity() - b.len() >= 1000);
        b.extend_from_slice(&[0, 0, 0, 2, 7, 8, 0, 0]);
        assert_eq!(drain(&mut dec).unwrap().len(), 1);
        dec.read_buffer(10, 10).extend_from_slice(&[0, 0]);
        // A zero length prefix poisons the decoder.
        assert!(dec.poll_frame().is_err());
        dec.read_buffer(10, 10).extend_from_slice(&[1; 100]);
        assert!(dec.read_buffer(10, 10).is_empty());
        assert!(dec.poll_frame().is_err());
        dec.reset();
        dec.read_buffer(10, 10).extend_from_slice(&[0, 0, 0, 1, 9]);
        assert_eq!(drain(&mut dec).unwrap()[0].data[..], [9]);
    }

    #[test]
    fn next_frame_in_walks_frames_in_place_with_the_decoders_checks() {
        for vnet in [false, true] {
            let mut wire = BytesMut::new();
            for i in 1..=5u8 {
                let f = Frame::ethernet(vec![i; usize::from(i) * 30]);
                encode_frame(&f, vnet, &mut wire);
            }
            let mut at = 0;
            let mut seen = Vec::new();
            while let Some((range, _)) = next_frame_in(&cfg(vnet), &wire[at..]).unwrap() {
                seen.push(wire[at + range.start..at + range.end].to_vec());
                at += range.end;
            }
            assert_eq!(at, wire.len());
            assert_eq!(seen, drain_all(&wire, vnet));
            // A partial frame is not reported; a bad prefix is an error.
            assert_eq!(
                next_frame_in(&cfg(vnet), &wire[..wire.len() - 1 - 4 * 30])
                    .unwrap()
                    .map(|(r, _)| r.end),
                Some(if vnet { 38 } else { 34 })
            );
            assert_eq!(next_frame_in(&cfg(vnet), &wire[..3]).unwrap(), None);
            assert_eq!(
                next_frame_in(&cfg(vnet), &[0, 0, 0, 0, 0, 0, 0, 0]),
                Err(FrameError::ZeroLength)
            );
        }
    }

    fn drain_all(wire: &[u8], vnet: bool) -> Vec<Vec<u8>> {
        let mut dec = FrameDecoder::new(cfg(vnet));
        dec.push(wire);
        let mut out = Vec::new();
        while let Some(f) = dec.poll_frame().unwrap() {
            out.push(f.data.to_vec());
        }
        out
    }

    #[test]
    fn small_reads_share_one_allocation_while_frames_live() {
        let mut dec = FrameDecoder::new(cfg(false));
        let mut held = Vec::new();
        let first = dec.read_buffer(64, 4096).as_ptr();
        for i in 0..20u8 {
            let b = dec.read_buffer(64, 4096);
            b.extend_from_slice(&[0, 0, 0, 2, i, i]);
            held.push(dec.poll_frame().unwrap().unwrap());
        }
        // 20 frames of 6 wire bytes each, all still alive, came from the first chunk.
        let base = first as usize;
        for f in &held {
            let at = f.data.as_ptr() as usize;
            assert!(
                at >= base && at < base + 4096,
                "frame outside the first chunk"
            );
        }
        // Running low on room makes a new chunk of the asked size.
        dec.read_buffer(64, 4096).extend_from_slice(&[0; 4000]);
        let b = dec.read_buffer(64, 4096);
        assert!(b.capacity() - b.len() >= 4096);
    }

    #[test]
    fn decodes_plain_frame() {
        let mut dec = FrameDecoder::new(cfg(false));
        dec.push(&[0, 0, 0, 3, 0xaa, 0xbb, 0xcc]);
        let f = dec.poll_frame().unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                vnet_hdr_len: 0,
                data: Bytes::from_static(&[0xaa, 0xbb, 0xcc])
            }
        );
        assert_eq!(dec.poll_frame(), Ok(None));
        assert_eq!(dec.buffered_len(), 0);
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn decodes_vnet_frame() {
        let mut dec = FrameDecoder::new(cfg(true));
        let mut wire = vec![0, 0, 0, 12, 0, 0, 0, 10];
        wire.extend_from_slice(&[0x11; 10]);
        wire.extend_from_slice(&[0xee, 0xff]);
        dec.push(&wire);
        let f = dec.poll_frame().unwrap().unwrap();
        assert_eq!(f.vnet_hdr_len, 10);
        assert_eq!(f.data.len(), 12);
        assert_eq!(f.vnet_header(), &[0x11; 10]);
        assert_eq!(f.ethernet_bytes(), &[0xee, 0xff]);
        assert_eq!(dec.poll_frame(), Ok(None));
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn vnet_header_may_fill_whole_frame() {
        let mut dec = FrameDecoder::new(cfg(true));
        let mut wire = vec![0, 0, 0, 20, 0, 0, 0, 20];
        wire.extend_from_slice(&[7; 20]);
        dec.push(&wire);
        let f = dec.poll_frame().unwrap().unwrap();
        assert_eq!(f.vnet_hdr_len, 20);
        assert!(f.ethernet_bytes().is_empty());
    }

    #[test]
    fn several_frames_in_one_push() {
        let mut dec = FrameDecoder::new(cfg(false));
        dec.push(&[0, 0, 0, 1, 1, 0, 0, 0, 2, 2, 2, 0, 0, 0, 3, 3, 3, 3, 0, 0]);
        let frames = drain(&mut dec).unwrap();
        let datas: Vec<&[u8]> = frames.iter().map(|f| &f.data[..]).collect();
        assert_eq!(datas, vec![&[1][..], &[2, 2], &[3, 3, 3]]);
        assert_eq!(dec.buffered_len(), 2);
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 2, need: 4 })
        );
    }

    #[test]
    fn byte_at_a_time() {
        let frames = [
            Frame {
                vnet_hdr_len: 12,
                data: Bytes::from((0..40).collect::<Vec<u8>>()),
            },
            Frame {
                vnet_hdr_len: 0,
                data: Bytes::from_static(b"x"),
            },
            Frame {
                vnet_hdr_len: 20,
                data: Bytes::from(vec![9; 80]),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_frame(f, true, &mut wire);
        }
        let mut dec = FrameDecoder::new(cfg(true));
        let mut got = Vec::new();
        for &b in wire.iter() {
            dec.push(&[b]);
            got.extend(drain(&mut dec).unwrap());
        }
        assert_eq!(got, frames);
        assert_eq!(dec.buffered_len(), 0);
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn zero_length_is_rejected_and_poisons() {
        let mut dec = FrameDecoder::new(cfg(false));
        dec.push(&[0, 0, 0, 0, 0, 0, 0, 1, 5]);
        assert_eq!(dec.poll_frame(), Err(FrameError::ZeroLength));
        assert!(dec.is_poisoned());
        assert_eq!(dec.buffered_len(), 0);
        dec.push(&[0, 0, 0, 1, 5]);
        assert_eq!(dec.buffered_len(), 0, "pushes are ignored while poisoned");
        assert_eq!(dec.poll_frame(), Err(FrameError::ZeroLength));
        assert_eq!(dec.finish(), Err(FrameError::ZeroLength));
    }

    #[test]
    fn reset_recovers_after_error() {
        let mut dec = FrameDecoder::new(cfg(false));
        dec.push(&[0, 0, 0, 0]);
        assert_eq!(dec.poll_frame(), Err(FrameError::ZeroLength));
        dec.reset();
        assert!(!dec.is_poisoned());
        dec.push(&[0, 0, 0, 1, 5]);
        assert_eq!(
            dec.poll_frame().unwrap().unwrap().data,
            Bytes::from_static(&[5])
        );
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn too_long_is_rejected_at_prefix_without_allocating() {
        let mut dec = FrameDecoder::new(cfg(false));
        dec.push(&[0xff, 0xff]);
        assert_eq!(dec.poll_frame(), Ok(None));
        dec.push(&[0xff, 0xff]);
        let err = dec.poll_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLong {
                len: 0xffff_ffff,
                max: DEFAULT_MAX_FRAME_LEN
            }
        );
        assert!(err.to_string().contains("raise max_frame_len"));
        assert!(dec.buf.capacity() < 1024, "capacity {}", dec.buf.capacity());

        // With vnet headers the length is checked before the vnet prefix arrives.
        let mut dec = FrameDecoder::new(cfg(true));
        dec.push(&[0x00, 0x04, 0x00, 0x01]);
        assert_eq!(
            dec.poll_frame(),
            Err(FrameError::TooLong {
                len: 0x0004_0001,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert!(dec.buf.capacity() < 1024);
    }

    #[test]
    fn max_len_frame_is_accepted_and_reserved_once() {
        let max = 1000;
        let mut dec = FrameDecoder::new(DecoderConfig {
            max_frame_len: max,
            vnet_hdr: false,
        });
        dec.push(&1000u32.to_be_bytes());
        assert_eq!(dec.poll_frame(), Ok(None));
        assert!(dec.buf.capacity() >= 1004);
        assert!(dec.buf.capacity() <= 2 * (max + 8));
        dec.push(&[1; 1000]);
        assert_eq!(dec.poll_frame().unwrap().unwrap().data.len(), 1000);

        dec.push(&1001u32.to_be_bytes());
        assert_eq!(
            dec.poll_frame(),
            Err(FrameError::TooLong { len: 1001, max })
        );
    }

    #[test]
    fn bad_vnet_header_len() {
        let mut dec = FrameDecoder::new(cfg(true));
        dec.push(&[0, 0, 0, 100, 0, 0, 0, 21]);
        assert_eq!(
            dec.poll_frame(),
            Err(FrameError::BadVnetHeaderLen {
                vnet_hdr_len: 21,
                len: 100
            })
        );

        let mut dec = FrameDecoder::new(cfg(true));
        dec.push(&[0, 0, 0, 5, 0, 0, 0, 10]);
        assert_eq!(
            dec.poll_frame(),
            Err(FrameError::BadVnetHeaderLen {
                vnet_hdr_len: 10,
                len: 5
            })
        );
        assert!(dec.poll_frame().is_err(), "stays poisoned");
    }

    #[test]
    fn truncated_at_eof() {
        let mut dec = FrameDecoder::new(cfg(false));
        assert_eq!(dec.finish(), Ok(()));
        dec.push(&[0, 0]);
        assert_eq!(dec.poll_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 2, need: 4 })
        );
        dec.push(&[0, 10, 1, 2, 3]);
        assert_eq!(dec.poll_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 7, need: 14 })
        );

        let mut dec = FrameDecoder::new(cfg(true));
        dec.push(&[0, 0, 0, 30, 0, 0]);
        assert_eq!(dec.poll_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 6, need: 8 })
        );
        dec.push(&[0, 12, 0]);
        assert_eq!(dec.poll_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 9, need: 38 })
        );
    }

    #[test]
    fn encode_layout_and_len() {
        let f = Frame {
            vnet_hdr_len: 2,
            data: Bytes::from_static(&[0xa, 0xb, 0xc]),
        };
        let mut out = BytesMut::new();
        encode_frame(&f, true, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 3, 0, 0, 0, 2, 0xa, 0xb, 0xc]);
        assert_eq!(encoded_len(&f, true), out.len());

        let mut out = BytesMut::new();
        encode_frame(&f, false, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 3, 0xa, 0xb, 0xc]);
        assert_eq!(encoded_len(&f, false), out.len());
    }

    #[test]
    fn encode_decode_round_trip() {
        for vnet in [false, true] {
            let frames: Vec<Frame> = [0u32, 10, 12, 20]
                .iter()
                .map(|&h| Frame {
                    vnet_hdr_len: if vnet { h } else { 0 },
                    data: Bytes::from(vec![h as u8; 64]),
                })
                .collect();
            let mut wire = BytesMut::new();
            for f in &frames {
                encode_frame(f, vnet, &mut wire);
            }
            let mut dec = FrameDecoder::new(cfg(vnet));
            dec.push(&wire);
            assert_eq!(drain(&mut dec).unwrap(), frames);
            assert_eq!(dec.finish(), Ok(()));
        }
    }

    #[test]
    fn datagram_frames() {
        let f = frame_from_datagram(Bytes::from_static(b"abc"), 3).unwrap();
        assert_eq!(f, Frame::ethernet(Bytes::from_static(b"abc")));
        assert_eq!(
            frame_from_datagram(Bytes::new(), 3),
            Err(FrameError::ZeroLength)
        );
        assert_eq!(
            frame_from_datagram(Bytes::from_static(b"abcd"), 3),
            Err(FrameError::TooLong { len: 4, max: 3 })
        );
    }

    fn arb_frame(vnet: bool) -> impl Strategy<Value = Frame> {
        (
            prop::sample::select(vec![0u32, 10, 12, 20]),
            prop::collection::vec(any::<u8>(), 1..300),
        )
            .prop_map(move |(h, data)| {
                let h = if vnet {
                    h.min(u32::try_from(data.len()).unwrap())
                } else {
                    0
                };
                Frame {
                    vnet_hdr_len: h,
                    data: Bytes::from(data),
                }
            })
    }

    fn arb_frames() -> impl Strategy<Value = (bool, Vec<Frame>)> {
        any::<bool>()
            .prop_flat_map(|vnet| (Just(vnet), prop::collection::vec(arb_frame(vnet), 0..20)))
    }

    /// Byte chunks biased towards small values, so random length prefixes are often
    /// plausible and the decoder also gets past the prefix checks. (Mapping plain
    /// `u8`s is much cheaper than a per-byte `prop_oneof!`.)
    fn arb_chunk() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|v| {
            v.into_iter()
                .map(|b| match b {
                    0..=127 => 0,
                    128..=191 => b % 24,
                    _ => b,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn prop_split_stream_round_trips(
            (vnet, frames) in arb_frames(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                encode_frame(f, vnet, &mut wire);
            }
            let expected_len: usize = frames.iter().map(|f| encoded_len(f, vnet)).sum();
            prop_assert_eq!(wire.len(), expected_len);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();

            let mut dec = FrameDecoder::new(DecoderConfig { max_frame_len: 300, vnet_hdr: vnet });
            let mut got = Vec::new();
            for (i, w) in points.windows(2).enumerate() {
                // Both ways in: a copy with push, or appended to read_buffer.
                if i % 2 == 0 {
                    dec.push(&wire[w[0]..w[1]]);
                } else {
                    dec.read_buffer(16, 64).extend_from_slice(&wire[w[0]..w[1]]);
                }
                got.extend(drain(&mut dec).unwrap());
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(dec.buffered_len(), 0);
            prop_assert_eq!(dec.finish(), Ok(()));
        }

        #[test]
        fn prop_random_bytes_never_panic_and_stay_bounded(
            vnet in any::<bool>(),
            max in 0usize..2048,
            chunks in prop::collection::vec(arb_chunk(), 0..64),
        ) {
            let mut dec = FrameDecoder::new(DecoderConfig { max_frame_len: max, vnet_hdr: vnet });
            let bound = dec.config().prefix_len() + max;
            for chunk in &chunks {
                dec.push(chunk);
                loop {
                    match dec.poll_frame() {
                        Ok(Some(f)) => {
                            prop_assert!(!f.data.is_empty() && f.data.len() <= max);
                            prop_assert!(f.vnet_hdr_len <= MAX_VNET_HDR_LEN);
                            prop_assert!(f.vnet_hdr_len as usize <= f.data.len());
                        }
                        Ok(None) => break,
                        Err(e) => {
                            prop_assert_eq!(dec.poll_frame(), Err(e));
                            break;
                        }
                    }
                }
                prop_assert!(dec.buffered_len() < bound.max(1));
                prop_assert!(dec.buf.capacity() <= 4 * (bound + 64), "capacity {}", dec.buf.capacity());
            }
            let _ = dec.finish();
        }
    }
}
