//! `cfi`: the cfi admin CLI.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cfi_cli::LogArgs;
use cfi_groups::GroupName;
use cfi_server::local::{self, LocalSync};
use cfi_sync::PushOptions;
use clap::{Parser, Subcommand};

/// cfi: mirror group trees onto a pool of machines.
#[derive(Debug, Parser)]
#[command(name = "cfi", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync a group's tree onto a directory of this machine, through a
    /// local cfi-agent (the same protocol the server speaks over SSH).
    ///
    /// Exit status: 0 all converged, 1 some paths failed (listed), 2 the
    /// pass failed.
    SyncLocal(SyncLocalArgs),
}

#[derive(Debug, clap::Args)]
struct SyncLocalArgs {
    /// Data dir holding the group trees.
    #[arg(long, default_value = "/var/lib/cfi", value_name = "DIR")]
    data_dir: PathBuf,
    /// Group to apply (`all/` is layered under it).
    #[arg(long, short)]
    group: GroupName,
    /// Target root.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The agent's ledger, backups and drifted copies for this root.
    #[arg(long, default_value = "/var/lib/cfi-client", value_name = "DIR")]
    state_dir: PathBuf,
    /// The server's hash cache and recent manifests: unchanged files are not
    /// hashed again, and a changed tree is sent as a manifest delta.
    #[arg(long, default_value = "/var/cache/cfi", value_name = "DIR")]
    cache_dir: PathBuf,
    /// Use no cache: hash every file, send whole manifests.
    #[arg(long)]
    no_cache: bool,
    /// Show what would change, with diffs of text files; write nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// zstd level for file data; 0 (the default here) sends files
    /// uncompressed, since over a local pipe compression only costs CPU.
    /// Deltas are compressed either way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(-7..=19))]
    level: i32,
    /// The agent binary [default: beside cfi, then /usr/lib/cfi/cfi-agent].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::SyncLocal(args) => sync_local(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cfi: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn sync_local(args: SyncLocalArgs) -> Result<ExitCode> {
    tracing::debug!("cfi started");
    let job = LocalSync {
        data_dir: args.data_dir,
        group: args.group,
        root: args.root,
        state_dir: args.state_dir,
        cache_dir: (!args.no_cache).then_some(args.cache_dir),
        agent: args.agent.unwrap_or_else(local::default_agent),
        push: PushOptions {
            dry_run: args.dry_run,
            compression: (args.level != 0).then_some(args.level),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(local::run(&job))?;
    tracing::debug!("run returned");
    let text = if args.json {
        serde_json::to_string(&report)? + "\n"
    } else {
        cfi_server::render::pass(&report)
    };
    print_or_pipe_closed(&text)?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_or_pipe_closed(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
