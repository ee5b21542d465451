//! `cfi-server`: the cfi server. Today: its key (`pubkey`) and the check of
//! its configuration (`--check-config`); the daemon itself is next.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cfi_cli::LogArgs;
use cfi_server::config::ServerConfig;
use cfi_server::ssh::ServerKey;
use clap::{Parser, Subcommand};

/// The cfi server: mirrors group trees onto the machines of a pool.
#[derive(Debug, Parser)]
#[command(name = "cfi-server", version, about, long_about = None)]
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
}

fn main() -> ExitCode {
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
            let file = config.state_dir.join("server_key");
            let key = ServerKey::load_or_generate(&file)
                .with_context(|| format!("server key {}", file.display()))?;
            let line = if fingerprint {
                key.fingerprint()
            } else {
                key.public_line().to_owned()
            };
            print(&format!("{line}\n"))
        }
        None => bail!(
            "nothing to do: the daemon is not built yet; use `cfi-server pubkey` or `cfi-server --check-config`"
        ),
    }
}

/// Writes to stdout; a closed pipe is not an error.
fn print(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
