//! The mutation engine shared by every target: byte-level mutations (flip, insert, delete,
//! truncate, duplicate, overwrite with an interesting integer) and text-level ones for the
//! JSON/TOML/YAML/Jinja targets (numbers replaced by extremes, strings by long or
//! control-character strings, brackets nested deeply). Seeded, so a campaign is reproducible
//! from `(target, seed, iteration)`.

use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Integers that sit on the edges parsers get wrong: zero, one, powers of two around the
/// widths, and the maxima (as little-endian u64 / u32 / u16 / u8 overwrites).
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    7,
    8,
    255,
    4096,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Replacement tokens for the text mutations.
const TEXT_TOKENS: [&str; 16] = [
    "-1",
    "0",
    "1e309",
    "-1e309",
    "NaN",
    "18446744073709551616",
    "9223372036854775807",
    "null",
    "true",
    "\"\"",
    "\"\\u0000\"",
    "\"\u{1}\u{7f}\"",
    "[]",
    "{}",
    "\"../../etc/passwd\"",
    "\"/dev/zero\"",
];

/// A seeded source of mutations.
#[derive(Debug)]
pub struct Mutator {
    rng: ChaCha8Rng,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A random index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    /// Pick one of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        items.choose(&mut self.rng).expect("non-empty choice")
    }

    /// Apply 1–4 byte-level mutations to `data`, or (for text targets, half the time) text ones.
    pub fn mutate(&mut self, data: &mut Vec<u8>, text: bool) {
        let rounds = 1 + self.below(4);
        for _ in 0..rounds {
            if text && self.rng.random_bool(0.5) {
                self.mutate_text(data);
            } else {
                self.mutate_bytes(data);
            }
        }
    }

    fn mutate_bytes(&mut self, data: &mut Vec<u8>) {
        let len = data.len();
        match self.below(7) {
            // Flip one bit.
            0 if len > 0 => {
                let i = self.below(len);
                data[i] ^= 1 << self.below(8);
            }
            // Overwrite with an interesting integer (a length, a count, an offset).
            1 if len > 0 => {
                let value = *self.pick(&INTERESTING);
                let width = *self.pick(&[1usize, 2, 4, 8]);
                let at = self.below(len);
                for (k, byte) in value.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(slot) = data.get_mut(at + k) {
                        *slot = *byte;
                    }
                }
            }
            // Insert random bytes.
            2 => {
                let at = self.below(len + 1);
                let n = 1 + self.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                data.splice(at..at, bytes);
            }
            // Delete a range.
            3 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below((len - at).min(64));
                data.drain(at..at + n);
            }
            // Truncate.
            4 => data.truncate(self.below(len + 1)),
            // Duplicate a chunk in place (repeated records, repeated keys).
            5 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below((len - at).min(256));
                let chunk = data[at..at + n].to_vec();
                data.splice(at..at, chunk);
            }
            // Random byte.
            _ if len > 0 => {
                let i = self.below(len);
                data[i] = self.rng.random();
            }
            _ => data.push(self.rng.random()),
        }
    }

    fn mutate_text(&mut self, data: &mut Vec<u8>) {
        let len = data.len();
        // Spans to replace: a run of digits, or a quoted string.
        let at = self.below(len + 1);
        match self.below(4) {
            0 => {
                // Replace the number at or after `at` by an extreme one.
                if let Some(start) = data[at..].iter().position(u8::is_ascii_digit) {
                    let start = at + start;
                    let end = data[start..]
                        .iter()
                        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
                        .map_or(data.len(), |e| start + e);
                    let token = self.pick(&TEXT_TOKENS).as_bytes().to_vec();
                    data.splice(start..end, token);
                }
            }
            1 => {
                // Replace the next quoted string's content.
                if let Some(open) = data[at..].iter().position(|&b| b == b'"') {
                    let open = at + open + 1;
                    if let Some(close) = data
                        .get(open..)
                        .and_then(|r| r.iter().position(|&b| b == b'"'))
                    {
                        let close = open + close;
                        let content: Vec<u8> = match self.below(3) {
                            0 => b"\x01\x1b[2J\x7f".to_vec(),
                            1 => vec![b'a'; 1 + self.below(70_000)],
                            _ => b"../../../../etc/passwd".to_vec(),
                        };
                        data.splice(open..close, content);
                    }
                }
            }
            2 => {
                // Deep nesting.
                let depth = 1 + self.below(2_000);
                let (open, close) = *self.pick(&[(b'[', b']'), (b'{', b'}'), (b'(', b')')]);
                let mut nest = vec![open; depth];
                nest.extend(std::iter::repeat_n(close, depth));
                data.splice(at..at, nest);
            }
            _ => {
                let token = self.pick(&TEXT_TOKENS).as_bytes().to_vec();
                data.splice(at..at, token);
            }
        }
    }

    /// A fresh random seed for a child generator.
    pub fn next_seed(&mut self) -> u64 {
        self.rng.next_u64()
    }
}
