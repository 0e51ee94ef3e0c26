//! Connections to the regions' Postgres servers.

mod connect;
mod tls;

pub use connect::{connect, send_cancel, BackendConn, CancelTarget, ConnectError, RegionTls};
