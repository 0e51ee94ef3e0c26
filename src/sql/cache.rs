//! Analysis cache keyed by statement text, so a prepared statement (and a
//! repeated simple query) is parsed once, not per execution.

use super::{analyze, Analysis, StatementKind, StatementPlan, Tenancy};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// The analyses of plain reads and writes, shared by every such statement.
static READ: LazyLock<Arc<Analysis>> = LazyLock::new(|| of(StatementKind::Read));
static WRITE: LazyLock<Arc<Analysis>> = LazyLock::new(|| of(StatementKind::Write));

fn of(kind: StatementKind) -> Arc<Analysis> {
    Arc::new(Analysis {
        statements: vec![StatementPlan::new(kind)],
        param_count: 0,
    })
}

/// The analysis of any plain statement of a kind, shared.
fn plain(kind: StatementKind) -> Arc<Analysis> {
    match kind {
        StatementKind::Read => Arc::clone(&READ),
        StatementKind::Write => Arc::clone(&WRITE),
        other => of(other),
    }
}

/// Whether `analysis` is one [`super::plain_kind`] told from the text alone
/// (what [`AnalysisCache::get_or_analyze`] returns for a plain statement):
/// then only the words of the text decided it, never its literals.
pub fn is_plain(analysis: &Arc<Analysis>) -> bool {
    Arc::ptr_eq(analysis, &READ) || Arc::ptr_eq(analysis, &WRITE)
}

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
        // Plain statements are never cached (their texts carry literals and
        // rarely repeat); telling one costs less than hashing the text.
        if let Some(kind) = super::plain_kind(sql, tenancy) {
            return plain(kind);
        }
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(entry) = self.map.get(sql) {
            if entry.0 == generation {
                return Arc::clone(&entry.1);
            }
        }
        let analysis = Arc::new(analyze(sql, tenancy));
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map
            .insert(sql.into(), (generation, Arc::clone(&analysis)));
        analysis
    }

    /// Drops every entry: the tenancy changed. (Plain statements are told
    /// from the tenancy passed in, never from the cache.)
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
