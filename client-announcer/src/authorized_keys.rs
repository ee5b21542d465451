//! The one line cfi owns in `authorized_keys`.
//!
//! Once the announcer trusts a server key (DESIGN.md "Trust"), it installs it
//! as `restrict,command="/usr/lib/cfi/cfi-agent …" ssh-ed25519 AAAA… cfi-server@HOST`
//! so that the server's key runs the agent and nothing else. The file is the
//! admin's too: every other byte (keys, comments, blank lines, CRLF endings,
//! bytes that are not UTF-8, a missing final newline) is kept as it was.
//!
//! [`cfi_line`] builds the line, [`edit`] is the pure text change (put the
//! line in, or take it out for `cfi-announcer forget`), and [`install`] applies
//! it to the file: temp file beside it, fsync, owner and mode, rename, fsync of
//! the directory, so sshd reads either the old file or the new one, never a
//! torn one.
//!
//! # Which lines are cfi's
//!
//! A line is a cfi line when both hold:
//!
//! - its options carry a `command="…"` whose program (first word) has the
//!   file name `cfi-agent`, and
//! - its comment (the field after the key type and the base64) starts with
//!   `cfi-server@`.
//!
//! Either alone is not enough: an admin may keep a copy of a server key with
//! a `cfi-server@old` comment and no forced command, or give their own key a
//! forced `cfi-agent` to drive it by hand; both lines are the admin's and
//! survive. [`cfi_line`] refuses anything that would not match the rule, so
//! the line it builds is always found again (install is idempotent, `forget`
//! removes it).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The comment prefix of a cfi line; the rest is the server's host name.
pub const COMMENT_PREFIX: &str = "cfi-server@";

/// The program a cfi line's forced command must run.
const AGENT: &[u8] = b"cfi-agent";

/// The only key type cfi servers use.
const KEY_TYPE: &str = "ssh-ed25519";

/// Base64 of the blob's start: the length-prefixed `ssh-ed25519` (RFC 8709).
const ED25519_BLOB_PREFIX: &str = "AAAAC3NzaC1lZDI1NTE5";

/// Base64 length of an ed25519 public key blob (4 + 11 + 4 + 32 bytes).
const ED25519_BLOB_LEN: usize = 68;

/// Why a cfi line cannot be built or the file cannot be updated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The forced command would not parse in sshd or not run the agent.
    #[error("invalid agent command {command:?} for the cfi line: {reason}")]
    AgentCommand {
        /// The command as given.
        command: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key type other than ed25519.
    #[error("invalid key type {0:?} for the cfi line: only ssh-ed25519 is accepted")]
    KeyType(String),
    /// The base64 does not hold an ed25519 public key.
    #[error("invalid ssh-ed25519 key for the cfi line: {0}")]
    KeyBase64(&'static str),
    /// A comment that would break the line or not mark it as cfi's.
    #[error("invalid comment {comment:?} for the cfi line: {reason}")]
    Comment {
        /// The comment as given.
        comment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`install`] was given a line that is not one [`cfi_line`] builds.
    #[error("refusing to write {line:?} into {path}: not a cfi line")]
    NotCfiLine {
        /// The authorized_keys file.
        path: PathBuf,
        /// The line given.
        line: String,
    },
    /// The path is a symlink; cfi does not write through it.
    #[error("refusing to edit {0}: it is a symlink")]
    Symlink(PathBuf),
    /// The path is a directory, fifo, device or socket.
    #[error("refusing to edit {0}: not a regular file")]
    NotAFile(PathBuf),
    /// Any I/O failure, with the path.
    #[error("failed to {op} {path}: {cause}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        cause: io::Error,
    },
}

impl KeysError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |cause| Self::Io { op, path, cause }
    }
}

/// The cfi line for a server key: options, key type, base64, comment.
///
/// `agent_command` is the forced command (its program must be named
/// `cfi-agent`), `comment` is `cfi-server@HOST`. Anything sshd would read
/// differently from what was meant is refused: quotes or backslashes in the
/// command (sshd only unescapes `\"`, so no quoting is safe), control
/// characters anywhere, whitespace in the comment.
pub fn cfi_line(
    agent_command: &str,
    key_type: &str,
    key_base64: &str,
    comment: &str,
) -> Result<String, KeysError> {
    let bad_command = |reason| KeysError::AgentCommand {
        command: agent_command.to_owned(),
        reason,
    };
    if agent_command.contains(['"', '\\']) {
        return Err(bad_command("it contains a quote or a backslash"));
    }
    if agent_command.contains(char::is_control) {
        return Err(bad_command(
            "it contains a newline or another control character",
        ));
    }
    // Words as sh splits them, and as `is_cfi_line` does: at ASCII blanks
    // only, so `cfi-agent\u{2003}x` is one word and not the agent.
    let program = agent_command
        .split_ascii_whitespace()
        .next()
        .unwrap_or_default();
    if file_name(program.as_bytes()) != AGENT {
        return Err(bad_command("its program is not cfi-agent"));
    }

    if key_type != KEY_TYPE {
        return Err(KeysError::KeyType(key_type.to_owned()));
    }
    if !key_base64
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(KeysError::KeyBase64(
            "not base64 (only A-Z a-z 0-9 + / are valid)",
        ));
    }
    if key_base64.len() != ED25519_BLOB_LEN || !key_base64.starts_with(ED25519_BLOB_PREFIX) {
        return Err(KeysError::KeyBase64(
            "not the base64 of an ssh-ed25519 public key",
        ));
    }

    let bad_comment = |reason| KeysError::Comment {
        comment: comment.to_owned(),
        reason,
    };
    if comment.trim().is_empty() {
        return Err(bad_comment("it is empty"));
    }
    if comment.contains(char::is_control) {
        return Err(bad_comment(
            "it contains a newline or another control character",
        ));
    }
    if comment.contains(char::is_whitespace) {
        return Err(bad_comment("it contains whitespace"));
    }
    if comment.len() == COMMENT_PREFIX.len() || !comment.starts_with(COMMENT_PREFIX) {
        return Err(bad_comment("it is not cfi-server@HOST"));
    }

    Ok(format!(
        "restrict,command=\"{agent_command}\" {key_type} {key_base64} {comment}"
    ))
}

/// `text` with every cfi line removed and `line` (if given) put in place of
/// the first one removed, with that line's own ending, or appended at the end
/// if there was none.
///
/// Every other byte is kept. A newline is added only before an appended line
/// when the text did not end with one. `line` must be one [`cfi_line`]
/// built; [`install`] checks that.
pub fn edit(text: &[u8], line: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + line.map_or(0, |l| l.len() + 1));
    let mut pending = line;
    for segment in text.split_inclusive(|&b| b == b'\n') {
        if !is_cfi_line(segment) {
            out.extend_from_slice(segment);
        } else if let Some(line) = pending.take() {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(line_ending(segment));
        }
    }
    if let Some(line) = pending {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Applies [`edit`] to the file at `path`, atomically. Returns whether the
/// file changed; nothing is written when the content would stay the same.
///
/// A missing file reads as empty. The new file keeps the old one's mode and
/// uid/gid; a new file gets mode 0600 and is owned by `owner`, or else by
/// the directory's owner (for `/root/.ssh`, root). A missing parent
/// directory is created with mode 0700, owned by `owner`, or else by its own
/// parent's owner (so `~alice/.ssh` belongs to alice). A symlink at `path`
/// is refused, never followed.
pub fn install(
    path: &Path,
    line: Option<&str>,
    owner: Option<(u32, u32)>,
) -> Result<bool, KeysError> {
    if let Some(line) = line.filter(|l| l.contains(['\n', '\r']) || !is_cfi_line(l.as_bytes())) {
        return Err(KeysError::NotCfiLine {
            path: path.to_owned(),
            line: line.to_owned(),
        });
    }
    let dir = parent(path);
    ensure_dir(dir, owner)?;

    let old = read_existing(path)?;
    let text = old.as_ref().map_or(&[][..], |(text, _)| text);
    let new = edit(text, line);
    if new == text {
        return Ok(false);
    }

    let (mode, owner) = match &old {
        Some((_, meta)) => (meta.mode() & 0o7777, (meta.uid(), meta.gid())),
        None => match owner {
            Some(owner) => (0o600, owner),
            None => {
                let meta = std::fs::metadata(dir).map_err(KeysError::io("stat", dir))?;
                (0o600, (meta.uid(), meta.gid()))
            }
        },
    };
    replace(path, dir, &new, mode, owner)?;
    Ok(true)
}

/// Whether one line (with or without its ending) is cfi's, by the rule in
/// the module documentation.
fn is_cfi_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.trim_ascii_start();
    if line.starts_with(b"#") {
        return false;
    }
    let (options, rest) = split_unquoted(line, |b| b == b' ' || b == b'\t');
    let Some(program) = forced_program(options) else {
        return false;
    };
    // rest = key type, base64, comment.
    let comment = rest
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|f| !f.is_empty())
        .nth(2);
    file_name(&program) == AGENT
        && comment.is_some_and(|c| c.starts_with(COMMENT_PREFIX.as_bytes()))
}

/// The first word of the `command="…"` option, unescaped as sshd does
/// (only `\"`). Option names are case-insensitive in sshd.
fn forced_program(options: &[u8]) -> Option<Vec<u8>> {
    let mut rest = options;
    while !rest.is_empty() {
        let (option, tail) = split_unquoted(rest, |b| b == b',');
        rest = tail;
        let Some(value) = option
            .get(..9)
            .filter(|name| name.eq_ignore_ascii_case(b"command=\""))
            .map(|_| &option[9..])
        else {
            continue;
        };
        let mut command = Vec::new();
        let mut bytes = value.iter().copied().peekable();
        while let Some(b) = bytes.next() {
            match b {
                b'"' => break,
                b'\\' if bytes.peek() == Some(&b'"') => command.push(bytes.next()?),
                _ => command.push(b),
            }
        }
        let program = command
            .split(u8::is_ascii_whitespace)
            .find(|w| !w.is_empty())?;
        return Some(program.to_vec());
    }
    None
}

/// Splits `s` at the first byte outside double quotes for which `at` holds;
/// the separator is dropped. Inside quotes `\"` does not close them.
fn split_unquoted(s: &[u8], at: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if !quoted && at(b) => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, &[])
}

/// The last `/`-separated component.
fn file_name(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// `\r\n`, `\n` or nothing: how `segment` ends.
fn line_ending(segment: &[u8]) -> &'static [u8] {
    if segment.ends_with(b"\r\n") {
        b"\r\n"
    } else if segment.ends_with(b"\n") {
        b"\n"
    } else {
        b""
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` with mode 0700 if it is missing (`~/.ssh` on a fresh
/// machine); sshd's StrictModes wants it neither group- nor world-writable.
fn ensure_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), KeysError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(KeysError::io("stat", dir)(e)),
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Another process made it meanwhile: theirs stands.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        r => r.map_err(KeysError::io("create directory", dir))?,
    }
    // The umask may have taken bits DirBuilder asked for.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(KeysError::io("set the mode of", dir))?;
    let above = parent(dir);
    let (uid, gid) = match owner {
        Some(owner) => owner,
        None => {
            let meta = std::fs::metadata(above).map_err(KeysError::io("stat", above))?;
            (meta.uid(), meta.gid())
        }
    };
    let meta = std::fs::metadata(dir).map_err(KeysError::io("stat", dir))?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(KeysError::io("set the owner of", dir))?;
    }
    sync_dir(above)
}

/// Makes the entries of `dir` (a rename, a new directory) durable.
fn sync_dir(dir: &Path) -> Result<(), KeysError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(KeysError::io("fsync directory", dir))
}

/// The file's bytes and metadata, `None` if it does not exist. Opened with
/// `O_NOFOLLOW` so a symlink planted at the path is refused, not read.
fn read_existing(path: &Path) -> Result<Option<(Vec<u8>, std::fs::Metadata)>, KeysError> {
    // NONBLOCK: opening a fifo planted at the path must not hang; it is
    // refused below as not a regular file.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(KeysError::Symlink(path.to_owned())),
        Err(e) => return Err(KeysError::io("open", path)(e.into())),
    };
    let mut file = File::from(fd);
    let meta = file.metadata().map_err(KeysError::io("stat", path))?;
    if !meta.is_file() {
        return Err(KeysError::NotAFile(path.to_owned()));
    }
    let mut text = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut text)
        .map_err(KeysError::io("read", path))?;
    Ok(Some((text, meta)))
}

/// Writes `text` to a temp file in `dir`, gives it `mode` and `owner`,
/// fsyncs it, renames it over `path` and fsyncs `dir`.
pub(crate) fn replace(
    path: &Path,
    dir: &Path,
    text: &[u8],
    mode: u32,
    (uid, gid): (u32, u32),
) -> Result<(), KeysError> {
    let name = path
        .file_name()
        .map_or("authorized_keys".into(), |n| n.to_string_lossy());
    let (mut file, temp) = create_temp(dir, &name)?;
    let tmp = temp.0.as_path();
    file.write_all(text).map_err(KeysError::io("write", tmp))?;
    let meta = file.metadata().map_err(KeysError::io("stat", tmp))?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(KeysError::io("set the owner of", tmp))?;
    }
    // After the chown, which may clear set-id bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(KeysError::io("set the mode of", tmp))?;
    file.sync_all().map_err(KeysError::io("fsync", tmp))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(KeysError::io("rename into place", path))?;
    temp.keep();
    sync_dir(dir)
}

/// A temp file that is removed on drop unless [`TempPath::keep`] was called.
#[derive(Debug)]
struct TempPath(PathBuf);

impl TempPath {
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A new, exclusive temp file beside the target (same filesystem, so the
/// rename is atomic), mode 0600 until the final mode is set.
fn create_temp(dir: &Path, name: &str) -> Result<(File, TempPath), KeysError> {
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.cfi-{pid}-{attempt}.tmp"));
        // create_new is O_EXCL: never opens an existing file or a symlink.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => return Ok((file, TempPath(tmp))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(KeysError::io("create temp file", &tmp)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB alice@laptop";

    fn line(host: &str) -> String {
        cfi_line(
            "/usr/lib/cfi/cfi-agent --root / --state-dir /var/lib/cfi-client",
            "ssh-ed25519",
            KEY,
            &format!("cfi-server@{host}"),
        )
        .unwrap()
    }

    fn edited(text: &str, l: Option<&str>) -> String {
        String::from_utf8(edit(text.as_bytes(), l)).unwrap()
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn cfi_line_has_the_documented_shape() {
        let l = line("srv");
        assert_eq!(
            l,
            format!(
                "restrict,command=\"/usr/lib/cfi/cfi-agent --root / --state-dir /var/lib/cfi-client\" ssh-ed25519 {KEY} cfi-server@srv"
            )
        );
        assert!(is_cfi_line(l.as_bytes()));
        assert!(is_cfi_line(
            cfi_line("cfi-agent", "ssh-ed25519", KEY, "cfi-server@a")
                .unwrap()
                .as_bytes()
        ));
    }

    #[test]
    fn cfi_line_refuses_what_sshd_would_misread() {
        let cmd = "/usr/lib/cfi/cfi-agent";
        for bad in [
            "/usr/lib/cfi/cfi-agent \"x\"",
            "/usr/lib/cfi/cfi-agent \\x",
            "/usr/lib/cfi/cfi-agent\nx",
            "/usr/bin/sh",
            "",
            "/usr/lib/cfi/cfi-agent-old",
        ] {
            let e = cfi_line(bad, "ssh-ed25519", KEY, "cfi-server@a").unwrap_err();
            assert!(matches!(e, KeysError::AgentCommand { .. }), "{bad:?}: {e}");
        }
        let e = cfi_line(cmd, "ssh-rsa", KEY, "cfi-server@a").unwrap_err();
        assert!(e.to_string().contains("ssh-rsa"), "{e}");
        for bad in ["AAAA C3", "AAAA\"", &KEY[..60], &KEY.replace('I', "J"), "é"] {
            let e = cfi_line(cmd, "ssh-ed25519", bad, "cfi-server@a").unwrap_err();
            assert!(matches!(e, KeysError::KeyBase64(_)), "{bad:?}: {e}");
        }
        for bad in [
            "",
            "  ",
            "cfi-server@a\nb",
            "cfi-server@a b",
            "root@a",
            "cfi-server@",
        ] {
            let e = cfi_line(cmd, "ssh-ed25519", KEY, bad).unwrap_err();
            assert!(matches!(e, KeysError::Comment { .. }), "{bad:?}: {e}");
        }
    }

    /// Found by the `authorized_keys` fuzz target: a Unicode space after
    /// the program passed `cfi_line`'s check (which split at any
    /// whitespace) but not `is_cfi_line`'s (ASCII only, like sh), so the
    /// line was built and then never found again.
    #[test]
    fn fuzz_cfi_line_splits_the_program_at_ascii_blanks_only() {
        for bad in [
            "\u{2003}\u{2003}\u{2003}cfi-agent\u{2003}\u{fffd}\u{fffd}\u{2003}\u{fffd}",
            "/usr/lib/cfi/cfi-agent\u{a0}--root",
            "/usr/lib/cfi/cfi-agent\u{3000}",
            "\u{2003}/x/cfi-agent\u{2003}",
        ] {
            let e = cfi_line(bad, "ssh-ed25519", KEY, "cfi-server@lab").unwrap_err();
            assert!(matches!(e, KeysError::AgentCommand { .. }), "{bad:?}: {e}");
        }
        let line = cfi_line("  /x/cfi-agent  --y", "ssh-ed25519", KEY, "cfi-server@lab").unwrap();
        assert!(is_cfi_line(line.as_bytes()), "{line}");
    }

    #[test]
    fn marker_needs_both_the_agent_command_and_the_comment() {
        let admin = [
            format!("ssh-ed25519 {KEY} cfi-server@old"),
            format!("command=\"/usr/lib/cfi/cfi-agent\" ssh-ed25519 {KEY} admin@laptop"),
            format!("command=\"/usr/bin/cfi-agent-wrapper\" ssh-ed25519 {KEY} cfi-server@x"),
            format!("# restrict,command=\"cfi-agent\" ssh-ed25519 {KEY} cfi-server@x"),
            format!("from=\"cfi-agent\" ssh-ed25519 {KEY} cfi-server@x"),
            "cfi-server@x".to_owned(),
        ];
        for l in &admin {
            assert!(!is_cfi_line(l.as_bytes()), "{l}");
        }
        let ours = [
            format!("restrict,command=\"cfi-agent\" ssh-ed25519 {KEY} cfi-server@x"),
            format!(
                "  COMMAND=\"/opt/cfi-agent serve\",restrict ssh-ed25519 {KEY} cfi-server@x\r\n"
            ),
            format!(
                "command=\"/opt/cfi/cfi-agent \\\"q\\\"\",no-pty\tssh-ed25519  {KEY}\tcfi-server@x old"
            ),
        ];
        for l in &ours {
            assert!(is_cfi_line(l.as_bytes()), "{l}");
        }
    }

    #[test]
    fn appends_keeping_everything_else() {
        let l = line("srv");
        let text = format!("# keys\r\n\r\n{OTHER}\r\n\n  # indented\n");
        assert_eq!(edited(&text, Some(&l)), format!("{text}{l}\n"));
        // A missing final newline gets one, and only before the appended line.
        assert_eq!(edited(OTHER, Some(&l)), format!("{OTHER}\n{l}\n"));
        assert_eq!(edited(OTHER, None), OTHER);
        assert_eq!(edited("", Some(&l)), format!("{l}\n"));
        assert_eq!(edited("", None), "");
    }

    #[test]
    fn replaces_in_place_and_drops_duplicates() {
        let (old, new) = (line("old"), line("new"));
        let text = format!("a\n{old}\r\nb\n{old}\nc\n{old}");
        assert_eq!(edited(&text, Some(&new)), format!("a\n{new}\r\nb\nc\n"));
        assert_eq!(edited(&text, None), "a\nb\nc\n");
        // The last line, without a newline, is replaced without one.
        assert_eq!(
            edited(&format!("a\n{old}"), Some(&new)),
            format!("a\n{new}")
        );
        assert_eq!(
            edited(&format!("a\n{new}\n"), Some(&new)),
            format!("a\n{new}\n")
        );
    }

    #[test]
    fn admin_lines_mentioning_cfi_survive() {
        let l = line("srv");
        let text = format!(
            "ssh-ed25519 {KEY} cfi-server@old\ncommand=\"cfi-agent\" ssh-ed25519 {KEY} me@x\n"
        );
        assert_eq!(edited(&text, Some(&l)), format!("{text}{l}\n"));
        assert_eq!(edited(&text, None), text);
    }

    #[test]
    fn non_utf8_bytes_survive() {
        let l = line("srv");
        let text = b"\xff\xfe key \x80\n\xc3(\r\n";
        let mut want = text.to_vec();
        want.extend_from_slice(l.as_bytes());
        want.push(b'\n');
        assert_eq!(edit(text, Some(&l)), want);
        assert_eq!(edit(&want, None), text);
    }

    #[test]
    fn install_creates_the_dir_and_file_and_is_idempotent() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(".ssh/authorized_keys");
        let l = line("srv");
        assert!(install(&path, Some(&l), None).unwrap());
        assert_eq!(mode_of(&home.path().join(".ssh")), 0o700);
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{l}\n"));
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert!(!install(&path, Some(&l), None).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            ino,
            "rewritten though unchanged"
        );
        assert!(install(&path, None, None).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert!(!install(&path, None, None).unwrap());
        let entries = std::fs::read_dir(home.path().join(".ssh")).unwrap().count();
        assert_eq!(entries, 1, "temp files left behind");
    }

    #[test]
    fn install_keeps_mode_and_bytes_of_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let text = b"\xffadmin\r\n# c\n\nlast";
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let l = line("srv");
        assert!(install(&path, Some(&l), None).unwrap());
        assert_eq!(mode_of(&path), 0o644);
        let mut want = text.to_vec();
        want.extend_from_slice(format!("\n{l}\n").as_bytes());
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert!(install(&path, Some(&line("other")), None).unwrap());
        assert!(install(&path, None, None).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), [&text[..], b"\n"].concat());
    }

    #[test]
    fn install_missing_file_without_a_line_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        assert!(!install(&path, None, None).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn install_refuses_symlinks_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "x\n").unwrap();
        let path = dir.path().join("authorized_keys");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = install(&path, Some(&line("srv")), None).unwrap_err();
        assert!(matches!(e, KeysError::Symlink(_)), "{e}");
        assert!(e.to_string().contains("authorized_keys"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x\n");

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = install(&sub, Some(&line("srv")), None).unwrap_err();
        assert!(matches!(e, KeysError::NotAFile(_)), "{e}");

        // A fifo is refused, not waited on.
        let fifo = dir.path().join("fifo");
        let (cwd, fifo_type) = (rustix::fs::CWD, rustix::fs::FileType::Fifo);
        rustix::fs::mknodat(cwd, &fifo, fifo_type, Mode::from_raw_mode(0o600), 0).unwrap();
        let e = install(&fifo, Some(&line("srv")), None).unwrap_err();
        assert!(matches!(e, KeysError::NotAFile(_)), "{e}");
    }

    #[test]
    fn install_refuses_a_line_it_would_not_find_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        for bad in [OTHER.to_owned(), format!("{}\nx", line("a"))] {
            let e = install(&path, Some(&bad), None).unwrap_err();
            assert!(matches!(e, KeysError::NotCfiLine { .. }), "{e}");
        }
        assert!(!path.exists());
    }

    #[test]
    fn install_gives_a_new_file_the_requested_owner() {
        if !rustix::process::geteuid().is_root() {
            return; // chown to another user needs root.
        }
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(".ssh/authorized_keys");
        assert!(install(&path, Some(&line("srv")), Some((4321, 4322))).unwrap());
        for p in [&path, &home.path().join(".ssh")] {
            let meta = std::fs::metadata(p).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4321, 4322), "{}", p.display());
        }
        // An existing file keeps its owner.
        std::os::unix::fs::chown(&path, Some(1000), Some(1001)).unwrap();
        assert!(install(&path, None, Some((4321, 4322))).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
    }

    /// Lines an admin might write, none of them cfi's.
    fn other_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(
                any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
                0..40
            ),
            Just(OTHER.as_bytes().to_vec()),
            Just(format!("ssh-ed25519 {KEY} cfi-server@old").into_bytes()),
            Just(format!("command=\"cfi-agent\" ssh-ed25519 {KEY} me@x").into_bytes()),
            Just(b"# cfi-server@x cfi-agent".to_vec()),
            Just(Vec::new()),
        ]
        .prop_filter("not a cfi line", |l| !is_cfi_line(l))
    }

    fn text() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((other_line(), any::<bool>()), 0..8).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(mut l, crlf)| {
                    l.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                    l
                })
                .collect()
        })
    }

    proptest! {
        /// Installing then forgetting gives back the file byte for byte;
        /// installing twice is installing once; exactly one cfi line results.
        #[test]
        fn install_then_forget_round_trips(x in text(), host in "[a-z0-9.-]{1,20}") {
            let l = line(&host);
            let with = edit(&x, Some(&l));
            prop_assert_eq!(edit(&with, None), x.clone());
            prop_assert_eq!(edit(&with, Some(&l)), with.clone());
            let cfi = with.split_inclusive(|&b| b == b'\n').filter(|s| is_cfi_line(s)).count();
            prop_assert_eq!(cfi, 1);
            prop_assert_eq!(edit(&x, None), x);
        }
    }
}
