//! Renders benchmark [`Results`]: the table a person reads, the JSON a
//! script reads, and the verdict on each target the issue set for cfi
//! against rsync (no-op wall ≤ 0.3×, 1%-change bytes ≤ 1.0×, first-sync
//! wall ≤ 1.2×).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::bench::{Phase, Results, ToolResult};
use crate::peer::Tool;

/// What a target compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Median wall time.
    Wall,
    /// Median bytes moved.
    Bytes,
}

/// A goal: cfi's metric in a phase at most `max_ratio` times rsync's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    /// How the report names it.
    pub name: &'static str,
    /// The phase it is about.
    pub phase: Phase,
    /// What it compares.
    pub metric: Metric,
    /// The highest acceptable cfi / rsync ratio.
    pub max_ratio: f64,
}

/// The targets, as the issue states them.
pub const TARGETS: [Target; 3] = [
    Target {
        name: "no-op wall ≤ 0.3× rsync",
        phase: Phase::NoOp,
        metric: Metric::Wall,
        max_ratio: 0.3,
    },
    Target {
        name: "1%-change bytes ≤ 1.0× rsync",
        phase: Phase::Change,
        metric: Metric::Bytes,
        max_ratio: 1.0,
    },
    Target {
        name: "first-sync wall ≤ 1.2× rsync",
        phase: Phase::FirstSync,
        metric: Metric::Wall,
        max_ratio: 1.2,
    },
];

/// A target against the results.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The target.
    pub target: Target,
    /// cfi / rsync, when both ran and rsync's value is not zero.
    pub ratio: Option<f64>,
    /// Whether the ratio is within the target; `None` when it cannot be told.
    pub met: Option<bool>,
}

/// cfi's metric over rsync's in a phase.
pub fn ratio(results: &Results, phase: Phase, metric: Metric) -> Option<f64> {
    let value = |tool| {
        results.get(phase, tool).map(|r| match metric {
            Metric::Wall => r.median_wall.as_secs_f64(),
            Metric::Bytes => r.median_bytes as f64,
        })
    };
    let (cfi, rsync) = (value(Tool::Cfi)?, value(Tool::Rsync)?);
    (rsync > 0.0).then(|| cfi / rsync)
}

/// Every target's verdict.
pub fn verdicts(results: &Results) -> Vec<Verdict> {
    TARGETS
        .iter()
        .map(|&target| {
            let ratio = ratio(results, target.phase, target.metric);
            Verdict {
                target,
                ratio,
                met: ratio.map(|r| r <= target.max_ratio),
            }
        })
        .collect()
}

/// The results, ratios and verdicts as one JSON document.
pub fn to_json(results: &Results) -> serde_json::Value {
    let ratios: serde_json::Map<String, serde_json::Value> = Phase::ALL
        .iter()
        .map(|&phase| {
            let value = serde_json::json!({
                "wall": ratio(results, phase, Metric::Wall),
                "bytes": ratio(results, phase, Metric::Bytes),
            });
            (
                serde_json::to_value(phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                value,
            )
        })
        .collect();
    serde_json::json!({
        "results": results,
        "ratios_cfi_over_rsync": ratios,
        "targets": verdicts(results),
    })
}

/// The human-readable report.
pub fn render(results: &Results) -> String {
    let mut out = String::new();
    let t = &results.tree;
    let _ = writeln!(
        out,
        "tree: seed {}, {} files ({} large, {}) in {} dirs, {} symlinks, {} in all",
        results.spec.seed,
        t.files,
        t.large_files,
        mib(t.large_bytes),
        t.dirs,
        t.symlinks,
        mib(t.bytes)
    );
    let c = &results.change;
    let _ = writeln!(
        out,
        "change: {} files rewritten in the middle ({} large, {} rewritten), \
         {} added ({}), {} deleted",
        c.modified,
        c.modified_large,
        kib(c.modified_bytes),
        c.added,
        kib(c.added_bytes),
        c.deleted
    );
    if let Some(v) = &results.rsync_version {
        let fsync = if results.rsync_fsync {
            " with --fsync"
        } else {
            ""
        };
        let _ = writeln!(out, "rsync: {v}{fsync}");
    }
    let _ = writeln!(
        out,
        "medians of {} runs after {} warm-up; every pass verified identical to the source\n",
        results.runs, results.warmup
    );

    let _ = writeln!(
        out,
        "{:<11} {:>10} {:>10} {:>9} {:>12} {:>12} {:>10}",
        "phase", "cfi ms", "rsync ms", "wall c/r", "cfi bytes", "rsync bytes", "bytes c/r"
    );
    for phase in Phase::ALL {
        let cfi = results.get(phase, Tool::Cfi);
        let rsync = results.get(phase, Tool::Rsync);
        let wall = |r: Option<&ToolResult>| r.map_or("-".into(), |r| ms(r.median_wall));
        let bytes = |r: Option<&ToolResult>| r.map_or("-".into(), |r| r.median_bytes.to_string());
        let _ = writeln!(
            out,
            "{:<11} {:>10} {:>10} {:>9} {:>12} {:>12} {:>10}",
            phase.to_string(),
            wall(cfi),
            wall(rsync),
            times(ratio(results, phase, Metric::Wall)),
            bytes(cfi),
            bytes(rsync),
            times(ratio(results, phase, Metric::Bytes)),
        );
    }

    let _ = writeln!(out, "\ntargets (cfi against rsync):");
    for v in verdicts(results) {
        let verdict = match v.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a (needs both tools)",
        };
        let _ = writeln!(
            out,
            "  {:<30} {:>8}  {verdict}",
            v.target.name,
            times(v.ratio)
        );
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn times(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}×"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::PhaseResult;
    use crate::change::ChangeSummary;
    use crate::tree::{TreeSpec, TreeSummary};

    fn result(ms: u64, bytes: u64) -> ToolResult {
        ToolResult {
            median_wall: Duration::from_millis(ms),
            median_bytes: bytes,
            samples: Vec::new(),
        }
    }

    fn results(tools: &[Tool]) -> Results {
        // (cfi, rsync) per phase: first sync 1100 vs 1000 ms (met),
        // no-op 40 vs 100 ms (not met), change 900 vs 1000 bytes (met).
        let numbers = [
            (Phase::FirstSync, (1100, 5000), (1000, 6000)),
            (Phase::NoOp, (40, 10), (100, 300)),
            (Phase::Change, (50, 900), (60, 1000)),
        ];
        Results {
            spec: TreeSpec::new(1, 10, 0),
            tree: TreeSummary::default(),
            change: ChangeSummary {
                modified: 1,
                modified_large: 0,
                modified_bytes: 1024,
                added: 10,
                added_bytes: 5000,
                deleted: 10,
            },
            runs: 1,
            warmup: 0,
            rsync_version: None,
            rsync_fsync: false,
            phases: numbers
                .iter()
                .map(|&(phase, (cm, cb), (rm, rb))| PhaseResult {
                    phase,
                    tools: tools
                        .iter()
                        .map(|&t| match t {
                            Tool::Cfi => (t, result(cm, cb)),
                            Tool::Rsync => (t, result(rm, rb)),
                        })
                        .collect::<BTreeMap<_, _>>(),
                })
                .collect(),
        }
    }

    #[test]
    fn verdicts_follow_the_ratios() {
        let v = verdicts(&results(&[Tool::Cfi, Tool::Rsync]));
        let met: Vec<_> = v.iter().map(|v| (v.target.phase, v.met)).collect();
        assert_eq!(
            met,
            [
                (Phase::NoOp, Some(false)),
                (Phase::Change, Some(true)),
                (Phase::FirstSync, Some(true)),
            ]
        );
        assert!((v[0].ratio.unwrap() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn one_tool_gives_no_verdict() {
        let r = results(&[Tool::Rsync]);
        assert!(verdicts(&r).iter().all(|v| v.met.is_none()));
        let text = render(&r);
        assert!(text.contains("n/a"), "{text}");
        let json = to_json(&r);
        assert_eq!(
            json["ratios_cfi_over_rsync"]["no-op"]["wall"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn table_shows_every_phase_and_target() {
        let text = render(&results(&[Tool::Cfi, Tool::Rsync]));
        for needle in [
            "first sync",
            "no-op",
            "1% change",
            "0.40×",
            "NOT MET",
            "1.10×",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        let json = to_json(&results(&[Tool::Cfi, Tool::Rsync]));
        assert_eq!(json["targets"][0]["met"], false);
        assert_eq!(
            json["results"]["phases"][1]["tools"]["cfi"]["median_wall_ms"],
            40.0
        );
    }
}
