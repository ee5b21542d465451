//! The SSH transport end to end: the server's russh connections to the
//! lab's real OpenSSH sshd (`cfi_lab::lab`), with `cfi-agent` installed as
//! the forced command of the server's key, as a client's announcer installs
//! it. Sync passes, ad-hoc commands, host-key pinning and an unreachable
//! client.
//!
//! Needs docker, root for the first run (the lab builds its image) and
//! `cfi-agent` built (`cargo build --bins`, or `cargo test --workspace`).
//! Never skips: without docker it fails, saying what is missing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cfi_lab::lab::{self, AGENT_PATH, Lab};
use cfi_server::ssh::{Connection, MAX_CHANNELS, ServerKey, SshError, Timeouts};
use cfi_sync::{PassReport, PushOptions, Source};
use tokio::task::JoinSet;

use common::{
    BASE, TREE_FILES, assert_same_tree, host_key_fingerprint, read_tree, write_file, write_tree,
};

/// The forced command of the server's key: the agent, told where to work;
/// what the server asks for arrives in SSH_ORIGINAL_COMMAND.
const FORCED: &str = "--root / --state-dir /var/lib/cfi-client";

/// Short, so that the unreachable cases stay quick; the keepalive below the
/// inactivity timeout as it must be.
fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        auth: Duration::from_secs(5),
        keepalive: Duration::from_secs(1),
        inactivity: Duration::from_secs(4),
        command: Duration::from_secs(30),
        pass: Duration::from_secs(120),
    }
}

fn sshd(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::new(lab.client(i).addr, 22)
}

/// One pass on every connection at once.
async fn sync_all(conns: &[Arc<Connection>], tree: &Arc<Source>) -> Result<Vec<PassReport>> {
    let mut passes = JoinSet::new();
    for (i, conn) in conns.iter().enumerate() {
        let (conn, tree) = (Arc::clone(conn), Arc::clone(tree));
        passes.spawn(async move { (i, conn.sync(tree, PushOptions::default(), None).await) });
    }
    let mut reports: Vec<Option<PassReport>> = vec![None; conns.len()];
    while let Some(done) = passes.join_next().await {
        let (i, report) = done.context("a sync task panicked")?;
        let report = report.with_context(|| format!("sync of client {i}"))?;
        ensure!(report.ok(), "client {i}: {:?}", report.errors);
        reports[i] = Some(report);
    }
    Ok(reports.into_iter().flatten().collect())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Worker threads carry the connections (keepalives, channel pumps)
    // while the test thread drives docker between steps.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to build a runtime")
}

#[test]
fn the_server_syncs_and_runs_commands_over_ssh_and_refuses_changed_or_gone_hosts() -> Result<()> {
    lab::init_test_logging();
    let started = Instant::now();
    // Before any container exists: a missing binary is the quickest failure.
    let agent = lab::built_binary("cfi-agent")?;
    let mut lab = Lab::start(3)?;
    let up = started.elapsed();
    let keys = tempfile::tempdir()?;
    let key = ServerKey::load_or_generate(&keys.path().join("server_key"))?;
    lab.install_agent_everywhere(&agent)?;
    let line = format!(
        "restrict,command=\"{AGENT_PATH} {FORCED}\" {}",
        key.public_line()
    );
    for i in 0..3 {
        lab.authorize(i, &line)?;
    }
    let data = tempfile::tempdir()?;
    let layer = data.path().join("lab");
    write_tree(&layer)?;
    let rt = runtime()?;
    let t = timeouts();

    // First contact: any host key is accepted and reported, to be pinned.
    let phase = Instant::now();
    let conns = rt.block_on(async {
        let mut conns = Vec::new();
        for i in 0..3 {
            conns.push(Arc::new(
                Connection::connect(sshd(&lab, i), "root", &key, None, &t).await?,
            ));
        }
        Ok::<_, SshError>(conns)
    })?;
    let connect_took = phase.elapsed();
    let pins: Vec<String> = conns.iter().map(|c| c.host_key()).collect();
    for (i, pin) in pins.iter().enumerate() {
        let real = host_key_fingerprint(&lab, i)?;
        ensure!(*pin == real, "client {i}: pinned {pin}, sshd has {real}");
    }

    // The first pass writes the whole tree, on all three at once.
    let phase = Instant::now();
    let reports = rt.block_on(sync_all(&conns, &read_tree(&layer)?))?;
    let first_took = phase.elapsed();
    for (i, report) in reports.iter().enumerate() {
        ensure!(
            report.files_updated == TREE_FILES && report.dirs_created == 3,
            "client {i}, first pass: {report:?}"
        );
        assert_same_tree(&lab, i, &layer)?;
    }

    // One file changes: one file travels.
    write_file(&layer.join(BASE).join("hello.txt"), b"hello again\n", 0o644)?;
    let phase = Instant::now();
    let reports = rt.block_on(sync_all(&conns, &read_tree(&layer)?))?;
    let second_took = phase.elapsed();
    for (i, report) in reports.iter().enumerate() {
        ensure!(
            report.files_updated == 1 && report.files_unchanged == TREE_FILES - 1,
            "client {i}, second pass: {report:?}"
        );
        let paths: Vec<&str> = report.changes.iter().map(|c| c.path.as_str()).collect();
        ensure!(
            paths == [format!("{BASE}/hello.txt")],
            "client {i}, second pass changed {paths:?}"
        );
        assert_same_tree(&lab, i, &layer)?;
    }

    // Ad-hoc commands: output, status, stdin, stderr, signals.
    let phase = Instant::now();
    rt.block_on(async {
        let c = &conns[0];
        let out = c.exec("echo hi; exit 3", None).await?;
        ensure!(
            out.stdout == b"hi\n" && out.stderr.is_empty() && out.status == Some(3),
            "echo hi; exit 3: {out:?}"
        );
        let out = c
            .exec("cat; echo oops >&2", Some(&b"fed through stdin"[..]))
            .await?;
        ensure!(
            out.stdout == b"fed through stdin" && out.stderr == b"oops\n" && out.success(),
            "cat: {out:?}"
        );
        let out = c.exec("kill -TERM $$", None).await?;
        ensure!(
            out.status.is_none() && out.signal.as_deref() == Some("TERM"),
            "kill -TERM $$: {out:?}"
        );
        // More commands at once than sshd has sessions: they queue.
        let mut runs = JoinSet::new();
        for n in 0..MAX_CHANNELS + 4 {
            let c = Arc::clone(c);
            runs.spawn(async move { (n, c.exec(&format!("sleep 0.3; echo {n}"), None).await) });
        }
        while let Some(done) = runs.join_next().await {
            let (n, out) = done?;
            let out = out?;
            ensure!(
                out.success() && out.stdout == format!("{n}\n").as_bytes(),
                "command {n} of many: {out:?}"
            );
        }
        Ok(())
    })?;
    let exec_took = phase.elapsed();

    // A pinned host connects; a command past its timeout is cut.
    rt.block_on(async {
        let quick = Timeouts {
            command: Duration::from_secs(1),
            ..t
        };
        let c = Connection::connect(sshd(&lab, 0), "root", &key, Some(&pins[0]), &quick).await?;
        let began = Instant::now();
        let err = c.exec("sleep 30", None).await.unwrap_err();
        ensure!(
            matches!(err, SshError::Timeout { .. }) && began.elapsed() < Duration::from_secs(5),
            "sleep 30 with a 1 s limit: {err} after {:?}",
            began.elapsed()
        );
        // The connection outlives the command.
        ensure!(c.exec("true", None).await?.success());
        Ok(())
    })?;

    // A key the client never authorized is turned away, by name.
    let stranger = ServerKey::load_or_generate(&keys.path().join("stranger_key"))?;
    let err = rt
        .block_on(Connection::connect(
            sshd(&lab, 0),
            "root",
            &stranger,
            Some(&pins[0]),
            &t,
        ))
        .unwrap_err();
    ensure!(
        matches!(err, SshError::AuthRejected { .. })
            && err.to_string().contains(&stranger.fingerprint()),
        "connect with an unauthorized key: {err}"
    );
    tracing::info!(%err, "unauthorized key refused");
    // A port where nothing listens: refused at once, by name.
    let closed_port = SocketAddr::new(lab.client(0).addr, 23);
    let err = rt
        .block_on(Connection::connect(closed_port, "root", &key, None, &t))
        .unwrap_err();
    ensure!(
        matches!(err, SshError::Connect { .. })
            && err.to_string().contains(&closed_port.to_string()),
        "connect to a closed port: {err}"
    );
    tracing::info!(%err, "closed port refused");

    // Client 1 gets a new host key (a reinstall, or an impostor): refused.
    lab.sh(
        1,
        "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub",
    )?;
    lab.stop(1)?;
    lab.start_client(1)?;
    let new_key = host_key_fingerprint(&lab, 1)?;
    ensure!(new_key != pins[1], "client 1 kept its host key");
    let err = rt
        .block_on(Connection::connect(
            sshd(&lab, 1),
            "root",
            &key,
            Some(&pins[1]),
            &t,
        ))
        .unwrap_err();
    let text = err.to_string();
    ensure!(
        matches!(err, SshError::HostKeyChanged { .. })
            && text.contains(&lab.client(1).addr.to_string())
            && text.contains(&pins[1])
            && text.contains(&new_key),
        "connect with a changed host key: {text}"
    );
    tracing::info!(%err, "changed host key refused");
    // Forgetting the pin (first use again) accepts the new key. The
    // restart rewrote authorized_keys, as a netbooted machine's would be:
    // the announcer installs the server's key again.
    lab.authorize(1, &line)?;
    let again = rt.block_on(Connection::connect(sshd(&lab, 1), "root", &key, None, &t))?;
    ensure!(
        again.host_key() == new_key,
        "client 1 presented {}",
        again.host_key()
    );
    ensure!(rt.block_on(again.exec("true", None))?.success());
    rt.block_on(again.close());

    // Client 2 stops: a new connection fails within the connect timeout,
    // and the one held notices.
    lab.stop(2)?;
    let began = Instant::now();
    let err = rt
        .block_on(Connection::connect(
            sshd(&lab, 2),
            "root",
            &key,
            Some(&pins[2]),
            &t,
        ))
        .unwrap_err();
    let took = began.elapsed();
    ensure!(
        matches!(
            err,
            SshError::ConnectTimeout { .. } | SshError::Connect { .. }
        ) && err.to_string().contains(&lab.client(2).addr.to_string())
            && took < 2 * t.connect,
        "connect to a stopped client: {err} after {took:?}"
    );
    tracing::info!(%err, ?took, "stopped client refused");
    let began = Instant::now();
    let held = rt.block_on(conns[2].exec("true", None));
    let noticed = began.elapsed();
    ensure!(
        held.is_err() && noticed < t.inactivity + t.connect,
        "a command on the held connection to the stopped client: {held:?} after {noticed:?}"
    );
    tracing::info!(err = %held.unwrap_err(), ?noticed, "held connection to the stopped client");

    // Client 0 is cut off the network: no FIN, no RST, only the keepalives
    // tell. A command on the held connection fails within their bound.
    lab.disconnect(0)?;
    let began = Instant::now();
    let cut = rt.block_on(conns[0].exec("true", None));
    let cut_noticed = began.elapsed();
    ensure!(
        cut.is_err() && conns[0].is_closed() && cut_noticed < t.inactivity + t.connect,
        "a command on the held connection to a cut-off client: {cut:?} after {cut_noticed:?}"
    );
    tracing::info!(err = %cut.unwrap_err(), ?cut_noticed, "held connection to the cut-off client");

    tracing::info!(
        ?up,
        ?connect_took,
        ?first_took,
        ?second_took,
        ?exec_took,
        refused_after = ?took,
        held_noticed_after = ?noticed,
        cut_noticed_after = ?cut_noticed,
        total = ?started.elapsed(),
        "ssh lab"
    );
    drop(conns);
    drop(rt);
    Ok(())
}
