//! `cfi-lab bench load`: many clients and rapid changes (issue 7). A pool
//! of lab hosts listed statically, the daemon watching the data dir, and
//! a burst of successive changes to their group. Every client must end on
//! the final tree, and no client may ever run two passes at once. Reported:
//! how long the pool took to converge after the last change, the passes
//! each client ran, and the server's CPU and peak memory.
//!
//! The evidence for "never two passes at once" comes from the clients: the
//! forced command is a wrapper named `cfi-agent` (the announcer and the
//! server only accept that name) that logs when each sync pass (`serve`)
//! starts and ends and runs the real agent in between. The log is read
//! back with `cfi exec`. So that every pass is a session the wrapper sees,
//! it refuses the command runner (which would run passes in its own
//! process, one at a time by itself): the server then falls back to a
//! session per pass and per command, as with an agent before the runner.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tracing::info;

use crate::cfi_pool::{CfiBinaries, CfiPool, ExecReport, PoolOptions};
use crate::command;
use crate::lab::{AGENT_PATH, Lab};
use crate::pool_tools::{on_every_client, process_cpu};
use crate::stats;
use crate::zeroconf::memory_of;

/// Where the logging wrapper goes in each client.
const WRAPPER_PATH: &str = "/usr/local/lib/cfi-lab/cfi-agent";

/// Where it logs.
const PASS_LOG: &str = "/var/log/cfi-lab-passes";

/// Where the group's changing files land in each client.
const TREE_DIR: &str = "srv/cfi-load";

/// How long the pool gets to converge after the last change.
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);

/// Files of the group's tree besides the ones the changes add.
const BASE_FILES: usize = 50;

/// What the benchmark is asked to do.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Lab clients.
    pub hosts: usize,
    /// Successive changes to the group.
    pub changes: usize,
    /// Time between two changes.
    pub interval: Duration,
    /// Where `cfi`, `cfi-server` and `cfi-agent` are.
    pub cfi_dir: PathBuf,
    /// An empty directory for the data dir, configs and logs.
    pub workdir: PathBuf,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResults {
    /// Lab clients.
    pub hosts: usize,
    /// Changes made.
    pub changes: usize,
    /// Milliseconds between them.
    pub interval_ms: u64,
    /// Seconds the clients took to start.
    pub lab_start_s: f64,
    /// Seconds from the last change until every client had the final tree.
    pub converged_s: f64,
    /// Sync passes per client: fewest, median, most.
    pub passes_min: usize,
    pub passes_median: f64,
    pub passes_max: usize,
    /// Passes of one client that overlapped another of its passes (0).
    pub overlaps: usize,
    /// The server's CPU seconds from the first change to convergence.
    pub server_cpu_s: f64,
    /// The server's peak resident memory (VmHWM), MiB, over the whole run.
    pub server_peak_rss_mib: f64,
}

/// Records each sync pass's start and end around the real agent, refuses
/// the command runner, and passes everything else (exec) straight through.
fn wrapper() -> String {
    format!(
        "#!/bin/sh\n\
         # cfi-lab bench load: when each sync pass starts and ends.\n\
         if [ \"${{SSH_ORIGINAL_COMMAND:-}}\" = run ]; then\n\
         \x20   echo 'cfi-lab bench load: no command runner, so that each pass is a session' >&2\n\
         \x20   exit 1\n\
         fi\n\
         if [ \"${{SSH_ORIGINAL_COMMAND:-}}\" = serve ]; then\n\
         \x20   printf 'start %s %s\\n' \"$$\" \"$(date +%s.%N)\" >> {PASS_LOG}\n\
         \x20   {AGENT_PATH} \"$@\"\n\
         \x20   rc=$?\n\
         \x20   printf 'end %s %s\\n' \"$$\" \"$(date +%s.%N)\" >> {PASS_LOG}\n\
         \x20   exit $rc\n\
         fi\n\
         exec {AGENT_PATH} \"$@\"\n"
    )
}

/// Runs the benchmark.
pub fn run(plan: &LoadPlan) -> Result<LoadResults> {
    let bins = CfiBinaries::in_dir(&plan.cfi_dir)?;
    let data = plan.workdir.join("data");
    let group = data.join(CfiPool::GROUP);
    fs::create_dir_all(data.join("all"))?;
    write_base(&group.join(TREE_DIR))?;

    info!(hosts = plan.hosts, "starting the lab");
    let started = Instant::now();
    let lab = Lab::start(plan.hosts)?;
    let lab_start_s = started.elapsed().as_secs_f64();
    let wrapper_file = plan.workdir.join("cfi-agent-wrapper");
    fs::write(&wrapper_file, wrapper())?;
    let options = PoolOptions {
        watch: true,
        forced_agent: Some(WRAPPER_PATH.into()),
    };
    let pool = CfiPool::prepare_grouped(
        bins,
        &plan.workdir.join("server"),
        &data,
        &lab,
        &vec![Some(CfiPool::GROUP); plan.hosts],
        &options,
    )?;
    on_every_client(&lab, |i| {
        lab.sh(i, "mkdir -p /usr/local/lib/cfi-lab")?;
        lab.copy_in(i, &wrapper_file, WRAPPER_PATH)?;
        lab.sh(i, &format!("chmod 0755 {WRAPPER_PATH}")).map(drop)
    })?;
    let daemon = pool.start()?;
    // The first pass: everyone on the base tree, then a clean pass log.
    daemon.sync(crate::cfi_pool::Hosts::All)?;
    exec_all(&pool, &format!(": > {PASS_LOG}"))?;

    info!(changes = plan.changes, "changing the group");
    let cpu_before = process_cpu(daemon.pid())?;
    let mut last_change = Instant::now();
    for k in 1..=plan.changes {
        change(&group.join(TREE_DIR), k)?;
        last_change = Instant::now();
        if k < plan.changes {
            thread::sleep(plan.interval);
        }
    }
    let want = digest_local(&group.join(TREE_DIR))?;
    let digest = format!(
        "cd /{TREE_DIR} && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum"
    );
    loop {
        let report = exec_all(&pool, &digest)?;
        let behind = report
            .hosts
            .iter()
            .filter(|h| h.stdout.trim() != want)
            .count();
        if behind == 0 {
            break;
        }
        if last_change.elapsed() > CONVERGE_LIMIT {
            bail!(
                "{behind} of {} clients not on the final tree {CONVERGE_LIMIT:?} after the last \
                 change; the server's log: {}",
                plan.hosts,
                pool.log().display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let converged_s = last_change.elapsed().as_secs_f64();
    let server_cpu_s = process_cpu(daemon.pid())?
        .saturating_sub(cpu_before)
        .as_secs_f64();
    let memory = memory_of(daemon.pid())?;

    // Passes still queued after convergence finish before the logs are read.
    thread::sleep(Duration::from_secs(3));
    let logs = exec_all(&pool, &format!("cat {PASS_LOG}"))?;
    let mut passes = Vec::new();
    let mut overlaps = 0;
    for h in &logs.hosts {
        let intervals = pass_intervals(&h.stdout)
            .with_context(|| format!("{}: bad pass log {:?}", h.host, h.stdout))?;
        passes.push(intervals.len());
        overlaps += overlapping(&intervals);
    }
    daemon.stop()?;
    ensure!(
        overlaps == 0,
        "{overlaps} passes overlapped another pass on the same client"
    );
    let counts: Vec<f64> = passes.iter().map(|&n| n as f64).collect();
    Ok(LoadResults {
        hosts: plan.hosts,
        changes: plan.changes,
        interval_ms: plan.interval.as_millis() as u64,
        lab_start_s,
        converged_s,
        passes_min: passes.iter().copied().min().unwrap_or(0),
        passes_median: stats::median(&counts).unwrap_or(0.0),
        passes_max: passes.iter().copied().max().unwrap_or(0),
        overlaps,
        server_cpu_s,
        server_peak_rss_mib: memory.hwm_kib as f64 / 1024.0,
    })
}

/// `cfi exec -a --json -- script`, which must succeed on every host.
fn exec_all(pool: &CfiPool, script: &str) -> Result<ExecReport> {
    let mut cmd = pool.cli(&["exec", "-a", "--no-stdin", "--json", "--", script]);
    let out = command::output(&mut cmd, Duration::from_secs(120))?;
    let report: ExecReport = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "cfi exec --json printed what we do not understand: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    report.check(pool.hosts())?;
    Ok(report)
}

/// The group's base tree: text-like files that no change touches.
fn write_base(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for k in 0..BASE_FILES {
        let text = format!("# base file {k}\n").repeat(40);
        fs::write(dir.join(format!("base-{k:02}.conf")), text)?;
    }
    fs::write(dir.join("version"), "0\n")?;
    Ok(())
}

/// Change `k`: the version file rewritten, one file added.
fn change(dir: &Path, k: usize) -> Result<()> {
    fs::write(dir.join(format!("change-{k:03}")), format!("change {k}\n"))?;
    fs::write(dir.join("version"), format!("{k}\n"))?;
    Ok(())
}

/// The digest the clients compute, of the host's copy of the tree.
fn digest_local(dir: &Path) -> Result<String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum")
        .current_dir(dir);
    let out = command::checked(&mut cmd, Duration::from_secs(30))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A pass log's passes as (start, end) in seconds; a pass that never
/// logged its end (still running, or killed) ends at infinity.
fn pass_intervals(log: &str) -> Result<Vec<(f64, f64)>> {
    let mut open: BTreeMap<&str, f64> = BTreeMap::new();
    let mut done = Vec::new();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let (Some(what), Some(pid), Some(time), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            bail!("bad line {line:?}");
        };
        let time: f64 = time
            .parse()
            .with_context(|| format!("bad time in {line:?}"))?;
        match what {
            "start" => {
                open.insert(pid, time);
            }
            "end" => {
                let start = open
                    .remove(pid)
                    .with_context(|| format!("an end without a start: {line:?}"))?;
                done.push((start, time));
            }
            _ => bail!("bad line {line:?}"),
        }
    }
    done.extend(open.into_values().map(|start| (start, f64::INFINITY)));
    done.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(done)
}

/// How many passes of `sorted` (by start) began before the one before
/// them ended.
fn overlapping(sorted: &[(f64, f64)]) -> usize {
    sorted.windows(2).filter(|w| w[1].0 < w[0].1).count()
}

/// The results as a table.
pub fn render(r: &LoadResults) -> String {
    let rows = [
        ("clients", r.hosts.to_string()),
        (
            "changes to their group",
            format!("{} ({} ms apart)", r.changes, r.interval_ms),
        ),
        (
            "last change → every client on the final tree",
            format!("{:.2} s", r.converged_s),
        ),
        (
            "sync passes per client (min / median / max)",
            format!("{} / {} / {}", r.passes_min, r.passes_median, r.passes_max),
        ),
        (
            "passes overlapping another on the same client",
            r.overlaps.to_string(),
        ),
        (
            "server CPU, first change → converged",
            format!("{:.2} s", r.server_cpu_s),
        ),
        (
            "server peak RSS (VmHWM)",
            format!("{:.1} MiB", r.server_peak_rss_mib),
        ),
        (
            "lab start-up (not counted)",
            format!("{:.1} s", r.lab_start_s),
        ),
    ];
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::from("cfi-lab bench load\n\n");
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_logs_give_intervals_and_overlaps() {
        let log = "start 10 1.0\nend 10 2.0\nstart 11 2.5\nstart 12 2.6\nend 12 3.0\nend 11 3.5\n";
        let v = pass_intervals(log).unwrap();
        assert_eq!(v, vec![(1.0, 2.0), (2.5, 3.5), (2.6, 3.0)]);
        assert_eq!(overlapping(&v), 1);
        let unfinished = pass_intervals("start 1 1.0\nstart 2 5.0\nend 2 6.0\n").unwrap();
        assert_eq!(overlapping(&unfinished), 1);
        assert_eq!(
            overlapping(&pass_intervals("start 1 1\nend 1 2\nstart 2 2\nend 2 3\n").unwrap()),
            0
        );
        assert!(pass_intervals("end 1 1.0\n").is_err());
        assert!(pass_intervals("start 1\n").is_err());
    }

    #[test]
    fn the_wrapper_runs_the_real_agent_and_logs_only_passes() {
        let w = wrapper();
        assert!(w.starts_with("#!/bin/sh\n"));
        assert!(w.contains(&format!("exec {AGENT_PATH} \"$@\"")));
        assert!(w.contains("= serve ]"));
        assert!(WRAPPER_PATH.ends_with("/cfi-agent"));
    }
}
