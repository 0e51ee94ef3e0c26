//! Log output: `tracing` events as text or JSON on stderr.
//!
//! What is logged is chosen so that logs never hold customer data: sessions
//! carry a span with their id, client address, user and region; statements
//! appear only as normalized text in the slow-statement log; refusals log
//! their message, which names tables, columns and regions but no values.
//! `tests/log_canary.rs` checks this from the outside.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Dependencies that handle statement text or values and log them at
/// DEBUG or TRACE: sqlparser prints every statement it parses (literals
/// included), tokio-postgres (the directory's control connection) prints
/// statement parameters (tenant ids). Capped at WARN unless the filter
/// names the crate itself. `tests/log_canary.rs` found the first one.
const QUIET_DEPENDENCIES: [&str; 4] =
    ["sqlparser", "tokio_postgres", "pgwire", "postgres_protocol"];

/// The filter for `level` (a tracing filter such as `info` or
/// `regionguard=debug`); `REGIONGUARD_LOG` in the environment wins.
pub fn filter(level: &str) -> EnvFilter {
    let chosen = std::env::var("REGIONGUARD_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| level.to_string());
    let mut directives = chosen.clone();
    for dependency in QUIET_DEPENDENCIES {
        if !chosen.contains(dependency) {
            directives.push_str(&format!(",{dependency}=warn"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A formatting layer in `format` writing to `writer`.
pub fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => base.json().with_current_span(true).boxed(),
        LogFormat::Text => base.with_ansi(ansi).boxed(),
    }
}

/// Installs the process-wide subscriber: `format` on stderr, filtered by
/// `level`. Does nothing if one is installed already.
pub fn init(level: &str, format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(layer(format, std::io::stderr, ansi))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_that_log_parameters_are_capped() {
        let f = filter("debug").to_string();
        assert!(f.contains("tokio_postgres=warn"), "{f}");
        assert!(f.contains("sqlparser=warn"), "{f}");
        let f = filter("debug,tokio_postgres=info").to_string();
        assert!(!f.contains("tokio_postgres=warn"), "{f}");
    }
}
