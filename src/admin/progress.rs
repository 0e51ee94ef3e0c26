//! `regionguard ctl reencrypt --wait`: follows a job until it ends. On a
//! terminal an indicatif progress bar (rows done of done + remaining);
//! otherwise (a pipe, a log, CI) one plain line every few seconds, so the
//! output stays readable when captured.

use super::client::{job_line, request, EXIT_FAILED, EXIT_UNREACHABLE};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How often the job's row is read.
const POLL: Duration = Duration::from_millis(500);
/// How often a plain line is printed without a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Polls job `id` until it is no longer running. Exit code 0 when it ended
/// `done` with every value re-encrypted; 1 when cancelled, failed, or done
/// with values it could not open (a script must not retire keys on that);
/// 3 when the proxy went away.
pub fn wait(socket: &Path, id: &str, as_json: bool) -> ExitCode {
    let bar = (!as_json && std::io::stdout().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:40}] {human_pos}/{human_len} rows, eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(id.to_string());
        bar
    });
    let mut last_line = Instant::now() - PLAIN_EVERY;
    loop {
        let reply = match request(
            socket,
            "jobs.list",
            json!({ "id": id }),
            Duration::from_secs(30),
        ) {
            Ok(r) => r,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                eprintln!("regionguard ctl: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        };
        let job = reply
            .pointer("/result/jobs/0")
            .cloned()
            .unwrap_or(Value::Null);
        if job.is_null() {
            eprintln!("regionguard ctl: job {id} is gone");
            return ExitCode::from(EXIT_FAILED);
        }
        let state = job["state"].as_str().unwrap_or("?").to_string();
        let done = job["rows_done"].as_u64().unwrap_or(0);
        let remaining = job["rows_remaining"].as_u64().unwrap_or(0);
        match &bar {
            Some(b) => {
                // Empty, not full, until the job has counted its rows.
                b.set_length((done + remaining).max(1));
                b.set_position(done);
                b.set_message(state.clone());
            }
            None if !as_json && (state != "running" || last_line.elapsed() >= PLAIN_EVERY) => {
                println!("{}", job_line(&job));
                last_line = Instant::now();
            }
            None => {}
        }
        if state != "running" {
            if let Some(b) = &bar {
                b.finish_with_message(state.clone());
                println!("{}", job_line(&job));
            }
            let failed = job["rows_failed"].as_u64().unwrap_or(0);
            let complete = state == "done" && failed == 0;
            if as_json {
                println!("{}", json!({"ok": complete, "result": {"job": job}}));
            } else if state == "done" && failed > 0 {
                eprintln!(
                    "regionguard ctl: job {id} is done, but {failed} value(s) could not be re-encrypted (see `regionguard ctl jobs`)"
                );
            }
            return if complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            };
        }
        std::thread::sleep(POLL);
    }
}
