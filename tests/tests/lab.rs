//! End-to-end tests on the lab's real client hosts (see `cfi_lab::lab`).
//!
//! They need docker, root for the first run (it builds the client image
//! with debootstrap; later runs reuse it) and the workspace's `cfi-agent`
//! built (`cargo build --bins`, or `cargo test --workspace`). They never
//! skip: without docker they fail, saying what to install or start.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cfi_lab::command;
use cfi_lab::lab::{self, AGENT_PATH, Lab};

/// Limit of one ssh call, connection included (the lab sets a 3 s connect
/// timeout).
const SSH_LIMIT: Duration = Duration::from_secs(20);

/// How soon ssh must give up on a client that is gone.
const GONE_WITHIN: Duration = Duration::from_secs(8);

/// `ssh root@<client i> uname -n`, bounded.
fn ssh_uname(lab: &Lab, i: usize) -> Result<Output> {
    command::output(lab.ssh(i).args(["uname", "-n"]), SSH_LIMIT)
}

/// ssh reaches client `i`, which calls itself by its container name.
fn assert_ssh_works(lab: &Lab, i: usize) -> Result<()> {
    let client = lab.client(i);
    let out = ssh_uname(lab, i)?;
    ensure!(
        out.status.success(),
        "ssh to {} ({}) failed ({}): {}",
        client.name,
        client.addr,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let hostname = String::from_utf8_lossy(&out.stdout);
    ensure!(
        hostname.trim() == client.name,
        "ssh to {} reached {hostname:?}",
        client.addr
    );
    Ok(())
}

/// ssh to client `i` fails, and soon.
fn assert_ssh_fails_soon(lab: &Lab, i: usize) -> Result<()> {
    let client = lab.client(i);
    let started = Instant::now();
    let out = ssh_uname(lab, i)?;
    let took = started.elapsed();
    ensure!(
        !out.status.success(),
        "ssh to {} ({}) still works: {}",
        client.name,
        client.addr,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    ensure!(
        took < GONE_WITHIN,
        "ssh to the unreachable {} took {took:?} to fail",
        client.name
    );
    tracing::info!(client = client.name, ?took, "ssh failed, as it should");
    Ok(())
}

#[test]
fn clients_answer_ssh_run_the_agent_and_go_away_when_stopped() -> Result<()> {
    lab::init_test_logging();
    let started = Instant::now();
    // Before any container exists: a missing binary is the quickest failure.
    let agent = lab::built_binary("cfi-agent")?;
    let mut lab = Lab::start(2)?;
    let up = started.elapsed();

    for i in 0..2 {
        assert_ssh_works(&lab, i)?;
    }
    ensure!(
        lab.client(0).addr != lab.client(1).addr,
        "two clients, one address"
    );

    lab.install_agent(0, &agent)?;
    let out = lab.exec(0, &[AGENT_PATH, "--version"])?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && version.starts_with("cfi-agent "),
        "{AGENT_PATH} --version in {}: {} {version:?} {}",
        lab.client(0).name,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );

    lab.stop(1)?;
    assert_ssh_fails_soon(&lab, 1)?;
    // The other client does not care.
    assert_ssh_works(&lab, 0)?;
    lab.start_client(1)?;
    assert_ssh_works(&lab, 1)?;

    tracing::info!(?up, total = ?started.elapsed(), "lab smoke test");
    Ok(())
}

#[test]
fn a_disconnected_client_is_unreachable_until_reconnected() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start(1)?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), b"from the host\n")?;
    lab.copy_in(0, file.path(), "/tmp/copied")?;
    ensure!(lab.read_file(0, "/tmp/copied")? == b"from the host\n");
    let missing = lab.read_file(0, "/tmp/missing").unwrap_err();
    ensure!(
        format!("{missing:#}").contains("/tmp/missing"),
        "{missing:#}"
    );

    lab.disconnect(0)?;
    assert_ssh_fails_soon(&lab, 0)?;
    // Still running: docker exec does not go over the network.
    let hostname = lab
        .sh(0, "uname -n")
        .context("exec in a disconnected client")?;
    ensure!(hostname.trim() == lab.client(0).name);
    lab.reconnect(0)?;
    assert_ssh_works(&lab, 0)
}
