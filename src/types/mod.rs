//! Logical types of classified columns: what the application sees, while
//! the database stores ciphertext. The canonical plaintext that gets
//! encrypted is the Postgres *binary* encoding of the logical type, so a value
//! sent in text format and the same value sent in binary format encrypt to
//! the same bytes (deterministic mode relies on this).

mod logical;

pub use logical::LogicalType;
