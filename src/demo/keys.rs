//! The demo's region root keys: one random key per region, generated on
//! the first run into `<data dir>/keys/<region>.key` (mode 0600, as the
//! proxy requires) and reused afterwards, so the demo's data stays readable.

use super::{DemoError, REGIONS};
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The key file of each region.
pub(crate) struct KeyFiles {
    paths: BTreeMap<&'static str, PathBuf>,
}

impl KeyFiles {
    pub(crate) fn path(&self, region: &str) -> Option<&Path> {
        self.paths.get(region).map(PathBuf::as_path)
    }
}

/// Creates the missing key files.
pub(crate) fn ensure(data_dir: &Path) -> Result<KeyFiles, DemoError> {
    let dir = data_dir.join("keys");
    std::fs::create_dir_all(&dir)
        .map_err(DemoError::io(format!("cannot create {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(DemoError::io(format!("cannot restrict {}", dir.display())))?;
    let mut paths = BTreeMap::new();
    for region in REGIONS {
        let path = dir.join(format!("{region}.key"));
        if !path.exists() {
            let key = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
            let line = zeroize::Zeroizing::new(format!(
                "1:{}\n",
                base64::engine::general_purpose::STANDARD.encode(key.as_slice())
            ));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(DemoError::io(format!("cannot create {}", path.display())))?;
            file.write_all(line.as_bytes())
                .map_err(DemoError::io(format!("cannot write {}", path.display())))?;
        }
        paths.insert(region, path);
    }
    Ok(KeyFiles { paths })
}
