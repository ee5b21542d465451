//! The agent side of a pass: receive the manifest, plan, ask for what is
//! missing, write it into temps, commit, report.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use cfi_groups::{Entry, Manifest, RelPath};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::apply::{Commit, Content, meta_of};
use crate::delta;
use crate::error::SyncError;
use crate::frame::DATA_CHUNK;
use crate::frame::{FrameReader, FrameWriter};
use crate::ledger::{Origin, StateDir};
use crate::message::{Encoding, FromAgent, MAGIC, ManifestMode, Need, PROTOCOL_VERSION, ToAgent};
use crate::plan::{self, Act, Plan};
use crate::report::{Action, Change, PassReport, PathError};
use crate::rootdir::{Flusher, Found, RootDir, Temp, absent};
use crate::textdiff::{self, DIFF_MAX};

/// Where the agent applies.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The target root (`/` in production).
    pub root: PathBuf,
    /// Ledger, backups and drift copies.
    pub state_dir: PathBuf,
    /// The process exits once the pass is over: the pass's memory (the
    /// ledger, the manifest and the plan, a record per managed path) is left
    /// for the exit to release at once instead of being freed record by
    /// record, which was a millisecond of every no-op pass.
    pub exit_after: bool,
}

/// Most manifest entries accepted: far above any real tree, low enough that
/// a hostile count cannot be used to exhaust memory.
const MAX_ENTRIES: u64 = 10_000_000;

/// Serves one pass on `reader`/`writer`. A pass-ending error is also sent to
/// the server before it is returned.
pub async fn serve<R, W>(opts: &AgentOptions, reader: R, writer: W) -> Result<PassReport, SyncError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rx = FrameReader::new(reader);
    let mut tx = FrameWriter::new(writer);
    let result = run(opts, &mut rx, &mut tx).await;
    if let Err(e) = &result {
        let _ = tx.send(&FromAgent::Failed(e.to_string())).await;
        let _ = tx.flush().await;
    }
    result
}

fn protocol(msg: impl Into<String>) -> SyncError {
    SyncError::Protocol(msg.into())
}

async fn run<R, W>(
    opts: &AgentOptions,
    rx: &mut FrameReader<R>,
    tx: &mut FrameWriter<W>,
) -> Result<PassReport, SyncError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let state = StateDir::open(&opts.state_dir)?;
    let mut root = RootDir::open(&opts.root).map_err(|cause| SyncError::Root {
        path: opts.root.clone(),
        cause,
    })?;
    root.reserve(state.path());
    let leftovers = state.take_journal()?;
    if !leftovers.is_empty() {
        for leftover in &leftovers {
            let _ = root.discard_temp(leftover);
        }
        state.clear_journal()?;
    }
    let mut ledger = state.load_ledger()?;
    tracing::debug!(records = ledger.records.len(), "ledger loaded");

    tx.send(&FromAgent::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        applied: ledger.applied,
    })
    .await?;
    tx.flush().await?;

    // While the server reads its tree, check this disk against what was
    // applied last: when nothing changed on the server (the common pass)
    // that plan is the plan, ready when the server's hello arrives.
    // The records were saved together with the digest of the manifest they
    // applied, so it is taken as given rather than computed again.
    let applied = ledger.applied.and_then(|digest| {
        let entries = ledger.records.values().map(|r| r.entry.clone()).collect();
        Manifest::with_digest(entries, digest).ok()
    });
    let mut early = applied.as_ref().map(|m| plan::plan(m, &ledger, &mut root));

    let (dry_run, digest, mode) = match rx.recv().await? {
        ToAgent::Hello {
            magic,
            version,
            dry_run,
            digest,
            entries,
            manifest,
        } => {
            if magic != MAGIC {
                return Err(protocol("the server is not speaking cfi-sync"));
            }
            if version != PROTOCOL_VERSION {
                return Err(protocol(format!(
                    "server speaks protocol {version}, this agent {PROTOCOL_VERSION}"
                )));
            }
            if entries > MAX_ENTRIES {
                return Err(protocol(format!("{entries} manifest entries is too many")));
            }
            (dry_run, digest, manifest)
        }
        other => return Err(protocol(format!("expected Hello, got {}", name_of(&other)))),
    };

    let manifest = match mode {
        ManifestMode::Full => {
            let (entries, removed) = receive_manifest(rx).await?;
            if !removed.is_empty() {
                return Err(protocol("removals in a full manifest"));
            }
            Manifest::new(entries)?
        }
        ManifestMode::Unchanged => match applied {
            Some(m) if ledger.applied == Some(digest) => m,
            _ => {
                return Err(protocol(
                    "server skipped a manifest this agent has not applied",
                ));
            }
        },
        ManifestMode::Delta => {
            if ledger.applied.is_none() {
                return Err(protocol(
                    "server sent a manifest delta, but this agent has no applied manifest",
                ));
            }
            let (upserts, removed) = receive_manifest(rx).await?;
            let mut entries: BTreeMap<RelPath, Entry> = ledger
                .records
                .values()
                .map(|r| (r.entry.path.clone(), r.entry.clone()))
                .collect();
            for path in removed {
                entries.remove(&path);
            }
            for e in upserts {
                entries.insert(e.path.clone(), e);
            }
            Manifest::new(entries.into_values().collect())?
        }
    };
    if manifest.digest() != digest {
        return Err(protocol("manifest does not match its digest"));
    }

    tracing::debug!(entries = manifest.len(), mode = ?mode, "manifest in hand");
    let plan = match early.take() {
        Some(plan) if mode == ManifestMode::Unchanged => plan,
        _ => plan::plan(&manifest, &ledger, &mut root),
    };
    tracing::debug!(hashed = plan.hashed, "planned");
    let mut report = PassReport {
        dry_run,
        manifest: mode,
        files_hashed: plan.hashed,
        errors: plan.errors.clone(),
        ..PassReport::default()
    };
    let entries = manifest.entries();

    let wanted: Vec<usize> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(i, item)| {
            item.act == Act::Write
                && (!dry_run
                    || (entries[*i].size <= DIFF_MAX && found_size(&item.found) <= DIFF_MAX))
        })
        .map(|(i, _)| i)
        .collect();

    if !dry_run {
        let temps: Vec<&RelPath> = plan
            .items
            .iter()
            .zip(entries)
            .filter(|(item, _)| matches!(item.act, Act::Write | Act::Link))
            .map(|(_, e)| &e.path)
            .collect();
        if !temps.is_empty() {
            state.write_journal(&temps)?;
        }
        make_new_dirs(&mut root, entries, &plan);
    }

    let mut signed = HashSet::new();
    let needs = wanted.iter().map(|&i| {
        let signature = if dry_run {
            None
        } else {
            plan::basis_signature(&mut root, &entries[i], &plan.items[i])
        };
        if signature.is_some() {
            signed.insert(i);
        }
        Need {
            index: i as u32,
            signature: signature.map(ByteBuf::from),
        }
    });
    let size = |n: &Need| 16 + n.signature.as_ref().map_or(0, |s| s.len());
    tx.send_batched(needs, size, FromAgent::Need).await?;
    tx.send(&FromAgent::NeedEnd).await?;
    tx.flush().await?;

    let flusher = (!dry_run).then(|| Flusher::new(&root));
    let mut recv = Receiving {
        root: &mut root,
        state: &state,
        entries,
        plan: &plan,
        dry_run,
        wanted: wanted.iter().copied().collect(),
        signed,
        content: vec![Content::Missing; entries.len()],
        diffs: vec![None; entries.len()],
        current: None,
        errors: Vec::new(),
        unzstd: zstd::bulk::Decompressor::new().map_err(|e| internal("start zstd", e))?,
        scratch: Vec::with_capacity(DATA_CHUNK),
        flusher,
    };
    loop {
        match rx.recv().await? {
            ToAgent::Data {
                index,
                encoding,
                chunk,
                last,
            } => recv.data(index as usize, encoding, &chunk, last)?,
            ToAgent::Unreadable { index, reason } => recv.unreadable(index as usize, reason)?,
            ToAgent::Commit => break,
            other => return Err(protocol(format!("expected Data, got {}", name_of(&other)))),
        }
    }
    tracing::debug!("data received");
    if recv.current.is_some() {
        return Err(protocol("commit inside a file's data"));
    }
    let Receiving {
        content,
        diffs,
        errors,
        flusher,
        ..
    } = recv;
    if let Some(f) = flusher {
        f.finish();
    }
    report.errors.extend(errors);

    if dry_run {
        describe(&plan, entries, diffs, &mut report);
    } else {
        let staged = content.iter().any(|c| matches!(c, Content::Staged(_)));
        if content
            .iter()
            .any(|c| matches!(c, Content::Beside | Content::Staged(_)))
        {
            root.syncfs().map_err(|e| internal("flush temp files", e))?;
            if staged {
                sync_dir(state.path()).map_err(|e| internal("flush staging", e))?;
            }
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tracing::debug!("temps on disk");
        let mut commit = Commit {
            root: &mut root,
            state: &state,
            ledger: &mut ledger,
            report: &mut report,
            stamp,
            dirty: false,
        };
        commit.run(&manifest, &plan, &content);
        let dirty = commit.dirty;
        let applied = report.errors.is_empty().then_some(digest);
        let save = dirty || ledger.applied != applied;
        if save {
            ledger.applied = applied;
            state.save_ledger(&ledger, false)?;
        }
        // One flush makes the renames and the ledger durable together
        // (two when the state dir is on another file system).
        if !report.changes.is_empty() || save {
            root.syncfs().map_err(|e| internal("flush renames", e))?;
            let state_dev = std::fs::metadata(state.path()).map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev()
            });
            if save && state_dev.ok() != root.dev().ok() {
                sync_dir(state.path()).map_err(|e| internal("flush ledger", e))?;
            }
        }
        state.clear_journal()?;
        tracing::debug!(ledger_written = dirty, "committed");
    }
    // Everything is on disk: let the next pass in before this process has
    // even freed its memory.
    drop(state);
    tx.send(&FromAgent::Report(Box::new(report.clone())))
        .await?;
    tx.flush().await?;
    if opts.exit_after {
        std::mem::forget((ledger, manifest, plan, root));
    }
    Ok(report)
}

/// Reads manifest entries (and, in a delta, removed paths) up to
/// `ManifestEnd`.
async fn receive_manifest<R: AsyncRead + Unpin>(
    rx: &mut FrameReader<R>,
) -> Result<(Vec<Entry>, Vec<RelPath>), SyncError> {
    let mut entries = Vec::new();
    let mut removed = Vec::new();
    loop {
        match rx.recv().await? {
            ToAgent::Manifest(chunk) => entries.extend(chunk),
            ToAgent::Removed(chunk) => removed.extend(chunk),
            ToAgent::ManifestEnd => return Ok((entries, removed)),
            other => {
                return Err(protocol(format!(
                    "expected Manifest, got {}",
                    name_of(&other)
                )));
            }
        }
        if (entries.len() + removed.len()) as u64 > MAX_ENTRIES {
            return Err(protocol("manifest longer than announced"));
        }
    }
}

fn internal(what: &str, e: io::Error) -> SyncError {
    SyncError::Internal(format!("cannot {what}: {e}"))
}

fn sync_dir(path: &std::path::Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

fn found_size(found: &Found) -> u64 {
    match found {
        Found::File(st) => st.st_size as u64,
        _ => 0,
    }
}

/// Creates the new directories before data arrives, so temps can stand
/// beside their targets. One that cannot be made yet (a file is in the way
/// until the commit) is left for the commit.
fn make_new_dirs(root: &mut RootDir, entries: &[Entry], plan: &Plan) {
    for (e, item) in entries.iter().zip(&plan.items) {
        if item.act == Act::Mkdir
            && matches!(item.found, Found::Absent)
            && !item.deferred
            && root.mkdir(&e.path, e.mode).is_ok()
        {
            let _ = root.set_meta(&e.path, &meta_of(e), false);
        }
    }
}

fn name_of(msg: &ToAgent) -> &'static str {
    match msg {
        ToAgent::Hello { .. } => "Hello",
        ToAgent::Manifest(_) => "Manifest",
        ToAgent::Removed(_) => "Removed",
        ToAgent::ManifestEnd => "ManifestEnd",
        ToAgent::Data { .. } => "Data",
        ToAgent::Unreadable { .. } => "Unreadable",
        ToAgent::Commit => "Commit",
    }
}

/// The file being received.
struct Current {
    index: usize,
    encoding: Encoding,
    sink: Sink,
}

enum Sink {
    /// Streaming into a temp file.
    Disk {
        out: Box<Hashing<Temp>>,
        content: Content,
    },
    /// Collected in memory: deltas and dry-run content.
    Memory(Vec<u8>),
    /// Failed; the rest of its chunks are skipped.
    Broken,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Receiving<'a> {
    root: &'a mut RootDir,
    state: &'a StateDir,
    entries: &'a [Entry],
    plan: &'a Plan,
    dry_run: bool,
    wanted: HashSet<usize>,
    signed: HashSet<usize>,
    content: Vec<Content>,
    diffs: Vec<Option<String>>,
    current: Option<Current>,
    errors: Vec<PathError>,
    /// One decompression context for the whole pass: making one per file
    /// cost more than decompressing small files.
    unzstd: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
    /// Background writeback while data arrives (not in a dry run).
    flusher: Option<Flusher>,
}

impl Receiving<'_> {
    fn fail(&mut self, index: usize, message: String) {
        self.errors.push(PathError {
            path: self.entries[index].path.to_string(),
            message,
        });
        self.content[index] = Content::Failed;
        if !self.dry_run {
            let _ = self.root.discard_temp(&self.entries[index].path);
        }
    }

    fn unreadable(&mut self, index: usize, reason: String) -> Result<(), SyncError> {
        if self.current.is_some() || !self.wanted.remove(&index) {
            return Err(protocol(format!("unexpected Unreadable for entry {index}")));
        }
        self.fail(index, format!("the server could not read it: {reason}"));
        Ok(())
    }

    fn data(
        &mut self,
        index: usize,
        encoding: Encoding,
        chunk: &[u8],
        last: bool,
    ) -> Result<(), SyncError> {
        let mut cur = match self.current.take() {
            Some(c) if c.index == index && c.encoding == encoding => c,
            Some(c) => {
                return Err(protocol(format!(
                    "data for entry {index} inside the data of entry {}",
                    c.index
                )));
            }
            None => {
                if !self.wanted.remove(&index) {
                    return Err(protocol(format!(
                        "data for entry {index}, which was not asked for"
                    )));
                }
                if encoding == Encoding::Delta && !self.signed.contains(&index) {
                    return Err(protocol(format!(
                        "a delta for entry {index} without a signature"
                    )));
                }
                let sink = self.open_sink(index, encoding);
                Current {
                    index,
                    encoding,
                    sink,
                }
            }
        };
        let e = &self.entries[index];
        let memory_limit = e.size.saturating_mul(2) + (1 << 20);
        let fed = match &mut cur.sink {
            Sink::Disk { out, .. } => feed_disk(
                out,
                encoding,
                chunk,
                e.size,
                &mut self.unzstd,
                &mut self.scratch,
            ),
            Sink::Memory(buf) if (buf.len() + chunk.len()) as u64 > memory_limit => {
                Err("the server sent more data than the file's size allows".to_string())
            }
            Sink::Memory(buf) => {
                buf.extend_from_slice(chunk);
                Ok(())
            }
            Sink::Broken => Ok(()),
        };
        if let Err(msg) = fed {
            self.fail(index, msg);
            cur.sink = Sink::Broken;
        }
        if let Some(f) = &mut self.flusher {
            f.wrote(chunk.len() as u64);
        }
        if last {
            self.finish(cur);
        } else {
            self.current = Some(cur);
        }
        Ok(())
    }

    fn open_sink(&mut self, index: usize, encoding: Encoding) -> Sink {
        if self.dry_run || encoding == Encoding::Delta {
            return Sink::Memory(Vec::new());
        }
        match self.open_temp(index) {
            Ok((temp, content)) => {
                let out = Hashing {
                    // Chunks arrive up to a megabyte at a time: a buffer
                    // would only add a copy.
                    inner: temp,
                    hasher: blake3::Hasher::new(),
                    len: 0,
                };
                Sink::Disk {
                    out: Box::new(out),
                    content,
                }
            }
            Err(err) => {
                self.fail(index, format!("cannot create temp file: {err}"));
                Sink::Broken
            }
        }
    }

    /// The temp beside the target, or a staging file when the target's
    /// directory appears only in the commit.
    fn open_temp(&mut self, index: usize) -> io::Result<(Temp, Content)> {
        let e = &self.entries[index];
        let beside = if self.plan.items[index].deferred {
            Err(io::Error::from(io::ErrorKind::NotFound))
        } else {
            self.root.create_temp(&e.path, &meta_of(e))
        };
        match beside {
            Ok(f) => Ok((f, Content::Beside)),
            Err(e) if absent(&e) || e.kind() == io::ErrorKind::NotFound => {
                let staged = self.state.staging_path(index as u32);
                if let Some(dir) = staged.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = File::create(&staged)?;
                let temp = Temp {
                    file,
                    meta_set: false,
                };
                Ok((temp, Content::Staged(staged)))
            }
            Err(e) => Err(e),
        }
    }

    fn finish(&mut self, cur: Current) {
        let index = cur.index;
        let e = &self.entries[index];
        let result = match cur.sink {
            Sink::Broken => return,
            Sink::Disk { out, content } => finish_disk(*out, e).map(|()| content),
            Sink::Memory(data) if self.dry_run => {
                let new = match cur.encoding {
                    Encoding::Raw => Ok(data),
                    _ => delta::decompress(&data, e.size),
                };
                match new {
                    Ok(new) => {
                        let old = match self.plan.items[index].found {
                            Found::File(_) => {
                                plan::read_all(self.root, &e.path, DIFF_MAX).unwrap_or_default()
                            }
                            _ => Vec::new(),
                        };
                        self.diffs[index] = textdiff::unified(&e.path.to_string(), &old, &new);
                        Ok(Content::Missing)
                    }
                    Err(err) => Err(err.to_string()),
                }
            }
            Sink::Memory(compressed) => self.finish_delta(index, &compressed),
        };
        match result {
            Ok(content) => self.content[index] = content,
            Err(msg) => self.fail(index, msg),
        }
    }

    fn finish_delta(&mut self, index: usize, compressed: &[u8]) -> Result<Content, String> {
        let e = &self.entries[index];
        let limit = e.size.saturating_mul(2) + (1 << 20);
        let delta = delta::decompress(compressed, limit).map_err(|err| err.to_string())?;
        let have = found_size(&self.plan.items[index].found);
        let basis = plan::read_all(self.root, &e.path, have)
            .map_err(|err| format!("cannot read the current copy: {err}"))?;
        if Some(*blake3::hash(&basis).as_bytes()) != self.plan.items[index].found_hash {
            return Err("it changed on this machine during the pass; next pass retries".into());
        }
        let new = delta::apply(&basis, &delta, e.size).map_err(|err| err.to_string())?;
        if new.len() as u64 != e.size || *blake3::hash(&new).as_bytes() != e.hash {
            return Err("content rebuilt from the delta does not match the manifest".into());
        }
        let (mut temp, content) = self
            .open_temp(index)
            .map_err(|err| format!("cannot create temp file: {err}"))?;
        temp.file
            .write_all(&new)
            .and_then(|()| temp.finish(&meta_of(e)))
            .map_err(|err| format!("cannot write it: {err}"))?;
        Ok(content)
    }
}

/// Writes one chunk of whole content, decompressing a zstd chunk with the
/// pass's one decompression context.
fn feed_disk(
    out: &mut Hashing<Temp>,
    encoding: Encoding,
    chunk: &[u8],
    size: u64,
    unzstd: &mut zstd::bulk::Decompressor<'static>,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let data = match encoding {
        Encoding::Raw => chunk,
        _ if chunk.is_empty() => chunk,
        _ => {
            scratch.clear();
            scratch.reserve(DATA_CHUNK);
            unzstd
                .decompress_to_buffer(chunk, scratch)
                .map_err(|err| format!("invalid compressed data: {err}"))?;
            scratch
        }
    };
    if out.len + data.len() as u64 > size {
        return Err("the server sent more data than the manifest announced".into());
    }
    out.write_all(data)
        .map_err(|err| format!("cannot write it: {err}"))
}

fn finish_disk(mut hashing: Hashing<Temp>, e: &Entry) -> Result<(), String> {
    hashing
        .flush()
        .map_err(|err| format!("cannot write it: {err}"))?;
    if hashing.len != e.size || *hashing.hasher.finalize().as_bytes() != e.hash {
        return Err(
            "received content does not match the manifest (changed on the server during the pass?)"
                .into(),
        );
    }
    hashing
        .inner
        .finish(&meta_of(e))
        .map_err(|err| format!("cannot set mode or owner: {err}"))
}

/// Fills a dry run's report from the plan.
fn describe(
    plan: &Plan,
    entries: &[Entry],
    mut diffs: Vec<Option<String>>,
    report: &mut PassReport,
) {
    for removal in &plan.removals {
        let is_dir = removal.record.entry.is_dir();
        let action = match removal.record.origin {
            Origin::BackedUp => Action::Restore,
            Origin::ExistingDir => continue,
            Origin::Created if is_dir => Action::Rmdir,
            Origin::Created => Action::Delete,
        };
        match action {
            Action::Restore => report.files_restored += 1,
            Action::Rmdir => report.dirs_removed += 1,
            _ => report.files_deleted += 1,
        }
        report.changes.push(Change {
            path: removal.path.to_string(),
            action,
            diff: None,
        });
    }
    for (i, (e, item)) in entries.iter().zip(&plan.items).enumerate() {
        let action = match item.act {
            Act::Keep | Act::Skip => {
                if !e.is_dir() && item.act == Act::Keep {
                    report.files_unchanged += 1;
                }
                continue;
            }
            Act::Meta => Action::Metadata,
            Act::Mkdir => Action::Mkdir,
            Act::Write | Act::Link if matches!(item.found, Found::Absent) => Action::Create,
            Act::Write | Act::Link => Action::Update,
        };
        if item.drift {
            report.drift.push(e.path.to_string());
        }
        if action == Action::Mkdir {
            report.dirs_created += 1;
        } else {
            report.files_updated += 1;
        }
        report.changes.push(Change {
            path: e.path.to_string(),
            action,
            diff: diffs[i].take(),
        });
    }
}
