//! [`AptLock`]: apt's and dpkg's locks held in a lab client, as another
//! apt run would hold them, for tests of what the agent does when apt is
//! busy.

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tracing::warn;

use crate::lab::Lab;

/// The locks an `apt-get install` (and dpkg) takes, frontend first.
pub const DPKG_LOCKS: &[&str] = &["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"];

/// The lock `apt-get update` takes (and `DPkg::Lock::Timeout` does not
/// wait for).
pub const LISTS_LOCK: &str = "/var/lib/apt/lists/lock";

/// How long a holder lives at most, should nobody release it (its
/// container normally goes first, with the lab).
const HOLD_LIMIT: Duration = Duration::from_secs(600);

/// How long [`AptLock::hold`] and [`AptLock::release`] wait for the holder.
const HOLDER_WAIT: Duration = Duration::from_secs(15);

/// The holder: locks every path (creating it) or stops at the first it
/// cannot, reports which to the status file (written whole, then renamed
/// into place), then sleeps until killed or `limit` seconds pass. The
/// `struct flock` is x86_64's (and aarch64's): short type, short whence,
/// 4 bytes padding, 64-bit start and length, 32-bit pid, 4 bytes padding;
/// start 0 and length 0 lock the whole file, as apt does.
const HOLDER: &str = r#"
use strict;
use Fcntl qw(F_SETLK F_WRLCK SEEK_SET);
my ($status, $limit, @paths) = @ARGV;
my $whole_file = pack("s s x4 q q l x4", F_WRLCK, SEEK_SET, 0, 0, 0);
my (@held, $err);
for my $path (@paths) {
    my $fh;
    if (!open($fh, "+>>", $path)) { $err = "cannot open $path: $!"; last; }
    if (!fcntl($fh, F_SETLK, $whole_file)) { $err = "cannot lock $path: $!"; last; }
    push @held, $fh;
}
open(my $out, ">", "$status.new") or exit 1;
print $out ($err ? "error $err\n" : "held $$\n");
close($out);
rename("$status.new", $status);
exit 1 if $err;
sleep($limit);
"#;

/// Holds fcntl locks on files in a lab client, as a running apt or dpkg
/// does (they lock with `F_SETLK` on the whole file; util-linux `flock`
/// takes another kind of lock, which they do not see). Released by
/// [`AptLock::release`] or on drop.
///
/// The holder is a perl process (perl-base is Essential; python is not in
/// the image), so apt names it: `E: Could not get lock
/// /var/lib/dpkg/lock-frontend. It is held by process <pid> (perl)`.
#[derive(Debug)]
pub struct AptLock<'a> {
    lab: &'a Lab,
    client: usize,
    pid: u32,
    released: bool,
}

impl<'a> AptLock<'a> {
    /// Locks `paths` in client `client` and returns once they are held;
    /// fails, saying which, when one is locked already.
    pub fn hold(lab: &'a Lab, client: usize, paths: &[&str]) -> Result<AptLock<'a>> {
        static HOLDERS: AtomicU32 = AtomicU32::new(0);
        let name = &lab.client(client).name;
        let status = format!(
            "/run/cfi-lab-apt-lock-{}-{}",
            std::process::id(),
            HOLDERS.fetch_add(1, Ordering::Relaxed)
        );
        let limit = HOLD_LIMIT.as_secs().to_string();
        let mut argv = vec![
            "sh",
            "-c",
            // In the background, its output nowhere, so the exec returns;
            // the container's init reaps it.
            r#"script=$1; shift; perl -e "$script" -- "$@" < /dev/null > /dev/null 2>&1 &"#,
            "sh",
            HOLDER,
            &status,
            &limit,
        ];
        argv.extend_from_slice(paths);
        let out = lab.exec(client, &argv)?;
        ensure!(
            out.status.success(),
            "failed to start a lock holder in {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let deadline = Instant::now() + HOLDER_WAIT;
        let report = loop {
            let out = lab.exec(client, &["cat", &status])?;
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            ensure!(
                Instant::now() < deadline,
                "the lock holder in {name} did not report within {HOLDER_WAIT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let _ = lab.exec(client, &["rm", "-f", &status]);
        let pid = match report.split_once(' ') {
            Some(("held", pid)) => pid
                .parse()
                .with_context(|| format!("the lock holder in {name} reported {report:?}"))?,
            _ => bail!("failed to lock {} in {name}: {report}", paths.join(" ")),
        };
        Ok(AptLock {
            lab,
            client,
            pid,
            released: false,
        })
    }

    /// Holds [`DPKG_LOCKS`], as an `apt-get install` does while it runs.
    pub fn hold_dpkg(lab: &'a Lab, client: usize) -> Result<AptLock<'a>> {
        AptLock::hold(lab, client, DPKG_LOCKS)
    }

    /// The holder's pid in the client, the one apt names.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Ends the holder and waits until it is gone, its locks with it.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.end()
    }

    fn end(&self) -> Result<()> {
        let name = &self.lab.client(self.client).name;
        // Gone from /proc once the container's init has reaped it.
        let script = format!(
            "kill {pid} 2> /dev/null; i=0; while [ -e /proc/{pid} ]; do \
             i=$((i + 1)); [ $i -lt {tries} ] || exit 1; sleep 0.05; done",
            pid = self.pid,
            tries = HOLDER_WAIT.as_millis() / 50,
        );
        self.lab
            .sh(self.client, &script)
            .with_context(|| format!("failed to end the lock holder {} in {name}", self.pid))?;
        Ok(())
    }
}

impl Drop for AptLock<'_> {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.end() {
                warn!(pid = self.pid, cause = %format!("{e:#}"), "failed to release an apt lock");
            }
        }
    }
}
