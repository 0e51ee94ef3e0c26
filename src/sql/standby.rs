//! Which statements a hot standby may answer (`read_from_standbys`).
//!
//! Decided from the statement kinds and a scan of the words of the text
//! rather than from the syntax tree: plain reads take a fast path that
//! never parses them (see [`super::analyze_plain`]), and the answer is
//! only needed for regions that read from standbys. The scan errs towards
//! the primary: a word inside a string literal or an identifier that
//! happens to match sends the statement to the primary, which is always
//! correct, only not offloaded.

use super::{lexer, StatementKind, StatementPlan};

/// Words that make a read need the primary: row locks (`FOR UPDATE`,
/// `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`), `SELECT … INTO`,
/// data-modifying CTEs, cursors (they live in transactions) and functions
/// that write or use session state a standby does not share.
const PRIMARY_WORDS: &[&str] = &[
    "update",
    "share",
    "into",
    "insert",
    "delete",
    "merge",
    "cursor",
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_notify",
    "set_config",
];

/// Prefixes of function names that write or use session state:
/// `pg_advisory_lock…`, `pg_try_advisory_…`, `txid_current…`,
/// `pg_current_xact_id…`, the large-object functions `lo_…`.
const PRIMARY_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "txid_current",
    "pg_current_xact_id",
    "lo_",
];

/// Whether a standby may run `text`, whose statements are `plans`: every
/// statement is a plain read (no DECLARE, no write to a global table) and
/// the text names nothing that locks rows, writes, or needs the session's
/// own state on the primary. Transactions and the session's DDL are the
/// caller's to check.
pub fn standby_safe(text: &str, plans: &[StatementPlan]) -> bool {
    !plans.is_empty()
        && plans
            .iter()
            .all(|p| p.kind == StatementKind::Read && p.cursor.is_none() && !p.writes_global)
        && !lexer::mentions_word(text, needs_primary)
}

fn needs_primary(word: &str) -> bool {
    PRIMARY_WORDS.contains(&word) || PRIMARY_PREFIXES.iter().any(|p| word.starts_with(p))
}

/// Whether `text` may change a setting of the session with `set_config`
/// (in any statement, read or not). The change stays on the backend that
/// ran it, so once it ran on the primary the session's reads stay there.
pub fn sets_config(text: &str) -> bool {
    lexer::mentions_word(text, |w| w == "set_config")
}
