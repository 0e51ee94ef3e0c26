//! Analysis cache keyed by statement text, so a prepared statement (and a
//! repeated simple query) is parsed once, not per execution.

use super::{analyze, Analysis, Tenancy};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Default bound on cached statement texts.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Caches [`Analysis`] by statement text.
///
/// Bounded: when full it is simply cleared (statement texts of an
/// application are few; a workload with unbounded distinct texts — literals
/// inlined — gains nothing from caching anyway). Entries remember the
/// generation they were made in; [`AnalysisCache::invalidate`] (call it when
/// the [`Tenancy`] changes) bumps the generation so even an analysis racing
/// with the invalidation is never served afterwards.
#[derive(Debug)]
pub struct AnalysisCache {
    map: DashMap<Box<str>, (u64, Arc<Analysis>)>,
    capacity: usize,
    generation: AtomicU64,
}

impl Default for AnalysisCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl AnalysisCache {
    /// A cache holding at most `capacity` statement texts (at least one).
    pub fn new(capacity: usize) -> Self {
        AnalysisCache {
            map: DashMap::new(),
            capacity: capacity.max(1),
            generation: AtomicU64::new(0),
        }
    }

    /// The cached analysis of `sql`, analysing it on a miss.
    pub fn get_or_analyze(&self, sql: &str, tenancy: &Tenancy) -> Arc<Analysis> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(entry) = self.map.get(sql) {
            if entry.0 == generation {
                return Arc::clone(&entry.1);
            }
        }
        if let Some(plain) = super::analyze_plain(sql, tenancy) {
            return Arc::new(plain);
        }
        let analysis = Arc::new(analyze(sql, tenancy));
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map
            .insert(sql.into(), (generation, Arc::clone(&analysis)));
        analysis
    }

    /// Drops every entry: the tenancy changed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map.clear();
    }

    /// The current generation (bumped by each invalidation).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of cached statement texts.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
