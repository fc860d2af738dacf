//! A fast hasher for keys that are not chosen by an adversary: the broker's store ids
//! (message ids, queue ids, sequence numbers), and the per-connection maps of channel
//! numbers and consumer tags on both sides of a connection. A peer choosing colliding
//! channel numbers or tags only slows its own connection, so SipHash's protection
//! against crafted collisions buys nothing there; it dominated the broker's replay of a
//! large log and showed in every frame's channel look-up in the broker and the client.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Feeds `bytes` to `f` as little-endian 8-octet words, the last one zero-padded: how an
/// integer hasher takes keys that are not integers.
pub fn for_each_word(bytes: &[u8], mut f: impl FnMut(u64)) {
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(chunk) {
            *w = *b;
        }
        f(u64::from_le_bytes(word));
    }
}

/// The multiply-rotate hash of rustc's `FxHasher`, for integer keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for_each_word(bytes, |word| self.write_u64(word));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A `HashSet` with [`IdHasher`].
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_table() {
        let mut m: IdMap<(u64, u64), u64> = IdMap::default();
        for i in 0..10_000u64 {
            m.insert((1, i), i);
        }
        assert!((0..10_000u64).all(|i| m[&(1, i)] == i));
        let hashes: IdSet<u64> = (0..10_000u64)
            .map(|i| {
                let mut h = IdHasher::default();
                h.write_u64(i);
                h.finish() >> 57
            })
            .collect();
        // hashbrown picks buckets by the low bits and control bytes by the top 7.
        assert!(hashes.len() > 100, "top bits barely vary: {}", hashes.len());
    }
}
