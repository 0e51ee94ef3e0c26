//! Region root keys (KEKs): loaded from the region's key source at start.
//!
//! The material is one or more lines `<version>:<base64 of 32 bytes>`, or a
//! single bare base64 key (version 1). Blank lines and `#` comments are
//! ignored. The highest version wraps new data keys; the others still unwrap
//! the data keys they wrapped, so a root key rotation can re-wrap lazily.
//!
//! Key material never appears in an error, a log or a `Debug` output: parse
//! errors name the line number only (base64 errors would quote a byte).
//! Every buffer that held material is zeroized.

use super::CryptoError;
use crate::config::KeySource;
use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How long a key command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Key length of a root key (AES-256-GCM).
pub const KEK_LEN: usize = 32;
/// Largest key material accepted from any source.
const MAX_MATERIAL: usize = 64 * 1024;

/// One root key version, ready to wrap and unwrap with AES-256-GCM.
pub struct Kek {
    version: u32,
    key: LessSafeKey,
}

impl Kek {
    /// Builds a KEK from raw bytes (the caller zeroizes its copy).
    pub fn new(version: u32, raw: &[u8; KEK_LEN]) -> Result<Kek, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| CryptoError::Internal("AES-256-GCM key setup"))?;
        Ok(Kek {
            version,
            key: LessSafeKey::new(unbound),
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.key
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(version {}, key hidden)", self.version)
    }
}

/// All root key versions of one region.
pub struct KekRing {
    region: String,
    keys: BTreeMap<u32, Kek>,
}

impl KekRing {
    /// Loads the region's root keys from its key source. Blocking: a key
    /// command may run for up to [`COMMAND_TIMEOUT`]; call at startup (or
    /// in `spawn_blocking`).
    pub fn load(region: &str, source: &KeySource) -> Result<KekRing, CryptoError> {
        let err = |reason: String| CryptoError::KeySource {
            region: region.to_string(),
            reason,
        };
        let material = match source {
            KeySource::File { path } => read_key_file(path).map_err(err)?,
            KeySource::Env { var } => match std::env::var(var) {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(err(format!("environment variable {var} is not set")))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(err(format!("environment variable {var} is not UTF-8")))
                }
            },
            KeySource::Command { argv } => run_key_command(argv, COMMAND_TIMEOUT).map_err(err)?,
        };
        let origin = describe(source);
        KekRing::parse(region, &material).map_err(|reason| err(format!("{origin}: {reason}")))
    }

    /// Parses key material (see the module doc). The error names a line,
    /// never its content.
    pub fn parse(region: &str, material: &str) -> Result<KekRing, String> {
        let lines: Vec<(usize, &str)> = material
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if lines.is_empty() {
            return Err("no key material".into());
        }
        let mut keys = BTreeMap::new();
        for &(n, line) in &lines {
            let (version, b64) = split_line(n, line, lines.len() == 1)?;
            let raw = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| format!("line {n}: the key is not valid base64"))?,
            );
            let raw: &[u8; KEK_LEN] = raw.as_slice().try_into().map_err(|_| {
                format!(
                    "line {n}: the key is {} bytes, a root key must be {KEK_LEN}",
                    raw.len()
                )
            })?;
            if keys.contains_key(&version) {
                return Err(format!("line {n}: key version {version} appears twice"));
            }
            let kek = Kek::new(version, raw).map_err(|e| e.to_string())?;
            keys.insert(version, kek);
        }
        Ok(KekRing {
            region: region.to_string(),
            keys,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The highest version: the one that wraps new data keys.
    pub fn active(&self) -> &Kek {
        // `parse` refuses empty material, so there is always a last key;
        // the fallback keeps this total without a panic path.
        match self.keys.values().next_back() {
            Some(k) => k,
            None => unreachable_empty(),
        }
    }

    /// The key of `version`, if the source provided it.
    pub fn get(&self, version: u32) -> Option<&Kek> {
        self.keys.get(&version)
    }

    /// Versions provided, ascending.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }
}

/// `<version>:<key>` (or a bare key when it is the only line) of line `n`.
fn split_line(n: usize, line: &str, only: bool) -> Result<(u32, &str), String> {
    match line.split_once(':') {
        Some((v, k)) => {
            let version = v.trim().parse::<u32>().ok().filter(|v| *v > 0);
            let version = version.ok_or_else(|| {
                format!("line {n}: the version before `:` must be a positive integer")
            })?;
            Ok((version, k.trim()))
        }
        None if only => Ok((1, line)),
        None => Err(format!(
            "line {n}: with several keys every line must be `<version>:<base64 key>`"
        )),
    }
}

#[cold]
fn unreachable_empty() -> ! {
    // A KekRing is only built by `parse`, which rejects empty material.
    unreachable!("a KekRing always holds at least one key")
}

impl std::fmt::Debug for KekRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekRing")
            .field("region", &self.region)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::File { path } => format!("key file {}", path.display()),
        KeySource::Env { var } => format!("environment variable {var}"),
        KeySource::Command { argv } => {
            format!("key command `{}`", argv.first().map_or("", String::as_str))
        }
    }
}

/// Reads a key file after checking, on the open file itself (no race with
/// a rename), that only its owner can read or write it.
fn read_key_file(path: &Path) -> Result<Zeroizing<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open key file {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat key file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("key file {} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {} has mode {mode:04o}, which lets other users read or change it; it must be 0600 or stricter (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    if meta.len() > MAX_MATERIAL as u64 {
        return Err(format!(
            "key file {} is larger than {MAX_MATERIAL} bytes",
            path.display()
        ));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.by_ref()
        .take(MAX_MATERIAL as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    into_string(bytes).map_err(|()| format!("key file {} is not UTF-8 text", path.display()))
}

fn into_string(bytes: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, ()> {
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_string())),
        Err(_) => Err(()),
    }
}

/// Runs a key command (argv, no shell, stdin closed) and returns its
/// stdout. A non-zero exit is an error with the first line of stderr; the
/// command is killed after `timeout`.
fn run_key_command(argv: &[String], timeout: Duration) -> Result<Zeroizing<String>, String> {
    let Some(program) = argv.first() else {
        return Err("the key command is empty".into());
    };
    let mut child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run key command `{program}`: {e}"))?;
    // Drain both pipes on threads so a chatty command cannot block on a
    // full pipe while we wait for it.
    let stdout = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Zeroizing::new(Vec::new());
            let _ = out.by_ref().take(MAX_MATERIAL as u64).read_to_end(&mut buf);
            buf
        })
    });
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.by_ref().take(MAX_MATERIAL as u64).read_to_end(&mut buf);
            buf
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "key command `{program}` did not finish within {} ms",
                    timeout.as_millis()
                ));
            }
            Err(e) => return Err(format!("waiting for key command `{program}`: {e}")),
        }
    };
    let out = stdout
        .and_then(|h| h.join().ok())
        .unwrap_or_else(|| Zeroizing::new(Vec::new()));
    let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        // Only stderr is quoted, never stdout (which may hold key material).
        let first = String::from_utf8_lossy(&err)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.chars().take(200).collect::<String>())
            .unwrap_or_else(|| "no message on stderr".into());
        return Err(format!(
            "key command `{program}` failed ({status}): {first}"
        ));
    }
    into_string(out).map_err(|()| format!("key command `{program}` printed non-UTF-8 output"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn parses_versioned_and_bare_material() {
        let ring = KekRing::parse("eu", &b64(&[1; 32])).unwrap();
        assert_eq!(ring.versions().collect::<Vec<_>>(), vec![1]);
        assert_eq!(ring.active().version(), 1);
        let text = format!(
            "# root keys\n2:{}\n\n 1 : {} \n7:{}\n",
            b64(&[2; 32]),
            b64(&[1; 32]),
            b64(&[7; 32])
        );
        let ring = KekRing::parse("eu", &text).unwrap();
        assert_eq!(ring.versions().collect::<Vec<_>>(), vec![1, 2, 7]);
        assert_eq!(ring.active().version(), 7);
        assert!(ring.get(2).is_some() && ring.get(3).is_none());
    }

    #[test]
    fn bad_material_is_refused_without_quoting_it() {
        let secret = b64(&[0x5a; 32]);
        let cases = [
            (String::new(), "no key material"),
            (format!("1:{secret}\n1:{}", b64(&[1; 32])), "appears twice"),
            (format!("0:{secret}"), "positive integer"),
            (format!("x:{secret}"), "positive integer"),
            (format!("{secret}\n{secret}"), "every line must be"),
            (format!("1:{}", b64(&[1; 16])), "16 bytes"),
            (format!("1:{}!", &secret[..20]), "not valid base64"),
        ];
        for (text, want) in cases {
            let err = KekRing::parse("eu", &text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(&secret[..12]), "{err}");
        }
    }

    #[test]
    fn key_file_mode_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eu.key");
        std::fs::write(&path, format!("1:{}\n", b64(&[3; 32]))).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let source = KeySource::File { path: path.clone() };
            let err = KekRing::load("eu", &source).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let source = KeySource::File { path: path.clone() };
            assert_eq!(KekRing::load("eu", &source).unwrap().active().version(), 1);
        }
        let missing = KeySource::File {
            path: dir.path().join("missing.key"),
        };
        let err = KekRing::load("eu", &missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.key") && err.starts_with("regions.eu.key"),
            "{err}"
        );
    }

    #[test]
    fn env_source() {
        let var = "REGIONGUARD_TEST_KEK_ENV_SOURCE";
        let source = KeySource::Env { var: var.into() };
        let err = KekRing::load("us", &source).unwrap_err().to_string();
        assert!(err.contains(var) && err.contains("not set"), "{err}");
        // The variable name is unique to this test (and nextest runs each
        // test in its own process).
        std::env::set_var(var, format!("3:{}", b64(&[9; 32])));
        assert_eq!(KekRing::load("us", &source).unwrap().active().version(), 3);
        std::env::remove_var(var);
    }

    #[test]
    fn command_source() {
        let ok = KeySource::Command {
            argv: vec![
                "printf".into(),
                "%s\\n".into(),
                format!("4:{}", b64(&[4; 32])),
            ],
        };
        assert_eq!(KekRing::load("eu", &ok).unwrap().active().version(), 4);

        let secret = b64(&[0x77; 32]);
        let failing = KeySource::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo 1:{secret}; echo 'kms: access denied' >&2; echo more >&2; exit 3"),
            ],
        };
        let err = KekRing::load("eu", &failing).unwrap_err().to_string();
        assert!(err.contains("kms: access denied"), "{err}");
        assert!(!err.contains("more"), "{err}");
        assert!(!err.contains(&secret[..12]), "{err}");

        let missing = KeySource::Command {
            argv: vec!["/nonexistent/regionguard-kms".into()],
        };
        let err = KekRing::load("eu", &missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/regionguard-kms"), "{err}");
    }

    #[test]
    fn slow_command_is_killed() {
        let started = Instant::now();
        let argv = ["sleep".to_string(), "5".to_string()];
        let err = run_key_command(&argv, Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("did not finish within 200 ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn debug_hides_material() {
        let ring = KekRing::parse("eu", &format!("5:{}", b64(&[0x41; 32]))).unwrap();
        let s = format!("{ring:?} {:?}", ring.active());
        assert!(s.contains("5") && !s.contains("QUFB"), "{s}");
    }
}
