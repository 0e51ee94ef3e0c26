//! Which OS user PostgreSQL runs as. `initdb` and `postgres` refuse to run
//! as root, so a root process (containers, CI) runs them as `postgres` and
//! hands that user the data directories.

use super::LocalPgError;
use nix::unistd::{Uid, User};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user PostgreSQL programs run as: the current user, or `postgres`
/// when the current user is root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Set when the programs must run as a different user than ours.
    other: Option<OsUser>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

const POSTGRES_USER: &str = "postgres";

impl RunAs {
    /// The current user, or the `postgres` OS user when running as root.
    pub fn detect() -> Result<RunAs, LocalPgError> {
        if !Uid::current().is_root() {
            return Ok(RunAs { other: None });
        }
        let user = User::from_name(POSTGRES_USER)
            .map_err(|source| LocalPgError::UserLookup {
                user: POSTGRES_USER.into(),
                source,
            })?
            .ok_or(LocalPgError::NoPostgresUser)?;
        Ok(RunAs {
            other: Some(OsUser {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
        })
    }

    /// The uid PostgreSQL runs with.
    pub fn uid(&self) -> u32 {
        self.other
            .as_ref()
            .map_or_else(|| Uid::current().as_raw(), |u| u.uid)
    }

    /// A command for a PostgreSQL program, switched to the right user and
    /// shielded from `PG*` variables that would redirect it elsewhere.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_remove("PGDATA").env_remove("PGPORT");
        if let Some(u) = &self.other {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// Gives `path` (and everything below it) to the PostgreSQL user.
    pub(crate) fn chown_tree(&self, path: &Path) -> Result<(), LocalPgError> {
        let Some(u) = &self.other else {
            return Ok(());
        };
        let chown = |p: &Path| {
            std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid))
                .map_err(LocalPgError::io(format!("cannot chown {}", p.display())))
        };
        chown(path)?;
        if path.is_dir() {
            for entry in std::fs::read_dir(path)
                .map_err(LocalPgError::io(format!("cannot read {}", path.display())))?
            {
                let entry =
                    entry.map_err(LocalPgError::io(format!("cannot read {}", path.display())))?;
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Makes sure the PostgreSQL user can reach `dir`: the directory that
    /// will hold it gets the execute (traverse, not list) bit when we own
    /// it, as a fresh temp dir is `0700`; any other unreachable ancestor is
    /// an error rather than a permission change behind the user's back.
    pub(crate) fn ensure_reachable(&self, dir: &Path) -> Result<(), LocalPgError> {
        let Some(u) = &self.other else {
            return Ok(());
        };
        let Some(parent) = dir.parent() else {
            return Ok(());
        };
        let parent = absolute(parent)?;
        let meta = std::fs::metadata(&parent).map_err(LocalPgError::io(format!(
            "cannot stat {}",
            parent.display()
        )))?;
        if !traversable(&meta, u) && meta.uid() == Uid::current().as_raw() {
            let mode = meta.permissions().mode() | 0o011;
            std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(mode)).map_err(
                LocalPgError::io(format!("cannot chmod {}", parent.display())),
            )?;
        }
        for ancestor in parent.ancestors() {
            let meta = std::fs::metadata(ancestor).map_err(LocalPgError::io(format!(
                "cannot stat {}",
                ancestor.display()
            )))?;
            if !traversable(&meta, u) {
                return Err(LocalPgError::NotTraversable {
                    dir: ancestor.to_path_buf(),
                    user: u.name.clone(),
                });
            }
        }
        Ok(())
    }
}

fn absolute(path: &Path) -> Result<PathBuf, LocalPgError> {
    std::path::absolute(path).map_err(LocalPgError::io(format!(
        "cannot resolve {}",
        path.display()
    )))
}

/// Whether `user` may enter a directory, judged by its mode bits (owner,
/// then primary group, then others; supplementary groups are ignored, which
/// errs on the safe side).
fn traversable(meta: &std::fs::Metadata, user: &OsUser) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}
