//! The rewriter's connection table: a hash index over a slab whose slots also form a
//! doubly linked list in least-recently-used order. Touching, inserting and removing
//! are O(1); the least recently used entry is always at the head, which is what both
//! idle expiry and eviction need, so no sweep ever scans the whole table.
//!
//! Each entry gets a unique id when inserted. Timer queues hold `(slot, id)` handles and
//! check the id on use, so a handle to a removed entry (whose slot may have been
//! reused) is recognised as stale.

use hashbrown::HashMap;

use crate::flow::FlowKey;

const NIL: u32 = u32::MAX;

/// A handle to a table entry, valid while the entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handle {
    pub slot: u32,
    pub id: u64,
}

#[derive(Debug)]
struct Slot<V> {
    key: FlowKey,
    id: u64,
    value: Option<V>,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub(super) struct Table<V> {
    index: HashMap<FlowKey, u32>,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    /// Least recently used.
    head: u32,
    /// Most recently used.
    tail: u32,
    next_id: u64,
}

impl<V> Table<V> {
    pub fn new() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            next_id: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Every entry with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        self.slots
            .iter()
            .filter_map(|s| s.value.as_ref().map(|v| (&s.key, v)))
    }

    pub fn find(&self, key: &FlowKey) -> Option<Handle> {
        let slot = *self.index.get(key)?;
        Some(Handle {
            slot,
            id: self.slots[slot as usize].id,
        })
    }

    /// The entry behind `handle`, if it is still the same entry.
    pub fn get(&self, handle: Handle) -> Option<&V> {
        let s = self.slots.get(handle.slot as usize)?;
        if s.id == handle.id {
            s.value.as_ref()
        } else {
            None
        }
    }

    /// Mutable access to the entry behind `handle`, if it is still the same entry.
    pub fn get_mut(&mut self, handle: Handle) -> Option<&mut V> {
        let s = self.slots.get_mut(handle.slot as usize)?;
        if s.id == handle.id {
            s.value.as_mut()
        } else {
            None
        }
    }

    /// Insert a new entry (the caller has checked the key is absent) as most recently used.
    pub fn insert(&mut self, key: FlowKey, value: V) -> Handle {
        debug_assert!(!self.index.contains_key(&key));
        let id = self.next_id;
        self.next_id += 1;
        let slot = if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.key = key;
            s.id = id;
            s.value = Some(value);
            slot
        } else {
            // More than u32::MAX - 1 live entries cannot happen with any sane cap.
            let slot = u32::try_from(self.slots.len()).unwrap_or(NIL - 1);
            self.slots.push(Slot {
                key,
                id,
                value: Some(value),
                prev: NIL,
                next: NIL,
            });
            slot
        };
        self.index.insert(key, slot);
        self.link_tail(slot);
        Handle { slot, id }
    }

    /// Remove the entry behind `handle`, returning it.
    pub fn remove(&mut self, handle: Handle) -> Option<V> {
        let s = self.slots.get_mut(handle.slot as usize)?;
        if s.id != handle.id || s.value.is_none() {
            return None;
        }
        let value = s.value.take();
        let key = s.key;
        self.index.remove(&key);
        self.unlink(handle.slot);
        self.free.push(handle.slot);
        value
    }

    /// Mark an entry most recently used.
    pub fn touch(&mut self, handle: Handle) {
        if self.get(handle).is_some() && self.tail != handle.slot {
            self.unlink(handle.slot);
            self.link_tail(handle.slot);
        }
    }

    /// The least recently used entry.
    pub fn lru(&self) -> Option<Handle> {
        (self.head != NIL).then(|| Handle {
            slot: self.head,
            id: self.slots[self.head as usize].id,
        })
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let s = &self.slots[slot as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[slot as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn link_tail(&mut self, slot: u32) {
        let old_tail = self.tail;
        {
            let s = &mut self.slots[slot as usize];
            s.prev = old_tail;
            s.next = NIL;
        }
        if old_tail == NIL {
            self.head = slot;
        } else {
            self.slots[old_tail as usize].next = slot;
        }
        self.tail = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Endpoint, FlowProto};

    fn key(port: u16) -> FlowKey {
        FlowKey::new(
            [0, 0],
            FlowProto::Tcp,
            Endpoint::new("10.0.0.1".parse().unwrap(), port),
            Endpoint::new("10.0.0.2".parse().unwrap(), 80),
        )
        .0
    }

    #[test]
    fn lru_order_and_stale_handles() {
        let mut t = Table::new();
        let a = t.insert(key(1), 'a');
        let b = t.insert(key(2), 'b');
        let c = t.insert(key(3), 'c');
        assert_eq!(t.lru(), Some(a));
        t.touch(a);
        assert_eq!(t.lru(), Some(b));
        assert_eq!(t.remove(b), Some('b'));
        assert_eq!(t.remove(b), None);
        assert_eq!(t.lru(), Some(c));
        // The freed slot is reused with a new id: the old handle stays stale.
        let d = t.insert(key(4), 'd');
        assert_eq!(d.slot, b.slot);
        assert_eq!(t.get(b), None);
        assert_eq!(t.get(d), Some(&'d'));
        assert_eq!(t.find(&key(4)), Some(d));
        assert_eq!(t.len(), 3);
        for h in [c, a, d] {
            assert_eq!(t.lru(), Some(h));
            t.remove(h);
        }
        assert_eq!(t.lru(), None);
        assert_eq!(t.len(), 0);
    }
}
