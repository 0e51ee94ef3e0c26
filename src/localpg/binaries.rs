//! Locating the PostgreSQL server programs.

use super::LocalPgError;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where `initdb`, `pg_ctl` and `postgres` live, and their version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
    version: String,
}

const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

impl PgBinaries {
    /// The first directory on `PATH` holding all three programs, else the
    /// highest major version under `/usr/lib/postgresql/*/bin` (Debian keeps
    /// server binaries off `PATH`). The answer is remembered for the life of
    /// the process: asking for the version runs `postgres --version`.
    pub fn find() -> Result<PgBinaries, LocalPgError> {
        static FOUND: OnceLock<PgBinaries> = OnceLock::new();
        if let Some(found) = FOUND.get() {
            return Ok(found.clone());
        }
        let found = Self::search()?;
        Ok(FOUND.get_or_init(|| found).clone())
    }

    fn search() -> Result<PgBinaries, LocalPgError> {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let dir = on_path
            .into_iter()
            .find(|d| has_all(d))
            .or_else(highest_debian_version)
            .ok_or(LocalPgError::BinariesNotFound)?;
        let version = version_of(&dir)?;
        Ok(PgBinaries { dir, version })
    }

    /// The full path of one program in the binaries directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client program (`pg_dump`, `pg_basebackup`…): from the server
    /// binaries' directory when it is there, else from the newest Debian
    /// installation, else by name from the PATH (directories holding only
    /// the server programs exist).
    pub fn client_program(&self, name: &str) -> PathBuf {
        let here = self.program(name);
        if here.is_file() {
            return here;
        }
        if let Some(debian) = highest_debian_version().map(|d| d.join(name)) {
            if debian.is_file() {
                return debian;
            }
        }
        PathBuf::from(name)
    }

    /// The directory holding the programs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version `postgres --version` reports, e.g. `15.18`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn has_all(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

fn highest_debian_version() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

fn version_of(dir: &Path) -> Result<String, LocalPgError> {
    let program = dir.join("postgres");
    let out = Command::new(&program)
        .arg("--version")
        .output()
        .map_err(LocalPgError::io(format!(
            "cannot run {}",
            program.display()
        )))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    text.split_whitespace()
        .nth(2)
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| LocalPgError::Command {
            command: format!("{} --version", program.display()),
            status: out.status.to_string(),
            output: text.into_owned(),
        })
}
