//! `regionguard demo`: three persistent local regions (`eu`, `us`, `apac`)
//! with an example multi-tenant schema, and the proxy in front of them.
//!
//! Layout of the data directory (default `./regionguard-demo`, relative to
//! the working directory so a demo never writes somewhere unexpected):
//!
//! ```text
//! regionguard-demo.toml   ports and passwords (0600), reused on the next run
//! eu/data, eu/postgres.log
//! us/…, apac/…
//! ```
//!
//! The clusters use normal durability settings: the demo data survives
//! restarts and crashes like any PostgreSQL database.

mod config;
mod keys;
mod schema;
mod state;

use crate::config::ConfigError;
use crate::localpg::{Cluster, ClusterOptions, LocalPgError};
use crate::server::{Proxy, StartError};
use state::{RegionState, State};
use std::path::{Path, PathBuf};
use tokio::signal::unix::{signal, SignalKind};

/// The demo's regions, in the order they are printed.
const REGIONS: [&str; 3] = ["eu", "us", "apac"];
/// The role the proxy connects to each region as, owner of [`DATABASE`].
const ROLE: &str = "regionguard";
/// The example database in each region (and the name clients use).
const DATABASE: &str = "app";

/// Options of `regionguard demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the regional clusters and the state file live; created if
    /// missing, reused if present.
    pub data_dir: PathBuf,
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            data_dir: PathBuf::from("regionguard-demo"),
            port: 6432,
        }
    }
}

/// Why the demo stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    LocalPg(#[from] LocalPgError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("demo state file {path}: {message} (delete the data directory to start over)")]
    State { path: PathBuf, message: String },
    #[error("demo config: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot start the proxy: {0}")]
    Proxy(#[from] StartError),
    #[error("cannot listen for signals: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot insert the example customers through the proxy: {source}")]
    Seed {
        #[source]
        source: tokio_postgres::Error,
    },
}

impl DemoError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
        let context = context.into();
        move |source| DemoError::Io { context, source }
    }
}

/// The demo's schema and unencrypted rows for `region`: what the demo
/// loads directly, and what `docker/init/<region>.sql` ships
/// (tests/docker_files.rs keeps them equal).
pub fn region_sql(region: &str) -> String {
    schema::sql_for(region)
}

/// The demo's customers, inserted through the proxy so that their
/// classified columns are encrypted (`docker/init/customers.sql`).
pub fn customer_sql() -> String {
    schema::customer_inserts()
}

/// The demo's tenants and their regions.
pub fn tenants() -> Vec<(&'static str, &'static str)> {
    schema::tenant_regions().collect()
}

/// Creates or reuses the three regions, loads the example data, runs the
/// proxy and prints how to connect; returns after Ctrl-C or SIGTERM, once
/// the proxy and the clusters are stopped.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    // Listen for signals first so an early Ctrl-C still shuts down cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DemoError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DemoError::Signal)?;

    let data_dir = std::path::absolute(&opts.data_dir).map_err(DemoError::io(format!(
        "cannot resolve {}",
        opts.data_dir.display()
    )))?;
    std::fs::create_dir_all(&data_dir).map_err(DemoError::io(format!(
        "cannot create {}",
        data_dir.display()
    )))?;
    let mut state = State::load(&data_dir)?;
    for region in REGIONS {
        state
            .regions
            .entry(region.to_string())
            .or_insert_with(|| RegionState {
                port: 0,
                superuser_password: crate::localpg::random_password(),
                role_password: crate::localpg::random_password(),
            });
    }
    // Saved before any cluster exists: a cluster is never created with a
    // password that is not on disk.
    state.save(&data_dir)?;

    let (eu, us, apac) = tokio::try_join!(
        start_region(&data_dir, "eu", &state),
        start_region(&data_dir, "us", &state),
        start_region(&data_dir, "apac", &state),
    )?;
    let mut clusters = [eu, us, apac];
    for cluster in &clusters {
        if let Some(region) = state.regions.get_mut(cluster.name()) {
            region.port = cluster.port();
        }
    }
    state.save(&data_dir)?;

    let keys = match keys::ensure(&data_dir) {
        Ok(keys) => keys,
        Err(e) => {
            stop_all(&mut clusters).await;
            return Err(e);
        }
    };
    let proxy = match start_proxy(&clusters, &state, &keys, opts.port).await {
        Ok(proxy) => proxy,
        Err(e) => {
            stop_all(&mut clusters).await;
            return Err(e);
        }
    };
    if let Err(e) = seed_customers(&proxy).await {
        proxy.shutdown().await;
        stop_all(&mut clusters).await;
        return Err(e);
    }
    print_urls(&proxy, &clusters, &state);

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down the demo");
    proxy.shutdown().await;
    stop_all(&mut clusters).await;
    Ok(())
}

/// Creates (first run) or opens the region's cluster, starts it and makes
/// sure its role, database, schema and tenant data are there.
async fn start_region(data_dir: &Path, region: &str, state: &State) -> Result<Cluster, DemoError> {
    let saved = state.regions.get(region).ok_or_else(|| DemoError::State {
        path: data_dir.to_path_buf(),
        message: format!("region `{region}` is missing"),
    })?;
    let dir = data_dir.join(region);
    let options = ClusterOptions {
        port: (saved.port != 0).then_some(saved.port),
        fast: false,
    };
    let mut cluster = if dir.join("data").join("PG_VERSION").is_file() {
        Cluster::open(region, &dir, &saved.superuser_password, options)?
    } else {
        if dir.exists() {
            // A first run was interrupted before initdb finished.
            std::fs::remove_dir_all(&dir)
                .map_err(DemoError::io(format!("cannot remove {}", dir.display())))?;
        }
        tracing::info!(region, "creating the regional cluster (initdb)");
        Cluster::init(region, &dir, &saved.superuser_password, options).await?
    };
    cluster.start().await?;
    cluster
        .ensure_login_role(ROLE, &saved.role_password)
        .await?;
    cluster.ensure_database(DATABASE, ROLE).await?;
    let client = cluster
        .connect(ROLE, &saved.role_password, DATABASE)
        .await?;
    client
        .batch_execute(&schema::sql_for(region))
        .await
        .map_err(|source| LocalPgError::Sql {
            cluster: region.to_string(),
            source,
        })?;
    Ok(cluster)
}

async fn start_proxy(
    clusters: &[Cluster],
    state: &State,
    keys: &keys::KeyFiles,
    port: u16,
) -> Result<Proxy, DemoError> {
    let config = config::build(clusters, state, keys, port)?;
    Ok(Proxy::start(config).await?)
}

/// Inserts the example customers through the proxy, which encrypts their
/// email and name with each tenant's key in its own region.
async fn seed_customers(proxy: &Proxy) -> Result<(), DemoError> {
    let addr = proxy.local_addr();
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user(config::PROXY_USER)
        .password(config::PROXY_PASSWORD)
        .dbname(DATABASE);
    let seed_error = |source| DemoError::Seed { source };
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(seed_error)?;
    let driver = tokio::spawn(connection);
    // One statement at a time: the tenants live in three regions, and one
    // query may only touch one region.
    let mut result = Ok(());
    for insert in schema::customer_inserts().lines() {
        result = client.batch_execute(insert).await;
        if result.is_err() {
            break;
        }
    }
    drop(client);
    let _ = driver.await;
    result.map_err(seed_error)
}

fn print_urls(proxy: &Proxy, clusters: &[Cluster], state: &State) {
    let addr = proxy.local_addr();
    let user = config::PROXY_USER;
    let password = config::PROXY_PASSWORD;
    println!("DATABASE_URL=postgres://{user}:{password}@{addr}/{DATABASE}");
    for cluster in clusters {
        if let Some(saved) = state.regions.get(cluster.name()) {
            println!(
                "region {}: {}",
                cluster.name(),
                cluster.connection_string(ROLE, &saved.role_password, DATABASE)
            );
        }
    }
    println!(
        "psql \"postgres://{user}:{password}@{addr}/{DATABASE}?options=-c%20regionguard.tenant%3Dglobex\""
    );
}

/// Stops every cluster cleanly; a failure is logged and the rest still
/// stop (a cluster that failed to stop is stopped hard when dropped).
async fn stop_all(clusters: &mut [Cluster]) {
    for cluster in clusters {
        if let Err(e) = cluster.stop().await {
            tracing::warn!(region = cluster.name(), error = %e, "cannot stop the cluster cleanly");
        }
    }
}
