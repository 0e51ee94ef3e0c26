//! The floor of a relay on tokio: each client connection is joined to its
//! own connection to one upstream server, and bytes are copied both ways
//! with `tokio::io::copy_bidirectional` — nothing framed, inspected,
//! authenticated or pooled (the client authenticates with the server
//! through the pipe).
//!
//! `benches/pgbench_compare.sh` runs it beside PgBouncer and RegionGuard
//! when `RELAY=1`, on the runtime RegionGuard runs with `listen.threads = 1`
//! (tokio's current-thread scheduler), so the run shows what the kernel and
//! tokio cost alone and what RegionGuard's own protocol work adds.
//!
//! Usage: `byte_relay LISTEN_ADDR UPSTREAM_ADDR`. Not a criterion
//! benchmark: run without those two arguments (as `cargo bench` does) it
//! prints its usage and exits.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::process::ExitCode {
    let addrs: Option<Vec<SocketAddr>> = std::env::args().skip(1).map(|a| a.parse().ok()).collect();
    let Some([listen, upstream]) = addrs.as_deref() else {
        eprintln!("usage: byte_relay LISTEN_ADDR UPSTREAM_ADDR (run by benches/pgbench_compare.sh with RELAY=1)");
        return std::process::ExitCode::SUCCESS;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("byte_relay: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(*listen, *upstream)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("byte_relay: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream).await {
                eprintln!("byte_relay: connection: {e}");
            }
        });
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
