//! What every session shares: the config, per-region runtime settings, the
//! users, the cancel registry and the shutdown signal.

use crate::backend::{CancelTarget, RegionTls};
use crate::config::{Config, Region};
use crate::protocol::scram::Verifier;
use crate::routing::directory::Directory;
use crate::sql::{AnalysisCache, Tenancy};
use dashmap::DashMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Where the process is in its life; sessions watch it to drain on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; close sessions as soon as they are idle.
    Draining,
    /// The drain timeout passed: close every session now.
    Closing,
}

/// A region as sessions use it.
pub struct RegionRuntime {
    pub config: Region,
    pub tls: RegionTls,
}

/// One client's cancel key and the backend sessions a cancel must reach.
pub struct CancelEntry {
    pub secret: i32,
    pub targets: Vec<CancelTarget>,
}

pub struct Shared {
    pub config: Config,
    pub regions: BTreeMap<Arc<str>, RegionRuntime>,
    /// Tenant-scoped and global tables, for statement analysis.
    pub tenancy: Tenancy,
    /// Statement analyses by text: a prepared statement is parsed once.
    pub analysis: AnalysisCache,
    pub directory: Arc<Directory>,
    pub users: HashMap<String, Verifier>,
    pub tls: Option<TlsAcceptor>,
    /// Keyed by the process id the proxy handed the client.
    pub cancel: DashMap<i32, CancelEntry>,
    /// One permit per client connection (`listen.max_clients`).
    pub clients: Arc<Semaphore>,
    pub phase: watch::Receiver<Phase>,
    /// Series and the slow-statement threshold (no-ops when metrics are off).
    pub metrics: crate::metrics::Metrics,
}

impl Shared {
    /// The tenancy rules of a config, for statement analysis.
    pub fn tenancy_of(config: &Config) -> Tenancy {
        let t = &config.tenancy;
        let mut tenancy = Tenancy::new(&t.column);
        for table in &t.tables {
            tenancy.add_scoped(table, t.columns.get(table).map(String::as_str));
        }
        for table in &t.global_tables {
            tenancy.add_global(table);
        }
        tenancy
    }

    pub fn region(&self, name: &str) -> Option<&RegionRuntime> {
        self.regions.get(name)
    }

    pub fn region_names(&self) -> String {
        self.regions
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
