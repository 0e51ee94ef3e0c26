//! A map keyed by region name, for the handful of regions one session
//! uses: a vector searched linearly. Cheaper than hashing the name, which
//! the hot path would do several times per message; region names usually
//! share one allocation (the configured name), so most comparisons stop at
//! the pointer.

use std::sync::Arc;

pub struct RegionMap<V> {
    entries: Vec<(Arc<str>, V)>,
}

impl<V> Default for RegionMap<V> {
    fn default() -> Self {
        RegionMap {
            entries: Vec::new(),
        }
    }
}

fn same(key: &str, region: &str) -> bool {
    std::ptr::eq(key, region) || key == region
}

impl<V> RegionMap<V> {
    fn position(&self, region: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| same(k, region))
    }

    pub fn get(&self, region: &str) -> Option<&V> {
        self.entries
            .iter()
            .find(|(k, _)| same(k, region))
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, region: &str) -> Option<&mut V> {
        self.entries
            .iter_mut()
            .find(|(k, _)| same(k, region))
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, region: &str) -> bool {
        self.position(region).is_some()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, region: Arc<str>, value: V) -> Option<V> {
        match self.position(&region) {
            Some(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.entries.push((region, value));
                None
            }
        }
    }

    pub fn remove(&mut self, region: &str) -> Option<V> {
        let i = self.position(region)?;
        Some(self.entries.remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Empties the map, yielding its entries.
    pub fn drain(&mut self) -> impl Iterator<Item = (Arc<str>, V)> + '_ {
        self.entries.drain(..)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map() {
        let mut m = RegionMap::default();
        let eu: Arc<str> = Arc::from("eu");
        assert!(m.insert(eu.clone(), 1).is_none());
        assert!(m.insert(Arc::from("us"), 2).is_none());
        assert_eq!(m.insert(Arc::from("eu"), 3), Some(1));
        assert_eq!(m.get("eu"), Some(&3));
        assert_eq!(m.get(&eu), Some(&3));
        assert!(m.contains_key("us") && !m.contains_key("apac"));
        *m.get_mut("us").unwrap() += 10;
        assert_eq!(m.iter_mut().map(|(_, v)| *v).sum::<i32>(), 15);
        m.retain(|k, _| &**k != "eu");
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove("us"), Some(12));
        m.insert(eu.clone(), 4);
        assert_eq!(m.drain().map(|(_, v)| v).collect::<Vec<_>>(), vec![4]);
        assert_eq!(m.len(), 0);
        assert_eq!(m.remove("us"), None);
    }
}
