//! The order in which cached extents are evicted: least recently released first, with
//! extents that must go anyway (shadowed ones whose unmap failed) ahead of all others.

use std::collections::BTreeMap;

use super::extent::ExtentId;

/// Eviction rank: doomed extents before merely cached ones, then by release time.
type Rank = (bool, u64);

/// Cached extents in eviction order.
#[derive(Debug, Default, Clone)]
pub(crate) struct EvictionOrder {
    order: BTreeMap<Rank, ExtentId>,
    ranks: BTreeMap<ExtentId, Rank>,
    clock: u64,
}

impl EvictionOrder {
    /// Adds an extent its last user just released.
    pub fn push_released(&mut self, extent: ExtentId) {
        self.push(extent, true);
    }

    /// Adds an extent that should be unmapped before any cached one.
    pub fn push_doomed(&mut self, extent: ExtentId) {
        self.push(extent, false);
    }

    fn push(&mut self, extent: ExtentId, cached: bool) {
        self.remove(extent);
        self.clock += 1;
        let rank = (cached, self.clock);
        self.order.insert(rank, extent);
        self.ranks.insert(extent, rank);
    }

    /// Takes an extent out (it is reused or unmapped). Returns whether it was there.
    pub fn remove(&mut self, extent: ExtentId) -> bool {
        match self.ranks.remove(&extent) {
            Some(rank) => {
                self.order.remove(&rank);
                true
            }
            None => false,
        }
    }

    /// Whether an extent is cached.
    pub fn contains(&self, extent: ExtentId) -> bool {
        self.ranks.contains_key(&extent)
    }

    /// Cached extents, next to evict first.
    pub fn iter(&self) -> impl Iterator<Item = ExtentId> + '_ {
        self.order.values().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_released_first_doomed_before_all() {
        let mut lru = EvictionOrder::default();
        lru.push_released(1);
        lru.push_released(2);
        lru.push_released(3);
        lru.push_doomed(9);
        assert_eq!(lru.iter().collect::<Vec<_>>(), vec![9, 1, 2, 3]);
        assert!(lru.remove(1));
        lru.push_released(1);
        assert_eq!(lru.iter().collect::<Vec<_>>(), vec![9, 2, 3, 1]);
        assert!(!lru.remove(7));
        assert!(lru.contains(2));
        assert_eq!(lru.iter().count(), 4);
    }
}
