//! Shared integration-test harness: three regional PostgreSQL clusters
//! (`eu`, `us`, `apac`) and helpers to run the proxy in front of them.
//!
//! Everything panics on failure (these are tests) and tears down on drop,
//! including when a test panics: clusters stop with `pg_ctl -m immediate`
//! and their temp directory is removed.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use regionguard::config::Config;
use regionguard::localpg::{Cluster, ClusterOptions};
use regionguard::server::Proxy;
use std::fmt::Write as _;
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// The regions every test gets; each region's residency zone is its name.
pub const REGIONS: [&str; 3] = ["eu", "us", "apac"];
/// The role the proxy (and direct test clients) use in every region.
pub const ROLE: &str = "regionguard";
pub const ROLE_PASSWORD: &str = "regionguard-password";
/// The database in every region, owned by [`ROLE`].
pub const DATABASE: &str = "app";
/// The user clients authenticate to the proxy as.
pub const PROXY_USER: &str = "app";
pub const PROXY_PASSWORD: &str = "app-password";

/// Three running regional clusters. Fields drop in order: clusters stop
/// before their directory is removed.
pub struct TestRegions {
    clusters: Vec<Cluster>,
    _dir: TempDir,
}

impl TestRegions {
    /// Starts `eu`, `us` and `apac` concurrently, each with role
    /// [`ROLE`] and database [`DATABASE`].
    pub async fn start() -> TestRegions {
        reap_orphans();
        let dir = tempfile::Builder::new()
            .prefix("regionguard-test-")
            .tempdir_in(regionguard::localpg::scratch_dir())
            .expect("create temp dir for test clusters");
        let root = dir.path();
        std::fs::write(root.join(OWNER_FILE), std::process::id().to_string())
            .expect("write the owner file");
        let (eu, us, apac) = tokio::try_join!(
            start_region(root, REGIONS[0]),
            start_region(root, REGIONS[1]),
            start_region(root, REGIONS[2]),
        )
        .expect("start the test regions");
        TestRegions {
            clusters: vec![eu, us, apac],
            _dir: dir,
        }
    }

    /// The cluster of `region`; panics on an unknown region name.
    pub fn cluster(&self, region: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.name() == region)
            .unwrap_or_else(|| panic!("no test region `{region}` (have {REGIONS:?})"))
    }

    /// The TCP port of `region`'s server on 127.0.0.1.
    pub fn port(&self, region: &str) -> u16 {
        self.cluster(region).port()
    }

    /// A URL connecting directly (not through the proxy) to `region`'s
    /// [`DATABASE`] as [`ROLE`].
    pub fn connection_string(&self, region: &str) -> String {
        self.cluster(region)
            .connection_string(ROLE, ROLE_PASSWORD, DATABASE)
    }

    /// A direct client to `region`'s [`DATABASE`] as [`ROLE`], bypassing the
    /// proxy: to set up data and to check where rows really landed.
    pub async fn client(&self, region: &str) -> Client {
        self.cluster(region)
            .connect(ROLE, ROLE_PASSWORD, DATABASE)
            .await
            .unwrap_or_else(|e| panic!("connect directly to region `{region}`: {e}"))
    }

    /// A proxy config for the three regions: listen on `127.0.0.1:0`,
    /// default region `eu`, SCRAM with [`PROXY_USER`]/[`PROXY_PASSWORD`].
    /// Tweak the returned struct for a test's needs.
    pub fn proxy_config(&self) -> Config {
        Config::from_toml_str(&self.proxy_config_toml(), "test harness")
            .expect("test proxy config is valid")
    }

    /// [`TestRegions::proxy_config`] as TOML text, for tests that write a
    /// config file (reload, the binary) and append sections to it.
    pub fn proxy_config_toml(&self) -> String {
        let verifier = postgres_protocol::password::scram_sha_256(PROXY_PASSWORD.as_bytes());
        let mut toml = format!(
            "default_region = \"eu\"\n\
             [listen]\n\
             address = \"127.0.0.1:0\"\n\
             shutdown_timeout_secs = 5\n\
             [[auth.users]]\n\
             name = \"{PROXY_USER}\"\n\
             verifier = \"{verifier}\"\n"
        );
        for region in REGIONS {
            let port = self.port(region);
            write!(
                toml,
                "[regions.{region}]\n\
                 zone = \"{region}\"\n\
                 [[regions.{region}.hosts]]\n\
                 host = \"127.0.0.1\"\n\
                 port = {port}\n\
                 dbname = \"{DATABASE}\"\n\
                 user = \"{ROLE}\"\n\
                 password = \"{ROLE_PASSWORD}\"\n"
            )
            .expect("format into a String");
        }
        toml
    }
}

/// Tenants used by the routing tests: two per region.
pub const ROUTING_TENANTS: [(&str, &str); 6] = [
    ("acme", "eu"),
    ("umbrella", "eu"),
    ("globex", "us"),
    ("hooli", "us"),
    ("initech", "apac"),
    ("wayne", "apac"),
];

/// The tenant-scoped schema of the routing tests, created directly in every
/// region by [`TestRegions::create_routing_schema`].
pub const ROUTING_SCHEMA: &str = "\
    CREATE TABLE customers (tenant_id text NOT NULL, id bigint NOT NULL, email text, \
        full_name text, PRIMARY KEY (tenant_id, id));\n\
    CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, customer_id bigint, \
        amount numeric, PRIMARY KEY (tenant_id, id));\n";

impl TestRegions {
    /// The cluster of `region`, mutably (to stop or restart it).
    pub fn cluster_mut(&mut self, region: &str) -> &mut Cluster {
        self.clusters
            .iter_mut()
            .find(|c| c.name() == region)
            .unwrap_or_else(|| panic!("no test region `{region}` (have {REGIONS:?})"))
    }

    /// Stops `region`'s server (`pg_ctl stop -m fast`).
    pub async fn stop_region(&mut self, region: &str) {
        self.cluster_mut(region)
            .stop()
            .await
            .unwrap_or_else(|e| panic!("stop region `{region}`: {e}"));
    }

    /// Starts `region`'s server again (its port may change if taken).
    pub async fn restart_region(&mut self, region: &str) {
        self.cluster_mut(region)
            .start()
            .await
            .unwrap_or_else(|e| panic!("restart region `{region}`: {e}"));
    }

    /// A hot standby of `region`, streamed from its primary into `dir` and
    /// started, and a connection straight to it.
    pub async fn start_standby(&self, region: &str, dir: &std::path::Path) -> (Cluster, Client) {
        let mut standby = self
            .cluster(region)
            .standby(&format!("{region}-standby"), dir)
            .await
            .expect("pg_basebackup a standby");
        standby.start().await.expect("start the standby");
        let client = standby
            .connect(ROLE, ROLE_PASSWORD, DATABASE)
            .await
            .expect("connect to the standby");
        (standby, client)
    }

    /// The region whose server listens on `port`, if any.
    pub fn region_at_port(&self, port: u16) -> Option<&'static str> {
        REGIONS.into_iter().find(|r| self.port(r) == port)
    }

    /// [`TestRegions::proxy_config`] plus routing: `customers` and `orders`
    /// tenant-scoped on `tenant_id`, and `tenants` (tenant, region) as the
    /// static `[tenants]` directory.
    pub fn routing_config(&self, tenants: &[(&str, &str)]) -> Config {
        let mut config = self.proxy_config();
        config.tenancy.column = "tenant_id".into();
        config.tenancy.tables = vec!["customers".into(), "orders".into()];
        config.tenants = tenants
            .iter()
            .map(|(t, r)| (t.to_string(), r.to_string()))
            .collect();
        config
    }

    /// Creates [`ROUTING_SCHEMA`] directly (not through the proxy) in every
    /// region.
    pub async fn create_routing_schema(&self) {
        self.batch_everywhere(ROUTING_SCHEMA).await;
    }

    /// Runs `sql` directly in every region.
    pub async fn batch_everywhere(&self, sql: &str) {
        for region in REGIONS {
            self.client(region)
                .await
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("run directly in region `{region}`: {e}\n{sql}"));
        }
    }

    /// `(tenant_id, id)` of every row of `table`, read directly in
    /// `region`, sorted. `table`'s tenant column must be castable to text.
    pub async fn rows_in(&self, region: &str, table: &str) -> Vec<(String, i64)> {
        let sql = format!("SELECT tenant_id::text, id FROM {table} ORDER BY 1, 2");
        self.client(region)
            .await
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("read {table} directly in region `{region}`: {e}"))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The regions in which `table` holds a row `(tenant, id)`, read directly.
    pub async fn regions_holding(&self, table: &str, tenant: &str, id: i64) -> Vec<&'static str> {
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id::text = $1 AND id = $2");
        let mut out = Vec::new();
        for region in REGIONS {
            let n: i64 = self
                .client(region)
                .await
                .query_one(&sql, &[&tenant, &id])
                .await
                .unwrap_or_else(|e| panic!("count {table} directly in region `{region}`: {e}"))
                .get(0);
            if n > 0 {
                out.push(region);
            }
        }
        out
    }
}

/// A client through `proxy` with no `regionguard.region` and, when given,
/// the startup option `-c regionguard.tenant=<tenant>`.
pub async fn tenant_client(proxy: &Proxy, tenant: Option<&str>) -> Client {
    let mut config = proxy_pg_config(proxy, None);
    if let Some(t) = tenant {
        config.options(format!("-c regionguard.tenant={t}"));
    }
    connect(&config)
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy (tenant {tenant:?}): {e}"))
}

/// The region that served `sql` (a query returning the server's port as
/// its only value) on `client`, by port.
pub async fn served_by(regions: &TestRegions, client: &Client, sql: &str) -> &'static str {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let port: u16 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|p| p.parse().unwrap()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"));
    regions
        .region_at_port(port)
        .unwrap_or_else(|| panic!("port {port} is no region's"))
}

/// Checks a residency refusal: SQLSTATE `code`, a hint, and none of
/// `secrets` (tenant ids, values) in the message, detail or hint. Returns
/// the error's message.
pub fn expect_refusal<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
    code: &str,
    secrets: &[&str],
    what: &str,
) -> String {
    let err = match r {
        Ok(v) => panic!("{what}: expected a refusal ({code}), got {v:?}"),
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {err:?}"));
    assert_eq!(db.code().code(), code, "{what}: {db:?}");
    let hint = db
        .hint()
        .unwrap_or_else(|| panic!("{what}: the refusal has no hint: {db:?}"));
    assert!(!hint.trim().is_empty(), "{what}: empty hint");
    for secret in secrets {
        for (field, text) in [
            ("message", Some(db.message())),
            ("detail", db.detail()),
            ("hint", Some(hint)),
        ] {
            if let Some(text) = text {
                assert!(
                    !text.contains(secret),
                    "{what}: the {field} {text:?} contains {secret:?}"
                );
            }
        }
    }
    db.message().to_string()
}

/// Names the test process that owns a test directory.
const OWNER_FILE: &str = "owner.pid";

/// Stops the servers and removes the directories of test processes that
/// died without cleaning up (killed by a timeout, say: Drop never ran).
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(regionguard::localpg::scratch_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_test_dir = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("regionguard-test-"));
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok();
        let Some(owner) = owner.and_then(|o| o.trim().parse::<i32>().ok()) else {
            continue; // Being created right now, or not ours.
        };
        if !is_test_dir || std::path::Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        for region in REGIONS {
            let data = dir.join(region).join("data");
            let pid = std::fs::read_to_string(data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            let Some(pid) = pid else { continue };
            // Only a postmaster of that very directory, never a reused pid.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("postgres") && cmdline.contains(&*data.to_string_lossy()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

async fn start_region(
    root: &std::path::Path,
    name: &str,
) -> Result<Cluster, regionguard::localpg::LocalPgError> {
    let options = ClusterOptions {
        port: None,
        fast: true,
    };
    let mut cluster = Cluster::from_template(name, &root.join(name), options).await?;
    cluster.start().await?;
    cluster.ensure_login_role(ROLE, ROLE_PASSWORD).await?;
    cluster.ensure_database(DATABASE, ROLE).await?;
    Ok(cluster)
}

/// Starts the proxy with `config`. Stop it with `proxy.shutdown().await`;
/// if a test panics first, its tasks end with the test's runtime.
/// Starts the proxy in this process. `RG_TEST_LOG=debug` (a tracing
/// filter) shows its logs in the test's output.
pub async fn start_proxy(config: Config) -> Proxy {
    if let Ok(filter) = std::env::var("RG_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    Proxy::start(config).await.expect("start the proxy")
}

/// Connection settings for a client of `proxy` as [`PROXY_USER`] on
/// [`DATABASE`], naming `region` with the `regionguard.region` startup
/// option when given. Tweak it to test other startups.
pub fn proxy_pg_config(proxy: &Proxy, region: Option<&str>) -> tokio_postgres::Config {
    let addr = proxy.local_addr();
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(PROXY_USER)
        .password(PROXY_PASSWORD)
        .dbname(DATABASE)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(region) = region {
        config.options(format!("-c regionguard.region={region}"));
    }
    config
}

/// A client connected through `proxy` to `region`.
pub async fn proxy_client(proxy: &Proxy, region: &str) -> Client {
    connect(&proxy_pg_config(proxy, Some(region)))
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy to region `{region}`: {e}"))
}

/// Connects with `config` and drives the connection on a spawned task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The error, if any, surfaces on the client's next call.
        let _ = connection.await;
    });
    Ok(client)
}

// ---------------------------------------------------------------------------
// Helpers shared by the proxy integration tests.

/// Runs `fut`, panicking with `what` if it takes longer than `secs`.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// The SQLSTATE of a server-reported error, if it is one.
/// The number of rows in a simple-query result.
pub fn row_count(messages: &[tokio_postgres::SimpleQueryMessage]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count()
}

pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// The SQLSTATE of an expected error; panics on success or a non-server error.
pub fn expect_sqlstate<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
    what: &str,
) -> String {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => sqlstate(&e).unwrap_or_else(|| panic!("{what}: not a server error: {e:?}")),
    }
}

/// Whether backend `pid` sits idle after the proxy's `DISCARD ALL`, as
/// `observer` (any session on its server) sees in `pg_stat_activity`: what
/// a backend in the idle pool looks like from Postgres (ADR 21).
pub async fn is_pooled(observer: &Client, pid: i32) -> bool {
    observer
        .query_opt(
            "SELECT 1 FROM pg_stat_activity \
             WHERE pid = $1 AND state = 'idle' AND query = 'DISCARD ALL'",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .is_some()
}

/// Polls `check` every 100 ms until it returns true or `secs` pass.
pub async fn wait_until<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Everything a tracing layer writes, kept in memory: a writer for
/// `tracing_subscriber` layers, so a test can read what the proxy logged.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}

impl LogCapture {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }
}

/// Raw wire-protocol helpers for tests that must send what no driver would.
pub mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A protocol 3.0 StartupMessage with `params`.
    pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// A regular message: tag, length, body.
    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Reads one backend message; `None` at EOF or on a read error.
    pub async fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.ok()?;
        let len = i32::from_be_bytes(header[1..5].try_into().unwrap());
        assert!(len >= 4, "backend message length {len}");
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    }

    /// Reads the messages of one batch, up to and including its
    /// ReadyForQuery (which must come before EOF).
    pub async fn read_to_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        loop {
            let m = read_message(s)
                .await
                .expect("response before ReadyForQuery");
            let done = m.0 == b'Z';
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// Reads messages until the first of type `tag` (or EOF).
    pub async fn read_until(s: &mut TcpStream, tag: u8) -> Option<Vec<u8>> {
        loop {
            let (t, body) = read_message(s).await?;
            if t == tag {
                return Some(body);
            }
        }
    }

    /// The fields of an ErrorResponse/NoticeResponse body, by field code.
    pub fn fields(body: &[u8]) -> std::collections::HashMap<u8, String> {
        let mut map = std::collections::HashMap::new();
        let mut pos = 0;
        while pos < body.len() && body[pos] != 0 {
            let code = body[pos];
            pos += 1;
            let end = body[pos..]
                .iter()
                .position(|&b| b == 0)
                .map_or(body.len(), |e| pos + e);
            map.insert(code, String::from_utf8_lossy(&body[pos..end]).into_owned());
            pos = end + 1;
        }
        map
    }

    /// Connects, sends a startup for the proxy's user (trust auth assumed)
    /// and reads up to the first ReadyForQuery.
    pub async fn trusted_session(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        s.write_all(&startup_packet(&[
            ("user", super::PROXY_USER),
            ("database", super::DATABASE),
        ]))
        .await
        .expect("send startup");
        loop {
            match read_message(&mut s).await {
                Some((b'Z', _)) => return s,
                Some((b'E', body)) => panic!("startup refused: {:?}", fields(&body)),
                Some(_) => {}
                None => panic!("proxy closed during startup"),
            }
        }
    }

    /// Connects straight to a Postgres server at `port` with SCRAM (as the
    /// harness's role) and reads up to the first ReadyForQuery: the
    /// reference behaviour for raw protocol tests.
    pub async fn direct_session(port: u16) -> TcpStream {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to Postgres");
        s.write_all(&startup_packet(&[
            ("user", super::ROLE),
            ("database", super::DATABASE),
        ]))
        .await
        .expect("send startup");
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = read_message(&mut s)
                .await
                .expect("Postgres answers the startup");
            match tag {
                b'R' => {
                    let kind = i32::from_be_bytes(body[..4].try_into().unwrap());
                    match kind {
                        0 => {}
                        10 => {
                            let sc = ScramSha256::new(
                                super::ROLE_PASSWORD.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let first = sc.message().to_vec();
                            let mut b = b"SCRAM-SHA-256\0".to_vec();
                            b.extend_from_slice(&(first.len() as i32).to_be_bytes());
                            b.extend_from_slice(&first);
                            s.write_all(&message(b'p', &b))
                                .await
                                .expect("send client-first");
                            scram = Some(sc);
                        }
                        11 => {
                            let sc = scram.as_mut().expect("SASL started");
                            sc.update(&body[4..]).expect("server-first");
                            let fin = sc.message().to_vec();
                            s.write_all(&message(b'p', &fin))
                                .await
                                .expect("send client-final");
                        }
                        12 => scram
                            .take()
                            .expect("SASL started")
                            .finish(&body[4..])
                            .expect("server signature"),
                        other => panic!("unexpected auth request {other}"),
                    }
                }
                b'E' => panic!("Postgres refused the startup: {:?}", fields(&body)),
                b'Z' => return s,
                _ => {}
            }
        }
    }

    /// Connects to the proxy (trust auth assumed) with extra startup
    /// `params` and reads up to the first ReadyForQuery.
    pub async fn trusted_session_with(
        addr: std::net::SocketAddr,
        params: &[(&str, &str)],
    ) -> TcpStream {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let mut all = vec![("user", super::PROXY_USER), ("database", super::DATABASE)];
        all.extend_from_slice(params);
        s.write_all(&startup_packet(&all))
            .await
            .expect("send startup");
        loop {
            match read_message(&mut s).await {
                Some((b'Z', _)) => return s,
                Some((b'E', body)) => panic!("startup refused: {:?}", fields(&body)),
                Some(_) => {}
                None => panic!("proxy closed during startup"),
            }
        }
    }

    /// Runs `sql` through the unnamed statement and portal with `params`
    /// bound in *text* format (Parse with no types, Bind, Execute, Sync);
    /// returns the messages up to ReadyForQuery.
    pub async fn extended_text_query(
        s: &mut TcpStream,
        sql: &str,
        params: &[Option<&str>],
    ) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.push(0);
        parse.extend_from_slice(&0i16.to_be_bytes());
        out.extend(message(b'P', &parse));
        let mut bind = vec![0u8, 0u8];
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes()); // all text
        bind.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    bind.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    bind.extend_from_slice(v.as_bytes());
                }
                None => bind.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        bind.extend_from_slice(&0i16.to_be_bytes()); // results: text
        out.extend(message(b'B', &bind));
        let mut execute = vec![0u8];
        execute.extend_from_slice(&0i32.to_be_bytes());
        out.extend(message(b'E', &execute));
        out.extend(message(b'S', &[]));
        s.write_all(&out).await.expect("send extended query");
        read_to_ready(s).await
    }

    /// The fields of the first ErrorResponse among `msgs`, if any.
    pub fn first_error(msgs: &[(u8, Vec<u8>)]) -> Option<std::collections::HashMap<u8, String>> {
        msgs.iter()
            .find(|(t, _)| *t == b'E')
            .map(|(_, body)| fields(body))
    }

    /// The text values of the first column of every DataRow among `msgs`.
    pub fn first_column(msgs: &[(u8, Vec<u8>)]) -> Vec<Option<String>> {
        msgs.iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, body)| {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                (len >= 0).then(|| String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned())
            })
            .collect()
    }

    /// Sends a simple Query and returns the messages up to ReadyForQuery.
    pub async fn simple_query(s: &mut TcpStream, sql: &str) -> Vec<(u8, Vec<u8>)> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        s.write_all(&message(b'Q', &body))
            .await
            .expect("send Query");
        read_to_ready(s).await
    }
}

/// Root key files, one per region (mode 0600, one key version each), for
/// tests that classify columns; the files live as long as this value.
pub struct RootKeys {
    _dir: TempDir,
    pub paths: std::collections::BTreeMap<String, std::path::PathBuf>,
}

impl RootKeys {
    /// Writes a key per region, derived from `seed` so that tests which
    /// want different keys get them.
    pub fn write(seed: u8) -> RootKeys {
        use base64::Engine;
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = std::collections::BTreeMap::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let path = dir.path().join(format!("{region}.key"));
            let key: Vec<u8> = (0..32u8)
                .map(|b| b.wrapping_mul(seed).wrapping_add(i as u8))
                .collect();
            let mut f = std::fs::File::create(&path).expect("create key file");
            writeln!(
                f,
                "1:{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            )
            .expect("write key");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            paths.insert(region.to_string(), path);
        }
        RootKeys { _dir: dir, paths }
    }

    /// Points every region of `config` at its key file.
    pub fn apply(&self, config: &mut Config) {
        for (name, region) in config.regions.iter_mut() {
            region.key = Some(regionguard::config::KeySource::File {
                path: self.paths[name].clone(),
            });
        }
    }
}

/// Classifies the routing schema's `customers` as the demo does:
/// `email` in class `contact` (deterministic, searchable) and, with
/// `full_name`, `full_name` in class `pii` (randomized).
pub fn classify_customers(config: &mut Config, full_name: bool) {
    use regionguard::config::{ClassifiedColumn, DataClass, Protection};
    let mut columns = std::collections::BTreeMap::new();
    let mut classify = |column: &str, class: &str, encrypt, searchable| {
        config.classes.insert(class.into(), DataClass { encrypt });
        columns.insert(
            column.to_string(),
            ClassifiedColumn {
                class: class.into(),
                logical_type: "text".into(),
                searchable,
                equality_group: None,
            },
        );
    };
    classify("email", "contact", Protection::Deterministic, true);
    if full_name {
        classify("full_name", "pii", Protection::Randomized, false);
    }
    config.classified.insert("customers".into(), columns);
}

/// Lists a host on `port` (with the login of `region`'s primary) before
/// the primary among `region`'s hosts in `config`: the proxy must still
/// find the primary.
pub fn list_standby_first(config: &mut Config, region: &str, port: u16) {
    let hosts = &mut config
        .regions
        .get_mut(region)
        .expect("region configured")
        .hosts;
    let standby = regionguard::config::Host {
        port,
        ..hosts[0].clone()
    };
    hosts.insert(0, standby);
}
