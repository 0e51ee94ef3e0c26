//! `json` and `jsonb`.
//!
//! `json` keeps the client's text byte for byte once it is valid. `jsonb`'s
//! canonical form is what `jsonb_send` returns: version byte 1 followed by
//! Postgres's normalised text (keys sorted by length then bytes, duplicate
//! keys resolved to the last one, `", "`/`": "` spacing, numbers as
//! `numeric` prints them, strings re-escaped). Normalising on the way in
//! makes equal jsonb values encrypt equally, and text output is then the
//! stored text.
//!
//! The parser is Postgres's JSON grammar (`json_lex` in `jsonapi.c`), not
//! `serde_json`: jsonb numbers must keep every digit for `numeric`,
//! `\u0000` is legal in `json` but refused in `jsonb`, lone surrogate
//! escapes are refused in both, and nesting depth has no fixed limit (the
//! parser is iterative, so deep input cannot overflow the stack).

use super::error::{sqlstate, TypeError};
use super::numeric::Numeric;
use super::text::utf8;

/// jsonb's only binary format version.
const JSONB_VERSION: u8 = 1;

enum Node {
    Null,
    Bool(bool),
    /// The number token as written; normalised through `numeric` on output.
    Number(String),
    String(String),
    Array(Vec<usize>),
    Object(Vec<(String, usize)>),
}

/// A parsed document: nodes in an arena (so neither building nor dropping
/// recurses), the root at index 0.
struct Doc {
    nodes: Vec<Node>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Json,
    Jsonb,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Json => "json",
            Flavor::Jsonb => "jsonb",
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    BeginObject,
    EndObject,
    BeginArray,
    EndArray,
    Colon,
    Comma,
    String(String),
    Number(String),
    True,
    False,
    Null,
    End,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    flavor: Flavor,
    /// A token read ahead and given back.
    pending: Option<Token>,
}

fn is_json_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

impl Lexer<'_> {
    fn syntax(&self) -> TypeError {
        TypeError::syntax(self.flavor.name())
    }

    fn next(&mut self) -> Result<Token, TypeError> {
        if let Some(t) = self.pending.take() {
            return Ok(t);
        }
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
        let Some(&c) = self.s.get(self.i) else {
            return Ok(Token::End);
        };
        let single = match c {
            b'{' => Some(Token::BeginObject),
            b'}' => Some(Token::EndObject),
            b'[' => Some(Token::BeginArray),
            b']' => Some(Token::EndArray),
            b':' => Some(Token::Colon),
            b',' => Some(Token::Comma),
            _ => None,
        };
        if let Some(t) = single {
            self.i += 1;
            return Ok(t);
        }
        match c {
            b'"' => self.string().map(Token::String),
            b'-' | b'0'..=b'9' => self.number().map(Token::Number),
            _ => {
                let start = self.i;
                while self.i < self.s.len() && is_json_alnum(self.s[self.i]) {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"true" => Ok(Token::True),
                    b"false" => Ok(Token::False),
                    b"null" => Ok(Token::Null),
                    _ => Err(self.syntax()),
                }
            }
        }
    }

    fn number(&mut self) -> Result<String, TypeError> {
        let s = self.s;
        let start = self.i;
        let mut i = self.i;
        let digits = |i: &mut usize| {
            let from = *i;
            while *i < s.len() && s[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > from
        };
        if s[i] == b'-' {
            i += 1;
        }
        let mut ok = true;
        if s.get(i) == Some(&b'0') {
            i += 1;
        } else if s.get(i).is_some_and(|b| (b'1'..=b'9').contains(b)) {
            digits(&mut i);
        } else {
            ok = false;
        }
        if s.get(i) == Some(&b'.') {
            i += 1;
            ok &= digits(&mut i);
        }
        if matches!(s.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(s.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            ok &= digits(&mut i);
        }
        if i < s.len() && is_json_alnum(s[i]) {
            ok = false;
        }
        if !ok {
            return Err(self.syntax());
        }
        self.i = i;
        // The token is ASCII by construction.
        Ok(String::from_utf8_lossy(&s[start..i]).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, TypeError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = self
                .s
                .get(self.i)
                .and_then(|b| (*b as char).to_digit(16))
                .ok_or_else(|| self.syntax())?;
            v = v * 16 + d;
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, TypeError> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        let mut high_surrogate: Option<u32> = None;
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.syntax());
            };
            if c != b'\\' && high_surrogate.is_some() {
                return Err(self.syntax());
            }
            match c {
                b'"' => {
                    self.i += 1;
                    break;
                }
                0..=0x1f => return Err(self.syntax()),
                b'\\' => {
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.syntax());
                    };
                    self.i += 1;
                    if e != b'u' && high_surrogate.is_some() {
                        return Err(self.syntax());
                    }
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let cp = self.hex4()?;
                            if self.flavor == Flavor::Json {
                                // json only validates; Postgres does not
                                // pair surrogates it does not decode.
                                continue;
                            }
                            let scalar = match (high_surrogate.take(), cp) {
                                (None, 0xD800..=0xDBFF) => {
                                    high_surrogate = Some(cp);
                                    continue;
                                }
                                (Some(high), 0xDC00..=0xDFFF) => {
                                    0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00)
                                }
                                (None, 0xDC00..=0xDFFF) | (Some(_), _) => return Err(self.syntax()),
                                (None, cp) => cp,
                            };
                            if scalar == 0 {
                                return Err(TypeError::new(
                                    sqlstate::UNTRANSLATABLE_CHARACTER,
                                    "unsupported Unicode escape sequence: \\u0000 cannot be converted to text (jsonb)",
                                ));
                            }
                            let ch = char::from_u32(scalar).ok_or_else(|| self.syntax())?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.syntax()),
                    }
                }
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        // The input was valid UTF-8 and escapes add whole characters.
        String::from_utf8(out).map_err(|_| self.syntax())
    }
}

/// Parses a whole document (any JSON value at the top level).
fn parse(text: &str, flavor: Flavor) -> Result<Doc, TypeError> {
    let mut lx = Lexer {
        s: text.as_bytes(),
        i: 0,
        flavor,
        pending: None,
    };
    let mut nodes: Vec<Node> = Vec::new();
    // Open containers, with the key awaiting its value for objects.
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    loop {
        // Parse one value (possibly opening a container).
        let token = lx.next()?;
        let mut done = nodes.len();
        match token {
            Token::BeginObject | Token::BeginArray => {
                let object = token == Token::BeginObject;
                nodes.push(if object {
                    Node::Object(Vec::new())
                } else {
                    Node::Array(Vec::new())
                });
                let first = lx.next()?;
                match (object, first) {
                    (true, Token::EndObject) | (false, Token::EndArray) => {}
                    (true, Token::String(key)) => {
                        if lx.next()? != Token::Colon {
                            return Err(lx.syntax());
                        }
                        stack.push((done, Some(key)));
                        continue;
                    }
                    (false, other) => {
                        // Not a close: that token starts the first element.
                        lx.pending = Some(other);
                        stack.push((done, None));
                        continue;
                    }
                    _ => return Err(lx.syntax()),
                }
            }
            Token::String(s) => nodes.push(Node::String(s)),
            Token::Number(n) => nodes.push(Node::Number(n)),
            Token::True => nodes.push(Node::Bool(true)),
            Token::False => nodes.push(Node::Bool(false)),
            Token::Null => nodes.push(Node::Null),
            _ => return Err(lx.syntax()),
        }
        // A value is complete: attach it and consume separators/closers.
        loop {
            let Some((parent, key)) = stack.last_mut() else {
                return if lx.next()? == Token::End {
                    Ok(Doc { nodes })
                } else {
                    Err(lx.syntax())
                };
            };
            let parent = *parent;
            let is_object = match &mut nodes[parent] {
                Node::Object(members) => {
                    members.push((key.take().unwrap_or_default(), done));
                    true
                }
                Node::Array(items) => {
                    items.push(done);
                    false
                }
                _ => false,
            };
            match (lx.next()?, is_object) {
                (Token::Comma, true) => {
                    let Token::String(k) = lx.next()? else {
                        return Err(lx.syntax());
                    };
                    if lx.next()? != Token::Colon {
                        return Err(lx.syntax());
                    }
                    if let Some(top) = stack.last_mut() {
                        top.1 = Some(k);
                    }
                    break;
                }
                (Token::Comma, false) => break,
                (Token::EndObject, true) | (Token::EndArray, false) => {
                    stack.pop();
                    done = parent;
                }
                _ => return Err(lx.syntax()),
            }
        }
    }
}

/// Postgres's `escape_json`.
fn push_escaped(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Doc {
    /// jsonb's normal text form (`JsonbToCString`), written without
    /// recursion.
    fn to_jsonb_text(&self) -> Result<String, TypeError> {
        enum Step<'a> {
            Value(usize),
            Text(&'static str),
            Key(&'a str),
        }
        let mut out = String::new();
        let mut todo = vec![Step::Value(0)];
        while let Some(step) = todo.pop() {
            let index = match step {
                Step::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Step::Key(k) => {
                    push_escaped(&mut out, k);
                    out.push_str(": ");
                    continue;
                }
                Step::Value(i) => i,
            };
            match self.nodes.get(index) {
                None => return Err(TypeError::syntax("jsonb")),
                Some(Node::Null) => out.push_str("null"),
                Some(Node::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
                Some(Node::Number(n)) => out.push_str(&Numeric::parse(n)?.to_text()),
                Some(Node::String(s)) => push_escaped(&mut out, s),
                Some(Node::Array(items)) => {
                    out.push('[');
                    todo.push(Step::Text("]"));
                    for (n, item) in items.iter().enumerate().rev() {
                        todo.push(Step::Value(*item));
                        if n > 0 {
                            todo.push(Step::Text(", "));
                        }
                    }
                }
                Some(Node::Object(members)) => {
                    // Sort by (length, bytes), stable, then keep the last
                    // of each run of equal keys: the last duplicate wins.
                    let mut sorted: Vec<&(String, usize)> = members.iter().collect();
                    sorted.sort_by(|a, b| {
                        (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes()))
                    });
                    let mut unique: Vec<&(String, usize)> = Vec::with_capacity(sorted.len());
                    for m in sorted {
                        match unique.last_mut() {
                            Some(last) if last.0 == m.0 => *last = m,
                            _ => unique.push(m),
                        }
                    }
                    out.push('{');
                    todo.push(Step::Text("}"));
                    for (n, (key, value)) in unique.iter().map(|m| (&m.0, m.1)).enumerate().rev() {
                        todo.push(Step::Value(value));
                        todo.push(Step::Key(key));
                        if n > 0 {
                            todo.push(Step::Text(", "));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `json` text input: validated, kept as given.
pub(crate) fn json_in(text: &[u8]) -> Result<Vec<u8>, TypeError> {
    parse(utf8(text, "json")?, Flavor::Json)?;
    Ok(text.to_vec())
}

/// `json`'s binary form is its text.
pub(crate) fn json_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    json_in(bin)
}

/// `jsonb` text input: version byte and normalised text.
pub(crate) fn jsonb_in(text: &[u8]) -> Result<Vec<u8>, TypeError> {
    let doc = parse(utf8(text, "jsonb")?, Flavor::Jsonb)?;
    let normal = doc.to_jsonb_text()?;
    let mut out = Vec::with_capacity(normal.len() + 1);
    out.push(JSONB_VERSION);
    out.extend_from_slice(normal.as_bytes());
    Ok(out)
}

/// `jsonb_recv`: version 1 and jsonb text, normalised.
pub(crate) fn jsonb_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    match bin.split_first() {
        Some((&JSONB_VERSION, text)) => jsonb_in(text),
        _ => Err(TypeError::binary(
            "jsonb",
            "unsupported jsonb version number",
        )),
    }
}

/// `jsonb` output: the normalised text.
pub(crate) fn jsonb_out(bin: &[u8]) -> Result<String, TypeError> {
    let canonical = jsonb_recv(bin)?;
    Ok(String::from_utf8_lossy(&canonical[1..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonb(text: &str) -> Result<String, TypeError> {
        jsonb_in(text.as_bytes()).map(|b| String::from_utf8(b[1..].to_vec()).unwrap())
    }

    #[test]
    fn jsonb_normal_form() {
        assert_eq!(
            jsonb(r#"{"bb":1,"a":[1,2.50,1e2,-0],"a":{"z":null,"y":true}}"#).unwrap(),
            r#"{"a": {"y": true, "z": null}, "bb": 1}"#
        );
        assert_eq!(jsonb(" [ ] ").unwrap(), "[]");
        assert_eq!(jsonb("{}").unwrap(), "{}");
        assert_eq!(jsonb("[[],[{}]]").unwrap(), "[[], [{}]]");
        assert_eq!(
            jsonb(r#""a\u00e9\n\u001f\/""#).unwrap(),
            "\"aé\\n\\u001f/\""
        );
        assert_eq!(jsonb("1E-3").unwrap(), "0.001");
        assert_eq!(jsonb(r#""\ud83d\ude00""#).unwrap(), "\"😀\"");
        assert_eq!(jsonb(r#"["\u0000"]"#).unwrap_err().sqlstate(), "22P05");
        assert_eq!(jsonb(r#""\ud800""#).unwrap_err().sqlstate(), "22P02");
        assert!(json_in(br#""\ud800""#).is_ok());
        assert_eq!(jsonb("1e-20000").unwrap_err().sqlstate(), "22003");
    }

    #[test]
    fn json_validation() {
        for ok in [
            "1",
            "-0.5e+3",
            "\"\\u0000\"",
            " {\"a\" : [true, false, null]} ",
            "[1,[2,[3]]]",
        ] {
            assert_eq!(json_in(ok.as_bytes()).unwrap(), ok.as_bytes(), "{ok}");
        }
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "-",
            "+1",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1 2]",
            "tru",
            "True",
            "nul",
            "\"\t\"",
            "\"\\x\"",
            "{1:2}",
            "[1]]",
            "1 2",
            "\"abc",
            "1x",
            "[",
            "{",
        ] {
            assert_eq!(
                json_in(bad.as_bytes()).unwrap_err().sqlstate(),
                "22P02",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert!(jsonb_in(deep.as_bytes()).is_ok());
    }
}
