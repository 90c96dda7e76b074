//! The map an allocation keeps its permissions, channels and peer channels in: a vector
//! searched linearly while it holds at most [`SPILL`] entries (what a WebRTC allocation has: one
//! to a few peers), a hash map beyond (an allocation may hold up to 1024 permissions, and a
//! linear search per relayed datagram would then cost too much).
//!
//! Small, it costs one exact-size heap block (a one-entry `HashMap` takes four buckets plus
//! control bytes), and a lookup compares a few keys instead of hashing one: this is on the
//! path of every relayed datagram.

use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept in the vector; the next one moves them all to a hash map (which stays one).
pub(super) const SPILL: usize = 8;

#[derive(Debug)]
pub(super) enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    Many(HashMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Eq + Hash + Copy, V> SmallMap<K, V> {
    pub(super) fn get(&self, k: &K) -> Option<&V> {
        match self {
            SmallMap::Few(v) => v.iter().find(|(key, _)| key == k).map(|(_, v)| v),
            SmallMap::Many(m) => m.get(k),
        }
    }

    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        match self {
            SmallMap::Few(v) => v.iter_mut().find(|(key, _)| key == k).map(|(_, v)| v),
            SmallMap::Many(m) => m.get_mut(k),
        }
    }

    pub(super) fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// Sets `k` to `v`, returning the value it replaced.
    pub(super) fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self {
            SmallMap::Few(entries) => {
                if let Some((_, old)) = entries.iter_mut().find(|(key, _)| *key == k) {
                    return Some(std::mem::replace(old, v));
                }
                if entries.len() < SPILL {
                    // One more slot, not the vector's usual four.
                    entries.reserve_exact(1);
                    entries.push((k, v));
                    return None;
                }
                let mut m: HashMap<K, V> = entries.drain(..).collect();
                m.insert(k, v);
                *self = SmallMap::Many(m);
                None
            }
            SmallMap::Many(m) => m.insert(k, v),
        }
    }

    pub(super) fn remove(&mut self, k: &K) -> Option<V> {
        match self {
            SmallMap::Few(entries) => {
                let i = entries.iter().position(|(key, _)| key == k)?;
                let (_, v) = entries.swap_remove(i);
                if entries.is_empty() {
                    // Give the block back.
                    *entries = Vec::new();
                }
                Some(v)
            }
            SmallMap::Many(m) => m.remove(k),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }

    /// Every entry, in no particular order (admin listings, expiry: never per datagram).
    pub(super) fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            SmallMap::Few(v) => Box::new(v.iter().map(|(k, v)| (k, v))),
            SmallMap::Many(m) => Box::new(m.iter()),
        }
    }

    pub(super) fn iter_mut(&mut self) -> Box<dyn Iterator<Item = (&K, &mut V)> + '_> {
        match self {
            SmallMap::Few(v) => Box::new(v.iter_mut().map(|(k, v)| (&*k, v))),
            SmallMap::Many(m) => Box::new(m.iter_mut()),
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_hash_map_below_and_above_the_spill() {
        let mut s: SmallMap<u32, u32> = SmallMap::default();
        let mut h: HashMap<u32, u32> = HashMap::new();
        // Inserts, replacements and removals across the spill point, checked against HashMap.
        for round in 0..3u32 {
            for k in 0..(SPILL as u32 + 5) {
                assert_eq!(s.insert(k, k * 10 + round), h.insert(k, k * 10 + round));
                assert_eq!(s.len(), h.len());
            }
            for k in (0..(SPILL as u32 + 5)).step_by(3) {
                assert_eq!(s.remove(&k), h.remove(&k));
                assert_eq!(s.remove(&k), None);
            }
            for k in 0..(SPILL as u32 + 6) {
                assert_eq!(s.get(&k), h.get(&k));
                assert_eq!(s.contains_key(&k), h.contains_key(&k));
            }
            let mut a: Vec<(u32, u32)> = s.iter().map(|(k, v)| (*k, *v)).collect();
            let mut b: Vec<(u32, u32)> = h.iter().map(|(k, v)| (*k, *v)).collect();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
            assert_eq!(s.iter().count(), h.len());
            assert_eq!(s.values().count(), h.len());
        }
        assert!(matches!(s, SmallMap::Many(_)));
        if let Some(v) = s.get_mut(&1) {
            *v = 99;
        }
        assert_eq!(s.get(&1), Some(&99));
    }

    #[test]
    fn stays_a_tight_vector_while_small() {
        let mut s: SmallMap<u32, u64> = SmallMap::default();
        for k in 0..SPILL as u32 {
            s.insert(k, 0);
            let SmallMap::Few(v) = &s else {
                panic!("spilled at {k}")
            };
            assert_eq!(v.capacity(), v.len(), "no spare slots");
        }
        s.insert(SPILL as u32, 0);
        assert!(matches!(s, SmallMap::Many(_)));
        let mut one: SmallMap<u32, u64> = SmallMap::default();
        one.insert(1, 1);
        one.remove(&1);
        let SmallMap::Few(v) = &one else { panic!() };
        assert_eq!(v.capacity(), 0, "the block goes with the last entry");
    }
}
