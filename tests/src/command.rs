//! Running external programs (docker, ssh, debootstrap, tar) with a time
//! limit, so a lab test fails with a message instead of hanging.
//!
//! Each program runs in its own process group; when the limit passes the
//! whole group is killed (debootstrap, for one, leaves children behind
//! otherwise) and the error names the command. Output is captured; nothing
//! goes to the terminal.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process_group};

/// How long the pipe readers get, once the program is gone, to hit end of
/// file. Only a descendant that left the process group can hold a pipe open
/// past that; its output is then lost rather than waited for.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs `cmd` with stdin from `/dev/null`, capturing stdout and stderr, and
/// kills it (and its process group) if it has not finished within `limit`.
///
/// A non-zero exit is not an error here: see [`checked`] for that.
pub fn output(cmd: &mut Command, limit: Duration) -> Result<Output> {
    output_with_stdin(cmd, Stdio::null(), limit)
}

/// [`output`] with the given stdin (a pipe from another process, a file).
pub fn output_with_stdin(cmd: &mut Command, stdin: Stdio, limit: Duration) -> Result<Output> {
    let shown = Shown(cmd).to_string();
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("failed to run {}", cmd.get_program().to_string_lossy()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_for(child, limit).with_context(|| format!("`{shown}`"))?;
    let Some(status) = status else {
        bail!("`{shown}` did not finish within {limit:?}: killed it");
    };
    let collect = |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(DRAIN_LIMIT).unwrap_or_default();
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// [`output`], and an error carrying the program's stderr when it exits
/// unsuccessfully.
pub fn checked(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let out = output(cmd, limit)?;
    ensure_success(cmd, &out)?;
    Ok(out)
}

/// Fails, naming the command and quoting its stderr, unless `out` says it
/// exited with status 0.
pub fn ensure_success(cmd: &Command, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            Shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A command as a shell would show it, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a Command);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.get_program().to_string_lossy())?;
        for arg in self.0.get_args() {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// Whether spawning failed because the program is not installed.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
}

/// Reads a pipe to its end on a thread of its own, so a chatty program
/// never blocks on a full pipe while we wait for it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error just ends the capture; the exit status still says
            // how the program fared.
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// Waits for `child` up to `limit`. `None`: it was still running, and has
/// been killed with its process group and reaped. The child must have been
/// spawned with `process_group(0)`, as [`output`] does, or the kill misses.
pub fn wait_for(mut child: Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => Ok(Some(status.context("failed to wait for the program")?)),
        Err(_) => {
            // The group id is the child's pid (`process_group(0)`); the
            // waiter thread has not reaped it, so the id is still ours.
            let pgid = i32::try_from(pid).ok().and_then(Pid::from_raw);
            if let Some(pgid) = pgid {
                let _ = kill_process_group(pgid, Signal::KILL);
            }
            let _ = rx.recv_timeout(DRAIN_LIMIT);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn captures_output_and_status() {
        let out = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn kills_the_whole_group_at_the_limit() {
        let start = Instant::now();
        // The grandchild `sleep` keeps stdout open: only a group kill ends it.
        let err = output(
            Command::new("sh").args(["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(err.to_string().contains("did not finish within"), "{err:#}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn checked_quotes_stderr() {
        let err = checked(
            Command::new("sh").args(["-c", "echo nope >&2; exit 1"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }

    #[test]
    fn a_missing_program_is_recognised() {
        let err = output(
            &mut Command::new("cfi-lab-no-such-program"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(is_not_found(&err), "{err:#}");
    }
}
