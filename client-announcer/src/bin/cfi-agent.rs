//! `cfi-agent`: the receiving side of a sync pass, run by the server over
//! SSH (or by `cfi sync-local` over pipes). Speaks the protocol on
//! stdin/stdout; logs go to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use cfi_cli::LogArgs;
use cfi_sync::AgentOptions;
use clap::{Parser, Subcommand};

/// The cfi agent: applies what the cfi server sends to this machine.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Root the group tree is applied under.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Ledger of managed files, backups of originals, drifted copies.
    #[arg(long, default_value = "/var/lib/cfi-client", value_name = "DIR")]
    state_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one sync pass on stdin/stdout.
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match cli.command {
        Command::Serve => serve(&cli),
    }
}

fn serve(cli: &Cli) -> ExitCode {
    let opts = AgentOptions {
        root: cli.root.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cfi-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cfi_sync::serve(
        &opts,
        tokio::io::stdin(),
        tokio::io::stdout(),
    ));
    match result {
        Ok(report) if report.ok() => ExitCode::SUCCESS,
        Ok(report) => {
            for e in &report.errors {
                tracing::warn!(path = %e.path, "{}", e.message);
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cfi-agent: sync pass failed: {e}");
            ExitCode::from(2)
        }
    }
}
