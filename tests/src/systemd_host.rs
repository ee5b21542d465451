//! A lab host that boots systemd, for the tests of the packages' units
//! (issue 6: "services start and stop"). A [`crate::lab`] client runs the
//! lab's init script; this runs the same image ([`crate::image`] installs
//! systemd and systemd-sysv in it) with `/lib/systemd/systemd` as PID 1, on
//! the lab's network, and removes the container on drop.
//!
//! What systemd needs of docker, and why each option is there:
//!
//! - capabilities: all but `CAP_SYS_RESOURCE`, not `--privileged`. This
//!   machine's docker daemon runs without `CAP_SYS_RESOURCE`, so
//!   `--privileged` (every capability) fails with "unable to apply caps";
//!   dropping it everywhere keeps the host the same on every machine. systemd
//!   needs `CAP_SYS_ADMIN` for the mount namespaces of `ProtectSystem=` and
//!   friends, and the units' `CapabilityBoundingSet=` only means something
//!   when systemd has the capabilities to drop;
//! - no seccomp or AppArmor profile of docker's: systemd mounts and sets
//!   its own seccomp filters (`SystemCallFilter=`);
//! - the host's cgroup tree, writable, in the host's cgroup namespace:
//!   systemd makes a cgroup per unit. On this cgroup v1 host it runs in its
//!   legacy mode (and says it is "tainted: cgroupsv1"); runc removes what
//!   it made below the container's cgroup with the container;
//! - tmpfs on `/run` and `/run/lock`, and `container=docker`, as systemd's
//!   container interface asks.
//!
//! Before systemd starts, `ssh-keygen -A` makes the host keys the image
//! leaves out (see [`crate::image`]), so that ssh.service starts and the
//! system comes up "running".

use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::lab::Lab;
use crate::{command, docker, leftovers};

/// How long systemd gets to bring the system up.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// The container's command: host keys, then systemd as PID 1.
const BOOT: &str = "ssh-keygen -A && exec /lib/systemd/systemd";

/// A container of the lab image running systemd, on a [`Lab`]'s network;
/// removed on drop. It borrows the lab, so it goes before the network does.
#[derive(Debug)]
pub struct SystemdHost<'a> {
    lab: &'a Lab,
    name: String,
}

impl<'a> SystemdHost<'a> {
    /// Starts the host on `lab`'s network and waits until systemd says the
    /// system is running (or degraded: a failed unit is the test's to
    /// judge, and is logged).
    pub fn start(lab: &'a Lab) -> Result<Self> {
        let name = format!("{}-systemd", lab.network());
        let label = format!("{}={}", leftovers::OWNER_LABEL, leftovers::owner_label());
        // Owned from here: a failed start is removed too.
        let host = SystemdHost { lab, name };
        docker::run(&[
            "run",
            "--detach",
            "--name",
            &host.name,
            "--hostname",
            &host.name,
            "--network",
            lab.network(),
            "--label",
            &label,
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--cgroupns",
            "host",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--env",
            "container=docker",
            // What systemd takes as "halt", should anyone docker stop it.
            "--stop-signal",
            "SIGRTMIN+3",
            lab.image(),
            "sh",
            "-c",
            BOOT,
        ])
        .with_context(|| format!("failed to start the systemd host {}", host.name))?;
        host.wait_for_boot()?;
        Ok(host)
    }

    /// The container's name, also its host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `argv` in the host (`docker exec`, as root) within 60 s. A
    /// non-zero exit is in the returned status, not an error.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut cmd = docker::command(&["exec", &self.name]);
        cmd.args(argv);
        command::output(&mut cmd, docker::LIMIT)
    }

    /// Runs `script` with `sh -c` in the host; its stdout, or an error
    /// quoting its stdout and stderr when it fails.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec(&["sh", "-c", script])?;
        if !out.status.success() {
            bail!(
                "`{script}` failed in {} ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Copies `host_path` to `container_path` in the host (`docker cp`).
    pub fn copy_in(&self, host_path: &Path, container_path: &str) -> Result<()> {
        let mut cmd = docker::command(&["cp"]);
        cmd.arg(host_path)
            .arg(format!("{}:{container_path}", self.name));
        command::checked(&mut cmd, docker::LIMIT).with_context(|| {
            format!(
                "failed to copy {} to {}:{container_path}",
                host_path.display(),
                self.name
            )
        })?;
        Ok(())
    }

    /// The last lines of `unit`'s journal, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl --no-pager -n 30 -u {unit}"))
            .unwrap_or_else(|e| format!("(no journal: {e:#})"))
    }

    /// Polls `systemctl is-system-running` until it says running or
    /// degraded.
    fn wait_for_boot(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            // Before systemd is up, systemctl fails or says "starting".
            let state = self
                .exec(&["systemctl", "is-system-running"])
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .unwrap_or_default();
            match state.as_str() {
                "running" => {
                    info!(host = self.name, elapsed = ?started.elapsed(), "systemd is up");
                    return Ok(());
                }
                "degraded" => {
                    let failed = self
                        .sh("systemctl --failed --no-legend --plain")
                        .unwrap_or_default();
                    warn!(
                        host = self.name,
                        failed = failed.trim(),
                        "systemd is up, degraded"
                    );
                    return Ok(());
                }
                _ if started.elapsed() >= BOOT_LIMIT => {
                    let jobs = self
                        .sh("systemctl list-jobs --no-pager")
                        .unwrap_or_default();
                    let mut cmd = docker::command(&["logs", "--tail", "20", &self.name]);
                    let logs = command::output(&mut cmd, docker::LIMIT)
                        .map(|o| {
                            format!(
                                "{}{}",
                                String::from_utf8_lossy(&o.stdout),
                                String::from_utf8_lossy(&o.stderr)
                            )
                        })
                        .unwrap_or_default();
                    bail!(
                        "systemd in {} not up within {BOOT_LIMIT:?} (state {state:?})\n\
                         jobs:\n{jobs}\ndocker logs:\n{logs}",
                        self.name
                    );
                }
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for SystemdHost<'_> {
    fn drop(&mut self) {
        if let Err(e) = docker::run(&["rm", "--force", "--volumes", &self.name]) {
            warn!(host = self.name, network = self.lab.network(), cause = %format!("{e:#}"),
                  "failed to remove the systemd host");
        }
    }
}
