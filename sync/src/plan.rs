//! The agent's plan: what each manifest entry and each path leaving the
//! tree needs, found by comparing the manifest, the ledger and the disk.
//!
//! Planning reads and never writes. A managed file whose stat still matches
//! the ledger is taken to hold what cfi wrote without being read.

use std::io::Read;

use cfi_groups::manifest::hash_file;
use cfi_groups::{Entry, Kind, Manifest, RelPath};
use rustix::fs::Stat;

use crate::delta::{self, MAX_DELTA_FILE, MIN_DELTA_BASIS};
use crate::ledger::{Ledger, Origin, Record, StatKey};
use crate::report::PathError;
use crate::rootdir::{Found, RootDir};

/// What one manifest entry needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Already as desired.
    Keep,
    /// Content right; mode, owner or mtime not.
    Meta,
    /// A directory to create.
    Mkdir,
    /// A file whose content must come from the server.
    Write,
    /// A symlink to place.
    Link,
    /// Planning this path failed; it is left alone.
    Skip,
}

/// The plan for one manifest entry.
#[derive(Debug)]
pub struct Item {
    /// What to do.
    pub act: Act,
    /// What was on disk when planned.
    pub found: Found,
    /// Content hash of what was on disk, for a file.
    pub found_hash: Option<[u8; 32]>,
    /// The path is managed and was changed locally since cfi wrote it.
    pub drift: bool,
    /// A parent directory replaces something only in the commit: until
    /// then the parent path leads elsewhere (through an old symlink, or
    /// nowhere), so content waits in staging and nothing is created early.
    pub deferred: bool,
    /// What was there before cfi, if cfi manages the path already.
    pub origin: Option<Origin>,
    /// Kept, and its ledger record already says exactly this: the commit
    /// has nothing to do, not even to look at the ledger.
    pub settled: bool,
}

/// A managed path that left the tree.
#[derive(Debug)]
pub struct Removal {
    /// The path.
    pub path: RelPath,
    /// Its ledger record.
    pub record: Record,
}

/// The whole plan.
#[derive(Debug, Default)]
pub struct Plan {
    /// One per manifest entry, same order.
    pub items: Vec<Item>,
    /// Deepest first.
    pub removals: Vec<Removal>,
    /// Paths that could not be planned.
    pub errors: Vec<PathError>,
    /// Files read and hashed while planning.
    pub hashed: u64,
}

/// Whether ownership can be set, and so should be compared.
pub fn owner_matters() -> bool {
    rustix::process::geteuid().is_root()
}

fn meta_ok(st: &Stat, e: &Entry, owners: bool, times: bool) -> bool {
    (st.st_mode & 0o7777 == e.mode || matches!(e.kind, Kind::Symlink(_)))
        && (!owners || (st.st_uid == e.uid && st.st_gid == e.gid))
        && (!times || (st.st_mtime == e.mtime && st.st_mtime_nsec as u32 == e.mtime_nsec))
}

/// Plans a pass.
pub fn plan(manifest: &Manifest, ledger: &Ledger, root: &mut RootDir) -> Plan {
    let owners = owner_matters();
    let mut plan = Plan {
        items: Vec::with_capacity(manifest.len()),
        ..Plan::default()
    };
    let mut replaced: Vec<&RelPath> = Vec::new();
    // Manifest and ledger are sorted the same way: one merge pairs each
    // entry with its record and finds the records that left the tree.
    let mut records = ledger.records.iter().peekable();
    let left = |path: &RelPath, record: &Record, removals: &mut Vec<Removal>| {
        removals.push(Removal {
            path: path.clone(),
            record: record.clone(),
        });
    };
    for e in manifest.entries() {
        while let Some((path, record)) = records.next_if(|(p, _)| **p < e.path) {
            left(path, record, &mut plan.removals);
        }
        let rec = records.next_if(|(p, _)| **p == e.path).map(|(_, r)| r);
        while replaced.last().is_some_and(|d| !e.path.is_below(d)) {
            replaced.pop();
        }
        let deferred = !replaced.is_empty();
        let planned = if root.is_reserved(&e.path) {
            Err("it is inside this agent's state directory; refusing to touch it".into())
        } else if deferred {
            Ok(fresh(e, rec))
        } else {
            plan_entry(e, rec, root, owners, &mut plan.hashed)
        };
        match planned {
            Ok(mut item) => {
                item.deferred = deferred;
                if item.act == Act::Mkdir && (deferred || !matches!(item.found, Found::Absent)) {
                    replaced.push(&e.path);
                }
                item.origin = rec.map(|r| r.origin);
                item.settled = item.act == Act::Keep
                    && rec.is_some_and(|r| {
                        r.entry == *e
                            && match &item.found {
                                Found::File(st) => r.stat == Some(StatKey::of(st)),
                                _ => r.stat.is_none(),
                            }
                    });
                plan.items.push(item);
            }
            Err(err) => {
                plan.errors.push(PathError {
                    path: e.path.to_string(),
                    message: err,
                });
                plan.items.push(Item {
                    act: Act::Skip,
                    found: Found::Absent,
                    found_hash: None,
                    drift: false,
                    deferred,
                    origin: rec.map(|r| r.origin),
                    settled: false,
                });
            }
        }
    }
    for (path, record) in records {
        left(path, record, &mut plan.removals);
    }
    // Deepest first: children before their directory.
    plan.removals.reverse();
    plan
}

fn plan_entry(
    e: &Entry,
    rec: Option<&Record>,
    root: &mut RootDir,
    owners: bool,
    hashed: &mut u64,
) -> Result<Item, String> {
    let found = root
        .lookup(&e.path)
        .map_err(|err| format!("cannot look it up: {err}"))?;
    let mut found_hash = None;
    let (act, drift) = match (&e.kind, &found) {
        (_, Found::Other(_)) => {
            return Err("a device, socket or fifo is in the way; refusing to replace it".into());
        }
        (Kind::Dir, Found::Dir(st)) => {
            let ours = rec.is_some_and(|r| r.origin != Origin::ExistingDir);
            if ours && !meta_ok(st, e, owners, false) {
                let drift = rec.is_some_and(|r| !meta_ok(st, &r.entry, owners, false));
                (Act::Meta, drift)
            } else {
                (Act::Keep, false)
            }
        }
        // A directory symlink cfi did not make (merged /usr's `bin ->
        // usr/bin`) stands for the directory and is kept.
        (Kind::Dir, Found::Symlink(..))
            if rec.is_none_or(|r| r.origin == Origin::ExistingDir)
                && root.is_dir_following(&e.path) =>
        {
            (Act::Keep, false)
        }
        (Kind::Dir, _) => (Act::Mkdir, rec.is_some() && !matches!(found, Found::Absent)),
        (Kind::File, Found::File(st)) => {
            let key = StatKey::of(st);
            let cached = rec.filter(|r| r.stat == Some(key) && r.entry.kind == Kind::File);
            let hash = match cached {
                Some(r) => r.entry.hash,
                None => {
                    *hashed += 1;
                    let f = root
                        .open_read(&e.path)
                        .map_err(|err| format!("cannot open it: {err}"))?;
                    hash_file(f).map_err(|err| format!("cannot read it: {err}"))?
                }
            };
            found_hash = Some(hash);
            let wrote = rec.map(|r| &r.entry);
            let content_drift = wrote.is_some_and(|w| w.kind != Kind::File || w.hash != hash);
            let meta_drift = wrote.is_some_and(|w| !meta_ok(st, w, owners, false));
            if hash == e.hash {
                let ok = meta_ok(st, e, owners, true);
                (if ok { Act::Keep } else { Act::Meta }, meta_drift && !ok)
            } else {
                (Act::Write, content_drift || meta_drift)
            }
        }
        (Kind::File, _) => (Act::Write, rec.is_some()),
        (Kind::Symlink(target), Found::Symlink(st, have)) if have == target => {
            let ok = meta_ok(st, e, owners, false);
            (if ok { Act::Keep } else { Act::Meta }, false)
        }
        (Kind::Symlink(_), _) => {
            let drift = rec.is_some_and(|r| match (&r.entry.kind, &found) {
                (Kind::Symlink(t), Found::Symlink(_, have)) => t != have,
                _ => true,
            });
            (Act::Link, drift)
        }
    };
    Ok(Item {
        act,
        found,
        found_hash,
        drift,
        deferred: false,
        origin: None,
        settled: false,
    })
}

/// The plan for an entry below a directory the commit creates in place of
/// something else: nothing of it can be on disk yet.
fn fresh(e: &Entry, rec: Option<&Record>) -> Item {
    let act = match e.kind {
        Kind::Dir => Act::Mkdir,
        Kind::File => Act::Write,
        Kind::Symlink(_) => Act::Link,
    };
    Item {
        act,
        found: Found::Absent,
        found_hash: None,
        drift: rec.is_some(),
        deferred: true,
        origin: None,
        settled: false,
    }
}

/// The signature of the agent's copy, when a delta beats sending whole.
pub fn basis_signature(root: &mut RootDir, e: &Entry, item: &Item) -> Option<Vec<u8>> {
    let Found::File(st) = &item.found else {
        return None;
    };
    let have = st.st_size as u64;
    if !(MIN_DELTA_BASIS..=MAX_DELTA_FILE).contains(&have) || e.size > MAX_DELTA_FILE {
        return None;
    }
    let basis = read_all(root, &e.path, have).ok()?;
    Some(delta::signature(&basis, e.size))
}

/// Reads a whole file of the root, at most `limit` bytes.
pub fn read_all(root: &mut RootDir, rel: &RelPath, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = root.open_read(rel)?;
    let mut buf = Vec::with_capacity(limit as usize);
    f.take(limit + 1).read_to_end(&mut buf)?;
    Ok(buf)
}
