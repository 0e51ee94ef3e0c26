//! AES-256-GCM-SIV (RFC 8452) through aws-lc-rs.
//!
//! GCM-SIV because it is nonce-misuse resistant: a repeated nonce only
//! reveals that two (nonce, aad, plaintext) triples were equal, which is
//! exactly what deterministic mode wants to reveal, and a random-nonce
//! collision does not break confidentiality as it would with GCM.
//!
//! The expanded key lives inside aws-lc's AEAD context, which aws-lc
//! cleanses when it is freed; callers keep their copy of the raw key in
//! [`zeroize::Zeroizing`] and drop it as soon as the cipher is built.

use super::CryptoError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};

/// Key length of AES-256-GCM-SIV.
pub const KEY_LEN: usize = 32;
/// Nonce length (96 bits).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;

/// One AES-256-GCM-SIV key, ready to seal and open.
pub struct Cipher {
    key: LessSafeKey,
}

impl Cipher {
    /// Builds the cipher from raw key bytes (copied into aws-lc; the caller
    /// zeroizes its own copy).
    pub fn new(key: &[u8; KEY_LEN]) -> Result<Cipher, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, key)
            .map_err(|_| CryptoError::Internal("AES-256-GCM-SIV key setup"))?;
        Ok(Cipher {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypts `in_out` in place and returns the tag. `aad` is
    /// authenticated, not encrypted.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .map_err(|_| CryptoError::Internal("AES-256-GCM-SIV seal"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Convenience for tests and benches: `plaintext` sealed into a new
    /// vector of ciphertext followed by the tag.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `ciphertext || tag` in place; on success returns the length
    /// of the plaintext now at the start of `in_out`. Any mismatch of key,
    /// nonce, aad or a single bit of the input is `Err(())`.
    #[allow(clippy::result_unit_err)]
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, ()> {
        self.key
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
            .map(|plain| plain.len())
            .map_err(|_| ())
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(AES-256-GCM-SIV, key hidden)")
    }
}

/// Random bytes fetched from aws-lc's DRBG per refill of a thread's pool.
const NONCE_POOL: usize = 64 * NONCE_LEN;

thread_local! {
    /// Random bytes not yet handed out, and how many of them are left.
    static POOL: std::cell::RefCell<([u8; NONCE_POOL], usize)> =
        const { std::cell::RefCell::new(([0u8; NONCE_POOL], 0)) };
}

/// A random 96-bit nonce from aws-lc's DRBG.
///
/// One `RAND_bytes` call costs more than sealing a short value (aws-lc
/// checks for forks and mixes in fresh entropy on every call), so each
/// thread draws 64 nonces' worth at once and hands them out in order; every
/// byte is used once. Nonces are public (they are stored in the envelope),
/// so holding future ones in memory reveals nothing, and the proxy never
/// forks after start (key commands exec at once), so no two processes share
/// a pool.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, left) = &mut *pool;
        if *left < NONCE_LEN {
            aws_lc_rs::rand::fill(bytes).map_err(|_| CryptoError::Internal("random source"))?;
            *left = NONCE_POOL;
        }
        let start = NONCE_POOL - *left;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[start..start + NONCE_LEN]);
        *left -= NONCE_LEN;
        Ok(nonce)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
    use proptest::prelude::*;

    fn reference(key: &[u8; 32]) -> aes_gcm_siv::Aes256GcmSiv {
        aes_gcm_siv::Aes256GcmSiv::new_from_slice(key).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// aws-lc-rs and the RustCrypto implementation agree byte for byte,
        /// and each opens what the other sealed.
        #[test]
        fn matches_the_aes_gcm_siv_crate(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..80),
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let ours = Cipher::new(&key).unwrap();
            let theirs = reference(&key);
            let n = aes_gcm_siv::Nonce::from_slice(&nonce);

            let sealed = ours.seal(&nonce, &aad, &plaintext).unwrap();
            let expected = theirs
                .encrypt(n, Payload { msg: &plaintext, aad: &aad })
                .unwrap();
            prop_assert_eq!(&sealed, &expected);

            // Theirs opens ours.
            let opened = theirs.decrypt(n, Payload { msg: &sealed, aad: &aad }).unwrap();
            prop_assert_eq!(&opened, &plaintext);
            // Ours opens theirs.
            let mut buf = expected.clone();
            let len = ours.open_in_place(&nonce, &aad, &mut buf).unwrap();
            prop_assert_eq!(&buf[..len], &plaintext[..]);
        }
    }

    #[test]
    fn wrong_key_nonce_or_aad_fails() {
        let key = [7u8; 32];
        let cipher = Cipher::new(&key).unwrap();
        let sealed = cipher.seal(&[1; 12], b"aad", b"hello").unwrap();
        let other = Cipher::new(&[8u8; 32]).unwrap();
        assert!(other
            .open_in_place(&[1; 12], b"aad", &mut sealed.clone())
            .is_err());
        assert!(cipher
            .open_in_place(&[2; 12], b"aad", &mut sealed.clone())
            .is_err());
        assert!(cipher
            .open_in_place(&[1; 12], b"aaD", &mut sealed.clone())
            .is_err());
        assert!(cipher
            .open_in_place(&[1; 12], b"aad", &mut sealed[..15].to_vec())
            .is_err());
        let mut ok = sealed.clone();
        assert_eq!(cipher.open_in_place(&[1; 12], b"aad", &mut ok), Ok(5));
    }

    #[test]
    fn random_nonces_do_not_repeat_across_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(NONCE_POOL / NONCE_LEN) * 5 + 3 {
            assert!(seen.insert(random_nonce().unwrap()), "a nonce repeated");
        }
        // Another thread has its own pool.
        let other = std::thread::spawn(|| random_nonce().unwrap())
            .join()
            .unwrap();
        assert!(!seen.contains(&other));
    }

    #[test]
    fn debug_hides_the_key() {
        let cipher = Cipher::new(&[0x41; 32]).unwrap();
        assert!(!format!("{cipher:?}").contains("41"));
    }
}
