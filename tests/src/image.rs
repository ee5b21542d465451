//! The lab's client image: Debian 12 built here with `debootstrap` and
//! loaded with `docker import`, because no image registry is reachable (see
//! DESIGN.md, "Tests and the lab").
//!
//! The image is `minbase` plus [`PACKAGES`] (sshd, rsync, avahi, systemd),
//! with docs and apt caches pruned. systemd is installed but does not run
//! in a lab client ([`crate::systemd_host`] boots it): containers run
//! [`INIT_PATH`] under `docker run --init`, which makes the host key and
//! machine id on first start, installs the lab's key as root's only
//! authorized key, writes cfi's client config, starts avahi and
//! cfi-announcer when asked and runs `sshd -D -e`, passing docker stop's
//! SIGTERM on to all of them.
//! Its tag is a hash of the recipe (suite, variant, packages, the files
//! written into the image and [`BUILD_VERSION`]), so a build happens once
//! per recipe and every later run reuses it. Packages come from the mirror
//! this machine's apt uses ([`apt_sources::mirror`]); that mirror is the
//! only host the build talks to.

use std::env;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;
use tracing::{info, warn};

use crate::{apt_sources, command, docker};

/// Repository part of the image reference; the tag is the recipe hash.
pub const REPOSITORY: &str = "cfi-lab/debian12";

/// Debian release of the image. The host is Debian 12 too, so binaries
/// built here run in it (same glibc).
pub const SUITE: &str = "bookworm";

/// Packages on top of debootstrap's `minbase` variant. rsync: the peer of
/// `cfi-lab bench sync` pushes over ssh, which needs it on both ends.
/// avahi-daemon, avahi-utils and dbus: the zero-config tests check cfi's
/// mDNS against avahi's (`avahi-browse`, `avahi-publish`, static services),
/// which talks to its tools over the system bus. debootstrap installs no
/// Recommends, so libnss-mdns stays out: name lookups in a client do not go
/// through mDNS. systemd and systemd-sysv: installed, not run, in a lab
/// client (its command is [`INIT_PATH`]); [`crate::systemd_host`] runs
/// the same image with systemd as PID 1, to test the packages' units
/// (issue 6). One image for both costs ~15 MB of image and no second
/// build.
pub const PACKAGES: &[&str] = &[
    "openssh-server",
    "rsync",
    "avahi-daemon",
    "avahi-utils",
    "dbus",
    "systemd",
    "systemd-sysv",
];

/// The container's command: prepares the client, runs its daemons and
/// passes docker stop's SIGTERM on to them (see the script's comments).
pub const INIT_PATH: &str = "/usr/local/sbin/cfi-lab-init";

/// Environment variable through which `docker run` hands [`INIT_PATH`] the
/// public key(s) root accepts.
pub const AUTHORIZED_KEYS_ENV: &str = "CFI_LAB_AUTHORIZED_KEYS";

/// Environment variable whose value [`INIT_PATH`] writes to
/// [`CLIENT_TOML_PATH`] on every start.
pub const CLIENT_TOML_ENV: &str = "CFI_LAB_CLIENT_TOML";

/// Environment variable that, when `1`, has [`INIT_PATH`] start dbus and
/// avahi-daemon.
pub const AVAHI_ENV: &str = "CFI_LAB_AVAHI";

/// cfi's client config in a client, as the `.deb` puts it.
pub const CLIENT_TOML_PATH: &str = "/etc/cfi/client.toml";

/// Where [`INIT_PATH`] starts the announcer from: where the cfi-client
/// package installs it.
pub const ANNOUNCER_PATH: &str = "/usr/sbin/cfi-announcer";

/// What the announcer started by [`INIT_PATH`] writes (appended to across
/// starts).
pub const ANNOUNCER_LOG_PATH: &str = "/var/log/cfi-announcer.log";

/// What avahi-daemon started by [`INIT_PATH`] writes: it logs to stderr,
/// as there is no syslog in a client.
pub const AVAHI_LOG_PATH: &str = "/var/log/avahi-daemon.log";

/// Where the project's binaries go in a client, as the `.deb`s put them.
pub const CFI_LIB_DIR: &str = "/usr/lib/cfi";

/// Version of the build steps (debootstrap, configure, prune, import). Bump
/// it when a change to them alters the image in a way the recipe texts
/// below do not show.
pub const BUILD_VERSION: u32 = 2;

const VARIANT: &str = "minbase";

/// Time limit of debootstrap (downloads ~50 MB and installs them).
const DEBOOTSTRAP_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Time limit of `docker import` of the ~100 MB tar stream.
const IMPORT_LIMIT: Duration = Duration::from_secs(10 * 60);

const SSHD_CONFIG: &str = "\
# cfi lab client: root logs in with the lab's key, and only with a key.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
";

const INIT: &str = r#"#!/bin/sh
# cfi lab client start-up, run by tini (docker run --init) on every start,
# docker start after docker stop included. On first start the client makes
# its own host key and machine id, which it keeps after. Each start writes
# root's authorized key and cfi's client config from the lab, starts dbus
# and avahi when asked (CFI_LAB_AVAHI=1), sshd, which logs to stderr
# (docker logs), and cfi-announcer when the lab gave it a config.
#
# sshd runs in the background, not exec'd: docker stop's SIGTERM reaches
# this script (tini forwards it), which passes it on and waits, so the
# announcer and avahi send their mDNS goodbyes (RFC 6762, 10.1) before the
# container goes. docker stop's timeout bounds the wait. The container
# ends when sshd does, as it did when sshd was PID 1's child.
set -eu
say() { printf 'cfi-lab-init: %s\n' "$*" >&2; }

avahi=
sshd=
announcer=
# Passes SIGTERM on to what this script started, waits for it and exits
# with $1.
stop() {
    trap '' TERM INT
    for pid in $announcer $avahi $sshd; do
        kill -TERM "$pid" 2> /dev/null || true
    done
    for pid in $announcer $avahi $sshd; do
        wait "$pid" || true
    done
    exit "$1"
}
trap 'stop 0' TERM INT

if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
fi
# The image's is empty, so that no two clients share one.
if [ ! -s /etc/machine-id ]; then
    tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
fi
if [ -n "${CFI_LAB_AUTHORIZED_KEYS:-}" ]; then
    (
        umask 077
        mkdir -p /root/.ssh
        printf '%s\n' "$CFI_LAB_AUTHORIZED_KEYS" > /root/.ssh/authorized_keys
    )
fi
# The announcer runs when the lab gave a client config, not whenever
# /etc/cfi/client.toml exists: the cfi-client package ships one.
announce=
if [ -n "${CFI_LAB_CLIENT_TOML+set}" ]; then
    mkdir -p /etc/cfi
    printf '%s' "$CFI_LAB_CLIENT_TOML" > /etc/cfi/client.toml
    announce=1
fi

if [ "${CFI_LAB_AVAHI:-}" = 1 ]; then
    # A stopped container's pid files are stale, and their pids may be
    # another process's now: the daemons would think they already run.
    mkdir -p /run/dbus
    rm -f /run/dbus/pid /run/avahi-daemon/pid
    dbus-daemon --system --fork
    # Not --daemonize: in the foreground (of a background job) it logs to
    # stderr, here a file, rather than to a syslog there is not.
    avahi-daemon >> /var/log/avahi-daemon.log 2>&1 &
    avahi=$!
    tries=0
    until avahi-daemon --check 2> /dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 50 ]; then
            say "avahi-daemon not running after 5 s (see /var/log/avahi-daemon.log)"
            break
        fi
        sleep 0.1
    done
fi
unset CFI_LAB_AUTHORIZED_KEYS CFI_LAB_CLIENT_TOML CFI_LAB_AVAHI

mkdir -p /run/sshd
/usr/sbin/sshd -D -e &
sshd=$!

if [ -n "$announce" ] && [ -x /usr/sbin/cfi-announcer ]; then
    /usr/sbin/cfi-announcer --config /etc/cfi/client.toml \
        >> /var/log/cfi-announcer.log 2>&1 &
    announcer=$!
fi

status=0
wait "$sshd" || status=$?
say "sshd exited ($status)"
stop "$status"
"#;

/// What [`prune`] removes, for the recipe hash.
const PRUNED: &str = "apt caches and lists; /usr/share/{doc (but copyright),man,info,locale}; \
                      ssh host keys; machine id emptied, dbus's linked to it";

/// The image reference for the current recipe: `cfi-lab/debian12:<hash>`.
pub fn reference() -> String {
    let mut recipe = blake3::Hasher::new();
    for part in [
        SUITE,
        VARIANT,
        &PACKAGES.join(","),
        SSHD_CONFIG,
        INIT,
        PRUNED,
    ] {
        // Length-prefixed, so moving text between parts changes the hash.
        recipe.update(&(part.len() as u64).to_le_bytes());
        recipe.update(part.as_bytes());
    }
    recipe.update(&BUILD_VERSION.to_le_bytes());
    let hash = recipe.finalize().to_hex();
    format!("{REPOSITORY}:{}", &hash[..12])
}

/// Makes sure the image of the current recipe exists, building it when it
/// does not, and returns its reference.
///
/// Fails with what to install or start when docker is missing or its
/// daemon unreachable, and, when a build is needed, when debootstrap is
/// missing or the process is not root. Concurrent callers (threads or
/// processes) wait for one build.
pub fn ensure_image() -> Result<String> {
    docker::check()?;
    let reference = reference();
    // Another caller may be building: wait as long as a build may take.
    let wait = DEBOOTSTRAP_LIMIT + IMPORT_LIMIT + Duration::from_secs(60);
    ensure_built(&reference, wait, || {
        build(&reference).with_context(|| format!("failed to build the lab image {reference}"))
    })?;
    Ok(reference)
}

/// Runs `build` unless docker has image `reference` already. One build at
/// a time across threads and processes; a caller that finds another
/// building waits up to `wait` for it, then looks again.
pub(crate) fn ensure_built(
    reference: &str,
    wait: Duration,
    build: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if exists(reference)? {
        return Ok(());
    }
    // Each call opens the file anew: flock locks belong to the open file
    // description, so threads of one process exclude each other too.
    let lock_path = env::temp_dir().join("cfi-lab-image.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("failed to open {}", lock_path.display()))?;
    let deadline = Instant::now() + wait;
    loop {
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(500));
            }
            Err(Errno::WOULDBLOCK) => bail!(
                "another process has held {} for {wait:?}, building a lab image",
                lock_path.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to lock {}", lock_path.display()));
            }
        }
    }
    if exists(reference)? {
        return Ok(());
    }
    build()
}

/// Whether docker has the image `reference`.
fn exists(reference: &str) -> Result<bool> {
    let mut cmd = docker::command(&["image", "inspect", "--format", "{{.Id}}", reference]);
    let out = command::output(&mut cmd, docker::LIMIT)?;
    if out.status.success() {
        return Ok(true);
    }
    if String::from_utf8_lossy(&out.stderr).contains("No such image") {
        return Ok(false);
    }
    command::ensure_success(&cmd, &out)?;
    Ok(false)
}

fn build(reference: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "debootstrap needs root: run the lab as root once to build the image \
             (later runs reuse it)"
        );
    }
    let debootstrap = find_debootstrap()?;
    let mirror = apt_sources::mirror(SUITE)?;
    let dir = BuildDir::create()?;
    let root = dir.path.join("root");
    let started = Instant::now();
    info!(
        image = reference,
        mirror, "building the lab image with debootstrap"
    );

    let mut cmd = Command::new(&debootstrap);
    cmd.arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .arg(&mirror)
        .env("LC_ALL", "C");
    let out = command::output(&mut cmd, DEBOOTSTRAP_LIMIT)?;
    if !out.status.success() {
        let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        bail!(
            "`{}` failed ({}):\n{}\n{}\n(debootstrap.log, last lines:)\n{}",
            command::Shown(&cmd),
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 10),
            tail(&String::from_utf8_lossy(&out.stderr), 10),
            tail(&log, 20),
        );
    }
    configure(&root)?;
    prune(&root)?;
    import(&root, reference)?;
    info!(image = reference, elapsed = ?started.elapsed(), "lab image built");
    Ok(())
}

/// debootstrap lives in /usr/sbin, which a non-root PATH may lack.
fn find_debootstrap() -> Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("debootstrap"))
        .find(|p| p.is_file())
        .context("debootstrap not found: apt-get install debootstrap (or run scripts/deps)")
}

/// Writes the lab's files into the new root: sshd settings, the start-up
/// script, the directory cfi's binaries go to. debootstrap's host keys and
/// machine id go: every container makes its own at first start.
fn configure(root: &Path) -> Result<()> {
    write_file(
        root,
        "etc/ssh/sshd_config.d/cfi-lab.conf",
        SSHD_CONFIG,
        0o644,
    )?;
    write_file(root, INIT_PATH, INIT, 0o755)?;
    for dir in [CFI_LIB_DIR, "/root/.ssh"] {
        let path = root.join(dir.trim_start_matches('/'));
        fs::create_dir_all(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
    }
    set_mode(&root.join("root/.ssh"), 0o700)?;
    remove_children(&root.join("etc/ssh"), |name, _| {
        !name.starts_with("ssh_host_")
    })?;
    // Empty, as in Debian's own images: each container writes its own at
    // first start (machine-id(5)). dbus's copy becomes a link to it, as
    // systemd would make it, so the two agree.
    write_file(root, "etc/machine-id", "", 0o444)?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    match fs::remove_file(&dbus_id) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to remove {}", dbus_id.display())),
    }
    std::os::unix::fs::symlink("/etc/machine-id", &dbus_id)
        .with_context(|| format!("failed to link {} to /etc/machine-id", dbus_id.display()))
}

/// Removes what a container does not need: apt's downloaded packages and
/// lists (the lab installs its own packages with dpkg) and documentation.
/// Later package installs in a container still get their docs.
fn prune(root: &Path) -> Result<()> {
    let keep_lock_and_partial = |name: &str, _: bool| name == "lock" || name == "partial";
    remove_children(&root.join("var/cache/apt/archives"), keep_lock_and_partial)?;
    remove_children(&root.join("var/lib/apt/lists"), keep_lock_and_partial)?;
    remove_children(&root.join("var/cache/apt"), |name, _| {
        !name.ends_with(".bin")
    })?;
    for dir in ["man", "info"] {
        remove_children(&root.join("usr/share").join(dir), |_, _| false)?;
    }
    remove_children(&root.join("usr/share/locale"), |name, _| {
        name == "locale.alias"
    })?;
    let doc = root.join("usr/share/doc");
    for entry in read_dir(&doc)? {
        // Symlinks (doc/libfoo -> libbar) stay; real dirs keep copyright.
        if entry.file_type()?.is_dir() {
            remove_children(&entry.path(), |name, _| name == "copyright")?;
        }
    }
    Ok(())
}

/// `tar -C root -c . | docker import - reference`, with the start-up script
/// as the image's command.
fn import(root: &Path, reference: &str) -> Result<()> {
    let mut tar = Command::new("tar");
    tar.arg("--numeric-owner")
        .arg("-C")
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // command::wait_for kills by process group.
        .process_group(0);
    let mut tar_child = tar.spawn().context("failed to run tar")?;
    let stream = tar_child.stdout.take().context("tar without stdout")?;
    let mut import = docker::command(&[
        "import",
        "--change",
        &format!("CMD [\"{INIT_PATH}\"]"),
        "--message",
        &format!(
            "cfi lab client: debootstrap {VARIANT} {SUITE} + {}",
            PACKAGES.join(" ")
        ),
        "-",
        reference,
    ]);
    let out = command::output_with_stdin(&mut import, Stdio::from(stream), IMPORT_LIMIT)?;
    // docker has read the stream to its end, or gave up and closed it:
    // either way tar is about to exit.
    let tar_status = command::wait_for(tar_child, Duration::from_secs(30))?;
    command::ensure_success(&import, &out)?;
    match tar_status {
        Some(s) if s.success() => Ok(()),
        Some(s) => bail!("`{}` failed ({s})", command::Shown(&tar)),
        None => bail!("`{}` did not finish", command::Shown(&tar)),
    }
}

fn write_file(root: &Path, path: &str, text: &str, mode: u32) -> Result<()> {
    let path = root.join(path.trim_start_matches('/'));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
    set_mode(&path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {}", path.display()))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<io::Result<_>>()
            .with_context(|| format!("failed to read {}", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", dir.display())),
    }
}

/// Removes the entries of `dir` for which `keep(name, is_dir)` is false.
fn remove_children(dir: &Path, keep: impl Fn(&str, bool) -> bool) -> Result<()> {
    for entry in read_dir(dir)? {
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        if keep(&entry.file_name().to_string_lossy(), is_dir) {
            continue;
        }
        let removed = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("failed to remove {}", path.display()))?;
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The build's scratch directory. debootstrap mounts /proc, /sys and
/// /dev/pts inside the new root and unmounts them only when it finishes: if
/// it was killed, removing the tree would reach into those, so they are
/// unmounted first, and the tree is left alone if that fails.
#[derive(Debug)]
struct BuildDir {
    path: PathBuf,
}

impl BuildDir {
    fn create() -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = env::temp_dir().join(format!("cfi-lab-image-{}-{nanos:x}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("failed to create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        let mut mounts = mounts_below(&self.path);
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in &mounts {
            let _ = command::output(
                Command::new("umount").args(["-l", mount]),
                Duration::from_secs(30),
            );
        }
        let left = mounts_below(&self.path);
        if !left.is_empty() {
            warn!(dir = %self.path.display(), ?left, "mounts left in the image build dir: not removing it");
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            warn!(dir = %self.path.display(), cause = %e, "failed to remove the image build dir");
        }
    }
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
fn mounts_below(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|m| {
            m.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\134", "\\")
        })
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_stable_and_tagged_by_hash() {
        let r = reference();
        assert_eq!(r, reference());
        let tag = r.strip_prefix("cfi-lab/debian12:").unwrap();
        assert_eq!(tag.len(), 12);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
