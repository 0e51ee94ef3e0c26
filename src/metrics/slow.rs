//! The slow-statement log: a request slower than
//! `logging.slow_statement_ms` is logged with its statement's normalized
//! text (literals replaced by `?`, `$n` kept, comments dropped), never the
//! text itself: literals and comments can hold personal data and tenant ids.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Normalized texts longer than this are cut (a multi-row INSERT can be
/// megabytes).
const MAX_LOGGED_CHARS: usize = 2000;

/// Slow-statement state of one backend session.
pub struct SlowLog {
    threshold: Duration,
    region: Arc<str>,
    /// Message holding each pending batch's statement text, by batch index.
    notes: Mutex<VecDeque<(u64, Bytes)>>,
}

impl SlowLog {
    pub fn new(threshold: Duration, region: Arc<str>) -> Self {
        SlowLog {
            threshold,
            region,
            notes: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps the first statement of each batch (cloning `Bytes` shares the
    /// buffer, it does not copy it).
    pub fn note(&self, batch: u64, message: &Bytes) {
        if let Ok(mut q) = self.notes.lock() {
            if q.back().is_none_or(|(b, _)| *b != batch) {
                q.push_back((batch, message.clone()));
            }
        }
    }

    /// Drops the notes up to `batch` and logs the batch if it took
    /// `elapsed` ≥ the threshold. Returns whether it was slow.
    pub fn finish(&self, batch: u64, elapsed: Duration) -> bool {
        let mut note = None;
        if let Ok(mut q) = self.notes.lock() {
            while q.front().is_some_and(|(b, _)| *b <= batch) {
                if let Some((b, m)) = q.pop_front() {
                    if b == batch {
                        note = Some(m);
                    }
                }
            }
        }
        if elapsed < self.threshold {
            return false;
        }
        let statement = note
            .as_deref()
            .and_then(statement_text)
            .map(|t| crate::sql::normalize::normalize(t, MAX_LOGGED_CHARS))
            .unwrap_or_else(|| "<no statement text>".to_string());
        tracing::warn!(
            region = %self.region,
            elapsed_ms = elapsed.as_millis() as u64,
            statement = %statement,
            "slow statement"
        );
        true
    }
}

/// The SQL text of a Query or Parse message (with its 5-byte header).
fn statement_text(message: &[u8]) -> Option<&str> {
    let body = message.get(crate::protocol::framing::HEADER_LEN..)?;
    match message.first()? {
        b'Q' => crate::protocol::frontend_msg::query(body).ok(),
        b'P' => crate::protocol::frontend_msg::parse(body)
            .ok()
            .map(|p| p.query),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Bytes {
        let mut b = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut b).expect("encode");
        b.freeze()
    }

    #[test]
    fn text_comes_from_query_and_parse_messages() {
        assert_eq!(statement_text(&query("SELECT 1")), Some("SELECT 1"));
        let mut b = bytes::BytesMut::new();
        postgres_protocol::message::frontend::parse("s", "SELECT $1", [], &mut b).expect("encode");
        assert_eq!(statement_text(&b), Some("SELECT $1"));
        assert_eq!(statement_text(b"X\0\0\0\x04"), None);
    }

    #[test]
    fn notes_are_matched_by_batch_and_dropped_once_done() {
        let log = SlowLog::new(Duration::from_millis(10), Arc::from("eu"));
        log.note(0, &query("SELECT 'a'"));
        log.note(0, &query("SELECT 'second of batch 0'"));
        log.note(2, &query("SELECT 'c'"));
        assert!(!log.finish(1, Duration::from_millis(1)));
        assert_eq!(log.notes.lock().map(|q| q.len()).unwrap_or(0), 1);
        assert!(log.finish(2, Duration::from_millis(50)));
        assert_eq!(log.notes.lock().map(|q| q.len()).unwrap_or(9), 0);
    }
}
