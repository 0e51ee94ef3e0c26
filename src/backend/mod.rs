//! Connections to the regions' Postgres servers.

pub mod active;
mod connect;
pub mod control;
pub mod pool;
pub mod standby;
mod tls;

pub use connect::{
    connect, connect_standby, probe_host, send_cancel, BackendConn, CancelTarget, ConnectError,
    HostRole, Primary, RegionTls,
};
