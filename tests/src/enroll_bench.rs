//! `cfi-lab bench enroll`: how long a fresh machine takes from power-on to
//! enrolled and synced, with nobody doing anything (DESIGN.md: a netbooted
//! machine is in its group within seconds).
//!
//! A `cfi-server` on the host serves group `lab` with a generated tree
//! ([`crate::tree`], fixed seed, small files only), its mDNS kept to the
//! lab's bridge. Each run starts one fresh client container that runs
//! `cfi-announcer` ([`Lab::add_client`]) and times it from just before
//! `docker run` until `cfi clients --json`, polled every 50 ms, shows it
//! online with a `last_sync`; `add_client` returns once the client's sshd
//! answers, which splits the time into the container's start and the
//! enrollment proper. The client's copy of the tree is then compared with
//! the source ([`crate::compare`]) before the run counts. Earlier clients
//! keep running: a stopped one's address would go to the next client, and
//! the server enrolls no announced client at the address of one it still
//! remembers (see `Roster::merge` in the server).
//!
//! The logs split the enrollment further (times since `docker run`, one
//! clock for host and containers): the announcer starts announcing, the
//! server logs the client announced, the announcer installs the server's
//! key (under `first-use` trust only after watching for other servers a
//! moment), the server logs the client enrolled.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tracing::info;

use crate::compare::compare_trees;
use crate::lab::{Client, Lab};
use crate::logtime::{first_after, now_unix};
use crate::stats::{median, ms, ms_or_dash};
use crate::tree::{TreeSpec, TreeSummary};
use crate::zeroconf::{GROUP, ZeroconfBinaries, ZeroconfServer, tail};

/// Where the tree lands in a client.
pub const DEST: &str = "/srv/bench";

/// The target for docker run → enrolled (ms).
pub const TARGET_MS: f64 = 3000.0;

/// How often `cfi clients` is asked.
const POLL: Duration = Duration::from_millis(50);

/// How long one client gets to enroll.
const ENROLL_LIMIT: Duration = Duration::from_secs(120);

/// Which server keys the fresh clients accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrollTrust {
    /// The announcer's default: trust the only server seen at first use,
    /// after watching for others a moment.
    FirstUse,
    /// `trust = "pinned"` with the server's fingerprint: no wait.
    Pinned,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct EnrollPlan {
    /// Counted runs.
    pub runs: usize,
    /// Uncounted runs before them: the server's first tree read, the lab's
    /// first glibc check, and the server's mDNS finding the lab bridge up
    /// (it has no carrier until the first client is attached).
    pub warmup: usize,
    /// The group's tree.
    pub tree: TreeSpec,
    /// The clients' trust policy.
    pub trust: EnrollTrust,
    /// Where cfi's binaries are.
    pub cfi_dir: PathBuf,
    /// The data dir and the server's files go here.
    pub workdir: PathBuf,
}

/// Steps of one enrollment from the logs, ms since `docker run`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Steps {
    /// The announcer logs `announcing`.
    pub announcing_ms: Option<f64>,
    /// The server logs `client announced`.
    pub announced_ms: Option<f64>,
    /// The announcer logs `installed server key`.
    pub key_installed_ms: Option<f64>,
    /// The server logs the host key pinned: connected, the first pass
    /// starts.
    pub connected_ms: Option<f64>,
    /// The server logs `client enrolled` (connected and synced).
    pub enrolled_ms: Option<f64>,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollRun {
    /// Not counted.
    pub warmup: bool,
    /// The client's name.
    pub client: String,
    /// `docker run` → its sshd answers.
    pub sshd_ms: f64,
    /// `docker run` → `cfi clients` shows it online and synced.
    pub enrolled_ms: f64,
    /// From the logs.
    pub steps: Steps,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollResults {
    /// The tree served.
    pub tree: (TreeSpec, TreeSummary),
    /// The clients' trust policy.
    pub trust: EnrollTrust,
    /// Every run, warm-up first.
    pub runs: Vec<EnrollRun>,
    /// Over the counted runs: `docker run` → sshd.
    pub median_sshd_ms: Option<f64>,
    /// Over the counted runs: `docker run` → enrolled.
    pub median_enrolled_ms: Option<f64>,
}

/// Runs the benchmark.
pub fn run(plan: &EnrollPlan) -> Result<EnrollResults> {
    let bins = ZeroconfBinaries::in_dir(&plan.cfi_dir)?;
    let data = plan.workdir.join("data");
    let all = data.join("all");
    fs::create_dir_all(&all).with_context(|| format!("failed to create {}", all.display()))?;
    let source = data.join(GROUP).join(DEST.trim_start_matches('/'));
    info!(
        seed = plan.tree.seed,
        files = plan.tree.files,
        "generating the tree"
    );
    let summary = plan.tree.generate(&source)?;

    let mut lab = Lab::start_with(Vec::new())?;
    let server = ZeroconfServer::start(
        &bins.cfi,
        &plan.workdir.join("server"),
        &data,
        &lab,
        "repair_interval = 86400\n",
    )?;
    let toml = match plan.trust {
        EnrollTrust::FirstUse => format!("group = \"{GROUP}\"\n"),
        EnrollTrust::Pinned => format!(
            "group = \"{GROUP}\"\ntrust = \"pinned\"\nserver_fingerprint = \"{}\"\n",
            server.fingerprint()?
        ),
    };
    let spec = bins.announcing(&toml);
    let mut runs = Vec::new();
    for k in 0..plan.warmup + plan.runs {
        let warmup = k < plan.warmup;
        let started = Instant::now();
        let wall = now_unix();
        let i = lab.add_client(spec.clone())?;
        let sshd = started.elapsed();
        let client = lab.client(i).clone();
        wait_enrolled(&server, &lab, i, &client, started)?;
        let enrolled = started.elapsed();

        let copy = tempfile::tempdir().context("failed to create a temp dir")?;
        let copied = copy.path().join("copy");
        lab.copy_out(i, DEST, &copied)?;
        if let Err(diffs) = compare_trees(&source, &copied) {
            bail!(
                "{} enrolled, but its {DEST} is not the tree ({} differences), such as:\n{}",
                client.name,
                diffs.len(),
                diffs[..diffs.len().min(10)].join("\n")
            );
        }
        let steps = steps(&server, &lab, i, &client, wall)?;
        let run = EnrollRun {
            warmup,
            client: client.name,
            sshd_ms: sshd.as_secs_f64() * 1e3,
            enrolled_ms: enrolled.as_secs_f64() * 1e3,
            steps,
        };
        info!(
            run = k,
            warmup,
            sshd_ms = ms(run.sshd_ms),
            enrolled_ms = ms(run.enrolled_ms),
            key_installed_ms = ms_or_dash(run.steps.key_installed_ms),
            "enrolled and verified"
        );
        runs.push(run);
    }
    server.stop()?;
    let counted: Vec<&EnrollRun> = runs.iter().filter(|r| !r.warmup).collect();
    Ok(EnrollResults {
        tree: (plan.tree.clone(), summary),
        trust: plan.trust,
        median_sshd_ms: median(&counted.iter().map(|r| r.sshd_ms).collect::<Vec<_>>()),
        median_enrolled_ms: median(&counted.iter().map(|r| r.enrolled_ms).collect::<Vec<_>>()),
        runs,
    })
}

/// Polls `cfi clients` until client `i` is online with a pass.
fn wait_enrolled(
    server: &ZeroconfServer,
    lab: &Lab,
    i: usize,
    client: &Client,
    started: Instant,
) -> Result<()> {
    loop {
        let rows = server.clients()?;
        if rows.iter().any(|r| r.is(client) && r.enrolled()) {
            return Ok(());
        }
        if started.elapsed() > ENROLL_LIMIT {
            let row = rows.iter().find(|r| r.is(client));
            bail!(
                "{} not enrolled after {ENROLL_LIMIT:?}: {row:?}\nserver log:\n{}\n\
                 announcer log:\n{}",
                client.name,
                tail(&server.log(), 20),
                tail(&lab.announcer_log(i).unwrap_or_default(), 20)
            );
        }
        thread::sleep(POLL);
    }
}

/// The steps of client `i`'s enrollment, from the server's and its
/// announcer's logs, relative to `wall` (Unix seconds at `docker run`).
fn steps(server: &ZeroconfServer, lab: &Lab, i: usize, c: &Client, wall: f64) -> Result<Steps> {
    let announcer = lab.announcer_log(i)?;
    let log = server.log();
    let since = |t: Option<f64>| t.map(|t| (t - wall) * 1e3);
    // tracing quotes string fields.
    let service = format!("service=\"{}-", c.name);
    let host = format!("host=\"{}\"", c.name);
    Ok(Steps {
        announcing_ms: since(first_after(&announcer, &[": announcing"], wall)),
        announced_ms: since(first_after(&log, &["client announced", &service], wall)),
        key_installed_ms: since(first_after(&announcer, &["installed server key"], wall)),
        connected_ms: since(first_after(&log, &["host key pinned", &host], wall)),
        enrolled_ms: since(first_after(&log, &["client enrolled", &host], wall)),
    })
}

/// The results as JSON.
pub fn to_json(r: &EnrollResults) -> serde_json::Value {
    serde_json::json!({
        "results": r,
        "target": { "enrolled_ms": TARGET_MS, "met": r.median_enrolled_ms.map(|v| v <= TARGET_MS) },
    })
}

/// The report, in markdown.
pub fn render(r: &EnrollResults) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (spec, t) = &r.tree;
    let counted: Vec<&EnrollRun> = r.runs.iter().filter(|x| !x.warmup).collect();
    let trust = match r.trust {
        EnrollTrust::FirstUse => {
            "first-use (the default: the announcer watches for other servers a moment before \
             it installs the key)"
        }
        EnrollTrust::Pinned => "pinned (the server's fingerprint in client.toml: no wait)",
    };
    let _ = writeln!(
        out,
        "## cfi-lab bench enroll: {} runs after {} warm-up\n\n\
         Tree of group `{GROUP}`: seed {}, {} files in {} dirs, {} symlinks, {:.1} MiB, at \
         `{DEST}`. Each run starts one fresh client running cfi-announcer; times from just \
         before `docker run`. Enrolled: `cfi clients --json` (polled every 50 ms) shows it \
         online with a last sync; its copy of the tree was then compared with the source. \
         Client trust: {trust}. The step columns come from the announcer's and the server's \
         logs.\n",
        counted.len(),
        r.runs.len() - counted.len(),
        spec.seed,
        t.files,
        t.dirs,
        t.symlinks,
        t.bytes as f64 / f64::from(1 << 20)
    );
    let _ = writeln!(
        out,
        "| run | sshd up ms | announcing ms | server saw it ms | key installed ms | \
         connected ms | server: enrolled ms | enrolled ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (k, x) in r.runs.iter().enumerate() {
        let label = if x.warmup {
            format!("{k} (warm-up)")
        } else {
            k.to_string()
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            ms(x.sshd_ms),
            ms_or_dash(x.steps.announcing_ms),
            ms_or_dash(x.steps.announced_ms),
            ms_or_dash(x.steps.key_installed_ms),
            ms_or_dash(x.steps.connected_ms),
            ms_or_dash(x.steps.enrolled_ms),
            ms(x.enrolled_ms)
        );
    }
    let med = |f: fn(&EnrollRun) -> Option<f64>| {
        median(&counted.iter().filter_map(|x| f(x)).collect::<Vec<_>>())
    };
    let after_sshd = med(|x| Some(x.enrolled_ms - x.sshd_ms));
    let sshd_to_key = med(|x| x.steps.key_installed_ms.map(|k| k - x.sshd_ms));
    let key_to_connected = med(|x| between(x.steps.key_installed_ms, x.steps.connected_ms));
    let first_pass = med(|x| between(x.steps.connected_ms, x.steps.enrolled_ms));
    let verdict = match r.median_enrolled_ms {
        Some(v) if v <= TARGET_MS => "met",
        Some(_) => "**not met**",
        None => "-",
    };
    let _ = writeln!(
        out,
        "\n| medians | ms | target | verdict |\n| --- | ---: | --- | --- |\n\
         | container start → sshd up | {} | | |\n| sshd up → enrolled | {} | | |\n\
         | of which sshd up → key installed | {} | | |\n\
         | of which key installed → connected | {} | | |\n\
         | of which connected → server: enrolled (the first pass) | {} | | |\n\
         | **docker run → enrolled** | {} | ≤ {} | {verdict} |",
        ms_or_dash(r.median_sshd_ms),
        ms_or_dash(after_sshd),
        ms_or_dash(sshd_to_key),
        ms_or_dash(key_to_connected),
        ms_or_dash(first_pass),
        ms_or_dash(r.median_enrolled_ms),
        ms(TARGET_MS),
    );
    out
}

/// `to - from`, when both happened.
fn between(from: Option<f64>, to: Option<f64>) -> Option<f64> {
    from.zip(to).map(|(a, b)| b - a)
}
