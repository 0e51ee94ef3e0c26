//! The configuration model. Field docs double as the config reference in
//! README.md; keep both in step.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole RegionGuard configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub client_tls: ClientTls,
    #[serde(default)]
    pub auth: Auth,
    /// Regions by name (`eu`, `us`, …).
    pub regions: BTreeMap<String, Region>,
    /// The region serving sessions that name none.
    pub default_region: String,
    /// Which tables hold tenant data and how the tenant is found.
    #[serde(default)]
    pub tenancy: Tenancy,
    /// Static directory: tenant id → region name.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// Optional directory table in a control database, for large fleets.
    #[serde(default)]
    pub directory: Option<Directory>,
    /// Data classes by name (`pii`, `financial`, …) and how they are protected.
    #[serde(default)]
    pub classes: BTreeMap<String, DataClass>,
    /// Classified columns: table name → column name → classification.
    #[serde(default)]
    pub classified: BTreeMap<String, BTreeMap<String, ClassifiedColumn>>,
    /// Two-phase commit of DDL and global-table writes across regions.
    #[serde(default)]
    pub two_phase: TwoPhase,
    /// Backend sessions kept after their client left, for the next client.
    #[serde(default)]
    pub backend_pool: BackendPool,
    #[serde(default)]
    pub admin: Admin,
    /// Automatic data key rotation by age.
    #[serde(default)]
    pub key_rotation: KeyRotation,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub logging: Logging,
    /// The file this config was loaded from (set by `Config::load`).
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
    /// Lowercase hex SHA-256 of that file as it was read, so `status` can
    /// name the config in force even after the file changed on disk.
    #[serde(skip)]
    pub source_sha256: Option<String>,
}

/// Where clients connect and the limits that protect the proxy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// `host:port` to accept clients on.
    pub address: String,
    /// Connections beyond this are refused with SQLSTATE 53300.
    pub max_clients: usize,
    /// Largest single protocol message accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// On SIGTERM, how long open transactions may run before their
    /// connections are closed.
    pub shutdown_timeout_secs: u64,
    /// How long a client may take from connecting to finishing authentication.
    pub startup_timeout_secs: u64,
    /// Threads relaying sessions; 0: one per CPU.
    pub threads: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: "127.0.0.1:6432".into(),
            max_clients: 1000,
            max_message_bytes: 1 << 30,
            shutdown_timeout_secs: 30,
            startup_timeout_secs: 30,
            threads: 0,
        }
    }
}

/// Idle backend sessions kept after their client session ended cleanly,
/// reset with `DISCARD ALL`, for the next client session of the region
/// with the same startup parameters (ADR 21).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendPool {
    /// Idle backend sessions kept per region; 0 closes each backend
    /// session with its client session.
    pub max_idle_per_region: usize,
    /// An idle backend session unused this long is closed.
    pub idle_timeout_secs: u64,
    /// When a backend session goes back to the pool: when its client
    /// session ends (`session`), or, for sessions that keep no state in
    /// it, after every transaction (`transaction`, ADR 22).
    pub mode: PoolMode,
    /// Transaction mode: backend sessions of a region serving clients at
    /// once; a client needing one more waits for one to come back.
    pub max_active_per_region: usize,
    /// Transaction mode: how long a statement waits for a backend session
    /// before it is refused.
    pub acquire_timeout_secs: u64,
}

impl Default for BackendPool {
    fn default() -> Self {
        BackendPool {
            max_idle_per_region: 16,
            idle_timeout_secs: 60,
            mode: PoolMode::Session,
            max_active_per_region: 20,
            acquire_timeout_secs: 30,
        }
    }
}

/// When a backend session is handed back to the region's pool (ADR 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// When the client session ends: one backend session per connected
    /// client session and region.
    #[default]
    Session,
    /// After each transaction of a client session that keeps no session
    /// state in Postgres; sessions that do keep their backend.
    Transaction,
}

/// Whether clients may, must or cannot use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// Answer SSLRequest with 'N'.
    #[default]
    Disable,
    /// Offer TLS; plaintext clients are accepted too.
    Allow,
    /// Refuse clients that do not ask for TLS.
    Require,
}

/// TLS towards clients.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// How clients authenticate to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// No password at all: local development only.
    Trust,
}

/// Client authentication.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub method: AuthMethod,
    pub users: Vec<User>,
}

/// A client user: the name and a SCRAM-SHA-256 verifier as Postgres stores
/// it in `pg_authid` (`regionguard hash-password` prints one).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub verifier: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// TLS towards a region's Postgres servers, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    #[default]
    Disable,
    /// TLS when the server offers it, plaintext otherwise (no verification).
    Prefer,
    /// TLS or fail (no certificate verification, as libpq's `require`).
    Require,
    /// TLS with the certificate verified against `ca_file` (or the system
    /// roots) and the host name checked.
    VerifyFull,
}

/// One region: its residency zone and its Postgres hosts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Residency zone (`eu`, `us`…); failover never leaves it.
    pub zone: String,
    #[serde(default)]
    pub tls: BackendTlsMode,
    /// CA bundle for `verify-full`; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for a backend connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// The primary and its standbys: sessions go to the host that is not a
    /// hot standby, the last primary tried first.
    pub hosts: Vec<Host>,
    /// Send reads that may see slightly stale data (outside transactions,
    /// no locks or writing functions) to a hot standby of this region, to
    /// take load off the primary. Off by default: a standby lags the
    /// primary by the replication delay.
    #[serde(default)]
    pub read_from_standbys: bool,
    /// Where this region's root key (KEK) comes from. Required when any
    /// column is classified; a proxy only loads the keys of its own regions.
    #[serde(default)]
    pub key: Option<KeySource>,
}

/// A region root key source. The material it yields is one or more lines
/// `<version>:<base64 of 32 bytes>` (or a single bare base64 key, version
/// 1); the highest version wraps new data keys, the others still unwrap.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "kebab-case")]
pub enum KeySource {
    /// A file readable by the proxy's user only (mode 0600 or stricter).
    File { path: PathBuf },
    /// An environment variable holding the key material.
    Env { var: String },
    /// A program (argv, no shell) that prints the key material on stdout:
    /// the seam for a KMS.
    Command { argv: Vec<String> },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File { path } => write!(f, "KeySource::File({})", path.display()),
            KeySource::Env { var } => write!(f, "KeySource::Env({var})"),
            KeySource::Command { argv } => {
                write!(
                    f,
                    "KeySource::Command({})",
                    argv.first().map_or("", String::as_str)
                )
            }
        }
    }
}

/// How the columns of a data class are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// Random nonce: equal values encrypt differently; no search.
    Randomized,
    /// Nonce derived from the value: equal values of one tenant encrypt
    /// equally, so `=`, `IN`, `GROUP BY` and equality joins work.
    Deterministic,
}

/// A data class (`pii`, `financial`, `internal`, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataClass {
    pub encrypt: Protection,
}

/// One classified column.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifiedColumn {
    /// A name from `[classes]`.
    pub class: String,
    /// The logical type the application sees (`text`, `int4`, `timestamptz`,
    /// `text[]`, …); the database column stores ciphertext as `bytea` (or
    /// `text`/`varchar` holding base64).
    #[serde(rename = "type")]
    pub logical_type: String,
    /// Equality search is needed: the column is encrypted deterministically
    /// whatever its class says.
    #[serde(default)]
    pub searchable: bool,
    /// Deterministic columns compared with each other in joins share a
    /// group name; their ciphertexts are bound to the group instead of the
    /// table and column, so equal values match across them.
    #[serde(default)]
    pub equality_group: Option<String>,
}

impl ClassifiedColumn {
    /// The protection this column gets, given its class's.
    pub fn protection(&self, class: Protection) -> Protection {
        if self.searchable {
            Protection::Deterministic
        } else {
            class
        }
    }
}

fn default_connect_timeout() -> u64 {
    5
}

/// One Postgres server of a region and the credentials the proxy uses there.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub dbname: String,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn default_pg_port() -> u16 {
    5432
}

/// The admin socket (key rotation and operations).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Unix socket for `regionguard ctl`; off when absent. Its directory
    /// must not be writable by group or others.
    pub socket: Option<PathBuf>,
    /// Hash-chained JSON-lines audit log of admin commands and key events.
    pub audit_log: Option<PathBuf>,
    /// Backstop for missed key-change notifications: how often cached
    /// tenant keys are compared with the key table, in seconds. Also how
    /// often running re-encryption jobs whose proxy went quiet are looked
    /// for, to take over.
    pub key_recheck_secs: u64,
    /// A data key rotation stages the new version, waits this long for
    /// every proxy to learn it, then makes it active.
    pub rotation_grace_ms: u64,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: None,
            audit_log: None,
            key_recheck_secs: 30,
            rotation_grace_ms: 1000,
        }
    }
}

/// Automatic data key rotation: the proxy keeps the promise "keys rotate
/// every 90 days" on its own instead of relying on an operator's calendar.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyRotation {
    /// A tenant whose active data key is older than this gets a new one
    /// (`"90d"`, `"12h"`, `"30m"`); `"0s"` turns automatic rotation off.
    #[serde(with = "humantime_serde")]
    pub max_age: std::time::Duration,
    /// Per-region maximum ages overriding `max_age`.
    pub regions: BTreeMap<String, KeyAge>,
    /// How often key ages are checked (and the key age metric refreshed).
    #[serde(with = "humantime_serde")]
    pub check_interval: std::time::Duration,
}

/// A maximum key age (`"30d"`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct KeyAge(#[serde(with = "humantime_serde")] pub std::time::Duration);

impl KeyRotation {
    /// The maximum data key age in `region`; `None` when rotation by age
    /// is off there.
    pub fn max_age_in(&self, region: &str) -> Option<std::time::Duration> {
        let age = self.regions.get(region).map_or(self.max_age, |a| a.0);
        (!age.is_zero()).then_some(age)
    }
}

impl Default for KeyRotation {
    fn default() -> Self {
        KeyRotation {
            max_age: std::time::Duration::from_secs(90 * 86_400),
            regions: BTreeMap::new(),
            check_interval: std::time::Duration::from_secs(3600),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `host:port` for `/metrics`, `/healthz`, `/readyz`; off when absent
    /// (and then no series are kept at all).
    pub address: Option<String>,
    /// Seconds between health checks of every region host (a login each),
    /// which drive `/readyz` and `regionguard_region_up`.
    pub health_interval_secs: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            address: None,
            health_interval_secs: 5,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// A `tracing` filter: `info`, `regionguard=debug`, …
    pub level: String,
    pub format: LogFormat,
    /// Requests slower than this many milliseconds are logged (at WARN,
    /// with the statement's normalized text: no literals); 0 turns it off.
    pub slow_statement_ms: u64,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "info".into(),
            format: LogFormat::Text,
            slow_statement_ms: 1000,
        }
    }
}

/// Two-phase commit across regions (DDL and writes to global tables).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwoPhase {
    /// Names this proxy in the ids of the transactions it prepares
    /// (`regionguard:<proxy_id>:…`). Empty: `<host name>-<listen port>`.
    /// Keep it stable across restarts and distinct between proxies: at
    /// start, a proxy resolves its own leftovers at once.
    pub proxy_id: String,
    /// Prepared transactions of other proxies (or of this one while it
    /// runs) are resolved by recovery only once they are this old.
    pub recovery_grace_secs: u64,
}

impl Default for TwoPhase {
    fn default() -> Self {
        TwoPhase {
            proxy_id: String::new(),
            recovery_grace_secs: 60,
        }
    }
}

/// Tenant-scoped and global tables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tenancy {
    /// The column holding the tenant id in tenant-scoped tables.
    pub column: String,
    /// Tenant-scoped tables (bare or schema-qualified names).
    pub tables: Vec<String>,
    /// Per-table tenant column where it differs from `column`.
    pub columns: BTreeMap<String, String>,
    /// Reference tables present in every region (`countries`, `plans`,
    /// `schema_migrations`): reads go to one region, writes to all.
    pub global_tables: Vec<String>,
    /// Also treat every table that has the tenant column as tenant-scoped,
    /// as the regional catalogs say; tables not seen yet count as
    /// tenant-scoped until the catalogs show otherwise.
    pub discover: bool,
    /// How often the catalogs are read again in discovery mode.
    pub discover_refresh_secs: u64,
}

impl Default for Tenancy {
    fn default() -> Self {
        Tenancy {
            column: "tenant_id".into(),
            tables: Vec::new(),
            columns: BTreeMap::new(),
            global_tables: Vec::new(),
            discover: false,
            discover_refresh_secs: 10,
        }
    }
}

/// A directory table `(tenant_id text primary key, region text not null)`
/// in a control database. Changes are picked up by LISTEN/NOTIFY on
/// `channel` and by a periodic refresh.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub dbname: String,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Schema-qualified table name.
    #[serde(default = "default_directory_table")]
    pub table: String,
    /// NOTIFY channel announcing changes.
    #[serde(default = "default_directory_channel")]
    pub channel: String,
    /// Full reload interval, the backstop for missed notifications.
    #[serde(default = "default_directory_refresh")]
    pub refresh_secs: u64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn default_directory_table() -> String {
    "regionguard.tenant_directory".into()
}

fn default_directory_channel() -> String {
    "regionguard_directory".into()
}

fn default_directory_refresh() -> u64 {
    60
}
