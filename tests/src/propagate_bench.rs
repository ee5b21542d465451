//! `cfi-lab bench propagate`: how long a file dropped into a group's
//! directory on the server takes to reach every member, with nobody asking
//! (DESIGN.md: propagation within a second of the change).
//!
//! A lab of clients running `cfi-announcer` (all in group `lab`) enrolls
//! itself into a `cfi-server` on the host, whose mDNS is kept to the lab's
//! bridge, with its data-dir watch on and the periodic repair out of the
//! way (`repair_interval = 86400`). Once every client is online and synced,
//! each drop writes a new small file (unique name and content) under
//! `<data>/lab/etc/cfi-propagate/` and times it until every client holds
//! it, byte for byte, at `/etc/cfi-propagate/` in its own root: written
//! there by cfi over SSH, not shared with the host.
//!
//! The clients are watched without perturbing them: before each drop,
//! one `docker exec` per client starts [`crate::wait_file`], which sleeps
//! on inotify and prints the wall-clock time it saw the content; the drop
//! happens once all of them are ready. Host and containers share the
//! kernel clock, so the latency is the latest of those times minus the
//! time just before the write. The server's log splits it: the watch
//! (inotify and the quiet period) ends where the server logs `group
//! changed`, and its pass over the members where it logs `propagation
//! done`. The server's CPU is read from `/proc` from the drop to that line.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tracing::info;

use crate::docker;
use crate::lab::Lab;
use crate::logtime::{first_after, now_unix};
use crate::pool_tools::machine_cpu;
use crate::stats::{max, median, ms, ms_or_dash, percentile};
use crate::zeroconf::{CFI_LAB_PATH, GROUP, ZeroconfBinaries, ZeroconfServer};

/// Where the dropped files land in a client (and, under `<data>/lab/`, on
/// the server).
pub const DROP_DIR: &str = "/etc/cfi-propagate";

/// The latency targets (ms): p50 and p99 over the drops.
pub const TARGET_P50_MS: f64 = 1000.0;
/// See [`TARGET_P50_MS`].
pub const TARGET_P99_MS: f64 = 2000.0;

/// How long the clients' waiters get to be ready.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// How long a dropped file gets to reach every client.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(30);

/// A pause between the waiters' start and the drop, so that the
/// `docker exec` calls' own work has ended.
const SETTLE: Duration = Duration::from_millis(500);

/// How long the server's CPU is watched while idle, for comparison.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct PropagatePlan {
    /// Lab clients.
    pub hosts: usize,
    /// Files dropped, one after the other.
    pub drops: usize,
    /// Where cfi's binaries are.
    pub cfi_dir: PathBuf,
    /// The data dir and the server's files go here.
    pub workdir: PathBuf,
}

/// One drop's measurements (ms from just before the write).
#[derive(Debug, Clone, Serialize)]
pub struct DropResult {
    /// The file's name under [`DROP_DIR`].
    pub file: String,
    /// When each client saw it, by lab index.
    pub arrivals_ms: Vec<f64>,
    /// The first client.
    pub first_ms: f64,
    /// The median client.
    pub median_ms: f64,
    /// The last client: the latency.
    pub all_ms: f64,
    /// The server logs `group changed` (inotify and the quiet period).
    pub watch_ms: Option<f64>,
    /// The server logs `propagation done` (every member's pass over).
    pub done_ms: Option<f64>,
    /// The server's CPU from the drop to `propagation done`.
    pub server_cpu_ms: f64,
    /// Every process's CPU on the machine from the drop to the last
    /// arrival: the clients' side of the passes (sshd, the agent, the
    /// container's file system) shares the machine with the server.
    pub machine_cpu_ms: f64,
    /// That as a share of all cores over the same time (1.0: all busy).
    pub machine_busy: f64,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct PropagateResults {
    /// Lab clients.
    pub hosts: usize,
    /// From the server's start until every client was enrolled.
    pub enroll_ms: f64,
    /// The server's CPU per second while idle with every client connected.
    pub idle_cpu_ms_per_s: f64,
    /// Every drop, in order.
    pub drops: Vec<DropResult>,
    /// Over the drops' `all_ms`.
    pub p50_ms: Option<f64>,
    /// Nearest rank: of 20 drops, the slowest.
    pub p99_ms: Option<f64>,
    /// The slowest drop.
    pub max_ms: Option<f64>,
    /// The server's CPU over all drops.
    pub server_cpu_ms: f64,
}

/// Runs the benchmark.
pub fn run(plan: &PropagatePlan) -> Result<PropagateResults> {
    let bins = ZeroconfBinaries::in_dir(&plan.cfi_dir)?;
    let data = plan.workdir.join("data");
    let drop_dir = data.join(GROUP).join(DROP_DIR.trim_start_matches('/'));
    for dir in [data.join("all"), drop_dir.clone()] {
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    // The directory reaches the clients with their first pass, so their
    // waiters can watch it.
    let readme = drop_dir.join("README");
    fs::write(&readme, "files dropped by cfi-lab bench propagate\n")
        .with_context(|| format!("failed to write {}", readme.display()))?;

    info!(
        hosts = plan.hosts,
        "starting the lab: clients running cfi-announcer"
    );
    let started = Instant::now();
    let spec = bins.announcing(&format!("group = \"{GROUP}\"\n"));
    let lab = Lab::start_with(vec![spec; plan.hosts])?;
    info!(elapsed = ?started.elapsed(), network = lab.network(), "lab up");
    let server = ZeroconfServer::start(
        &bins.cfi,
        &plan.workdir.join("server"),
        &data,
        &lab,
        "repair_interval = 86400\nwatch = true\n",
    )?;
    let limit = Duration::from_secs(120 + 3 * plan.hosts as u64);
    let enroll = server.wait_enrolled(lab.clients(), limit)?;
    info!(elapsed = ?enroll, "every client enrolled");

    let cpu = server.cpu()?;
    thread::sleep(IDLE_WINDOW);
    let idle = (server.cpu()? - cpu).as_secs_f64() * 1e3 / IDLE_WINDOW.as_secs_f64();

    let mut drops = Vec::with_capacity(plan.drops);
    for k in 0..plan.drops {
        let d =
            one_drop(&lab, &server, &drop_dir, k).with_context(|| format!("drop {k} failed"))?;
        info!(
            drop = k,
            all_ms = ms(d.all_ms),
            first_ms = ms(d.first_ms),
            watch_ms = ms_or_dash(d.watch_ms),
            server_cpu_ms = ms(d.server_cpu_ms),
            "propagated"
        );
        drops.push(d);
    }
    server.stop()?;
    let all: Vec<f64> = drops.iter().map(|d| d.all_ms).collect();
    Ok(PropagateResults {
        hosts: plan.hosts,
        enroll_ms: enroll.as_secs_f64() * 1e3,
        idle_cpu_ms_per_s: idle,
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: max(&all),
        server_cpu_ms: drops.iter().map(|d| d.server_cpu_ms).sum(),
        drops,
    })
}

/// Drops file number `k` and measures it.
fn one_drop(lab: &Lab, server: &ZeroconfServer, drop_dir: &Path, k: usize) -> Result<DropResult> {
    let file = format!("drop-{k:03}.conf");
    let content = format!(
        "# cfi-lab bench propagate, drop {k}\ntoken = {:.6}\n",
        now_unix()
    );
    let mut waiters = Waiters::start(lab, &format!("{DROP_DIR}/{file}"), &content)?;
    thread::sleep(SETTLE);
    let cpu = server.cpu()?;
    let machine = machine_cpu()?;
    let dropped = now_unix();
    let path = drop_dir.join(&file);
    fs::write(&path, &content).with_context(|| format!("failed to write {}", path.display()))?;
    let arrivals = waiters.arrivals()?;
    let machine = machine_cpu()? - machine;
    let window = now_unix() - dropped;

    // The pass is over when the server says so; its CPU counts until then.
    let deadline = Instant::now() + ARRIVAL_LIMIT;
    let log = loop {
        let log = server.log();
        if first_after(&log, &["propagation done"], dropped).is_some() {
            break log;
        }
        if Instant::now() > deadline {
            break log;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let server_cpu = server.cpu()? - cpu;
    waiters.finish();
    let since = |t: f64| (t - dropped) * 1e3;
    let arrivals_ms: Vec<f64> = arrivals.into_iter().map(since).collect();
    Ok(DropResult {
        file,
        first_ms: arrivals_ms.iter().copied().fold(f64::INFINITY, f64::min),
        median_ms: median(&arrivals_ms).unwrap_or_default(),
        all_ms: max(&arrivals_ms).unwrap_or_default(),
        arrivals_ms,
        watch_ms: first_after(&log, &["group changed"], dropped).map(since),
        done_ms: first_after(&log, &["propagation done"], dropped).map(since),
        server_cpu_ms: server_cpu.as_secs_f64() * 1e3,
        machine_cpu_ms: machine.as_secs_f64() * 1e3,
        machine_busy: machine.as_secs_f64() / window / cores(),
    })
}

/// The machine's cores, for [`DropResult::machine_busy`].
fn cores() -> f64 {
    thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// What a waiter said.
#[derive(Debug)]
enum Said {
    Ready,
    Arrived(f64),
    Failed(String),
}

/// One [`crate::wait_file`] per client, through `docker exec`; the docker
/// clients still running are killed on drop (the waiters in the clients
/// end at their own time limit).
#[derive(Debug)]
struct Waiters {
    /// The clients' names, by index.
    names: Vec<String>,
    children: Vec<Child>,
    /// Held open until every client has the file; see [`crate::wait_file`].
    stdins: Vec<ChildStdin>,
    said: mpsc::Receiver<(usize, Said)>,
}

impl Waiters {
    /// Starts a waiter for `path` holding `content` in every client, and
    /// returns once all of them watch.
    fn start(lab: &Lab, path: &str, content: &str) -> Result<Self> {
        let (tx, said) = mpsc::channel();
        let limit = ARRIVAL_LIMIT.as_secs().to_string();
        let mut waiters = Self {
            names: lab.clients().iter().map(|c| c.name.clone()).collect(),
            children: Vec::new(),
            stdins: Vec::new(),
            said,
        };
        for (i, c) in lab.clients().iter().enumerate() {
            let mut cmd = docker::command(&["exec", "-i", &c.name, CFI_LAB_PATH, "--log", "warn"]);
            cmd.args(["wait-file", "--path", path, "--content", content])
                .args(["--limit", &limit])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .with_context(|| format!("failed to run docker exec in {}", c.name))?;
            let stdout = child.stdout.take().context("no stdout pipe")?;
            let stderr = child.stderr.take().context("no stderr pipe")?;
            waiters
                .stdins
                .push(child.stdin.take().context("no stdin pipe")?);
            waiters.children.push(child);
            let tx = tx.clone();
            thread::spawn(move || relay(i, stdout, stderr, &tx));
        }
        let n = waiters.children.len();
        let deadline = Instant::now() + READY_LIMIT;
        let mut ready = 0;
        while ready < n {
            match waiters.next(deadline)? {
                (_, Said::Ready) => ready += 1,
                (i, Said::Failed(why)) => {
                    bail!("the waiter in {} failed: {why}", waiters.names[i])
                }
                (i, Said::Arrived(_)) => {
                    bail!("the file was in {} before the drop", waiters.names[i])
                }
            }
        }
        Ok(waiters)
    }

    /// When each client saw the content (Unix seconds), by index. The
    /// waiters are still running: see [`Waiters::finish`].
    fn arrivals(&mut self) -> Result<Vec<f64>> {
        let n = self.children.len();
        let mut times = vec![None; n];
        let deadline = Instant::now() + ARRIVAL_LIMIT + Duration::from_secs(5);
        for _ in 0..n {
            match self.next(deadline)? {
                (i, Said::Arrived(t)) => times[i] = Some(t),
                (i, Said::Failed(why)) => {
                    bail!("the file did not reach {}: {why}", self.names[i])
                }
                (i, Said::Ready) => bail!("the waiter in {} was ready twice", self.names[i]),
            }
        }
        times
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.with_context(|| format!("{} said nothing", self.names[i])))
            .collect()
    }

    /// Lets the waiters end, and reaps their docker clients.
    fn finish(mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }

    fn next(&mut self, deadline: Instant) -> Result<(usize, Said)> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.said
            .recv_timeout(left)
            .context("the clients' waiters did not answer in time")
    }
}

impl Drop for Waiters {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Passes what waiter `i` prints on to `tx`.
fn relay(i: usize, stdout: impl Read, mut stderr: impl Read, tx: &mpsc::Sender<(usize, Said)>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let said = if line == "ready" {
            Said::Ready
        } else if let Some(t) = line.strip_prefix("arrived ").and_then(|t| t.parse().ok()) {
            Said::Arrived(t)
        } else {
            Said::Failed(format!("unexpected output {line:?}"))
        };
        let done = matches!(said, Said::Arrived(_));
        let _ = tx.send((i, said));
        if done {
            return;
        }
    }
    let mut why = String::new();
    let _ = stderr.read_to_string(&mut why);
    let _ = tx.send((i, Said::Failed(why.trim().to_owned())));
}

/// The results as JSON.
pub fn to_json(r: &PropagateResults) -> serde_json::Value {
    serde_json::json!({
        "results": r,
        "targets": {
            "p50_ms": { "target": TARGET_P50_MS, "met": r.p50_ms.map(|v| v <= TARGET_P50_MS) },
            "p99_ms": { "target": TARGET_P99_MS, "met": r.p99_ms.map(|v| v <= TARGET_P99_MS) },
        },
    })
}

/// The report, in markdown.
pub fn render(r: &PropagateResults) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let n = r.drops.len();
    let _ = writeln!(
        out,
        "## cfi-lab bench propagate: {} hosts, {n} drops\n\n\
         {} lab clients run cfi-announcer (group `{GROUP}`) and enrolled themselves into a \
         cfi-server on the host (mDNS on the lab bridge only, watch on, repair_interval \
         86400) in {} ms. Each drop writes a new small file into `<data>/{GROUP}{DROP_DIR}/` \
         and is timed from just before the write until the last client holds it with its \
         content in its own root (an inotify waiter per client, started by one `docker exec` \
         before the drop; host and clients share the clock). Watch: until the server logs \
         `group changed` (inotify and the quiet period). Done: until it logs `propagation \
         done`. Server CPU: from the drop to done. Machine CPU: every process, all cores, \
         from the drop to the last arrival, and as a share of all cores meanwhile.\n",
        r.hosts,
        r.hosts,
        ms(r.enroll_ms)
    );
    let _ = writeln!(
        out,
        "| drop | first ms | median ms | all hosts ms | watch ms | done ms | server CPU ms | \
         machine CPU ms | busy |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (k, d) in r.drops.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {k} | {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
            ms(d.first_ms),
            ms(d.median_ms),
            ms(d.all_ms),
            ms_or_dash(d.watch_ms),
            ms_or_dash(d.done_ms),
            ms(d.server_cpu_ms),
            ms(d.machine_cpu_ms),
            d.machine_busy * 100.0
        );
    }
    let verdict = |v: Option<f64>, target: f64| match v {
        Some(v) if v <= target => "met",
        Some(_) => "**not met**",
        None => "-",
    };
    let watch: Vec<f64> = r.drops.iter().filter_map(|d| d.watch_ms).collect();
    let first: Vec<f64> = r.drops.iter().map(|d| d.first_ms).collect();
    let _ = writeln!(
        out,
        "\n| over the drops | all hosts ms | target | verdict |\n| --- | ---: | --- | --- |\n\
         | p50 | {} | ≤ {} | {} |\n| p99 (nearest rank) | {} | ≤ {} | {} |\n| max | {} | | |\n\
         | median watch | {} | | |\n| median first host | {} | | |",
        ms_or_dash(r.p50_ms),
        ms(TARGET_P50_MS),
        verdict(r.p50_ms, TARGET_P50_MS),
        ms_or_dash(r.p99_ms),
        ms(TARGET_P99_MS),
        verdict(r.p99_ms, TARGET_P99_MS),
        ms_or_dash(r.max_ms),
        ms_or_dash(median(&watch)),
        ms_or_dash(median(&first)),
    );
    let per_drop = r.server_cpu_ms / n.max(1) as f64;
    let _ = writeln!(
        out,
        "\nServer CPU during the drops: {} ms in all, {} ms per drop, {:.2} ms per host and \
         drop; idle with every client connected: {:.1} ms/s.",
        ms(r.server_cpu_ms),
        ms(per_drop),
        per_drop / r.hosts.max(1) as f64,
        r.idle_cpu_ms_per_s
    );
    out
}
