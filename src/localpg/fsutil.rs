//! Small file helpers: copying a data directory and choosing a port.

use super::LocalPgError;
use std::path::Path;

/// Copies the directory tree `from` into the new directory `to`, keeping
/// permission bits (PostgreSQL insists on `0700`/`0750` data directories).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), LocalPgError> {
    let meta = std::fs::metadata(from)
        .map_err(LocalPgError::io(format!("cannot stat {}", from.display())))?;
    std::fs::create_dir(to).map_err(LocalPgError::io(format!("cannot create {}", to.display())))?;
    std::fs::set_permissions(to, meta.permissions())
        .map_err(LocalPgError::io(format!("cannot chmod {}", to.display())))?;
    let entries = std::fs::read_dir(from)
        .map_err(LocalPgError::io(format!("cannot read {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(LocalPgError::io(format!("cannot read {}", from.display())))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(LocalPgError::io(format!(
            "cannot stat {}",
            source.display()
        )))?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            std::fs::copy(&source, &target).map_err(LocalPgError::io(format!(
                "cannot copy {} to {}",
                source.display(),
                target.display()
            )))?;
        }
    }
    Ok(())
}

/// A port that was free a moment ago. Another process may take it before
/// PostgreSQL binds it; [`super::Cluster::start`] retries once on a clash.
pub(crate) fn free_port() -> Result<u16, LocalPgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(LocalPgError::io(
        "cannot bind 127.0.0.1:0 to find a free port",
    ))?;
    let addr = listener.local_addr().map_err(LocalPgError::io(
        "cannot read the address of a bound socket",
    ))?;
    Ok(addr.port())
}

/// Writes `contents` to `path` with the given permission bits from the start,
/// so a password file is never readable by others even briefly.
pub(crate) fn write_private(path: &Path, contents: &str, mode: u32) -> Result<(), LocalPgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(LocalPgError::io(format!(
            "cannot create {}",
            path.display()
        )))?;
    file.write_all(contents.as_bytes())
        .map_err(LocalPgError::io(format!("cannot write {}", path.display())))
}
