//! The `sync-local` benchmark: cfi and rsync sync the same generated tree
//! into their own targets, and each is timed on three phases.
//!
//! 1. **first sync** into an empty target;
//! 2. **no-op**: the same again, nothing changed;
//! 3. **change**: after [`Change`] (1% of the files rewritten in the middle,
//!    10 added, 10 deleted).
//!
//! Every timed run of a phase does the same work, so a median means
//! something:
//!
//! - each phase starts with warm-up runs that are verified but not counted:
//!   they fill the page cache and cfi's server-side hash cache (which stays,
//!   as it would on a server that has seen the tree before);
//! - a first-sync run starts from an empty target and, for cfi, an empty
//!   state dir; the old ones are moved aside, not deleted, until the end
//!   (see [`Trash`] for why);
//! - a change run starts from the same state each time: the source is at
//!   the base tree, the target was synced to it and a no-op pass followed.
//!   The change is applied with the same seed (same files, same bytes), the
//!   pass is timed, then the source is reverted and the tool syncs the target
//!   back (untimed) and runs a no-op (untimed);
//! - dirty pages are written back (`sync`) before every timed run, so one
//!   run's write-back does not land in the next one's time;
//! - the tools alternate who goes first from run to run.
//!
//! After every pass, timed or not, the target is compared with the source
//! ([`compare_trees`]); a difference stops the benchmark.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cfi_groups::{DataDir, GroupName};
use serde::Serialize;
use tracing::{info, warn};

use crate::cfi::{self, CfiPeer};
use crate::change::{Change, ChangeSummary};
use crate::compare::compare_trees;
use crate::peer::{Peer, Sample, Tool, Trash, as_millis};
use crate::rsync::{self, RsyncPeer};
use crate::tree::{TreeSpec, TreeSummary};

/// The group the benchmark tree is generated as.
pub const GROUP: &str = "lab";

/// The phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Into an empty target.
    FirstSync,
    /// Nothing changed since the last pass.
    NoOp,
    /// After [`Change`].
    Change,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 3] = [Phase::FirstSync, Phase::NoOp, Phase::Change];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::FirstSync => "first sync",
            Phase::NoOp => "no-op",
            Phase::Change => "1% change",
        })
    }
}

/// A validated benchmark run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where the tree, targets and state go (see [`Workdir`]).
    pub workdir: PathBuf,
    /// The tree to generate.
    pub tree: TreeSpec,
    /// The change of the change phase.
    pub change: Change,
    /// Seeds the change.
    pub change_seed: u64,
    /// Counted runs per phase and tool.
    pub runs: usize,
    /// Uncounted runs before them.
    pub warmup: usize,
    /// The tools to run, at least one.
    pub tools: Vec<Tool>,
    /// The `cfi` binary.
    pub cfi: PathBuf,
    /// Whether rsync fsyncs what it writes, as cfi does.
    pub rsync_fsync: bool,
}

/// The benchmark's directory:
///
/// ```text
/// <workdir>/.cfi-lab-workdir   marker: the directory is ours to clear
///           data/lab/          the source tree (cfi's data dir, group lab)
///           root-cfi/          cfi's target
///           state-cfi/         cfi's agent state for that target
///           cache-cfi/         cfi's server-side hash cache
///           root-rsync/        rsync's target
///           trash/             emptied targets, until the end of the run
/// ```
#[derive(Debug)]
pub struct Workdir {
    root: PathBuf,
}

impl Workdir {
    const MARKER: &'static str = ".cfi-lab-workdir";
    const OWNED: [&'static str; 6] = [
        "data",
        "root-cfi",
        "state-cfi",
        "cache-cfi",
        "root-rsync",
        "trash",
    ];

    /// Makes `root` ready: creates it, or clears what an earlier run left in
    /// it. A non-empty directory without the marker is refused, so a typo in
    /// `--workdir` cannot wipe anything else.
    pub fn prepare(root: &Path) -> Result<Self> {
        fs::create_dir_all(root)
            .with_context(|| format!("failed to create workdir {}", root.display()))?;
        let marker = root.join(Self::MARKER);
        let empty = fs::read_dir(root)
            .with_context(|| format!("failed to list workdir {}", root.display()))?
            .next()
            .is_none();
        if !empty && !marker.exists() {
            bail!(
                "refusing to use workdir {}: not empty and not made by cfi-lab",
                root.display()
            );
        }
        for name in Self::OWNED {
            let path = root.join(name);
            if path.exists() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("failed to clear {}", path.display()))?;
            }
        }
        fs::write(
            &marker,
            "made by cfi-lab; its subdirectories are replaced on each run\n",
        )
        .with_context(|| format!("failed to write {}", marker.display()))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// cfi's data dir.
    pub fn data_dir(&self) -> DataDir {
        DataDir::new(self.root.join("data"))
    }

    /// The source tree: the data dir's group [`GROUP`].
    pub fn source(&self) -> PathBuf {
        self.data_dir().root().join(GROUP)
    }

    /// A tool's target.
    pub fn target(&self, tool: Tool) -> PathBuf {
        self.root.join(format!("root-{tool}"))
    }

    /// Where a subdirectory of the workdir is.
    pub fn join(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// One tool's measurements of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct ToolResult {
    /// Median wall time of the counted runs.
    #[serde(serialize_with = "as_millis", rename = "median_wall_ms")]
    pub median_wall: Duration,
    /// Median bytes moved.
    pub median_bytes: u64,
    /// The counted runs.
    pub samples: Vec<Sample>,
}

/// One phase's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Which phase.
    pub phase: Phase,
    /// Per tool that ran.
    pub tools: BTreeMap<Tool, ToolResult>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The tree as asked for.
    pub spec: TreeSpec,
    /// The tree as generated.
    pub tree: TreeSummary,
    /// The change phase's change.
    pub change: ChangeSummary,
    /// Counted runs per phase and tool.
    pub runs: usize,
    /// Uncounted runs before them.
    pub warmup: usize,
    /// `rsync --version`, when rsync ran.
    pub rsync_version: Option<String>,
    /// Whether rsync ran with `--fsync`.
    pub rsync_fsync: bool,
    /// The phases, in order.
    pub phases: Vec<PhaseResult>,
}

impl Results {
    /// A tool's result for a phase, if it ran.
    pub fn get(&self, phase: Phase, tool: Tool) -> Option<&ToolResult> {
        self.phases
            .iter()
            .find(|p| p.phase == phase)
            .and_then(|p| p.tools.get(&tool))
    }
}

/// Runs the benchmark.
pub fn run(plan: &Plan) -> Result<Results> {
    if plan.runs == 0 || plan.tools.is_empty() {
        bail!("a benchmark needs at least one run and one tool");
    }
    let rsync_version = if plan.tools.contains(&Tool::Rsync) {
        Some(rsync::check_installed()?)
    } else {
        None
    };
    if plan.tools.contains(&Tool::Cfi) {
        cfi::check_installed(&plan.cfi)?;
    }
    let workdir = Workdir::prepare(&plan.workdir)?;
    let source = workdir.source();
    let peers = make_peers(plan, &workdir)?;

    info!(workdir = %plan.workdir.display(), seed = plan.tree.seed, "generating tree");
    let tree = plan.tree.generate(&source)?;
    info!(
        files = tree.files,
        large = tree.large_files,
        dirs = tree.dirs,
        symlinks = tree.symlinks,
        mib = format!("{:.1}", tree.bytes as f64 / (1 << 20) as f64),
        "tree generated"
    );

    let trash = Trash::new(workdir.join("trash"));
    let mut bench = Bench {
        plan,
        source: &source,
        peers: &peers,
        samples: BTreeMap::new(),
    };
    bench.first_syncs(&trash)?;
    bench.no_ops()?;
    let change = bench.changes()?;
    trash.clear()?;

    let phases = Phase::ALL
        .iter()
        .map(|&phase| PhaseResult {
            phase,
            tools: plan
                .tools
                .iter()
                .filter_map(|&tool| {
                    let samples = bench.samples.remove(&(phase, tool))?;
                    Some((tool, summarize(samples)))
                })
                .collect(),
        })
        .collect();
    Ok(Results {
        spec: plan.tree.clone(),
        tree,
        change,
        runs: plan.runs,
        warmup: plan.warmup,
        rsync_version,
        rsync_fsync: plan.rsync_fsync,
        phases,
    })
}

/// The peers of `plan.tools`, in that order, with their targets in
/// `workdir`.
fn make_peers(plan: &Plan, workdir: &Workdir) -> Result<Vec<Box<dyn Peer>>> {
    let group = GroupName::parse(GROUP).context("bad benchmark group name")?;
    if plan.tools.contains(&Tool::Cfi) {
        let cache = workdir.join("cache-cfi");
        fs::create_dir_all(&cache)
            .with_context(|| format!("failed to create {}", cache.display()))?;
    }
    let peers = plan.tools.iter().map(|&tool| -> Box<dyn Peer> {
        match tool {
            Tool::Cfi => Box::new(CfiPeer::new(
                &plan.cfi,
                workdir.data_dir(),
                group.clone(),
                workdir.target(tool),
                workdir.join("state-cfi"),
                workdir.join("cache-cfi"),
            )),
            Tool::Rsync => Box::new(RsyncPeer::new(
                workdir.source(),
                workdir.target(tool),
                plan.rsync_fsync,
            )),
        }
    });
    Ok(peers.collect())
}

/// A running benchmark.
struct Bench<'a> {
    plan: &'a Plan,
    source: &'a Path,
    peers: &'a [Box<dyn Peer>],
    /// Counted samples by (phase, tool).
    samples: BTreeMap<(Phase, Tool), Vec<Sample>>,
}

impl<'a> Bench<'a> {
    /// Runs of each peer into an emptied target.
    fn first_syncs(&mut self, trash: &Trash) -> Result<()> {
        for i in 0..self.plan.warmup + self.plan.runs {
            for peer in self.ordered(i) {
                peer.reset(trash)?;
                self.timed(peer, Phase::FirstSync, i)?;
            }
        }
        Ok(())
    }

    /// Runs of each peer with nothing changed.
    fn no_ops(&mut self) -> Result<()> {
        for i in 0..self.plan.warmup + self.plan.runs {
            for peer in self.ordered(i) {
                self.timed(peer, Phase::NoOp, i)?;
            }
        }
        Ok(())
    }

    /// Runs of each peer after the change; between runs the source is
    /// reverted and the targets synced back and settled, so each run starts
    /// where the first did.
    fn changes(&mut self) -> Result<ChangeSummary> {
        let mut first: Option<ChangeSummary> = None;
        for i in 0..self.plan.warmup + self.plan.runs {
            let applied = self.plan.change.apply(self.source, self.plan.change_seed)?;
            let summary = applied.summary();
            match &first {
                None => info!(?summary, "change applied"),
                Some(f) if *f != summary => {
                    bail!("the change differs between runs ({f:?} vs {summary:?})")
                }
                Some(_) => {}
            }
            first = Some(summary);
            for peer in self.ordered(i) {
                self.timed(peer, Phase::Change, i)?;
            }
            applied.revert()?;
            for peer in self.ordered(i) {
                self.untimed(peer, "revert")?;
                self.untimed(peer, "settle")?;
            }
        }
        first.context("no change run")
    }

    /// The peers in the order they go in run `i`: rotated each run.
    fn ordered(&self, i: usize) -> Vec<&'a dyn Peer> {
        let n = self.peers.len();
        (0..n).map(|k| self.peers[(i + k) % n].as_ref()).collect()
    }

    /// One measured pass; counted unless it is a warm-up.
    fn timed(&mut self, peer: &dyn Peer, phase: Phase, i: usize) -> Result<()> {
        crate::pool_tools::settle();
        let sample = peer
            .sync()
            .with_context(|| format!("{} pass of {} failed", phase, peer.tool()))?;
        verify(self.source, peer, &phase.to_string())?;
        let warmup = i < self.plan.warmup;
        info!(
            tool = %peer.tool(),
            %phase,
            run = i,
            warmup,
            wall_ms = format!("{:.1}", sample.wall.as_secs_f64() * 1000.0),
            bytes = sample.bytes,
            "measured"
        );
        if phase == Phase::NoOp && changed_anything(&sample) {
            warn!(tool = %peer.tool(), detail = %sample.detail, "a no-op pass wrote files");
        }
        if !warmup {
            self.samples
                .entry((phase, peer.tool()))
                .or_default()
                .push(sample);
        }
        Ok(())
    }

    /// A pass that only moves the target back to the source.
    fn untimed(&self, peer: &dyn Peer, why: &str) -> Result<()> {
        peer.sync()
            .with_context(|| format!("{why} pass of {} failed", peer.tool()))?;
        verify(self.source, peer, why)
    }
}

/// Stops the benchmark when a target is not the source.
fn verify(source: &Path, peer: &dyn Peer, pass: &str) -> Result<()> {
    compare_trees(source, peer.target()).map_err(|diffs| {
        const SHOWN: usize = 20;
        let mut msg = format!(
            "after the {pass} pass, {}'s target {} differs from the source {} in {} places:",
            peer.tool(),
            peer.target().display(),
            source.display(),
            diffs.len()
        );
        for d in diffs.iter().take(SHOWN) {
            msg.push_str("\n  ");
            msg.push_str(d);
        }
        if diffs.len() > SHOWN {
            msg.push_str("\n  …");
        }
        anyhow!(msg)
    })
}

/// Whether a pass's own report says it wrote files.
fn changed_anything(sample: &Sample) -> bool {
    ["files_updated", "files_deleted", "files_transferred"]
        .iter()
        .any(|k| sample.detail.get(k).and_then(|v| v.as_u64()).unwrap_or(0) > 0)
}

fn summarize(samples: Vec<Sample>) -> ToolResult {
    let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let bytes: Vec<u64> = samples.iter().map(|s| s.bytes).collect();
    ToolResult {
        median_wall: median(&walls, |a, b| (a + b) / 2),
        median_bytes: median(&bytes, |a, b| a.midpoint(b)),
        samples,
    }
}

/// The median; of an even count, `mid` of the two middle values.
fn median<T: Ord + Copy + Default>(values: &[T], mid: impl Fn(T, T) -> T) -> T {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => T::default(),
        n if n % 2 == 1 => v[n / 2],
        n => mid(v[n / 2 - 1], v[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[5u64, 1, 3], |a, b| a.midpoint(b)), 3);
        assert_eq!(median(&[4u64, 1, 3, 10], |a, b| a.midpoint(b)), 3);
        assert_eq!(median::<u64>(&[], |a, b| a.midpoint(b)), 0);
    }

    #[test]
    fn workdir_refuses_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), "x").unwrap();
        assert!(Workdir::prepare(dir.path()).is_err());
        assert!(dir.path().join("precious").exists());
    }

    #[test]
    fn workdir_clears_its_own_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let w = Workdir::prepare(dir.path()).unwrap();
        fs::create_dir_all(w.source().join("etc")).unwrap();
        Workdir::prepare(dir.path()).unwrap();
        assert!(!w.source().exists());
    }

    fn small_plan(workdir: &Path, tools: Vec<Tool>, cfi: PathBuf) -> Plan {
        Plan {
            workdir: workdir.to_owned(),
            tree: TreeSpec::new(42, 300, 2),
            change: Change::default(),
            change_seed: 43,
            runs: 2,
            warmup: 1,
            tools,
            cfi,
            rsync_fsync: false,
        }
    }

    #[test]
    fn rsync_end_to_end_on_a_small_tree() {
        let dir = tempfile::tempdir().unwrap();
        let plan = small_plan(dir.path(), vec![Tool::Rsync], PathBuf::new());
        let results = run(&plan).unwrap();
        let first = results.get(Phase::FirstSync, Tool::Rsync).unwrap();
        let noop = results.get(Phase::NoOp, Tool::Rsync).unwrap();
        let change = results.get(Phase::Change, Tool::Rsync).unwrap();
        assert_eq!(first.samples.len(), 2);
        assert!(first.median_bytes > results.tree.bytes);
        assert!(noop.median_bytes < first.median_bytes / 10);
        for s in &noop.samples {
            assert_eq!(s.detail["files_transferred"], 0);
        }
        // 3 rewritten + 10 added; each run the same work. (rsync's byte
        // count still moves by a few bytes: its multiplexed stream frames
        // data as buffers happen to flush.)
        let first_change = &change.samples[0];
        for s in &change.samples {
            assert_eq!(s.detail["files_transferred"], 13);
            assert_eq!(
                s.detail["literal_data"],
                first_change.detail["literal_data"]
            );
            assert_eq!(
                s.detail["matched_data"],
                first_change.detail["matched_data"]
            );
            assert!(s.bytes.abs_diff(first_change.bytes) < first_change.bytes / 100);
        }
        let summary = results.change;
        assert_eq!(
            (summary.modified, summary.added, summary.deleted),
            (3, 10, 10)
        );
    }

    /// A stand-in `cfi` (rsync behind the documented flags and report)
    /// checks the cfi half of the harness without the real binary.
    #[test]
    fn cfi_half_runs_against_a_stand_in() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("cfi");
        fs::write(
            &fake,
            r#"#!/bin/sh
set -e
[ "$1" = sync-local ] || exit 2
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) d=$2; shift ;;
    --group) g=$2; shift ;;
    --root) r=$2; shift ;;
    --state-dir) s=$2; shift ;;
    --cache-dir) c=$2; shift ;;
    --json) ;;
    *) exit 2 ;;
  esac
  shift
done
mkdir -p "$s" "$c"
rsync -a --delete "$d/$g/" "$r/"
echo '{"files_updated":1,"files_unchanged":2,"files_deleted":0,"files_restored":0,"bytes_to_agent":100,"bytes_from_agent":20,"drift":[],"extra":"kept"}'
"#,
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let work = dir.path().join("work");
        let plan = small_plan(&work, vec![Tool::Cfi, Tool::Rsync], fake);
        let results = run(&plan).unwrap();
        for phase in Phase::ALL {
            let cfi = results.get(phase, Tool::Cfi).unwrap();
            assert_eq!(cfi.median_bytes, 120);
            assert_eq!(cfi.samples[0].detail["extra"], "kept");
            assert!(results.get(phase, Tool::Rsync).is_some());
        }
        assert!(work.join("state-cfi").is_dir());
    }
}
