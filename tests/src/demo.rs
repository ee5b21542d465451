//! `cfi-lab demo`: the main job as a newcomer can watch it. A cfi server
//! (the real `cfi-server` daemon) and three real client hosts (containers
//! with sshd and `cfi-agent`) in two groups; the admin's `cfi` commands run
//! one after the other, each shown with what it printed; everything is
//! removed at the end.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cfi_pool::{CfiBinaries, CfiPool};
use crate::command;
use crate::lab::Lab;

/// What one `cfi` command of the demo may take.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// Runs the demo with the binaries in `bins` and the example data dir
/// `layout` (the repository's `var-lib-cfi-layout/`).
pub fn run(bins: CfiBinaries, layout: &Path) -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    command::checked(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(layout)
            .arg(&data),
        Duration::from_secs(30),
    )?;

    say(
        "Three client machines: Debian 12 containers running OpenSSH's sshd, on a network of their own",
    )?;
    let lab = Lab::start(3)?;
    for c in lab.clients() {
        note(&format!("{} at {}", c.name, c.addr))?;
    }

    say("The server: cfi-server with its data dir (var-lib-cfi-layout) and a static client list")?;
    note("two clients in group `lab`, one listed without a group (it gets `unknown`)")?;
    note("each client's root has the server's key as a forced command running cfi-agent:")?;
    let server_dir = work.path().join("server");
    fs::create_dir_all(&server_dir)?;
    let pool = CfiPool::prepare_grouped(
        bins,
        &server_dir,
        &data,
        &lab,
        &[Some("lab"), Some("lab"), None],
    )?;
    let keys = lab.sh(0, "grep cfi-agent /root/.ssh/authorized_keys")?;
    note(&format!("  {}", keys.trim()))?;
    let daemon = pool.start()?;
    wait_online(&pool, 3)?;

    say("Who is there")?;
    cfi(&pool, &["clients"])?;
    cfi(&pool, &["groups"])?;

    say("What a first sync would change, with diffs (nothing is written)")?;
    let name0 = pool.hosts()[0].clone();
    cfi(&pool, &["sync", "-w", &name0, "--dry-run"])?;

    say("The first sync: every client gets all/ overlaid by its group")?;
    cfi(&pool, &["sync"])?;
    show(&lab, 0, "cat /etc/motd")?;

    say("An admin drops a file into the group: only that file moves, only to the group")?;
    let dropped = data.join("lab/etc/cfi-demo.conf");
    fs::write(
        &dropped,
        "# dropped into /var/lib/cfi/lab/etc/\nlevel = 3\n",
    )?;
    note(&format!("wrote {}", dropped.display()))?;
    cfi(&pool, &["sync"])?;
    show(&lab, 1, "cat /etc/cfi-demo.conf")?;

    say("Someone edits a managed file on a client: the next sync repairs it and keeps their copy")?;
    lab.sh(1, "echo 'local hack' >> /etc/cfi-demo.conf")?;
    let name1 = pool.hosts()[1].clone();
    cfi(&pool, &["sync", "-w", &name1])?;
    show(&lab, 1, "ls /var/lib/cfi-client/drift/etc/")?;

    say("A command across the pool: lines stream as host: line")?;
    cfi(&pool, &["exec", "-a", "--", "uname", "-n"])?;
    say("The same output from every host, folded")?;
    cfi(
        &pool,
        &["exec", "-a", "--gather", "--", "cat", "/etc/debian_version"],
    )?;

    say(
        "A client goes down: it is reported unreachable within the connect timeout; exit status 2",
    )?;
    lab.stop(2)?;
    let started = Instant::now();
    cfi(&pool, &["exec", "-a", "--", "true"])?;
    note(&format!("took {:.1} s", started.elapsed().as_secs_f64()))?;
    cfi(&pool, &["clients"])?;

    say("The daemon")?;
    cfi(&pool, &["status"])?;

    say("Tearing down: the daemon stops on SIGTERM, the containers and their network are removed")?;
    daemon.stop()?;
    drop(lab);
    note("done")?;
    Ok(())
}

/// Waits until `cfi status` counts `n` clients online.
fn wait_online(pool: &CfiPool, n: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        let out = command::output(
            &mut pool.cli(&["status", "--json"]),
            Duration::from_secs(10),
        )?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if status["online"].as_u64() == Some(n) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the clients did not come online within 30 s: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `cfi ARGS`, showing the command line, its output and, when not 0,
/// its exit status.
fn cfi(pool: &CfiPool, args: &[&str]) -> Result<()> {
    let mut cmd = pool.cli(args);
    out(&format!("\n$ cfi {}\n", args.join(" ")))?;
    let shown = command::output_with_stdin(&mut cmd, Stdio::null(), STEP_LIMIT)
        .with_context(|| format!("cfi {}", args.join(" ")))?;
    out(&String::from_utf8_lossy(&shown.stdout))?;
    out(&String::from_utf8_lossy(&shown.stderr))?;
    if !shown.status.success() {
        out(&format!(
            "(exit status {})\n",
            shown.status.code().unwrap_or(-1)
        ))?;
    }
    Ok(())
}

/// Runs `script` in client `i` (as `docker exec` does) and shows it.
fn show(lab: &Lab, i: usize, script: &str) -> Result<()> {
    out(&format!("\n[{}]$ {script}\n", lab.client(i).name))?;
    Ok(out(&lab.sh(i, script)?)?)
}

fn say(what: &str) -> Result<(), io::Error> {
    if io::stdout().is_terminal() {
        out(&format!("\n\x1b[1m== {what}\x1b[0m\n"))
    } else {
        out(&format!("\n== {what}\n"))
    }
}

fn note(what: &str) -> Result<(), io::Error> {
    out(&format!("   {what}\n"))
}

fn out(text: &str) -> Result<(), io::Error> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}
