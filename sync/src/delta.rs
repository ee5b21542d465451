//! Deltas and compression: fast_rsync signatures and deltas, zstd for
//! literal data, and the limits that keep a hostile peer from exhausting
//! memory.

use std::io::Read;

use fast_rsync::{Signature, SignatureOptions};

/// Files smaller than this are sent whole: a signature round trip costs
/// more than the file.
pub const MIN_DELTA_BASIS: u64 = 1024;

/// Files larger than this are sent whole, streamed: a delta needs both
/// versions in memory on each side.
pub const MAX_DELTA_FILE: u64 = 256 << 20;

/// Bytes of MD4 kept per block. The result is verified with blake3
/// anyway; 8 bytes keeps signatures small with collisions negligible.
const STRONG_LEN: u32 = 8;

/// Block size for a file of `len` bytes, as rsync picks it: about the
/// square root, so signature size and delta granularity grow together.
pub fn block_size(len: u64) -> u32 {
    let root = (len as f64).sqrt() as u64;
    let rounded = root.div_ceil(8) * 8;
    rounded.clamp(512, 128 << 10) as u32
}

/// The signature the agent sends for its copy of a file whose new size
/// will be `new_len`.
pub fn signature(basis: &[u8], new_len: u64) -> Vec<u8> {
    let opts = SignatureOptions {
        block_size: block_size(new_len.max(basis.len() as u64)),
        crypto_hash_size: STRONG_LEN,
    };
    Signature::calculate(basis, opts).into_serialized()
}

/// Why a delta could not be made or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// A signature that does not parse or has absurd parameters.
    #[error("invalid signature: {0}")]
    Signature(String),
    /// A delta that does not apply or would exceed the announced size.
    #[error("invalid delta: {0}")]
    Apply(String),
    /// zstd data that does not decode or decodes past the limit.
    #[error("invalid compressed data: {0}")]
    Decompress(String),
}

/// The server's side: a delta from the agent's signature to `data`.
pub fn diff(signature: Vec<u8>, data: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let sig =
        Signature::deserialize(signature).map_err(|e| DeltaError::Signature(e.to_string()))?;
    // fast_rsync asserts on nothing here, but a zero block size from a
    // hostile agent would make it loop; refuse it up front.
    let raw = sig.serialized();
    let block = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    if block == 0 || block > 16 << 20 {
        return Err(DeltaError::Signature(format!("block size {block}")));
    }
    let mut out = Vec::with_capacity(data.len() / 8 + 64);
    fast_rsync::diff(&sig.index(), data, &mut out)
        .map_err(|e| DeltaError::Signature(e.to_string()))?;
    Ok(out)
}

/// The agent's side: rebuilds the new content from its copy and a delta,
/// refusing to produce more than `size` bytes.
pub fn apply(basis: &[u8], delta: &[u8], size: u64) -> Result<Vec<u8>, DeltaError> {
    let size = usize::try_from(size).map_err(|_| DeltaError::Apply("size too large".into()))?;
    let mut out = Vec::with_capacity(size);
    fast_rsync::apply_limited(basis, delta, &mut out, size)
        .map_err(|e| DeltaError::Apply(e.to_string()))?;
    Ok(out)
}

/// Compresses a whole buffer.
pub fn compress(data: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(data, level).unwrap_or_else(|_| data.to_vec())
}

/// Decompresses, refusing output past `limit` bytes.
pub fn decompress(data: &[u8], limit: u64) -> Result<Vec<u8>, DeltaError> {
    let mut dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| DeltaError::Decompress(e.to_string()))?;
    let mut out = Vec::new();
    (&mut dec)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| DeltaError::Decompress(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(DeltaError::Decompress(format!(
            "output exceeds the announced {limit} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_of_a_small_edit_is_small_and_exact() {
        let old: Vec<u8> = (0..200_000u32)
            .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
            .collect();
        let mut new = old.clone();
        new[400_000..401_000].fill(7);
        let sig = signature(&old, new.len() as u64);
        let delta = diff(sig, &new).unwrap();
        assert!(delta.len() < 8_000, "delta {} bytes", delta.len());
        assert_eq!(apply(&old, &delta, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn apply_refuses_output_past_the_size() {
        let old = vec![1u8; 10_000];
        let new = vec![2u8; 10_000];
        let delta = diff(signature(&old, 10_000), &new).unwrap();
        assert!(apply(&old, &delta, 9_999).is_err());
    }

    #[test]
    fn garbage_signature_and_delta_are_errors() {
        assert!(diff(vec![1, 2, 3], b"data").is_err());
        assert!(apply(b"base", &[0xde, 0xad, 0xbe, 0xef, 9, 9], 100).is_err());
    }

    #[test]
    fn decompression_is_bounded() {
        let bomb = compress(&vec![0u8; 1 << 20], 3);
        assert!(decompress(&bomb, 1000).is_err());
        assert_eq!(decompress(&bomb, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn block_size_grows_with_the_file() {
        assert_eq!(block_size(0), 512);
        assert_eq!(block_size(10 << 20), 3240);
        assert_eq!(block_size(1 << 40), 128 << 10);
    }
}
