//! Builds the token tables `src/tokens/bpe.rs` counts with, so that a
//! process can count tokens without building a tokenizer at start-up.
//!
//! Why: constructing tiktoken-rs's o200k_base `CoreBPE` (decoding ~200k
//! base64 lines into hash maps, compiling its regex) took ~130 ms of a
//! ~170 ms `tollgate plan`. Here the same vocabulary — taken from
//! tiktoken-rs itself, so there is one source of truth — is laid out once,
//! at build time, as a read-only hash table that the binary embeds
//! (`include_bytes!`) and reads in place: nothing to decode or allocate
//! before the first count.
//!
//! Layout of `OUT_DIR/<encoding>.tokens` (every integer u32 little-endian):
//!
//! ```text
//! magic "TGB1" | n (tokens) | slots (a power of two, > 2n)
//! starts[n + 1]   offsets of each token's bytes in `bytes` (sorted by rank)
//! ranks[n]        each token's rank
//! table[slots]    open addressing, linear probing: 0 = empty, else token index + 1,
//!                 placed at `hash(bytes) & (slots - 1)`
//! bytes           every token's bytes, concatenated
//! ```
//!
//! `hash` is FNV-1a 64 and must stay identical to `tokens::bpe::hash`;
//! a unit test looks every token up through the runtime code.

use std::collections::HashSet;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let out = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    write_table(
        &out.join("o200k_base.tokens"),
        &tiktoken_rs::o200k_base().expect("tiktoken-rs ships o200k_base"),
    );
    write_table(
        &out.join("cl100k_base.tokens"),
        &tiktoken_rs::cl100k_base().expect("tiktoken-rs ships cl100k_base"),
    );
}

/// FNV-1a, 64 bits. Keep in step with `src/tokens/bpe.rs`.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn write_table(path: &Path, bpe: &tiktoken_rs::CoreBPE) {
    // The special tokens ("<|endoftext|>" …) are never produced by ordinary
    // encoding: leave them out, or a literal "<|endoftext|>" in a prompt
    // would count as one token.
    let special: HashSet<u32> = bpe
        .special_tokens()
        .into_iter()
        .flat_map(|name| bpe.encode_with_special_tokens(name))
        .collect();
    // Ranks are dense from 0; stop after a long run of unknown ranks.
    let mut tokens: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut misses = 0;
    let mut rank = 0u32;
    while misses < 10_000 {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) if !special.contains(&rank) => {
                misses = 0;
                tokens.push((rank, bytes));
            }
            _ => misses += 1,
        }
        rank += 1;
    }
    assert!(tokens.len() > 50_000, "{}: too few tokens", path.display());

    let n = tokens.len();
    let slots = (2 * n + 1).next_power_of_two();
    let mask = slots - 1;
    let mut table = vec![0u32; slots];
    for (index, (_, bytes)) in tokens.iter().enumerate() {
        let mut slot = hash(bytes) as usize & mask;
        while table[slot] != 0 {
            slot = (slot + 1) & mask;
        }
        table[slot] = u32::try_from(index + 1).expect("fits");
    }

    let mut blob: Vec<u8> = Vec::new();
    let mut put = |v: usize| blob.extend_from_slice(&u32::try_from(v).expect("fits").to_le_bytes());
    put(u32::from_le_bytes(*b"TGB1") as usize);
    put(n);
    put(slots);
    let mut start = 0;
    for (_, bytes) in &tokens {
        put(start);
        start += bytes.len();
    }
    put(start);
    for (rank, _) in &tokens {
        put(*rank as usize);
    }
    for slot in &table {
        put(*slot as usize);
    }
    for (_, bytes) in &tokens {
        blob.extend_from_slice(bytes);
    }
    std::fs::write(path, blob).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
