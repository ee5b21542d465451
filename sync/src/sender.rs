//! The server side of a pass: offer the manifest, answer the agent's needs
//! with deltas or whole files, collect the report.
//!
//! Reading and compressing files runs on a blocking thread that feeds the
//! async writer through a small channel, so the disk, the compressor and
//! the pipe work at the same time and a daemon's runtime never blocks.

use std::io::Read;
use std::sync::Arc;

use cfi_groups::{Kind, Tree};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::delta::{self, MAX_DELTA_FILE};
use crate::error::SyncError;
use crate::frame::{DATA_CHUNK, FrameReader, FrameWriter};
use crate::history::{self, History};
use crate::message::{
    Batch, Encoding, FromAgent, MAGIC, ManifestMode, Need, PROTOCOL_VERSION, ToAgent,
};
use crate::report::PassReport;

/// How to run a pass.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Plan only; the agent writes nothing.
    pub dry_run: bool,
    /// zstd level for literal data.
    pub level: i32,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            level: 3,
        }
    }
}

/// Runs one pass of `tree` against the agent on `reader`/`writer`.
pub async fn push<R, W>(
    tree: Arc<Tree>,
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
    let mut report = run(tree, opts, history, &mut rx, &mut tx).await?;
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
    tree: Arc<Tree>,
    opts: PushOptions,
    history: Option<&dyn History>,
    rx: &mut FrameReader<R>,
    tx: &mut FrameWriter<W>,
) -> Result<PassReport, SyncError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let manifest = tree.manifest();
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
        let mut batch = Batch::default();
        for e in upserts {
            let size = 64 + e.path.as_bytes().len();
            if let Some(full) = batch.push(e, size) {
                tx.send(&ToAgent::Manifest(full)).await?;
            }
        }
        if let Some(rest) = batch.finish() {
            tx.send(&ToAgent::Manifest(rest)).await?;
        }
        let mut batch = Batch::default();
        for p in removed {
            let size = 8 + p.as_bytes().len();
            if let Some(full) = batch.push(p, size) {
                tx.send(&ToAgent::Removed(full)).await?;
            }
        }
        if let Some(rest) = batch.finish() {
            tx.send(&ToAgent::Removed(rest)).await?;
        }
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
        let producer =
            tokio::task::spawn_blocking(move || produce(&tree, needs, opts.level, &chan_tx));
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
fn produce(tree: &Tree, needs: Vec<Need>, level: i32, out: &mpsc::Sender<ToAgent>) {
    let mut compressor = zstd::bulk::Compressor::new(level).ok();
    for need in needs {
        let index = need.index;
        let sent = match content(tree, need, level, compressor.as_mut(), out) {
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
    tree: &Tree,
    need: Need,
    level: i32,
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    out: &mpsc::Sender<ToAgent>,
) -> Result<bool, String> {
    let index = need.index;
    let i = index as usize;
    let path = tree.source_path(i);
    let mut file = tree
        .open(i)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let size = tree.manifest().entries()[i].size;
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
    if size <= DATA_CHUNK as u64 {
        let data = read_all(&mut file)?;
        let packed = match compressor {
            Some(c) => c
                .compress(&data)
                .unwrap_or_else(|_| delta::compress(&data, level)),
            None => delta::compress(&data, level),
        };
        return Ok(send_chunks(packed, |c, last| {
            send(Encoding::Whole, c, last)
        }));
    }
    // Large files stream: never more than a chunk or two in memory.
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::new(), level).map_err(|e| format!("zstd: {e}"))?;
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut enc, &buf[..n]).map_err(|e| format!("zstd: {e}"))?;
        if enc.get_ref().len() >= DATA_CHUNK {
            let chunk = std::mem::take(enc.get_mut());
            if !send(Encoding::Whole, chunk, false) {
                return Ok(false);
            }
        }
    }
    let rest = enc.finish().map_err(|e| format!("zstd: {e}"))?;
    Ok(send(Encoding::Whole, rest, true))
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
