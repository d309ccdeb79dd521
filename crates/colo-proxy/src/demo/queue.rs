//! A queue of things due at simulated times: earliest first, and in scheduling order
//! among equal times, so a run is a pure function of its seed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use colo_core::Instant;

#[derive(Debug)]
struct Entry<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that the max-heap pops the earliest, then the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Items due at simulated times.
#[derive(Debug)]
pub struct TimedQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for TimedQueue<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimedQueue<T> {
    /// Schedule `item` at `at`.
    pub fn push(&mut self, at: Instant, item: T) {
        self.next_seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.next_seq,
            item,
        });
    }

    /// When the next item is due.
    #[must_use]
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The next item and its time.
    pub fn pop(&mut self) -> Option<(Instant, T)> {
        self.heap.pop().map(|e| (e.at, e.item))
    }

    /// Remove everything, in the order it would have been popped. Pushing items back
    /// in that order keeps their order.
    pub fn take_all(&mut self) -> Vec<(Instant, T)> {
        let mut all = core::mem::take(&mut self.heap).into_vec();
        all.sort_by_key(|e| (e.at, e.seq));
        all.into_iter().map(|e| (e.at, e.item)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_in_scheduling_order() {
        let mut q = TimedQueue::default();
        q.push(Instant::from_micros(5), "c");
        q.push(Instant::from_micros(1), "a");
        q.push(Instant::from_micros(5), "d");
        q.push(Instant::from_micros(1), "b");
        assert_eq!(q.next_at(), Some(Instant::from_micros(1)));
        let order: Vec<&str> = std::iter::from_fn(|| q.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
        assert_eq!(q.next_at(), None);
    }

    #[test]
    fn take_all_keeps_the_order() {
        let mut q = TimedQueue::default();
        for (t, x) in [(3, 'x'), (1, 'y'), (3, 'z'), (2, 'w')] {
            q.push(Instant::from_micros(t), x);
        }
        let all = q.take_all();
        assert_eq!(q.next_at(), None);
        let items: Vec<char> = all.iter().map(|(_, x)| *x).collect();
        assert_eq!(items, ['y', 'w', 'x', 'z']);
        for (t, x) in all {
            q.push(t, x);
        }
        let again: Vec<char> = std::iter::from_fn(|| q.pop().map(|(_, x)| x)).collect();
        assert_eq!(again, items);
    }
}
