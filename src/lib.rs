//! RegionGuard: a PostgreSQL proxy that keeps each tenant's data in its
//! region and encrypted. See README.md and docs/.

pub mod admin;
pub mod backend;
pub mod catalog;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod demo;
pub mod frontend;
pub mod localpg;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod reencrypt;
pub mod routing;
pub mod server;
pub mod sql;
pub mod types;
