//! `cfi-announcer`: announces this machine to cfi servers over mDNS and
//! installs the server key its trust policy accepts (in the foreground;
//! systemd runs it), `forget` to remove that key, `--check-config`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cfi_cli::LogArgs;
use cfi_client::announcer;
use cfi_client::config::{Checked, ClientConfig};
use clap::{CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The cfi client: announces this machine (and its group) over mDNS, so
/// that the cfi server finds it, and installs the server's key into root's
/// authorized_keys under a trust policy that stops a rogue server.
///
/// Without a subcommand it runs in the foreground until SIGTERM or SIGINT,
/// logging to stderr, and sends mDNS goodbyes when it stops. Every flag
/// overrides the key of the same name in the configuration file.
#[derive(Debug, Parser)]
#[command(name = "cfi-announcer", version, about)]
struct Cli {
    /// Configuration file [default: /etc/cfi/client.toml, optional there].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The group this machine asks for.
    #[arg(long)]
    group: Option<String>,
    /// Which server keys to install: first-use, pinned or any.
    #[arg(long, value_name = "POLICY")]
    trust: Option<String>,
    /// With --trust pinned: the server key's SHA256:… fingerprint.
    #[arg(long, value_name = "FINGERPRINT")]
    server_fingerprint: Option<String>,
    /// The authorized_keys file the server key goes into.
    #[arg(long, value_name = "FILE")]
    authorized_keys: Option<PathBuf>,
    /// The port this machine's sshd listens on.
    #[arg(long, value_name = "PORT")]
    ssh_port: Option<u16>,
    /// Where the pinned server key is kept.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The machine-id file the announced id is derived from.
    #[arg(long, value_name = "FILE")]
    machine_id_file: Option<PathBuf>,
    /// The forced command of the server's key line.
    #[arg(long, value_name = "COMMAND")]
    agent_command: Option<String>,
    /// The sshd host public key whose fingerprint is announced.
    #[arg(long, value_name = "FILE")]
    host_key: Option<PathBuf>,
    /// Announce only on this interface (repeat for more).
    #[arg(long = "interface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// Load and check the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
    /// Print JSON (with --check-config or forget).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove the server's key line from authorized_keys and the pinned
    /// server key, so that the next start trusts a server afresh. Stop the
    /// announcer first (systemctl stop cfi-client).
    Forget,
}

fn main() -> ExitCode {
    if let Some(code) = cfi_cli::docs::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    cli.log.init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cfi-announcer: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(ClientConfig::PATH));
    let mut config = ClientConfig::load(&path, cli.config.is_some())?;
    if let Some(g) = cli.group {
        config.group = Some(g);
    }
    if let Some(t) = cli.trust {
        config.trust = t;
    }
    if let Some(f) = cli.server_fingerprint {
        config.server_fingerprint = Some(f);
    }
    if let Some(f) = cli.authorized_keys {
        config.authorized_keys = f;
    }
    if let Some(p) = cli.ssh_port {
        config.ssh_port = p;
    }
    if let Some(d) = cli.state_dir {
        config.state_dir = d;
    }
    if let Some(f) = cli.machine_id_file {
        config.machine_id_file = f;
    }
    if let Some(c) = cli.agent_command {
        config.agent_command = c;
    }
    if let Some(k) = cli.host_key {
        config.host_key = k;
    }
    if !cli.interfaces.is_empty() {
        config.interfaces = cli.interfaces;
    }
    let checked = config.check(&path)?;
    if cli.check_config {
        return check_config(&checked, cli.json);
    }
    match cli.command {
        Some(Command::Forget) => forget(&checked, cli.json),
        None => daemon(checked),
    }
}

fn check_config(checked: &Checked, json: bool) -> Result<()> {
    let id = announcer::machine_id(&checked.config.machine_id_file)?;
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "group": checked.group.as_ref().map(|g| g.as_str()),
            "trust": checked.trust.as_str(),
            "server_fingerprint": checked.config.server_fingerprint,
            "authorized_keys": checked.config.authorized_keys,
            "ssh_port": checked.config.ssh_port,
            "state_dir": checked.config.state_dir,
            "id": id.as_str(),
            "agent_command": checked.config.agent_command,
            "host_key": checked.config.host_key,
            "interfaces": checked.config.interfaces,
        });
        writeln!(out, "{value}")?;
    } else {
        let group = checked
            .group
            .as_ref()
            .map_or("(none: unknown)", |g| g.as_str());
        writeln!(out, "configuration ok")?;
        writeln!(out, "group            {group}")?;
        writeln!(out, "trust            {}", checked.trust)?;
        writeln!(out, "id               {id}")?;
        writeln!(
            out,
            "authorized_keys  {}",
            checked.config.authorized_keys.display()
        )?;
        writeln!(
            out,
            "state_dir        {}",
            checked.config.state_dir.display()
        )?;
    }
    Ok(())
}

fn forget(checked: &Checked, json: bool) -> Result<()> {
    let done = announcer::forget(checked)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&done)?)?;
    } else {
        let line = if done.line_removed {
            "removed the server key line from"
        } else {
            "no server key line in"
        };
        writeln!(out, "{line} {}", checked.config.authorized_keys.display())?;
        if done.pin_removed {
            writeln!(
                out,
                "forgot the pinned server key; the next start trusts afresh"
            )?;
        }
    }
    Ok(())
}

fn daemon(checked: Checked) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let signalled = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            signalled.cancel();
        });
        announcer::run(checked, stop).await?;
        Ok(())
    })
}
