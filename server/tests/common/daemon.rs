//! A `cfi-server` daemon run by a test as an admin runs it, and the `cfi`
//! binary driving it over the control socket.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cfi_lab::lab::{AGENT_PATH, Lab};
use cfi_lab::server_container::ServerContainer;
use cfi_lab::{command, debs, lab};
use serde_json::Value;

/// Long enough for any `cfi` call here; a hang fails the test instead of
/// stalling it.
const CFI_LIMIT: Duration = Duration::from_secs(90);

/// A running `cfi-server` with its own state dir, data dir and socket;
/// stopped with SIGTERM on drop.
///
/// When the lab runs cfi's packages ([`debs::DEBS_ENV`]) and the server was
/// put [`Server::on`] a lab's network, the daemon is the cfi-server
/// package installed in a container there ([`ServerContainer`]), its dir
/// mounted at the same path; otherwise a child process here.
pub struct Server {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    container: Option<ServerContainer>,
    /// The lab network a packaged daemon's container joins.
    network: Option<String>,
    cfi: PathBuf,
}

impl Server {
    /// A server in `dir` (its `server.toml` written by the caller), driven
    /// by the `cfi` binary at `cfi`; not started yet.
    pub fn new(dir: tempfile::TempDir, cfi: PathBuf) -> Self {
        Self {
            dir,
            child: None,
            container: None,
            network: None,
            cfi,
        }
    }

    /// Has the daemon run in a container on `lab`'s network when the lab
    /// runs cfi's packages.
    pub fn on(mut self, lab: &Lab) -> Self {
        self.network = Some(lab.network().to_owned());
        self
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `cfi --socket SOCKET ARGS`, not run yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cfi);
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd
    }

    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would,
    /// and reaps it; [`Server::spawn`] starts it again on the same state.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.container.take() {
            c.kill()?;
        }
        if let Some(mut child) = self.child.take() {
            child.kill().context("failed to kill cfi-server")?;
            child.wait().context("failed to reap cfi-server")?;
        }
        Ok(())
    }

    /// `cfi ARGS` against this server, stdin from `stdin` (none: /dev/null).
    pub fn cfi_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        let mut cmd = self.command(args);
        let out = match stdin {
            None => command::output(&mut cmd, CFI_LIMIT)?,
            Some(data) => {
                let file = self.dir.path().join("stdin");
                fs::write(&file, data)?;
                command::output_with_stdin(
                    &mut cmd,
                    Stdio::from(fs::File::open(&file)?),
                    CFI_LIMIT,
                )?
            }
        };
        Ok(out)
    }

    pub fn cfi(&self, args: &[&str]) -> Result<Output> {
        self.cfi_with(args, None)
    }

    /// `cfi ARGS --json`, which must exit with `code`, parsed.
    pub fn json(&self, args: &[&str], code: i32) -> Result<Value> {
        // Before `--`: words after it belong to the command.
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.insert(at, "--json");
        let out = self.cfi(&all)?;
        ensure!(
            out.status.code() == Some(code),
            "cfi {all:?}: exit {:?}, expected {code}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| format!("cfi {all:?}: not JSON"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until `cfi clients` shows every client in `state`.
    pub fn wait_for_state(&self, state: &str, limit: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let rows = self.json(&["clients"], 0)?;
            let states: Vec<&str> = rows
                .as_array()
                .context("clients: not a list")?
                .iter()
                .filter_map(|r| r["state"].as_str())
                .collect();
            if states.is_empty() {
                let list = fs::read_to_string(self.dir.path().join("clients"))?;
                bail!(
                    "the server lists no clients; client list:\n{list}\nlog:\n{}",
                    self.log()
                );
            }
            if states.iter().all(|s| *s == state) {
                return Ok(rows);
            }
            if started.elapsed() > limit {
                bail!("clients not all {state} after {limit:?}: {rows:#}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A container stops (and says why it could not) on its own drop.
        self.container = None;
        if let Some(child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = command::wait_for(child, Duration::from_secs(10));
        }
    }
}

impl Server {
    /// Starts the daemon on the config in the server's dir and waits until
    /// it answers; its log is appended to `server.log`, at the level of
    /// `CFI_TEST_SERVER_LOG` (a `RUST_LOG` filter; default info).
    pub fn spawn(&mut self, server: &Path) -> Result<()> {
        let d = self.dir.path();
        let level = std::env::var("CFI_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into());
        if let (Some(network), Some(packages)) = (&self.network, debs::configured()?) {
            let config = d.join("server.toml");
            let config = config.to_str().context("server dir not UTF-8")?;
            self.container = Some(ServerContainer::start(
                packages,
                network,
                &[d],
                &["--config".to_owned(), config.to_owned()],
                &d.join("server.log"),
                &[("RUST_LOG", &level)],
            )?);
        } else {
            let log = fs::File::options()
                .create(true)
                .append(true)
                .open(d.join("server.log"))?;
            let child = Command::new(server)
                .arg("--config")
                .arg(d.join("server.toml"))
                .env("RUST_LOG", level)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("cannot start cfi-server")?;
            self.child = Some(child);
        }
        let started = Instant::now();
        while self.cfi(&["status"])?.status.code() != Some(0) {
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "cfi-server did not answer within 20 s; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops the daemon (SIGTERM), adds `config` to its configuration and
    /// starts it again on the same state dir.
    pub fn restart_with(&mut self, config: &str) -> Result<()> {
        if let Some(mut c) = self.container.take() {
            c.terminate()?;
        }
        if let Some(child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
            let status = command::wait_for(child, Duration::from_secs(10))?;
            ensure!(
                status.is_some_and(|s| s.success()),
                "cfi-server did not stop cleanly on SIGTERM: {status:?}"
            );
        }
        let file = self.dir.path().join("server.toml");
        let mut text = fs::read_to_string(&file)?;
        text.push_str(config);
        fs::write(&file, text)?;
        self.spawn(&lab::built_binary("cfi-server")?)
    }
}

/// The line that installs the server key of state dir `state` in a
/// client's authorized_keys, with the agent as its forced command.
pub fn forced_key_line(state: &Path) -> Result<String> {
    let out = command::checked(
        Command::new(lab::built_binary("cfi-server")?)
            .arg("--state-dir")
            .arg(state)
            .arg("pubkey"),
        Duration::from_secs(30),
    )?;
    let key = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok(format!(
        "restrict,command=\"{AGENT_PATH} --root / --state-dir /var/lib/cfi-client\" {key}"
    ))
}

/// The client list in `dir`: client i of `lab` in `groups[i]`, by address
/// (the lab's hosts have no names the server resolves).
pub fn write_clients(lab: &Lab, dir: &Path, groups: &[&str]) -> Result<()> {
    let list: String = lab
        .clients()
        .iter()
        .zip(groups)
        .map(|(c, g)| format!("{} {g}\n", c.addr))
        .collect();
    fs::write(dir.join("clients"), format!("# the lab\n{list}"))?;
    Ok(())
}

/// Starts a daemon for `lab` with a static client list (client i in
/// `groups[i]`), its key installed on every client, no mDNS and no
/// watcher, short timeouts, and `extra` (TOML lines) in its config.
pub fn start_static(lab: &Lab, groups: &[&str], extra: &str) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let line = forced_key_line(d)?;
    for i in 0..lab.clients().len() {
        lab.authorize(i, &line)?;
    }
    write_clients(lab, d, groups)?;
    fs::create_dir_all(d.join("data/all"))?;
    fs::create_dir_all(d.join("data/lab"))?;
    fs::write(
        d.join("server.toml"),
        format!(
            "data_dir = {:?}\nstate_dir = {:?}\nsocket = {:?}\nclients_file = {:?}\n\
             connect_timeout = 3\nkeepalive = 1\ncommand_timeout = 60\n\
             mdns = false\nwatch = false\n{extra}",
            d.join("data"),
            d,
            d.join("control.sock"),
            d.join("clients")
        ),
    )?;
    let mut s = Server::new(dir, lab::built_binary("cfi")?).on(lab);
    s.spawn(&lab::built_binary("cfi-server")?)?;
    Ok(s)
}

/// The interface a test daemon on `lab` keeps its mDNS to: `eth0` in its
/// container when the lab runs cfi's packages ([`Server::on`]), else the
/// lab's bridge on this host.
pub fn mdns_interface(lab: &Lab) -> Result<String> {
    match debs::configured()? {
        Some(_) => Ok("eth0".into()),
        None => lab.bridge_interface(),
    }
}
