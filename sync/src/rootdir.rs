//! File operations confined to a target root.
//!
//! Every path is resolved with openat2 `RESOLVE_IN_ROOT`: a symlink on the
//! client, absolute or relative, resolves as if the root were `/`, so with
//! `--root /srv/client1` nothing lands outside `/srv/client1`, and a
//! merged-/usr `bin -> usr/bin` link is followed the way the system does.
//! The final component is never followed: files are opened `O_NOFOLLOW` and
//! replaced by rename, so a symlink planted at a target is replaced, not
//! written through.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use cfi_groups::RelPath;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Stat, Timespec, Timestamps};

/// An open target root.
#[derive(Debug)]
pub struct RootDir {
    path: PathBuf,
    fd: OwnedFd,
    /// The last parent directory resolved: entries come sorted, so
    /// neighbours share it. Dropped whenever a directory is removed.
    cached: Option<Parent>,
    /// What a file created here comes out as.
    creator: Creator,
    /// Whether the file system takes `RENAME_NOREPLACE` (until it says no).
    noreplace: bool,
    /// The file systems written to, each with a directory on it: a tree
    /// may span several (`/srv` or `/home` mounted apart from `/`).
    written: Vec<(u64, OwnedFd)>,
    /// A path below the root that no tree may touch (the agent's own state
    /// dir when it lives inside the root, as `/var/lib/cfi-client` in `/`).
    reserved: Option<RelPath>,
}

/// A resolved parent directory: its fd, or `None` when it does not exist
/// (a first pass asks about every file of a new directory; on a FUSE root
/// each miss is a round trip).
#[derive(Debug)]
struct Parent {
    rel: Vec<u8>,
    fd: Option<OwnedFd>,
    /// Its mode and file system, once asked.
    facts: Option<DirFacts>,
}

/// What a write into a directory depends on.
#[derive(Debug, Clone, Copy)]
struct DirFacts {
    /// Set-group-ID: new files take its group.
    setgid: bool,
    /// The file system it is on.
    dev: u64,
}

/// Owner and umask of the files this process creates. A temp that comes
/// out of creation already owned and moded as wanted needs no chown or
/// chmod: on a FUSE root (a container's) each is a round trip, and a
/// first sync of small files spent a third of its requests on them.
#[derive(Debug, Clone, Copy)]
struct Creator {
    uid: u32,
    gid: u32,
    /// `None` when it cannot be read without changing it.
    umask: Option<u32>,
}

impl Creator {
    fn of_this_process() -> Self {
        Self {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            umask: std::fs::read_to_string("/proc/self/status")
                .ok()
                .as_deref()
                .and_then(umask_in_status),
        }
    }

    /// Whether creating with `want`'s permission bits, in a directory that
    /// is not set-group-ID, gives exactly `want`'s owner and mode. Special
    /// bits are always set by chmod after chown, which would clear them.
    fn creates_as(&self, want: &Meta) -> bool {
        want.mode & 0o7000 == 0
            && want.uid == self.uid
            && want.gid == self.gid
            && self.umask.is_some_and(|u| want.mode & u == 0)
    }
}

/// The umask in the text of `/proc/self/status` (Linux 4.7 and later).
fn umask_in_status(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// A temp file created beside its target.
#[derive(Debug)]
pub struct Temp {
    /// Open for writing.
    pub file: File,
    /// Created with its final owner and mode: only the mtime is left.
    pub meta_set: bool,
}

impl io::Write for Temp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Temp {
    /// Sets what creation did not: owner and mode, and the mtime.
    pub fn finish(&self, meta: &Meta) -> io::Result<()> {
        if self.meta_set {
            rustix::fs::futimens(&self.file, &meta.times())?;
            Ok(())
        } else {
            meta.apply(&self.file, true)
        }
    }
}

/// What is at a path, not following a final symlink.
#[derive(Debug, Clone)]
pub enum Found {
    /// Nothing (or a parent is not a directory).
    Absent,
    /// A directory.
    Dir(Stat),
    /// A regular file.
    File(Stat),
    /// A symlink and its target.
    Symlink(Stat, Vec<u8>),
    /// A device, socket or fifo.
    Other(Stat),
}

impl Found {
    /// The stat, if anything is there.
    pub fn stat(&self) -> Option<&Stat> {
        match self {
            Found::Absent => None,
            Found::Dir(s) | Found::File(s) | Found::Symlink(s, _) | Found::Other(s) => Some(s),
        }
    }
}

fn in_root() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Name of the temp file that stands beside `name` until the commit.
pub fn temp_name(name: &[u8]) -> Vec<u8> {
    let h = blake3::hash(name);
    let mut out = b".cfi.".to_vec();
    for b in &h.as_bytes()[..8] {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out.extend_from_slice(b".tmp");
    out
}

fn os(name: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(name))
}

impl RootDir {
    /// Opens a root directory.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            fd,
            cached: None,
            creator: Creator::of_this_process(),
            noreplace: true,
            written: Vec::new(),
            reserved: None,
        })
    }

    /// Keeps trees out of `dir` if it lies inside the root.
    pub fn reserve(&mut self, dir: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let (Ok(root), Ok(dir)) = (self.path.canonicalize(), dir.canonicalize()) else {
            return;
        };
        self.reserved = dir
            .strip_prefix(&root)
            .ok()
            .and_then(|rel| RelPath::new(rel.as_os_str().as_bytes().to_vec()).ok());
    }

    /// Whether `rel` is the reserved directory or below it.
    pub fn is_reserved(&self, rel: &RelPath) -> bool {
        self.reserved
            .as_ref()
            .is_some_and(|r| rel == r || rel.is_below(r))
    }

    /// The root's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parent directory of `rel`, resolved in the root.
    fn parent(&mut self, rel: &RelPath) -> io::Result<&OwnedFd> {
        match &self.resolved(rel)?.fd {
            Some(fd) => Ok(fd),
            None => Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOENT.raw_os_error(),
            )),
        }
    }

    /// The cached parent of `rel`, resolved first if another is cached.
    fn resolved(&mut self, rel: &RelPath) -> io::Result<&mut Parent> {
        let parent = rel.parent().unwrap_or(b"");
        if self.cached.as_ref().is_some_and(|p| p.rel != parent) {
            self.cached = None;
        }
        match &mut self.cached {
            Some(hit) => Ok(hit),
            slot @ None => {
                let fd = if parent.is_empty() {
                    Some(self.fd.try_clone()?)
                } else {
                    match rustix::fs::openat2(
                        &self.fd,
                        os(parent),
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        in_root(),
                    ) {
                        Ok(fd) => Some(fd),
                        Err(e) if e == rustix::io::Errno::NOENT => None,
                        Err(e) => return Err(e.into()),
                    }
                };
                Ok(slot.insert(Parent {
                    rel: parent.to_vec(),
                    fd,
                    facts: None,
                }))
            }
        }
    }

    /// The parent of `rel`'s mode and file system, asked once per parent.
    fn parent_facts(&mut self, rel: &RelPath) -> io::Result<DirFacts> {
        let parent = self.resolved(rel)?;
        if let Some(known) = parent.facts {
            return Ok(known);
        }
        let Some(fd) = &parent.fd else {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOENT.raw_os_error(),
            ));
        };
        let st = rustix::fs::fstat(fd)?;
        let facts = DirFacts {
            setgid: st.st_mode & 0o2000 != 0,
            dev: st.st_dev,
        };
        parent.facts = Some(facts);
        Ok(facts)
    }

    /// Notes that something in the parent of `rel` changes: its file
    /// system is among those [`RootDir::syncfs`] flushes.
    fn writing_in(&mut self, rel: &RelPath) -> io::Result<DirFacts> {
        let facts = self.parent_facts(rel)?;
        if !self.written.iter().any(|(dev, _)| *dev == facts.dev) {
            // syncfs refuses O_PATH descriptors: a real one per file system.
            let dir = rustix::fs::openat(
                self.parent(rel)?,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            self.written.push((facts.dev, dir));
        }
        Ok(facts)
    }

    /// Forgets the cached parent: a directory was removed or replaced.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    /// Forgets a cached missing parent: something was created, and it may
    /// be that directory (or a link to it).
    fn created(&mut self) {
        if self.cached.as_ref().is_some_and(|p| p.fd.is_none()) {
            self.cached = None;
        }
    }

    /// What is at `rel`, without following a final symlink.
    pub fn lookup(&mut self, rel: &RelPath) -> io::Result<Found> {
        let dir = match self.parent(rel) {
            Ok(d) => d,
            Err(e) if absent(&e) => return Ok(Found::Absent),
            Err(e) => return Err(e),
        };
        let name = os(rel.file_name());
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) if absent(&e.into()) => return Ok(Found::Absent),
            Err(e) => return Err(e.into()),
        };
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        Ok(match ft {
            rustix::fs::FileType::Directory => Found::Dir(st),
            rustix::fs::FileType::RegularFile => Found::File(st),
            rustix::fs::FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
                Found::Symlink(st, target.into_bytes())
            }
            _ => Found::Other(st),
        })
    }

    /// Whether `rel` resolves, following symlinks inside the root, to a
    /// directory (a `bin -> usr/bin` link counts as the directory).
    pub fn is_dir_following(&mut self, rel: &RelPath) -> bool {
        rustix::fs::openat2(
            &self.fd,
            rel.as_path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            in_root(),
        )
        .is_ok()
    }

    /// Opens a regular file for reading, never through a final symlink.
    pub fn open_read(&mut self, rel: &RelPath) -> io::Result<File> {
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        let fd = rustix::fs::openat(
            dir,
            &name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Creates (replacing any leftover) the temp file beside `rel`, for
    /// content that will have `want`'s owner and mode. It is created with
    /// that mode only when it comes out owned as wanted; otherwise it is
    /// private (0600) until [`Temp::finish`] gives it owner, then mode.
    pub fn create_temp(&mut self, rel: &RelPath, want: &Meta) -> io::Result<Temp> {
        let tmp = temp_name(rel.file_name());
        let facts = self.writing_in(rel)?;
        let meta_set = self.creator.creates_as(want) && !facts.setgid;
        let mode = if meta_set { want.mode & 0o777 } else { 0o600 };
        let dir = self.parent(rel)?;
        let create = || {
            rustix::fs::openat(
                dir,
                os(&tmp),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
        };
        // A leftover of an interrupted pass is rare: removed only when met.
        let fd = match create() {
            Err(e) if e == rustix::io::Errno::EXIST => {
                rustix::fs::unlinkat(dir, os(&tmp), AtFlags::empty())?;
                create()?
            }
            other => other?,
        };
        Ok(Temp {
            file: File::from(fd),
            meta_set,
        })
    }

    /// Renames the temp beside `rel` onto `rel`: the atomic switch.
    pub fn commit_temp(&mut self, rel: &RelPath) -> io::Result<()> {
        let tmp = temp_name(rel.file_name());
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        rustix::fs::renameat(dir, os(&tmp), dir, &name)?;
        self.created();
        Ok(())
    }

    /// Renames the temp beside `rel` onto `rel` only if nothing is at
    /// `rel`, in one step: false when something is (or the file system
    /// cannot say), and the caller looks and clears the way first.
    pub fn commit_temp_if_absent(&mut self, rel: &RelPath) -> io::Result<bool> {
        if !self.noreplace {
            return Ok(false);
        }
        let tmp = temp_name(rel.file_name());
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        match rustix::fs::renameat_with(dir, os(&tmp), dir, &name, RenameFlags::NOREPLACE) {
            Ok(()) => {
                self.created();
                Ok(true)
            }
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                self.noreplace = false;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the temp beside `rel` if there is one.
    pub fn discard_temp(&mut self, rel: &RelPath) -> io::Result<()> {
        let tmp = temp_name(rel.file_name());
        let dir = self.parent(rel)?;
        match rustix::fs::unlinkat(dir, os(&tmp), AtFlags::empty()) {
            Err(e) if e != rustix::io::Errno::NOENT => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Places a symlink at `rel` atomically (temp link + rename).
    pub fn symlink(&mut self, target: &[u8], rel: &RelPath) -> io::Result<()> {
        self.writing_in(rel)?;
        let tmp = temp_name(rel.file_name());
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        let _ = rustix::fs::unlinkat(dir, os(&tmp), AtFlags::empty());
        rustix::fs::symlinkat(os(target), dir, os(&tmp))?;
        rustix::fs::renameat(dir, os(&tmp), dir, &name)?;
        self.created();
        Ok(())
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, rel: &RelPath, mode: u32) -> io::Result<()> {
        self.writing_in(rel)?;
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        rustix::fs::mkdirat(dir, &name, Mode::from_raw_mode(mode & 0o777))?;
        self.created();
        Ok(())
    }

    /// Removes a file or symlink.
    pub fn unlink(&mut self, rel: &RelPath) -> io::Result<()> {
        self.writing_in(rel)?;
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        rustix::fs::unlinkat(dir, &name, AtFlags::empty())?;
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, rel: &RelPath) -> io::Result<()> {
        self.writing_in(rel)?;
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR)?;
        self.invalidate();
        Ok(())
    }

    /// Sets mode, owner and (for non-directories) mtime of `rel` without
    /// following a final symlink. A symlink has no mode of its own.
    pub fn set_meta(&mut self, rel: &RelPath, meta: &Meta, is_link: bool) -> io::Result<()> {
        self.writing_in(rel)?;
        let name = os(rel.file_name()).to_path_buf();
        let dir = self.parent(rel)?;
        if is_link {
            chown_allowed(rustix::fs::chownat(
                dir,
                &name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ))?;
            rustix::fs::utimensat(dir, &name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)?;
            return Ok(());
        }
        let fd = rustix::fs::openat(
            dir,
            &name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let is_dir = rustix::fs::fstat(&fd)?.st_mode & 0o170000 == 0o040000;
        meta.apply(&fd, !is_dir)
    }

    /// The device holding the root.
    pub fn dev(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&self.fd)?.st_dev)
    }

    /// Flushes to disk the file system holding the root and every other
    /// one written to: renaming onto a file whose data is still in memory
    /// would, after a crash, leave it empty, wherever it is mounted.
    pub fn syncfs(&self) -> io::Result<()> {
        let fd = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        let root_dev = rustix::fs::fstat(&fd)?.st_dev;
        sync_whole(&fd)?;
        for (dev, dir) in &self.written {
            if *dev != root_dev {
                sync_whole(dir)?;
            }
        }
        Ok(())
    }

    /// The absolute path of `rel` for messages and copies.
    pub fn full(&self, rel: &RelPath) -> PathBuf {
        self.path.join(rel.as_path())
    }
}

/// Flushes the root's file system in the background while a pass writes,
/// so the syncfs before the renames finds most data already on disk: the
/// disk works while the next files arrive instead of after the last one.
#[derive(Debug)]
pub struct Flusher {
    /// The root, until the first flush is due.
    root: Option<PathBuf>,
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pending: u64,
}

impl Flusher {
    /// Bytes written between two background flushes.
    const EVERY: u64 = 8 << 20;

    /// A flusher for the file system holding `root`. Its thread starts with
    /// the first flush due: a pass that writes little never pays for it.
    pub fn new(root: &RootDir) -> Self {
        Self {
            root: Some(root.path.clone()),
            kick: None,
            thread: None,
            pending: 0,
        }
    }

    /// Starts the flushing thread; without it (the root cannot be opened,
    /// no thread) the final syncfs does all the work.
    fn start(&mut self, root: &Path) {
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty());
        let Ok(fd) = fd else { return };
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        self.thread = std::thread::Builder::new()
            .name("cfi-flush".into())
            .spawn(move || {
                while kicked.recv().is_ok() {
                    let _ = sync_whole(&fd);
                }
            })
            .ok();
        if self.thread.is_some() {
            self.kick = Some(kick);
        }
    }

    /// Counts written bytes; starts a background flush every few megabytes.
    pub fn wrote(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.pending >= Self::EVERY {
            self.pending = 0;
            if let Some(root) = self.root.take() {
                self.start(&root);
            }
            if let Some(kick) = &self.kick {
                // A flush already queued covers this one too.
                let _ = kick.try_send(());
            }
        }
    }

    /// Waits for a background flush under way.
    pub fn finish(mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Mode, owner and mtime to set on something cfi wrote.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime seconds.
    pub mtime: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: u32,
}

impl Meta {
    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime,
            tv_nsec: self.mtime_nsec.into(),
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }

    /// Applies to an open file: owner first, since chown clears setuid.
    pub fn apply(&self, fd: impl AsFd, set_time: bool) -> io::Result<()> {
        chown_allowed(rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
        ))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(self.mode & 0o7777))?;
        if set_time {
            rustix::fs::futimens(&fd, &self.times())?;
        }
        Ok(())
    }
}

/// An unprivileged agent (tests, a user's own root) cannot give files away;
/// it keeps its own ownership rather than failing every file.
fn chown_allowed(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Err(rustix::io::Errno::PERM) if !rustix::process::geteuid().is_root() => Ok(()),
        other => Ok(other?),
    }
}

/// Errors that mean "nothing there": the path or a parent is missing or is
/// not a directory.
pub fn absent(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
    )
}

/// syncfs, again when a signal interrupted it (seen in the fault tests,
/// which kill and cut processes around a pass): the flush must happen.
fn sync_whole(fd: impl AsFd) -> io::Result<()> {
    loop {
        match rustix::fs::syncfs(&fd) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rel(p: &str) -> RelPath {
        RelPath::new(p.as_bytes().to_vec()).unwrap()
    }

    /// A wanted mode owned by this process, so creation can give it.
    fn mine(mode: u32) -> Meta {
        Meta {
            mode,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: 1_700_000_000,
            mtime_nsec: 0,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_temp_is_created_with_its_final_mode_only_when_nothing_else_is_left() {
        let d = tempfile::tempdir().unwrap();
        let mut r = RootDir::open(d.path()).unwrap();
        let umask = r.creator.umask.expect("umask readable on Linux");
        let tmp = |name: &str| d.path().join(os(&temp_name(name.as_bytes())));

        // Owned as wanted, plain bits the umask keeps: final at creation.
        let plain = mine(0o640 & !umask);
        let t = r.create_temp(&rel("plain"), &plain).unwrap();
        assert!(t.meta_set);
        assert_eq!(mode_of(&tmp("plain")), plain.mode);
        t.finish(&plain).unwrap();

        // Set-user-ID: private until chown and chmod, in that order.
        let suid = mine(0o4755 & !umask);
        let t = r.create_temp(&rel("suid"), &suid).unwrap();
        assert!(!t.meta_set);
        assert_eq!(mode_of(&tmp("suid")), 0o600);
        t.finish(&suid).unwrap();
        assert_eq!(mode_of(&tmp("suid")), suid.mode);

        // Another owner: private until it is given away.
        let mut theirs = plain;
        theirs.uid = theirs.uid.wrapping_add(1);
        let t = r.create_temp(&rel("theirs"), &theirs).unwrap();
        assert!(!t.meta_set);
        assert_eq!(mode_of(&tmp("theirs")), 0o600);

        // A set-group-ID directory gives its group: private too.
        std::fs::create_dir(d.path().join("sgid")).unwrap();
        std::fs::set_permissions(
            d.path().join("sgid"),
            std::os::unix::fs::PermissionsExt::from_mode(0o2755),
        )
        .unwrap();
        let t = r.create_temp(&rel("sgid/f"), &plain).unwrap();
        assert!(!t.meta_set);
    }

    #[test]
    fn every_file_system_written_to_is_flushed() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let srv = d.path().join("srv");
        std::fs::create_dir(&srv).unwrap();
        // Needs root, as the agent has in production and CI gives tests.
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "cfi-test"])
            .arg(&srv)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root");
        let mut r = RootDir::open(d.path()).unwrap();
        r.create_temp(&rel("etc-file"), &mine(0o644)).unwrap();
        r.create_temp(&rel("srv/file"), &mine(0o644)).unwrap();
        let devs: Vec<u64> = r.written.iter().map(|(dev, _)| *dev).collect();
        let srv_dev = std::fs::metadata(&srv).unwrap().dev();
        let root_dev = std::fs::metadata(d.path()).unwrap().dev();
        r.syncfs().unwrap();
        drop(r);
        std::process::Command::new("umount")
            .arg(&srv)
            .status()
            .unwrap();
        assert_ne!(srv_dev, root_dev);
        assert_eq!(devs, vec![root_dev, srv_dev]);
    }

    #[test]
    fn the_umask_is_read_from_proc_status() {
        assert_eq!(
            umask_in_status("Name:\tx\nUmask:\t0027\nState:\tR\n"),
            Some(0o027)
        );
        assert_eq!(umask_in_status("Name:\tx\n"), None);
    }

    #[test]
    fn a_rename_that_must_not_replace_leaves_what_appeared_alone() {
        let d = tempfile::tempdir().unwrap();
        let mut r = RootDir::open(d.path()).unwrap();
        let meta = mine(0o600);
        r.create_temp(&rel("new"), &meta).unwrap();
        assert!(r.commit_temp_if_absent(&rel("new")).unwrap());
        assert!(matches!(r.lookup(&rel("new")).unwrap(), Found::File(_)));

        std::fs::write(d.path().join("taken"), "someone's").unwrap();
        r.create_temp(&rel("taken"), &meta).unwrap();
        assert!(!r.commit_temp_if_absent(&rel("taken")).unwrap());
        assert_eq!(std::fs::read(d.path().join("taken")).unwrap(), b"someone's");
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("/usr/bin", root.join("bin")).unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("escape")).unwrap();
        let mut r = RootDir::open(&root).unwrap();
        assert!(r.is_dir_following(&rel("bin")));
        r.create_temp(&rel("bin/tool"), &mine(0o755)).unwrap();
        r.commit_temp(&rel("bin/tool")).unwrap();
        assert!(root.join("usr/bin/tool").exists());
        // The link to the real outside dir resolves to <root><outside>,
        // which does not exist: nothing is written outside.
        assert!(r.create_temp(&rel("escape/x"), &mine(0o644)).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn never_writes_through_a_final_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(d.path().join("victim"), "keep").unwrap();
        symlink(d.path().join("victim"), root.join("f")).unwrap();
        let mut r = RootDir::open(&root).unwrap();
        assert!(r.open_read(&rel("f")).is_err());
        r.create_temp(&rel("f"), &mine(0o644)).unwrap();
        r.commit_temp(&rel("f")).unwrap();
        assert_eq!(std::fs::read(d.path().join("victim")).unwrap(), b"keep");
        assert!(matches!(r.lookup(&rel("f")).unwrap(), Found::File(_)));
    }

    #[test]
    fn a_missing_parent_is_remembered_until_something_is_created() {
        let d = tempfile::tempdir().unwrap();
        let mut r = RootDir::open(d.path()).unwrap();
        assert!(matches!(r.lookup(&rel("new/a")).unwrap(), Found::Absent));
        assert!(matches!(r.lookup(&rel("new/b")).unwrap(), Found::Absent));
        r.mkdir(&rel("new"), 0o755).unwrap();
        // The cached miss is gone: the file goes into the new directory.
        r.create_temp(&rel("new/a"), &mine(0o644)).unwrap();
        r.commit_temp(&rel("new/a")).unwrap();
        assert!(matches!(r.lookup(&rel("new/a")).unwrap(), Found::File(_)));
        // A leftover temp of an interrupted pass is replaced.
        std::fs::write(d.path().join("new").join(os(&temp_name(b"b"))), "old").unwrap();
        r.create_temp(&rel("new/b"), &mine(0o644)).unwrap();
    }

    #[test]
    fn lookup_below_a_file_is_absent() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let mut r = RootDir::open(d.path()).unwrap();
        assert!(matches!(r.lookup(&rel("f/g")).unwrap(), Found::Absent));
        assert!(matches!(r.lookup(&rel("nope/g")).unwrap(), Found::Absent));
    }
}
