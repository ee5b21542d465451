//! Zero-config end to end, on real mDNS between the host and lab
//! containers: `cfi-server` on the host (its mDNS limited to the lab's
//! bridge), clients that run the real `cfi-announcer` (started by the
//! container's init, as systemd would) and real sshd with `cfi-agent` as
//! the forced command the announcer writes. No client is listed anywhere:
//! the server learns of them from their announcements only.
//!
//! A fresh client enrolls itself and gets its group; one asking for a group
//! the server lacks gets `unknown`; a file dropped into a group reaches its
//! online members, one under `all/` reaches everyone; a killed client goes
//! stale, then offline, and catches up when it comes back. A rogue server
//! announcing another key is never installed after first use; `pinned`
//! takes only its key; two keys at first use install neither; a rotation
//! signed by the pinned key is followed. `authorized_keys` keeps every
//! other byte through install and forget.
//!
//! Needs docker and root (the lab builds its image) and the workspace's
//! binaries built (`cargo build --bins`). Never skips.

mod common;

use std::fs;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cfi_lab::command;
use cfi_lab::lab::{self, ClientSpec, Lab};
use serde_json::Value;

use common::daemon::{self, Server};
use common::{BASE, assert_same_tree, effective, write_file, write_tree};

/// Where the announcer writes the server's key line in a client.
const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";

/// Starts a server whose mDNS runs on the lab's bridge only, announcing as
/// `name`, with `data/all`, `data/lab` and `data/unknown`.
fn start_server(lab: &Lab, name: &str) -> Result<Server> {
    start_server_with(lab, name, "")
}

/// [`start_server`] with `extra` lines of configuration.
fn start_server_with(lab: &Lab, name: &str, extra: &str) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for g in ["all", "lab", "unknown"] {
        fs::create_dir_all(d.join("data").join(g))?;
    }
    fs::write(
        d.join("server.toml"),
        format!(
            "data_dir = {:?}\nstate_dir = {:?}\nsocket = {:?}\nclients_file = {:?}\n\
             connect_timeout = 3\nkeepalive = 1\ncommand_timeout = 60\n\
             mdns_interfaces = [{:?}]\nmdns_name = {name:?}\n{extra}",
            d.join("data"),
            d,
            d.join("control.sock"),
            d.join("clients"),
            daemon::mdns_interface(lab)?,
        ),
    )?;
    let mut server = Server::new(dir, lab::built_binary("cfi")?).on(lab);
    server.spawn(&lab::built_binary("cfi-server")?)?;
    Ok(server)
}

/// A client running the announcer with `toml` as its configuration.
fn announcing(toml: &str) -> Result<ClientSpec> {
    Ok(ClientSpec::default()
        .announcer(lab::built_binary("cfi-announcer")?)
        .agent(lab::built_binary("cfi-agent")?)
        .client_toml(toml)
        .env("RUST_LOG", "info"))
}

/// The server's public key line, from `cfi-server pubkey` on its state dir.
fn pubkey(server: &Server, fingerprint: bool) -> Result<String> {
    let mut cmd = Command::new(lab::built_binary("cfi-server")?);
    cmd.arg("--state-dir").arg(server.dir.path()).arg("pubkey");
    if fingerprint {
        cmd.arg("--fingerprint");
    }
    let out = command::checked(&mut cmd, Duration::from_secs(30))?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The base64 field of a key line.
fn key_base64(line: &str) -> Result<&str> {
    line.split_whitespace().nth(1).context("not a key line")
}

/// Polls `check` every 200 ms until it holds or `limit` passes; the error
/// says `what` was awaited and what `context` shows then.
fn wait_until(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
    context: impl Fn() -> String,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{what}: not after {limit:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The row of `cfi clients --json` whose address is client `i`'s.
fn row(server: &Server, lab: &Lab, i: usize) -> Result<Option<Value>> {
    let addr = format!("{}:22", lab.client(i).addr);
    let rows = server.json(&["clients"], 0)?;
    Ok(rows
        .as_array()
        .context("clients: not a list")?
        .iter()
        .find(|r| r["address"] == addr.as_str())
        .cloned())
}

fn state_of(server: &Server, lab: &Lab, i: usize) -> Result<String> {
    Ok(row(server, lab, i)?
        .and_then(|r| r["state"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(not listed)".into()))
}

/// What a failed wait shows: the server's clients and log, the client's
/// announcer log.
fn evidence(server: &Server, lab: &Lab, i: usize) -> String {
    let clients = server
        .cfi(&["clients"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!(
        "cfi clients:\n{clients}\nserver log:\n{}\nannouncer log of client {i}:\n{}",
        server.log(),
        lab.announcer_log(i).unwrap_or_default()
    )
}

/// Waits until client `i` is online and has had a pass.
fn wait_enrolled(server: &Server, lab: &Lab, i: usize, limit: Duration) -> Result<Value> {
    wait_until(
        limit,
        &format!("client {i} enrolled"),
        || {
            Ok(row(server, lab, i)?
                .is_some_and(|r| r["state"] == "online" && r["last_sync"].is_number()))
        },
        || evidence(server, lab, i),
    )?;
    row(server, lab, i)?.context("enrolled client vanished")
}

fn file_on(lab: &Lab, i: usize, path: &str) -> Option<Vec<u8>> {
    lab.read_file(i, path).ok()
}

#[test]
fn clients_enroll_themselves_get_changes_at_once_and_catch_up() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start_with(Vec::new())?;
    let server = start_server(&lab, "cfi-lab-server")?;
    let data = server.data();
    write_tree(&data.join("lab"))?;
    write_file(
        &data.join("unknown/etc/cfi-unknown"),
        b"no group for you\n",
        0o644,
    )?;

    // Fresh machines boot and announce themselves; nobody lists them.
    let lab_spec = announcing("group = \"lab\"\n")?;
    for spec in [
        lab_spec.clone(),
        lab_spec,
        announcing("group = \"nosuchgroup\"\n")?,
    ] {
        lab.add_client(spec)?;
    }
    for i in 0..3 {
        let r = wait_enrolled(&server, &lab, i, Duration::from_secs(60))?;
        let want = if i < 2 { "lab" } else { "unknown" };
        ensure!(
            r["group"] == want && r["source"] == "mdns",
            "client {i}: {r:#}"
        );
    }
    let expected = tempfile::tempdir()?;
    let lab_tree = effective(&data, "lab", expected.path())?;
    assert_same_tree(&lab, 0, &lab_tree)?;
    assert_same_tree(&lab, 1, &lab_tree)?;
    ensure!(
        file_on(&lab, 2, "/etc/cfi-unknown").as_deref() == Some(&b"no group for you\n"[..]),
        "the client of an unknown group did not get unknown/"
    );

    // A file dropped into the group reaches its members by itself, and
    // only them; one under all/ reaches everyone.
    let dropped = format!("/{BASE}/dropped.conf");
    write_file(&data.join("lab").join(&dropped[1..]), b"level = 3\n", 0o644)?;
    wait_until(
        Duration::from_secs(15),
        "a dropped file on both lab members",
        || Ok((0..2).all(|i| file_on(&lab, i, &dropped).as_deref() == Some(b"level = 3\n"))),
        || evidence(&server, &lab, 0),
    )?;
    ensure!(
        file_on(&lab, 2, &dropped).is_none(),
        "the file reached another group"
    );
    write_file(&data.join("all/etc/cfi-everyone"), b"hello all\n", 0o644)?;
    wait_until(
        Duration::from_secs(15),
        "a file under all/ on every client",
        || Ok((0..3).all(|i| file_on(&lab, i, "/etc/cfi-everyone").is_some())),
        || evidence(&server, &lab, 2),
    )?;

    // Stopped: the announcer's goodbye makes it offline at once, without
    // waiting for the record to expire.
    lab.stop(2)?;
    let stopped = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the stopped client offline",
        || Ok(state_of(&server, &lab, 2)? == "offline"),
        || evidence(&server, &lab, 2),
    )?;
    ensure!(
        server.log().contains("client left mDNS"),
        "no goodbye seen after {:?}:\n{}",
        stopped.elapsed(),
        server.log()
    );

    // Killed without a goodbye: stale while its record lives, offline once
    // the server has verified it is gone.
    lab.kill(1)?;
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(60),
        "the killed client offline",
        || {
            let s = state_of(&server, &lab, 1)?;
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            Ok(s == "offline")
        },
        || evidence(&server, &lab, 1),
    )?;
    ensure!(
        seen.iter().any(|s| s == "stale"),
        "never stale on the way to offline: {seen:?}"
    );

    // While it is away the group changes; when it returns it catches up.
    write_file(&data.join("lab").join(&dropped[1..]), b"level = 4\n", 0o644)?;
    wait_until(
        Duration::from_secs(15),
        "the change on the member still online",
        || Ok(file_on(&lab, 0, &dropped).as_deref() == Some(b"level = 4\n")),
        || evidence(&server, &lab, 0),
    )?;
    lab.start_client(1)?;
    wait_until(
        Duration::from_secs(60),
        "the returning client caught up",
        || Ok(file_on(&lab, 1, &dropped).as_deref() == Some(b"level = 4\n")),
        || evidence(&server, &lab, 1),
    )?;
    ensure!(state_of(&server, &lab, 1)? == "online");
    Ok(())
}

#[test]
fn trust_policies_keep_a_rogue_server_out_and_follow_a_signed_rotation() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start_with(Vec::new())?;
    let mut real = start_server(&lab, "cfi-real")?;
    let real_key = pubkey(&real, false)?;
    let real_fp = pubkey(&real, true)?;

    // First use: the only server on the network is trusted.
    let first = lab.add_client(announcing("")?)?;
    wait_enrolled(&real, &lab, first, Duration::from_secs(60))?;

    let rogue = start_server(&lab, "cfi-rogue")?;
    let rogue_key = pubkey(&rogue, false)?;
    let rogue_fp = pubkey(&rogue, true)?;
    let installed = |lab: &Lab, i: usize| -> Result<String> {
        Ok(String::from_utf8_lossy(&lab.read_file(i, AUTHORIZED_KEYS)?).into_owned())
    };
    let ignored = |lab: &Lab, i: usize| -> Result<bool> {
        Ok(lab
            .announcer_log(i)?
            .contains(&format!("ignoring key {rogue_fp}")))
    };
    wait_until(
        Duration::from_secs(20),
        "the first-use client noticing the rogue",
        || ignored(&lab, first),
        || evidence(&real, &lab, first),
    )?;

    // Pinned: only the configured key, whatever else is announced.
    let pinned = lab.add_client(announcing(&format!(
        "trust = \"pinned\"\nserver_fingerprint = \"{real_fp}\"\n"
    ))?)?;
    wait_enrolled(&real, &lab, pinned, Duration::from_secs(60))?;
    wait_until(
        Duration::from_secs(20),
        "the pinned client ignoring the rogue",
        || ignored(&lab, pinned),
        || evidence(&real, &lab, pinned),
    )?;

    // First use with two servers announcing different keys: neither.
    let torn = lab.add_client(announcing("")?)?;
    wait_until(
        Duration::from_secs(30),
        "the torn client refusing both keys",
        || Ok(lab.announcer_log(torn)?.contains("installing neither")),
        || evidence(&real, &lab, torn),
    )?;
    for i in [first, pinned, torn] {
        let text = installed(&lab, i)?;
        ensure!(
            !text.contains(key_base64(&rogue_key)?),
            "client {i} installed the rogue key:\n{text}"
        );
        let has_real = text.contains(key_base64(&real_key)?);
        ensure!(has_real == (i != torn), "client {i}:\n{text}");
    }
    drop(rogue);

    // The real server rotates its key: clients that pinned the old one
    // follow, because the old key signed the new one.
    let mut cmd = Command::new(lab::built_binary("cfi-server")?);
    cmd.arg("--state-dir")
        .arg(real.dir.path())
        .arg("rotate-key");
    command::checked(&mut cmd, Duration::from_secs(30))?;
    let new_key = pubkey(&real, false)?;
    real.restart_with("")?;
    wait_until(
        Duration::from_secs(30),
        "the first-use client installing the rotated key",
        || Ok(installed(&lab, first)?.contains(key_base64(&new_key)?)),
        || evidence(&real, &lab, first),
    )?;
    ensure!(
        !installed(&lab, first)?.contains(key_base64(&real_key)?),
        "the old key stayed installed"
    );
    // The pinned client does not follow a rotation: its admin sets the new
    // fingerprint.
    ensure!(installed(&lab, pinned)?.contains(key_base64(&real_key)?));
    let name = row(&real, &lab, first)?.context("first client gone")?["host"]
        .as_str()
        .context("no host")?
        .to_owned();
    let out = real.json(&["exec", "-w", &name, "--", "true"], 0)?;
    ensure!(out["ok"] == 1, "exec with the new key: {out:#}");
    Ok(())
}

/// A machine that booted before any server (the server booting late after
/// a power cut) enrolls once one appears. That server is first seen from
/// its announcement, seconds into the client's browse, where mdns-sd's
/// next query is far off: the announcer queries afresh and watches that
/// query's answers for a rogue before it trusts the key.
#[test]
fn a_client_that_booted_before_any_server_enrolls_when_one_appears() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start_with(Vec::new())?;
    let client = lab.add_client(announcing("")?)?;
    wait_until(
        Duration::from_secs(30),
        "the announcer browsing",
        || Ok(lab.announcer_log(client)?.contains("announcing")),
        || lab.announcer_log(client).unwrap_or_default(),
    )?;
    // Past the browse's first two queries, with nobody answering.
    std::thread::sleep(Duration::from_secs(3));
    let server = start_server(&lab, "cfi-late-server")?;
    wait_enrolled(&server, &lab, client, Duration::from_secs(60))?;
    let log = lab.announcer_log(client)?;
    ensure!(
        log.contains("query_again=true"),
        "the announcer trusted a server seen late without querying again:\n{log}"
    );
    let key = pubkey(&server, false)?;
    let installed = String::from_utf8_lossy(&lab.read_file(client, AUTHORIZED_KEYS)?).into_owned();
    ensure!(
        installed.contains(key_base64(&key)?),
        "the server's key is not installed:\n{installed}"
    );
    Ok(())
}

#[test]
fn authorized_keys_keeps_every_other_byte_through_install_and_forget() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start_with(Vec::new())?;
    let server = start_server(&lab, "cfi-keys")?;
    let key = pubkey(&server, false)?;
    // No client config from the lab, so init does not start the announcer
    // (the cfi-client package's may be installed): the test writes the
    // admin's file first, then starts it from a path of its own.
    let announcer = "/usr/local/sbin/cfi-announcer";
    let spec = ClientSpec::default()
        .binary(lab::built_binary("cfi-announcer")?, announcer)
        .agent(lab::built_binary("cfi-agent")?);
    let i = lab.add_client(spec)?;
    let original: &[u8] = b"# admin keys \xe2\x80\x94 keep\r\n\
        ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn admin@desk\r\n\
        \n\
        from=\"10.0.0.0/8\",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn backup\n\
        # cfi-server@old kept by the admin, not cfi's: no forced agent\n\
        ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn cfi-server@old\n\
        \t  \n\xff\xfe not utf-8 comment\n";
    let host_file = tempfile::NamedTempFile::new()?;
    fs::write(host_file.path(), original)?;
    lab.copy_in(i, host_file.path(), AUTHORIZED_KEYS)?;
    lab.sh(
        i,
        &format!("chmod 0640 {AUTHORIZED_KEYS}; chown 0:0 {AUTHORIZED_KEYS}"),
    )?;
    lab.sh(i, "mkdir -p /etc/cfi && : > /etc/cfi/client.toml")?;
    lab.sh(
        i,
        &format!(
            "{announcer} --config /etc/cfi/client.toml \
             > /var/log/cfi-announcer.log 2>&1 < /dev/null & echo $! > /run/announcer.pid"
        ),
    )?;
    wait_until(
        Duration::from_secs(30),
        "the server key line installed",
        || Ok(lab.read_file(i, AUTHORIZED_KEYS)?.len() > original.len()),
        || evidence(&server, &lab, i),
    )?;
    let installed = lab.read_file(i, AUTHORIZED_KEYS)?;
    let (kept, line) = installed.split_at(original.len());
    ensure!(
        kept == original,
        "other bytes changed:\n{}",
        String::from_utf8_lossy(&installed)
    );
    let line = String::from_utf8_lossy(line);
    ensure!(
        line.starts_with("restrict,command=\"/usr/lib/cfi/cfi-agent\" ")
            && line.contains(key_base64(&key)?)
            && line.ends_with('\n')
            && line.matches('\n').count() == 1,
        "the cfi line: {line:?}"
    );
    let mode = lab.sh(i, &format!("stat -c %a:%u:%g {AUTHORIZED_KEYS}"))?;
    ensure!(mode.trim() == "640:0:0", "mode and owner not kept: {mode}");

    // forget while the announcer runs is refused; after it stops, the file
    // is the admin's again, byte for byte.
    let forget = format!("{announcer} --config /etc/cfi/client.toml forget");
    let busy = lab.exec(i, &["sh", "-c", &forget])?;
    ensure!(
        !busy.status.success()
            && String::from_utf8_lossy(&busy.stderr).contains("another cfi-announcer"),
        "forget with the announcer running: {busy:?}"
    );
    lab.sh(
        i,
        "pid=$(cat /run/announcer.pid); kill -TERM $pid; \
         while kill -0 $pid 2>/dev/null; do sleep 0.1; done",
    )?;
    lab.sh(i, &forget)?;
    ensure!(
        lab.read_file(i, AUTHORIZED_KEYS)? == original,
        "forget did not give back the admin's file"
    );
    Ok(())
}

#[test]
fn manual_accept_keeps_new_clients_pending_until_accepted() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start_with(Vec::new())?;
    let server = start_server_with(&lab, "cfi-manual", "accept = \"manual\"\n")?;
    write_file(&server.data().join("lab/etc/cfi-accepted"), b"in\n", 0o644)?;
    let i = lab.add_client(announcing("group = \"lab\"\n")?)?;
    wait_until(
        Duration::from_secs(30),
        "the new client listed as pending",
        || Ok(state_of(&server, &lab, i)? == "pending"),
        || evidence(&server, &lab, i),
    )?;
    // Its announcer trusts the server, but the server does not touch it.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(state_of(&server, &lab, i)? == "pending");
    ensure!(
        file_on(&lab, i, "/etc/cfi-accepted").is_none(),
        "synced before accept"
    );
    let name = row(&server, &lab, i)?.context("not listed")?["host"]
        .as_str()
        .context("no host")?
        .to_owned();
    let refused = server.json(&["exec", "-w", &name, "--", "true"], 2)?;
    ensure!(
        refused.to_string().contains("cfi accept"),
        "exec on a pending client: {refused:#}"
    );
    let accepted = server.json(&["accept", &name], 0)?;
    ensure!(accepted["was_pending"] == true, "{accepted:#}");
    wait_enrolled(&server, &lab, i, Duration::from_secs(30))?;
    ensure!(file_on(&lab, i, "/etc/cfi-accepted").as_deref() == Some(&b"in\n"[..]));
    Ok(())
}

/// An avahi static service file announcing client `i` as cfi-announcer
/// would, with `group` as its TXT group.
fn avahi_service(lab: &Lab, i: usize, group: &str) -> Result<()> {
    let fp = common::host_key_fingerprint(lab, i)?;
    let id = format!("{:0>32}", format!("a{i}"));
    let xml = format!(
        "<?xml version=\"1.0\" standalone='no'?>\n\
         <!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n\
         <service-group>\n  <name replace-wildcards=\"yes\">%h</name>\n  <service>\n\
         <type>_cfi-client._tcp</type>\n    <port>22</port>\n\
         <txt-record>v=1</txt-record>\n    <txt-record>id={id}</txt-record>\n\
         <txt-record>group={group}</txt-record>\n    <txt-record>hostkey={fp}</txt-record>\n\
         </service>\n</service-group>\n"
    );
    let file = tempfile::NamedTempFile::new()?;
    fs::write(file.path(), xml)?;
    lab.copy_in(i, file.path(), "/etc/avahi/services/cfi-client.service")?;
    // avahi-daemon reads it after dropping root.
    lab.sh(
        i,
        "chmod 0644 /etc/avahi/services/cfi-client.service && avahi-daemon --reload",
    )?;
    Ok(())
}

#[test]
fn avahi_sees_cfi_services_and_avahi_published_clients_are_enrolled() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start_with(Vec::new())?;
    let server = start_server(&lab, "cfi-interop")?;
    write_file(
        &server.data().join("lab/etc/cfi-interop"),
        b"via avahi\n",
        0o644,
    )?;
    let key = pubkey(&server, false)?;
    let line = format!("restrict,command=\"{}\" {key}", lab::AGENT_PATH);

    // Two machines that announce themselves with avahi, not cfi-announcer;
    // one asks for a group name that is not one.
    let avahi_client = || {
        Ok::<_, anyhow::Error>(
            ClientSpec::default()
                .avahi(true)
                .agent(lab::built_binary("cfi-agent")?),
        )
    };
    let good = lab.add_client(avahi_client()?)?;
    let bad = lab.add_client(avahi_client()?)?;
    // And one running cfi-announcer, for avahi-browse to see.
    let own = lab.add_client(announcing("group = \"lab\"\n")?)?;
    for i in [good, bad] {
        lab.authorize(i, &line)?;
    }
    avahi_service(&lab, good, "lab")?;
    avahi_service(&lab, bad, "Bad Name!")?;
    for i in [good, bad, own] {
        wait_enrolled(&server, &lab, i, Duration::from_secs(60))?;
    }
    ensure!(row(&server, &lab, good)?.unwrap()["group"] == "lab");
    ensure!(row(&server, &lab, bad)?.unwrap()["group"] == "unknown");
    ensure!(file_on(&lab, good, "/etc/cfi-interop").as_deref() == Some(&b"via avahi\n"[..]));
    ensure!(
        server.log().contains("invalid group name"),
        "the bad group was not reported:\n{}",
        server.log()
    );

    // avahi on the network sees the server and cfi-announcer's client,
    // TXT records included.
    let fp = pubkey(&server, true)?;
    let client_fp = common::host_key_fingerprint(&lab, own)?;
    wait_until(
        Duration::from_secs(20),
        "avahi-browse showing both cfi services",
        || {
            let out = lab.sh(
                good,
                "avahi-browse -rtp _cfi-server._tcp; avahi-browse -rtp _cfi-client._tcp",
            )?;
            Ok(out.lines().any(|l| {
                l.starts_with("=;eth0;IPv4;cfi-interop;_cfi-server._tcp")
                    && l.contains(&format!("\"fp={fp}\""))
                    && l.contains("\"key=ssh-ed25519 ")
            }) && out.lines().any(|l| {
                l.starts_with("=;eth0;IPv4;")
                    && l.contains("_cfi-client._tcp")
                    && l.contains(&format!("\"hostkey={client_fp}\""))
                    && l.contains("\"group=lab\"")
                    && l.contains("\"v=1\"")
            }))
        },
        || {
            lab.sh(
                good,
                "avahi-browse -rtp _cfi-server._tcp; avahi-browse -rtp _cfi-client._tcp",
            )
            .unwrap_or_else(|e| e.to_string())
        },
    )?;
    Ok(())
}
