//! `cfi-server`: the cfi server daemon (in the foreground; systemd runs
//! it), its key (`pubkey`) and the check of its configuration
//! (`--check-config`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cfi_cli::LogArgs;
use cfi_server::config::ServerConfig;
use cfi_server::daemon::Daemon;
use cfi_server::ssh::ServerKey;
use clap::{CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The cfi server: mirrors group trees onto the machines of a pool and runs
/// commands on them; `cfi` talks to it over its control socket.
///
/// Without a subcommand it runs the daemon in the foreground until SIGTERM
/// or SIGINT, logging to stderr.
#[derive(Debug, Parser)]
#[command(name = "cfi-server", version, about)]
struct Cli {
    /// Configuration file [default: /etc/cfi/server.toml, optional there].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Overrides `data_dir` of the configuration.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `state_dir` of the configuration.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Overrides `socket` of the configuration.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Load the configuration, the client lists and the data dir, say what
    /// they hold or what is wrong, and exit.
    #[arg(long)]
    check_config: bool,
    /// With --check-config: print JSON.
    #[arg(long, requires = "check_config")]
    json: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the server's public key line (making the key on first use):
    /// what clients install, and what a netboot image pins by fingerprint.
    Pubkey {
        /// Print the SHA256 fingerprint instead.
        #[arg(long)]
        fingerprint: bool,
    },
    /// Replace the server's key by a new one, signed by the old one.
    ///
    /// Clients that trust on first use accept the new key because the old
    /// key signed it; clients with `trust = "pinned"` need the new
    /// fingerprint in their configuration. The old key is kept (as
    /// `server_key.previous`) and used to log in to clients that have not
    /// installed the new key yet. Restart the daemon afterwards
    /// (`systemctl restart cfi-server`) to announce the new key.
    RotateKey,
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
            eprintln!("cfi-server: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(ServerConfig::PATH));
    let mut config = ServerConfig::load(&path, cli.config.is_some())?;
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    if let Some(d) = cli.state_dir {
        config.state_dir = d;
    }
    if let Some(s) = cli.socket {
        config.socket = s;
    }
    if cli.check_config {
        let report = cfi_server::check::check(&config)?;
        let text = if cli.json {
            serde_json::to_string_pretty(&report)? + "\n"
        } else {
            let mut t = format!(
                "{}: ok\ndata dir {}: groups {}\n",
                path.display(),
                report.data_dir.display(),
                if report.groups.is_empty() {
                    "(none)".into()
                } else {
                    report.groups.join(", ")
                }
            );
            for d in &report.ignored_dirs {
                t += &format!("ignored: {d}\n");
            }
            t += &format!("{} static clients\n", report.static_clients.len());
            for c in &report.static_clients {
                t += &format!("  {c}\n");
            }
            t
        };
        return print(&text);
    }
    match cli.command {
        Some(Command::Pubkey { fingerprint }) => {
            let file = cfi_server::daemon::key_path(&config.state_dir);
            let key = ServerKey::load_or_generate(&file)
                .with_context(|| format!("server key {}", file.display()))?;
            let line = if fingerprint {
                key.fingerprint()
            } else {
                key.public_line().to_owned()
            };
            print(&format!("{line}\n"))
        }
        Some(Command::RotateKey) => {
            let file = cfi_server::daemon::key_path(&config.state_dir);
            let key = ServerKey::rotate(&file)
                .with_context(|| format!("cannot rotate the server key {}", file.display()))?;
            print(&format!(
                "new key {}\nprevious key {} kept to log in until clients follow\n\
                 restart cfi-server to announce it (systemctl restart cfi-server)\n",
                key.fingerprint(),
                key.previous_fingerprint().unwrap_or_default(),
            ))
        }
        None => daemon(config),
    }
}

fn daemon(config: ServerConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let daemon = Daemon::open(config)?;
        let stop = CancellationToken::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let on_signal = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            on_signal.cancel();
        });
        daemon.run(stop).await
    })?;
    // Tasks still winding down (an abandoned handshake) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Writes to stdout; a closed pipe is not an error.
fn print(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
