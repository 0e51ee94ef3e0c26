//! Backend messages the proxy writes itself (during startup and when it
//! answers for Postgres), encoded with pgwire's codec.

use bytes::BytesMut;
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

/// Encoding only fails for messages beyond the protocol's size limits, which
/// the proxy's own small messages never reach; such a message is dropped and
/// the client sees the protocol stall rather than the proxy panic.
fn put(out: &mut BytesMut, m: impl Message) {
    if let Err(e) = m.encode(out) {
        tracing::error!(error = %e, "could not encode a proxy-generated message");
    }
}

pub fn auth_ok(out: &mut BytesMut) {
    put(out, Authentication::Ok);
}

pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put(
        out,
        Authentication::SASL(mechanisms.iter().map(|m| m.to_string()).collect()),
    );
}

pub fn auth_sasl_continue(out: &mut BytesMut, data: Vec<u8>) {
    put(out, Authentication::SASLContinue(data.into()));
}

pub fn auth_sasl_final(out: &mut BytesMut, data: Vec<u8>) {
    put(out, Authentication::SASLFinal(data.into()));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put(
        out,
        ParameterStatus::new(name.to_string(), value.to_string()),
    );
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put(out, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    put(out, ReadyForQuery::new(status));
}

/// Tells a client that asked for protocol 3.x (x > 0) or sent `_pq_.`
/// options that the session runs on 3.0 without them.
pub fn negotiate_protocol_version(out: &mut BytesMut, unsupported: Vec<String>) {
    put(out, NegotiateProtocolVersion::new(0, unsupported));
}
