//! One local PostgreSQL cluster: creation, start and stop.

use super::fsutil::{copy_tree, free_port, write_private};
use super::initdb::{initdb, run, MANAGED_CONF};
use super::{template, LocalPgError, PgBinaries, RunAs};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How a cluster is set up.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// The TCP port; a free one is picked when `None`.
    pub port: Option<u16>,
    /// Trade durability for speed (`fsync`, `synchronous_commit` and
    /// `full_page_writes` off): for throwaway test clusters only.
    pub fast: bool,
}

/// A local PostgreSQL cluster in `<dir>/data`, logging to
/// `<dir>/postgres.log`, listening on `127.0.0.1:<port>` only.
///
/// Dropping a running cluster stops it with `pg_ctl stop -m immediate`, so
/// a panicking test leaves no server behind; call [`Cluster::stop`] for a
/// clean shutdown.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    dir: PathBuf,
    binaries: PgBinaries,
    run_as: RunAs,
    port: u16,
    fast: bool,
    superuser_password: String,
    running: bool,
}

impl Cluster {
    /// Creates a new cluster in `dir` (which must not exist yet) with
    /// `initdb` and the given superuser password.
    pub async fn init(
        name: &str,
        dir: &Path,
        superuser_password: &str,
        options: ClusterOptions,
    ) -> Result<Cluster, LocalPgError> {
        let cluster = Cluster::new(
            name,
            dir,
            superuser_password,
            &options,
            PgBinaries::find()?,
            RunAs::detect()?,
        )?;
        let (binaries, run_as, dir) = (
            cluster.binaries.clone(),
            cluster.run_as.clone(),
            cluster.dir.clone(),
        );
        let password = superuser_password.to_string();
        let fast = options.fast;
        tokio::task::spawn_blocking(move || {
            make_cluster_dir(&run_as, &dir)?;
            initdb(&binaries, &run_as, &dir, &password, fast)
        })
        .await??;
        Ok(cluster)
    }

    /// Creates a new cluster in `dir` (which must not exist yet) by copying
    /// a cached template, made with `initdb` on first use. Much faster than
    /// [`Cluster::init`]; the superuser password is the template's.
    pub async fn from_template(
        name: &str,
        dir: &Path,
        options: ClusterOptions,
    ) -> Result<Cluster, LocalPgError> {
        let binaries = PgBinaries::find()?;
        let run_as = RunAs::detect()?;
        let template = template::ensure(&binaries, &run_as).await?;
        let cluster = Cluster::new(
            name,
            dir,
            &template.superuser_password,
            &options,
            binaries,
            run_as,
        )?;
        let (run_as, dir) = (cluster.run_as.clone(), cluster.dir.clone());
        tokio::task::spawn_blocking(move || {
            make_cluster_dir(&run_as, &dir)?;
            let data = dir.join("data");
            copy_tree(&template.data, &data)?;
            run_as.chown_tree(&data)
        })
        .await??;
        Ok(cluster)
    }

    /// An existing cluster made earlier by [`Cluster::init`], e.g. by a
    /// previous run of the demo. It is not started.
    pub fn open(
        name: &str,
        dir: &Path,
        superuser_password: &str,
        options: ClusterOptions,
    ) -> Result<Cluster, LocalPgError> {
        let version = dir.join("data").join("PG_VERSION");
        if !version.is_file() {
            return Err(LocalPgError::Io {
                context: format!("{} is not a PostgreSQL data directory", version.display()),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Cluster::new(
            name,
            dir,
            superuser_password,
            &options,
            PgBinaries::find()?,
            RunAs::detect()?,
        )
    }

    fn new(
        name: &str,
        dir: &Path,
        superuser_password: &str,
        options: &ClusterOptions,
        binaries: PgBinaries,
        run_as: RunAs,
    ) -> Result<Cluster, LocalPgError> {
        let dir = std::path::absolute(dir).map_err(LocalPgError::io(format!(
            "cannot resolve {}",
            dir.display()
        )))?;
        Ok(Cluster {
            name: name.to_string(),
            dir,
            binaries,
            run_as,
            port: match options.port {
                Some(port) => port,
                None => free_port()?,
            },
            fast: options.fast,
            superuser_password: superuser_password.to_string(),
            running: false,
        })
    }

    /// The name given at creation (used in errors and logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TCP port on 127.0.0.1. It may change in [`Cluster::start`] when
    /// another process took the port first.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the [`super::SUPERUSER`] role.
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Whether the server was started by this handle and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Writes the managed settings and starts the server, waiting until it
    /// accepts connections. If the port was taken in the meantime, picks a
    /// new free port and tries once more. A server left running by an
    /// earlier, killed process is stopped first so the settings apply.
    pub async fn start(&mut self) -> Result<(), LocalPgError> {
        if self.server_running().await? {
            self.pg_ctl(&["stop", "-m", "fast"]).await?;
        }
        match self.try_start().await {
            Err(LocalPgError::Start { log_tail, .. }) if is_port_clash(&log_tail) => {
                self.port = free_port()?;
                self.try_start().await
            }
            other => other,
        }
    }

    async fn try_start(&mut self) -> Result<(), LocalPgError> {
        self.write_settings()?;
        let log = self.log_file();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        let log_arg = log.display().to_string();
        match self.pg_ctl(&["start", "-t", "60", "-l", &log_arg]).await {
            Ok(()) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                let server_log = read_from(&log, log_start);
                Err(LocalPgError::Start {
                    cluster: self.name.clone(),
                    log,
                    log_tail: format!("{e}\n{server_log}"),
                })
            }
        }
    }

    /// Makes a streaming-replication standby of this (running) cluster in
    /// `dir` with `pg_basebackup -R`, named `name`; it is not started. The
    /// primary's `pg_hba.conf` gets a replication line for loopback SCRAM
    /// (and is reloaded) first.
    pub async fn standby(&self, name: &str, dir: &Path) -> Result<Cluster, LocalPgError> {
        let hba = self.data_dir().join("pg_hba.conf");
        let current = std::fs::read_to_string(&hba)
            .map_err(LocalPgError::io(format!("cannot read {}", hba.display())))?;
        if !current.contains("replication") {
            std::fs::write(
                &hba,
                format!("{current}host replication all 127.0.0.1/32 scram-sha-256\n"),
            )
            .map_err(LocalPgError::io(format!("cannot write {}", hba.display())))?;
            self.pg_ctl(&["reload"]).await?;
        }
        let dir = std::path::absolute(dir).map_err(LocalPgError::io(format!(
            "cannot resolve {}",
            dir.display()
        )))?;
        std::fs::create_dir_all(&dir)
            .map_err(LocalPgError::io(format!("cannot create {}", dir.display())))?;
        self.run_as.chown_tree(&dir)?;
        let mut cmd = self
            .run_as
            .command(&self.binaries.client_program("pg_basebackup"));
        cmd.current_dir(&dir)
            .env("PGPASSWORD", &self.superuser_password)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                super::SUPERUSER,
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
                "-D",
            ])
            .arg(dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string());
        tokio::task::spawn_blocking(move || run(cmd, "pg_basebackup")).await??;
        Cluster::new(
            name,
            &dir,
            &self.superuser_password,
            &ClusterOptions {
                port: None,
                fast: self.fast,
            },
            self.binaries.clone(),
            self.run_as.clone(),
        )
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting for it).
    pub async fn promote(&self) -> Result<(), LocalPgError> {
        self.pg_ctl(&["promote"]).await
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: open sessions are
    /// disconnected, a checkpoint is written).
    pub async fn stop(&mut self) -> Result<(), LocalPgError> {
        if self.running {
            self.pg_ctl(&["stop", "-m", "fast"]).await?;
            self.running = false;
        }
        Ok(())
    }

    /// Whether any server (ours or a leftover) runs on this data directory.
    async fn server_running(&self) -> Result<bool, LocalPgError> {
        if !self.data_dir().join("postmaster.pid").exists() {
            return Ok(false);
        }
        Ok(self.pg_ctl(&["status"]).await.is_ok())
    }

    fn write_settings(&self) -> Result<(), LocalPgError> {
        let mut conf = format!(
            "# Managed by RegionGuard; rewritten on every start.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = ''\n\
             max_prepared_transactions = 64\n\
             max_connections = 200\n",
            self.port
        );
        if self.fast {
            conf.push_str(
                "# Throwaway cluster: speed over durability.\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n",
            );
        }
        let path = self.data_dir().join(MANAGED_CONF);
        write_private(&path, &conf, 0o600)?;
        self.run_as.chown_tree(&path)
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<(), LocalPgError> {
        let mut cmd = self.run_as.command(&self.binaries.program("pg_ctl"));
        cmd.current_dir(&self.dir)
            .arg("-D")
            .arg(self.data_dir())
            .arg("-w")
            .args(args);
        tokio::task::spawn_blocking(move || run(cmd, "pg_ctl")).await?
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        // Best effort: nothing useful can be done with a failure here.
        let _ = self
            .run_as
            .command(&self.binaries.program("pg_ctl"))
            .current_dir(&self.dir)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "10", "stop", "-m", "immediate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Creates the cluster directory for the PostgreSQL user.
fn make_cluster_dir(run_as: &RunAs, dir: &Path) -> Result<(), LocalPgError> {
    run_as.ensure_reachable(dir)?;
    std::fs::create_dir(dir)
        .map_err(LocalPgError::io(format!("cannot create {}", dir.display())))?;
    run_as.chown_tree(dir)
}

fn is_port_clash(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind")
}

/// The log written since `offset`, at most its last 4 KiB.
fn read_from(path: &Path, offset: u64) -> String {
    const MAX: u64 = 4096;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = offset.max(len.saturating_sub(MAX));
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}
