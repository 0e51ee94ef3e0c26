//! SCRAM-SHA-256 server side (RFC 5802/7677), as Postgres does it.
//!
//! Written on aws-lc-rs primitives rather than pgwire's `ScramServerAuth`
//! because that one is bound to pgwire's server API, which the proxy does not
//! use (see docs/adr/0002-own-framing-and-auth.md). Verifiers are the ones
//! Postgres stores in `pg_authid`, so existing hashes can be reused.

use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::sync::OnceLock;

/// A stored SCRAM-SHA-256 verifier:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// A verifier string that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not a SCRAM-SHA-256 verifier ({0}); expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> as printed by `regionguard hash-password`")]
pub struct VerifierError(&'static str);

impl Verifier {
    pub fn parse(s: &str) -> Result<Verifier, VerifierError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(VerifierError("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(VerifierError("missing `$` before the keys"))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or(VerifierError("missing `:` between iterations and salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(VerifierError("missing `:` between StoredKey and ServerKey"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| VerifierError("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(VerifierError("iteration count is zero"));
        }
        let decode = |v: &str, what| B64.decode(v).map_err(|_| VerifierError(what));
        let salt = decode(salt, "salt is not base64")?;
        let stored_key = decode(stored, "StoredKey is not base64")?;
        let server_key = decode(server, "ServerKey is not base64")?;
        if stored_key.len() != 32 || server_key.len() != 32 {
            return Err(VerifierError("keys must be 32 bytes"));
        }
        Ok(Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// A verifier for a user that does not exist, so that a probe cannot tell
    /// unknown users from wrong passwords: its salt is stable per user name
    /// (as in Postgres) and no proof can match it.
    pub fn mock(user: &str) -> Verifier {
        static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            let mut s = [0u8; 32];
            if rand::fill(&mut s).is_err() {
                // The mock only has to be unguessable; without randomness it
                // still cannot authenticate anyone.
                s = [0x5a; 32];
            }
            s
        });
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let salt = hmac::sign(&key, user.as_bytes()).as_ref()[..16].to_vec();
        Verifier {
            iterations: 4096,
            salt,
            stored_key: vec![0; 32],
            server_key: vec![0; 32],
        }
    }
}

/// Why a SCRAM exchange failed. `InvalidProof` is the wrong-password case;
/// the rest are malformed exchanges.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported by this server")]
    ChannelBinding,
    #[error("password authentication failed")]
    InvalidProof,
}

/// The server's state between its first message and the client's proof.
pub struct ScramServer {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Handles the client-first message; returns the server-first message.
    pub fn start(verifier: Verifier, client_first: &[u8]) -> Result<(Self, Vec<u8>), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cbind, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let gs2_header = format!("{cbind},{authzid},");
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(n) = attr.strip_prefix("r=") {
                client_nonce = Some(n);
            } else if attr.starts_with("m=") {
                return Err(ScramError::Malformed("unsupported mandatory extension"));
            }
        }
        let client_nonce = client_nonce.ok_or(ScramError::Malformed("missing nonce"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("invalid nonce"));
        }
        let mut server_nonce = [0u8; 18];
        rand::fill(&mut server_nonce).map_err(|_| ScramError::Malformed("no randomness"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        Ok((
            ScramServer {
                verifier,
                gs2_header,
                client_first_bare: bare.to_string(),
                server_first,
                nonce,
            },
            reply,
        ))
    }

    /// Checks the client-final message; returns the server-final message
    /// (`v=<ServerSignature>`) when the proof is right.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let channel = channel.ok_or(ScramError::Malformed("missing channel binding"))?;
        let channel = B64
            .decode(channel)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if channel != self.gs2_header.as_bytes() {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let stored = hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.stored_key);
        let client_signature = hmac::sign(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let derived = digest::digest(&digest::SHA256, &client_key);
        constant_time::verify_slices_are_equal(derived.as_ref(), &self.verifier.stored_key)
            .map_err(|_| ScramError::InvalidProof)?;
        let server = hmac::Key::new(hmac::HMAC_SHA256, &self.verifier.server_key);
        let server_signature = hmac::sign(&server, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature.as_ref())).into_bytes())
    }
}

/// A new verifier for `password`, in Postgres's format.
pub fn hash_password(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(verifier: &str, password: &str) -> Result<(), ScramError> {
        let v = Verifier::parse(verifier).unwrap();
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(v, client.message())?;
        client.update(&first).unwrap();
        let last = server.finish(client.message())?;
        client.finish(&last).unwrap();
        Ok(())
    }

    #[test]
    fn accepts_the_right_password_and_client_checks_server() {
        let v = hash_password("correct horse");
        exchange(&v, "correct horse").unwrap();
    }

    #[test]
    fn refuses_a_wrong_password() {
        let v = hash_password("correct horse");
        assert_eq!(exchange(&v, "battery"), Err(ScramError::InvalidProof));
    }

    #[test]
    fn mock_verifier_never_authenticates() {
        let v = Verifier::mock("nobody");
        let mut client = ScramSha256::new(b"", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(v, client.message()).unwrap();
        client.update(&first).unwrap();
        assert_eq!(
            server.finish(client.message()),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn rejects_malformed_verifiers_and_messages() {
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$x:abc$a:b").is_err());
        let v = Verifier::parse(&hash_password("p")).unwrap();
        assert!(ScramServer::start(v.clone(), b"garbage").is_err());
        assert_eq!(
            ScramServer::start(v, b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
    }
}
