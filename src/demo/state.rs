//! The demo's state file: the ports and passwords of its clusters, so the
//! next run reuses them and printed URLs stay valid.

use super::DemoError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name inside the demo data directory. It holds passwords: `0600`.
const FILE: &str = "regionguard-demo.toml";

/// Everything the demo must remember between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub(crate) regions: BTreeMap<String, RegionState>,
}

/// One regional cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegionState {
    /// The last port the cluster listened on; 0 before its first start.
    pub(crate) port: u16,
    pub(crate) superuser_password: String,
    /// Password of the `regionguard` role the proxy connects as.
    pub(crate) role_password: String,
}

impl State {
    /// Reads the state file, or an empty state when there is none yet.
    pub(crate) fn load(data_dir: &Path) -> Result<State, DemoError> {
        let path = path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(DemoError::io(format!("cannot read {}", path.display()))(
                    source,
                ))
            }
        };
        toml::from_str(&text).map_err(|e| DemoError::State {
            path,
            message: e.to_string(),
        })
    }

    /// Writes the state file (replacing it atomically, readable by us only).
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), DemoError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path(data_dir);
        let text = toml::to_string(self).map_err(|e| DemoError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(DemoError::io(format!("cannot create {}", tmp.display())))?;
        file.write_all(text.as_bytes())
            .map_err(DemoError::io(format!("cannot write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(DemoError::io(format!(
            "cannot rename {} to {}",
            tmp.display(),
            path.display()
        )))
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(State::load(dir.path()).expect("load").regions.is_empty());
        let mut state = State::default();
        state.regions.insert(
            "eu".into(),
            RegionState {
                port: 5433,
                superuser_password: "su".into(),
                role_password: "role".into(),
            },
        );
        state.save(dir.path()).expect("save");
        let loaded = State::load(dir.path()).expect("load again");
        assert_eq!(loaded.regions["eu"].port, 5433);
        assert_eq!(loaded.regions["eu"].role_password, "role");
    }
}
