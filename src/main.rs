//! The `regionguard` command line: a thin layer over the library.

use clap::{Parser, Subcommand};
use regionguard::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "regionguard",
    version,
    about = "Data-residency and column-encryption proxy for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, short, default_value = "config/regionguard.toml")]
        config: PathBuf,
    },
    /// Validate a config file; exits non-zero with the reason when invalid.
    CheckConfig { file: PathBuf },
    /// Start three local regional Postgres clusters (eu, us, apac) with
    /// example data and the proxy in front of them; prints the URLs.
    Demo {
        /// Where the clusters live; reused on the next run.
        #[arg(long, default_value = "regionguard-demo")]
        data_dir: PathBuf,
        /// The proxy's port on 127.0.0.1.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// Talk to a running proxy's admin socket (status, keys, tenants,
    /// audit). Exit codes: 0 ok, 1 command failed, 2 usage, 3 socket
    /// unreachable.
    Ctl(regionguard::admin::client::CtlArgs),
    /// Print a SCRAM-SHA-256 verifier for a client user's password (read
    /// from standard input, one line).
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::HashPassword => hash_password(),
        Command::Ctl(args) => regionguard::admin::client::main(args),
        Command::Demo { data_dir, port } => {
            init_logging("warn,regionguard=info", LogFormat::Text);
            run_async(async move {
                match regionguard::demo::run(regionguard::demo::DemoOptions { data_dir, port })
                    .await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Serve { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&config.logging.level, config.logging.format);
            let threads = config.listen.threads;
            run_async_with(threads, serve(config))
        }
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("could not read a password from standard input");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("empty password: type one line on standard input");
        return ExitCode::FAILURE;
    }
    println!("{}", regionguard::protocol::scram::hash_password(password));
    ExitCode::SUCCESS
}

fn init_logging(level: &str, format: LogFormat) {
    regionguard::logging::init(level, format);
}

fn run_async<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    run_async_with(0, f)
}

/// Runs `f` on a runtime with `threads` threads relaying sessions (0:
/// tokio's default, one per CPU or `TOKIO_WORKER_THREADS`). One thread is
/// tokio's single-threaded scheduler rather than a multi-threaded one with
/// one worker: sessions, the listener and background tasks then share the
/// calling thread, and each wake-up skips the work-stealing bookkeeping —
/// about 10 % fewer instructions per relayed transaction (see
/// `benches/instructions_per_tx.sh`).
fn run_async_with<F: std::future::Future<Output = ExitCode>>(threads: usize, f: F) -> ExitCode {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let proxy = match regionguard::server::Proxy::start(config).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_stop_signal(&proxy).await;
    tracing::info!("stop requested: draining sessions");
    proxy.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for SIGTERM or Ctrl-C, reloading the config on each SIGHUP.
async fn wait_for_stop_signal(proxy: &regionguard::server::Proxy) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(hup)) => (term, hup),
        _ => {
            tracing::warn!(
                "cannot install SIGTERM/SIGHUP handlers: Ctrl-C stops, SIGHUP does not reload"
            );
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => proxy.reload_on_signal().await,
        }
    }
}
