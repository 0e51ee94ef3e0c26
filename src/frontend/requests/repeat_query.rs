//! Repeated simple queries (ADR 20). Simple-protocol clients inline their
//! values, so a statement they run again and again (`SELECT abalance FROM
//! pgbench_accounts WHERE aid = 81234;`) arrives with other numbers each
//! time and never repeats byte for byte. When such a query took the
//! neutral lane (ADR 18) and its text is one [`crate::sql::plain_kind`]
//! tells without parsing, the numbers decide nothing: the next query that
//! differs from it only in those numbers is sent the way the general path
//! would send it from the same state (`Requests::replay`), without the
//! statement scan.
//!
//! Only numbers can differ, and only where they are numeric literals for
//! Postgres: a text with quotes (string literals, quoted identifiers) is
//! never recorded, so a digit run bounded by characters that cannot be
//! part of a name or a number is a literal. The scan that placed the
//! recorded query sees the same words in a repeat, but for those numbers;
//! when the tenancy names tables, each number of a repeat is looked up as
//! the scan would look it up.

use crate::protocol::framing::HEADER_LEN;
use crate::sql::Tenancy;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// Numeric literals a recorded text may have; a text with more is not
/// recorded (the slots live inline, so recording allocates once).
const MAX_SLOTS: usize = 8;

/// A simple query that went to `region` on the neutral lane: what a
/// repeat must match.
pub(super) struct QueryRepeat {
    pub(super) region: Arc<str>,
    /// The Query message's body: the text and its NUL (one copy).
    text: Bytes,
    /// Where the numeric literals are in `text`.
    slots: [Range<u32>; MAX_SLOTS],
    len: usize,
    /// The tenancy names tables: a number of a repeat must then not be a
    /// word the statement scan would stop at.
    check_words: bool,
    /// The analysis cache's generation and the routing rules' epoch when
    /// recorded (a change of tenancy bumps the generation).
    pub(super) generation: u64,
    pub(super) epoch: u64,
}

impl QueryRepeat {
    /// The record of a Query message `message` sent to `region`; `None`
    /// when its text may not be repeated with other numbers: not ASCII,
    /// quotes in it, or too many numbers.
    pub(super) fn new(
        region: Arc<str>,
        message: &[u8],
        check_words: bool,
        (generation, epoch): (u64, u64),
    ) -> Option<QueryRepeat> {
        let body = message.get(HEADER_LEN..)?;
        let (text, nul) = body.split_at(body.len().checked_sub(1)?);
        if nul != [0] || !text.is_ascii() || text.iter().any(|c| matches!(c, b'\'' | b'"')) {
            return None;
        }
        let mut slots: [Range<u32>; MAX_SLOTS] = Default::default();
        let mut len = 0;
        for slot in literals(text) {
            *slots.get_mut(len)? = u32::try_from(slot.start).ok()?..u32::try_from(slot.end).ok()?;
            len += 1;
        }
        Some(QueryRepeat {
            region,
            text: Bytes::copy_from_slice(body),
            slots,
            len,
            check_words,
            generation,
            epoch,
        })
    }

    /// Whether a Query message's body repeats the recorded text: the same
    /// bytes, but for other digits (at least one) in place of each numeric
    /// literal.
    pub(super) fn matches(&self, body: &[u8], tenancy: impl Fn() -> Arc<Tenancy>) -> bool {
        let (mut r, mut m) = (0usize, 0usize);
        for slot in self.slots.get(..self.len).unwrap_or_default() {
            let (start, end) = (slot.start as usize, slot.end as usize);
            let Some(fixed) = start.checked_sub(r) else {
                return false;
            };
            if body.get(m..m + fixed) != self.text.get(r..start) {
                return false;
            }
            m += fixed;
            let digits = body
                .get(m..)
                .unwrap_or_default()
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 {
                return false;
            }
            if self.check_words {
                let word = std::str::from_utf8(&body[m..m + digits]).unwrap_or_default();
                if crate::sql::word_matters(word, &tenancy()) {
                    return false;
                }
            }
            m += digits;
            r = end;
        }
        body.get(m..) == self.text.get(r..)
    }
}

/// The numeric literals of `text` (ASCII, no quotes): runs of digits that
/// neither start nor end next to a letter, digit, `_`, `$` or `.` — not
/// part of a name, a decimal or an exponent, whose digits are left as
/// they are.
fn literals(text: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let joins = |c: Option<&u8>| {
        c.is_some_and(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.'))
    };
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < text.len() {
            let start = at + text.get(at..)?.iter().position(u8::is_ascii_digit)?;
            let end = start
                + text[start..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
            at = end;
            let before = start.checked_sub(1).and_then(|i| text.get(i));
            if !joins(before) && !joins(text.get(end)) {
                return Some(start..end);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> Vec<u8> {
        let mut out = vec![b'Q'];
        out.extend_from_slice(&(text.len() as i32 + 5).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        out.push(0);
        out
    }

    fn record(text: &str) -> Option<QueryRepeat> {
        QueryRepeat::new(Arc::from("eu"), &query(text), false, (0, 0))
    }

    fn repeats(r: &QueryRepeat, text: &str) -> bool {
        let message = query(text);
        r.matches(&message[HEADER_LEN..], || {
            unreachable!("no words are looked up without tables")
        })
    }

    #[test]
    fn only_numbers_standing_alone_are_literals() {
        fn found(text: &str) -> Vec<&str> {
            literals(text.as_bytes()).map(|r| &text[r]).collect()
        }
        assert_eq!(
            found("SELECT abalance FROM pgbench_accounts WHERE aid = 81234;"),
            ["81234"]
        );
        assert_eq!(found("SELECT 1,2 ,(3)+-4"), ["1", "2", "3", "4"]);
        assert_eq!(found("SELECT t1.a FROM t1, x_2, $3"), Vec::<&str>::new());
        assert_eq!(
            found("SELECT 1.5, .5, 5., 1e5, 0x1F, 12abc"),
            Vec::<&str>::new()
        );
        assert_eq!(found("SELECT 7"), ["7"]);
    }

    #[test]
    fn a_repeat_may_differ_only_in_its_numbers() {
        let r =
            record("SELECT abalance FROM pgbench_accounts WHERE aid = 81234;").expect("recorded");
        for text in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 81234;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123456789012345678901234;",
        ] {
            assert!(repeats(&r, text), "{text}");
        }
        for text in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = ;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7.5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7e1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7x;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;;",
            "SELECT bbalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = -7;",
        ] {
            assert!(!repeats(&r, text), "{text}");
        }
        let two = record("UPDATE t SET a = a + 1 WHERE id = 2").expect("recorded");
        assert!(repeats(&two, "UPDATE t SET a = a + 10 WHERE id = 20"));
        assert!(!repeats(&two, "UPDATE t SET a = a + 10 WHERE id = x"));
    }

    #[test]
    fn texts_with_quotes_or_many_numbers_are_not_recorded() {
        assert!(record("SELECT 'a1'").is_none());
        assert!(record("SELECT \"t1\".x FROM \"t1\"").is_none());
        assert!(record("SELECT 'é'").is_none());
        assert!(record("SELECT 1,2,3,4,5,6,7,8").is_some());
        assert!(record("SELECT 1,2,3,4,5,6,7,8,9").is_none());
        let mut unterminated = query("SELECT 1");
        unterminated.pop();
        assert!(QueryRepeat::new(Arc::from("eu"), &unterminated, false, (0, 0)).is_none());
    }

    #[test]
    fn with_tables_named_a_number_of_a_repeat_is_looked_up() {
        let r =
            QueryRepeat::new(Arc::from("eu"), &query("SELECT 5"), true, (0, 0)).expect("recorded");
        let mut tenancy = Tenancy::new("tenant_id");
        tenancy.add_scoped("42", None);
        let tenancy = Arc::new(tenancy);
        let message = query("SELECT 6");
        assert!(r.matches(&message[HEADER_LEN..], || tenancy.clone()));
        let message = query("SELECT 42");
        assert!(!r.matches(&message[HEADER_LEN..], || tenancy.clone()));
    }
}
