//! Timers as data: a min-heap of deadlines. The owner keeps the real deadline in its own state
//! and checks it when an entry pops: an entry that fires early (the deadline was pushed back
//! meanwhile) is re-armed by the owner at the real deadline. At most one entry per key is
//! pending unless a deadline moves earlier, so a client refreshing in a loop cannot grow the
//! heap. The next wake-up is the heap's minimum.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// A deadline table for timer keys of type `K`.
#[derive(Debug)]
pub struct TimerQueue<K: Ord + Hash> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    pending: HashMap<K, Instant>,
}

impl<K: Ord + Hash> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            pending: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> TimerQueue<K> {
    /// Makes sure `key` fires at or before `deadline`. When an entry for `key` already fires at
    /// or before it, nothing is added: the owner re-arms when that entry pops early.
    pub fn schedule(&mut self, deadline: Instant, key: K) {
        if self.pending.get(&key).is_some_and(|p| *p <= deadline) {
            return;
        }
        self.pending.insert(key.clone(), deadline);
        self.heap.push(Reverse((deadline, key)));
    }

    /// The earliest scheduled deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops one entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => {
                let (t, k) = self.heap.pop().map(|Reverse(e)| e)?;
                if self.pending.get(&k) == Some(&t) {
                    self.pending.remove(&k);
                }
                Some((t, k))
            }
            _ => None,
        }
    }

    /// Number of entries, stale ones included (bounded by the owner's rescheduling).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn repeated_reschedules_keep_one_entry() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..10_000 {
            q.schedule(t0 + Duration::from_secs(600 + i), 'a');
        }
        assert_eq!(q.len(), 1);
        // Moving earlier adds one.
        q.schedule(t0 + Duration::from_secs(10), 'a');
        assert_eq!(q.len(), 2);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(10)).map(|e| e.1),
            Some('a')
        );
        // After the pending one fired, scheduling again is accepted.
        q.schedule(t0 + Duration::from_secs(700), 'a');
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(600)));
    }

    #[test]
    fn pops_in_order_only_when_due() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.schedule(t0 + Duration::from_secs(5), 'b');
        q.schedule(t0 + Duration::from_secs(1), 'a');
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(2)).map(|e| e.1),
            Some('a')
        );
        assert_eq!(q.pop_due(t0 + Duration::from_secs(2)), None);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(9)).map(|e| e.1),
            Some('b')
        );
        assert!(q.is_empty());
    }
}
