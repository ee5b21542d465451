//! cfi as the zero-config benchmarks run it: `cfi-server` on the host with
//! its mDNS kept to a lab's bridge, and lab clients that enroll themselves
//! by running the real `cfi-announcer` (started by the container's init,
//! as systemd would). No client is listed anywhere; the server learns of
//! them from their announcements, and `cfi clients --json` shows how far
//! each got (`online` with a numeric `last_sync`: enrolled and synced).
//!
//! The server's dir:
//!
//! ```text
//! <dir>/server.toml      its config
//!       state/           its key, state database, caches
//!       control.sock     the socket `cfi` talks to
//!       cfi-server.log   its stderr (RUST_LOG=info unless set)
//! ```

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::cfi_pool::CfiBinaries;
use crate::command;
use crate::daemon_process::DaemonProcess;
use crate::debs::Packages;
use crate::lab::{Client, ClientSpec, Lab};
use crate::pool_tools::process_cpu;
use crate::server_container::ServerContainer;

/// Where the lab clients of these benchmarks find `cfi-lab` itself (its
/// hidden helpers `wait-file` and `announce-many`).
pub const CFI_LAB_PATH: &str = "/usr/local/bin/cfi-lab";

/// The group the benchmarks' clients ask for.
pub const GROUP: &str = "lab";

/// How long one `cfi` call may take.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// cfi's binaries for a zero-config pool: the three of [`CfiBinaries`],
/// the announcer, and this `cfi-lab` (mounted into clients for helpers).
#[derive(Debug, Clone)]
pub struct ZeroconfBinaries {
    /// `cfi`, `cfi-server`, `cfi-agent`.
    pub cfi: CfiBinaries,
    /// `cfi-announcer`.
    pub announcer: PathBuf,
    /// The running `cfi-lab`.
    pub lab: PathBuf,
}

impl ZeroconfBinaries {
    /// The binaries in `dir` (a cargo target profile dir), or an error that
    /// says how to build them.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let cfi = CfiBinaries::in_dir(dir)?;
        let announcer = dir.join("cfi-announcer");
        ensure!(
            announcer.is_file(),
            "{} not found: build cfi (cargo build --release --bins) or pass --cfi DIR",
            announcer.display()
        );
        let lab = std::env::current_exe().context("failed to find the cfi-lab executable")?;
        Ok(Self {
            cfi,
            announcer,
            lab,
        })
    }

    /// The binaries of cfi's packages ([`crate::debs`]), and this
    /// `cfi-lab`.
    pub fn packaged(packages: &Packages) -> Result<Self> {
        Ok(Self {
            cfi: CfiBinaries::packaged(packages)?,
            announcer: packages
                .binary("cfi-announcer")
                .context("no cfi-announcer in cfi's packages")?,
            lab: std::env::current_exe().context("failed to find the cfi-lab executable")?,
        })
    }

    /// A client that runs the announcer with `client_toml` as its config
    /// and has the agent and `cfi-lab` (at [`CFI_LAB_PATH`]) mounted.
    pub fn announcing(&self, client_toml: &str) -> ClientSpec {
        ClientSpec::default()
            .announcer(&self.announcer)
            .agent(&self.cfi.agent)
            .binary(&self.lab, CFI_LAB_PATH)
            .client_toml(client_toml)
            .env("RUST_LOG", "info")
    }
}

/// One row of `cfi clients --json` (the fields the benchmarks read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClientRow {
    /// Its name in `cfi`: for an announced client, its instance label
    /// without the id suffix (the lab client's host name).
    pub host: String,
    /// The group it gets.
    pub group: String,
    /// `ip:port`.
    pub address: String,
    /// `mdns`, or where it is listed.
    pub source: String,
    /// `online`, `pending`, `unreachable`, ….
    pub state: String,
    /// Unix time of its last pass.
    pub last_sync: Option<i64>,
    /// The last error reaching it.
    pub error: Option<String>,
}

impl ClientRow {
    /// Whether this is lab client `c`'s row: its host name (the
    /// announcer cuts it to 40 characters) and address. Both, because a
    /// stopped client's address may be handed to the next one.
    pub fn is(&self, c: &Client) -> bool {
        let named =
            self.host == c.name || (self.host.len() == 40 && c.name.starts_with(&self.host));
        named && self.address == format!("{}:22", c.addr)
    }

    /// Enrolled: connected, and a pass went through.
    pub fn enrolled(&self) -> bool {
        self.state == "online" && self.last_sync.is_some()
    }
}

/// A process's memory as `/proc/<pid>/status` gives it, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// The most resident so far (high-water mark).
    pub hwm_kib: u64,
    /// Resident anonymous memory (heap, stacks).
    pub anon_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// A running `cfi-server` whose mDNS is kept to a lab's bridge; stopped
/// with SIGTERM on [`ZeroconfServer::stop`] or drop.
#[derive(Debug)]
pub struct ZeroconfServer {
    bins: CfiBinaries,
    dir: PathBuf,
    process: Daemon,
}

/// Where the daemon runs.
#[derive(Debug)]
enum Daemon {
    /// A child process on the lab host.
    Host(DaemonProcess),
    /// The packaged daemon in a container on the lab's network.
    Container(ServerContainer),
}

impl ZeroconfServer {
    /// Writes a config into `dir` for the groups of `data_dir`, mDNS on
    /// `lab`'s bridge only, no static clients, plus `extra` (TOML lines),
    /// starts the daemon and waits until it answers.
    pub fn start(
        bins: &CfiBinaries,
        dir: &Path,
        data_dir: &Path,
        lab: &Lab,
        extra: &str,
    ) -> Result<Self> {
        let config_path = write_config(dir, data_dir, &lab.bridge_interface()?, extra)?;
        let log = File::create(log_path(dir))
            .with_context(|| format!("failed to create {}", log_path(dir).display()))?;
        let mut cmd = Command::new(&bins.server);
        cmd.arg("--config").arg(&config_path);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {}", bins.server.display()))?;
        Self::ready(bins.clone(), dir, Daemon::Host(DaemonProcess::new(child)))
    }

    /// [`ZeroconfServer::start`] with the daemon and CLI of `packages`:
    /// the daemon installed from cfi-server's package in a container on
    /// `lab`'s network ([`ServerContainer`]; `dir` and `data_dir` mounted
    /// there), the CLI the package's, run here.
    pub fn start_packaged(
        packages: &Packages,
        dir: &Path,
        data_dir: &Path,
        lab: &Lab,
        extra: &str,
    ) -> Result<Self> {
        let bins = CfiBinaries::packaged(packages)?;
        // eth0: the container's side of the lab network.
        let config_path = write_config(dir, data_dir, "eth0", extra)?;
        File::create(log_path(dir))
            .with_context(|| format!("failed to create {}", log_path(dir).display()))?;
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let config = config_path
            .to_str()
            .context("the server's config path is not UTF-8")?;
        let container = ServerContainer::start(
            packages,
            lab.network(),
            &[dir, data_dir],
            &["--config".to_owned(), config.to_owned()],
            &log_path(dir),
            &[("RUST_LOG", &rust_log)],
        )?;
        Self::ready(bins, dir, Daemon::Container(container))
    }

    /// The server's container, when it runs in one.
    pub fn container(&self) -> Option<&str> {
        match &self.process {
            Daemon::Container(c) => Some(c.name()),
            Daemon::Host(_) => None,
        }
    }

    fn ready(bins: CfiBinaries, dir: &Path, process: Daemon) -> Result<Self> {
        let mut server = Self {
            bins,
            dir: dir.to_owned(),
            process,
        };
        server.wait_ready().with_context(|| {
            format!(
                "cfi-server did not start; its log:\n{}",
                tail(&server.log(), 20)
            )
        })?;
        Ok(server)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Daemon::Host(p) => p.pid(),
            Daemon::Container(c) => c.pid(),
        }
    }

    /// `cfi --socket SOCKET args…`.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.cfi);
        cmd.arg("--socket")
            .arg(self.dir.join("control.sock"))
            .args(args);
        cmd
    }

    /// `cfi clients --json`.
    pub fn clients(&self) -> Result<Vec<ClientRow>> {
        let mut cmd = self.cli(&["clients", "--json"]);
        let out = command::checked(&mut cmd, CLI_LIMIT)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "cfi clients --json printed what we do not understand: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        })
    }

    /// The fingerprint of the server's key (`cfi-server pubkey
    /// --fingerprint`), for clients that pin it.
    pub fn fingerprint(&self) -> Result<String> {
        let mut cmd = Command::new(&self.bins.server);
        cmd.arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["pubkey", "--fingerprint"]);
        let out = command::checked(&mut cmd, CLI_LIMIT)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The daemon's CPU so far (user + system, all threads).
    pub fn cpu(&self) -> Result<Duration> {
        process_cpu(self.pid())
    }

    /// The daemon's memory now.
    pub fn memory(&self) -> Result<Memory> {
        memory_of(self.pid())
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(log_path(&self.dir)).unwrap_or_default()
    }

    /// Waits until `cfi clients` shows every client of `clients` enrolled;
    /// the time that took.
    pub fn wait_enrolled(&self, clients: &[Client], limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let rows = self.clients()?;
            let missing: Vec<&Client> = clients
                .iter()
                .filter(|c| !rows.iter().any(|r| r.is(c) && r.enrolled()))
                .collect();
            if missing.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                let shown: Vec<String> = missing
                    .iter()
                    .take(5)
                    .map(|c| {
                        let row = rows.iter().find(|r| r.is(c));
                        format!("{} ({}): {row:?}", c.name, c.addr)
                    })
                    .collect();
                bail!(
                    "{} of {} clients not enrolled after {limit:?}, such as:\n{}\nserver log:\n{}",
                    missing.len(),
                    clients.len(),
                    shown.join("\n"),
                    tail(&self.log(), 30)
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the daemon: SIGTERM, and SIGKILL if it has not exited within
    /// `STOP_LIMIT` (an error, after the kill).
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let (bins, socket) = (&self.bins, self.dir.join("control.sock"));
        let status = || {
            let mut cmd = Command::new(&bins.cfi);
            cmd.arg("--socket").arg(&socket).arg("status");
            cmd
        };
        match &mut self.process {
            Daemon::Host(p) => p.wait_ready(status),
            Daemon::Container(c) => c.wait_ready(status),
        }
    }

    fn terminate(&mut self) -> Result<()> {
        match &mut self.process {
            Daemon::Host(p) => p.terminate(),
            Daemon::Container(c) => c.terminate(),
        }
    }
}

impl Drop for ZeroconfServer {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            warn!(cause = %format!("{e:#}"), "failed to stop cfi-server");
        }
    }
}

/// Writes `dir/server.toml` for the groups of `data_dir`, mDNS on
/// `interface` only, no static clients, plus `extra` (TOML lines); its
/// path.
fn write_config(dir: &Path, data_dir: &Path, interface: &str, extra: &str) -> Result<PathBuf> {
    let state = dir.join("state");
    fs::create_dir_all(&state).with_context(|| format!("failed to create {}", state.display()))?;
    let config = format!(
        "data_dir = {}\nstate_dir = {}\nsocket = {}\nclients_file = {}\n\
         mdns_interfaces = [{}]\nmdns_name = \"cfi-lab-bench\"\n{extra}",
        toml_string(data_dir)?,
        toml_string(&state)?,
        toml_string(&dir.join("control.sock"))?,
        toml_string(&dir.join("clients"))?,
        toml_string(Path::new(interface))?,
    );
    let path = dir.join("server.toml");
    fs::write(&path, config).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// The daemon's stderr.
fn log_path(dir: &Path) -> PathBuf {
    dir.join("cfi-server.log")
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The memory of process `pid` now, from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    parse_status(&text).with_context(|| format!("unexpected {path}"))
}

/// VmRSS, VmHWM, RssAnon and Threads of a `/proc/<pid>/status`.
fn parse_status(text: &str) -> Result<Memory> {
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("no {name}"))?;
        let value = line.split_whitespace().next().unwrap_or_default();
        value
            .parse()
            .with_context(|| format!("{name} is {value:?}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        anon_kib: field("RssAnon")?,
        threads: field("Threads")?,
    })
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(serde_json::to_string(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_fields() {
        let text = "Name:\tcfi-server\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                    RssAnon:\t    8000 kB\nThreads:\t5\n";
        let m = parse_status(text).unwrap();
        assert_eq!(
            (m.rss_kib, m.hwm_kib, m.anon_kib, m.threads),
            (10240, 20480, 8000, 5)
        );
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn rows_match_their_client() {
        let c = Client {
            name: "cfi-lab-1-abc-c3".into(),
            addr: "10.1.0.5".parse().unwrap(),
        };
        let row = ClientRow {
            host: "cfi-lab-1-abc-c3".into(),
            group: GROUP.into(),
            address: "10.1.0.5:22".into(),
            source: "mdns".into(),
            state: "online".into(),
            last_sync: Some(1),
            error: None,
        };
        assert!(row.is(&c) && row.enrolled());
        let other = ClientRow {
            address: "10.1.0.6:22".into(),
            ..row.clone()
        };
        assert!(!other.is(&c));
        let pending = ClientRow {
            state: "pending".into(),
            ..row
        };
        assert!(!pending.enrolled());
    }
}
