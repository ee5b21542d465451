//! Reading one layer directory into manifest entries.
//!
//! Every directory is opened relative to its open parent with
//! `O_NOFOLLOW`, and every name is looked at relative to its open
//! directory: nothing is resolved from `/` and no symlink is ever followed.
//! That is the safe way and, on a 5,000-file tree, twice as fast as paths.
//! (Two threads were tried: on a two-core machine the agent's own stat pass
//! runs at the same time, and the walk got slower, not faster.)

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::hashcache::{HashCache, StatKey};
use crate::manifest::{Entry, Kind, ManifestError, hash_file};
use crate::relpath::RelPath;

/// A hash computed during the walk, for the cache: (name, stat, hash).
pub(crate) type Hashed = (Vec<u8>, StatKey, [u8; 32]);

struct Job {
    rel: Option<RelPath>,
    dir: OwnedFd,
}

/// What one layer holds, sorted in manifest order, and the hashes that had
/// to be computed (the cache had none for that stat).
pub(crate) fn walk(
    layer: &Path,
    layer_fd: &File,
    li: u8,
    cache: &HashCache,
) -> Result<(Vec<Entry>, Vec<Hashed>), ManifestError> {
    let top = rustix::fs::openat(
        layer_fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(layer, None, None, e))?;
    let walker = Walker { layer, li, cache };
    let mut jobs = vec![Job {
        rel: None,
        dir: top,
    }];
    let mut entries = Vec::new();
    let mut hashed = Vec::new();
    while let Some(job) = jobs.pop() {
        jobs.extend(walker.read_dir(job, &mut entries, &mut hashed)?);
    }
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, hashed))
}

fn io_error(
    layer: &Path,
    rel: Option<&RelPath>,
    name: Option<&[u8]>,
    e: rustix::io::Errno,
) -> ManifestError {
    ManifestError::Io {
        path: shown(layer, rel, name),
        cause: e.into(),
    }
}

fn shown(layer: &Path, rel: Option<&RelPath>, name: Option<&[u8]>) -> PathBuf {
    let mut path = layer.to_path_buf();
    if let Some(r) = rel {
        path.push(r.as_path());
    }
    if let Some(n) = name {
        path.push(std::ffi::OsStr::from_bytes(n));
    }
    path
}

struct Walker<'a> {
    layer: &'a Path,
    li: u8,
    cache: &'a HashCache,
}

impl Walker<'_> {
    /// Reads one directory: its entries into `entries`, its subdirectories
    /// returned as new jobs.
    fn read_dir(
        &self,
        job: Job,
        entries: &mut Vec<Entry>,
        hashed: &mut Vec<Hashed>,
    ) -> Result<Vec<Job>, ManifestError> {
        let Job { rel, dir } = job;
        let rel = rel.as_ref();
        let layer = self.layer;
        let mut names = Vec::new();
        let mut listing =
            rustix::fs::Dir::read_from(&dir).map_err(|e| io_error(layer, rel, None, e))?;
        while let Some(dirent) = listing.read() {
            let dirent = dirent.map_err(|e| io_error(layer, rel, None, e))?;
            let name = dirent.file_name().to_bytes();
            // Top-level `.cfi*` names are the admins' notes, never synced.
            if name != b"." && name != b".." && !(rel.is_none() && name.starts_with(b".cfi")) {
                names.push(name.to_vec());
            }
        }
        let mut subdirs = Vec::new();
        let mut key = Vec::new();
        for name in names {
            let path = match rel {
                Some(r) => r.join(&name),
                None => RelPath::new(name.clone()),
            }
            .map_err(|cause| ManifestError::BadName {
                dir: shown(self.layer, rel, None),
                cause,
            })?;
            let st = rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error(layer, rel, Some(&name), e))?;
            let (kind, hash) = match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let fd = rustix::fs::openat(
                        &dir,
                        name.as_slice(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_error(layer, rel, Some(&name), e))?;
                    subdirs.push(Job {
                        rel: Some(path.clone()),
                        dir: fd,
                    });
                    (Kind::Dir, [0; 32])
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dir, name.as_slice(), Vec::new())
                        .map_err(|e| io_error(layer, rel, Some(&name), e))?
                        .into_bytes();
                    let hash = *blake3::hash(&target).as_bytes();
                    (Kind::Symlink(target), hash)
                }
                FileType::RegularFile => {
                    let stat = StatKey::of(&st);
                    key.clear();
                    key.push(self.li);
                    key.extend_from_slice(path.as_bytes());
                    let hash = match self.cache.get(&key, &stat) {
                        Some(h) => h,
                        None => {
                            let fd = rustix::fs::openat(
                                &dir,
                                name.as_slice(),
                                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                                Mode::empty(),
                            )
                            .map_err(|e| io_error(layer, rel, Some(&name), e))?;
                            let h =
                                hash_file(File::from(fd)).map_err(|cause| ManifestError::Io {
                                    path: shown(self.layer, rel, Some(&name)),
                                    cause,
                                })?;
                            hashed.push((key.clone(), stat, h));
                            h
                        }
                    };
                    (Kind::File, hash)
                }
                other => {
                    let kind = match other {
                        FileType::BlockDevice => "block device",
                        FileType::CharacterDevice => "character device",
                        FileType::Socket => "socket",
                        FileType::Fifo => "fifo",
                        _ => "special file",
                    };
                    return Err(ManifestError::Special {
                        path: shown(self.layer, rel, Some(&name)),
                        kind,
                    });
                }
            };
            entries.push(Entry {
                path,
                size: if kind == Kind::File {
                    st.st_size as u64
                } else {
                    0
                },
                kind,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: st.st_mtime,
                mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
                hash,
            });
        }
        Ok(subdirs)
    }
}
