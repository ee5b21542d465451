//! What the passes of one tree share: the tree, and its files' compressed
//! data.
//!
//! A change to a group is sent to every client of the group at about the
//! same time, by one pass each. Compressing each file once per pass made
//! zstd half of the server's CPU for a group of ten clients; here the first
//! pass to need a file compresses it, whole, and the others wait for that
//! and send the same chunks. Files too large for memory, and whatever
//! would exceed [`PACK_BUDGET`], are still compressed by each pass as it
//! streams them.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cfi_groups::Tree;

use crate::frame::DATA_CHUNK;

/// Largest file compressed whole and shared.
pub const PACK_FILE_MAX: u64 = 8 << 20;

/// Most compressed bytes one tree keeps for its passes.
pub const PACK_BUDGET: usize = 64 << 20;

/// Bytes of a file's start that decide whether it is worth compressing.
pub const PROBE: usize = 64 << 10;

/// A tree as its passes send it.
#[derive(Debug)]
pub struct Source {
    tree: Tree,
    packed: Mutex<HashMap<(usize, i32), Arc<Slot>>>,
    kept: AtomicUsize,
}

/// One file's shared packing: empty until a pass has packed it; locked
/// while one does, so the others wait instead of compressing it too.
type Slot = Mutex<Option<Arc<Packed>>>;

/// A whole file, ready to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Packed {
    /// It does not compress: sent raw, read as it goes.
    Raw,
    /// zstd chunks of up to [`DATA_CHUNK`] bytes of content each.
    Whole(Vec<Vec<u8>>),
}

impl Source {
    /// The tree, with nothing packed yet.
    pub fn new(tree: Tree) -> Self {
        Self {
            tree,
            packed: Mutex::new(HashMap::new()),
            kept: AtomicUsize::new(0),
        }
    }

    /// The tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// File `index` packed at zstd `level`: as another pass packed it, or
    /// by `pack` now. `pack` returns the packing and whether the content
    /// it read is the manifest's (only then is it shared).
    pub fn packed(
        &self,
        index: usize,
        level: i32,
        pack: impl FnOnce() -> Result<(Packed, bool), String>,
    ) -> Result<Arc<Packed>, String> {
        let slot = {
            let mut files = self.packed.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(files.entry((index, level)).or_default())
        };
        // A pass that panicked while packing leaves the slot empty.
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = &*held {
            return Ok(Arc::clone(done));
        }
        let (packed, faithful) = pack()?;
        let packed = Arc::new(packed);
        let size = match &*packed {
            Packed::Raw => 0,
            Packed::Whole(chunks) => chunks.iter().map(Vec::len).sum(),
        };
        if faithful && self.keep(size) {
            *held = Some(Arc::clone(&packed));
        }
        Ok(packed)
    }

    /// Reserves `size` bytes of the budget.
    fn keep(&self, size: usize) -> bool {
        self.kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                (kept + size <= PACK_BUDGET).then_some(kept + size)
            })
            .is_ok()
    }
}

/// `sample` compressed, if that shrinks it by a tenth or more. Random
/// data, archives and images do not; compressing them would only cost time
/// on both sides.
pub fn shrunk(
    compressor: &mut zstd::bulk::Compressor<'static>,
    sample: &[u8],
) -> std::io::Result<Option<Vec<u8>>> {
    let packed = compressor.compress(sample)?;
    Ok((packed.len() * 10 < sample.len() * 9).then_some(packed))
}

/// Reads `file` (at most [`PACK_FILE_MAX`] bytes are expected) and packs
/// it: raw when its start does not shrink by a tenth, else in zstd chunks.
/// Also says whether the content hashes to `hash`.
pub fn pack(
    file: &mut std::fs::File,
    hash: &[u8; 32],
    compressor: &mut zstd::bulk::Compressor<'static>,
) -> std::io::Result<(Packed, bool)> {
    let mut data = Vec::new();
    file.take(PACK_FILE_MAX + 1).read_to_end(&mut data)?;
    let faithful = blake3::hash(&data).as_bytes() == hash;
    if data.is_empty() {
        return Ok((Packed::Whole(vec![Vec::new()]), faithful));
    }
    let probe = &data[..data.len().min(PROBE)];
    let Some(probed) = shrunk(compressor, probe)? else {
        return Ok((Packed::Raw, faithful));
    };
    let mut chunks = Vec::with_capacity(data.len().div_ceil(DATA_CHUNK));
    for chunk in data.chunks(DATA_CHUNK) {
        // A file no longer than the probe was compressed by it already.
        if chunk.len() == probe.len() && chunks.is_empty() {
            chunks.push(probed.clone());
        } else {
            chunks.push(compressor.compress(chunk)?);
        }
    }
    Ok((Packed::Whole(chunks), faithful))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        f
    }

    fn compressor() -> zstd::bulk::Compressor<'static> {
        zstd::bulk::Compressor::new(1).unwrap()
    }

    #[test]
    fn text_packs_in_chunks_that_unpack_to_it_and_noise_goes_raw() {
        let text: Vec<u8> = (0..3 * DATA_CHUNK / 2)
            .map(|i| b"key = value\n"[i % 12])
            .collect();
        let hash = *blake3::hash(&text).as_bytes();
        let (packed, faithful) = pack(&mut file_with(&text), &hash, &mut compressor()).unwrap();
        assert!(faithful);
        let Packed::Whole(chunks) = packed else {
            panic!("text did not compress");
        };
        assert_eq!(chunks.len(), 2);
        let mut back = Vec::new();
        for c in &chunks {
            back.extend(zstd::bulk::decompress(c, DATA_CHUNK).unwrap());
        }
        assert_eq!(back, text);

        let small = b"a = 1\na = 1\na = 1\na = 1\na = 1\n".repeat(20);
        let (packed, _) = pack(&mut file_with(&small), &[0; 32], &mut compressor()).unwrap();
        let Packed::Whole(chunks) = packed else {
            panic!("small text did not compress");
        };
        assert_eq!(
            zstd::bulk::decompress(&chunks[0], small.len()).unwrap(),
            small
        );

        let mut noise = vec![0u8; 100_000];
        let mut x = 0x9e37_79b9_u32;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let (packed, faithful) = pack(&mut file_with(&noise), &hash, &mut compressor()).unwrap();
        assert_eq!(packed, Packed::Raw);
        assert!(!faithful, "another file's hash must not match");
    }

    fn tree() -> Tree {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let layers = [d.path().to_path_buf()];
        Tree::read(&layers, &mut cfi_groups::hashcache::HashCache::default()).unwrap()
    }

    #[test]
    fn a_file_is_packed_once_for_all_passes_unless_its_content_was_not_the_manifests() {
        let source = Source::new(tree());
        let mut packs = 0;
        for _ in 0..3 {
            let got = source
                .packed(0, 1, || {
                    packs += 1;
                    Ok((Packed::Whole(vec![b"z".to_vec()]), true))
                })
                .unwrap();
            assert_eq!(*got, Packed::Whole(vec![b"z".to_vec()]));
        }
        assert_eq!(packs, 1);

        let mut packs = 0;
        for _ in 0..2 {
            source
                .packed(1, 1, || {
                    packs += 1;
                    Ok((Packed::Raw, false))
                })
                .unwrap();
        }
        assert_eq!(packs, 2);
        // A failure is the pass's own; the next pass tries again.
        assert!(source.packed(2, 1, || Err("gone".into())).is_err());
        assert!(source.packed(2, 1, || Ok((Packed::Raw, true))).is_ok());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let source = Source::new(tree());
        let big = vec![0u8; PACK_BUDGET / 2 + 1];
        let mut packs = 0;
        for index in [0, 1, 1] {
            source
                .packed(index, 1, || {
                    packs += 1;
                    Ok((Packed::Whole(vec![big.clone()]), true))
                })
                .unwrap();
        }
        // The second file did not fit: each pass packs it itself.
        assert_eq!(packs, 3);
    }
}
