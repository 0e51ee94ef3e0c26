//! Column encryption: cipher, ciphertext envelope and key hierarchy.
//!
//! - [`cipher`]: AES-256-GCM-SIV through aws-lc-rs.
//! - [`envelope`]: the versioned binary (and `rg1:` text) form stored in a
//!   classified column; its header is authenticated.
//! - [`aad`]: associated data binding a value to region, tenant and column
//!   (or equality group).
//! - [`kek`]: region root keys from the region's key source.
//! - [`data_key`]: per-tenant data keys, HKDF-derived subkeys, wrapping.
//! - [`store`]: `regionguard.data_keys` in each regional database.
//! - [`keyring`]: the cached facade the frontend calls.
//!
//! The layout and reasons are in docs/adr/0005-ciphertext-envelope-and-keys.md.
//! Nothing in this module logs or formats key material or plaintexts.

pub mod aad;
pub mod cipher;
pub mod data_key;
pub mod envelope;
mod error;
pub mod kek;
pub mod keyring;
pub mod rotation;
pub mod store;

#[cfg(test)]
mod tests;

pub use aad::Aad;
pub use envelope::{Header, Mode};
pub use error::{CryptoError, Place};
pub use kek::KekRing;
pub use keyring::{Keyring, TenantKeys};
pub use store::KeyState;
