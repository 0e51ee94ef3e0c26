//! SCRAM-SHA-256 server side (placeholder during bring-up).

/// A parsed SCRAM-SHA-256 verifier.
pub struct Verifier;

impl Verifier {
    pub fn parse(s: &str) -> Result<Verifier, String> {
        if s.starts_with("SCRAM-SHA-256$") {
            Ok(Verifier)
        } else {
            Err("not a SCRAM-SHA-256 verifier".into())
        }
    }
}
