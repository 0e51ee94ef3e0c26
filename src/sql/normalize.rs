//! Statement text safe to log: the statement's shape without its values.
//!
//! Literals of every kind become `?`, `$n` placeholders stay (they name a
//! parameter, not a value), comments are dropped (a `regionguard.tenant`
//! comment names a tenant), whitespace collapses to single spaces.
//! Keywords, identifiers and operators are kept. A text the tokenizer
//! cannot read yields a fixed marker, never the text.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use std::fmt::Write;

/// What is logged for a text that does not tokenize.
pub const UNREADABLE: &str = "<statement not tokenizable>";

/// The normalized form of `sql`, cut at `max_chars` characters (with `…`).
pub fn normalize(sql: &str, max_chars: usize) -> String {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize()
    else {
        return UNREADABLE.to_string();
    };
    let mut out = String::with_capacity(sql.len().min(max_chars) + 8);
    let mut pending_space = false;
    for token in &tokens {
        let piece: Piece = match token {
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
            | Token::Whitespace(_) => {
                // Comments count as a separator, so `a/*x*/b` stays two words.
                pending_space = !out.is_empty();
                continue;
            }
            Token::EOF => continue,
            Token::Word(w) => match w.quote_style {
                None => Piece::Text(&w.value),
                Some('"') => Piece::Quoted(&w.value),
                Some(_) => Piece::Literal,
            },
            Token::Placeholder(p) if is_positional(p) => Piece::Text(p),
            Token::Char(c) if c.is_ascii_punctuation() && !matches!(c, '\'' | '"' | '`') => {
                Piece::Char(*c)
            }
            // Operators and punctuation print as symbols only; anything
            // else (every kind of literal, and token kinds added later)
            // is a value as far as the log is concerned.
            other => {
                let s = other.to_string();
                if !s.is_empty() && s.chars().all(is_operator_char) {
                    Piece::Owned(s)
                } else {
                    Piece::Literal
                }
            }
        };
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Quoted(t) => {
                out.push('"');
                out.push_str(&t.replace('"', "\"\""));
                out.push('"');
            }
            Piece::Char(c) => out.push(c),
            Piece::Owned(s) => out.push_str(&s),
            Piece::Literal => {
                let _ = out.write_char('?');
            }
        }
        if out.len() > max_chars.saturating_mul(4) {
            break;
        }
    }
    truncate_chars(out, max_chars)
}

enum Piece<'a> {
    Text(&'a str),
    Quoted(&'a str),
    Char(char),
    Owned(String),
    Literal,
}

fn is_positional(p: &str) -> bool {
    p.strip_prefix('$')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_operator_char(c: char) -> bool {
    c.is_ascii_punctuation() && !matches!(c, '\'' | '"' | '`' | '$')
}

fn truncate_chars(mut s: String, max_chars: usize) -> String {
    if let Some((cut, _)) = s.char_indices().nth(max_chars) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(sql: &str) -> String {
        normalize(sql, 1000)
    }

    #[test]
    fn literals_become_placeholders_and_params_stay() {
        assert_eq!(
            n("SELECT * FROM customers WHERE tenant_id = 'acme' AND id = 42"),
            "SELECT * FROM customers WHERE tenant_id = ? AND id = ?"
        );
        assert_eq!(
            n("update t set a = $1, b = -3.5e2 where c in ($2, $10)"),
            "update t set a = $1, b = -? where c in ($2, $10)"
        );
    }

    #[test]
    fn every_literal_kind_is_hidden() {
        let sql = "SELECT E'se\\'cret', $$dollar secret$$, $tag$tagged secret$tag$, \
                   X'DEADBEEF', B'1010', U&'d\\0061t', N'national', 'plain secret'::text, \
                   interval '1 day', 0x1f";
        let out = n(sql);
        for secret in [
            "secret", "DEADBEEF", "1010", "d\\0061t", "national", "1 day", "0x1f",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.starts_with("SELECT ?, ?, ?"), "{out}");
        assert!(out.contains("?::text"), "{out}");
    }

    #[test]
    fn comments_are_dropped_and_whitespace_collapsed() {
        assert_eq!(
            n("/* regionguard.tenant = 'acme' */ SELECT\n\t1 -- trailing 'x'\n"),
            "SELECT ?"
        );
        assert_eq!(n("SELECT a/*x*/FROM t"), "SELECT a FROM t");
    }

    #[test]
    fn quoted_identifiers_are_kept_and_unreadable_text_is_not_logged() {
        assert_eq!(
            n(r#"SELECT "Full Name" FROM "T""#),
            r#"SELECT "Full Name" FROM "T""#
        );
        assert_eq!(n("SELECT 'unterminated secret"), super::UNREADABLE);
    }

    #[test]
    fn long_texts_are_cut() {
        let sql = format!("INSERT INTO t VALUES {}", vec!["(1, 'x')"; 5000].join(", "));
        let out = normalize(&sql, 100);
        assert_eq!(out.chars().count(), 101);
        assert!(out.ends_with('…'));
    }
}
