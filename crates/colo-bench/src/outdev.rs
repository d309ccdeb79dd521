//! Reading what the proxy releases on outdev, in place: the socket reads into one
//! buffer and frames are checked where they lie (`colo_core::codec::next_frame_in`,
//! the decoder's own checks); only a partial frame left at the buffer's end is moved
//! to its front. No copy per frame, so the generator's cost stays small next to the
//! proxy's on the same cores.

use std::io::Read;

use colo_core::codec::{DecoderConfig, FrameError, next_frame_in};

/// Compact (move the partial frame to the front) when less than this is free.
const MIN_FREE: usize = 64 * 1024;

/// One outdev connection's receive buffer.
#[derive(Debug)]
pub struct OutdevReader {
    config: DecoderConfig,
    buf: Vec<u8>,
    /// The next frame starts here.
    start: usize,
    /// Bytes read end here.
    end: usize,
}

impl OutdevReader {
    /// A reader for QEMU framing, with the vnet_hdr_len field when `vnet`.
    #[must_use]
    pub fn new(vnet: bool) -> Self {
        let config = DecoderConfig {
            vnet_hdr: vnet,
            ..DecoderConfig::default()
        };
        // Room for the largest valid frame even when a read stops just short of it.
        let len = 2 * (config.prefix_len() + config.max_frame_len);
        Self {
            config,
            buf: vec![0; len],
            start: 0,
            end: 0,
        }
    }

    /// One `read` from `r` into the free end of the buffer: the bytes read (0 when the
    /// peer closed), or the read's error (a timeout included).
    ///
    /// # Errors
    ///
    /// Whatever `r.read` returns.
    pub fn fill(&mut self, r: &mut impl Read) -> std::io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < MIN_FREE {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next whole frame read (vnet header + Ethernet frame), if one is there.
    ///
    /// # Errors
    ///
    /// A length prefix that cannot be right (zero, over the maximum, a bad vnet
    /// header length): the stream cannot be followed any further.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let at = self.start;
        match next_frame_in(&self.config, &self.buf[at..self.end])? {
            Some((range, _vnet_hdr_len)) => {
                self.start = at + range.end;
                Ok(Some(&self.buf[at + range.start..at + range.end]))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use colo_core::Frame;
    use colo_core::codec::encode_frame;

    use super::*;

    /// Hands out `data` in pieces of the given sizes, in turn.
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        i: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.sizes[self.i % self.sizes.len()]
                .min(out.len())
                .min(self.data.len());
            self.i += 1;
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn frames_cut_anywhere_come_out_whole_and_in_order() {
        for vnet in [false, true] {
            let frames: Vec<Vec<u8>> = (0..3000u32)
                .map(|i| vec![(i % 251) as u8; 60 + (i as usize * 37) % 9000])
                .collect();
            let mut wire = BytesMut::new();
            for f in &frames {
                encode_frame(&Frame::ethernet(f.clone()), vnet, &mut wire);
            }
            for sizes in [&[1usize, 7, 3][..], &[65_536], &[100_000, 13], &[1 << 20]] {
                let mut src = Pieces {
                    data: &wire,
                    sizes,
                    i: 0,
                };
                let mut rd = OutdevReader::new(vnet);
                let mut got = 0;
                while rd.fill(&mut src).unwrap() > 0 {
                    while let Some(f) = rd.next_frame().unwrap() {
                        assert_eq!(f, &frames[got][..], "frame {got}, pieces {sizes:?}");
                        got += 1;
                    }
                }
                assert_eq!(got, frames.len());
            }
        }
    }

    #[test]
    fn a_bad_prefix_is_an_error() {
        let mut rd = OutdevReader::new(false);
        rd.fill(&mut &[0u8, 0, 0, 0, 1, 2][..]).unwrap();
        assert_eq!(rd.next_frame(), Err(FrameError::ZeroLength));
    }
}
