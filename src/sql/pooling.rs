//! Which statements leave state in a backend session past their
//! transaction, so that a session in transaction-mode pooling (ADR 22)
//! keeps its backend from then on instead of handing it back.
//!
//! Decided from the statement kinds and a scan of the words of the text,
//! like [`super::standby_safe`]: a word inside a string literal or an
//! identifier that happens to match keeps the backend with its session,
//! which is always correct, only not shared.

use super::{lexer, CursorOp, StatementKind, StatementPlan};

/// Functions whose effect outlives the transaction or reads what an
/// earlier one left in the session: session-level advisory locks (the
/// `_xact_` forms end with the transaction and are fine), session
/// settings, the sequence values of this session, `LOAD`, and
/// connections of the `dblink` extension.
const SESSION_WORDS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "set_config",
    "currval",
    "lastval",
    "load",
    "dblink_connect",
    "dblink_connect_u",
];

/// Whether running `text`, whose statements are `plans`, may leave state
/// in the backend session that a later transaction of the same client
/// relies on: session settings and other session statements (SET, RESET,
/// LISTEN, PREPARE, DISCARD…), DDL (temporary tables among it), cursors
/// `WITH HOLD`, statements the parser could not read, and the functions
/// in [`SESSION_WORDS`]. The tenant setting is the proxy's own state.
pub fn keeps_session_state(text: &str, plans: &[StatementPlan]) -> bool {
    plans.iter().any(|p| {
        matches!(
            p.kind,
            StatementKind::SessionState { .. }
                | StatementKind::Ddl
                | StatementKind::Unparsed { .. }
        ) || matches!(p.cursor, Some(CursorOp::Declare { hold: true, .. }))
    }) || lexer::mentions_word(text, |w| SESSION_WORDS.contains(&w))
}
