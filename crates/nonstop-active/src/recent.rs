//! A map bounded by recency: what a replica remembers per client, so that no number of client
//! ids (a client picks its own) costs unbounded memory.
//!
//! Forgetting a client is safe in active replication because the service's region holds the
//! platform's client table, which every replica consults as it executes (and which bounds and
//! expires clients itself): a forgotten client's retry is delivered and executed again, and the
//! table answers it as a duplicate instead of applying it twice.
//!
//! ```
//! use nonstop_active::recent::Recent;
//! let mut answers: Recent<u64, &str, 2> = Recent::new();
//! answers.insert(7, "a");
//! answers.insert(8, "b");
//! answers.insert(7, "c"); // 7 is now the most recent
//! assert_eq!(answers.insert(9, "d"), Some((8, "b")), "the least recently written goes");
//! assert_eq!((answers.get(&7), answers.get(&8), answers.len()), (Some(&"c"), None, 2));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A map that keeps the `CAPACITY` keys written most recently (1 at least).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Written<K, V>", into = "Written<K, V>")]
#[serde(bound(
    serialize = "K: Ord + Clone + Serialize, V: Clone + Serialize",
    deserialize = "K: Ord + Clone + Deserialize<'de>, V: Deserialize<'de>"
))]
pub struct Recent<K: Ord + Clone, V, const CAPACITY: usize> {
    /// Counts writes: each entry's stamp is the count at its last write.
    stamp: u64,
    entries: BTreeMap<K, (u64, V)>,
    /// The keys by their stamp, oldest first.
    by_stamp: BTreeMap<u64, K>,
}

/// What travels of a [`Recent`]: the entries and their stamps. The index is rebuilt, so a
/// snapshot from the network cannot make it disagree with the entries, and the capacity is the
/// type's, so it cannot raise it.
#[derive(Serialize, Deserialize)]
struct Written<K: Ord, V> {
    stamp: u64,
    entries: BTreeMap<K, (u64, V)>,
}

impl<K: Ord + Clone, V, const CAPACITY: usize> From<Written<K, V>> for Recent<K, V, CAPACITY> {
    fn from(written: Written<K, V>) -> Recent<K, V, CAPACITY> {
        let by_stamp = written.entries.iter().map(|(key, (stamp, _))| (*stamp, key.clone())).collect();
        let mut recent = Recent { stamp: written.stamp, entries: written.entries, by_stamp };
        // Two entries claiming one stamp leave one in the index; the other must not stay out
        // of reach of eviction.
        let indexed: std::collections::BTreeSet<&K> = recent.by_stamp.values().collect();
        let unindexed: Vec<K> = recent.entries.keys().filter(|k| !indexed.contains(k)).cloned().collect();
        for key in unindexed {
            recent.entries.remove(&key);
        }
        recent.stamp = recent.stamp.max(recent.by_stamp.keys().next_back().copied().unwrap_or(0));
        recent.evict();
        recent
    }
}

impl<K: Ord + Clone, V: Clone, const CAPACITY: usize> From<Recent<K, V, CAPACITY>> for Written<K, V> {
    fn from(recent: Recent<K, V, CAPACITY>) -> Written<K, V> {
        Written { stamp: recent.stamp, entries: recent.entries }
    }
}

impl<K: Ord + Clone, V, const CAPACITY: usize> Default for Recent<K, V, CAPACITY> {
    fn default() -> Self {
        Recent::new()
    }
}

impl<K: Ord + Clone, V, const CAPACITY: usize> Recent<K, V, CAPACITY> {
    /// An empty map.
    pub fn new() -> Recent<K, V, CAPACITY> {
        Recent { stamp: 0, entries: BTreeMap::new(), by_stamp: BTreeMap::new() }
    }

    /// The value of `key`, if it is remembered.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, value)| value)
    }

    /// The value of `key` to change in place (it does not become more recent).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, value)| value)
    }

    /// The values, by key.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(_, value)| value)
    }

    /// The entry written longest ago.
    pub fn oldest(&self) -> Option<(&K, &V)> {
        let (_, key) = self.by_stamp.first_key_value()?;
        self.entries.get_key_value(key).map(|(key, (_, value))| (key, value))
    }

    /// True if writing a key it does not hold would forget another.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= CAPACITY.max(1)
    }

    /// The entries, oldest written first.
    pub fn iter_by_age(&self) -> impl Iterator<Item = (&K, &V)> {
        self.by_stamp.values().filter_map(|key| self.entries.get_key_value(key).map(|(key, (_, value))| (key, value)))
    }

    /// Writes `key`, making it the most recent; returns the entry forgotten to make room.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.stamp += 1;
        if let Some((old, _)) = self.entries.insert(key.clone(), (self.stamp, value)) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(self.stamp, key);
        self.evict()
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (stamp, value) = self.entries.remove(key)?;
        self.by_stamp.remove(&stamp);
        Some(value)
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(key, (_, value))| (key, value))
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_stamp.clear();
    }

    /// Forgets the oldest entries past capacity; returns the last one forgotten.
    fn evict(&mut self) -> Option<(K, V)> {
        let mut forgotten = None;
        while self.entries.len() > CAPACITY.max(1) {
            let (_, key) = self.by_stamp.pop_first()?;
            forgotten = self.entries.remove(&key).map(|(_, value)| (key, value));
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_cannot_make_the_index_disagree_or_outgrow_the_capacity() {
        // Two entries claim stamp 5, and there are more than the capacity.
        let written = Written {
            stamp: 1,
            entries: BTreeMap::from([(1u64, (5u64, 'a')), (2, (5, 'b')), (3, (6, 'c')), (4, (7, 'd'))]),
        };
        let bytes = postcard::to_stdvec(&written).unwrap();
        let mut recent: Recent<u64, char, 2> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![3, 4]);
        // Later writes stamp after every stamp it holds.
        recent.insert(9, 'z');
        assert_eq!(recent.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![4, 9]);
        assert_eq!(recent.remove(&4), Some('d'));
        assert!(recent.remove(&4).is_none());
    }
}
