//! End-to-end tests on the lab's real client hosts (see `cfi_lab::lab`).
//!
//! They need docker, root for the first run (it builds the client image
//! with debootstrap; later runs reuse it) and for mDNS between clients (a
//! firewall rule, see `cfi_lab::bridge`), and the workspace's `cfi-agent`
//! built (`cargo build --bins`, or `cargo test --workspace`). They never
//! skip: without docker they fail, saying what to install or start.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{Context, Result, bail, ensure};
use cfi_lab::command;
use cfi_lab::image::{ANNOUNCER_PATH, AVAHI_LOG_PATH, CLIENT_TOML_PATH};
use cfi_lab::lab::{self, AGENT_PATH, ClientSpec, Lab};

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

#[test]
fn every_client_has_a_machine_id_of_its_own_and_keeps_it() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start(2)?;
    // One started later, from the same image, is as fresh.
    let added = lab.add_client(ClientSpec::default())?;
    ensure!(added == 2, "the added client is number {added}");
    assert_ssh_works(&lab, added)?;

    let ids = (0..3)
        .map(|i| lab.machine_id(i))
        .collect::<Result<Vec<_>>>()?;
    for (i, id) in ids.iter().enumerate() {
        ensure!(
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "machine id of {}: {id:?}",
            lab.client(i).name
        );
        // dbus and avahi read dbus's copy: a link to it.
        let dbus = lab.read_file(i, "/var/lib/dbus/machine-id")?;
        ensure!(
            String::from_utf8_lossy(&dbus).trim() == id,
            "dbus's machine id in {i}"
        );
    }
    ensure!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "clients of one image share a machine id: {ids:?}"
    );

    lab.stop(added)?;
    ensure!(
        lab.machine_id(added)? == ids[added],
        "a stopped client's machine id changed"
    );
    lab.start_client(added)?;
    ensure!(
        lab.machine_id(added)? == ids[added],
        "a restart changed the machine id"
    );
    Ok(())
}

#[test]
fn the_host_is_the_gateway_on_the_lab_bridge() -> Result<()> {
    lab::init_test_logging();
    let lab = Lab::start(1)?;
    let bridge = lab.bridge_interface()?;
    let gateway = lab.gateway()?;
    ensure!(
        bridge.len() <= 15,
        "{bridge} is too long for an interface name"
    );

    // The kernel's view: the bridge holds the gateway's address.
    let out = command::checked(
        Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &bridge]),
        Duration::from_secs(10),
    )?;
    let addrs = String::from_utf8_lossy(&out.stdout);
    ensure!(
        addrs.contains(&format!(" {gateway}/")),
        "{bridge} does not have {gateway}: {addrs}"
    );

    // A client reaches a socket the host binds there (perl-base is in
    // minbase; the image has no other socket tool).
    let socket = UdpSocket::bind(SocketAddr::from((gateway, 0)))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let port = socket.local_addr()?.port();
    let send = format!(
        "use Socket; socket(my $s, PF_INET, SOCK_DGRAM, 0) or die \"socket: $!\"; \
         defined(send($s, 'hello host', 0, pack_sockaddr_in({port}, inet_aton('{gateway}')))) \
         or die \"send: $!\";"
    );
    let out = lab.exec(0, &["perl", "-e", &send])?;
    ensure!(
        out.status.success(),
        "sending to {gateway}:{port} from {}: {}",
        lab.client(0).name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut buf = [0u8; 64];
    let (n, from) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("nothing from {} at {gateway}:{port}", lab.client(0).name))?;
    ensure!(&buf[..n] == b"hello host" && from.ip() == lab.client(0).addr);

    let logs = lab.logs(0)?;
    ensure!(logs.contains("Server listening"), "docker logs: {logs}");
    ensure!(
        lab.announcer_log(0)?.is_empty(),
        "an announcer log without an announcer"
    );
    Ok(())
}

/// Time a service published in one client gets to show in another's
/// browse: mDNS announces at once (RFC 6762, 8.3) and avahi-browse asks, so
/// a second or two is normal.
const BROWSE_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn avahi_in_one_client_sees_a_service_another_publishes() -> Result<()> {
    lab::init_test_logging();
    let lab = Lab::start_with(vec![ClientSpec::default().avahi(true); 2])?;
    let publisher = lab.client(0);
    lab.sh(
        0,
        "avahi-publish -s test _cfi-probe._tcp 22 k=v > /var/log/probe-publish.log 2>&1 &",
    )?;

    // `=;eth0;IPv4;test;_cfi-probe._tcp;local;<host>.local;<addr>;22;"k=v"`
    let wanted = format!(
        "=;eth0;IPv4;test;_cfi-probe._tcp;local;{}.local;{};22;\"k=v\"",
        publisher.name, publisher.addr
    );
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < BROWSE_WITHIN {
        let out = lab.exec_limited(
            1,
            &[
                "avahi-browse",
                "--resolve",
                "--terminate",
                "--parsable",
                "_cfi-probe._tcp",
            ],
            Duration::from_secs(10),
        )?;
        last = format!(
            "{} {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == wanted)
        {
            tracing::info!(took = ?started.elapsed(), "the other client resolved the service");
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    let mut report = String::new();
    for i in 0..2 {
        let avahi = lab.read_file(i, AVAHI_LOG_PATH).unwrap_or_default();
        report.push_str(&format!(
            "\n--- {} docker logs:\n{}\n--- its {AVAHI_LOG_PATH}:\n{}",
            lab.client(i).name,
            lab.logs(i).unwrap_or_else(|e| format!("{e:#}")),
            String::from_utf8_lossy(&avahi)
        ));
    }
    let publish = lab
        .read_file(0, "/var/log/probe-publish.log")
        .unwrap_or_default();
    bail!(
        "{} did not resolve the service {} publishes within {BROWSE_WITHIN:?}\n\
         (mDNS between two clients needs the lab's rule in iptables' DOCKER-USER chain, \
         see cfi_lab::bridge: a warning says when the lab could not add it)\n\
         wanted {wanted}\nlast browse: {last}\navahi-publish: {}{report}",
        lab.client(1).name,
        publisher.name,
        String::from_utf8_lossy(&publish)
    )
}

/// Stands in for cfi-announcer: records its arguments and the SIGTERM it
/// gets, writes to its log, and waits.
const FAKE_ANNOUNCER: &str = r#"#!/bin/sh
echo "argv: $*" >> /tmp/fake-announcer.out
trap 'echo "got TERM" >> /tmp/fake-announcer.out; exit 0' TERM
echo "fake announcer up"
while :; do
    sleep 1 &
    wait $!
done
"#;

#[test]
fn the_start_up_runs_the_announcer_with_its_config_and_passes_it_sigterm() -> Result<()> {
    lab::init_test_logging();
    let dir = tempfile::tempdir()?;
    let fake = dir.path().join("cfi-announcer");
    fs::write(&fake, FAKE_ANNOUNCER)?;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755))?;
    let toml = "group = \"lab\"\n# a second line\n";
    let mut lab = Lab::start_with(vec![
        ClientSpec::default().client_toml(toml).announcer(&fake),
    ])?;

    ensure!(lab.read_file(0, CLIENT_TOML_PATH)? == toml.as_bytes());
    let out = lab.exec(0, &["test", "-x", ANNOUNCER_PATH])?;
    ensure!(
        out.status.success(),
        "{ANNOUNCER_PATH} not executable in the client"
    );
    let copy = dir.path().join("record");
    // docker cp: it reads a stopped container too.
    let record = |lab: &Lab| -> Result<String> {
        lab.copy_out(0, "/tmp/fake-announcer.out", &copy)?;
        Ok(fs::read_to_string(&copy)?)
    };
    // sshd answers before the announcer starts: give it a moment.
    let argv = "argv: --config /etc/cfi/client.toml\n";
    wait_until(Duration::from_secs(5), || {
        Ok(record(&lab).unwrap_or_default() == argv)
    })
    .with_context(|| format!("the announcer did not start: {:?}", record(&lab)))?;

    let stopping = Instant::now();
    lab.stop(0)?;
    let took = stopping.elapsed();
    let recorded = record(&lab)?;
    ensure!(
        recorded == format!("{argv}got TERM\n"),
        "the announcer's record after docker stop ({took:?}): {recorded:?}\ndocker logs:\n{}",
        lab.logs(0)?
    );
    tracing::info!(?took, "docker stop, the announcer's SIGTERM included");

    // A restart runs it again.
    lab.start_client(0)?;
    wait_until(Duration::from_secs(5), || {
        Ok(record(&lab).unwrap_or_default() == format!("{argv}got TERM\n{argv}"))
    })
    .with_context(|| format!("no second start of the announcer: {:?}", record(&lab)))?;
    let log = lab.announcer_log(0)?;
    ensure!(
        log == "fake announcer up\nfake announcer up\n",
        "announcer log: {log:?}"
    );
    let logs = lab.logs(0)?;
    ensure!(
        logs.contains("Received signal 15"),
        "sshd did not get docker stop's SIGTERM either:\n{logs}"
    );
    Ok(())
}

/// Polls `done` every 100 ms until it says yes; fails after `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if started.elapsed() >= limit {
            bail!("not done within {limit:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}
