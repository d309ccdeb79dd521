//! The connection table: a slab of connections indexed by a hashbrown map, a
//! min-heap of per-connection deadlines, and a FIFO of eviction candidates.
//!
//! Every structure is amortised O(1) or O(log n) per frame; nothing ever walks the
//! whole table except a checkpoint flush (QEMU walks every connection on every
//! timer tick).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hashbrown::HashMap;

use crate::flow::{FlowDir, FlowKey};
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

#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    map: HashMap<ConnKey, u32>,
    slots: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    /// Per-connection wake-ups: (deadline, connection). Stale entries are skipped
    /// when popped (see [`Conn::armed_at`]).
    timers: BinaryHeap<Reverse<(Instant, ConnRef)>>,
    /// Connections that became quiescent, oldest first: eviction candidates.
    quiescent: VecDeque<ConnRef>,
}

impl ConnTable {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn lookup(&self, key: &ConnKey) -> Option<u32> {
        self.map.get(key).copied()
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&Conn> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Resolve a possibly stale reference.
    pub(crate) fn resolve(&self, r: ConnRef) -> Option<u32> {
        (self.generations.get(r.slot as usize) == Some(&r.generation) && self.get(r.slot).is_some())
            .then_some(r.slot)
    }

    pub(crate) fn conn_ref(&self, slot: u32) -> ConnRef {
        ConnRef {
            slot,
            generation: self.generations[slot as usize],
        }
    }

    pub(crate) fn insert(&mut self, key: ConnKey, conn: Conn) -> u32 {
        let slot = if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = Some(conn);
            slot
        } else {
            let slot = u32::try_from(self.slots.len()).expect("more than 2^32 connections");
            self.slots.push(Some(conn));
            self.generations.push(0);
            slot
        };
        self.map.insert(key, slot);
        slot
    }

    pub(crate) fn remove(&mut self, slot: u32) -> Option<Conn> {
        let conn = self.slots.get_mut(slot as usize)?.take()?;
        self.map.remove(&conn.key);
        let g = &mut self.generations[slot as usize];
        *g = g.wrapping_add(1);
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
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u32)
    }
}
