//! `cfi-server` and `cfi` end to end, as an admin runs them: the daemon with
//! a static client list of three lab hosts (real OpenSSH sshd, `cfi-agent`
//! as the forced command of the server's key), driven by the `cfi` binary
//! over the control socket. Sync of two groups byte for byte, a one-file
//! change, `cfi exec` with exit codes, stdin, `--gather`, `--script` and
//! `--json`, a stopped client reported unreachable while the others
//! succeed, and a changed host key refused until `cfi forget`.
//!
//! Needs docker and root (the lab builds its image) and the workspace's
//! binaries built (`cargo build --bins`). Never skips.

mod common;

use std::fs;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cfi_lab::lab::{self, Lab};
use serde_json::Value;

use common::daemon::{self, Server};
use common::{BASE, assert_same_tree, effective, write_file, write_tree};

/// The groups of the lab's three clients.
const GROUPS: [&str; 3] = ["lab", "lab", "other"];

/// Starts the daemon for the lab: clients 0 and 1 in group `lab`, client 2
/// in `other`, by address.
fn start_server(lab: &Lab) -> Result<Server> {
    daemon::start_static(lab, &GROUPS, "")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hosts(v: &Value) -> Result<Vec<Value>> {
    Ok(v["hosts"]
        .as_array()
        .context("no hosts in the answer")?
        .clone())
}

#[test]
fn cfi_syncs_groups_and_runs_commands_through_the_daemon() -> Result<()> {
    lab::init_test_logging();
    let agent = lab::built_binary("cfi-agent")?;
    let mut lab = Lab::start(3)?;
    lab.install_agent_everywhere(&agent)?;
    let mut server = start_server(&lab)?;
    let name = |i: usize| lab.client(i).addr.to_string();
    let data = server.data();

    // The pool connects to every listed client by itself.
    let rows = server.wait_for_state("online", Duration::from_secs(30))?;
    let groups: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["group"].as_str())
        .collect();
    // `other` has no directory yet: its client counts as unknown.
    ensure!(groups == ["lab", "lab", "unknown"], "{rows}");

    // Two groups over a common all/: every client gets its own group's
    // tree, byte for byte.
    write_tree(&data.join("lab"))?;
    write_tree(&data.join("other"))?;
    write_file(
        &data.join("other").join(BASE).join("hello.txt"),
        b"other group\n",
        0o644,
    )?;
    fs::create_dir_all(data.join("all").join(BASE))?;
    write_file(
        &data.join("all").join(BASE).join("motd"),
        b"for everyone\n",
        0o644,
    )?;
    let answer = server.json(&["sync"], 0)?;
    ensure!(answer["ok"] == 3, "{answer:#}");
    let expected = tempfile::tempdir()?;
    let lab_tree = effective(&data, "lab", expected.path())?;
    let other_tree = effective(&data, "other", expected.path())?;
    assert_same_tree(&lab, 0, &lab_tree)?;
    assert_same_tree(&lab, 1, &lab_tree)?;
    assert_same_tree(&lab, 2, &other_tree)?;

    // One file of one group changes: only that file moves, only there.
    write_file(
        &data.join("lab").join(BASE).join("conf/app.conf"),
        b"[app]\nlevel = 4\n",
        0o640,
    )?;
    let answer = server.json(&["sync", "-g", "lab"], 0)?;
    let passes = hosts(&answer)?;
    ensure!(passes.len() == 2, "{answer:#}");
    for p in &passes {
        // The daemon remembered the manifest these clients applied: only
        // the change to the file list travels.
        ensure!(p["report"]["manifest"] == "delta", "{p:#}");
        let changes = p["report"]["changes"].as_array().context("no changes")?;
        ensure!(
            changes.len() == 1 && changes[0]["path"] == format!("{BASE}/conf/app.conf"),
            "{p:#}"
        );
    }
    let lab_tree = effective(&data, "lab", &expected.path().join("2"))?;
    assert_same_tree(&lab, 0, &lab_tree)?;
    let rows = server.json(&["clients"], 0)?;
    ensure!(rows[0]["last_sync"].is_i64(), "{rows:#}");

    // exec: `host: line`, every host, exit 0.
    let out = server.cfi(&["exec", "-a", "--", "uname", "-n"])?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.code() == Some(0), "{stdout}{stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..3)
        .map(|i| format!("{}: {}", name(i), lab.client(i).name))
        .collect();
    want.sort();
    ensure!(lines == want, "{stdout}");

    // Commands are started by the agent's runner on the pooled connection,
    // not by a new SSH session each.
    let answer = server.json(&["exec", "-a", "--", "cat", "/proc/$PPID/comm"], 0)?;
    for h in hosts(&answer)? {
        ensure!(h["stdout"] == "cfi-agent\n", "{answer:#}");
    }

    // A non-zero exit on one host: exit 1, the host named.
    let out = server.cfi(&[
        "exec",
        "-g",
        "lab",
        "--",
        &format!("test $(uname -n) != {} || exit 3", lab.client(1).name),
    ])?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.code() == Some(1), "{stdout}{stderr}");
    ensure!(
        stderr.contains(&format!("{}: exited with status 3", name(1))),
        "{stderr}"
    );

    // stdin goes to every host.
    let out = server.cfi_with(&["exec", "-a", "--", "tr", "a-z", "A-Z"], Some(b"shout\n"))?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.code() == Some(0), "{stdout}{stderr}");
    ensure!(stdout.matches(": SHOUT\n").count() == 3, "{stdout}");

    // --gather folds identical outputs under one header.
    let out = server.cfi(&["exec", "-a", "--gather", "--", "echo", "same"])?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.code() == Some(0), "{stdout}{stderr}");
    ensure!(stdout.matches("same").count() == 1, "{stdout}");
    ensure!(
        stdout.lines().filter(|l| l.starts_with("---")).count() == 2,
        "{stdout}"
    );

    // --script ships a local script with its arguments.
    let script = server.dir.path().join("probe.sh");
    fs::write(
        &script,
        "#!/bin/sh\necho \"$1 $2 from $(uname -n)\"\nexit 4\n",
    )?;
    let answer = server.json(
        &[
            "exec",
            "-w",
            &name(2),
            "--script",
            script.to_str().unwrap(),
            "--",
            "hello",
            "two words",
        ],
        1,
    )?;
    let h = &hosts(&answer)?[0];
    ensure!(
        h["status"] == 4 && h["stdout"] == format!("hello two words from {}\n", lab.client(2).name),
        "{answer:#}"
    );

    // A stopped client and one cut off the network: unreachable (exit 2)
    // while the other succeeds. The cut one's pooled connection looks
    // alive; its silence must be noticed within the connect timeout, not
    // after the command timeout.
    lab.stop(2)?;
    lab.disconnect(0)?;
    let started = Instant::now();
    let answer = server.json(&["exec", "-a", "--", "true"], 2)?;
    let took = started.elapsed();
    ensure!(
        answer["ok"] == 1 && answer["unreachable"] == 2,
        "{answer:#}"
    );
    let mut gone: Vec<String> = hosts(&answer)?
        .into_iter()
        .filter(|h| h["result"] == "unreachable")
        .filter_map(|h| h["host"].as_str().map(str::to_owned))
        .collect();
    gone.sort();
    let mut want = vec![name(0), name(2)];
    want.sort();
    ensure!(gone == want, "{answer:#}");
    eprintln!("two unreachable clients reported after {took:?} (connect timeout 3 s)");

    // A client whose host key changed is refused until forgotten.
    lab.sh(
        1,
        "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' \
         -f /etc/ssh/ssh_host_ed25519_key && pkill -f '^sshd: root' || true",
    )?;
    // A command racing the lost connection fails as "connection lost";
    // the daemon notices the loss within a keepalive, and every contact
    // after it meets the new key.
    let started = Instant::now();
    while server.json(&["clients"], 0)?[1]["state"] == "online" {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon did not notice the lost connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = server.cfi(&["exec", "-w", &name(1), "--", "true"])?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.code() == Some(2), "{stdout}{stderr}");
    ensure!(stderr.contains("host key"), "{stderr}");
    let rows = server.json(&["clients"], 0)?;
    ensure!(rows[1]["state"] == "hostkey-changed", "{rows:#}");
    let out = server.cfi(&["forget", &name(1)])?;
    ensure!(out.status.success(), "{:?}", text(&out));
    let out = server.cfi(&["exec", "-w", &name(1), "--", "true"])?;
    ensure!(out.status.code() == Some(0), "{:?}", text(&out));

    // Both come back (docker may give them other addresses); the pool
    // reconnects and commands reach every client again.
    let before: Vec<String> = (0..3).map(name).collect();
    lab.start_client(2)?;
    lab.reconnect(0)?;
    let line = daemon::forced_key_line(server.dir.path())?;
    // A restarted client's start-up rewrote its authorized_keys.
    lab.authorize(2, &line)?;
    daemon::write_clients(&lab, server.dir.path(), &GROUPS)?;
    // Static clients are known by address: one that took another's old
    // address presents a key pinned for that one, and is refused, as it
    // should be. The admin who moved them forgets the old pin.
    for i in 0..3 {
        let now = lab.client(i).addr.to_string();
        if now != before[i] && before.contains(&now) {
            let out = server.cfi(&["forget", &now])?;
            ensure!(out.status.success(), "{:?}", text(&out));
        }
    }
    let mut code = None;
    for _ in 0..100 {
        code = server.cfi(&["exec", "-a", "--", "true"])?.status.code();
        if code == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(
        code == Some(0),
        "the clients did not come back: exit {code:?}\n{}",
        server.log()
    );

    // A restart keeps the pins; with a short repair interval, drift is
    // repaired without anyone asking.
    let host_keys = |rows: &Value| -> Vec<Value> {
        rows.as_array()
            .map(|a| a.iter().map(|r| r["host_key"].clone()).collect())
            .unwrap_or_default()
    };
    let pins = host_keys(&server.json(&["clients"], 0)?);
    server.restart_with("repair_interval = 1\n")?;
    let again = host_keys(&server.wait_for_state("online", Duration::from_secs(30))?);
    ensure!(
        pins == again && pins.iter().all(Value::is_string),
        "{pins:?} / {again:?}"
    );
    lab.sh(0, &format!("echo 'local hack' >> /{BASE}/hello.txt"))?;
    let want = fs::read(data.join("lab").join(BASE).join("hello.txt"))?;
    let started = Instant::now();
    while lab.read_file(0, &format!("/{BASE}/hello.txt"))? != want {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the periodic pass did not repair the drift; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}
