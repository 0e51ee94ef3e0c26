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
    let mut param_formats = Vec::new();
    let mut params = Vec::new();
    let (portal, statement) = walk_bind(body, Some((&mut param_formats, &mut params)))?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
    })
}

/// A Bind checked whole like [`bind`] but with its parameters left
/// undecoded (nothing allocated): for statements whose parameters the
/// proxy never reads, which are most of them.
pub fn bind_names(body: &[u8]) -> Result<Bind<'_>, Malformed> {
    let (portal, statement) = walk_bind(body, None)?;
    Ok(Bind {
        portal,
        statement,
        param_formats: Vec::new(),
        params: Vec::new(),
    })
}

/// The decoded parameter formats and values of a Bind.
type BindParams<'v, 'a> = (&'v mut Vec<i16>, &'v mut Vec<Option<&'a [u8]>>);

/// Reads and checks a whole Bind body, collecting its parameter formats
/// and values into `out` when given; returns the portal and statement.
fn walk_bind<'a>(
    body: &'a [u8],
    mut out: Option<BindParams<'_, 'a>>,
) -> Result<(&'a str, &'a str), Malformed> {
    const W: &str = "Bind";
    let mut pos = 0;
    let portal = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    let statement = utf8(read_cstr(body, &mut pos).ok_or(Malformed(W))?, W)?;
    let nf =
        usize::try_from(read_i16(body, &mut pos).ok_or(Malformed(W))?).map_err(|_| Malformed(W))?;
    if let Some((formats, _)) = out.as_mut() {
        formats.reserve_exact(nf);
    }
    for _ in 0..nf {
        let f = read_i16(body, &mut pos).ok_or(Malformed(W))?;
        if let Some((formats, _)) = out.as_mut() {
            formats.push(f);
        }
    }
    let np =
        usize::try_from(read_i16(body, &mut pos).ok_or(Malformed(W))?).map_err(|_| Malformed(W))?;
    if nf > 1 && nf != np {
        return Err(Malformed(W));
    }
    if let Some((_, params)) = out.as_mut() {
        params.reserve_exact(np);
    }
    for _ in 0..np {
        let len = read_i32(body, &mut pos).ok_or(Malformed(W))?;
        let value = if len == -1 {
            None
        } else {
            let len = usize::try_from(len).map_err(|_| Malformed(W))?;
            let v = body.get(pos..pos + len).ok_or(Malformed(W))?;
            pos += len;
            Some(v)
        };
        if let Some((_, params)) = out.as_mut() {
            params.push(value);
        }
    }
    let nr =
        usize::try_from(read_i16(body, &mut pos).ok_or(Malformed(W))?).map_err(|_| Malformed(W))?;
    if body.len() - pos != nr * 2 {
        return Err(Malformed(W));
    }
    Ok((portal, statement))
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

    proptest::proptest! {
        /// Checking a Bind without decoding its parameters accepts and
        /// refuses exactly what decoding it does.
        #[test]
        fn bind_names_checks_like_bind(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let full = bind(&bytes);
            let names = bind_names(&bytes);
            proptest::prop_assert_eq!(full.is_ok(), names.is_ok());
            if let (Ok(f), Ok(n)) = (full, names) {
                proptest::prop_assert_eq!((f.portal, f.statement), (n.portal, n.statement));
                proptest::prop_assert!(n.params.is_empty() && n.param_formats.is_empty());
            }
        }
    }

    #[test]
    fn bind_names_accepts_a_real_bind() {
        let mut b = BytesMut::new();
        frontend::bind(
            "p",
            "s1",
            [0i16],
            [Some(&b"42"[..])],
            |v, out| {
                out.extend_from_slice(v.unwrap_or_default());
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(IsNull::No)
            },
            [0i16],
            &mut b,
        )
        .map_err(|_| ())
        .unwrap();
        let n = bind_names(body(&b)).unwrap();
        assert_eq!((n.portal, n.statement), ("p", "s1"));
        assert_eq!(bind(body(&b)).unwrap().params, vec![Some(&b"42"[..])]);
    }
}
