//! The docker CLI as the lab uses it: every call bounded in time, every
//! failure naming the docker command and quoting docker's stderr, and one
//! check up front that says what to install or start when docker is not
//! usable.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::command;

/// Time limit of ordinary docker calls (create, start, exec of a short
/// command, inspect). Generous: fuse-overlayfs mounts are slow on a busy
/// machine.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A `docker` command with `args`, not yet run.
pub fn command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

/// Runs `docker args…` within [`LIMIT`]; fails unless it exits with 0.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<Output> {
    command::checked(&mut command(args), LIMIT)
}

/// Runs `docker args…` within [`LIMIT`] and returns its stdout, trimmed.
pub fn stdout<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<String> {
    let out = run(args)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The docker daemon's version, or an error that says what to do: install
/// docker, start the daemon, or get permission to use its socket.
pub fn check() -> Result<String> {
    let mut cmd = command(&["version", "--format", "{{.Server.Version}}"]);
    let out = match command::output(&mut cmd, Duration::from_secs(20)) {
        Ok(out) => out,
        Err(e) if command::is_not_found(&e) => {
            bail!("docker not found: the lab needs docker: apt-get install docker.io")
        }
        Err(e) => {
            return Err(
                e.context("docker daemon not answering: is dockerd running? (start dockerd)")
            );
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    if stderr.contains("permission denied") {
        bail!(
            "no permission to use the docker daemon ({stderr}): \
             run the lab as root or as a member of the docker group"
        );
    }
    bail!(
        "docker daemon unreachable ({stderr}): start dockerd \
         (systemctl start docker, or run dockerd)"
    )
}
