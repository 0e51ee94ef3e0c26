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

pub fn parse_complete(out: &mut BytesMut) {
    put(out, pgwire::messages::extendedquery::ParseComplete::new());
}

pub fn bind_complete(out: &mut BytesMut) {
    put(out, pgwire::messages::extendedquery::BindComplete::new());
}

pub fn close_complete(out: &mut BytesMut) {
    put(out, pgwire::messages::extendedquery::CloseComplete::new());
}

pub fn no_data(out: &mut BytesMut) {
    put(out, pgwire::messages::data::NoData::new());
}

pub fn empty_parameter_description(out: &mut BytesMut) {
    put(
        out,
        pgwire::messages::data::ParameterDescription::new(Vec::new()),
    );
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put(
        out,
        pgwire::messages::response::CommandComplete::new(tag.to_string()),
    );
}

pub fn empty_query(out: &mut BytesMut) {
    put(out, pgwire::messages::response::EmptyQueryResponse::new());
}

/// RowDescription of one text column, as `SHOW name` returns it.
pub fn text_row_description(out: &mut BytesMut, column: &str) {
    use pgwire::messages::data::{FieldDescription, RowDescription};
    const TEXT_OID: u32 = 25;
    let field = FieldDescription::new(column.to_string(), 0, 0, TEXT_OID, -1, -1, 0);
    put(out, RowDescription::new(vec![field]));
}

/// A DataRow of one text value (NULL when `None`).
pub fn text_data_row(out: &mut BytesMut, value: Option<&str>) {
    use bytes::BufMut;
    let mut data = BytesMut::new();
    match value {
        Some(v) => {
            data.put_i32(v.len() as i32);
            data.put_slice(v.as_bytes());
        }
        None => data.put_i32(-1),
    }
    put(out, pgwire::messages::data::DataRow::new(data, 1));
}

/// A NoticeResponse with severity WARNING.
pub fn warning(out: &mut BytesMut, code: &str, message: &str) {
    let fields = vec![
        (b'S', "WARNING".to_string()),
        (b'V', "WARNING".to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    put(out, pgwire::messages::response::NoticeResponse::new(fields));
}
