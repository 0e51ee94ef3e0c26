//! Wire protocol: framing, startup, SCRAM.
pub mod scram;
