//! Creating and configuring a data directory with `initdb`.

use super::fsutil::write_private;
use super::{LocalPgError, PgBinaries, RunAs};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// The superuser every local cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// Name of the settings file this module owns inside the data directory.
pub(crate) const MANAGED_CONF: &str = "regionguard.conf";

/// Runs `initdb` for `<dir>/data` with SCRAM authentication and the given
/// superuser password, then points `postgresql.conf` at [`MANAGED_CONF`] and
/// allows only SCRAM over loopback TCP in `pg_hba.conf`. `throwaway` skips
/// initdb's final fsync and uses 1 MiB WAL segments instead of 16 MiB, so
/// the directory is a third smaller and quicker to copy.
pub(crate) fn initdb(
    binaries: &PgBinaries,
    run_as: &RunAs,
    dir: &Path,
    superuser_password: &str,
    throwaway: bool,
) -> Result<(), LocalPgError> {
    let data = dir.join("data");
    let pwfile = dir.join("initdb-password");
    write_private(&pwfile, superuser_password, 0o600)?;
    run_as.chown_tree(&pwfile)?;
    let mut cmd = run_as.command(&binaries.program("initdb"));
    cmd.current_dir(dir)
        .arg("-D")
        .arg(&data)
        .arg("-U")
        .arg(SUPERUSER)
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--auth=scram-sha-256", "-E", "UTF8", "--locale=C"])
        .arg("--no-instructions");
    if throwaway {
        cmd.args(["--no-sync", "--wal-segsize=1"]);
    }
    let result = run(cmd, "initdb");
    std::fs::remove_file(&pwfile).map_err(LocalPgError::io(format!(
        "cannot remove {}",
        pwfile.display()
    )))?;
    result?;
    configure(&data)
}

fn configure(data: &Path) -> Result<(), LocalPgError> {
    let conf = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(LocalPgError::io(format!("cannot open {}", conf.display())))?;
    writeln!(
        file,
        "\n# Port, listen address and the rest of RegionGuard's local cluster settings.\n\
         include_if_exists = '{MANAGED_CONF}'"
    )
    .map_err(LocalPgError::io(format!("cannot write {}", conf.display())))?;
    let hba = data.join("pg_hba.conf");
    // Truncating keeps the file's owner (the PostgreSQL user).
    std::fs::write(
        &hba,
        "# RegionGuard local cluster: loopback TCP with SCRAM only.\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .map_err(LocalPgError::io(format!("cannot write {}", hba.display())))
}

/// Runs a command to completion, turning a failure into an error carrying
/// its output.
pub(crate) fn run(mut cmd: Command, what: &str) -> Result<(), LocalPgError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(LocalPgError::io(format!("cannot run {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(LocalPgError::Command {
        command: format!("{cmd:?}"),
        status: out.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}
