//! Wire protocol pieces the proxy needs on both sides: framing, startup
//! packets, building backend messages, proxy errors and the SCRAM server.

pub mod error;
pub mod framing;
pub mod frontend_msg;
pub mod messages;
pub mod scram;
pub mod startup;
