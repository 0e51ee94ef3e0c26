//! Connections to the regions' Postgres servers.

mod connect;
pub mod control;
mod tls;

pub use connect::{
    connect, send_cancel, BackendConn, CancelTarget, ConnectError, Primary, RegionTls,
};
