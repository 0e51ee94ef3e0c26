//! Per-tenant data keys: generation, derivation, wrapping, and sealing
//! values into envelopes.
//!
//! A data key version is 32 random bytes. Nothing is encrypted with them
//! directly: HKDF-SHA256 derives two independent keys from them, under
//! distinct info labels, so the deterministic-nonce MAC and the cipher never
//! share a key:
//!
//! - the AES-256-GCM-SIV key (`regionguard.v1.aes-256-gcm-siv`);
//! - the HMAC-SHA256 key for deterministic nonces
//!   (`regionguard.v1.deterministic-nonce`).
//!
//! Deterministic nonce = first 12 bytes of
//! `HMAC-SHA256(nonce_key, header || binding || plaintext)`. The binding is
//! self-delimiting (length-prefixed) and the header has a fixed length, so
//! the MAC input is unambiguous; including the binding gives equal values
//! of different columns (or tenants) different nonces even before the AAD
//! separates them. Equal plaintexts of one tenant in one column or equality
//! group, under one key version, give equal envelopes.
//!
//! The raw 32 bytes are stored only wrapped: AES-256-GCM under the region's
//! root key with a random nonce, associated data
//! `lp("regionguard.wrap.v1") lp(region) lp(tenant) version kek_version`
//! (u32 big-endian each), so a wrapped key copied to another tenant, region,
//! data key version or root key version does not unwrap. Wrapped form:
//! `0x01 || nonce (12) || ciphertext (32) || tag (16)`, 61 bytes.

use super::aad::{canonical_tenant, push_field, Aad};
use super::cipher::{random_nonce, Cipher, KEY_LEN, NONCE_LEN, TAG_LEN};
use super::envelope::{Envelope, Header, Mode, PREFIX_LEN};
use super::kek::Kek;
use super::CryptoError;
use aws_lc_rs::aead::{Aad as LcAad, Nonce, AES_256_GCM_SIV};
use aws_lc_rs::{hkdf, hmac};
use zeroize::{Zeroize, Zeroizing};

const HKDF_SALT: &[u8] = b"regionguard.v1.data-key";
const INFO_CIPHER: &[u8] = b"regionguard.v1.aes-256-gcm-siv";
const INFO_NONCE: &[u8] = b"regionguard.v1.deterministic-nonce";
const WRAP_LABEL: &[u8] = b"regionguard.wrap.v1";
/// Format byte of a wrapped data key.
pub const WRAP_FORMAT_V1: u8 = 1;
/// Length of a wrapped data key.
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// Raw data key bytes, zeroized on drop.
pub type RawDataKey = Zeroizing<[u8; KEY_LEN]>;

/// 32 fresh random bytes for a new data key version.
pub fn generate() -> Result<RawDataKey, CryptoError> {
    let mut raw = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| CryptoError::Internal("random source"))?;
    Ok(raw)
}

/// One version of a tenant's data key, derived and ready to use. Holds no
/// raw key bytes: the derived keys live in aws-lc contexts, cleansed when
/// freed.
pub struct DataKey {
    version: u32,
    cipher: Cipher,
    nonce_key: hmac::Key,
}

impl DataKey {
    /// Derives the cipher and nonce keys of `version` from its raw bytes.
    pub fn derive(version: u32, raw: &[u8; KEY_LEN]) -> Result<DataKey, CryptoError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(raw);
        let mut cipher_key = Zeroizing::new([0u8; KEY_LEN]);
        prk.expand(&[INFO_CIPHER], &AES_256_GCM_SIV)
            .and_then(|okm| okm.fill(cipher_key.as_mut()))
            .map_err(|_| CryptoError::Internal("HKDF expand"))?;
        let nonce_key = prk
            .expand(&[INFO_NONCE], hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .map_err(|_| CryptoError::Internal("HKDF expand"))?;
        Ok(DataKey {
            version,
            cipher: Cipher::new(&cipher_key)?,
            nonce_key,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Encrypts `plaintext` for `aad` into a new binary envelope.
    pub fn seal(&self, mode: Mode, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.seal_into(mode, aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Appends the envelope of `plaintext` to `out` (say, straight into an
    /// outgoing message), allocating nothing when `out` has room. Room is
    /// reserved before the plaintext is copied in, so no reallocation can
    /// leave a copy of it behind; on error the appended bytes are wiped and
    /// `out` is as it was.
    pub fn seal_into(
        &self,
        mode: Mode,
        aad: &Aad,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let header = Header {
            mode,
            key_version: self.version,
        }
        .to_bytes();
        let nonce = match mode {
            Mode::Randomized => random_nonce()?,
            Mode::Deterministic => self.deterministic_nonce(&header, aad, plaintext),
        };
        let start = out.len();
        out.reserve(PREFIX_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let sealed = aad.with_header(&header, |ad| {
            self.cipher
                .seal_in_place(&nonce, ad, &mut out[start + PREFIX_LEN..])
        });
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                // The appended bytes may still hold plaintext.
                out[start..].zeroize();
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Decrypts an envelope sealed under this version into a new buffer,
    /// zeroized on drop. `Err(())` for any authentication failure; the
    /// caller names the place.
    #[allow(clippy::result_unit_err)]
    pub fn open(&self, aad: &Aad, envelope: &Envelope<'_>) -> Result<Zeroizing<Vec<u8>>, ()> {
        let mut buf = Zeroizing::new(Vec::new());
        self.open_into(aad, envelope, &mut buf)?;
        Ok(buf)
    }

    /// Decrypts into `out`, replacing its contents and reusing its capacity:
    /// the hot path keeps one scratch buffer per session instead of
    /// allocating (and wiping) a buffer per value. When `out` is too small
    /// it is replaced, the old buffer being zeroized as it drops. On failure
    /// `out` is left empty.
    #[allow(clippy::result_unit_err)]
    pub fn open_into(
        &self,
        aad: &Aad,
        envelope: &Envelope<'_>,
        out: &mut Zeroizing<Vec<u8>>,
    ) -> Result<(), ()> {
        let need = envelope.sealed.len();
        if out.capacity() < need {
            *out = Zeroizing::new(Vec::with_capacity(need));
        }
        out.clear();
        out.extend_from_slice(envelope.sealed);
        let header = envelope.header.to_bytes();
        let opened = aad.with_header(&header, |ad| {
            self.cipher.open_in_place(&envelope.nonce, ad, out)
        });
        match opened {
            Ok(len) => {
                out.truncate(len);
                Ok(())
            }
            Err(()) => {
                out.zeroize();
                Err(())
            }
        }
    }

    fn deterministic_nonce(
        &self,
        header: &[u8; super::envelope::HEADER_LEN],
        aad: &Aad,
        plaintext: &[u8],
    ) -> [u8; NONCE_LEN] {
        let mut ctx = hmac::Context::with_key(&self.nonce_key);
        ctx.update(header);
        ctx.update(aad.binding());
        ctx.update(plaintext);
        let tag = ctx.sign();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        nonce
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(version {}, keys hidden)", self.version)
    }
}

fn wrap_aad(region: &str, tenant: &str, version: u32, kek_version: u32) -> Vec<u8> {
    let tenant = canonical_tenant(tenant);
    let mut ad = Vec::with_capacity(3 * 4 + WRAP_LABEL.len() + region.len() + tenant.len() + 8);
    push_field(&mut ad, WRAP_LABEL);
    push_field(&mut ad, region.as_bytes());
    push_field(&mut ad, tenant.as_bytes());
    ad.extend_from_slice(&version.to_be_bytes());
    ad.extend_from_slice(&kek_version.to_be_bytes());
    ad
}

/// Wraps a data key under the region's root key `kek` (see the module doc).
pub fn wrap(
    kek: &Kek,
    region: &str,
    tenant: &str,
    version: u32,
    raw: &[u8; KEY_LEN],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_nonce()?;
    let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
    out.push(WRAP_FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(raw);
    let ad = wrap_aad(region, tenant, version, kek.version());
    let tag = kek
        .aead()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            LcAad::from(&ad),
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Internal("AES-256-GCM wrap"))?;
    out.extend_from_slice(tag.as_ref());
    // Now ciphertext only; hand it out without the zeroizing wrapper.
    Ok(std::mem::take(&mut *out))
}

/// Unwraps a data key stored for (`region`, `tenant`, `version`) under the
/// root key `kek`. Any mismatch — another root key, a row edited or moved
/// to another tenant or version — is [`CryptoError::Unwrap`].
pub fn unwrap(
    kek: &Kek,
    region: &str,
    tenant: &str,
    version: u32,
    wrapped: &[u8],
) -> Result<RawDataKey, CryptoError> {
    let fail = || CryptoError::Unwrap {
        region: region.to_string(),
        version,
        kek_version: kek.version(),
    };
    if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_FORMAT_V1 {
        return Err(fail());
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
    let mut buf = Zeroizing::new(wrapped[1 + NONCE_LEN..].to_vec());
    let ad = wrap_aad(region, tenant, version, kek.version());
    let plain = kek
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            LcAad::from(&ad),
            &mut buf,
        )
        .map_err(|_| fail())?;
    let mut raw = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return Err(fail());
    }
    raw.copy_from_slice(plain);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::decode;

    fn kek(version: u32, byte: u8) -> Kek {
        Kek::new(version, &[byte; 32]).unwrap()
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let k = kek(1, 9);
        let raw = generate().unwrap();
        let wrapped = wrap(&k, "eu", "acme", 1, &raw).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert!(!wrapped.windows(32).any(|w| w == &raw[..]));
        assert_eq!(*unwrap(&k, "eu", "acme", 1, &wrapped).unwrap(), *raw);
        // Another tenant, region, version, root key version or root key.
        assert!(unwrap(&k, "eu", "globex", 1, &wrapped).is_err());
        assert!(unwrap(&k, "us", "acme", 1, &wrapped).is_err());
        assert!(unwrap(&k, "eu", "acme", 2, &wrapped).is_err());
        assert!(unwrap(&kek(2, 9), "eu", "acme", 1, &wrapped).is_err());
        let err = unwrap(&kek(1, 8), "eu", "acme", 1, &wrapped).unwrap_err();
        assert_eq!(err.sqlstate(), "XX001");
        assert!(err.to_string().contains("region eu"), "{err}");
        assert!(unwrap(&k, "eu", "acme", 1, &wrapped[..60]).is_err());
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(unwrap(&k, "eu", "acme", 1, &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn derived_keys_differ_from_the_raw_key_and_each_other() {
        let raw = [5u8; 32];
        let dk = DataKey::derive(3, &raw).unwrap();
        let aad = Aad::column("eu", "acme", "t", "c");
        let env = dk.seal(Mode::Randomized, &aad, b"x").unwrap();
        // The raw bytes used directly as the cipher key do not open it.
        let direct = Cipher::new(&raw).unwrap();
        let e = decode(&env).unwrap();
        let mut buf = e.sealed.to_vec();
        let ad = aad.with_header(&e.header.to_bytes(), |a| a.to_vec());
        assert!(direct.open_in_place(&e.nonce, &ad, &mut buf).is_err());
        assert_eq!(&*dk.open(&aad, &e).unwrap(), b"x");
        assert!(format!("{dk:?}").contains("version 3"));
    }
}
