//! A reader for Postgres's `nodeToString` text (`pg_node_tree`), enough to
//! walk a view's stored query in `pg_rewrite.ev_action`.
//!
//! Reading the parse tree Postgres itself analysed (rather than re-parsing
//! the view's SQL text with another parser) gives exact answers: which
//! relation and column every output column comes from, through subqueries,
//! joins, CTEs and nested views. The format is `{NAME :field value …}` for
//! nodes, `( … )` for lists, whitespace-separated tokens with `\` escaping,
//! `<>` for NULL, and `len [ b0 b1 … ]` for a Const's datum. Anything else
//! is an error, and the caller treats the view as unreadable (fail closed).

/// One value of a node tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// `{NAME :field value …}`; fields in order of appearance.
    Struct {
        name: String,
        fields: Vec<(String, Node)>,
    },
    /// `( … )`: a list of nodes, or of integers/OIDs (`(i 1 2)`, `(b 8 9)`).
    List(Vec<Node>),
    /// A single token, unescaped (`<>` is NULL).
    Token(String),
}

impl Node {
    /// A struct's field, or `None`.
    pub fn field(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Struct { fields, .. } => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The struct's node name (`QUERY`, `VAR`, …).
    pub fn name(&self) -> Option<&str> {
        match self {
            Node::Struct { name, .. } => Some(name),
            _ => None,
        }
    }

    /// A numeric field.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.field(name)? {
            Node::Token(t) => t.parse().ok(),
            _ => None,
        }
    }

    /// A token field as text.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.field(name)? {
            Node::Token(t) => Some(t),
            _ => None,
        }
    }

    /// A list field's items; NULL (`<>`) is the empty list.
    pub fn list(&self, name: &str) -> Option<&[Node]> {
        match self.field(name)? {
            Node::List(items) => Some(items),
            Node::Token(t) if t == "<>" => Some(&[]),
            _ => None,
        }
    }

    /// Whether the field is NULL (`<>`).
    pub fn is_null(&self, name: &str) -> bool {
        matches!(self.field(name), Some(Node::Token(t)) if t == "<>")
    }

    /// Calls `f` on this node and every node below it.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Node)) {
        f(self);
        match self {
            Node::Struct { fields, .. } => fields.iter().for_each(|(_, v)| v.walk(f)),
            Node::List(items) => items.iter().for_each(|n| n.walk(f)),
            Node::Token(_) => {}
        }
    }
}

/// A lexical token: punctuation or a word, with whether any of it was escaped
/// (an escaped `:x` is a value, not a field name).
#[derive(Debug, PartialEq, Eq)]
enum Tok {
    Open(char),
    Close(char),
    Word { text: String, escaped: bool },
}

fn tokens(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\n' | '\t' | '\r' => {
                chars.next();
            }
            '{' | '(' => {
                chars.next();
                out.push(Tok::Open(c));
            }
            '}' | ')' => {
                chars.next();
                out.push(Tok::Close(c));
            }
            _ => {
                let mut text = String::new();
                let mut escaped = false;
                while let Some(&c) = chars.peek() {
                    match c {
                        ' ' | '\n' | '\t' | '\r' | '{' | '}' | '(' | ')' => break,
                        '\\' => {
                            chars.next();
                            escaped |= text.is_empty();
                            if let Some(e) = chars.next() {
                                text.push(e);
                            }
                        }
                        _ => {
                            chars.next();
                            text.push(c);
                        }
                    }
                }
                out.push(Tok::Word { text, escaped });
            }
        }
    }
    out
}

/// Parses a whole `pg_node_tree` text.
pub fn parse(s: &str) -> Result<Node, String> {
    let toks = tokens(s);
    let mut pos = 0;
    let node = value(&toks, &mut pos)?;
    if pos != toks.len() {
        return Err("trailing tokens after the node tree".into());
    }
    Ok(node)
}

fn is_field(t: &Tok) -> bool {
    matches!(t, Tok::Word { text, escaped: false } if text.starts_with(':'))
}

fn value(toks: &[Tok], pos: &mut usize) -> Result<Node, String> {
    let t = toks.get(*pos).ok_or("unexpected end of the node tree")?;
    *pos += 1;
    match t {
        Tok::Open('{') => {
            let name = match toks.get(*pos) {
                Some(Tok::Word { text, .. }) => text.clone(),
                _ => return Err("a node without a name".into()),
            };
            *pos += 1;
            let mut fields = Vec::new();
            loop {
                match toks.get(*pos) {
                    Some(Tok::Close('}')) => {
                        *pos += 1;
                        return Ok(Node::Struct { name, fields });
                    }
                    Some(t @ Tok::Word { text, .. }) if is_field(t) => {
                        let key = text[1..].to_string();
                        *pos += 1;
                        let v = field_value(toks, pos)?;
                        fields.push((key, v));
                    }
                    _ => return Err(format!("unexpected token in node {name}")),
                }
            }
        }
        Tok::Open(_) => {
            let mut items = Vec::new();
            loop {
                match toks.get(*pos) {
                    Some(Tok::Close(')')) => {
                        *pos += 1;
                        return Ok(Node::List(items));
                    }
                    Some(_) => items.push(value(toks, pos)?),
                    None => return Err("unterminated list".into()),
                }
            }
        }
        Tok::Close(c) => Err(format!("unexpected '{c}'")),
        Tok::Word { text, .. } => Ok(Node::Token(text.clone())),
    }
}

/// A field's value: one token or group; a Const's datum `len [ … ]` is kept
/// as one list.
fn field_value(toks: &[Tok], pos: &mut usize) -> Result<Node, String> {
    let first = value(toks, pos)?;
    if let (Node::Token(len), Some(Tok::Word { text, .. })) = (&first, toks.get(*pos)) {
        if text == "[" && len.parse::<usize>().is_ok() {
            let mut bytes = vec![first.clone()];
            *pos += 1;
            loop {
                match toks.get(*pos) {
                    Some(Tok::Word { text, .. }) if text == "]" => {
                        *pos += 1;
                        return Ok(Node::List(bytes));
                    }
                    Some(Tok::Word { text, .. }) => {
                        bytes.push(Node::Token(text.clone()));
                        *pos += 1;
                    }
                    _ => return Err("unterminated datum".into()),
                }
            }
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nodes_lists_and_escapes() {
        let n = parse(r#"({TARGETENTRY :expr {VAR :varno 3 :varattno 1} :resno 1 :resname a\ b\(c\) :ressortgroupref 0 :resorigtbl 16384 :resorigcol 3 :resjunk false})"#).unwrap();
        let Node::List(items) = &n else { panic!() };
        let te = &items[0];
        assert_eq!(te.name(), Some("TARGETENTRY"));
        assert_eq!(te.text("resname"), Some("a b(c)"));
        assert_eq!(te.int("resorigtbl"), Some(16384));
        assert_eq!(te.field("expr").and_then(|e| e.int("varattno")), Some(1));
    }

    #[test]
    fn a_column_named_like_a_field_stays_a_value() {
        // Postgres does not escape a leading ':'; the name is the one token
        // after :resname, so it cannot shadow the real :resno.
        let n = parse("{TARGETENTRY :expr <> :resno 2 :resname :resno :ressortgroupref 0 :resorigtbl 0 :resorigcol 0 :resjunk false}").unwrap();
        assert_eq!(n.int("resno"), Some(2));
        assert_eq!(n.text("resname"), Some(":resno"));
        assert!(n.is_null("expr"));
    }

    #[test]
    fn const_datums_and_bitmapsets_are_single_values() {
        let n = parse(
            "{CONST :constlen 4 :constvalue 4 [ 1 0 0 0 0 0 0 0 ] :location 7 :cols (b 8 9)}",
        )
        .unwrap();
        assert_eq!(n.int("location"), Some(7));
        assert_eq!(n.list("constvalue").map(<[Node]>::len), Some(9));
        assert_eq!(n.list("cols").map(<[Node]>::len), Some(3));
    }

    #[test]
    fn malformed_trees_are_errors() {
        assert!(parse("{QUERY :a 1").is_err());
        assert!(parse("{QUERY :a 1})").is_err());
        assert!(parse("{QUERY 1}").is_err());
        assert!(parse("{CONST :constvalue 4 [ 1 0").is_err());
    }
}
