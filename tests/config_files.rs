//! The shipped example configs stay valid, and `check-config` reports
//! problems by key.

use std::process::Command;

fn regionguard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regionguard"));
    cmd.env(
        "REGIONGUARD_APP_VERIFIER",
        regionguard::protocol::scram::hash_password("x"),
    )
    .env("EU_DB_PASSWORD", "a")
    .env("US_DB_PASSWORD", "b")
    .env("APAC_DB_PASSWORD", "c");
    cmd
}

#[test]
fn shipped_examples_pass_check_config() {
    for file in ["config/regionguard.toml", "config/local.toml"] {
        let out = regionguard().args(["check-config", file]).output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("default_region = \"mars\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n[auth]\nmethod = \"trust\"\n", "default_region"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = []\n[auth]\nmethod = \"trust\"\n", "regions.eu.hosts"),
        ("default_region = \"eu\"\ntypo = 1\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n", "typo"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\", password = \"${RG_TEST_UNSET_VAR}\" }]\n", "RG_TEST_UNSET_VAR"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n[auth]\nusers = [{ name = \"app\", verifier = \"md5abc\" }]\n", "auth.users[0].verifier"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n", "auth.users"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n[auth]\nmethod = \"trust\"\n[backend_pool]\nmode = \"transaction\"\nmax_idle_per_region = 0\n", "backend_pool.max_idle_per_region"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n[auth]\nmethod = \"trust\"\n[backend_pool]\nmode = \"transaction\"\nmax_active_per_region = 0\n", "backend_pool.max_active_per_region"),
        ("default_region = \"eu\"\n[regions.eu]\nzone = \"eu\"\nhosts = [{ host = \"h\", dbname = \"d\", user = \"u\" }]\n[auth]\nmethod = \"trust\"\n[backend_pool]\nmode = \"statement\"\n", "backend_pool.mode"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = regionguard()
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} should fail");
        assert!(err.contains(key), "case {i}: `{err}` should name {key}");
    }
}

#[test]
fn hash_password_prints_a_usable_verifier() {
    use std::io::Write;
    let mut child = regionguard()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let verifier = String::from_utf8(out.stdout).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    regionguard::protocol::scram::Verifier::parse(verifier.trim()).unwrap();
}
