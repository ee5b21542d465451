//! `cfi-server` as its package installs it, in a container on a lab's
//! network ([`crate::debs`]): the server of the demo and of the
//! end-to-end tests when the lab runs cfi's packages, so that what they
//! exercise is the installed package. The daemon is the container's PID 1
//! (its own SIGTERM handling stops it; `docker inspect` gives its host
//! pid, for CPU and memory); the host paths it needs (its config, state
//! and socket dir, the data dir) are mounted at the same paths, so the
//! host's `cfi` reaches its socket and the config names the same files
//! on both sides.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rustix::process::{Pid, Signal, kill_process};
use tracing::warn;

use crate::daemon_process::{self, STOP_LIMIT};
use crate::debs::Packages;
use crate::{docker, image, leftovers};

/// The packaged daemon's path.
const SERVER_PATH: &str = "/usr/sbin/cfi-server";

/// A server container; removed on drop.
#[derive(Debug)]
pub struct ServerContainer {
    name: String,
    pid: u32,
    removed: bool,
}

impl ServerContainer {
    /// Starts `cfi-server args…` in a new container of the lab image with
    /// cfi-server installed, on the lab network `network`, named
    /// `<network>-server<n>` (its host name too). `mounts` are mounted
    /// read-write at the same paths; the daemon's stderr is appended to `log`, which must be
    /// under one of them; `env` is its environment beyond the image's.
    pub fn start(
        packages: &Packages,
        network: &str,
        mounts: &[&Path],
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let image = packages.server_image(&image::ensure_image()?)?;
        // Numbered: a test may run several servers on one lab (a rogue
        // beside the real one).
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = format!("{network}-server{n}");
        let mut run: Vec<String> = [
            "run",
            "--detach",
            "--name",
            &name,
            "--hostname",
            &name,
            "--network",
            network,
            "--label",
            &format!("{}={}", leftovers::OWNER_LABEL, leftovers::owner_label()),
        ]
        .map(str::to_owned)
        .into();
        for dir in mounts {
            let dir = dir.to_str().with_context(|| {
                format!("{} is not UTF-8: docker cannot mount it", dir.display())
            })?;
            run.extend(["--volume".to_owned(), format!("{dir}:{dir}")]);
        }
        let log = log
            .to_str()
            .with_context(|| format!("{} is not UTF-8", log.display()))?;
        for (key, value) in env.iter().chain(&[("CFI_LAB_SERVER_LOG", log)]) {
            run.extend(["--env".to_owned(), format!("{key}={value}")]);
        }
        // The shell execs the daemon: it is PID 1, and its stderr the log.
        run.extend(
            [
                image.as_str(),
                "sh",
                "-c",
                "exec \"$@\" 2>> \"$CFI_LAB_SERVER_LOG\"",
                "sh",
                SERVER_PATH,
            ]
            .map(str::to_owned),
        );
        run.extend(args.iter().cloned());
        docker::run(&run).with_context(|| format!("failed to start server container {name}"))?;
        let mut server = Self {
            name,
            pid: 0,
            removed: false,
        };
        server.pid = docker::stdout(&["inspect", "--format", "{{.State.Pid}}", &server.name])?
            .parse()
            .with_context(|| format!("docker inspect gave no pid for {}", server.name))?;
        Ok(server)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's pid on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Polls `status` (a `cfi status` command line) until it succeeds, the
    /// container stops, or the daemon's ready limit passes.
    pub fn wait_ready(&self, status: impl FnMut() -> std::process::Command) -> Result<()> {
        daemon_process::wait_answering(status, || {
            let state = docker::stdout(&[
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.name,
            ])?;
            Ok(state
                .strip_prefix("false ")
                .map(|code| format!("exit code {code}")))
        })
    }

    /// `docker stop` (SIGTERM, then SIGKILL after the daemons' stop limit)
    /// and removes the container; an error when the daemon did not exit
    /// with 0 (a SIGKILL included). Nothing to do once done.
    pub fn terminate(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        let grace = STOP_LIMIT.as_secs().to_string();
        let mut stop = docker::command(&["stop", "--time", &grace, &self.name]);
        let stopped = crate::command::checked(&mut stop, STOP_LIMIT + Duration::from_secs(30))
            .and_then(|_| {
                docker::stdout(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            });
        let removed = self.remove();
        let code = stopped?;
        removed?;
        ensure!(
            code == "0",
            "cfi-server in {} exited with {code} after SIGTERM",
            self.name
        );
        Ok(())
    }

    /// SIGKILL, as a crash or the OOM killer would, and removes the
    /// container.
    pub fn kill(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        // The daemon's host pid, at once: `docker kill` goes through the
        // docker daemon and lands hundreds of milliseconds later, when a
        // test that kills at a chosen moment of a pass wants it now. It
        // fails when the daemon is dead already; the removal is what
        // counts.
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::KILL);
        }
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        self.removed = true;
        docker::run(&["rm", "--force", "--volumes", &self.name]).map(drop)
    }
}

impl Drop for ServerContainer {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            warn!(container = self.name, cause = %format!("{e:#}"), "failed to remove the server container");
        }
    }
}
