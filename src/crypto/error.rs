//! Errors of the crypto layer and the SQLSTATE each one becomes.
//!
//! Messages name the region, table and column involved — never a value, a
//! plaintext, key material or a tenant id (tenant ids are customer data as
//! far as error messages go, as in routing's refusals).

use std::fmt;

/// Where a ciphertext belongs, for error messages: region and the column
/// (or equality group) its associated data binds it to. No tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub region: String,
    /// `table.column`, or `equality group <name>`.
    pub target: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in region {}", self.target, self.region)
    }
}

/// Everything that can go wrong while loading keys, sealing or opening.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The envelope authenticated under none of the tenant's keys: it was
    /// altered, or copied from another tenant, table, column or region.
    #[error("cannot decrypt a value of {place}: it fails its integrity check (altered, or copied from another tenant, table or column)")]
    Integrity { place: Place },

    /// The stored value is not a RegionGuard ciphertext at all (too short,
    /// unknown format or mode, bad base64): typically plaintext written to
    /// the column directly in the database.
    #[error("cannot decrypt a value of {place}: it is not a RegionGuard ciphertext ({reason})")]
    Malformed { place: Place, reason: String },

    /// The envelope's key version was destroyed (crypto-shredding).
    #[error("cannot decrypt a value of {place}: the tenant's data keys were destroyed (crypto-shredded); the value is unrecoverable")]
    Destroyed { place: Place, version: u32 },

    /// The envelope names a key version the region's key table does not
    /// hold for the tenant (or the tenant has no keys at all).
    #[error("cannot decrypt a value of {place}: its data key version {version} does not exist for the tenant")]
    UnknownKeyVersion { place: Place, version: u32 },

    /// Sealing needs an active data key and the tenant has none (only
    /// destroyed or decrypt-only versions, or keys were loaded read-only).
    #[error("cannot encrypt for region {region}: the tenant has no active data key{}", if *destroyed { " (its keys were destroyed)" } else { "" })]
    NoActiveKey { region: String, destroyed: bool },

    /// A stored data key did not unwrap under the region's root key: the
    /// configured root key is not the one that wrapped it, or the row was
    /// altered or moved to another tenant or version.
    #[error("region {region}: data key version {version} does not unwrap with root key version {kek_version} (wrong root key for this region, or the key row was altered or moved)")]
    Unwrap {
        region: String,
        version: u32,
        kek_version: u32,
    },

    /// A stored data key was wrapped by a root key version this proxy was
    /// not given.
    #[error("region {region}: data key version {version} is wrapped by root key version {kek_version}, which the region's key source does not provide")]
    MissingKek {
        region: String,
        version: u32,
        kek_version: u32,
    },

    /// The region's key store (its Postgres) cannot be reached.
    #[error("region {region} is unavailable: its key store cannot be reached ({reason})")]
    StoreUnavailable { region: String, reason: String },

    /// The key store answered with an error (permissions, a malformed row).
    #[error("region {region}: key store error: {reason}")]
    Store { region: String, reason: String },

    /// This proxy holds no root key for the region (not configured with a
    /// key source, or not a region it serves).
    #[error("region {region} has no root key configured on this proxy")]
    NoRegionKey { region: String },

    /// The region's root key source is unusable: a startup error.
    #[error("regions.{region}.key: {reason}")]
    KeySource { region: String, reason: String },

    /// The crypto library failed where it should not (random source, key
    /// setup). Never carries data.
    #[error("internal crypto failure: {0}")]
    Internal(&'static str),
}

impl CryptoError {
    /// The SQLSTATE a client gets for this error.
    ///
    /// Anything that means "this stored value cannot be turned back into
    /// plaintext" is `XX001` (data_corrupted), so a client never mistakes it
    /// for NULL or a transient failure; an unreachable key store is `08006`
    /// like an unreachable region.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CryptoError::Integrity { .. }
            | CryptoError::Malformed { .. }
            | CryptoError::Destroyed { .. }
            | CryptoError::UnknownKeyVersion { .. }
            | CryptoError::Unwrap { .. }
            | CryptoError::MissingKek { .. } => "XX001",
            CryptoError::StoreUnavailable { .. } => "08006",
            CryptoError::NoActiveKey { .. } | CryptoError::NoRegionKey { .. } => "55000",
            CryptoError::Store { .. } | CryptoError::KeySource { .. } => "58000",
            CryptoError::Internal(_) => "XX000",
        }
    }

    /// A hint for the ErrorResponse, saying what a person can do.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            CryptoError::Integrity { .. } => {
                "Ciphertexts are bound to their region, tenant, table and column; write the value again through RegionGuard instead of copying it in the database."
            }
            CryptoError::Malformed { .. } => {
                "Classified columns must only be written through RegionGuard."
            }
            CryptoError::Destroyed { .. } => {
                "The tenant was erased; delete its remaining rows."
            }
            CryptoError::UnknownKeyVersion { .. } => {
                "The key row may have been deleted from regionguard.data_keys, or the value copied from another tenant."
            }
            CryptoError::NoActiveKey { .. } => {
                "Create or rotate the tenant's data key with regionguard ctl."
            }
            CryptoError::Unwrap { .. } | CryptoError::MissingKek { .. } => {
                "Check that the region's key source provides the root key versions that wrapped its data keys."
            }
            CryptoError::StoreUnavailable { .. } => "Retry when the region is back.",
            _ => return None,
        })
    }

    /// Whether the key store connection was lost (worth one reconnect).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CryptoError::StoreUnavailable { .. })
    }
}
