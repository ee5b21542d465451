//! A `cfi-server` the lab started as a child process: waiting until it
//! answers `cfi status`, and stopping it with SIGTERM (SIGKILL if it does
//! not exit in time). Shared by the benchmarks' pools and the zero-config
//! harness.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::command;

/// How long a started daemon gets to answer `cfi status`.
pub const READY_LIMIT: Duration = Duration::from_secs(30);

/// How long a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A daemon child and its pid (kept after it is reaped, for messages).
#[derive(Debug)]
pub struct DaemonProcess {
    child: Option<Child>,
    pid: u32,
}

impl DaemonProcess {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Self {
        Self {
            pid: child.id(),
            child: Some(child),
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Polls `status` (a `cfi status` command line) until it succeeds, the
    /// daemon exits, or [`READY_LIMIT`] passes.
    pub fn wait_ready(&mut self, status: impl FnMut() -> Command) -> Result<()> {
        wait_answering(status, || self.exited())
    }

    /// How the daemon ended, if it has (reaped then); `None` while it runs.
    fn exited(&mut self) -> Result<Option<String>> {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait().context("failed to poll cfi-server")?,
            None => None,
        };
        Ok(exited.map(|status| {
            self.child = None;
            status.to_string()
        }))
    }

    /// Waits until `socket` takes connections (the daemon binds it once
    /// it has read its client lists), the daemon exits, or [`READY_LIMIT`]
    /// passes. Cheaper and closer than [`DaemonProcess::wait_ready`]: no
    /// CLI process per look, a look every millisecond, so a measurement
    /// that runs across it bills almost nothing of its own.
    pub fn wait_accepting(&mut self, socket: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let refused = match UnixStream::connect(socket) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(how) = self.exited()? {
                bail!("cfi-server exited ({how}) before taking connections");
            }
            if Instant::now() >= deadline {
                bail!(
                    "cfi-server not taking connections on {} within {READY_LIMIT:?}: {refused}",
                    socket.display()
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGTERM, then waits up to [`STOP_LIMIT`]; SIGKILL and an error after
    /// that. Nothing to do once stopped.
    pub fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            // The child is not reaped yet: the pid is still ours.
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if child
                .try_wait()
                .context("failed to wait for cfi-server")?
                .is_some()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("cfi-server did not exit within {STOP_LIMIT:?} of SIGTERM: killed it")
    }
}

/// Polls `status` (a `cfi status` command line) until it succeeds, a
/// daemon that `exited` says has ended (how) is reported, or
/// [`READY_LIMIT`] passes.
pub fn wait_answering(
    mut status: impl FnMut() -> Command,
    mut exited: impl FnMut() -> Result<Option<String>>,
) -> Result<()> {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        let out = command::output(&mut status(), Duration::from_secs(10))?;
        if out.status.success() {
            return Ok(());
        }
        if let Some(how) = exited()? {
            bail!("cfi-server exited ({how}) before answering");
        }
        if Instant::now() >= deadline {
            bail!(
                "cfi-server not answering `cfi status` within {READY_LIMIT:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}
