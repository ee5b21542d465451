//! cfi as the pool benchmarks ([`crate::pool_bench`]) run it: `cfi-server`
//! as a child daemon holding the SSH connections to a lab's clients, each
//! running the workspace's `cfi-agent` as the forced command of the
//! server's key, and the `cfi` CLI asking the daemon over its control
//! socket.
//!
//! A command's cost (see [`crate::pool_tools`]) is the CLI's wall time and
//! CPU plus the daemon's CPU: the orchestrator here is both processes.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use tracing::{debug, trace, warn};

use crate::command;
use crate::daemon_process::DaemonProcess;
use crate::lab::{AGENT_PATH, Lab};
use crate::pool_tools::{
    Cost, EXEC_LIMIT, Meter, SYNC_LIMIT, measured, on_every_client, process_cpu,
};

/// Where cfi's three binaries are.
#[derive(Debug, Clone)]
pub struct CfiBinaries {
    /// The CLI.
    pub cfi: PathBuf,
    /// The daemon.
    pub server: PathBuf,
    /// The agent the clients run.
    pub agent: PathBuf,
}

impl CfiBinaries {
    /// The binaries of cfi's packages ([`crate::debs`]).
    pub fn packaged(packages: &crate::debs::Packages) -> Result<Self> {
        let find = |name: &str| {
            packages
                .binary(name)
                .with_context(|| format!("no {name} in cfi's packages"))
        };
        Ok(Self {
            cfi: find("cfi")?,
            server: find("cfi-server")?,
            agent: find("cfi-agent")?,
        })
    }

    /// The binaries in `dir` (a cargo target profile dir), or an error that
    /// says how to build them.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            cfi: dir.join("cfi"),
            server: dir.join("cfi-server"),
            agent: dir.join("cfi-agent"),
        };
        for path in [&bins.cfi, &bins.server, &bins.agent] {
            ensure!(
                path.is_file(),
                "{} not found: build cfi (cargo build --release --bins), pass --cfi DIR, \
                 or run --only peers",
                path.display()
            );
        }
        Ok(bins)
    }
}

/// Which hosts a `cfi` command addresses.
#[derive(Debug, Clone, Copy)]
pub enum Hosts<'a> {
    /// `-a`.
    All,
    /// `-w HOST`.
    One(&'a str),
}

/// A cfi server set up for a lab, in a directory of its own:
///
/// ```text
/// <dir>/server.toml      its config
///       clients          one `IP GROUP` line per lab client (port 22)
///       state/           its key, state database, control socket
///       cfi-server.log   the daemons' stderr, appended run after run
/// ```
///
/// Every client runs the workspace's `cfi-agent` as the forced command of
/// the server's key.
#[derive(Debug)]
pub struct CfiPool {
    bins: CfiBinaries,
    dir: PathBuf,
    hosts: Vec<String>,
}

impl CfiPool {
    /// The group every lab client is in.
    pub const GROUP: &'static str = "bench";

    /// Where the agent keeps its state in a client.
    pub const CLIENT_STATE_DIR: &'static str = "/var/lib/cfi-client";

    /// Sets up a server in `dir` for the groups of `data_dir` (which must
    /// have `all/` and [`CfiPool::GROUP`]`/`), with every client of `lab`
    /// in the group, and installs and authorizes the agent in each.
    pub fn prepare(bins: CfiBinaries, dir: &Path, data_dir: &Path, lab: &Lab) -> Result<Self> {
        let groups = vec![Some(Self::GROUP); lab.clients().len()];
        Self::prepare_grouped(bins, dir, data_dir, lab, &groups, &PoolOptions::default())
    }

    /// [`CfiPool::prepare`] with client `i` in `groups[i]` (`None`: listed
    /// without a group, so it gets `unknown`), as `options` say.
    pub fn prepare_grouped(
        bins: CfiBinaries,
        dir: &Path,
        data_dir: &Path,
        lab: &Lab,
        groups: &[Option<&str>],
        options: &PoolOptions,
    ) -> Result<Self> {
        let state = dir.join("state");
        fs::create_dir_all(&state)
            .with_context(|| format!("failed to create {}", state.display()))?;
        let hosts: Vec<String> = lab.clients().iter().map(|c| c.addr.to_string()).collect();
        let clients: String = hosts
            .iter()
            .zip(groups.iter().chain(std::iter::repeat(&None)))
            .map(|(h, g)| format!("{h} {}\n", g.unwrap_or_default()))
            .collect();
        let pool = Self {
            bins,
            dir: dir.to_owned(),
            hosts,
        };
        write(&pool.clients_file(), &clients)?;
        // repair_interval, watch: no pass but the ones asked for during a
        // measurement (unless the watch is what is measured); mdns: these
        // clients are listed, not announced.
        let config = format!(
            "data_dir = {}\nstate_dir = {}\nsocket = {}\nclients_file = {}\n\
             connect_timeout = 10\nmax_handshakes = 64\nrepair_interval = 86400\n\
             mdns = false\nwatch = {}\n",
            toml_string(data_dir)?,
            toml_string(&state)?,
            toml_string(&pool.socket())?,
            toml_string(&pool.clients_file())?,
            options.watch,
        );
        write(&pool.config(), &config)?;

        let mut cmd = Command::new(&pool.bins.server);
        cmd.arg("--state-dir").arg(&state).arg("pubkey");
        let out = command::checked(&mut cmd, Duration::from_secs(30))?;
        let pubkey = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            pubkey.starts_with("ssh-") && !pubkey.contains('\n'),
            "`{}` printed no public key line: {pubkey:?}",
            command::Shown(&cmd)
        );
        let line = format!(
            "restrict,command=\"{} --root / --state-dir {}\" {pubkey}",
            options.forced_agent.as_deref().unwrap_or(AGENT_PATH),
            Self::CLIENT_STATE_DIR
        );
        on_every_client(lab, |i| {
            lab.install_agent(i, &pool.bins.agent)?;
            lab.authorize(i, &line)
        })?;
        Ok(pool)
    }

    /// The clients' names, as cfi knows them (their addresses, as the
    /// clients file has them), by lab index.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(&self) -> Result<Daemon<'_>> {
        Daemon::start(self)
    }

    /// Starts a daemon and runs its first exec, timed from its start
    /// (see [`Daemon::exec`] for the checks): nothing is connected when
    /// the clock starts. The daemon is returned running.
    pub fn cold_exec(
        &self,
        hosts: Hosts<'_>,
        argv: &[&str],
    ) -> Result<(Daemon<'_>, ExecReport, Cost)> {
        Daemon::cold_exec(self, hosts, argv)
    }

    /// The daemon's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("cfi-server.log")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("server.toml")
    }

    fn clients_file(&self) -> PathBuf {
        self.dir.join("clients")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("state/control.sock")
    }

    /// `cfi --socket SOCKET args…`.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.cfi);
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd
    }
}

/// How a [`CfiPool`] is set up beyond its clients.
#[derive(Debug, Clone, Default)]
pub struct PoolOptions {
    /// Whether the daemon watches the data dir and syncs on changes.
    pub watch: bool,
    /// The forced command's program instead of the agent at
    /// [`AGENT_PATH`] (its name must still be `cfi-agent`).
    pub forced_agent: Option<String>,
}

/// A running `cfi-server`, stopped (SIGTERM) on [`Daemon::stop`] or drop.
#[derive(Debug)]
pub struct Daemon<'p> {
    pool: &'p CfiPool,
    process: DaemonProcess,
    /// The daemon's CPU already billed to a measured command.
    billed: Cell<Duration>,
}

impl<'p> Daemon<'p> {
    fn start(pool: &'p CfiPool) -> Result<Self> {
        let (mut daemon, log_start) = Self::spawn(pool)?;
        daemon
            .wait_ready()
            .with_context(|| log_tail(&pool.log(), log_start))?;
        Ok(daemon)
    }

    /// Starts the daemon and runs its first `cfi exec` (as
    /// [`Daemon::exec`]), timed from the daemon's start: the daemon begins
    /// connecting to its listed clients as it starts, so a clock started
    /// once it answers would miss part of the connecting that a cold exec
    /// is about. Wall and machine CPU are the whole span's; the CPU is the
    /// daemon's since its start plus the CLI's.
    fn cold_exec(
        pool: &'p CfiPool,
        hosts: Hosts<'_>,
        argv: &[&str],
    ) -> Result<(Self, ExecReport, Cost)> {
        let meter = Meter::start()?;
        let (mut daemon, log_start) = Self::spawn(pool)?;
        daemon
            .process
            .wait_accepting(&pool.socket())
            .with_context(|| log_tail(&pool.log(), log_start))?;
        debug!(after = ?meter.elapsed(), "the daemon takes connections");
        let (report, exec) = daemon.exec(hosts, argv)?;
        let whole = meter.stop()?;
        let cost = Cost {
            cpu: exec.cpu,
            ..whole
        };
        Ok((daemon, report, cost))
    }

    /// Starts the daemon, not waiting for it; returns it with where its
    /// part of the log starts.
    fn spawn(pool: &'p CfiPool) -> Result<(Self, u64)> {
        // A daemon that was stopped may leave its socket behind.
        let socket = pool.socket();
        if socket.exists() {
            fs::remove_file(&socket)
                .with_context(|| format!("failed to remove {}", socket.display()))?;
        }
        let log_path = pool.log();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(&pool.bins.server)
            .arg("--config")
            .arg(pool.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {}", pool.bins.server.display()))?;
        let daemon = Daemon {
            pool,
            process: DaemonProcess::new(child),
            billed: Cell::new(Duration::ZERO),
        };
        Ok((daemon, log_start))
    }

    /// Polls `cfi status` until it succeeds.
    fn wait_ready(&mut self) -> Result<()> {
        let pool = self.pool;
        self.process.wait_ready(|| pool.cli(&["status", "--json"]))
    }

    /// `cfi exec HOSTS --json -- argv…`; fails unless every addressed host
    /// ran it and returned 0. The cost is the CLI's, plus the daemon's CPU
    /// since the previous measured command ended or, for the first, since
    /// the daemon started. Its wall time starts with the CLI: a cold exec
    /// is timed by [`CfiPool::cold_exec`].
    pub fn exec(&self, hosts: Hosts<'_>, argv: &[&str]) -> Result<(ExecReport, Cost)> {
        let mut args = vec!["exec"];
        push_hosts(&mut args, hosts);
        args.extend(["--no-stdin", "--json", "--"]);
        args.extend(argv);
        let (out, cost) = self.measured(&args, EXEC_LIMIT)?;
        let report: ExecReport = parse_json(&out, "cfi exec")?;
        report.check(&self.expected(hosts))?;
        ensure!(
            out.status.success(),
            "cfi exec exited {} although every host returned 0",
            out.status
        );
        Ok((report, cost))
    }

    /// `cfi sync HOSTS --json`; fails unless it exits 0. Its report, and
    /// the cost as for [`Daemon::exec`].
    pub fn sync(&self, hosts: Hosts<'_>) -> Result<(serde_json::Value, Cost)> {
        let mut args = vec!["sync"];
        push_hosts(&mut args, hosts);
        args.push("--json");
        let (out, cost) = self.measured(&args, SYNC_LIMIT)?;
        ensure!(
            out.status.success(),
            "cfi sync exited {}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        let report = parse_json(&out, "cfi sync")?;
        trace!(%report, "cfi sync --json");
        Ok((report, cost))
    }

    /// Stops the daemon: SIGTERM, and SIGKILL if it has not exited within
    /// `STOP_LIMIT` (an error, after the kill).
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn measured(&self, args: &[&str], limit: Duration) -> Result<(Output, Cost)> {
        let (out, mut cost) = measured(&mut self.pool.cli(args), limit)?;
        let total = process_cpu(self.process.pid())?;
        cost.cpu += total.saturating_sub(self.billed.replace(total));
        Ok((out, cost))
    }

    fn expected(&self, hosts: Hosts<'_>) -> Vec<String> {
        match hosts {
            Hosts::All => self.pool.hosts.clone(),
            Hosts::One(h) => vec![h.to_owned()],
        }
    }

    fn terminate(&mut self) -> Result<()> {
        self.process.terminate()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            warn!(cause = %format!("{e:#}"), "failed to stop cfi-server");
        }
    }
}

/// What `cfi exec --json` prints (the fields the benchmark reads).
#[derive(Debug, Clone, Deserialize)]
pub struct ExecReport {
    /// One entry per addressed host.
    pub hosts: Vec<HostOutcome>,
}

/// One host's result in an [`ExecReport`].
#[derive(Debug, Clone, Deserialize)]
pub struct HostOutcome {
    /// As the clients file names it.
    pub host: String,
    /// The command's exit status, when it exited.
    pub status: Option<i32>,
    /// What it printed.
    #[serde(default)]
    pub stdout: String,
    /// What it printed on stderr.
    #[serde(default)]
    pub stderr: String,
    /// Why the host could not run it.
    pub error: Option<String>,
}

impl ExecReport {
    /// Fails unless exactly `expected` hosts are in the report, each with
    /// status 0.
    pub fn check(&self, expected: &[String]) -> Result<()> {
        let seen: BTreeSet<&str> = self.hosts.iter().map(|h| h.host.as_str()).collect();
        let wanted: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        ensure!(
            seen == wanted && self.hosts.len() == expected.len(),
            "cfi exec reported hosts {seen:?}, expected {wanted:?}"
        );
        let failed: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.status != Some(0) || h.error.is_some())
            .map(|h| {
                format!(
                    "{} (status {:?}, error {:?}, stderr {:?})",
                    h.host,
                    h.status,
                    h.error,
                    h.stderr.trim()
                )
            })
            .collect();
        ensure!(
            failed.is_empty(),
            "cfi exec failed on {} host(s): {}",
            failed.len(),
            failed.join("; ")
        );
        Ok(())
    }
}

fn push_hosts<'a>(args: &mut Vec<&'a str>, hosts: Hosts<'a>) {
    match hosts {
        Hosts::All => args.push("-a"),
        Hosts::One(h) => args.extend(["-w", h]),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(out: &Output, what: &str) -> Result<T> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "{what} --json ({}) printed no report we understand: {}\nstderr: {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// A path as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("path is not UTF-8: {}", path.display()))?;
    Ok(serde_json::to_string(s)?)
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// The end of what the daemon logged since `from`, for an error message.
fn log_tail(path: &Path, from: u64) -> String {
    const SHOWN: u64 = 4000;
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(from.max(len.saturating_sub(SHOWN))))?;
        f.read_to_string(&mut text)
    });
    match read {
        Ok(_) => format!("cfi-server's log ({}):\n{}", path.display(), text.trim()),
        Err(e) => format!("cfi-server's log {} unreadable: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_report_checks_every_host() {
        let report: ExecReport = serde_json::from_str(
            r#"{"hosts":[
                {"host":"10.0.0.2","status":0,"signal":null,"stdout":"","stderr":"","error":null},
                {"host":"10.0.0.3","status":1,"signal":null,"stdout":"","stderr":"no","error":null}
            ],"elapsed_ms":3}"#,
        )
        .unwrap();
        let both = ["10.0.0.2".to_owned(), "10.0.0.3".to_owned()];
        let err = report.check(&both).unwrap_err();
        assert!(err.to_string().contains("10.0.0.3"), "{err:#}");
        assert!(report.check(&both[..1]).is_err());
        let ok = ExecReport {
            hosts: report.hosts[..1].to_vec(),
        };
        ok.check(&both[..1]).unwrap();
    }

    #[test]
    fn toml_strings_escape_quotes() {
        assert_eq!(
            toml_string(Path::new("/tmp/a \"b\"")).unwrap(),
            r#""/tmp/a \"b\"""#
        );
    }
}
