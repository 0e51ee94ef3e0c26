//! `regionguard ctl`: the admin socket's client.
//!
//! Exit codes: 0 the command succeeded; 1 it failed (the proxy answered
//! with an error, or `audit verify` found a broken chain); 2 usage error;
//! 3 the socket cannot be reached (no proxy, wrong path, no permission).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code: the proxy answered with an error.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad command line (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the admin socket cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Where the socket is by default when neither `--socket` nor the config
/// file names one.
pub const DEFAULT_CONFIG: &str = "config/regionguard.toml";

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The admin socket; defaults to `admin.socket` of `--config`.
    #[arg(long, env = "REGIONGUARD_ADMIN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Config file to take `admin.socket` from.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print the reply as JSON (one object) for scripts.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the reply (rotations wait for the other proxies).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Version, uptime, config, regions, clients and key versions in use.
    Status,
    /// Data keys: list and rotate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Where a tenant's data is; crypto-shredding.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Re-read the config file and apply what can change online (as
    /// SIGHUP does); a bad file is refused and the old config stays.
    Reload,
    /// Start a background job rewriting rows still encrypted under older
    /// data key versions (after `keys rotate`); versions no row uses any
    /// more are then retired.
    Reencrypt {
        #[arg(long)]
        region: String,
        /// Only this tenant's rows.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this classified table (as configured).
        #[arg(long)]
        table: Option<String>,
        /// Rows per second at most (default 500).
        #[arg(long)]
        rate: Option<u32>,
        /// Wait for the job to end, with a progress bar on a terminal
        /// (plain lines otherwise); exit 0 only when it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Re-encryption jobs with their progress (`jobs cancel ID` stops one).
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        /// Only this region's jobs.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum JobsCommand {
    /// Stop a running job (ID as `jobs` shows it, e.g. eu/3).
    Cancel { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Versions, states and ages of data keys (never key material).
    List {
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A new active data key version (all tenants of the region, or one);
    /// older versions stay decrypt-only.
    Rotate {
        #[arg(long)]
        region: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Re-read the region's key source and re-wrap its data keys under the
    /// newest root key version (no data row is rewritten).
    RotateRoot {
        #[arg(long)]
        region: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TenantCommand {
    /// The tenant's region, zone, hosts and key versions.
    Where { tenant: String },
    /// Destroy every data key of the tenant (crypto-shredding). Irreversible.
    Shred {
        tenant: String,
        /// Repeat the tenant id to confirm.
        #[arg(long)]
        confirm: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log file (without FILE: ask the
    /// proxy to check its own).
    Verify { file: Option<PathBuf> },
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the admin socket {path}: {reason}")]
pub struct Unreachable {
    pub path: String,
    pub reason: String,
}

/// Sends one request and returns the proxy's reply object.
pub fn request(
    socket: &Path,
    command: &str,
    args: Value,
    timeout: Duration,
) -> Result<Value, Unreachable> {
    let fail = |reason: String| Unreachable {
        path: socket.display().to_string(),
        reason,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    let id = std::process::id();
    let mut line =
        json!({"id": id, "version": super::PROTOCOL_VERSION, "command": command, "args": args})
            .to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| fail(format!("no reply: {e}")))?;
    if reply.is_empty() {
        return Err(fail(
            "the proxy closed the connection without a reply".into(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| fail(format!("unreadable reply: {e}")))
}

/// The socket path: `--socket`, else `admin.socket` of the config file.
fn socket_path(args: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    let config = crate::config::Config::load(&args.config)
        .map_err(|e| format!("no --socket given and the config cannot be read: {e}"))?;
    config.admin.socket.ok_or_else(|| {
        format!(
            "no --socket given and {} sets no admin.socket",
            args.config.display()
        )
    })
}

/// Runs `regionguard ctl`.
pub fn main(args: CtlArgs) -> ExitCode {
    let (command, params) = match &args.command {
        CtlCommand::Status => ("status", json!({})),
        CtlCommand::Reload => ("reload", json!({})),
        CtlCommand::Keys(KeysCommand::List { region, tenant }) => {
            ("keys.list", json!({"region": region, "tenant": tenant}))
        }
        CtlCommand::Keys(KeysCommand::Rotate { region, tenant }) => {
            ("keys.rotate", json!({"region": region, "tenant": tenant}))
        }
        CtlCommand::Keys(KeysCommand::RotateRoot { region }) => {
            ("keys.rotate-root", json!({"region": region}))
        }
        CtlCommand::Tenant(TenantCommand::Where { tenant }) => {
            ("tenant.where", json!({"tenant": tenant}))
        }
        CtlCommand::Tenant(TenantCommand::Shred { tenant, confirm }) => (
            "tenant.shred",
            json!({"tenant": tenant, "confirm": confirm}),
        ),
        CtlCommand::Audit(AuditCommand::Verify { file: Some(file) }) => {
            return verify_file(file, args.json)
        }
        CtlCommand::Audit(AuditCommand::Verify { file: None }) => ("audit.verify", json!({})),
        CtlCommand::Reencrypt {
            region,
            tenant,
            table,
            rate,
            ..
        } => (
            "reencrypt.start",
            json!({"region": region, "tenant": tenant, "table": table, "rate": rate}),
        ),
        CtlCommand::Jobs {
            command: None,
            region,
        } => ("jobs.list", json!({ "region": region })),
        CtlCommand::Jobs {
            command: Some(JobsCommand::Cancel { id }),
            ..
        } => ("jobs.cancel", json!({ "id": id })),
    };
    let wait = matches!(args.command, CtlCommand::Reencrypt { wait: true, .. });
    let socket = match socket_path(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("regionguard ctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let reply = match request(&socket, command, params, Duration::from_secs(args.timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("regionguard ctl: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let ok = reply.get("ok").and_then(Value::as_bool) == Some(true);
    if ok && wait {
        let id = reply
            .pointer("/result/job/id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return super::progress::wait(&socket, &id, args.json);
    }
    if args.json {
        println!("{reply}");
    } else if ok {
        print!(
            "{}",
            render(command, reply.get("result").unwrap_or(&Value::Null))
        );
    } else {
        let code = reply
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let message = reply
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        eprintln!("error ({code}): {message}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn verify_file(file: &Path, as_json: bool) -> ExitCode {
    match super::audit::verify(file) {
        Ok(v) => {
            if as_json {
                println!(
                    "{}",
                    json!({"ok": true, "result": {"path": file.display().to_string(), "lines": v.lines, "head": v.head}})
                );
            } else {
                println!(
                    "{}: chain intact, {} lines; head sha256 {}",
                    file.display(),
                    v.lines,
                    v.head
                );
            }
            ExitCode::SUCCESS
        }
        Err(b) => {
            if as_json {
                println!(
                    "{}",
                    json!({"ok": false, "error": {"code": "audit_chain_broken", "message": b.to_string(), "line": b.line}})
                );
            } else {
                eprintln!("{}: chain BROKEN at {b}", file.display());
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn age(secs: &Value) -> String {
    let n = secs.as_i64().unwrap_or(0);
    if n >= 86_400 {
        format!("{}d", n / 86_400)
    } else if n >= 3600 {
        format!("{}h", n / 3600)
    } else if n >= 60 {
        format!("{}m", n / 60)
    } else {
        format!("{n}s")
    }
}

fn key_table(keys: &[Value], with_tenant: bool) -> String {
    let mut out = String::new();
    if with_tenant {
        out.push_str(&format!(
            "{:<8} {:<24} {:>7}  {:<13} {:>4}  {:>6}\n",
            "REGION", "TENANT", "VERSION", "STATE", "KEK", "AGE"
        ));
    } else {
        out.push_str(&format!(
            "  {:>7}  {:<13} {:>4}  {:>6}\n",
            "VERSION", "STATE", "KEK", "AGE"
        ));
    }
    for k in keys {
        if with_tenant {
            out.push_str(&format!(
                "{:<8} {:<24} {:>7}  {:<13} {:>4}  {:>6}\n",
                s(&k["region"]),
                s(&k["tenant"]),
                s(&k["version"]),
                s(&k["state"]),
                s(&k["kek_version"]),
                age(&k["age_secs"])
            ));
        } else {
            out.push_str(&format!(
                "  {:>7}  {:<13} {:>4}  {:>6}\n",
                s(&k["version"]),
                s(&k["state"]),
                s(&k["kek_version"]),
                age(&k["age_secs"])
            ));
        }
    }
    out
}

fn or_all(v: &Value) -> String {
    match v {
        Value::Null => "all".into(),
        other => s(other),
    }
}

/// One line of a job: counts, state and who runs it.
pub fn job_line(j: &Value) -> String {
    format!(
        "{:<10} {:<9} {:>9} {:>9} {:>7} {:>6} {:>7}  {:<12} {:<12} {}",
        s(&j["id"]),
        s(&j["state"]),
        s(&j["rows_done"]),
        s(&j["rows_remaining"]),
        s(&j["rows_skipped"]),
        s(&j["rows_failed"]),
        s(&j["rate"]),
        or_all(&j["tenant"]),
        or_all(&j["table"]),
        match (&j["error"], &j["retired"]) {
            (Value::String(e), _) => e.clone(),
            (_, Value::Array(r)) if r.len() > 3 => {
                format!("retired old versions of {} tenants", r.len())
            }
            (_, Value::Array(r)) if !r.is_empty() => format!(
                "retired {}",
                r.iter()
                    .map(|t| format!("{}: {}", s(&t["tenant"]), s(&t["versions"])))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            _ => String::new(),
        }
    )
}

fn job_table(jobs: &[Value]) -> String {
    if jobs.is_empty() {
        return "no re-encryption jobs\n".into();
    }
    let mut out = format!(
        "{:<10} {:<9} {:>9} {:>9} {:>7} {:>6} {:>7}  {:<12} {:<12} {}\n",
        "ID", "STATE", "DONE", "REMAINING", "SKIPPED", "FAILED", "RATE", "TENANT", "TABLE", "NOTE"
    );
    for j in jobs {
        out.push_str(&job_line(j));
        out.push('\n');
    }
    out
}

/// Human-readable rendering of a command's result.
pub fn render(command: &str, r: &Value) -> String {
    let empty = Vec::new();
    match command {
        "status" => {
            let mut out = format!(
                "RegionGuard {}, up {}\nconfig: {} (sha256 {})\nclients: {} of {}\n",
                s(&r["version"]),
                age(&r["uptime_secs"]),
                s(&r["config"]["path"]),
                s(&r["config"]["sha256"]),
                s(&r["clients"]["connected"]),
                s(&r["clients"]["max"]),
            );
            for region in r["regions"].as_array().unwrap_or(&empty) {
                let hosts: Vec<String> = region["host_health"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|h| match h["reason"].as_str() {
                        Some(reason) => format!("{} down ({reason})", s(&h["host"])),
                        None => format!("{} {}", s(&h["host"]), s(&h["state"])),
                    })
                    .collect();
                out.push_str(&format!(
                    "region {} (zone {}): {}; {}\n",
                    s(&region["name"]),
                    s(&region["zone"]),
                    s(&region["health"]),
                    hosts.join(", ")
                ));
                if !region["root_key_active"].is_null() {
                    out.push_str(&format!(
                        "  root key version {} (available {}); key store {}\n",
                        s(&region["root_key_active"]),
                        s(&region["root_key_versions"]),
                        s(&region["key_store"])
                    ));
                    for k in region["data_keys"].as_array().unwrap_or(&empty) {
                        out.push_str(&format!(
                            "  data key version {} {}: {} tenants, oldest {}\n",
                            s(&k["version"]),
                            s(&k["state"]),
                            s(&k["tenants"]),
                            age(&k["max_age_secs"])
                        ));
                    }
                }
            }
            out
        }
        "keys.list" => key_table(r["keys"].as_array().unwrap_or(&empty), true),
        "keys.rotate" => {
            let mut out = String::new();
            for t in r["rotated"].as_array().unwrap_or(&empty) {
                out.push_str(&format!(
                    "{}/{}: data key version {} active (was {})\n",
                    s(&r["region"]),
                    s(&t["tenant"]),
                    s(&t["active"]),
                    s(&t["previous"])
                ));
            }
            if out.is_empty() {
                out.push_str("no tenant has keys in this region\n");
            }
            out
        }
        "keys.rotate-root" => format!(
            "region {}: root key version {}; {} of {} data keys re-wrapped\n",
            s(&r["region"]),
            s(&r["kek_version"]),
            s(&r["rewrapped"]),
            s(&r["live_keys"])
        ),
        "tenant.where" => {
            let hosts: Vec<String> = r["hosts"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(s)
                .collect();
            let mut out = format!(
                "tenant {}: region {} (zone {}), hosts {}\n",
                s(&r["tenant"]),
                s(&r["region"]),
                s(&r["zone"]),
                hosts.join(", ")
            );
            if let Some(keys) = r["keys"].as_array() {
                out.push_str(&key_table(keys, false));
            }
            out
        }
        "tenant.shred" => format!(
            "tenant {} in region {}: {} data key versions destroyed{}\n",
            s(&r["tenant"]),
            s(&r["region"]),
            s(&r["destroyed"]),
            if r["tombstone"].as_bool() == Some(true) {
                " (it had none; a destroyed tombstone blocks new ones)"
            } else {
                ""
            }
        ),
        "reload" => {
            let changed: Vec<String> = r["changed"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let mut out = format!(
                "reloaded {} (sha256 {})\nchanged: {}\n",
                s(&r["path"]),
                s(&r["sha256"]),
                if changed.is_empty() {
                    "nothing".to_string()
                } else {
                    changed.join(", ")
                }
            );
            if let Some(down) = r["unchecked_regions"].as_array().filter(|a| !a.is_empty()) {
                let down: Vec<String> = down.iter().map(s).collect();
                out.push_str(&format!(
                    "not checked (unreachable, checked on first use): {}\n",
                    down.join(", ")
                ));
            }
            out
        }
        "reencrypt.start" => format!(
            "started re-encryption job {} in region {} (tenant {}, table {}, {} rows/s); follow it with `regionguard ctl jobs`\n",
            s(&r["job"]["id"]),
            s(&r["job"]["region"]),
            or_all(&r["job"]["tenant"]),
            or_all(&r["job"]["table"]),
            s(&r["job"]["rate"]),
        ),
        "jobs.list" => job_table(r["jobs"].as_array().unwrap_or(&empty)),
        "jobs.cancel" => format!(
            "job {} cancelled after {} rows; its runner stops within a batch\n",
            s(&r["job"]["id"]),
            s(&r["job"]["rows_done"])
        ),
        "audit.verify" => format!(
            "{}: chain intact, {} lines; head sha256 {}\n",
            s(&r["path"]),
            s(&r["lines"]),
            s(&r["head"])
        ),
        _ => format!("{}\n", serde_json::to_string_pretty(r).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_render_as_a_table_with_their_outcome() {
        let job = |id: &str, state: &str, retired: Value, error: Value| {
            json!({"id": id, "state": state, "rows_done": 120, "rows_remaining": 0,
                "rows_skipped": 1, "rows_failed": 0, "rate": 500, "tenant": null,
                "table": "customers", "retired": retired, "error": error})
        };
        let one = json!([{"tenant": "acme", "versions": [1]}]);
        let many: Vec<Value> = (0..5)
            .map(|i| json!({"tenant": format!("t{i}"), "versions": [1]}))
            .collect();
        let jobs = json!({"jobs": [
            job("eu/3", "done", one, Value::Null),
            job("eu/2", "done", Value::Array(many), Value::Null),
            job("eu/1", "failed", json!([]), json!("permission denied for table customers")),
        ]});
        let out = render("jobs.list", &jobs);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("ID") && lines[0].contains("REMAINING"),
            "{out}"
        );
        assert!(lines[1].contains("eu/3") && lines[1].contains("retired acme: [1]"));
        assert!(lines[1].contains(" all ") && lines[1].contains("customers"));
        assert!(
            lines[2].contains("retired old versions of 5 tenants"),
            "{out}"
        );
        assert!(lines[3].contains("failed") && lines[3].contains("permission denied"));
        assert_eq!(
            render("jobs.list", &json!({"jobs": []})),
            "no re-encryption jobs\n"
        );
        let started = render(
            "reencrypt.start",
            &json!({"job": job("us/7", "running", json!([]), Value::Null)}),
        );
        assert!(
            started.contains("us/7") && started.contains("tenant all"),
            "{started}"
        );
    }
}
