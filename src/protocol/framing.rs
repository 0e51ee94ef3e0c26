//! Splitting a byte stream into protocol messages.
//!
//! Framing is ours (not pgwire's) because the proxy must bound the size of
//! every message before buffering it, never read past a message's own bytes,
//! and forward untouched messages byte for byte.

use bytes::BytesMut;

/// The header of a regular message: type byte plus 4-byte length.
pub const HEADER_LEN: usize = 5;

/// A stream that cannot be framed; the connection must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: i64 },
    #[error("message type '{tag}' of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
}

/// The type byte and total length (type byte included) of the message that
/// starts at `buf[0]`, or `None` when the header is not complete yet.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len: len.into(),
        });
    }
    let len = len as usize;
    if len > max_len {
        return Err(FrameError::TooLarge {
            tag: tag as char,
            len,
            max: max_len,
        });
    }
    Ok(Some((tag, len + 1)))
}

/// One complete message inside a buffer: its type and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub start: usize,
    pub end: usize,
}

impl Frame {
    /// The message body (after the 5-byte header).
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start + HEADER_LEN..self.end]
    }

    /// The whole message, header included.
    pub fn bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start..self.end]
    }
}

/// Walks the complete messages at the front of a buffer.
///
/// Returns the frames and stops at the first incomplete one; the caller keeps
/// the tail for the next read. `frames` is cleared first and reused to avoid
/// an allocation per read.
pub fn scan(buf: &[u8], max_len: usize, frames: &mut Vec<Frame>) -> Result<usize, FrameError> {
    frames.clear();
    let mut pos = 0;
    while let Some((tag, total)) = peek_header(&buf[pos..], max_len)? {
        if buf.len() - pos < total {
            break;
        }
        frames.push(Frame {
            tag,
            start: pos,
            end: pos + total,
        });
        pos += total;
    }
    Ok(pos)
}

/// Like [`scan`], but a bad header ends the scan instead of hiding the
/// complete messages before it: those still deserve an answer.
pub fn scan_until_error(
    buf: &[u8],
    max_len: usize,
    frames: &mut Vec<Frame>,
) -> (usize, Option<FrameError>) {
    frames.clear();
    let mut pos = 0;
    loop {
        match peek_header(&buf[pos..], max_len) {
            Ok(Some((tag, total))) if buf.len() - pos >= total => {
                frames.push(Frame {
                    tag,
                    start: pos,
                    end: pos + total,
                });
                pos += total;
            }
            Ok(_) => return (pos, None),
            Err(e) => return (pos, Some(e)),
        }
    }
}

/// How many more bytes the read buffer needs to hold the next message
/// entirely; used to reserve once instead of growing repeatedly.
pub fn needed(buf: &BytesMut, max_len: usize) -> Result<usize, FrameError> {
    Ok(match peek_header(buf, max_len)? {
        Some((_, total)) => total.saturating_sub(buf.len()),
        None => HEADER_LEN - buf.len().min(HEADER_LEN),
    })
}

/// Reads a NUL-terminated string from `body` at `*pos`, advancing past the
/// NUL; `None` when there is no terminator.
pub fn read_cstr<'a>(body: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = body.get(*pos..)?;
    // Most strings read here are statement and portal names, short and
    // often empty: a plain scan of the first bytes ends them before
    // memchr's dispatch would have started; longer texts go to memchr.
    let head = rest.len().min(SHORT_CSTR);
    let nul = match rest[..head].iter().position(|&b| b == 0) {
        Some(nul) => nul,
        None => head + memchr::memchr(0, &rest[head..])?,
    };
    *pos += nul + 1;
    Some(&rest[..nul])
}

/// How many bytes [`read_cstr`] scans itself before calling memchr.
const SHORT_CSTR: usize = 16;

/// Reads a big-endian i32 from `body` at `*pos`.
pub fn read_i32(body: &[u8], pos: &mut usize) -> Option<i32> {
    let bytes = body.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn scans_complete_messages_and_keeps_the_tail() {
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend(msg(b'S', b""));
        let partial = msg(b'Q', b"select 2\0");
        buf.extend(&partial[..7]);
        let mut frames = Vec::new();
        let used = scan(&buf, 1 << 20, &mut frames).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].tag, b'Q');
        assert_eq!(frames[0].body(&buf), b"select 1\0");
        assert_eq!(frames[1].tag, b'S');
        assert_eq!(used, buf.len() - 7);
    }

    #[test]
    fn rejects_short_and_oversized_lengths() {
        let mut frames = Vec::new();
        let bad = [b'Q', 0, 0, 0, 3];
        assert!(matches!(
            scan(&bad, 100, &mut frames),
            Err(FrameError::BadLength { .. })
        ));
        let neg = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert!(scan(&neg, 100, &mut frames).is_err());
        let big = msg(b'd', &[0u8; 200]);
        assert!(matches!(
            scan(&big, 100, &mut frames),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn cstr_and_i32_readers_are_bounds_checked() {
        let body = b"ab\0\0\0\0\x07";
        let mut pos = 0;
        assert_eq!(read_cstr(body, &mut pos), Some(&b"ab"[..]));
        assert_eq!(read_i32(body, &mut pos), Some(7));
        assert_eq!(read_i32(body, &mut pos), None);
        assert_eq!(read_cstr(body, &mut pos), None);
    }

    #[test]
    fn cstr_reader_finds_the_terminator_before_within_and_past_its_short_scan() {
        for len in [0, 1, SHORT_CSTR - 1, SHORT_CSTR, SHORT_CSTR + 1, 100] {
            let mut body = vec![b'x'; len];
            body.extend_from_slice(b"\0rest\0");
            let mut pos = 0;
            assert_eq!(
                read_cstr(&body, &mut pos),
                Some(&body[..len]),
                "length {len}"
            );
            assert_eq!(pos, len + 1);
            assert_eq!(read_cstr(&body, &mut pos), Some(&b"rest"[..]));
            assert_eq!(read_cstr(&body, &mut pos), None);
            // No terminator at all, short or long.
            assert_eq!(read_cstr(&body[..len], &mut 0), None, "length {len}");
        }
    }
}
