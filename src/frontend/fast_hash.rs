//! A fast, unkeyed hasher (FxHash, the one rustc uses) for a session's own
//! maps keyed by names its client picks (prepared statements, portals).
//! SipHash costs more than the rest of a lookup for such short keys, and
//! the keyed hash's protection against colliding keys buys nothing here:
//! a client choosing colliding names slows down only its own session.

use std::hash::{BuildHasherDefault, Hasher};

pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let mut rest = chunks.remainder();
        if rest.len() >= 4 {
            self.add(u64::from(u32::from_le_bytes([
                rest[0], rest[1], rest[2], rest[3],
            ])));
            rest = &rest[4..];
        }
        for &b in rest {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn distinguishes_names() {
        let mut m: HashMap<String, usize, FxBuildHasher> = HashMap::default();
        for i in 0..1000 {
            m.insert(format!("s{i}"), i);
        }
        m.insert(String::new(), 1000);
        assert_eq!(m.len(), 1001);
        assert_eq!(m.get("s417"), Some(&417));
        assert_eq!(m.get(""), Some(&1000));
        assert_eq!(m.get("s1000"), None);
    }
}
