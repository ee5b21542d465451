//! `cfi-lab`: runs cfi's lab scenarios and benchmarks. This file only
//! parses flags into a [`Plan`] and prints what the library returns; the
//! work lives in the `cfi_lab` modules.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cfi_lab::bench::{self, Plan};
use cfi_lab::change::Change;
use cfi_lab::peer::Tool;
use cfi_lab::report;
use cfi_lab::tree::TreeSpec;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::info;

/// cfi's lab: end-to-end scenarios and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "cfi-lab", version)]
struct Cli {
    #[command(flatten)]
    logging: Logging,
    #[command(subcommand)]
    command: Command,
}

/// Logging flags.
#[derive(Debug, Args)]
struct Logging {
    /// Log filter when RUST_LOG is unset (progress goes to stderr).
    #[arg(long, global = true, default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// cfi sync-local against rsync on one generated tree: first sync, no-op
    /// and 1% change, each timed, every result verified.
    SyncLocal(SyncLocalArgs),
}

#[derive(Debug, Args)]
struct SyncLocalArgs {
    /// Seed of the generated tree (and, plus one, of the change).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Regular files in the tree, large ones included.
    #[arg(long, default_value_t = TreeSpec::DEFAULT_FILES)]
    files: usize,
    /// How many of the files are large (0.5–2 MiB, random).
    #[arg(long, default_value_t = TreeSpec::DEFAULT_LARGE)]
    large: usize,
    /// Counted runs per phase and tool; the report shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Uncounted runs before them, per phase and tool.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Work here instead of a fresh temp dir (kept afterwards; must be
    /// empty or an earlier cfi-lab workdir).
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Keep the temp dir.
    #[arg(long)]
    keep: bool,
    /// The cfi binary [default: `cfi` next to cfi-lab].
    #[arg(long, value_name = "PATH")]
    cfi: Option<PathBuf>,
    /// Run one tool only.
    #[arg(long, value_enum)]
    only: Option<OnlyTool>,
    /// Let rsync fsync every file it writes (`--fsync`), as cfi does.
    #[arg(long)]
    rsync_fsync: bool,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnlyTool {
    Cfi,
    Rsync,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.logging);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cfi-lab: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(logging: &Logging) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Bench(BenchCommand::SyncLocal(args)) => sync_local(args),
    }
}

fn sync_local(args: SyncLocalArgs) -> Result<()> {
    if args.files == 0 || args.large > args.files {
        bail!(
            "--files must be at least 1 and --large at most --files (got {} and {})",
            args.files,
            args.large
        );
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let tools = match args.only {
        None => vec![Tool::Cfi, Tool::Rsync],
        Some(OnlyTool::Cfi) => vec![Tool::Cfi],
        Some(OnlyTool::Rsync) => vec![Tool::Rsync],
    };
    let cfi = match args.cfi {
        Some(path) => path,
        None => std::env::current_exe()
            .context("failed to find the cfi-lab executable")?
            .with_file_name("cfi"),
    };
    // A fresh temp dir unless told otherwise; it goes away on drop (also on
    // error) unless --keep.
    let (workdir, temp) = match args.workdir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("cfi-lab-")
                .tempdir()
                .context("failed to create a temp workdir")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let plan = Plan {
        workdir,
        tree: TreeSpec::new(args.seed, args.files, args.large),
        change: Change::default(),
        change_seed: args.seed.wrapping_add(1),
        runs: args.runs,
        warmup: args.warmup,
        tools,
        cfi,
        rsync_fsync: args.rsync_fsync,
    };
    let results = bench::run(&plan);
    if let Some(t) = temp {
        if args.keep {
            info!(workdir = %t.keep().display(), "workdir kept");
        } else {
            t.close().context("failed to remove the temp workdir")?;
        }
    }
    let results = results?;
    let mut stdout = io::stdout().lock();
    if args.json {
        let json = serde_json::to_string_pretty(&report::to_json(&results))?;
        writeln!(stdout, "{json}")?;
    } else {
        stdout.write_all(report::render(&results).as_bytes())?;
    }
    stdout.flush()?;
    Ok(())
}
