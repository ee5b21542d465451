//! The pool benchmarks, on a lab of real hosts ([`crate::lab`]):
//!
//! - **exec** (`cfi-lab bench exec`): `cfi exec -a -- true` with cold
//!   connections (the first exec of a daemon, timed from the daemon's
//!   start, since it begins connecting as it starts) and with warm
//!   ones (the daemon already ran one exec), against `pdsh -R ssh` and
//!   `clush`, each with OpenSSH's default key exchange and with
//!   curve25519-sha256, the one cfi asks for;
//! - **sync** (`cfi-lab bench sync`): `cfi sync` of a generated tree
//!   ([`crate::tree`]) to one host and to all of them, against
//!   `rsync -a --delete` over ssh (one rsync per host, all at once), with
//!   both key exchanges.
//!
//! Each run measures every scenario once, in an order rotated from run to
//! run, after warm-up runs that are checked but not counted. A cfi scenario
//! has a daemon of its own: started, used, stopped. Cold exec is timed and
//! billed from the daemon's start; warm exec and sync first run one exec to
//! bring the connections up, and bill only what came after it. Each timed
//! command starts on a settled machine ([`settle`]): what the one before it
//! left running is billed to neither. Every
//! measured command is checked: each host ran the command and returned 0,
//! and each synced host holds the tree exactly ([`crate::pool_checks`]).
//!
//! [`crate::pool_report`] turns the [`PoolResults`] into the table.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tracing::info;

use crate::cfi_pool::{CfiBinaries, CfiPool, Hosts};
use crate::client_spec::ClientSpec;
use crate::lab::{Client, Lab};
use crate::peer::as_millis;
use crate::pool_checks::{
    KexSeen, check_first_sync, check_reach, check_reach_cfi, check_trees, observe_kex,
    tree_digest_here,
};
use crate::pool_tools::{
    Cost, Dsh, DshTool, Kex, SshOptions, lines_by_host, on_clients, rsync_push, settle,
    tool_version,
};
use crate::rsync;
use crate::tree::{TreeSpec, TreeSummary};

/// Where cfi puts the tree in a client: the group mirrors onto `/`.
pub const CFI_DEST: &str = "/srv/bench";

/// Where rsync puts it.
pub const RSYNC_DEST: &str = "/srv/bench-rsync";

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bench {
    /// `cfi exec` against pdsh and clush.
    Exec,
    /// `cfi sync` against rsync.
    Sync,
}

/// Which tools run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tools {
    /// cfi and its peers.
    All,
    /// cfi only.
    Cfi,
    /// The peers only (no cfi binaries needed).
    Peers,
}

impl Tools {
    fn cfi(self) -> bool {
        self != Tools::Peers
    }

    fn peers(self) -> bool {
        self != Tools::Cfi
    }
}

/// A validated pool benchmark.
#[derive(Debug, Clone)]
pub struct PoolPlan {
    /// Lab clients.
    pub hosts: usize,
    /// Counted runs.
    pub runs: usize,
    /// Uncounted runs before them.
    pub warmup: usize,
    /// Which tools run.
    pub tools: Tools,
    /// Where `cfi`, `cfi-server` and `cfi-agent` are.
    pub cfi_dir: PathBuf,
    /// An empty directory for the data dir, configs and logs.
    pub workdir: PathBuf,
}

/// Where the sync benchmark's copies are written in each host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dest {
    /// A disk of the host's own: a directory of the lab's journaled ext4
    /// disk ([`crate::lab_disk`]). What a real machine writes to.
    Disk,
    /// The container's root, on docker's storage driver (fuse-overlayfs on
    /// a machine without a usable kernel overlay: a FUSE round trip per
    /// file operation).
    Root,
}

impl Dest {
    /// What the report says of it.
    pub fn describe(self) -> &'static str {
        match self {
            Dest::Disk => {
                "a disk of each host's own at /srv (the lab's ext4 disk with a journal, on a loop device)"
            }
            Dest::Root => "each container's root file system (docker's storage driver)",
        }
    }
}

/// One thing measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "tool", rename_all = "kebab-case")]
pub enum Scenario {
    /// `cfi exec -a -- true`.
    CfiExec {
        /// Whether the daemon holds connections already.
        warm: bool,
    },
    /// pdsh or clush running `true` on every host.
    Dsh {
        /// Which tool.
        dsh: DshTool,
        /// Which key exchange its ssh runs.
        kex: Kex,
    },
    /// `cfi sync` of the tree.
    CfiSync {
        /// To every host, or to the first only.
        all: bool,
    },
    /// rsync of the tree over ssh.
    Rsync {
        /// Which key exchange its ssh runs.
        kex: Kex,
        /// To every host at once, or to the first only.
        all: bool,
    },
}

impl Scenario {
    /// How the report names it.
    pub fn label(self) -> String {
        match self {
            Scenario::CfiExec { warm: false } => "cfi exec, cold".to_owned(),
            Scenario::CfiExec { warm: true } => "cfi exec, warm".to_owned(),
            Scenario::Dsh { dsh, kex } => format!("{}, {}", dsh.name(), kex.label()),
            Scenario::CfiSync { all: false } => "cfi sync, 1 host".to_owned(),
            Scenario::CfiSync { all: true } => "cfi sync, all hosts".to_owned(),
            Scenario::Rsync { kex, all: false } => format!("rsync, 1 host, {}", kex.label()),
            Scenario::Rsync { kex, all: true } => format!("rsync loop, all hosts, {}", kex.label()),
        }
    }

    /// Whether cfi runs it.
    pub fn is_cfi(self) -> bool {
        matches!(self, Scenario::CfiExec { .. } | Scenario::CfiSync { .. })
    }

    /// How many of a lab's `n` hosts it addresses.
    pub fn hosts(self, n: usize) -> usize {
        match self {
            Scenario::CfiSync { all: false } | Scenario::Rsync { all: false, .. } => 1,
            _ => n,
        }
    }
}

/// One scenario's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// What was measured.
    pub scenario: Scenario,
    /// Its name in the report.
    pub label: String,
    /// Hosts it addressed.
    pub hosts: usize,
    /// Median wall time of the counted runs.
    #[serde(serialize_with = "as_millis", rename = "median_wall_ms")]
    pub median_wall: Duration,
    /// Median orchestrator CPU of the counted runs, all hosts together.
    #[serde(serialize_with = "as_millis", rename = "median_cpu_ms")]
    pub median_cpu: Duration,
    /// Median CPU of the whole machine (clients included) meanwhile.
    #[serde(serialize_with = "as_millis", rename = "median_machine_cpu_ms")]
    pub median_machine_cpu: Duration,
    /// The counted runs.
    pub samples: Vec<Cost>,
}

impl ScenarioResult {
    fn new(scenario: Scenario, lab_hosts: usize, samples: Vec<Cost>) -> Self {
        Self {
            scenario,
            label: scenario.label(),
            hosts: scenario.hosts(lab_hosts),
            median_wall: median(samples.iter().map(|c| c.wall).collect()),
            median_cpu: median(samples.iter().map(|c| c.cpu).collect()),
            median_machine_cpu: median(samples.iter().map(|c| c.machine_cpu).collect()),
            samples,
        }
    }

    /// Median CPU per addressed host.
    pub fn cpu_per_host(&self) -> Duration {
        self.median_cpu / self.hosts.max(1) as u32
    }
}

/// Everything a pool benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct PoolResults {
    /// Which benchmark.
    pub bench: Bench,
    /// Lab clients.
    pub hosts: usize,
    /// Counted runs per scenario.
    pub runs: usize,
    /// Uncounted runs before them.
    pub warmup: usize,
    /// Versions of the tools, by name.
    pub versions: BTreeMap<String, String>,
    /// The synced tree (sync only).
    pub tree: Option<(TreeSpec, TreeSummary)>,
    /// Per scenario, in report order.
    pub scenarios: Vec<ScenarioResult>,
    /// Key exchanges seen by one client (exec only).
    pub kex: Vec<KexSeen>,
    /// Where the copies went (sync only).
    pub dest: Option<Dest>,
}

/// The tools set up against a lab.
#[derive(Debug)]
struct Setup<'l> {
    plan: &'l PoolPlan,
    lab: &'l Lab,
    pool: Option<CfiPool>,
    ssh: BTreeMap<Kex, SshOptions>,
}

impl<'l> Setup<'l> {
    /// Starts the lab's tools: cfi's server (agent installed and authorized
    /// in every client) when cfi runs.
    fn new(plan: &'l PoolPlan, lab: &'l Lab, data_dir: &Path) -> Result<Self> {
        let pool = if plan.tools.cfi() {
            let bins = CfiBinaries::in_dir(&plan.cfi_dir)?;
            info!("installing cfi-agent and the server's key in every client");
            Some(CfiPool::prepare(
                bins,
                &plan.workdir.join("cfi"),
                data_dir,
                lab,
            )?)
        } else {
            None
        };
        let ssh = Kex::ALL
            .iter()
            .map(|&kex| Ok((kex, SshOptions::new(lab, kex)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            plan,
            lab,
            pool,
            ssh,
        })
    }

    fn pool(&self) -> &CfiPool {
        self.pool
            .as_ref()
            .expect("a cfi scenario without cfi set up")
    }

    fn dsh(&self, dsh: DshTool, kex: Kex) -> Result<Dsh> {
        Dsh::new(
            dsh,
            self.ssh[&kex].clone(),
            self.lab.clients(),
            &self.plan.workdir,
        )
    }

    /// The clients scenario `s` addresses, by index.
    fn targets(&self, s: Scenario) -> Vec<usize> {
        (0..s.hosts(self.lab.clients().len())).collect()
    }
}

/// Runs the exec benchmark.
pub fn run_exec(plan: &PoolPlan) -> Result<PoolResults> {
    let mut versions = versions(plan, Bench::Exec)?;
    let data_dir = data_dir(&plan.workdir)?;
    let lab = start_lab(plan, ClientSpec::default(), &mut versions)?;
    let setup = Setup::new(plan, &lab, &data_dir)?;

    let mut scenarios = Vec::new();
    if plan.tools.cfi() {
        scenarios.extend([
            Scenario::CfiExec { warm: false },
            Scenario::CfiExec { warm: true },
        ]);
    }
    let mut dshs = BTreeMap::new();
    if plan.tools.peers() {
        for dsh in DshTool::ALL {
            for kex in Kex::ALL {
                scenarios.push(Scenario::Dsh { dsh, kex });
                dshs.insert((dsh, kex), setup.dsh(dsh, kex)?);
            }
        }
    }
    for (&(tool, kex), dsh) in &dshs {
        let (out, _) = dsh.run("uname -n")?;
        check_reach(&lab, &lines_by_host(&out.stdout)).with_context(|| {
            format!(
                "{} ({}) does not reach every host",
                tool.name(),
                kex.label()
            )
        })?;
    }
    if let Some(pool) = &setup.pool {
        check_reach_cfi(&lab, pool)?;
    }

    let scenarios = measure(plan, &scenarios, |s| {
        settle();
        match s {
            Scenario::CfiExec { warm: false } => {
                let (daemon, _, cost) = setup.pool().cold_exec(Hosts::All, &["true"])?;
                daemon.stop()?;
                Ok(cost)
            }
            Scenario::CfiExec { warm: true } => {
                let daemon = setup.pool().start()?;
                daemon.exec(Hosts::All, &["true"])?;
                let (_, cost) = daemon.exec(Hosts::All, &["true"])?;
                daemon.stop()?;
                Ok(cost)
            }
            Scenario::Dsh { dsh, kex } => Ok(dshs[&(dsh, kex)].run("true")?.1),
            _ => bail!("{} is not an exec scenario", s.label()),
        }
    })?;
    let kex = observe_kex(&lab, &setup.ssh, setup.pool.as_ref())?;
    Ok(PoolResults {
        bench: Bench::Exec,
        hosts: plan.hosts,
        runs: plan.runs,
        warmup: plan.warmup,
        versions,
        tree: None,
        scenarios,
        kex,
        dest: None,
    })
}

/// Runs the sync benchmark on a tree of `spec`.
pub fn run_sync(plan: &PoolPlan, spec: &TreeSpec, dest: Dest) -> Result<PoolResults> {
    let mut versions = versions(plan, Bench::Sync)?;
    let data_dir = data_dir(&plan.workdir)?;
    let source = data_dir
        .join(CfiPool::GROUP)
        .join(CFI_DEST.trim_start_matches('/'));
    info!(seed = spec.seed, files = spec.files, "generating the tree");
    let tree = spec.generate(&source)?;
    let digest = tree_digest_here(&source)?;
    let client = match dest {
        Dest::Disk => ClientSpec::default().disk("/srv"),
        Dest::Root => ClientSpec::default(),
    };
    let lab = start_lab(plan, client, &mut versions)?;
    let setup = Setup::new(plan, &lab, &data_dir)?;

    let mut scenarios = Vec::new();
    for all in [false, true] {
        if plan.tools.cfi() {
            scenarios.push(Scenario::CfiSync { all });
        }
        if plan.tools.peers() {
            scenarios.extend(Kex::ALL.map(|kex| Scenario::Rsync { kex, all }));
        }
    }
    if plan.tools.peers() {
        info!("installing rsync in every client");
    }
    if let Some(pool) = &setup.pool {
        check_reach_cfi(&lab, pool)?;
    }

    let scenarios = measure(plan, &scenarios, |s| {
        let targets = setup.targets(s);
        reset(&lab, &targets)?;
        let (cost, dest) = match s {
            Scenario::CfiSync { all } => {
                let pool = setup.pool();
                let daemon = pool.start()?;
                daemon.exec(Hosts::All, &["true"])?;
                settle();
                let hosts = if all {
                    Hosts::All
                } else {
                    Hosts::One(&pool.hosts()[0])
                };
                let (report, cost) = daemon.sync(hosts)?;
                daemon.stop()?;
                check_first_sync(&report, &pool.hosts()[..targets.len()])?;
                (cost, CFI_DEST)
            }
            Scenario::Rsync { kex, .. } => {
                let clients: Vec<Client> = targets.iter().map(|&i| lab.client(i).clone()).collect();
                settle();
                let cost = rsync_push(&source, &clients, RSYNC_DEST, &setup.ssh[&kex])?;
                (cost, RSYNC_DEST)
            }
            _ => bail!("{} is not a sync scenario", s.label()),
        };
        check_trees(&lab, &targets, dest, &digest)?;
        Ok(cost)
    })?;
    Ok(PoolResults {
        bench: Bench::Sync,
        hosts: plan.hosts,
        runs: plan.runs,
        warmup: plan.warmup,
        versions,
        tree: Some((spec.clone(), tree)),
        scenarios,
        kex: Vec::new(),
        dest: Some(dest),
    })
}

/// The tools' versions; fails first, naming the package, when one is
/// missing.
fn versions(plan: &PoolPlan, bench: Bench) -> Result<BTreeMap<String, String>> {
    let mut v = BTreeMap::new();
    v.insert(
        "ssh".to_owned(),
        tool_version("ssh", "-V", "openssh-client")?,
    );
    if plan.tools.peers() {
        match bench {
            Bench::Exec => {
                for dsh in DshTool::ALL {
                    v.insert(dsh.name().to_owned(), dsh.version()?);
                }
            }
            Bench::Sync => {
                v.insert("rsync".to_owned(), rsync::check_installed()?);
            }
        }
    }
    if plan.tools.cfi() {
        CfiBinaries::in_dir(&plan.cfi_dir)?;
        v.insert("cfi".to_owned(), plan.cfi_dir.display().to_string());
    }
    Ok(v)
}

/// `<workdir>/data` with the groups `all/` (empty) and
/// [`CfiPool::GROUP`]`/`.
fn data_dir(workdir: &Path) -> Result<PathBuf> {
    let data = workdir.join("data");
    for group in ["all", CfiPool::GROUP] {
        let dir = data.join(group);
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    Ok(data)
}

fn start_lab(
    plan: &PoolPlan,
    client: ClientSpec,
    versions: &mut BTreeMap<String, String>,
) -> Result<Lab> {
    ensure!(plan.hosts > 0, "a lab needs at least one host");
    info!(hosts = plan.hosts, "starting the lab");
    let started = Instant::now();
    let lab = Lab::start_with(vec![client; plan.hosts])?;
    info!(elapsed = ?started.elapsed(), network = lab.network(), "lab up");
    let out = lab.exec(0, &["ssh", "-V"])?;
    let text = String::from_utf8_lossy(&out.stderr);
    versions.insert(
        "OpenSSH in the clients".to_owned(),
        text.lines().next().unwrap_or("?").trim().to_owned(),
    );
    Ok(lab)
}

/// Runs every scenario `warmup + runs` times, rotating the order each run;
/// the counted runs' costs, summarized per scenario in `scenarios` order.
fn measure(
    plan: &PoolPlan,
    scenarios: &[Scenario],
    mut once: impl FnMut(Scenario) -> Result<Cost>,
) -> Result<Vec<ScenarioResult>> {
    let n = scenarios.len();
    let mut samples = vec![Vec::new(); n];
    for run in 0..plan.warmup + plan.runs {
        let warmup = run < plan.warmup;
        for k in 0..n {
            let i = (run + k) % n;
            let s = scenarios[i];
            let cost = once(s).with_context(|| format!("{} failed in run {run}", s.label()))?;
            info!(
                scenario = %s.label(),
                hosts = s.hosts(plan.hosts),
                run,
                warmup,
                wall_ms = format!("{:.1}", cost.wall.as_secs_f64() * 1e3),
                cpu_ms = format!("{:.0}", cost.cpu.as_secs_f64() * 1e3),
                machine_cpu_ms = format!("{:.0}", cost.machine_cpu.as_secs_f64() * 1e3),
                "measured"
            );
            if !warmup {
                samples[i].push(cost);
            }
        }
    }
    Ok(scenarios
        .iter()
        .zip(samples)
        .map(|(&s, samples)| ScenarioResult::new(s, plan.hosts, samples))
        .collect())
}

/// Moves what earlier runs left in clients `targets` out of the way: both
/// trees and the agent's state, so the next sync is a first sync. Moved,
/// not removed: ext4 without a journal (this VM's disk, under docker's
/// storage and volumes) scans past every inode freed in the last minutes
/// before it hands out a new one, which billed a tool for the previous
/// run's `rm -rf` and made creating a file cost ten times its price.
/// What is moved goes with the container.
fn reset(lab: &Lab, targets: &[usize]) -> Result<()> {
    let script = format!(
        "for p in {CFI_DEST} {RSYNC_DEST} {}; do \
           [ ! -e \"$p\" ] || mv \"$p\" \"$p.cfi-lab-old.$(date +%s%N)\" || exit; \
         done",
        CfiPool::CLIENT_STATE_DIR
    );
    on_clients(targets, |i| lab.sh(i, &script).map(drop))
}

/// The median; of an even count, the mean of the two middle values.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => Duration::ZERO,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(
            median(vec![ms(4), ms(1), ms(3), ms(10)]),
            Duration::from_micros(3500)
        );
        assert_eq!(median(Vec::new()), Duration::ZERO);
    }

    #[test]
    fn labels_and_host_counts() {
        let s = Scenario::Dsh {
            dsh: DshTool::Clush,
            kex: Kex::Curve25519,
        };
        assert_eq!(s.label(), "clush, curve25519");
        assert_eq!(s.hosts(50), 50);
        assert_eq!(Scenario::CfiSync { all: false }.hosts(50), 1);
        assert!(Scenario::CfiExec { warm: true }.is_cfi());
    }
}
