//! Timers as data: a deadline table keyed by timer kind. Each key has at most one deadline;
//! scheduling a key again moves its deadline, and a key whose owner goes away is cancelled, so
//! the table holds exactly one entry per live timer and nothing for state that is gone (a client
//! churning allocations or peer connections cannot grow it). The next wake-up is the smallest
//! deadline, found without visiting every timer. Used by the TURN and the SFU cores.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// A deadline table for timer keys of type `K`.
#[derive(Debug)]
pub struct TimerQueue<K: Ord + Hash> {
    order: BTreeSet<(Instant, K)>,
    deadline: HashMap<K, Instant>,
}

impl<K: Ord + Hash> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            order: BTreeSet::new(),
            deadline: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> TimerQueue<K> {
    /// Arms `key` to fire at `deadline`, replacing any deadline it had.
    pub fn schedule(&mut self, deadline: Instant, key: K) {
        if let Some(old) = self.deadline.insert(key.clone(), deadline) {
            if old == deadline {
                return;
            }
            self.order.remove(&(old, key.clone()));
        }
        self.order.insert((deadline, key));
    }

    /// Disarms `key`; nothing happens when it is not armed.
    pub fn cancel(&mut self, key: &K) {
        if let Some(t) = self.deadline.remove(key) {
            self.order.remove(&(t, key.clone()));
        }
    }

    /// The deadline of `key`, when armed.
    pub fn deadline_of(&self, key: &K) -> Option<Instant> {
        self.deadline.get(key).copied()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Removes and returns one key due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.order.first() {
            Some((t, _)) if *t <= now => {
                let (t, k) = self.order.pop_first()?;
                self.deadline.remove(&k);
                Some((t, k))
            }
            _ => None,
        }
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_entry_per_key_whatever_the_reschedules() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..10_000 {
            q.schedule(t0 + Duration::from_secs(600 + i), 'a');
        }
        assert_eq!(q.len(), 1);
        // Moving earlier moves the one entry.
        q.schedule(t0 + Duration::from_secs(10), 'a');
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(10)).map(|e| e.1),
            Some('a')
        );
        assert!(q.is_empty());
        q.schedule(t0 + Duration::from_secs(700), 'a');
        assert_eq!(q.deadline_of(&'a'), Some(t0 + Duration::from_secs(700)));
    }

    #[test]
    fn cancel_removes_the_entry() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for i in 0..1000u32 {
            q.schedule(t0 + Duration::from_secs(600), i);
        }
        for i in 0..1000u32 {
            q.cancel(&i);
        }
        q.cancel(&5000);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
        assert_eq!(q.pop_due(t0 + Duration::from_secs(10_000)), None);
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
