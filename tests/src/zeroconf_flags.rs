//! The flags of the zero-config benchmarks (`bench propagate`, `bench
//! enroll`, `bench rss`) and of the helpers they run inside lab clients
//! (`wait-file`, `announce-many`), checked and made into the plans of the
//! `cfi_lab` modules. Part of the `cfi-lab` binary (see `main.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use cfi_lab::announce_many::Synthetic;
use cfi_lab::enroll_bench::{self, EnrollPlan, EnrollTrust};
use cfi_lab::propagate_bench::{self, PropagatePlan};
use cfi_lab::rss_bench::{self, RssPlan};
use cfi_lab::tree::TreeSpec;
use clap::{Args, ValueEnum};

use super::{check_tree_flags, finish, own_dir, workdir};

#[derive(Debug, Args)]
pub struct WaitFileArgs {
    /// The file.
    #[arg(long)]
    path: PathBuf,
    /// What it must hold.
    #[arg(long)]
    content: String,
    /// Seconds to wait at most.
    #[arg(long, default_value_t = 30)]
    limit: u64,
}

#[derive(Debug, Args)]
pub struct AnnounceManyArgs {
    /// Clients to announce.
    #[arg(long, default_value_t = 250)]
    count: usize,
    /// Their names and ids derive from it: distinct per process.
    #[arg(long)]
    prefix: String,
    /// The group they ask for.
    #[arg(long, default_value = "lab")]
    group: String,
    /// The sshd host key whose fingerprint they announce.
    #[arg(long, default_value = "/etc/ssh/ssh_host_ed25519_key.pub")]
    host_key: PathBuf,
    /// Announce client N at port PORT+N and forward that port to sshd
    /// [default: every client at port 22].
    #[arg(long, value_name = "PORT")]
    forward_from: Option<u16>,
    /// Clients registered per second [default: all at once].
    #[arg(long)]
    rate: Option<f64>,
}

/// Flags every zero-config benchmark (and `bench load`) takes.
#[derive(Debug, Args)]
pub struct ZeroconfArgs {
    /// The directory of `cfi`, `cfi-server`, `cfi-agent` and
    /// `cfi-announcer` [default: the one cfi-lab is in].
    #[arg(long, value_name = "DIR")]
    pub cfi: Option<PathBuf>,
    /// Keep the workdir (data dir, server config, the daemon's log).
    #[arg(long)]
    pub keep: bool,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PropagateArgs {
    /// Lab clients (containers running sshd and cfi-announcer).
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// Files dropped, one after the other.
    #[arg(long, default_value_t = 20)]
    drops: usize,
    #[command(flatten)]
    common: ZeroconfArgs,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Regular files in the group's tree (all small).
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Seed of the generated tree.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Counted runs, each with a fresh client; the report shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Uncounted runs before them (the server's first read of the tree, its
    /// mDNS finding the lab bridge up once a client is attached).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The clients' trust policy: the default first use (which watches for
    /// other servers a moment), or the server's fingerprint pinned.
    #[arg(long, value_enum, default_value_t = TrustArg::FirstUse)]
    trust: TrustArg,
    #[command(flatten)]
    common: ZeroconfArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TrustArg {
    FirstUse,
    Pinned,
}

#[derive(Debug, Args)]
pub struct RssArgs {
    /// Synthetic clients announced.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Lab containers announcing them, an even share each.
    #[arg(long, default_value_t = 4)]
    announcers: usize,
    /// Seconds to watch after every client is listed.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Clients announced per second, all announcers together, as a wave of
    /// machines booting; 0: every one at once.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[command(flatten)]
    common: ZeroconfArgs,
}

/// `bench propagate`.
pub fn propagate(args: &PropagateArgs) -> Result<()> {
    if args.hosts == 0 || args.drops == 0 {
        bail!("--hosts and --drops must be at least 1");
    }
    zeroconf(
        &args.common,
        |cfi_dir, workdir| {
            propagate_bench::run(&PropagatePlan {
                hosts: args.hosts,
                drops: args.drops,
                cfi_dir,
                workdir,
            })
        },
        propagate_bench::to_json,
        propagate_bench::render,
    )
}

/// `bench enroll`.
pub fn enroll(args: &EnrollArgs) -> Result<()> {
    check_tree_flags(args.files, 0)?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let trust = match args.trust {
        TrustArg::FirstUse => EnrollTrust::FirstUse,
        TrustArg::Pinned => EnrollTrust::Pinned,
    };
    zeroconf(
        &args.common,
        |cfi_dir, workdir| {
            enroll_bench::run(&EnrollPlan {
                runs: args.runs,
                warmup: args.warmup,
                tree: TreeSpec::new(args.seed, args.files, 0),
                trust,
                cfi_dir,
                workdir,
            })
        },
        enroll_bench::to_json,
        enroll_bench::render,
    )
}

/// `bench rss`.
pub fn rss(args: &RssArgs) -> Result<()> {
    if args.announcers == 0 || args.clients < args.announcers {
        bail!("--announcers must be at least 1 and at most --clients");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 or more");
    }
    zeroconf(
        &args.common,
        |cfi_dir, workdir| {
            rss_bench::run(&RssPlan {
                clients: args.clients,
                announcers: args.announcers,
                settle: Duration::from_secs(args.settle),
                rate: args.rate,
                cfi_dir,
                workdir,
            })
        },
        rss_bench::to_json,
        rss_bench::render,
    )
}

/// `wait-file`, inside a lab client.
pub fn wait_file(args: &WaitFileArgs) -> Result<()> {
    cfi_lab::wait_file::run(
        &args.path,
        args.content.as_bytes(),
        Duration::from_secs(args.limit),
    )
}

/// `announce-many`, inside a lab client.
pub fn announce_many(args: &AnnounceManyArgs) -> Result<()> {
    cfi_lab::announce_many::run(&Synthetic {
        count: args.count,
        prefix: &args.prefix,
        group: &args.group,
        host_key: &args.host_key,
        forward_from: args.forward_from,
        rate: args.rate,
    })
}

/// A zero-config benchmark: runs `bench` with cfi's directory and a temp
/// workdir, and prints what it measured (see [`finish`]).
fn zeroconf<R>(
    common: &ZeroconfArgs,
    bench: impl FnOnce(PathBuf, PathBuf) -> Result<R>,
    to_json: fn(&R) -> serde_json::Value,
    render: fn(&R) -> String,
) -> Result<()> {
    let cfi_dir = match &common.cfi {
        Some(dir) => dir.clone(),
        None => own_dir()?,
    };
    let (workdir, temp) = workdir(None)?;
    let results = bench(cfi_dir, workdir);
    finish(
        results,
        temp,
        common.keep,
        common.json.then_some(to_json),
        render,
    )
}
