//! A cached, freshly initdb'd data directory that test clusters are copied
//! from: copying takes milliseconds where `initdb` takes a second or more,
//! and each test (a separate process under nextest) starts three clusters.
//!
//! The cache lives in [`scratch_dir`], keyed by the current uid, the
//! PostgreSQL version and a layout version. A lock file serializes creation
//! across processes and the finished template appears by an atomic rename,
//! so a process killed mid-initdb never leaves a half-made template behind.

use super::fsutil::write_private;
use super::initdb::initdb;
use super::{random_password, scratch_dir, LocalPgError, PgBinaries, RunAs};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Uid;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::sync::OnceCell;

/// Bump when the template's contents change (initdb flags, config layout).
const LAYOUT_VERSION: u32 = 1;

/// A ready template: a data directory and its superuser password.
#[derive(Debug)]
pub(crate) struct Template {
    pub(crate) data: PathBuf,
    pub(crate) superuser_password: String,
}

static TEMPLATE: OnceCell<Template> = OnceCell::const_new();

/// The template for these binaries, created on first use.
pub(crate) async fn ensure(
    binaries: &PgBinaries,
    run_as: &RunAs,
) -> Result<&'static Template, LocalPgError> {
    TEMPLATE
        .get_or_try_init(|| {
            let binaries = binaries.clone();
            let run_as = run_as.clone();
            async move { tokio::task::spawn_blocking(move || create(&binaries, &run_as)).await? }
        })
        .await
}

fn create(binaries: &PgBinaries, run_as: &RunAs) -> Result<Template, LocalPgError> {
    let base = scratch_dir().join(format!("regionguard-localpg-{}", Uid::current().as_raw()));
    let root = base.join(format!("pg{}-v{LAYOUT_VERSION}", binaries.version()));
    make_dir(&base)?;
    make_dir(&root)?;
    let lock_path = root.join("lock");
    let lock_file = std::fs::File::create(&lock_path).map_err(LocalPgError::io(format!(
        "cannot create {}",
        lock_path.display()
    )))?;
    let _lock =
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| LocalPgError::Io {
            context: format!("cannot lock {}", lock_path.display()),
            source: errno.into(),
        })?;

    let done = root.join("template");
    if !done.join("data").join("PG_VERSION").is_file() {
        let work = root.join(format!("tmp-{}", std::process::id()));
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(LocalPgError::io(format!(
                "cannot remove {}",
                work.display()
            )))?;
        }
        make_dir(&work)?;
        run_as.ensure_reachable(&work.join("data"))?;
        run_as.chown_tree(&work)?;
        let password = random_password();
        initdb(binaries, run_as, &work, &password, true)?;
        write_private(&work.join("superuser-password"), &password, 0o600)?;
        std::fs::rename(&work, &done).map_err(LocalPgError::io(format!(
            "cannot rename {} to {}",
            work.display(),
            done.display()
        )))?;
    }
    let password_path = done.join("superuser-password");
    let superuser_password = std::fs::read_to_string(&password_path).map_err(LocalPgError::io(
        format!("cannot read {}", password_path.display()),
    ))?;
    Ok(Template {
        data: done.join("data"),
        superuser_password,
    })
}

/// Creates a cache directory readable by the PostgreSQL user whatever the
/// umask.
fn make_dir(dir: &Path) -> Result<(), LocalPgError> {
    std::fs::create_dir_all(dir)
        .map_err(LocalPgError::io(format!("cannot create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(LocalPgError::io(format!("cannot chmod {}", dir.display())))
}
