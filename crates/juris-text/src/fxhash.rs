//! A small, fast, non-cryptographic hasher (the multiply–rotate "Fx" hash of rustc) for
//! tables keyed by short words: the per-thread stem memo, the stopword sets and the index's
//! term dictionary. For such keys the standard SipHash cost more than the table probe itself
//! (callgrind, scifact queries). Not DoS-resistant: use it only for tables whose contents
//! an attacker cannot grow without bound. Its low bits are weak; take the high bits of
//! [`hash_bytes`] to index a power-of-two table.

use std::hash::{BuildHasherDefault, Hasher};

/// Fx hasher state.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

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
            // Always 8 bytes (`chunks_exact`).
            self.add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
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

/// `BuildHasher` for `HashMap`/`HashSet` with [`FxHasher`].
pub type FxBuild = BuildHasherDefault<FxHasher>;

/// The Fx hash of `bytes` (as [`FxHasher::write`] computes it).
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(bytes);
    h.finish()
}
