//! Tenant → region: the config's `[tenants]` map and, optionally, a
//! directory table in a control database, cached in memory.
//!
//! The control table is loaded whole at start and every
//! `directory.refresh_secs`; a NOTIFY on `directory.channel` (payload: the
//! tenant id, or empty for "reload everything") invalidates at once. A miss
//! asks the table for that one tenant, so a tenant added a moment ago is
//! found without waiting for the refresh.

use crate::config::{Config, Directory as DirectoryConfig};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_postgres::{AsyncMessage, NoTls};

/// How long "no such tenant" is remembered, so a client retrying an unknown
/// tenant does not hammer the control database.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);

/// Why the directory could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the tenant directory is unavailable: {0}")]
    Unavailable(String),
}

enum Cached {
    Region(Arc<str>),
    Unknown(Instant),
}

/// The config's static tenant map, keyed by normalized tenant id.
fn fixed_of(config: &Config) -> HashMap<String, Arc<str>> {
    config
        .tenants
        .iter()
        .map(|(t, r)| (normalize(t), Arc::from(r.as_str())))
        .collect()
}

/// The tenant directory shared by all sessions.
pub struct Directory {
    /// The config's `[tenants]`; replaced whole by a config reload.
    fixed: ArcSwap<HashMap<String, Arc<str>>>,
    cache: DashMap<String, Cached>,
    control: Option<Control>,
    metrics: crate::metrics::DirectoryMetrics,
}

struct Control {
    config: DirectoryConfig,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl Directory {
    /// A directory from the config. The control database, if any, is
    /// connected lazily and kept fresh by [`Directory::spawn_refresher`].
    pub fn new(config: &Config) -> Self {
        Directory {
            fixed: ArcSwap::from_pointee(fixed_of(config)),
            cache: DashMap::new(),
            control: config.directory.clone().map(|config| Control {
                config,
                client: Mutex::new(None),
            }),
            metrics: Default::default(),
        }
    }

    /// Installs the `[tenants]` of a reloaded config.
    pub fn set_fixed(&self, config: &Config) {
        self.fixed.store(Arc::new(fixed_of(config)));
    }

    /// Counts lookups by where the answer came from.
    pub fn with_metrics(self, metrics: crate::metrics::DirectoryMetrics) -> Self {
        Directory { metrics, ..self }
    }

    /// The region of `tenant`, `None` when no source knows it.
    pub async fn region_of(&self, tenant: &str) -> Result<Option<Arc<str>>, DirectoryError> {
        let key = normalized(tenant);
        if let Some(r) = self.fixed.load().get(&*key) {
            self.metrics.static_hit();
            return Ok(Some(r.clone()));
        }
        let Some(control) = &self.control else {
            self.metrics.static_hit();
            return Ok(None);
        };
        if let Some(hit) = self.cache.get(&*key) {
            match &*hit {
                Cached::Region(r) => {
                    self.metrics.cache_hit();
                    return Ok(Some(r.clone()));
                }
                Cached::Unknown(at) if at.elapsed() < NEGATIVE_TTL => {
                    self.metrics.cache_hit();
                    return Ok(None);
                }
                Cached::Unknown(_) => {}
            }
        }
        self.metrics.control_lookup();
        let found = control.lookup(&key).await?;
        let entry = match &found {
            Some(r) => Cached::Region(r.clone()),
            None => Cached::Unknown(Instant::now()),
        };
        self.cache.insert(key.into_owned(), entry);
        Ok(found)
    }

    /// The region of `tenant` if known without asking the control database.
    pub fn cached_region(&self, tenant: &str) -> Option<Arc<str>> {
        let key = normalized(tenant);
        if let Some(r) = self.fixed.load().get(&*key) {
            return Some(r.clone());
        }
        match self.cache.get(&*key).as_deref() {
            Some(Cached::Region(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// Keeps the cache in step with the control table: LISTEN for changes,
    /// full reload on start and every `refresh_secs`. Returns immediately
    /// when there is no control database.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let Some(control) = &self.control else {
            return;
        };
        let refresh = Duration::from_secs(control.config.refresh_secs);
        let dir = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(d) = dir.upgrade() else { return };
                if let Err(e) = d.listen_and_reload(refresh).await {
                    tracing::warn!(error = %e, "tenant directory: connection lost; retrying");
                }
                drop(d);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// One LISTEN session: reload everything, then apply notifications until
    /// the connection breaks (the caller reconnects).
    async fn listen_and_reload(&self, refresh: Duration) -> Result<(), DirectoryError> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        let (client, mut connection) = control.connect().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let listen = format!("LISTEN {}", control.config.channel);
        client.batch_execute(&listen).await.map_err(unavailable)?;
        let mut ticker = tokio::time::interval(refresh);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.reload_all(&client, &control.config.table).await?,
                payload = rx.recv() => match payload {
                    Some(p) if p.is_empty() => self.reload_all(&client, &control.config.table).await?,
                    Some(p) => { self.cache.remove(&normalize(&p)); }
                    None => {
                        driver.abort();
                        return Err(DirectoryError::Unavailable("notification stream ended".into()));
                    }
                },
            }
        }
    }

    async fn reload_all(
        &self,
        client: &tokio_postgres::Client,
        table: &str,
    ) -> Result<(), DirectoryError> {
        let rows = client
            .query(&format!("SELECT tenant_id::text, region FROM {table}"), &[])
            .await
            .map_err(unavailable)?;
        let mut fresh = HashMap::with_capacity(rows.len());
        for row in rows {
            let tenant: String = row.try_get(0).map_err(unavailable)?;
            let region: String = row.try_get(1).map_err(unavailable)?;
            fresh.insert(normalize(&tenant), Arc::<str>::from(region.as_str()));
        }
        self.cache.retain(|k, _| fresh.contains_key(k));
        for (k, v) in fresh {
            self.cache.insert(k, Cached::Region(v));
        }
        tracing::debug!(tenants = self.cache.len(), "tenant directory reloaded");
        Ok(())
    }
}

impl Control {
    async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        DirectoryError,
    > {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.config.host)
            .port(self.config.port)
            .dbname(&self.config.dbname)
            .user(&self.config.user)
            .application_name("regionguard-directory")
            .connect_timeout(Duration::from_secs(5));
        if let Some(pw) = &self.config.password {
            pg.password(pw);
        }
        pg.connect(NoTls).await.map_err(unavailable)
    }

    async fn lookup(&self, tenant: &str) -> Result<Option<Arc<str>>, DirectoryError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, connection) = self.connect().await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            *guard = Some(client);
        }
        let Some(client) = guard.as_ref() else {
            return Err(DirectoryError::Unavailable("no connection".into()));
        };
        let sql = format!(
            "SELECT region FROM {} WHERE tenant_id::text = $1",
            self.config.table
        );
        let row = client
            .query_opt(&sql, &[&tenant])
            .await
            .map_err(unavailable)?;
        match row {
            Some(r) => {
                let region: String = r.try_get(0).map_err(unavailable)?;
                Ok(Some(Arc::from(region.as_str())))
            }
            None => Ok(None),
        }
    }
}

fn unavailable(e: tokio_postgres::Error) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

/// Tenant ids compare as text; UUIDs in any case are the same tenant.
pub fn normalize(tenant: &str) -> String {
    normalized(tenant).into_owned()
}

/// [`normalize`], borrowing when nothing changes (lookups on the hot path).
fn normalized(tenant: &str) -> std::borrow::Cow<'_, str> {
    let t = tenant.trim();
    if t.len() == 36 && t.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        std::borrow::Cow::Owned(t.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}
