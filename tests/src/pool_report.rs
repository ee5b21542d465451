//! Renders [`PoolResults`]: the markdown a person reads (medians of every
//! scenario, cfi's ratios against its peers) with the verdict on each
//! target the issue set, and the JSON a script reads.
//!
//! cfi is compared with its best peer: in exec, the fastest peer on wall
//! time and the cheaper pdsh (of the two key exchanges) on CPU; in sync,
//! the faster (or cheaper) rsync to as many hosts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::pool_bench::{Bench, Dest, PoolResults, Scenario, ScenarioResult};
use crate::pool_tools::{DshTool, FANOUT};

/// What a ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Median wall time.
    Wall,
    /// Median orchestrator CPU per host.
    CpuPerHost,
}

impl Metric {
    fn of(self, r: &ScenarioResult) -> Duration {
        match self {
            Metric::Wall => r.median_wall,
            Metric::CpuPerHost => r.cpu_per_host(),
        }
    }
}

/// A goal: a cfi scenario's metric at most `max_ratio` times its
/// reference peer's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    /// How the report names it.
    pub name: &'static str,
    /// The cfi scenario.
    pub scenario: Scenario,
    /// What it compares.
    pub metric: Metric,
    /// The highest acceptable ratio.
    pub max_ratio: f64,
}

/// The exec targets, as the issue states them.
pub const EXEC_TARGETS: [Target; 3] = [
    Target {
        name: "warm exec wall ≤ 0.15× the fastest peer",
        scenario: Scenario::CfiExec { warm: true },
        metric: Metric::Wall,
        max_ratio: 0.15,
    },
    Target {
        name: "cold exec wall ≤ 0.7× the fastest peer",
        scenario: Scenario::CfiExec { warm: false },
        metric: Metric::Wall,
        max_ratio: 0.7,
    },
    Target {
        name: "cold exec CPU per host ≤ 0.2× pdsh's",
        scenario: Scenario::CfiExec { warm: false },
        metric: Metric::CpuPerHost,
        max_ratio: 0.2,
    },
];

/// The sync target, as the issue states it.
pub const SYNC_TARGETS: [Target; 1] = [Target {
    name: "sync to all hosts wall ≤ 0.5× the parallel rsync loop",
    scenario: Scenario::CfiSync { all: true },
    metric: Metric::Wall,
    max_ratio: 0.5,
}];

/// A cfi scenario against its reference peer.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The peer scenario's label.
    pub against: String,
    /// cfi's metric over the peer's.
    pub ratio: f64,
}

/// A target against the results.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The target.
    pub target: Target,
    /// The comparison, when cfi and a peer ran and the peer's value is not
    /// zero.
    pub comparison: Option<Comparison>,
    /// Whether the ratio is within the target; `None` when it cannot be
    /// told.
    pub met: Option<bool>,
}

/// The peer result cfi's `scenario` is measured against on `metric`.
pub fn reference(
    results: &PoolResults,
    scenario: Scenario,
    metric: Metric,
) -> Option<&ScenarioResult> {
    results
        .scenarios
        .iter()
        .filter(|r| match (scenario, r.scenario) {
            (Scenario::CfiExec { .. }, Scenario::Dsh { dsh, .. }) => {
                metric == Metric::Wall || dsh == DshTool::Pdsh
            }
            (Scenario::CfiSync { all }, Scenario::Rsync { all: a, .. }) => all == a,
            _ => false,
        })
        .min_by_key(|r| metric.of(r))
}

/// cfi's `scenario` against its reference peer on `metric`.
pub fn compare(results: &PoolResults, scenario: Scenario, metric: Metric) -> Option<Comparison> {
    let cfi = results.scenarios.iter().find(|r| r.scenario == scenario)?;
    let peer = reference(results, scenario, metric)?;
    let base = metric.of(peer).as_secs_f64();
    (base > 0.0).then(|| Comparison {
        against: peer.label.clone(),
        ratio: metric.of(cfi).as_secs_f64() / base,
    })
}

/// The targets of the results' benchmark.
pub fn targets(results: &PoolResults) -> &'static [Target] {
    match results.bench {
        Bench::Exec => &EXEC_TARGETS,
        Bench::Sync => &SYNC_TARGETS,
    }
}

/// Every target's verdict.
pub fn verdicts(results: &PoolResults) -> Vec<Verdict> {
    targets(results)
        .iter()
        .map(|&target| {
            let comparison = compare(results, target.scenario, target.metric);
            Verdict {
                target,
                met: comparison.as_ref().map(|c| c.ratio <= target.max_ratio),
                comparison,
            }
        })
        .collect()
}

/// The results and verdicts as one JSON document.
pub fn to_json(results: &PoolResults) -> serde_json::Value {
    serde_json::json!({
        "results": results,
        "targets": verdicts(results),
    })
}

/// The human-readable report, in markdown.
pub fn render(results: &PoolResults) -> String {
    let mut out = String::new();
    let bench = match results.bench {
        Bench::Exec => "exec",
        Bench::Sync => "sync",
    };
    let _ = writeln!(out, "## cfi-lab bench {bench}: {} hosts\n", results.hosts);
    match results.bench {
        Bench::Exec => {
            let _ = writeln!(
                out,
                "`true` on every host. cfi exec, cold: the first exec of a daemon, \
                 timed and billed from the daemon's start (it begins connecting to \
                 its clients as it starts); warm: the daemon ran one exec before. pdsh (`-R ssh -S`) and clush (`-S`) with \
                 a fanout of {FANOUT}. Every run checked: each host ran the command and \
                 returned 0."
            );
        }
        Bench::Sync => {
            if let Some((spec, t)) = &results.tree {
                let _ = writeln!(
                    out,
                    "Tree: seed {}, {} files ({} large) in {} dirs, {} symlinks, {} in all, \
                     written to {}. \
                     Every run starts from hosts without it (first sync) and ends with \
                     each host's copy checked against the source (paths, kinds, modes, \
                     owners, link targets, content).",
                    spec.seed,
                    t.files,
                    t.large_files,
                    t.dirs,
                    t.symlinks,
                    mib(t.bytes),
                    results.dest.map_or("?", Dest::describe)
                );
            }
            let _ = writeln!(
                out,
                "cfi sync: a fresh daemon that ran one exec first (connections up), then \
                 `cfi sync -a` (or `-w` the first host). rsync: `rsync -a --delete` over \
                 ssh, one process per host, all started at once."
            );
        }
    }
    let _ = writeln!(
        out,
        "\nMedians of {} runs after {} warm-up, scenarios in an order rotated each run. \
         Wall: the orchestrating command, start to exit. CPU: the orchestrator's own on \
         this machine (pdsh, clush, rsync with their ssh processes; cfi's daemon with \
         its CLI), per host addressed. Machine CPU: every process on this machine \
         meanwhile, all cores, the lab's clients included (they share it).\n",
        results.runs, results.warmup
    );
    for (name, version) in &results.versions {
        let _ = writeln!(out, "- {name}: {version}");
    }

    let _ = writeln!(
        out,
        "\n| scenario | hosts | wall ms | CPU ms/host | machine CPU ms | wall ratio | \
         CPU/host ratio |\n| --- | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for r in &results.scenarios {
        let ratio = |metric| {
            compare(results, r.scenario, metric)
                .map_or_else(String::new, |c| format!("{} {}", times(c.ratio), c.against))
        };
        let (wall, cpu) = if r.scenario.is_cfi() {
            (ratio(Metric::Wall), ratio(Metric::CpuPerHost))
        } else {
            Default::default()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.0} | {wall} | {cpu} |",
            r.label,
            r.hosts,
            ms(r.median_wall),
            r.cpu_per_host().as_secs_f64() * 1e3,
            r.median_machine_cpu.as_secs_f64() * 1e3,
        );
    }

    if !results.kex.is_empty() {
        let _ = writeln!(
            out,
            "\nKey exchange negotiated (one client's sshd, logging at DEBUG1):\n"
        );
        for k in &results.kex {
            let _ = writeln!(out, "- {}: {}", k.client, k.algorithm);
        }
    }

    let _ = writeln!(
        out,
        "\n| target | ratio | against | verdict |\n| --- | ---: | --- | --- |"
    );
    for v in verdicts(results) {
        let verdict = match v.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a (needs cfi and its peers)",
        };
        let (ratio, against) = v.comparison.map_or(("-".to_owned(), String::new()), |c| {
            (times(c.ratio), c.against)
        });
        let _ = writeln!(
            out,
            "| {} | {ratio} | {against} | {verdict} |",
            v.target.name
        );
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn times(r: f64) -> String {
    format!("{r:.2}×")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pool_checks::KexSeen;
    use crate::pool_tools::{Cost, Kex};

    fn result(scenario: Scenario, hosts: usize, wall_ms: u64, cpu_ms: u64) -> ScenarioResult {
        ScenarioResult {
            scenario,
            label: scenario.label(),
            hosts,
            median_wall: Duration::from_millis(wall_ms),
            median_cpu: Duration::from_millis(cpu_ms),
            median_machine_cpu: Duration::from_millis(2 * wall_ms),
            samples: vec![Cost::default()],
        }
    }

    fn exec_results(with_cfi: bool) -> PoolResults {
        let dsh = |dsh, kex, wall, cpu| result(Scenario::Dsh { dsh, kex }, 10, wall, cpu);
        let mut scenarios = vec![
            dsh(DshTool::Pdsh, Kex::OpensshDefault, 1000, 800),
            dsh(DshTool::Pdsh, Kex::Curve25519, 900, 500),
            dsh(DshTool::Clush, Kex::OpensshDefault, 1200, 1500),
            dsh(DshTool::Clush, Kex::Curve25519, 800, 1200),
        ];
        if with_cfi {
            scenarios.insert(0, result(Scenario::CfiExec { warm: false }, 10, 400, 50));
            scenarios.insert(1, result(Scenario::CfiExec { warm: true }, 10, 160, 10));
        }
        PoolResults {
            bench: Bench::Exec,
            hosts: 10,
            runs: 1,
            warmup: 0,
            versions: BTreeMap::new(),
            tree: None,
            scenarios,
            kex: vec![KexSeen {
                client: "cfi".to_owned(),
                algorithm: "curve25519-sha256".to_owned(),
            }],
            dest: None,
        }
    }

    #[test]
    fn exec_ratios_use_the_fastest_peer_and_pdsh_cpu() {
        let r = exec_results(true);
        let wall = compare(&r, Scenario::CfiExec { warm: true }, Metric::Wall).unwrap();
        assert_eq!(wall.against, "clush, curve25519");
        assert!((wall.ratio - 0.2).abs() < 1e-9);
        let cpu = compare(&r, Scenario::CfiExec { warm: false }, Metric::CpuPerHost).unwrap();
        assert_eq!(cpu.against, "pdsh, curve25519");
        assert!((cpu.ratio - 0.1).abs() < 1e-9);
        let met: Vec<_> = verdicts(&r).iter().map(|v| v.met).collect();
        assert_eq!(met, [Some(false), Some(true), Some(true)]);
    }

    #[test]
    fn report_shows_rows_kex_and_verdicts() {
        let text = render(&exec_results(true));
        for needle in [
            "| cfi exec, warm | 10 | 160.0 | 1.00 | 320 | 0.20× clush, curve25519 | 0.02× pdsh, curve25519 |",
            "| pdsh, default kex | 10 | 1000.0 | 80.00 | 2000 |  |  |",
            "- cfi: curve25519-sha256",
            "**not met**",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        let peers_only = render(&exec_results(false));
        assert!(peers_only.contains("n/a"), "{peers_only}");
        let json = to_json(&exec_results(true));
        assert_eq!(json["targets"][0]["met"], false);
        assert_eq!(
            json["results"]["scenarios"][0]["scenario"]["tool"],
            "cfi-exec"
        );
    }

    #[test]
    fn sync_compares_with_rsync_to_as_many_hosts() {
        let mut r = exec_results(false);
        r.bench = Bench::Sync;
        r.scenarios = vec![
            result(Scenario::CfiSync { all: false }, 1, 100, 30),
            result(
                Scenario::Rsync {
                    kex: Kex::Curve25519,
                    all: false,
                },
                1,
                200,
                60,
            ),
            result(Scenario::CfiSync { all: true }, 10, 1000, 100),
            result(
                Scenario::Rsync {
                    kex: Kex::OpensshDefault,
                    all: true,
                },
                10,
                4000,
                900,
            ),
        ];
        let one = compare(&r, Scenario::CfiSync { all: false }, Metric::Wall).unwrap();
        assert!((one.ratio - 0.5).abs() < 1e-9);
        let v = verdicts(&r);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].met, Some(true));
        assert!((v[0].comparison.as_ref().unwrap().ratio - 0.25).abs() < 1e-9);
    }
}
