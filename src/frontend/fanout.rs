//! Reading the answers of a statement applied in several regions and
//! composing the one answer the client gets (ADR 8). Pure functions over
//! collected backend messages; the flow lives in `requests::fanout`.
//!
//! The client sees what one region answered: the first region that failed
//! (its ErrorResponse names the region) or, when all succeeded, the
//! session's primary region. The regions' answers are identical apart from
//! errors, since they ran the same text.

use crate::protocol::framing::{self, read_cstr, Frame};
use bytes::{BufMut, BytesMut};

const MAX: usize = i32::MAX as usize;

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let _ = framing::scan(bytes, MAX, &mut frames);
    frames
}

/// The fields of an ErrorResponse or NoticeResponse body, in order.
pub fn fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let code = body[pos];
        pos += 1;
        let Some(value) = read_cstr(body, &mut pos) else {
            break;
        };
        out.push((code, String::from_utf8_lossy(value).into_owned()));
    }
    out
}

fn field(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

/// The SQLSTATE and message of an error a region reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionError {
    pub code: String,
    pub message: String,
}

/// The first ErrorResponse among `bytes`, if any.
pub fn first_error(bytes: &[u8]) -> Option<RegionError> {
    let f = frames(bytes).into_iter().find(|f| f.tag == b'E')?;
    let fields = fields(f.body(bytes));
    Some(RegionError {
        code: field(&fields, b'C').unwrap_or("XX000").to_string(),
        message: field(&fields, b'M').unwrap_or("").to_string(),
    })
}

/// The CommandComplete tags among `bytes`, in order.
pub fn command_tags(bytes: &[u8]) -> Vec<String> {
    frames(bytes)
        .iter()
        .filter(|f| f.tag == b'C')
        .map(|f| {
            let body = f.body(bytes);
            let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            String::from_utf8_lossy(&body[..end]).into_owned()
        })
        .collect()
}

/// `bytes` without its ReadyForQuery messages.
pub fn without_ready(bytes: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(bytes.len());
    for f in frames(bytes) {
        if f.tag != b'Z' {
            out.extend_from_slice(f.bytes(bytes));
        }
    }
    out
}

/// Encodes an ErrorResponse (or, with tag `N`, a NoticeResponse).
pub fn encode_fields(out: &mut BytesMut, tag: u8, fields: &[(u8, String)]) {
    let len: usize = 4 + fields.iter().map(|(_, v)| v.len() + 2).sum::<usize>() + 1;
    out.put_u8(tag);
    out.put_i32(len as i32);
    for (code, value) in fields {
        out.put_u8(*code);
        // A NUL inside a value would end it early; Postgres never sends one.
        out.put_slice(value.replace('\0', "").as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
}

/// `bytes` with its first ErrorResponse naming `region` (message prefixed
/// `region <name>: `), `detail` added to its detail and `hint` given when
/// it has none; every other message unchanged.
pub fn name_region_in_error(bytes: &[u8], region: &str, detail: &str, hint: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(bytes.len() + 128);
    let mut done = false;
    for f in frames(bytes) {
        if f.tag != b'E' || done {
            out.extend_from_slice(f.bytes(bytes));
            continue;
        }
        done = true;
        let mut fields = fields(f.body(bytes));
        let mut has_detail = false;
        for (code, value) in fields.iter_mut() {
            match code {
                b'M' => *value = format!("region {region}: {value}"),
                b'D' if !detail.is_empty() => {
                    has_detail = true;
                    *value = format!("{value}\n{detail}");
                }
                _ => {}
            }
        }
        if !has_detail && !detail.is_empty() {
            // Before the hint and position fields, as Postgres orders them.
            let at = fields
                .iter()
                .position(|(c, _)| !matches!(c, b'S' | b'V' | b'C' | b'M'))
                .unwrap_or(fields.len());
            fields.insert(at, (b'D', detail.to_string()));
        }
        if !hint.is_empty() && !fields.iter().any(|(c, _)| *c == b'H') {
            let at = fields
                .iter()
                .position(|(c, _)| !matches!(c, b'S' | b'V' | b'C' | b'M' | b'D'))
                .unwrap_or(fields.len());
            fields.insert(at, (b'H', hint.to_string()));
        }
        encode_fields(&mut out, b'E', &fields);
    }
    out
}

/// Appends ReadyForQuery with `status`.
pub fn ready(out: &mut BytesMut, status: u8) {
    crate::protocol::messages::ready_for_query(out, status);
}

/// Appends a WARNING notice.
pub fn warning(out: &mut BytesMut, code: &str, message: &str, detail: Option<&str>) {
    let mut fields = vec![
        (b'S', "WARNING".to_string()),
        (b'V', "WARNING".to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d.to_string()));
    }
    encode_fields(out, b'N', &fields);
}

/// Appends an ErrorResponse with a region's SQLSTATE (or the proxy's).
pub fn error(out: &mut BytesMut, code: &str, message: &str, detail: &str, hint: &str) {
    let mut fields = vec![
        (b'S', "ERROR".to_string()),
        (b'V', "ERROR".to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if !detail.is_empty() {
        fields.push((b'D', detail.to_string()));
    }
    if !hint.is_empty() {
        fields.push((b'H', hint.to_string()));
    }
    encode_fields(out, b'E', &fields);
}

/// `a, b and c`.
pub fn list(names: &[impl AsRef<str>]) -> String {
    match names {
        [] => String::new(),
        [one] => one.as_ref().to_string(),
        [rest @ .., last] => format!(
            "{} and {}",
            rest.iter()
                .map(|s| s.as_ref())
                .collect::<Vec<_>>()
                .join(", "),
            last.as_ref()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;

    fn region_error() -> BytesMut {
        let mut b = BytesMut::new();
        messages::parse_complete(&mut b);
        error(&mut b, "42P07", "relation \"t\" already exists", "", "");
        messages::ready_for_query(&mut b, b'E');
        b
    }

    #[test]
    fn reads_errors_and_tags() {
        let b = region_error();
        let e = first_error(&b).expect("an error");
        assert_eq!(e.code, "42P07");
        assert_eq!(e.message, "relation \"t\" already exists");
        let mut ok = BytesMut::new();
        messages::command_complete(&mut ok, "CREATE TABLE");
        messages::command_complete(&mut ok, "INSERT 0 1");
        assert_eq!(command_tags(&ok), vec!["CREATE TABLE", "INSERT 0 1"]);
        assert!(first_error(&ok).is_none());
    }

    #[test]
    fn names_the_region_and_keeps_the_sqlstate() {
        let b = name_region_in_error(
            &region_error(),
            "apac",
            "Rolled back in every region.",
            "fix it",
        );
        let fs = frames(&b);
        assert_eq!(
            fs.iter().map(|f| f.tag).collect::<Vec<_>>(),
            vec![b'1', b'E', b'Z']
        );
        let e = fields(fs[1].body(&b));
        assert_eq!(field(&e, b'C'), Some("42P07"));
        assert_eq!(
            field(&e, b'M'),
            Some("region apac: relation \"t\" already exists")
        );
        assert_eq!(field(&e, b'D'), Some("Rolled back in every region."));
        assert_eq!(field(&e, b'H'), Some("fix it"));
    }

    #[test]
    fn drops_ready_for_query() {
        let b = without_ready(&region_error());
        assert_eq!(
            frames(&b).iter().map(|f| f.tag).collect::<Vec<_>>(),
            vec![b'1', b'E']
        );
    }

    #[test]
    fn lists_names() {
        assert_eq!(list(&["eu"]), "eu");
        assert_eq!(list(&["eu", "us", "apac"]), "eu, us and apac");
    }
}
