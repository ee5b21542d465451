//! `cfi-lab`: runs cfi's lab scenarios and benchmarks. This file only
//! parses flags into a [`Plan`] and prints what the library returns; the
//! work lives in the `cfi_lab` modules. The zero-config benchmarks' flags
//! and the helpers run inside lab clients are in `zeroconf_flags.rs`.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cfi_lab::bench::{self, Plan};
use cfi_lab::change::Change;
use cfi_lab::peer::Tool;
use cfi_lab::pool_bench::{self, PoolPlan, Tools};
use cfi_lab::tree::TreeSpec;
use cfi_lab::{pool_report, report};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tempfile::TempDir;
use tracing::info;
use zeroconf_flags::{AnnounceManyArgs, EnrollArgs, PropagateArgs, RssArgs, WaitFileArgs};

mod zeroconf_flags;

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
    /// The main job, narrated: a cfi server and three machines that boot
    /// and enroll themselves over mDNS into two groups; a dropped file
    /// reaching its group by itself, drift, exec, packages, a machine going
    /// down and catching up; then everything is removed. Needs docker and
    /// root.
    ///
    /// With CFI_LAB_DEBS=DIR (scripts/demo builds the packages and sets
    /// it), the server is a container with DIR's cfi-server package
    /// installed and the machines have its cfi-client installed.
    Demo(DemoArgs),
    /// Inside a lab client (`bench propagate`): waits until a file holds
    /// the given content and prints when it saw it.
    #[command(hide = true)]
    WaitFile(WaitFileArgs),
    /// Inside a lab client (`bench rss`): announces many synthetic cfi
    /// clients over mDNS until killed.
    #[command(hide = true)]
    AnnounceMany(AnnounceManyArgs),
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Without CFI_LAB_DEBS: the directory of `cfi`, `cfi-server`,
    /// `cfi-agent` and `cfi-announcer` [default: the one cfi-lab is in].
    #[arg(long, value_name = "DIR")]
    cfi: Option<PathBuf>,
    /// The example data dir to serve.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../var-lib-cfi-layout"))]
    layout: PathBuf,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// cfi sync-local against rsync on one generated tree: first sync, no-op
    /// and 1% change, each timed, every result verified.
    SyncLocal(SyncLocalArgs),
    /// `cfi exec -a -- true` with cold and warm connections against pdsh
    /// and clush (OpenSSH's default key exchange and curve25519), on a lab
    /// of real hosts; wall time and the orchestrator's CPU per host.
    Exec(PoolArgs),
    /// `cfi sync` of a generated tree to one host and to all against
    /// `rsync -a --delete` over ssh (all hosts at once), on a lab of real
    /// hosts; every copy verified.
    Sync(PoolSyncArgs),
    /// Propagation latency: a lab of clients running cfi-announcer enrolls
    /// itself into a cfi-server on the host (mDNS on the lab bridge, watch
    /// on, no periodic repair); then each drop writes a new small file into
    /// the group's directory and is timed until every client holds it with
    /// its content (an inotify waiter per client, started before the drop).
    /// Reports p50, p99 and max over the drops against 1 s and 2 s, where
    /// the time goes (the watch, the passes) and the server's CPU.
    Propagate(PropagateArgs),
    /// Zero-config enrollment: per run, one fresh client container running
    /// cfi-announcer, timed from just before `docker run` until `cfi
    /// clients` shows it online and synced with a generated tree, split at
    /// sshd up and by the daemons' logs; every copy verified. Target: 3 s.
    Enroll(EnrollArgs),
    /// The server's memory with many announced clients: synthetic client
    /// records from a few lab containers (`cfi-lab announce-many`), all
    /// refusing the server's key; VmRSS and VmHWM once all are listed and
    /// after a settling time, with the server's CPU and the SSH attempts
    /// it made. Target: 100 MiB.
    Rss(RssArgs),
    /// Many clients and a burst of changes: a statically listed pool with
    /// the daemon watching, successive changes to their group; every
    /// client must end on the final tree and never run two passes at
    /// once. Convergence time, passes per client, the server's CPU and
    /// peak RSS.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Lab hosts (docker containers running sshd).
    #[arg(long, default_value_t = 200)]
    hosts: usize,
    /// Successive changes to the group.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Milliseconds between two changes.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    #[command(flatten)]
    common: zeroconf_flags::ZeroconfArgs,
}

#[derive(Debug, Args)]
struct PoolArgs {
    /// Lab hosts (docker containers running sshd).
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// Counted runs per scenario; the report shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Uncounted runs before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The directory of `cfi`, `cfi-server` and `cfi-agent` [default: the
    /// one cfi-lab is in].
    #[arg(long, value_name = "DIR")]
    cfi: Option<PathBuf>,
    /// Run cfi only, or its peers only (no cfi binaries needed).
    #[arg(long, value_enum)]
    only: Option<OnlyPool>,
    /// Keep the workdir (data dir, server config, the daemon's log).
    #[arg(long)]
    keep: bool,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PoolSyncArgs {
    #[command(flatten)]
    pool: PoolArgs,
    /// Seed of the generated tree.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Regular files in the tree, large ones included.
    #[arg(long, default_value_t = 300)]
    files: usize,
    /// How many of the files are large (0.5–2 MiB, random).
    #[arg(long, default_value_t = 2)]
    large: usize,
    /// Write the copies to each container's root file system (docker's
    /// storage driver; on fuse-overlayfs a FUSE round trip per file
    /// operation) instead of a disk of each host's own, as a real
    /// machine has.
    #[arg(long)]
    on_root: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnlyPool {
    Cfi,
    Peers,
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
        Command::Demo(args) => {
            let dir = match args.cfi {
                Some(dir) => dir,
                None => own_dir()?,
            };
            cfi_lab::demo::run(
                cfi_lab::zeroconf::ZeroconfBinaries::in_dir(&dir)?,
                &args.layout,
            )
        }
        Command::Bench(BenchCommand::SyncLocal(args)) => sync_local(args),
        Command::Bench(BenchCommand::Exec(args)) => pool(&args, pool_bench::run_exec),
        Command::Bench(BenchCommand::Sync(args)) => {
            check_tree_flags(args.files, args.large)?;
            let spec = TreeSpec::new(args.seed, args.files, args.large);
            let dest = if args.on_root {
                pool_bench::Dest::Root
            } else {
                pool_bench::Dest::Disk
            };
            pool(&args.pool, |plan| pool_bench::run_sync(plan, &spec, dest))
        }
        Command::Bench(BenchCommand::Propagate(args)) => zeroconf_flags::propagate(&args),
        Command::Bench(BenchCommand::Enroll(args)) => zeroconf_flags::enroll(&args),
        Command::Bench(BenchCommand::Rss(args)) => zeroconf_flags::rss(&args),
        Command::Bench(BenchCommand::Load(args)) => load(&args),
        Command::WaitFile(args) => zeroconf_flags::wait_file(&args),
        Command::AnnounceMany(args) => zeroconf_flags::announce_many(&args),
    }
}

/// A pool benchmark: validates the flags, runs `bench` in a temp workdir
/// and prints what it measured.
fn pool(
    args: &PoolArgs,
    bench: impl FnOnce(&PoolPlan) -> Result<pool_bench::PoolResults>,
) -> Result<()> {
    if args.hosts == 0 || args.runs == 0 {
        bail!("--hosts and --runs must be at least 1");
    }
    let (workdir, temp) = workdir(None)?;
    let plan = PoolPlan {
        hosts: args.hosts,
        runs: args.runs,
        warmup: args.warmup,
        tools: match args.only {
            None => Tools::All,
            Some(OnlyPool::Cfi) => Tools::Cfi,
            Some(OnlyPool::Peers) => Tools::Peers,
        },
        cfi_dir: match &args.cfi {
            Some(dir) => dir.clone(),
            None => own_dir()?,
        },
        workdir,
    };
    finish(
        bench(&plan),
        temp,
        args.keep,
        args.json.then_some(pool_report::to_json),
        pool_report::render,
    )
}

fn load(args: &LoadArgs) -> Result<()> {
    if args.hosts == 0 || args.changes == 0 {
        bail!("--hosts and --changes must be at least 1");
    }
    let (workdir, temp) = workdir(None)?;
    let plan = cfi_lab::load_bench::LoadPlan {
        hosts: args.hosts,
        changes: args.changes,
        interval: std::time::Duration::from_millis(args.interval_ms),
        cfi_dir: match &args.common.cfi {
            Some(dir) => dir.clone(),
            None => own_dir()?,
        },
        workdir,
    };
    finish(
        cfi_lab::load_bench::run(&plan),
        temp,
        args.common.keep,
        args.common
            .json
            .then_some(|r: &cfi_lab::load_bench::LoadResults| serde_json::json!(r)),
        cfi_lab::load_bench::render,
    )
}

/// The directory the cfi-lab binary is in, where cargo puts cfi's too.
fn own_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to find the cfi-lab executable")?;
    let dir = exe
        .parent()
        .context("the cfi-lab executable has no directory")?;
    Ok(dir.to_owned())
}

/// `dir`, or a fresh temp dir that goes away on drop (also on error)
/// unless kept by [`close_workdir`].
fn workdir(dir: Option<PathBuf>) -> Result<(PathBuf, Option<TempDir>)> {
    Ok(match dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("cfi-lab-")
                .tempdir()
                .context("failed to create a temp workdir")?;
            (temp.path().to_owned(), Some(temp))
        }
    })
}

/// Removes the temp workdir, or keeps it and says where it is.
fn close_workdir(temp: Option<TempDir>, keep: bool) -> Result<()> {
    if let Some(t) = temp {
        if keep {
            info!(workdir = %t.keep().display(), "workdir kept");
        } else {
            t.close().context("failed to remove the temp workdir")?;
        }
    }
    Ok(())
}

/// Closes the workdir (see [`close_workdir`]), then prints the results:
/// as JSON when given `json`, else as `render` makes them.
fn finish<R>(
    results: Result<R>,
    temp: Option<TempDir>,
    keep: bool,
    json: Option<fn(&R) -> serde_json::Value>,
    render: fn(&R) -> String,
) -> Result<()> {
    close_workdir(temp, keep)?;
    let results = results?;
    let text = match json {
        Some(to_json) => format!("{}\n", serde_json::to_string_pretty(&to_json(&results))?),
        None => render(&results),
    };
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn check_tree_flags(files: usize, large: usize) -> Result<()> {
    if files == 0 || large > files {
        bail!("--files must be at least 1 and --large at most --files (got {files} and {large})");
    }
    Ok(())
}

fn sync_local(args: SyncLocalArgs) -> Result<()> {
    check_tree_flags(args.files, args.large)?;
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
        None => own_dir()?.join("cfi"),
    };
    let (workdir, temp) = workdir(args.workdir)?;
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
    finish(
        bench::run(&plan),
        temp,
        args.keep,
        args.json.then_some(report::to_json),
        report::render,
    )
}
