//! Timers as data: a min-heap of deadlines with lazy invalidation. The owner keeps the real
//! deadline in its own state; a popped entry whose deadline no longer matches is stale and is
//! ignored. The next wake-up is the heap's minimum.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A deadline table for timer keys of type `K`.
#[derive(Debug)]
pub struct TimerQueue<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Clone> TimerQueue<K> {
    /// Schedules `key` at `deadline`. Earlier schedules of the same key stay in the heap and are
    /// discarded when popped if the owner's state says they are stale.
    pub fn schedule(&mut self, deadline: Instant, key: K) {
        self.heap.push(Reverse((deadline, key)));
    }

    /// The earliest scheduled deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops one entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
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
