//! The connection table: a slab of connections indexed by a hashbrown table of slot
//! numbers, a min-heap of per-connection deadlines, and a FIFO of eviction candidates.
//!
//! The index stores only the 4-byte slot number; keys are compared (and rehashed when
//! the index grows) through the slab, so at a million connections the index is about
//! 10 MB and stays in cache, and a lookup touches the slab entry it needs anyway.
//!
//! Every structure is amortised O(1) or O(log n) per frame; nothing ever walks the
//! whole table except a checkpoint flush (QEMU walks every connection on every
//! timer tick).

use core::hash::{BuildHasher, Hasher};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::flow::{FlowDir, FlowKey, FlowProto};
use crate::time::Instant;

use super::conn::Conn;

/// A connection's identity: the normalised flow plus the direction the VMs' output
/// travels in, so both directions of a conversation never share compare state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub(crate) flow: FlowKey,
    pub(crate) dir: FlowDir,
}

/// A slot index plus the generation it had when the reference was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ConnRef {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl ConnKey {
    /// The key as six words, for hashing: the four address halves, the ports and VLAN
    /// ids, the protocol and direction. (Equality still compares the whole key.)
    fn words(&self) -> [u64; 6] {
        let half = |a: &[u8; 16], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&a[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let f = &self.flow;
        let proto: u64 = match f.proto {
            FlowProto::Tcp => 0,
            FlowProto::Udp => 1,
            FlowProto::Icmp => 2,
            FlowProto::Arp => 3,
            FlowProto::Unparsed => 4,
            FlowProto::OtherIp(p) => 0x100 | u64::from(p),
            FlowProto::Ethertype(t) => 0x1_0000 | u64::from(t),
        };
        [
            half(&f.lo.addr, 0),
            half(&f.lo.addr, 1),
            half(&f.hi.addr, 0),
            half(&f.hi.addr, 1),
            u64::from(f.lo.port) << 48
                | u64::from(f.hi.port) << 32
                | u64::from(f.vlan[0]) << 16
                | u64::from(f.vlan[1]),
            proto << 1 | u64::from(self.dir == FlowDir::HiToLo),
        ]
    }
}

/// One slab slot: a connection, or nothing, and the slot's generation (bumped when its
/// connection is removed, so stale [`ConnRef`]s are recognised).
#[derive(Debug, Default)]
struct Entry {
    conn: Option<Conn>,
    generation: u32,
}

#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    /// Slot numbers, hashed by their connection's key.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    slots: Vec<Entry>,
    free: Vec<u32>,
    /// Per-connection wake-ups: (deadline, connection). Stale entries are skipped
    /// when popped (see [`Conn::armed_at`]).
    timers: BinaryHeap<Reverse<(Instant, ConnRef)>>,
    /// Connections that became quiescent, oldest first: eviction candidates.
    quiescent: VecDeque<ConnRef>,
    /// Bumped by every insert and remove: a slot found before an unchanged version is
    /// still the answer to the same lookup (the batched path relies on it).
    version: u64,
}

fn hash_key(hasher: &DefaultHashBuilder, key: &ConnKey) -> u64 {
    let mut h = hasher.build_hasher();
    for w in key.words() {
        h.write_u64(w);
    }
    h.finish()
}

impl ConnTable {
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn lookup(&self, key: &ConnKey) -> Option<u32> {
        self.lookup_hashed(self.hash(key), key)
    }

    /// The hash [`ConnTable::lookup_hashed`] wants for `key`.
    pub(crate) fn hash(&self, key: &ConnKey) -> u64 {
        hash_key(&self.hasher, key)
    }

    /// Insertions and removals so far (see the field).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Read the index's control group and first matching slot number for `hash`
    /// without comparing keys: a batch does this for all its frames first, so their
    /// cache misses on the index overlap. Returns the candidate slot (or `u32::MAX`).
    pub(crate) fn touch_index(&self, hash: u64) -> u32 {
        self.index
            .iter_hash(hash)
            .next()
            .copied()
            .unwrap_or(u32::MAX)
    }

    /// Read a word from each cache line of `slot`'s entry that handling a frame of
    /// `side` will touch first (the key, the held queue's head, the side's stream and
    /// sequence state), so a batch's misses on different entries overlap. The value
    /// means nothing; the caller hands it to `black_box`.
    pub(crate) fn touch_entry(&self, slot: u32, side: usize) -> u64 {
        let Some(conn) = self.get(slot) else { return 0 };
        let mut word = u64::from(conn.held.is_empty())
            ^ conn.last_seen.as_micros()
            ^ u64::from(conn.key.flow.lo.port);
        if let super::conn::Proto::Tcp(tcp) = &conn.proto
            && let (Some(stream), Some(state)) = (tcp.streams.get(side), tcp.sides.get(side))
        {
            word ^= stream.front() ^ u64::from(state.base.is_some());
        }
        word
    }

    /// [`ConnTable::lookup`] with the key's hash already computed.
    pub(crate) fn lookup_hashed(&self, hash: u64, key: &ConnKey) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&s| {
                slots[s as usize]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.key == *key)
            })
            .copied()
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&Conn> {
        self.slots.get(slot as usize).and_then(|e| e.conn.as_ref())
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots
            .get_mut(slot as usize)
            .and_then(|e| e.conn.as_mut())
    }

    /// Resolve a possibly stale reference.
    pub(crate) fn resolve(&self, r: ConnRef) -> Option<u32> {
        self.slots
            .get(r.slot as usize)
            .is_some_and(|e| e.generation == r.generation && e.conn.is_some())
            .then_some(r.slot)
    }

    pub(crate) fn conn_ref(&self, slot: u32) -> ConnRef {
        ConnRef {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    pub(crate) fn insert(&mut self, key: ConnKey, conn: Conn) -> u32 {
        self.version += 1;
        let slot = if let Some(slot) = self.free.pop() {
            self.slots[slot as usize].conn = Some(conn);
            slot
        } else {
            let slot = u32::try_from(self.slots.len()).expect("more than 2^32 connections");
            self.slots.push(Entry {
                conn: Some(conn),
                generation: 0,
            });
            slot
        };
        let Self {
            index,
            hasher,
            slots,
            ..
        } = self;
        index.insert_unique(hash_key(hasher, &key), slot, |&s| {
            slots[s as usize]
                .conn
                .as_ref()
                .map_or(0, |c| hash_key(hasher, &c.key))
        });
        slot
    }

    pub(crate) fn remove(&mut self, slot: u32) -> Option<Conn> {
        let entry = self.slots.get_mut(slot as usize)?;
        let conn = entry.conn.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.version += 1;
        if let Ok(found) = self
            .index
            .find_entry(hash_key(&self.hasher, &conn.key), |&s| s == slot)
        {
            found.remove();
        }
        self.free.push(slot);
        Some(conn)
    }

    /// Schedule a wake-up for `slot` at `at`, unless an earlier one is armed.
    pub(crate) fn arm(&mut self, slot: u32, at: Instant) {
        let r = self.conn_ref(slot);
        let Some(conn) = self.get_mut(slot) else {
            return;
        };
        if conn.armed_at.is_some_and(|armed| armed <= at) {
            return;
        }
        conn.armed_at = Some(at);
        self.timers.push(Reverse((at, r)));
    }

    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Pop the next due wake-up that is still current.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u32> {
        while let Some(Reverse((at, r))) = self.timers.peek().copied() {
            if at > now {
                return None;
            }
            self.timers.pop();
            let Some(slot) = self.resolve(r) else {
                continue;
            };
            let conn = self.get_mut(slot)?;
            if conn.armed_at == Some(at) {
                conn.armed_at = None;
                return Some(slot);
            }
        }
        None
    }

    pub(crate) fn mark_quiescent(&mut self, slot: u32) {
        let r = self.conn_ref(slot);
        if let Some(conn) = self.get_mut(slot)
            && !conn.in_quiescent_queue
        {
            conn.in_quiescent_queue = true;
            self.quiescent.push_back(r);
        }
    }

    /// Find the connection that has been quiescent longest and is still quiescent.
    pub(crate) fn pop_evictable(&mut self) -> Option<u32> {
        while let Some(r) = self.quiescent.pop_front() {
            let Some(slot) = self.resolve(r) else {
                continue;
            };
            let conn = self.get_mut(slot)?;
            conn.in_quiescent_queue = false;
            if conn.is_quiescent() {
                return Some(slot);
            }
        }
        None
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, e)| e.conn.is_some())
            .map(|(i, _)| i as u32)
    }
}
