//! `cfi-lab bench rss`: the server's memory with a thousand announced
//! clients (DESIGN.md: a small appliance; ≤ 100 MiB resident).
//!
//! A `cfi-server` on the host, its mDNS kept to a lab's bridge, sees
//! synthetic `_cfi-client._tcp` records from a few lab containers, each
//! running [`crate::announce_many`] for its share. The records are valid
//! and point at their container's own sshd, but the server's key is
//! installed nowhere: every client is refused, as a machine whose
//! announcer has not installed the key yet would refuse it. Each has a
//! port of its own ([`FORWARD_FROM`] and up, forwarded to sshd in the
//! container): the server enrolls one announced client per `ip:port`, so
//! a thousand records at four addresses' port 22 would be four clients. That measures
//! what the server holds per client (its table, its mDNS cache, the
//! enrollments and reconnects under way) rather than what syncing costs.
//!
//! Memory comes from `/proc/<pid>/status` (VmRSS, VmHWM, RssAnon): before
//! any announcement, once `cfi clients --json` lists every client, and
//! `--settle` seconds later, sampled every second in between. Beside it,
//! the server's CPU and the SSH attempts the clients' sshd refused (its
//! `[preauth]` log lines), to show how hard the server knocks on clients
//! that do not let it in.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tracing::info;

use crate::cfi_pool::CfiBinaries;
use crate::lab::{ClientSpec, Lab};
use crate::stats::ms;
use crate::zeroconf::{CFI_LAB_PATH, GROUP, Memory, ZeroconfServer, tail};

/// The target for the server's resident memory (MiB), high-water mark.
pub const TARGET_MIB: f64 = 100.0;

/// Synthetic client `n` of a container announces port `FORWARD_FROM + n`.
pub const FORWARD_FROM: u16 = 20_000;

/// Where an announcer logs in its container, and its pid file.
const LOG: &str = "/var/log/announce-many.log";
const PID: &str = "/run/announce-many.pid";

/// How long the server gets to list every client.
const LIST_LIMIT: Duration = Duration::from_secs(300);

/// What to run.
#[derive(Debug, Clone)]
pub struct RssPlan {
    /// Synthetic clients in all.
    pub clients: usize,
    /// Containers announcing them.
    pub announcers: usize,
    /// How long to watch after every client is listed.
    pub settle: Duration,
    /// Clients announced per second, all announcers together (0: at once).
    pub rate: f64,
    /// Where cfi's binaries are.
    pub cfi_dir: PathBuf,
    /// The data dir and the server's files go here.
    pub workdir: PathBuf,
}

/// The server at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the announcers were started (negative: before).
    pub at_s: f64,
    /// Its memory.
    pub memory: Memory,
    /// Its CPU since it started (ms).
    pub cpu_ms: f64,
    /// SSH attempts the clients' sshd refused so far.
    pub refused: usize,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct RssResults {
    /// Synthetic clients.
    pub clients: usize,
    /// Containers announcing them.
    pub announcers: usize,
    /// Clients announced per second (0: at once).
    pub rate: f64,
    /// Before any announcement.
    pub before: Sample,
    /// When `cfi clients` first listed every client.
    pub listed: Sample,
    /// `settle` after that.
    pub settled: Sample,
    /// The largest VmRSS sampled between `listed` and `settled` (KiB).
    pub max_rss_kib: u64,
    /// `cfi clients` states at the end, with counts.
    pub states: BTreeMap<String, usize>,
}

/// Runs the benchmark.
pub fn run(plan: &RssPlan) -> Result<RssResults> {
    ensure!(
        plan.announcers > 0 && plan.clients >= plan.announcers,
        "--announcers must be at least 1 and at most --clients"
    );
    let bins = CfiBinaries::in_dir(&plan.cfi_dir)?;
    let exe = std::env::current_exe().context("failed to find the cfi-lab executable")?;
    let data = plan.workdir.join("data");
    for g in ["all", GROUP] {
        let dir = data.join(g);
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let spec = ClientSpec::default().binary(&exe, CFI_LAB_PATH);
    info!(announcers = plan.announcers, "starting the lab");
    let lab = Lab::start_with(vec![spec; plan.announcers])?;
    let server = ZeroconfServer::start(&bins, &plan.workdir.join("server"), &data, &lab, "")?;
    thread::sleep(Duration::from_secs(2));
    let before_at = Instant::now();
    let mut before = sample(&server, &lab, before_at)?;

    let started = Instant::now();
    before.at_s = signed_secs(before_at, started);
    // Shares as even as they go; prefixes keep names and ids apart.
    let mut expected = BTreeSet::new();
    let rate = if plan.rate > 0.0 {
        format!(" --rate {}", plan.rate / plan.announcers as f64)
    } else {
        String::new()
    };
    for k in 0..plan.announcers {
        let count =
            plan.clients / plan.announcers + usize::from(k < plan.clients % plan.announcers);
        let prefix = format!("s{k}");
        expected.extend((0..count).map(|n| format!("{prefix}-{n:04}")));
        lab.sh(
            k,
            &format!(
                "nohup {CFI_LAB_PATH} announce-many --count {count} --prefix {prefix} \
                 --group {GROUP} --forward-from {FORWARD_FROM}{rate} > {LOG} 2>&1 \
                 < /dev/null & echo $! > {PID}"
            ),
        )?;
    }
    info!(
        clients = plan.clients,
        "announcing; waiting for the server to list them all"
    );
    let rows = loop {
        let rows = server.clients()?;
        let listed = rows.iter().filter(|r| r.source == "mdns").count();
        if listed >= plan.clients {
            break rows;
        }
        // The server's browse ends when it falls behind mdns-sd's event
        // queue: nothing more would be listed.
        let log = server.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("no more client announcements"))
        {
            bail!(
                "the server lists {listed} of {} clients and stopped browsing: {line}",
                plan.clients
            );
        }
        if started.elapsed() > LIST_LIMIT {
            bail!(
                "the server lists {listed} of {} clients after {LIST_LIMIT:?}\nserver log:\n{}",
                plan.clients,
                tail(&server.log(), 20)
            );
        }
        check_announcers(&lab)?;
        thread::sleep(Duration::from_secs(1));
    };
    let listed = sample(&server, &lab, started)?;
    info!(
        after_s = listed.at_s,
        rss_kib = listed.memory.rss_kib,
        "every client listed"
    );

    // What is listed is what was announced: each name once, at its
    // container's sshd, in the group it asked for.
    let names: BTreeSet<String> = rows.iter().map(|r| r.host.clone()).collect();
    ensure!(
        names == expected && rows.len() == plan.clients,
        "the server lists {} clients ({} names), not the {} announced",
        rows.len(),
        names.len(),
        expected.len()
    );
    for r in &rows {
        let k: usize = r.host[1..r.host.find('-').unwrap_or(1)]
            .parse()
            .unwrap_or(usize::MAX);
        let n: u16 = r.host[r.host.find('-').map_or(0, |d| d + 1)..]
            .parse()
            .unwrap_or(u16::MAX);
        let addr = lab
            .clients()
            .get(k)
            .map(|c| format!("{}:{}", c.addr, FORWARD_FROM.saturating_add(n)));
        ensure!(
            addr.as_deref() == Some(r.address.as_str()) && r.group == GROUP,
            "client {} listed at {} in {}, announced at {addr:?} in {GROUP}",
            r.host,
            r.address,
            r.group
        );
    }

    let mut max_rss = listed.memory.rss_kib;
    let until = Instant::now() + plan.settle;
    while Instant::now() < until {
        thread::sleep(Duration::from_secs(1).min(until - Instant::now()));
        max_rss = max_rss.max(server.memory()?.rss_kib);
    }
    let settled = sample(&server, &lab, started)?;
    max_rss = max_rss.max(settled.memory.rss_kib);
    let mut states = BTreeMap::new();
    for r in server.clients()? {
        *states.entry(r.state).or_insert(0) += 1;
    }
    server.stop()?;
    Ok(RssResults {
        clients: plan.clients,
        announcers: plan.announcers,
        rate: plan.rate,
        before,
        listed,
        settled,
        max_rss_kib: max_rss,
        states,
    })
}

/// The server now; `at_s` counts from `origin`.
fn sample(server: &ZeroconfServer, lab: &Lab, origin: Instant) -> Result<Sample> {
    Ok(Sample {
        at_s: signed_secs(Instant::now(), origin),
        memory: server.memory()?,
        cpu_ms: server.cpu()?.as_secs_f64() * 1e3,
        refused: refused(lab)?,
    })
}

/// Fails when an announcer is no longer running, with its log.
fn check_announcers(lab: &Lab) -> Result<()> {
    for k in 0..lab.clients().len() {
        let out = lab.exec(k, &["sh", "-c", &format!("kill -0 \"$(cat {PID})\"")])?;
        if !out.status.success() {
            let log = lab.sh(k, &format!("cat {LOG}")).unwrap_or_default();
            bail!(
                "the announcer in client {k} is gone; its log:\n{}",
                tail(&log, 20)
            );
        }
    }
    Ok(())
}

/// SSH attempts refused by every client's sshd so far: its log lines for
/// connections closed before authentication.
fn refused(lab: &Lab) -> Result<usize> {
    let mut n = 0;
    for k in 0..lab.clients().len() {
        n += lab
            .logs(k)?
            .lines()
            .filter(|l| l.contains("[preauth]"))
            .count();
    }
    Ok(n)
}

/// `at - origin` in seconds, negative when `at` is earlier.
fn signed_secs(at: Instant, origin: Instant) -> f64 {
    match at.checked_duration_since(origin) {
        Some(d) => d.as_secs_f64(),
        None => -origin.duration_since(at).as_secs_f64(),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The results as JSON.
pub fn to_json(r: &RssResults) -> serde_json::Value {
    serde_json::json!({
        "results": r,
        "target": { "hwm_mib": TARGET_MIB, "met": mib(r.settled.memory.hwm_kib) <= TARGET_MIB },
    })
}

/// The report, in markdown.
pub fn render(r: &RssResults) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## cfi-lab bench rss: {} announced clients from {} announcers\n\n\
         A cfi-server on the host (mDNS on the lab bridge only, default settings otherwise) \
         sees {} synthetic `_cfi-client._tcp` records (distinct ids and names, group \
         `{GROUP}`, each container's real sshd host key and address, a port each from \
         {FORWARD_FROM} forwarded to sshd) announced by `cfi-lab announce-many` in {} lab \
         containers, {}. The server's key is installed \
         nowhere, so every client refuses it. Memory from /proc/<pid>/status; refused: \
         the clients' sshd log lines for connections closed before authentication.\n",
        r.clients,
        r.announcers,
        r.clients,
        r.announcers,
        if r.rate > 0.0 {
            format!(
                "{:.0} per second in all (a wave of machines booting)",
                r.rate
            )
        } else {
            "all at once".to_owned()
        }
    );
    let _ = writeln!(
        out,
        "| moment | s | VmRSS MiB | VmHWM MiB | RssAnon MiB | threads | server CPU ms | \
         refused SSH |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let settle_s = r.settled.at_s - r.listed.at_s;
    for (label, s) in [
        ("before any announcement".to_owned(), r.before),
        (format!("all {} listed", r.clients), r.listed),
        (format!("{settle_s:.0} s later"), r.settled),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            s.at_s,
            mib(s.memory.rss_kib),
            mib(s.memory.hwm_kib),
            mib(s.memory.anon_kib),
            s.memory.threads,
            ms(s.cpu_ms),
            s.refused
        );
    }
    let hwm = mib(r.settled.memory.hwm_kib);
    let verdict = if hwm <= TARGET_MIB {
        "met"
    } else {
        "**not met**"
    };
    let per_client = r
        .settled
        .memory
        .rss_kib
        .saturating_sub(r.before.memory.rss_kib) as f64
        / r.clients as f64;
    let settle_cpu = (r.settled.cpu_ms - r.listed.cpu_ms) / settle_s.max(1e-9);
    let settle_refused = r.settled.refused.saturating_sub(r.listed.refused) as f64;
    let states: Vec<String> = r.states.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let _ = writeln!(
        out,
        "\n| target | MiB | verdict |\n| --- | ---: | --- |\n| VmHWM ≤ {TARGET_MIB:.0} MiB | \
         {hwm:.1} | {verdict} |\n\n\
         Largest VmRSS sampled in the last {settle_s:.0} s: {:.1} MiB; {per_client:.1} KiB \
         per client over the idle server. Server CPU in those seconds: {settle_cpu:.0} ms/s; \
         SSH attempts refused meanwhile: {settle_refused:.0} ({:.1}/s). States at the end: \
         {}.",
        mib(r.max_rss_kib),
        settle_refused / settle_s.max(1e-9),
        states.join(", ")
    );
    out
}
