//! The server side of a pass: offer the manifest, answer the agent's needs
//! with deltas or whole files, collect the report.
//!
//! Reading and compressing files runs on a blocking thread that feeds the
//! async writer through a small channel, so the disk, the compressor and
//! the pipe work at the same time and a daemon's runtime never blocks.

use std::io::Read;
use std::sync::Arc;

use cfi_groups::Kind;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::delta::{self, MAX_DELTA_FILE};
use crate::error::SyncError;
use crate::frame::{DATA_CHUNK, FrameReader, FrameWriter};
use crate::history::{self, History};
use crate::message::{Encoding, FromAgent, MAGIC, ManifestMode, Need, PROTOCOL_VERSION, ToAgent};
use crate::report::PassReport;
use crate::source::{self, PACK_FILE_MAX, PROBE, Packed, Source};

/// How to run a pass.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Plan only; the agent writes nothing.
    pub dry_run: bool,
    /// zstd level for whole-file data; `None` sends it uncompressed, which
    /// is right where bandwidth is free (a local pipe) and compression
    /// would only cost CPU. Deltas are always compressed: they are small.
    pub compression: Option<i32>,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            compression: Some(DEFAULT_LEVEL),
        }
    }
}

/// zstd level for networks: fast, and most of zstd's gain on config files.
pub const DEFAULT_LEVEL: i32 = 1;

/// Runs one pass of `source`'s tree against the agent on `reader`/`writer`.
pub async fn push<R, W>(
    source: Arc<Source>,
    opts: PushOptions,
    history: Option<&dyn History>,
    reader: R,
    writer: W,
) -> Result<PassReport, SyncError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rx = FrameReader::new(reader);
    let mut tx = FrameWriter::new(writer);
    let mut report = run(source, opts, history, &mut rx, &mut tx).await?;
    report.bytes_to_agent = tx.bytes();
    report.bytes_from_agent = rx.bytes();
    Ok(report)
}

fn agent_failed(msg: FromAgent, expected: &str) -> SyncError {
    match msg {
        FromAgent::Failed(why) => SyncError::Remote(why),
        other => SyncError::Protocol(format!(
            "expected {expected} from the agent, got {}",
            match other {
                FromAgent::Hello { .. } => "Hello",
                FromAgent::Need(_) => "Need",
                FromAgent::NeedEnd => "NeedEnd",
                FromAgent::Report(_) => "Report",
                FromAgent::Failed(_) => "Failed",
            }
        )),
    }
}

async fn run<R, W>(
    source: Arc<Source>,
    opts: PushOptions,
    history: Option<&dyn History>,
    rx: &mut FrameReader<R>,
    tx: &mut FrameWriter<W>,
) -> Result<PassReport, SyncError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let manifest = source.tree().manifest();
    let applied = match rx.recv().await? {
        FromAgent::Hello {
            magic,
            version,
            applied,
        } => {
            if magic != MAGIC {
                return Err(SyncError::Protocol("the peer is not a cfi agent".into()));
            }
            if version != PROTOCOL_VERSION {
                return Err(SyncError::Protocol(format!(
                    "agent speaks protocol {version}, this server {PROTOCOL_VERSION}; upgrade cfi-client"
                )));
            }
            applied
        }
        other => return Err(agent_failed(other, "Hello")),
    };
    // A delta only when the agent's base is known and the delta is the
    // smaller message.
    let delta = applied
        .filter(|d| *d != manifest.digest())
        .and_then(|d| history?.get(&d))
        .map(|base| history::delta(&base, manifest))
        .filter(|(up, rm)| up.len() + rm.len() < manifest.len() / 2);
    let mode = match (&delta, applied == Some(manifest.digest())) {
        (_, true) => ManifestMode::Unchanged,
        (Some(_), false) => ManifestMode::Delta,
        (None, false) => ManifestMode::Full,
    };
    tx.send(&ToAgent::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        dry_run: opts.dry_run,
        digest: manifest.digest(),
        entries: manifest.len() as u64,
        manifest: mode,
    })
    .await?;
    let (upserts, removed) = match (mode, delta) {
        (ManifestMode::Unchanged, _) => (Vec::new(), Vec::new()),
        (ManifestMode::Delta, Some(d)) => d,
        _ => (manifest.entries().to_vec(), Vec::new()),
    };
    if mode != ManifestMode::Unchanged {
        let entry_size = |e: &cfi_groups::Entry| 64 + e.path.as_bytes().len();
        tx.send_batched(upserts, entry_size, ToAgent::Manifest)
            .await?;
        let path_size = |p: &cfi_groups::RelPath| 8 + p.as_bytes().len();
        tx.send_batched(removed, path_size, ToAgent::Removed)
            .await?;
        tx.send(&ToAgent::ManifestEnd).await?;
    }
    tx.flush().await?;

    let mut needs = Vec::new();
    loop {
        match rx.recv().await? {
            FromAgent::Need(batch) => {
                for need in batch {
                    let i = need.index as usize;
                    if manifest.entries().get(i).map(|e| &e.kind) != Some(&Kind::File) {
                        return Err(SyncError::Protocol(format!(
                            "agent asked for entry {i}, which is not a file"
                        )));
                    }
                    needs.push(need);
                }
                if needs.len() > manifest.len() {
                    return Err(SyncError::Protocol(
                        "agent asked for more files than exist".into(),
                    ));
                }
            }
            FromAgent::NeedEnd => break,
            other => return Err(agent_failed(other, "Need")),
        }
    }

    if !needs.is_empty() {
        let (chan_tx, mut chan_rx) = mpsc::channel::<ToAgent>(8);
        let producer = tokio::task::spawn_blocking(move || {
            produce(&source, needs, opts.compression, &chan_tx)
        });
        while let Some(msg) = chan_rx.recv().await {
            tx.send(&msg).await?;
        }
        producer
            .await
            .map_err(|e| SyncError::Internal(format!("file reader died: {e}")))?;
    }
    tx.send(&ToAgent::Commit).await?;
    tx.flush().await?;

    match rx.recv().await? {
        FromAgent::Report(report) => Ok(*report),
        other => Err(agent_failed(other, "Report")),
    }
}

/// Reads, diffs and compresses each needed file, in order. Stops quietly
/// when the writer is gone (the pass failed on the other side).
fn produce(
    source: &Source,
    needs: Vec<Need>,
    compression: Option<i32>,
    out: &mpsc::Sender<ToAgent>,
) {
    let level = compression.unwrap_or(DEFAULT_LEVEL);
    let mut compressor = zstd::bulk::Compressor::new(level).ok();
    // One read buffer for the whole pass: a fresh megabyte per file costs
    // page faults on every small file.
    let mut buf = vec![0u8; DATA_CHUNK];
    for need in needs {
        let index = need.index;
        let whole = compression.and(compressor.as_mut());
        let sent = match content(source, need, level, whole, &mut buf, out) {
            Ok(sent) => sent,
            Err(reason) => out
                .blocking_send(ToAgent::Unreadable { index, reason })
                .is_ok(),
        };
        if !sent {
            return;
        }
    }
}

/// Sends one file's data; `Ok(false)` when the writer is gone.
fn content(
    source: &Source,
    need: Need,
    level: i32,
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    buf: &mut [u8],
    out: &mpsc::Sender<ToAgent>,
) -> Result<bool, String> {
    let index = need.index;
    let i = index as usize;
    let tree = source.tree();
    let path = tree.source_path(i);
    let mut file = tree
        .open(i)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let entry = &tree.manifest().entries()[i];
    let size = entry.size;
    let send = |encoding, chunk: Vec<u8>, last| {
        out.blocking_send(ToAgent::Data {
            index,
            encoding,
            chunk: ByteBuf::from(chunk),
            last,
        })
        .is_ok()
    };
    let read_all = |file: &mut std::fs::File| -> Result<Vec<u8>, String> {
        let mut data = Vec::with_capacity(size as usize);
        file.take(MAX_DELTA_FILE + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(data)
    };

    if let Some(sig) = need.signature {
        let data = read_all(&mut file)?;
        let delta = delta::diff(sig.into_vec(), &data).map_err(|e| e.to_string())?;
        let packed = delta::compress(&delta, level);
        return Ok(send_chunks(packed, |c, last| {
            send(Encoding::Delta, c, last)
        }));
    }
    // Whole content travels in chunks, each compressed on its own, so the
    // agent needs no stream state and never more than a chunk in memory.
    // When the first chunk does not compress, the file goes raw. A file
    // that fits in memory is packed once for all the tree's passes.
    let mut compressor = compressor;
    let mut encoding = None;
    if let Some(c) = compressor.as_deref_mut().filter(|_| size <= PACK_FILE_MAX) {
        let packed = source.packed(i, level, || {
            // Raw content is then read from the start, as it goes.
            source::pack(&mut file, &entry.hash, c)
                .and_then(|p| std::io::Seek::rewind(&mut file).map(|()| p))
                .map_err(|e| format!("{}: {e}", path.display()))
        })?;
        match &*packed {
            Packed::Whole(chunks) => {
                let last = chunks.len() - 1;
                for (n, chunk) in chunks.iter().enumerate() {
                    if !send(Encoding::Whole, chunk.clone(), n == last) {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            Packed::Raw => encoding = Some(Encoding::Raw),
        }
    }
    loop {
        let n = read_chunk(&mut file, buf).map_err(|e| format!("{}: {e}", path.display()))?;
        let last = n < DATA_CHUNK;
        let data = &buf[..n];
        if compressor.is_none() {
            encoding = Some(Encoding::Raw);
        }
        // The probe's output is the chunk when the chunk is the sample.
        let mut probed = None;
        if encoding.is_none() && n > 0 {
            let sample = &data[..n.min(PROBE)];
            probed = match compressor.as_deref_mut() {
                Some(c) => source::shrunk(c, sample)
                    .map_err(|e| format!("{}: zstd: {e}", path.display()))?,
                None => None,
            };
            encoding = Some(if probed.is_some() {
                Encoding::Whole
            } else {
                Encoding::Raw
            });
            if sample.len() < n {
                probed = None;
            }
        }
        let enc = encoding.unwrap_or(Encoding::Whole);
        let chunk = match (enc, probed) {
            (Encoding::Whole, Some(p)) => p,
            (Encoding::Whole, None) if n > 0 => compressor
                .as_deref_mut()
                .and_then(|c| c.compress(data).ok())
                .ok_or_else(|| format!("{}: zstd failed", path.display()))?,
            _ => data.to_vec(),
        };
        if !send(enc, chunk, last) {
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
    }
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_chunk(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Cuts a buffer into data chunks; the last one says so.
fn send_chunks(data: Vec<u8>, mut send: impl FnMut(Vec<u8>, bool) -> bool) -> bool {
    if data.len() <= DATA_CHUNK {
        return send(data, true);
    }
    let mut chunks = data.chunks(DATA_CHUNK).peekable();
    while let Some(c) = chunks.next() {
        if !send(c.to_vec(), chunks.peek().is_none()) {
            return false;
        }
    }
    true
}
