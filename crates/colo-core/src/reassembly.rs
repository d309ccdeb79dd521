//! Per-direction TCP byte-stream reassembly.
//!
//! A [`StreamReassembler`] holds one direction of one TCP byte stream (for example the
//! primary VM's output on one connection). The compare engine maps TCP sequence
//! numbers to absolute `u64` stream offsets and feeds segments in with
//! [`StreamReassembler::insert`]; it then compares [`StreamReassembler::contiguous`] of
//! the primary against the secondary and calls [`StreamReassembler::consume`] on both
//! for the matched prefix.
//!
//! # Design
//!
//! The out-of-order bookkeeping is `smoltcp::storage::Assembler`, used exactly as
//! smoltcp's TCP socket uses it: the assembler describes the islands that lie *beyond
//! the end of the contiguous region*, with offsets relative to that end. A segment
//! landing at the contiguous end goes through `add_then_remove_front(0, len)`, which
//! cannot fail and returns how far the contiguous region grew (the segment plus any
//! islands it joined).
//!
//! The bytes live in one growable `Vec<u8>` with a `head` index: stream offset
//! `front + i` is stored at `buf[head + i]`. Holes between islands occupy (zeroed)
//! space in the buffer, so the buffer extent is always `highest held end - front`.
//!
//! - In-order insert with no islands is a single `extend_from_slice` (one memcpy); in
//!   steady state the capacity is already there, so there is no allocation.
//! - `consume` only advances `head`. When everything is consumed the buffer is cleared
//!   without copying; if its capacity is large (> 64 KiB) it is released.
//! - The consumed prefix is compacted away lazily: only when the buffer would otherwise
//!   have to grow, and only once the dead prefix is at least as large as the live data
//!   (so each copied byte is paid for by a consumed one).
//! - The assembler (512 bytes with 32 segments) is boxed and only exists while there
//!   are islands, so an idle reassembler is a few machine words and owns no heap.
//!
//! Every error leaves the reassembler exactly as it was: all checks (window, conflicts,
//! hole count, allocation) happen before anything is written.

use core::fmt;
use std::collections::TryReserveError;

use smoltcp::storage::Assembler;

/// Buffers with more capacity than this are freed when they become empty; smaller ones
/// are kept for reuse.
const RELEASE_CAPACITY: usize = 64 * 1024;

/// `usize` to `u64`, saturating (lossless on every supported target).
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What an [`StreamReassembler::insert`] did with the offered bytes.
///
/// `new_bytes + duplicate_bytes + stale_bytes` is always the length of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    /// Bytes that were not held before and are now stored.
    pub new_bytes: usize,
    /// Bytes that were already held (and were identical).
    pub duplicate_bytes: usize,
    /// Bytes before [`StreamReassembler::front`]: already consumed, ignored.
    pub stale_bytes: usize,
    /// How much [`StreamReassembler::contiguous`] grew (may exceed `new_bytes` when the
    /// segment filled a hole and joined islands behind it).
    pub contiguous_added: usize,
}

/// Why an [`StreamReassembler::insert`] was refused. The reassembler is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// Retransmitted or overlapping bytes differ from bytes already held.
    #[error("conflicting data at stream offset {offset}: held {held:#04x}, offered {offered:#04x}")]
    Conflict {
        /// Absolute stream offset of the first differing byte.
        offset: u64,
        /// The byte already held at `offset`.
        held: u8,
        /// The byte the segment carried at `offset`.
        offered: u8,
    },
    /// The segment would create more holes than smoltcp's assembler tracks.
    #[error("segment at stream offset {offset} (len {len}) would create too many holes")]
    TooManyHoles {
        /// Stream offset of the segment.
        offset: u64,
        /// Length of the segment.
        len: usize,
    },
    /// The segment ends beyond `front + limit` (or its end overflows `u64`, or the
    /// buffer for it cannot be allocated).
    #[error("segment at stream offset {offset} (len {len}) exceeds the {limit}-byte window")]
    WindowExceeded {
        /// Stream offset of the segment.
        offset: u64,
        /// Length of the segment.
        len: usize,
        /// The reassembler's window limit.
        limit: usize,
    },
}

/// Reassembles one direction of one TCP byte stream, in absolute `u64` stream offsets.
///
/// See the [module documentation](self) for the buffer strategy.
pub struct StreamReassembler {
    /// Stream offset of `buf[head]`, the first unconsumed byte.
    front: u64,
    /// Maximum extent beyond `front` (contiguous + holes + islands).
    limit: usize,
    /// End of the furthest byte ever inserted (`>= front`).
    highest_end: u64,
    /// Storage; `buf[..head]` is consumed, `buf[head..]` is the extent beyond `front`.
    buf: Vec<u8>,
    /// Index in `buf` of the byte at `front`.
    head: usize,
    /// Length of the contiguous region starting at `front`.
    contig_len: usize,
    /// Islands beyond the contiguous region, relative to its end. `None` when there are
    /// none; never `Some` of an empty assembler.
    islands: Option<Box<Assembler>>,
}

impl StreamReassembler {
    /// An empty reassembler whose first expected byte is at stream offset `front`, holding
    /// at most `limit` bytes beyond the front (contiguous data, islands and the holes
    /// between them). Allocates nothing.
    #[must_use]
    pub const fn new(front: u64, limit: usize) -> Self {
        Self {
            front,
            limit,
            highest_end: front,
            buf: Vec::new(),
            head: 0,
            contig_len: 0,
            islands: None,
        }
    }

    /// Stream offset of the first unconsumed byte.
    #[must_use]
    pub const fn front(&self) -> u64 {
        self.front
    }

    /// The window limit given to [`new`](Self::new).
    #[must_use]
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes from [`front`](Self::front) up to the first hole.
    #[must_use]
    pub fn contiguous(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.contig_len]
    }

    /// `front() + contiguous().len()`: the stream offset of the first missing byte.
    #[must_use]
    pub const fn contiguous_end(&self) -> u64 {
        // Cannot overflow: these bytes were inserted at offsets whose end fit in a u64.
        self.front + self.contig_len as u64
    }

    /// End of the furthest byte ever inserted, or [`front`](Self::front) if that is later
    /// (after a [`reset`](Self::reset), or when nothing was inserted).
    #[must_use]
    pub const fn highest_end(&self) -> u64 {
        self.highest_end
    }

    /// Drops the first `n` bytes of the contiguous region (they have been compared).
    ///
    /// `n` must not exceed `contiguous().len()`; larger values are clamped (and trip a
    /// debug assertion). When nothing is left the buffer is emptied without copying and,
    /// if its capacity exceeds 64 KiB, freed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(
            n <= self.contig_len,
            "consume({n}) beyond the contiguous region ({})",
            self.contig_len
        );
        let n = n.min(self.contig_len);
        if n == 0 {
            return;
        }
        self.head += n;
        self.contig_len -= n;
        self.front += to_u64(n);
        if self.head == self.buf.len() {
            // Nothing held: no islands can exist, as they would extend the buffer.
            debug_assert!(self.islands.is_none());
            self.clear_buffer();
        }
    }

    /// Advances an empty reassembler's front by `n` bytes that were compared without
    /// being stored (the other side already held them). Does nothing unless the
    /// reassembler holds nothing (`buffered_bytes() == 0`); returns whether it moved.
    pub fn skip_empty(&mut self, n: usize) -> bool {
        if self.buf.len() != self.head {
            return false;
        }
        self.front = self.front.saturating_add(to_u64(n));
        self.highest_end = self.highest_end.max(self.front);
        true
    }

    /// Offers `data` at stream offset `offset`.
    ///
    /// Bytes before [`front`](Self::front) are stale and ignored. Bytes that overlap data
    /// already held must be identical to it. The rest is stored; if it starts at
    /// [`contiguous_end`](Self::contiguous_end) the contiguous region grows. A
    /// zero-length segment is a no-op.
    ///
    /// # Errors
    ///
    /// - [`ReassemblyError::WindowExceeded`] if the segment ends beyond `front + limit`.
    /// - [`ReassemblyError::Conflict`] if overlapping bytes differ from held ones.
    /// - [`ReassemblyError::TooManyHoles`] if the assembler cannot track another island.
    ///
    /// On error nothing changes.
    pub fn insert(&mut self, offset: u64, data: &[u8]) -> Result<Inserted, ReassemblyError> {
        let len = data.len();
        if len == 0 {
            return Ok(Inserted::default());
        }
        let limit = self.limit;
        let exceeded = || ReassemblyError::WindowExceeded { offset, len, limit };
        let end = offset.checked_add(to_u64(len)).ok_or_else(exceeded)?;
        if end <= self.front {
            return Ok(Inserted {
                stale_bytes: len,
                ..Inserted::default()
            });
        }
        let end_rel = end - self.front;
        if end_rel > to_u64(limit) {
            return Err(exceeded());
        }
        // Both fit: end_rel <= limit, and stale < len because end > front.
        let end_rel = usize::try_from(end_rel).map_err(|_| exceeded())?;
        let stale = usize::try_from(self.front.saturating_sub(offset)).map_err(|_| exceeded())?;
        let data = &data[stale..];
        let start = end_rel - data.len();

        if self.islands.is_none() && start <= self.contig_len {
            // Hot path: in order (possibly overlapping the tail of the contiguous region).
            let dup = self.contig_len.min(end_rel) - start;
            self.check_held(start, &data[..dup])?;
            let fresh = &data[dup..];
            if !fresh.is_empty() {
                self.reserve_extent(end_rel).map_err(|_| exceeded())?;
                self.buf.extend_from_slice(fresh);
                self.contig_len = end_rel;
                self.highest_end = self.highest_end.max(end);
            }
            return Ok(Inserted {
                new_bytes: fresh.len(),
                duplicate_bytes: dup,
                stale_bytes: stale,
                contiguous_added: fresh.len(),
            });
        }

        // Compare with everything held that the segment overlaps, lowest offset first.
        let contig_len = self.contig_len;
        let mut dup = 0;
        let contig_overlap_end = contig_len.min(end_rel);
        if start < contig_overlap_end {
            self.check_held(start, &data[..contig_overlap_end - start])?;
            dup += contig_overlap_end - start;
        }
        if let Some(islands) = self.islands.as_deref() {
            for (s, e) in islands.iter_data() {
                let (s, e) = (s + contig_len, e + contig_len);
                if s >= end_rel {
                    break;
                }
                let (lo, hi) = (s.max(start), e.min(end_rel));
                if lo < hi {
                    self.check_held(lo, &data[lo - start..hi - start])?;
                    dup += hi - lo;
                }
            }
        }
        if dup == data.len() {
            return Ok(Inserted {
                duplicate_bytes: dup,
                stale_bytes: stale,
                ..Inserted::default()
            });
        }

        // Update a copy of the assembler so that a failure leaves ours untouched.
        let new_from = start.max(contig_len);
        let mut assembler = self
            .islands
            .as_deref()
            .cloned()
            .unwrap_or_else(Assembler::new);
        let contiguous_added = assembler
            .add_then_remove_front(new_from - contig_len, end_rel - new_from)
            .map_err(|_| ReassemblyError::TooManyHoles { offset, len })?;
        let extent = self.buf.len() - self.head;
        self.reserve_extent(extent.max(end_rel))
            .map_err(|_| exceeded())?;

        // Commit. Equal duplicate bytes inside the range are simply rewritten.
        let write_at = self.head + new_from;
        let fresh = &data[new_from - start..];
        if write_at >= self.buf.len() {
            self.buf.resize(write_at, 0);
            self.buf.extend_from_slice(fresh);
        } else {
            let overlap = (self.buf.len() - write_at).min(fresh.len());
            self.buf[write_at..write_at + overlap].copy_from_slice(&fresh[..overlap]);
            self.buf.extend_from_slice(&fresh[overlap..]);
        }
        self.contig_len += contiguous_added;
        if assembler.is_empty() {
            self.islands = None;
        } else if let Some(islands) = self.islands.as_deref_mut() {
            *islands = assembler;
        } else {
            self.islands = Some(Box::new(assembler));
        }
        self.highest_end = self.highest_end.max(end);
        Ok(Inserted {
            new_bytes: data.len() - dup,
            duplicate_bytes: dup,
            stale_bytes: stale,
            contiguous_added,
        })
    }

    /// Bytes of buffer in use beyond [`front`](Self::front): the contiguous region, the
    /// islands and the holes between them (holes take buffer space too). This is what
    /// [`new`](Self::new)'s `limit` bounds; use it for memory caps.
    #[must_use]
    pub const fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Heap memory actually allocated: the buffer's capacity plus the island tracker
    /// when one exists.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() + self.islands.as_ref().map_or(0, |_| size_of::<Assembler>())
    }

    /// Whether data is held beyond a hole (islands past the contiguous region).
    #[must_use]
    pub const fn has_gaps(&self) -> bool {
        self.islands.is_some()
    }

    /// Drops everything and restarts empty at stream offset `front` (used at checkpoint
    /// epochs). A large buffer is freed; a small one is kept for reuse.
    pub fn reset(&mut self, front: u64) {
        self.front = front;
        self.highest_end = front;
        self.contig_len = 0;
        self.islands = None;
        self.clear_buffer();
    }

    /// Gives back spare heap memory: frees the buffer if nothing is held, otherwise
    /// compacts it and shrinks its capacity to the bytes held. For idle connections.
    pub fn shrink_to_fit(&mut self) {
        if self.buf.len() == self.head {
            self.buf = Vec::new();
            self.head = 0;
        } else {
            self.compact();
            self.buf.shrink_to_fit();
        }
    }

    /// Checks `offered` against the held bytes at `rel` bytes beyond the front.
    fn check_held(&self, rel: usize, offered: &[u8]) -> Result<(), ReassemblyError> {
        let held = &self.buf[self.head + rel..self.head + rel + offered.len()];
        if held == offered {
            return Ok(());
        }
        let i = held
            .iter()
            .zip(offered)
            .position(|(h, o)| h != o)
            .unwrap_or(0);
        Err(ReassemblyError::Conflict {
            offset: self.front + to_u64(rel + i),
            held: held[i],
            offered: offered[i],
        })
    }

    /// Makes room for an extent of `extent` bytes beyond the front without reallocating
    /// on the write that follows. Drops the consumed prefix first if the buffer would
    /// otherwise grow and that prefix is at least as large as the live data.
    fn reserve_extent(&mut self, extent: usize) -> Result<(), TryReserveError> {
        let needed = self.head.saturating_add(extent);
        if needed > self.buf.capacity() && self.head > 0 && self.head >= self.buf.len() - self.head
        {
            self.compact();
        }
        let needed = self.head.saturating_add(extent);
        if needed > self.buf.len() {
            self.buf.try_reserve(needed - self.buf.len())?;
        }
        Ok(())
    }

    /// Moves the live bytes to the start of the buffer.
    fn compact(&mut self) {
        if self.head > 0 {
            let live = self.buf.len() - self.head;
            self.buf.copy_within(self.head.., 0);
            self.buf.truncate(live);
            self.head = 0;
        }
    }

    /// Empties the buffer without copying, freeing it if it is large.
    fn clear_buffer(&mut self) {
        self.head = 0;
        if self.buf.capacity() > RELEASE_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// Absolute `(start, end)` stream ranges of the islands beyond the contiguous region.
    fn island_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let base = self.contiguous_end();
        self.islands
            .as_deref()
            .into_iter()
            .flat_map(Assembler::iter_data)
            .map(move |(s, e)| (base + to_u64(s), base + to_u64(e)))
    }
}

impl fmt::Debug for StreamReassembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Islands<'a>(&'a StreamReassembler);
        impl fmt::Debug for Islands<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.island_ranges().map(|(s, e)| s..e))
                    .finish()
            }
        }
        f.debug_struct("StreamReassembler")
            .field("front", &self.front)
            .field("contiguous", &self.contig_len)
            .field("buffered", &self.buffered_bytes())
            .field("islands", &Islands(self))
            .field("highest_end", &self.highest_end)
            .field("limit", &self.limit)
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Everything observable, plus the islands' bytes, for "state unchanged" checks.
    #[derive(Debug, PartialEq, Eq)]
    struct Snapshot {
        front: u64,
        contiguous: Vec<u8>,
        islands: Vec<(u64, Vec<u8>)>,
        highest_end: u64,
        buffered: usize,
        heap: usize,
        has_gaps: bool,
    }

    fn snapshot(r: &StreamReassembler) -> Snapshot {
        let islands = r
            .island_ranges()
            .map(|(s, e)| {
                let lo = r.head + usize::try_from(s - r.front).unwrap();
                let hi = r.head + usize::try_from(e - r.front).unwrap();
                (s, r.buf[lo..hi].to_vec())
            })
            .collect();
        Snapshot {
            front: r.front(),
            contiguous: r.contiguous().to_vec(),
            islands,
            highest_end: r.highest_end(),
            buffered: r.buffered_bytes(),
            heap: r.heap_bytes(),
            has_gaps: r.has_gaps(),
        }
    }

    fn bytes(range: core::ops::Range<usize>) -> Vec<u8> {
        range.map(|i| (i * 7 + 3) as u8).collect()
    }

    fn ins(new: usize, dup: usize, stale: usize, added: usize) -> Inserted {
        Inserted {
            new_bytes: new,
            duplicate_bytes: dup,
            stale_bytes: stale,
            contiguous_added: added,
        }
    }

    #[test]
    fn new_is_empty_and_unallocated() {
        let r = StreamReassembler::new(1000, 1 << 20);
        assert_eq!(r.front(), 1000);
        assert_eq!(r.contiguous_end(), 1000);
        assert_eq!(r.highest_end(), 1000);
        assert!(r.contiguous().is_empty());
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.heap_bytes(), 0);
        assert!(!r.has_gaps());
        assert!(format!("{r:?}").contains("front: 1000"));
    }

    #[test]
    fn in_order_segments_append() {
        let s = bytes(0..4 * 1448);
        let mut r = StreamReassembler::new(10, 1 << 20);
        for (i, seg) in s.chunks(1448).enumerate() {
            let off = 10 + (i * 1448) as u64;
            assert_eq!(r.insert(off, seg), Ok(ins(1448, 0, 0, 1448)));
        }
        assert_eq!(r.contiguous(), &s[..]);
        assert_eq!(r.contiguous_end(), 10 + s.len() as u64);
        assert_eq!(r.highest_end(), r.contiguous_end());
        assert!(!r.has_gaps());
    }

    #[test]
    fn in_order_steady_state_does_not_allocate() {
        let seg = bytes(0..1448);
        let mut r = StreamReassembler::new(0, 1 << 20);
        let mut off = 0;
        for _ in 0..4 {
            r.insert(off, &seg).unwrap();
            off += 1448;
        }
        r.consume(r.contiguous().len());
        let heap = r.heap_bytes();
        let ptr = r.buf.as_ptr();
        for _ in 0..1000 {
            r.insert(off, &seg).unwrap();
            off += 1448;
            r.insert(off, &seg).unwrap();
            off += 1448;
            r.consume(r.contiguous().len());
        }
        assert_eq!(r.heap_bytes(), heap);
        assert_eq!(r.buf.as_ptr(), ptr);
    }

    #[test]
    fn out_of_order_fills_holes() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        assert_eq!(r.insert(60, &s[60..80]), Ok(ins(20, 0, 0, 0)));
        assert_eq!(r.insert(20, &s[20..40]), Ok(ins(20, 0, 0, 0)));
        assert!(r.has_gaps());
        assert!(r.contiguous().is_empty());
        assert_eq!(r.highest_end(), 80);
        assert_eq!(r.buffered_bytes(), 80);
        // Fill the first hole: joins the island at 20..40.
        assert_eq!(r.insert(0, &s[0..20]), Ok(ins(20, 0, 0, 40)));
        assert_eq!(r.contiguous(), &s[..40]);
        assert!(r.has_gaps());
        // Fill the second hole exactly: everything joins up.
        assert_eq!(r.insert(40, &s[40..60]), Ok(ins(20, 0, 0, 40)));
        assert_eq!(r.contiguous(), &s[..80]);
        assert!(!r.has_gaps());
        assert_eq!(r.insert(80, &s[80..]), Ok(ins(20, 0, 0, 20)));
        assert_eq!(r.contiguous(), &s[..]);
    }

    #[test]
    fn segment_spanning_hole_and_islands() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(10, &s[10..20]).unwrap();
        r.insert(30, &s[30..40]).unwrap();
        r.insert(50, &s[50..60]).unwrap();
        // Covers hole 20..30, island 30..40, hole 40..50 and half of island 50..60.
        assert_eq!(r.insert(15, &s[15..55]), Ok(ins(20, 20, 0, 0)));
        assert_eq!(r.island_ranges().collect::<Vec<_>>(), vec![(10, 60)]);
        assert_eq!(r.insert(0, &s[0..70]), Ok(ins(20, 50, 0, 70)));
        assert_eq!(r.contiguous(), &s[..70]);
        assert!(!r.has_gaps());
    }

    #[test]
    fn duplicates_are_counted() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(0, &s[0..40]).unwrap();
        r.insert(60, &s[60..80]).unwrap();
        let before = snapshot(&r);
        assert_eq!(r.insert(0, &s[0..40]), Ok(ins(0, 40, 0, 0)));
        assert_eq!(r.insert(10, &s[10..20]), Ok(ins(0, 10, 0, 0)));
        assert_eq!(r.insert(60, &s[60..80]), Ok(ins(0, 20, 0, 0)));
        assert_eq!(r.insert(65, &s[65..70]), Ok(ins(0, 5, 0, 0)));
        assert_eq!(snapshot(&r), before);
    }

    #[test]
    fn partial_overlaps_on_both_sides() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(0, &s[0..30]).unwrap();
        // Overlaps the tail of the contiguous region.
        assert_eq!(r.insert(20, &s[20..40]), Ok(ins(10, 10, 0, 10)));
        r.insert(60, &s[60..80]).unwrap();
        // Overlaps the front of an island.
        assert_eq!(r.insert(50, &s[50..65]), Ok(ins(10, 5, 0, 0)));
        // Overlaps the back of an island.
        assert_eq!(r.insert(75, &s[75..90]), Ok(ins(10, 5, 0, 0)));
        assert_eq!(r.island_ranges().collect::<Vec<_>>(), vec![(50, 90)]);
        // Overlaps the contiguous tail and the island's front at once.
        assert_eq!(r.insert(35, &s[35..55]), Ok(ins(10, 10, 0, 50)));
        assert_eq!(r.contiguous(), &s[..90]);
        assert!(!r.has_gaps());
    }

    #[test]
    fn conflict_in_contiguous_leaves_state_unchanged() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(500, 1000);
        r.insert(500, &s[0..50]).unwrap();
        r.insert(570, &s[70..80]).unwrap();
        let before = snapshot(&r);
        let mut bad = s[40..75].to_vec();
        bad[5] ^= 0xff; // stream offset 545, in the contiguous region
        bad[32] ^= 0x01; // a later difference, in the island
        assert_eq!(
            r.insert(540, &bad),
            Err(ReassemblyError::Conflict {
                offset: 545,
                held: s[45],
                offered: s[45] ^ 0xff
            })
        );
        assert_eq!(snapshot(&r), before);
        // The same on the hot path (no islands).
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(0, &s[0..50]).unwrap();
        let before = snapshot(&r);
        let mut bad = s[45..60].to_vec();
        bad[4] = bad[4].wrapping_add(1);
        assert_eq!(
            r.insert(45, &bad),
            Err(ReassemblyError::Conflict {
                offset: 49,
                held: s[49],
                offered: s[49].wrapping_add(1)
            })
        );
        assert_eq!(snapshot(&r), before);
    }

    #[test]
    fn conflict_in_island_leaves_state_unchanged() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(0, &s[0..10]).unwrap();
        r.insert(30, &s[30..40]).unwrap();
        r.insert(60, &s[60..70]).unwrap();
        let before = snapshot(&r);
        // Would fill holes and join everything, but byte 65 differs.
        let mut bad = s[5..80].to_vec();
        bad[60] ^= 0x80;
        assert_eq!(
            r.insert(5, &bad),
            Err(ReassemblyError::Conflict {
                offset: 65,
                held: s[65],
                offered: s[65] ^ 0x80
            })
        );
        assert_eq!(snapshot(&r), before);
        // The correct bytes still go in afterwards.
        assert_eq!(r.insert(5, &s[5..80]), Ok(ins(50, 25, 0, 70)));
        assert_eq!(r.contiguous(), &s[..80]);
    }

    #[test]
    fn stale_bytes_are_ignored() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(0, &s[0..50]).unwrap();
        r.consume(40);
        assert_eq!(r.front(), 40);
        // Entirely stale, even with different bytes: never an error.
        assert_eq!(r.insert(0, &[0xaa; 40]), Ok(ins(0, 0, 40, 0)));
        assert_eq!(r.insert(10, &[0xaa; 30]), Ok(ins(0, 0, 30, 0)));
        // Straddling the front: the stale part is not compared.
        let mut seg = s[30..60].to_vec();
        seg[0] ^= 0xff;
        assert_eq!(r.insert(30, &seg), Ok(ins(10, 10, 10, 10)));
        assert_eq!(r.contiguous(), &s[40..60]);
        // Everything consumed: a straddling segment restarts the contiguous region.
        r.consume(20);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.insert(50, &s[50..80]), Ok(ins(20, 0, 10, 20)));
        assert_eq!(r.contiguous(), &s[60..80]);
    }

    #[test]
    fn zero_length_insert_is_noop() {
        let mut r = StreamReassembler::new(0, 10);
        assert_eq!(r.insert(u64::MAX, &[]), Ok(Inserted::default()));
        assert_eq!(r.insert(5, &[]), Ok(Inserted::default()));
        assert_eq!(r.highest_end(), 0);
        assert_eq!(r.heap_bytes(), 0);
        assert!(!r.has_gaps());
    }

    #[test]
    fn window_exceeded() {
        let s = bytes(0..200);
        let mut r = StreamReassembler::new(0, 100);
        assert_eq!(r.insert(0, &s[0..100]), Ok(ins(100, 0, 0, 100)));
        let before = snapshot(&r);
        assert_eq!(
            r.insert(100, &s[100..101]),
            Err(ReassemblyError::WindowExceeded {
                offset: 100,
                len: 1,
                limit: 100
            })
        );
        assert_eq!(snapshot(&r), before);
        // The window slides with the front.
        r.consume(50);
        assert_eq!(r.insert(100, &s[100..150]), Ok(ins(50, 0, 0, 50)));
        assert_eq!(
            r.insert(199, &s[199..200]),
            Err(ReassemblyError::WindowExceeded {
                offset: 199,
                len: 1,
                limit: 100
            })
        );
        assert_eq!(r.insert(149, &s[149..150]), Ok(ins(0, 1, 0, 0)));
        // A far-away island inside the window is fine; beyond it is not.
        let mut r = StreamReassembler::new(0, 100);
        assert_eq!(r.insert(99, &s[99..100]), Ok(ins(1, 0, 0, 0)));
        assert_eq!(r.buffered_bytes(), 100);
        assert!(r.insert(99, &s[99..101]).is_err());
        // A zero limit accepts only stale data.
        let mut r = StreamReassembler::new(10, 0);
        assert_eq!(r.insert(5, &s[5..10]), Ok(ins(0, 0, 5, 0)));
        assert!(r.insert(9, &s[9..11]).is_err());
    }

    #[test]
    fn offsets_near_u64_max() {
        let s = bytes(0..64);
        let base = u64::MAX - 64;
        let mut r = StreamReassembler::new(base, usize::MAX);
        assert_eq!(r.insert(base + 32, &s[32..64]), Ok(ins(32, 0, 0, 0)));
        assert_eq!(r.highest_end(), u64::MAX);
        assert_eq!(r.insert(base, &s[..32]), Ok(ins(32, 0, 0, 64)));
        assert_eq!(r.contiguous_end(), u64::MAX);
        // Ending past u64::MAX overflows: refused, not a panic.
        assert_eq!(
            r.insert(u64::MAX - 1, &[1, 2, 3]),
            Err(ReassemblyError::WindowExceeded {
                offset: u64::MAX - 1,
                len: 3,
                limit: usize::MAX
            })
        );
        assert_eq!(
            r.insert(u64::MAX, &[1]),
            Err(ReassemblyError::WindowExceeded {
                offset: u64::MAX,
                len: 1,
                limit: usize::MAX
            })
        );
        r.consume(64);
        assert_eq!(r.front(), u64::MAX);
        assert_eq!(r.insert(base, &s), Ok(ins(0, 0, 64, 0)));
        assert_eq!(r.heap_bytes(), r.buf.capacity());
        // A huge window with a far-away segment: the allocation fails cleanly.
        let mut r = StreamReassembler::new(0, usize::MAX);
        assert!(matches!(
            r.insert(u64::MAX / 2, &[1]),
            Err(ReassemblyError::WindowExceeded { .. })
        ));
        assert_eq!(r.heap_bytes(), 0);
        assert!(!r.has_gaps());
    }

    #[test]
    fn too_many_holes() {
        let s = bytes(0..200);
        let mut r = StreamReassembler::new(0, 1000);
        // 32 one-byte islands at 1, 3, 5, ... 63.
        for i in 0..32 {
            let o = 2 * i + 1;
            assert_eq!(
                r.insert(o as u64, &s[o..=o]),
                Ok(ins(1, 0, 0, 0)),
                "island {i}"
            );
        }
        let before = snapshot(&r);
        // A 33rd island, past the others or inside a hole, is refused.
        assert_eq!(
            r.insert(100, &s[100..101]),
            Err(ReassemblyError::TooManyHoles {
                offset: 100,
                len: 1
            })
        );
        assert_eq!(snapshot(&r), before);
        let mut r2 = StreamReassembler::new(0, 1000);
        for i in 0..32 {
            let o = 4 * i + 2;
            r2.insert(o as u64, &s[o..=o]).unwrap();
        }
        assert_eq!(
            r2.insert(4, &s[4..5]),
            Err(ReassemblyError::TooManyHoles { offset: 4, len: 1 })
        );
        // Extending an island or merging two is fine, as is filling the front.
        assert_eq!(r.insert(64, &s[64..65]), Ok(ins(1, 0, 0, 0)));
        assert_eq!(r.insert(2, &s[2..3]), Ok(ins(1, 0, 0, 0)));
        assert_eq!(r.insert(100, &s[100..101]), Ok(ins(1, 0, 0, 0)));
        assert_eq!(r.insert(0, &s[0..1]), Ok(ins(1, 0, 0, 4)));
        assert_eq!(r.contiguous(), &s[..4]);
        // The in-order segment at the contiguous end never fails.
        assert_eq!(r.insert(4, &s[4..101]), Ok(ins(65, 32, 0, 97)));
        assert_eq!(r.contiguous(), &s[..101]);
        assert!(!r.has_gaps());
    }

    #[test]
    fn consume_and_reset() {
        let s = bytes(0..100);
        let mut r = StreamReassembler::new(0, 1000);
        r.insert(0, &s[0..50]).unwrap();
        r.insert(70, &s[70..90]).unwrap();
        r.consume(0);
        assert_eq!(r.front(), 0);
        r.consume(20);
        assert_eq!(r.front(), 20);
        assert_eq!(r.contiguous(), &s[20..50]);
        assert_eq!(r.contiguous_end(), 50);
        assert_eq!(r.buffered_bytes(), 70);
        r.consume(30);
        assert!(r.contiguous().is_empty());
        assert!(r.has_gaps());
        assert_eq!(r.insert(50, &s[50..70]), Ok(ins(20, 0, 0, 40)));
        assert_eq!(r.contiguous(), &s[50..90]);
        assert_eq!(r.highest_end(), 90);

        r.reset(5000);
        assert_eq!(r.front(), 5000);
        assert_eq!(r.highest_end(), 5000);
        assert_eq!(r.contiguous_end(), 5000);
        assert_eq!(r.buffered_bytes(), 0);
        assert!(!r.has_gaps());
        assert!(r.contiguous().is_empty());
        // Old offsets are now stale; new ones start at the new front.
        assert_eq!(r.insert(0, &s[..10]), Ok(ins(0, 0, 10, 0)));
        assert_eq!(r.insert(5000, &s[..10]), Ok(ins(10, 0, 0, 10)));
        assert_eq!(r.contiguous(), &s[..10]);
        // Reset while islands exist drops them too.
        r.insert(5020, &s[..10]).unwrap();
        r.reset(0);
        assert!(!r.has_gaps());
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.insert(0, &s[..10]), Ok(ins(10, 0, 0, 10)));
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn consume_beyond_contiguous_clamps() {
        let mut r = StreamReassembler::new(0, 100);
        r.insert(0, &[1, 2, 3]).unwrap();
        r.insert(10, &[4]).unwrap();
        r.consume(100);
        assert_eq!(r.front(), 3);
        assert!(r.has_gaps());
    }

    #[test]
    fn memory_released_when_drained() {
        let s = bytes(0..1 << 20);
        let mut r = StreamReassembler::new(0, 4 << 20);
        // Large burst with a hole: buffer and island tracker allocated.
        r.insert(1448, &s[1448..]).unwrap();
        assert!(r.heap_bytes() >= s.len() + size_of::<Assembler>());
        r.insert(0, &s[..1448]).unwrap();
        assert!(!r.has_gaps());
        assert_eq!(r.heap_bytes(), r.buf.capacity());
        r.consume(r.contiguous().len());
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.heap_bytes(), 0, "large buffer freed once empty");

        // Small traffic keeps a small buffer for reuse.
        r.insert(r.front(), &s[..1448]).unwrap();
        r.consume(1448);
        assert!(r.heap_bytes() > 0 && r.heap_bytes() <= RELEASE_CAPACITY);
        assert_eq!(r.buffered_bytes(), 0);
        r.shrink_to_fit();
        assert_eq!(r.heap_bytes(), 0);

        // Reset frees a large buffer.
        r.insert(r.front(), &s[..200_000]).unwrap();
        r.reset(0);
        assert_eq!(r.heap_bytes(), 0);

        // shrink_to_fit with data compacts and keeps it.
        r.insert(0, &s[..100_000]).unwrap();
        r.consume(99_000);
        r.shrink_to_fit();
        assert_eq!(r.contiguous(), &s[99_000..100_000]);
        assert_eq!(r.heap_bytes(), 1000);
    }

    #[test]
    fn lagging_consumer_compacts_and_stays_bounded() {
        let s = bytes(0..1448 * 4000);
        let mut r = StreamReassembler::new(0, 1 << 20);
        let mut max_heap = 0;
        for (i, seg) in s.chunks(1448).enumerate() {
            r.insert((i * 1448) as u64, seg).unwrap();
            // Always leave two segments unconsumed: the buffer never drains.
            let keep = 2 * 1448;
            let n = r.contiguous().len().saturating_sub(keep);
            r.consume(n);
            max_heap = max_heap.max(r.heap_bytes());
            let lo = usize::try_from(r.front()).unwrap();
            assert_eq!(r.contiguous(), &s[lo..lo + r.contiguous().len()]);
        }
        assert!(max_heap <= 16 * 1448, "heap grew to {max_heap}");
    }

    /// Reference model: which stream bytes are held, as a bitmap over the stream.
    struct Model {
        stream: Vec<u8>,
        have: Vec<Option<u8>>,
        front: usize,
        limit: usize,
        highest: usize,
    }

    impl Model {
        fn new(stream: Vec<u8>, limit: usize) -> Self {
            let have = vec![None; stream.len()];
            Self {
                stream,
                have,
                front: 0,
                limit,
                highest: 0,
            }
        }

        fn prefix_len(have: &[Option<u8>], front: usize) -> usize {
            have[front..].iter().take_while(|b| b.is_some()).count()
        }

        fn contiguous(&self) -> Vec<u8> {
            let n = Self::prefix_len(&self.have, self.front);
            self.have[self.front..self.front + n]
                .iter()
                .map(|b| b.unwrap())
                .collect()
        }

        fn islands(have: &[Option<u8>], front: usize) -> usize {
            let from = front + Self::prefix_len(have, front);
            let mut count = 0;
            let mut prev = false;
            for b in &have[from..] {
                if b.is_some() && !prev {
                    count += 1;
                }
                prev = b.is_some();
            }
            count
        }

        fn extent(&self) -> usize {
            self.have[self.front..]
                .iter()
                .rposition(Option::is_some)
                .map_or(0, |i| i + 1)
        }

        /// The expected outcome of inserting stream[s..e]; applies it on success.
        fn insert(&mut self, base: u64, s: usize, e: usize) -> Result<Inserted, ReassemblyError> {
            let len = e - s;
            if len == 0 {
                return Ok(Inserted::default());
            }
            if e <= self.front {
                return Ok(ins(0, 0, len, 0));
            }
            if e - self.front > self.limit {
                return Err(ReassemblyError::WindowExceeded {
                    offset: base + s as u64,
                    len,
                    limit: self.limit,
                });
            }
            let from = s.max(self.front);
            let stale = from - s;
            let dup = self.have[from..e].iter().filter(|b| b.is_some()).count();
            let mut have = self.have.clone();
            for (i, slot) in have.iter_mut().enumerate().take(e).skip(from) {
                *slot = Some(self.stream[i]);
            }
            if Self::islands(&have, self.front) > 32 {
                return Err(ReassemblyError::TooManyHoles {
                    offset: base + s as u64,
                    len,
                });
            }
            let added =
                Self::prefix_len(&have, self.front) - Self::prefix_len(&self.have, self.front);
            self.have = have;
            self.highest = self.highest.max(e);
            Ok(ins(len - dup - stale, dup, stale, added))
        }

        fn check(&self, r: &StreamReassembler, base: u64) {
            assert_eq!(r.front(), base + self.front as u64);
            assert_eq!(r.contiguous(), &self.contiguous()[..]);
            assert_eq!(r.contiguous_end(), r.front() + r.contiguous().len() as u64);
            assert_eq!(r.buffered_bytes(), self.extent());
            assert_eq!(r.has_gaps(), Self::islands(&self.have, self.front) > 0);
            assert_eq!(r.highest_end(), base + self.highest.max(self.front) as u64);
            for (s, e) in r.island_ranges() {
                for off in s..e {
                    let i = usize::try_from(off - base).unwrap();
                    let held = r.buf[r.head + i - self.front];
                    assert_eq!(Some(held), self.have[i]);
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert stream[start..start + len] (clamped to the stream).
        Insert(usize, usize),
        /// Consume this percentage of the contiguous region.
        Consume(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..600, 0usize..48).prop_map(|(s, l)| Op::Insert(s, l)),
            // Tiny segments scatter islands, to reach the assembler's hole limit.
            3 => tiny_insert(),
            1 => (0usize..=100).prop_map(Op::Consume),
        ]
    }

    fn tiny_insert() -> impl Strategy<Value = Op> {
        (0usize..600, 1usize..3).prop_map(|(s, l)| Op::Insert(s, l))
    }

    fn base() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            any::<u64>().prop_map(|b| b >> 1),
            Just(u64::MAX - 600)
        ]
    }

    fn clamp(stream_len: usize, start: usize, len: usize) -> (usize, usize) {
        let s = start % stream_len;
        (s, (s + len).min(stream_len))
    }

    fn apply_consume(r: &mut StreamReassembler, m: &mut Model, pct: usize, out: &mut Vec<u8>) {
        let n = r.contiguous().len() * pct / 100;
        out.extend_from_slice(&r.contiguous()[..n]);
        r.consume(n);
        m.front += n;
    }

    /// Runs `ops` against a reassembler and the model, checking after every step, then
    /// drains the stream in order and checks every byte was delivered exactly once.
    fn run_model(
        stream: &[u8],
        base: u64,
        limit: usize,
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let mut r = StreamReassembler::new(base, limit);
        let mut m = Model::new(stream.to_vec(), limit);
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Insert(start, len) => {
                    let (s, e) = clamp(stream.len(), start, len);
                    let before = snapshot(&r);
                    let got = r.insert(base + s as u64, &stream[s..e]);
                    let want = m.insert(base, s, e);
                    prop_assert_eq!(&got, &want);
                    match got {
                        Ok(i) => {
                            prop_assert_eq!(i.new_bytes + i.duplicate_bytes + i.stale_bytes, e - s)
                        }
                        Err(_) => prop_assert_eq!(snapshot(&r), before),
                    }
                }
                Op::Consume(pct) => apply_consume(&mut r, &mut m, pct, &mut out),
            }
            m.check(&r, base);
        }
        // Drain: deliver the rest in order, a window at a time.
        loop {
            apply_consume(&mut r, &mut m, 100, &mut out);
            if m.front == stream.len() {
                break;
            }
            let e = (m.front + limit).min(stream.len());
            let got = r.insert(base + m.front as u64, &stream[m.front..e]);
            prop_assert_eq!(got, m.insert(base, m.front, e));
            m.check(&r, base);
        }
        prop_assert_eq!(&out[..], stream);
        prop_assert_eq!(r.buffered_bytes(), 0);
        prop_assert!(!r.has_gaps());
        prop_assert!(r.heap_bytes() <= RELEASE_CAPACITY);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_matches_model(
            stream in proptest::collection::vec(any::<u8>(), 1..=600),
            base in base(),
            limit in 16usize..800,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            run_model(&stream, base, limit, ops)?;
        }

        /// Mostly tiny scattered segments and no consumes: the hole limit is reached often.
        #[test]
        fn prop_hole_limit_matches_model(
            stream in proptest::collection::vec(any::<u8>(), 100..=600),
            base in base(),
            ops in proptest::collection::vec(
                prop_oneof![8 => tiny_insert(), 1 => op()], 1..150),
        ) {
            run_model(&stream, base, stream.len(), ops)?;
        }

        #[test]
        fn prop_flipped_byte_conflicts(
            stream in proptest::collection::vec(any::<u8>(), 1..=400),
            base in base(),
            first in (0usize..400, 1usize..48),
            ops in proptest::collection::vec(op(), 0..60),
            pick in any::<usize>(),
            before_len in 0usize..48,
            after_len in 0usize..48,
            mask in 1u8..=255,
        ) {
            let limit = stream.len();
            let mut r = StreamReassembler::new(base, limit);
            let mut m = Model::new(stream.clone(), limit);
            let mut out = Vec::new();
            let (s, e) = clamp(stream.len(), first.0, first.1);
            r.insert(base + s as u64, &stream[s..e]).unwrap();
            m.insert(base, s, e).unwrap();
            for op in ops {
                match op {
                    Op::Insert(start, len) => {
                        let (s, e) = clamp(stream.len(), start, len);
                        let got = r.insert(base + s as u64, &stream[s..e]);
                        prop_assert_eq!(got, m.insert(base, s, e));
                    }
                    Op::Consume(pct) => apply_consume(&mut r, &mut m, pct, &mut out),
                }
            }
            let held: Vec<usize> =
                (m.front..stream.len()).filter(|&i| m.have[i].is_some()).collect();
            prop_assume!(!held.is_empty());
            let p = held[pick % held.len()];
            let s = p.saturating_sub(before_len);
            let e = (p + 1 + after_len).min(stream.len());
            let mut seg = stream[s..e].to_vec();
            seg[p - s] ^= mask;
            let before = snapshot(&r);
            prop_assert_eq!(
                r.insert(base + s as u64, &seg),
                Err(ReassemblyError::Conflict {
                    offset: base + p as u64,
                    held: stream[p],
                    offered: stream[p] ^ mask,
                })
            );
            prop_assert_eq!(snapshot(&r), before);
        }
    }
}
