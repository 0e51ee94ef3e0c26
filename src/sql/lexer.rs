//! Token-level pass over the statement text, before parsing.
//!
//! It splits the text into statements at top-level semicolons (the tokenizer
//! knows strings, quoted identifiers, dollar quotes and comments), so that each
//! statement keeps its own comments (sqlparser drops comments), is parsed on
//! its own (one unparseable statement does not hide the others), and forms
//! sqlparser does not know (`PREPARE TRANSACTION`, `RESET`, `ABORT`) can be
//! recognised from their leading keywords.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer, Whitespace};

/// One statement's text and what the tokenizer saw in it.
#[derive(Debug, Clone)]
pub(crate) struct Segment<'a> {
    /// The statement text, without its terminating semicolon.
    pub text: &'a str,
    /// Text of every comment attached to the statement.
    pub comments: Vec<String>,
    /// The first few tokens, keywords uppercased (for forms sqlparser lacks).
    pub head: Vec<String>,
}

/// The text split into statements.
#[derive(Debug, Clone)]
pub(crate) struct Lexed<'a> {
    pub segments: Vec<Segment<'a>>,
    /// Highest `$n` placeholder in the whole text.
    pub param_count: usize,
}

const HEAD_TOKENS: usize = 4;

/// Tokenizes and splits `sql`. Errors carry a message safe to show and log.
pub(crate) fn lex(sql: &str) -> Result<Lexed<'_>, String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|e| sanitize_message(&e.to_string()))?;

    let semicolons: Vec<Location> = tokens
        .iter()
        .filter(|t| t.token == Token::SemiColon)
        .map(|t| t.span.start)
        .collect();
    let offsets = byte_offsets(sql, &semicolons);

    let mut segments = Vec::new();
    let mut param_count = 0usize;
    let mut start = 0usize;
    let mut semi_index = 0usize;
    let mut comments: Vec<String> = Vec::new();
    let mut head: Vec<String> = Vec::new();
    let mut pending_comments: Vec<String> = Vec::new();

    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                let end = offsets.get(semi_index).copied().unwrap_or(sql.len());
                semi_index += 1;
                if head.is_empty() {
                    // Only whitespace/comments: they belong to the next statement.
                    pending_comments.append(&mut comments);
                } else {
                    let mut all = std::mem::take(&mut pending_comments);
                    all.append(&mut comments);
                    segments.push(Segment {
                        text: sql.get(start..end).unwrap_or(""),
                        comments: all,
                        head: std::mem::take(&mut head),
                    });
                }
                start = (end + 1).min(sql.len());
            }
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. }) => {
                comments.push(comment.clone())
            }
            Token::Whitespace(Whitespace::MultiLineComment(c)) => comments.push(c.clone()),
            Token::Whitespace(_) | Token::EOF => {}
            other => {
                if let Token::Placeholder(p) = other {
                    if let Some(n) = p.strip_prefix('$').and_then(|d| d.parse::<usize>().ok()) {
                        param_count = param_count.max(n);
                    }
                }
                if head.len() < HEAD_TOKENS {
                    head.push(match other {
                        Token::Word(w) if w.quote_style.is_none() => w.value.to_uppercase(),
                        tok => tok.to_string(),
                    });
                }
            }
        }
    }
    if head.is_empty() {
        // Trailing comments after the last statement stay with it.
        pending_comments.append(&mut comments);
        if let Some(last) = segments.last_mut() {
            last.comments.append(&mut pending_comments);
        }
    } else {
        let mut all = pending_comments;
        all.append(&mut comments);
        segments.push(Segment {
            text: sql.get(start..).unwrap_or(""),
            comments: all,
            head,
        });
    }
    Ok(Lexed {
        segments,
        param_count,
    })
}

/// Byte offsets of tokenizer locations (1-based line, 1-based column in chars),
/// `locations` in text order.
fn byte_offsets(sql: &str, locations: &[Location]) -> Vec<usize> {
    let mut out = Vec::with_capacity(locations.len());
    let mut wanted = locations.iter().peekable();
    let (mut line, mut col) = (1u64, 1u64);
    for (offset, ch) in sql.char_indices() {
        while let Some(loc) = wanted.peek() {
            if loc.line == line && loc.column == col {
                out.push(offset);
                wanted.next();
            } else {
                break;
            }
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    out
}

/// Parser/tokenizer messages quote the offending token, which may be a literal
/// (personal data). Replace literal-looking tokens after `found: ` so the
/// message can be shown to clients and logged.
pub(crate) fn sanitize_message(message: &str) -> String {
    let Some(pos) = message.find("found: ") else {
        return message.to_string();
    };
    let token_start = pos + "found: ".len();
    let rest = &message[token_start..];
    let token_end = rest.find(" at Line").unwrap_or(rest.len());
    let token = &rest[..token_end];
    let literal = token.starts_with(['\'', '$'])
        || token.starts_with(|c: char| c.is_ascii_digit())
        || token.len() > 1
            && token.starts_with(['E', 'e', 'X', 'x', 'B', 'b', 'N', 'n', 'U', 'u'])
            && token[1..].starts_with(['\'', '&']);
    if literal {
        format!("{}<literal>{}", &message[..token_start], &rest[token_end..])
    } else {
        message.to_string()
    }
}

/// Whether the raw text names a table for which `is_table` holds: every
/// identifier-like word (quoted or not) is checked, lowercased. Used only when
/// the statement cannot be parsed, so over-matching (a word inside a string
/// literal) errs on the side of refusing.
pub(crate) fn mentions_word(sql: &str, is_table: impl Fn(&str) -> bool) -> bool {
    if sql.is_ascii() {
        return mentions_ascii_word(sql, is_table);
    }
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .any(|w| {
            if w.chars().any(char::is_uppercase) {
                is_table(&w.to_lowercase())
            } else {
                is_table(w)
            }
        })
}

/// [`mentions_word`] for ASCII text, which needs no Unicode tables and
/// lowercases short words on the stack: same words, same answers.
fn mentions_ascii_word(sql: &str, is_table: impl Fn(&str) -> bool) -> bool {
    let bytes = sql.as_bytes();
    let mut lower = [0u8; 64];
    let mut start = 0;
    while start < bytes.len() {
        let len = bytes[start..]
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$'))
            .unwrap_or(bytes.len() - start);
        let word = &sql[start..start + len];
        start += len + 1;
        if word.is_empty() {
            continue;
        }
        let found = if !word.bytes().any(|c| c.is_ascii_uppercase()) {
            is_table(word)
        } else if len <= lower.len() {
            let l = &mut lower[..len];
            l.copy_from_slice(word.as_bytes());
            l.make_ascii_lowercase();
            std::str::from_utf8(l).is_ok_and(&is_table)
        } else {
            is_table(&word.to_ascii_lowercase())
        };
        if found {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let lexed = lex("SELECT ';'; /* c1 */ SELECT $$a;b$$ ;  -- tail\n").expect("lex");
        assert_eq!(lexed.segments.len(), 2);
        assert_eq!(lexed.segments[0].text, "SELECT ';'");
        assert_eq!(
            lexed.segments[1].comments,
            vec![" c1 ".to_string(), " tail\n".to_string()]
        );
        assert_eq!(
            lexed.segments[1].head,
            vec!["SELECT".to_string(), "$$a;b$$".to_string()]
        );
    }

    #[test]
    fn counts_highest_parameter_and_handles_multibyte_text() {
        let lexed = lex("SELECT 'é€'; SELECT $2, $10, $3").expect("lex");
        assert_eq!(lexed.param_count, 10);
        assert_eq!(lexed.segments[0].text, "SELECT 'é€'");
        assert_eq!(lexed.segments[1].text.trim(), "SELECT $2, $10, $3");
    }

    #[test]
    fn comment_only_text_has_no_statements() {
        let lexed = lex("  -- nothing\n ;").expect("lex");
        assert!(lexed.segments.is_empty());
    }

    #[test]
    fn literal_tokens_are_removed_from_messages() {
        assert_eq!(
            sanitize_message("Expected: end of statement, found: 'secret' at Line: 1, Column: 5"),
            "Expected: end of statement, found: <literal> at Line: 1, Column: 5"
        );
        assert_eq!(
            sanitize_message("Expected: an expression, found: 42"),
            "Expected: an expression, found: <literal>"
        );
        assert_eq!(
            sanitize_message("Expected: end of statement, found: FROB"),
            "Expected: end of statement, found: FROB"
        );
    }

    #[test]
    fn word_mentions_are_case_insensitive_and_whole_word() {
        assert!(mentions_word("FROB \"Customers\" x", |w| w == "customers"));
        assert!(!mentions_word("FROB customers_archive", |w| w == "customers"));
        // The ASCII path and the general one see the same words.
        for text in [
            "SELECT * FROM Public.CUSTOMERS WHERE x = $1",
            "select a_b, $x$ FROM t;t2--c",
            "",
            ";;",
            "UPPER_CASE_WORD_LONGER_THAN_SIXTY_FOUR_BYTES_IS_STILL_LOWERCASED_AS_A_WHOLE x",
        ] {
            let ascii = std::cell::RefCell::new(Vec::new());
            let mut general = Vec::new();
            mentions_ascii_word(text, |w| {
                ascii.borrow_mut().push(w.to_string());
                false
            });
            let ascii = ascii.into_inner();
            text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .filter(|w| !w.is_empty())
                .for_each(|w| general.push(w.to_lowercase()));
            assert_eq!(ascii, general, "{text}");
        }
    }
}
