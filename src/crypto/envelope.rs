//! The ciphertext envelope stored in a classified column.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       1     mode: 1 randomized, 2 deterministic
//! 2       4     data key version, u32 big-endian
//! 6       12    nonce
//! 18      n+16  AES-256-GCM-SIV ciphertext of the n plaintext bytes, then the tag
//! ```
//!
//! The first 6 bytes are the *header*. They are not secret but they are
//! authenticated: the header is part of the AEAD associated data, so a
//! ciphertext relabelled with another key version or mode fails to open.
//! The nonce is authenticated implicitly (it is an input of GCM-SIV).
//! The key version in the header is what lets several data key versions
//! coexist during rotation: each value says which key opens it.
//!
//! `bytea` columns store the envelope as is; `text`/`varchar` columns store
//! [`TEXT_PREFIX`] followed by its standard base64 (with padding), so a
//! RegionGuard ciphertext is recognisable in a text column.

use super::cipher::{NONCE_LEN, TAG_LEN};
use base64::Engine as _;

/// The only format so far.
pub const FORMAT_V1: u8 = 1;
/// Format version, mode, key version.
pub const HEADER_LEN: usize = 6;
/// Header and nonce.
pub const PREFIX_LEN: usize = HEADER_LEN + NONCE_LEN;
/// The shortest valid envelope: an empty plaintext.
pub const MIN_LEN: usize = PREFIX_LEN + TAG_LEN;
/// What starts the text form of an envelope.
pub const TEXT_PREFIX: &str = "rg1:";

/// How a value was encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Random nonce: equal plaintexts give different envelopes.
    Randomized,
    /// Nonce derived from the plaintext: equal plaintexts of one tenant and
    /// column (or equality group) give equal envelopes for one key version.
    Deterministic,
}

impl Mode {
    fn byte(self) -> u8 {
        match self {
            Mode::Randomized => 1,
            Mode::Deterministic => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Mode> {
        match b {
            1 => Some(Mode::Randomized),
            2 => Some(Mode::Deterministic),
            _ => None,
        }
    }
}

impl From<crate::config::Protection> for Mode {
    fn from(p: crate::config::Protection) -> Mode {
        match p {
            crate::config::Protection::Randomized => Mode::Randomized,
            crate::config::Protection::Deterministic => Mode::Deterministic,
        }
    }
}

/// The authenticated header of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub mode: Mode,
    pub key_version: u32,
}

impl Header {
    /// The header as stored (and as appended to the associated data).
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let v = self.key_version.to_be_bytes();
        [FORMAT_V1, self.mode.byte(), v[0], v[1], v[2], v[3]]
    }
}

/// A decoded envelope, borrowing the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub header: Header,
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub sealed: &'a [u8],
}

/// Why stored bytes are not an envelope. Messages never include the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{len} bytes is shorter than the {MIN_LEN}-byte minimum")]
    TooShort { len: usize },
    #[error("unknown envelope format {0}")]
    UnknownFormat(u8),
    #[error("unknown encryption mode {0}")]
    UnknownMode(u8),
    #[error("text value does not start with `{TEXT_PREFIX}`")]
    MissingTextPrefix,
    #[error("text value is not valid base64")]
    Base64,
}

/// Builds an envelope from its parts (the inverse of [`decode`]).
pub fn encode(header: Header, nonce: &[u8; NONCE_LEN], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + sealed.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(sealed);
    out
}

/// Reads the header of stored bytes without checking anything else: which
/// key version a value needs, before the key is loaded.
pub fn decode_header(bytes: &[u8]) -> Result<Header, EnvelopeError> {
    if bytes.len() < MIN_LEN {
        return Err(EnvelopeError::TooShort { len: bytes.len() });
    }
    if bytes[0] != FORMAT_V1 {
        return Err(EnvelopeError::UnknownFormat(bytes[0]));
    }
    let mode = Mode::from_byte(bytes[1]).ok_or(EnvelopeError::UnknownMode(bytes[1]))?;
    let key_version = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    Ok(Header { mode, key_version })
}

/// Splits stored bytes into header, nonce and sealed part. Never panics;
/// authenticity is checked later, when the envelope is opened.
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let header = decode_header(bytes)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[HEADER_LEN..PREFIX_LEN]);
    Ok(Envelope {
        header,
        nonce,
        sealed: &bytes[PREFIX_LEN..],
    })
}

/// The text form for `text`/`varchar` storage: `rg1:` + base64.
pub fn to_text(envelope: &[u8]) -> String {
    let mut out = String::with_capacity(TEXT_PREFIX.len() + envelope.len().div_ceil(3) * 4);
    out.push_str(TEXT_PREFIX);
    base64::engine::general_purpose::STANDARD.encode_string(envelope, &mut out);
    out
}

/// Whether a stored text value looks like an envelope's text form.
pub fn is_text_form(text: &[u8]) -> bool {
    text.starts_with(TEXT_PREFIX.as_bytes())
}

/// The envelope bytes of a text-form value (checked by [`decode`] later).
pub fn from_text(text: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let body = text
        .strip_prefix(TEXT_PREFIX.as_bytes())
        .ok_or(EnvelopeError::MissingTextPrefix)?;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| EnvelopeError::Base64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Randomized), Just(Mode::Deterministic)]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            mode in mode(),
            key_version in any::<u32>(),
            nonce in any::<[u8; 12]>(),
            sealed in proptest::collection::vec(any::<u8>(), TAG_LEN..300),
        ) {
            let header = Header { mode, key_version };
            let bytes = encode(header, &nonce, &sealed);
            prop_assert_eq!(bytes.len(), PREFIX_LEN + sealed.len());
            let env = decode(&bytes).unwrap();
            prop_assert_eq!(env.header, header);
            prop_assert_eq!(env.nonce, nonce);
            prop_assert_eq!(env.sealed, &sealed[..]);
            prop_assert_eq!(decode_header(&bytes).unwrap(), header);

            let text = to_text(&bytes);
            prop_assert!(text.starts_with(TEXT_PREFIX));
            prop_assert!(is_text_form(text.as_bytes()));
            prop_assert_eq!(from_text(text.as_bytes()).unwrap(), bytes);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let _ = from_text(&bytes);
        }
    }

    #[test]
    fn short_and_unknown_inputs_are_clear_errors() {
        assert_eq!(decode(&[]), Err(EnvelopeError::TooShort { len: 0 }));
        assert_eq!(
            decode(&[1; MIN_LEN - 1]),
            Err(EnvelopeError::TooShort { len: MIN_LEN - 1 })
        );
        let mut bytes = vec![0u8; MIN_LEN];
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(EnvelopeError::UnknownFormat(9)));
        bytes[0] = FORMAT_V1;
        bytes[1] = 3;
        assert_eq!(decode(&bytes), Err(EnvelopeError::UnknownMode(3)));
        bytes[1] = 1;
        assert!(decode(&bytes).is_ok());
        assert_eq!(from_text(b"hello"), Err(EnvelopeError::MissingTextPrefix));
        assert_eq!(from_text(b"rg1:***"), Err(EnvelopeError::Base64));
        let msg = EnvelopeError::TooShort { len: 3 }.to_string();
        assert!(msg.contains("34-byte minimum"), "{msg}");
    }

    #[test]
    fn header_layout_is_fixed() {
        let h = Header {
            mode: Mode::Deterministic,
            key_version: 0x0102_0304,
        };
        assert_eq!(h.to_bytes(), [1, 2, 1, 2, 3, 4]);
        let h = Header {
            mode: Mode::Randomized,
            key_version: 7,
        };
        assert_eq!(h.to_bytes(), [1, 1, 0, 0, 0, 7]);
    }
}
