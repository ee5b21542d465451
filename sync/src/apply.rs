//! The commit: the switch from the old tree to the new one.
//!
//! All content is already in temp files beside the targets (or in staging
//! when a directory appears only now) and flushed to disk with one syncfs.
//! What remains is quick: removals deepest first, then each entry in order
//! by rename, so every file is at each instant wholly old or wholly new.
//! Before cfi first replaces something it did not write, a copy goes to
//! `backup/`; before it repairs a managed file changed locally, the changed
//! copy goes to `drift/`. Nothing is lost.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use cfi_groups::{Entry, Kind, Manifest, RelPath};

use crate::ledger::{Ledger, Origin, Record, StatKey, StateDir};
use crate::plan::{Act, Item, Plan};
use crate::report::{Action, Change, PassReport, PathError};
use crate::rootdir::{Found, Meta, RootDir, absent};

/// Where a file's new content waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Not needed or not received.
    Missing,
    /// In the temp beside the target.
    Beside,
    /// In the state dir: its directory is created by this commit.
    Staged(PathBuf),
    /// Receiving or checking it failed (already reported).
    Failed,
}

/// Mode, owner and mtime of an entry.
pub fn meta_of(e: &Entry) -> Meta {
    Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
    }
}

/// Runs the commit. Every failure is per path: it is reported, the path
/// keeps its old state, and the rest goes on.
#[derive(Debug)]
pub struct Commit<'a> {
    /// The target root.
    pub root: &'a mut RootDir,
    /// The state dir.
    pub state: &'a StateDir,
    /// The ledger, updated in place.
    pub ledger: &'a mut Ledger,
    /// The report, filled in.
    pub report: &'a mut PassReport,
    /// Suffix for drift copies.
    pub stamp: u64,
    /// Whether the ledger changed (a no-op pass leaves it, and the disk,
    /// alone).
    pub dirty: bool,
}

impl Commit<'_> {
    /// Applies `plan` for `manifest`, with content as in `content`.
    pub fn run(&mut self, manifest: &Manifest, plan: &Plan, content: &[Content]) {
        for removal in &plan.removals {
            if let Err(err) = self.remove(&removal.path, &removal.record) {
                self.fail(&removal.path, err);
            }
        }
        for ((e, item), content) in manifest.entries().iter().zip(&plan.items).zip(content) {
            if item.act == Act::Skip || *content == Content::Failed {
                continue;
            }
            if let Err(err) = self.place(e, item, content) {
                self.fail(&e.path, err);
            }
        }
    }

    fn fail(&mut self, path: &RelPath, err: String) {
        self.report.errors.push(PathError {
            path: path.to_string(),
            message: err,
        });
    }

    fn change(&mut self, path: &RelPath, action: Action) {
        self.report.changes.push(Change {
            path: path.to_string(),
            action,
            diff: None,
        });
    }

    fn remove(&mut self, path: &RelPath, rec: &Record) -> Result<(), String> {
        let found = self
            .root
            .lookup(path)
            .map_err(|e| format!("cannot look it up: {e}"))?;
        if rec.entry.is_dir() {
            if matches!(found, Found::Dir(_)) && rec.origin != Origin::ExistingDir {
                match self.root.rmdir(path) {
                    Ok(()) => {
                        self.report.dirs_removed += 1;
                        self.change(path, Action::Rmdir);
                    }
                    // Someone put their own files in it: it stays theirs.
                    Err(e)
                        if rustix::io::Errno::from_io_error(&e)
                            == Some(rustix::io::Errno::NOTEMPTY) => {}
                    Err(e) => return Err(format!("cannot remove directory: {e}")),
                }
            }
        } else if !matches!(found, Found::Absent | Found::Dir(_)) {
            if !holds(&found, rec, self.root, path) {
                self.keep_drift(path, &found)?;
                self.report.drift.push(path.to_string());
            }
            self.root
                .unlink(path)
                .map_err(|e| format!("cannot remove: {e}"))?;
        }
        if rec.origin == Origin::BackedUp {
            self.restore(path)?;
            self.report.files_restored += 1;
            self.change(path, Action::Restore);
        } else if !rec.entry.is_dir() && !matches!(found, Found::Absent | Found::Dir(_)) {
            self.report.files_deleted += 1;
            self.change(path, Action::Delete);
        }
        self.ledger.records.remove(path);
        self.dirty = true;
        Ok(())
    }

    fn place(&mut self, e: &Entry, item: &Item, content: &Content) -> Result<(), String> {
        if item.settled {
            if !e.is_dir() {
                self.report.files_unchanged += 1;
            }
            return Ok(());
        }
        let path = &e.path;
        let old = item.origin;
        let mut origin = old.unwrap_or(Origin::Created);
        match item.act {
            Act::Keep | Act::Skip => {
                if old.is_none() {
                    origin = self.adopt(path, &item.found)?;
                }
                if !e.is_dir() {
                    self.report.files_unchanged += 1;
                }
            }
            Act::Meta => {
                if old.is_none() {
                    origin = self.adopt(path, &item.found)?;
                }
                self.root
                    .set_meta(path, &meta_of(e), matches!(e.kind, Kind::Symlink(_)))
                    .map_err(|err| format!("cannot set mode or owner: {err}"))?;
                if !e.is_dir() {
                    self.report.files_updated += 1;
                }
                self.change(path, Action::Metadata);
            }
            Act::Mkdir | Act::Write | Act::Link => {
                // A new file where planning saw nothing goes in by a rename
                // that refuses to replace: one request instead of a look
                // and a rename, and nothing that appeared meanwhile is lost.
                let placed = matches!(
                    (&e.kind, content, &item.found),
                    (Kind::File, Content::Beside, Found::Absent)
                ) && self
                    .root
                    .commit_temp_if_absent(path)
                    .map_err(|err| format!("cannot rename into place: {err}"))?;
                if !placed {
                    origin = self.replace(e, content, old, item.drift)?;
                }
                if !e.is_dir() {
                    self.report.files_updated += 1;
                    let action = if matches!(item.found, Found::Absent) {
                        Action::Create
                    } else {
                        Action::Update
                    };
                    self.change(path, action);
                }
            }
        }
        if item.drift {
            self.report.drift.push(path.to_string());
        }
        let stat = match (&e.kind, item.act, &item.found) {
            // Untouched: the stat seen while planning still holds.
            (Kind::File, Act::Keep, Found::File(st)) => Some(StatKey::of(st)),
            (Kind::File, ..) => match self.root.lookup(path) {
                Ok(Found::File(st)) => Some(StatKey::of(&st)),
                _ => None,
            },
            _ => None,
        };
        let record = Record {
            entry: e.clone(),
            stat,
            origin,
        };
        match self.ledger.records.get_mut(path) {
            Some(same) if *same == record => {}
            Some(changed) => {
                *changed = record;
                self.dirty = true;
            }
            None => {
                self.ledger.records.insert(path.clone(), record);
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Puts a directory, file or symlink at `e.path` over whatever is
    /// there now, saving what must not be lost.
    fn replace(
        &mut self,
        e: &Entry,
        content: &Content,
        old: Option<Origin>,
        drift: bool,
    ) -> Result<Origin, String> {
        let path = &e.path;
        let current = self
            .root
            .lookup(path)
            .map_err(|err| format!("cannot look it up: {err}"))?;
        let origin = self.clear_way(path, &current, old, drift, e.is_dir())?;
        match (&e.kind, content) {
            (Kind::Dir, _) => {
                if !matches!(current, Found::Dir(_)) {
                    self.root
                        .mkdir(path, e.mode)
                        .map_err(|err| format!("cannot create directory: {err}"))?;
                }
                self.root
                    .set_meta(path, &meta_of(e), false)
                    .map_err(|err| format!("cannot set mode or owner: {err}"))?;
                self.report.dirs_created += 1;
                self.change(path, Action::Mkdir);
            }
            (Kind::File, Content::Beside) => {
                self.root
                    .commit_temp(path)
                    .map_err(|err| format!("cannot rename into place: {err}"))?;
            }
            (Kind::File, Content::Staged(staged)) => {
                self.copy_in(staged, path, &meta_of(e))?;
                let _ = fs::remove_file(staged);
            }
            (Kind::File, _) => return Err("the server sent no content for it".into()),
            (Kind::Symlink(target), _) => {
                self.root
                    .symlink(target, path)
                    .map_err(|err| format!("cannot create symlink: {err}"))?;
                self.root
                    .set_meta(path, &meta_of(e), true)
                    .map_err(|err| format!("cannot set owner: {err}"))?;
            }
        }
        Ok(origin)
    }

    /// Takes over a path that was already as desired.
    fn adopt(&mut self, path: &RelPath, found: &Found) -> Result<Origin, String> {
        match found {
            Found::Dir(_) | Found::Symlink(..) if self.root.is_dir_following(path) => {
                Ok(Origin::ExistingDir)
            }
            Found::Absent => Ok(Origin::Created),
            _ => {
                self.backup(path, found)?;
                Ok(Origin::BackedUp)
            }
        }
    }

    /// Makes room for a new file, symlink or directory at `path`, saving
    /// what must not be lost, and says what the path's origin is.
    fn clear_way(
        &mut self,
        path: &RelPath,
        current: &Found,
        old: Option<Origin>,
        drift: bool,
        want_dir: bool,
    ) -> Result<Origin, String> {
        let managed = old.is_some();
        match current {
            Found::Absent => Ok(old.unwrap_or(Origin::Created)),
            Found::Other(_) => Err("a device, socket or fifo is in the way".into()),
            // Planned as absent: the directory was made before the data came.
            Found::Dir(_) if want_dir => Ok(old.unwrap_or(Origin::Created)),
            Found::Dir(_) => {
                // A directory is replaced only when empty: the removals
                // above emptied it if it was cfi's.
                self.root.rmdir(path).map_err(|err| {
                    format!("cannot replace directory with a non-directory: {err}")
                })?;
                Ok(old.unwrap_or(Origin::Created))
            }
            Found::File(_) | Found::Symlink(..) => {
                if managed {
                    if drift {
                        self.keep_drift(path, current)?;
                    }
                } else {
                    self.backup(path, current)?;
                }
                if want_dir {
                    self.root
                        .unlink(path)
                        .map_err(|err| format!("cannot remove: {err}"))?;
                }
                Ok(if managed {
                    old.unwrap_or(Origin::Created)
                } else {
                    Origin::BackedUp
                })
            }
        }
    }

    fn backup(&mut self, path: &RelPath, found: &Found) -> Result<(), String> {
        let dest = self.state.backup_path(path);
        // A backup from a pass killed after saving it is the true original.
        if fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        self.copy_out(path, found, &dest)
            .map_err(|err| format!("cannot back up the original to {}: {err}", dest.display()))
    }

    fn keep_drift(&mut self, path: &RelPath, found: &Found) -> Result<(), String> {
        let dest = self.state.drift_path(path, self.stamp);
        self.copy_out(path, found, &dest)
            .map_err(|err| format!("cannot keep the drifted copy at {}: {err}", dest.display()))
    }

    /// Copies a file or symlink of the root to the state dir, with its mode,
    /// owner and mtime.
    fn copy_out(&mut self, path: &RelPath, found: &Found, dest: &Path) -> io::Result<()> {
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = dest.with_file_name(".cfi-copy.tmp");
        let _ = fs::remove_file(&tmp);
        match found {
            Found::Symlink(_, target) => {
                symlink(Path::new(std::ffi::OsStr::from_bytes(target)), &tmp)?;
            }
            Found::File(st) => {
                let mut src = self.root.open_read(path)?;
                let mut out = File::create(&tmp)?;
                io::copy(&mut src, &mut out)?;
                let meta = Meta {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    mtime: st.st_mtime,
                    mtime_nsec: st.st_mtime_nsec as u32,
                };
                meta.apply(&out, true)?;
                out.sync_all()?;
            }
            _ => return Ok(()),
        }
        fs::rename(&tmp, dest)
    }

    /// Puts the original of `path` back from `backup/`.
    fn restore(&mut self, path: &RelPath) -> Result<(), String> {
        let src = self.state.backup_path(path);
        let meta = match fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read backup {}: {e}", src.display())),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&src).map_err(|e| format!("cannot read backup: {e}"))?;
            self.root
                .symlink(target.as_os_str().as_bytes(), path)
                .map_err(|e| format!("cannot restore original: {e}"))?;
        } else {
            let m = Meta {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                mtime_nsec: meta.mtime_nsec() as u32,
            };
            self.copy_in(&src, path, &m)?;
        }
        fs::remove_file(&src).map_err(|e| format!("cannot remove backup {}: {e}", src.display()))
    }

    /// Copies a file from the state dir into the root via temp + rename.
    fn copy_in(&mut self, src: &Path, path: &RelPath, meta: &Meta) -> Result<(), String> {
        let fail = |e: io::Error| format!("cannot write from {}: {e}", src.display());
        let mut from = File::open(src).map_err(fail)?;
        let mut tmp = self.root.create_temp(path, meta).map_err(fail)?;
        io::copy(&mut from, &mut tmp.file).map_err(fail)?;
        tmp.finish(meta).map_err(fail)?;
        tmp.file.flush().map_err(fail)?;
        tmp.file.sync_all().map_err(fail)?;
        self.root.commit_temp(path).map_err(fail)
    }
}

/// Whether what is at a managed path is still what cfi wrote.
fn holds(found: &Found, rec: &Record, root: &mut RootDir, path: &RelPath) -> bool {
    match (found, &rec.entry.kind) {
        (Found::Symlink(_, t), Kind::Symlink(want)) => t == want,
        (Found::File(st), Kind::File) => {
            rec.stat == Some(StatKey::of(st))
                || root
                    .open_read(path)
                    .and_then(cfi_groups::manifest::hash_file)
                    .is_ok_and(|h| h == rec.entry.hash)
        }
        (Found::Absent, _) => true,
        _ => false,
    }
}

/// Whether an error means the parent directory is not there yet.
pub fn parent_missing(e: &io::Error) -> bool {
    absent(e)
}
