//! Bounds-checked decoding of the frontend message bodies the proxy must
//! read to route statements: Query, Parse, Bind, Describe, Close, Execute.
//!
//! Bodies come from one frame each (see `framing`), so a decoder can never
//! read another message's bytes; every length and count is checked and the
//! body must be consumed exactly. pgwire's decoders panic on malformed
//! bodies, hence these few small ones (docs/adr/0002).

use super::framing::{read_cstr, read_i32};

/// A frontend message body that does not match its type's layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, Malformed> {
    std::str::from_utf8(b).map_err(|_| Malformed(what))
}

fn read_i16(body: &[u8], pos: &mut usize) -> Option<i16> {
    let b = body.get(*pos..*pos + 2)?;
    *pos += 2;
    Some(i16::from_be_bytes([b[0], b[1]]))
}

fn done(body: &[u8], pos: usize, what: &'static str) -> Result<(), Malformed> {
    if pos == body.len() {
        Ok(())
    } else {
        Err(Malformed(what))
    }
}

/// 'Q': the query string.
pub fn query(body: &[u8]) -> Result<&str, Malformed> {
    let mut pos = 0;
    let q = read_cstr(body, &mut pos).ok_or(Malformed("Query"))?;
    done(body, pos, "Query")?;
    utf8(q, "Query")
}

/// 'P': a statement to prepare.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    pub query: &'a str,
    pub param_types: Vec<u32>,
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, Malformed> {
    const W: &str = "Parse";
    let mut pos = 0;
    let name = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    let query = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    let n = read_i16(body, &mut pos).ok_or(Malformed(W))?;
    let n = usize::try_from(n).map_err(|_| Malformed(W))?;
    if body.len() - pos != n * 4 {
        return Err(Malformed(W));
    }
    let mut param_types = Vec::with_capacity(n);
    for _ in 0..n {
        param_types.push(read_i32(body, &mut pos).ok_or(Malformed(W))? as u32);
    }
    done(body, pos, W)?;
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

/// The statement name of a Parse, read without decoding the rest: for a
/// Parse the proxy has already decoded once, byte for byte the same.
pub fn parse_name(body: &[u8]) -> Result<&str, Malformed> {
    let mut pos = 0;
    utf8(
        read_cstr(body, &mut pos).ok_or(Malformed("Parse"))?,
        "Parse",
    )
}

/// 'B': a portal from a statement and parameter values.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// As sent: empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
}

impl<'a> Bind<'a> {
    /// Whether parameter `i` (0-based) is in binary format.
    pub fn is_binary(&self, i: usize) -> bool {
        match self.param_formats.len() {
            0 => false,
            1 => self.param_formats[0] == 1,
            _ => self.param_formats.get(i) == Some(&1),
        }
    }
}

pub fn bind(body: &[u8]) -> Result<Bind<'_>, Malformed> {
    const W: &str = "Bind";
    let mut pos = 0;
    let portal = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    let statement = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    let nf =
        usize::try_from(read_i16(body, &mut pos).ok_or(Malformed(W))?).map_err(|_| Malformed(W))?;
    let mut param_formats = Vec::with_capacity(nf);
    for _ in 0..nf {
        param_formats.push(read_i16(body, &mut pos).ok_or(Malformed(W))?);
    }
    let np =
        usize::try_from(read_i16(body, &mut pos).ok_or(Malformed(W))?).map_err(|_| Malformed(W))?;
    if nf > 1 && nf != np {
        return Err(Malformed(W));
    }
    let mut params = Vec::with_capacity(np);
    for _ in 0..np {
        let len = read_i32(body, &mut pos).ok_or(Malformed(W))?;
        if len == -1 {
            params.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| Malformed(W))?;
        let v = body.get(pos..pos + len).ok_or(Malformed(W))?;
        pos += len;
        params.push(Some(v));
    }
    let nr =
        usize::try_from(read_i16(body, &mut pos).ok_or(Malformed(W))?).map_err(|_| Malformed(W))?;
    if body.len() - pos != nr * 2 {
        return Err(Malformed(W));
    }
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
    })
}

/// 'D' and 'C': a kind byte ('S' statement, 'P' portal) and a name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), Malformed> {
    let kind = *body.first().ok_or(Malformed(what))?;
    if kind != b'S' && kind != b'P' {
        return Err(Malformed(what));
    }
    let mut pos = 1;
    let name = utf8(read_cstr(body, &mut pos).ok_or(Malformed(what))?, what)?;
    done(body, pos, what)?;
    Ok((kind, name))
}

/// 'E': the portal to run.
pub fn execute(body: &[u8]) -> Result<&str, Malformed> {
    const W: &str = "Execute";
    let mut pos = 0;
    let portal = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    read_i32(body, &mut pos).ok_or(Malformed(W))?;
    done(body, pos, W)?;
    Ok(portal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;
    use postgres_protocol::IsNull;

    fn body(buf: &BytesMut) -> &[u8] {
        &buf[5..]
    }

    #[test]
    fn decodes_what_postgres_protocol_encodes() {
        let mut b = BytesMut::new();
        frontend::parse("s1", "select $1", [25u32], &mut b).unwrap();
        let p = parse(body(&b)).unwrap();
        assert_eq!(
            (p.name, p.query, p.param_types),
            ("s1", "select $1", vec![25])
        );

        let mut b = BytesMut::new();
        frontend::bind(
            "p",
            "s1",
            [1i16],
            [Some(&b"acme"[..]), None],
            |v, out| match v {
                Some(v) => {
                    out.extend_from_slice(v);
                    Ok::<_, Box<dyn std::error::Error + Sync + Send>>(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            [1i16],
            &mut b,
        )
        .map_err(|_| ())
        .unwrap();
        let bd = bind(body(&b)).unwrap();
        assert_eq!(bd.portal, "p");
        assert_eq!(bd.params, vec![Some(&b"acme"[..]), None]);
        assert!(bd.is_binary(0) && bd.is_binary(1));

        let mut b = BytesMut::new();
        frontend::describe(b'S', "s1", &mut b).unwrap();
        assert_eq!(target(body(&b), "Describe").unwrap(), (b'S', "s1"));
        let mut b = BytesMut::new();
        frontend::execute("p", 10, &mut b).unwrap();
        assert_eq!(execute(body(&b)).unwrap(), "p");
        let mut b = BytesMut::new();
        frontend::query("select 1", &mut b).unwrap();
        assert_eq!(query(body(&b)).unwrap(), "select 1");
    }

    #[test]
    fn refuses_truncated_and_overlong_bodies() {
        assert!(query(b"no terminator").is_err());
        assert!(query(b"a\0extra").is_err());
        assert!(parse(b"s\0q\0\x00\x02\0\0\0\x19").is_err());
        assert!(parse(b"s\0q\0\xff\xff").is_err());
        // Bind claiming a 100-byte parameter with 2 bytes present.
        assert!(bind(b"\0\0\0\0\0\x01\0\0\0\x64ab").is_err());
        assert!(bind(b"\0\0\0\0\0\x01\xff\xff\xff\xfe").is_err());
        assert!(target(b"X\0", "Describe").is_err());
        assert!(execute(b"p\0\0\0").is_err());
        assert!(parse(b"s\0\xff\0\0\0").is_err());
    }
}
