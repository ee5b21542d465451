//! The Debian packages on a clean lab container: built here with
//! `scripts/package` (dpkg-buildpackage, then lintian with no errors),
//! installed, upgraded and purged with dpkg. An admin's group trees and
//! edited config survive the upgrade, the server key is made once and
//! kept, the binaries run from where the packages put them, and purge
//! removes what the packages own and nothing of the admin's.
//!
//! Under a real systemd ([`SystemdHost`]) the packages' units start on
//! install, the daemon serves the CLI and syncs its own host (which its
//! announcer enrolled), `systemctl stop` stops them cleanly, and purge
//! stops what runs (issue 6).
//!
//! Needs docker and root, like the rest of the lab. Never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cfi_lab::lab::{self, Lab};
use cfi_lab::systemd_host::SystemdHost;
use cfi_lab::{command, debs};

/// The packages of [`debs::DEBS_ENV`], or built once for all the tests of
/// this binary: they run at once, and two `scripts/package` in one tree would trip over each other.
fn packages() -> Result<(PathBuf, PathBuf)> {
    static BUILT: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
    // A test that panicked holding the lock has not stored a build.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(paths) = &*built {
        return Ok(paths.clone());
    }
    // scripts/test builds them before the tests and says where.
    let paths = match debs::configured()? {
        Some(p) => (p.server_deb.clone(), p.client_deb.clone()),
        None => build_packages()?,
    };
    *built = Some(paths.clone());
    Ok(paths)
}

/// Builds the packages from this checkout; their paths (server, client).
fn build_packages() -> Result<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    command::checked(
        Command::new(root.join("scripts/package")).current_dir(&root),
        Duration::from_secs(3600),
    )
    .context("scripts/package failed")?;
    let dir = root.join("target/debian");
    let find = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
            })
            .with_context(|| format!("no {prefix}*.deb in {}", dir.display()))
    };
    Ok((find("cfi-server_")?, find("cfi-client_")?))
}

#[test]
fn packages_install_upgrade_and_purge_keeping_the_admins_files() -> Result<()> {
    lab::init_test_logging();
    let (server, client) = packages()?;
    let lab = Lab::start_clean(1)?;
    lab.copy_in(0, &server, "/tmp/cfi-server.deb")?;
    lab.copy_in(0, &client, "/tmp/cfi-client.deb")?;

    // Install: binaries where the units and the forced command expect them,
    // the skeleton in /var/lib/cfi, one server key, docs generated.
    // Nothing of cfi in the container before (the lab may write a client
    // config for its own tests).
    lab.sh(
        0,
        "rm -rf /etc/cfi && dpkg -i /tmp/cfi-server.deb /tmp/cfi-client.deb",
    )?;
    for bin in [
        "/usr/bin/cfi",
        "/usr/sbin/cfi-server",
        "/usr/sbin/cfi-announcer",
        "/usr/lib/cfi/cfi-agent",
    ] {
        let v = lab.sh(0, &format!("{bin} --version"))?;
        ensure!(v.contains("0.1.0"), "{bin} --version: {v}");
    }
    let listed = lab.sh(0, "ls /var/lib/cfi")?;
    ensure!(
        listed.contains("all"),
        "no skeleton in /var/lib/cfi: {listed}"
    );
    let key = lab.sh(0, "stat -c %a /var/lib/cfi-server/server_key && cfi-server --state-dir /var/lib/cfi-server pubkey --fingerprint")?;
    ensure!(key.starts_with("600\n") && key.contains("SHA256:"), "{key}");
    let conffiles = lab.sh(
        0,
        "dpkg-query -W -f '${Conffiles}\\n' cfi-server cfi-client",
    )?;
    ensure!(
        conffiles.contains("/etc/cfi/server.toml") && conffiles.contains("/etc/cfi/client.toml"),
        "{conffiles}"
    );
    for doc in [
        "/usr/share/man/man1/cfi-pkgs-sync.1.gz",
        "/usr/share/man/man8/cfi-server.8.gz",
        "/usr/share/man/man8/cfi-announcer.8.gz",
        "/usr/share/bash-completion/completions/cfi",
        "/usr/share/zsh/vendor-completions/_cfi",
        "/lib/systemd/system/cfi-server.service",
        "/lib/systemd/system/cfi-announcer.service",
    ] {
        lab.sh(0, &format!("test -s {doc}"))
            .with_context(|| format!("{doc} missing"))?;
    }

    // The installed daemon serves the installed CLI.
    lab.sh(
        0,
        "cfi-server --socket /tmp/c.sock > /tmp/server.log 2>&1 & pid=$!; \
         for i in $(seq 50); do cfi --socket /tmp/c.sock status >/dev/null 2>&1 && break; sleep 0.2; done; \
         cfi --socket /tmp/c.sock status --json; s=$?; kill $pid; wait $pid; exit $s",
    )
    .context("the installed cfi-server did not answer the installed cfi")?;

    // The admin's work, then an upgrade to a newer build of the same
    // packages: all of it stays, the key too.
    lab.sh(
        0,
        "mkdir -p /var/lib/cfi/lab/etc && echo 'lab motd' > /var/lib/cfi/lab/etc/motd && \
         echo 'repair_interval = 60' >> /etc/cfi/server.toml",
    )?;
    lab.sh(
        0,
        "set -e; for p in cfi-server cfi-client; do \
           rm -rf /tmp/x && dpkg-deb -R /tmp/$p.deb /tmp/x && \
           sed -i 's/^Version: .*/&+upgrade1/' /tmp/x/DEBIAN/control && \
           dpkg-deb -b /tmp/x /tmp/$p-new.deb >/dev/null; done; \
         dpkg -i /tmp/cfi-server-new.deb /tmp/cfi-client-new.deb",
    )?;
    let after = lab.sh(
        0,
        "cfi-server --state-dir /var/lib/cfi-server pubkey --fingerprint",
    )?;
    ensure!(
        key.ends_with(&after),
        "the upgrade changed the server key: {key} -> {after}"
    );
    ensure!(
        lab.read_file(0, "/var/lib/cfi/lab/etc/motd")? == b"lab motd\n",
        "the upgrade lost the admin's group tree"
    );
    ensure!(
        lab.sh(0, "tail -1 /etc/cfi/server.toml")? == "repair_interval = 60\n",
        "the upgrade lost the admin's server.toml"
    );
    let version = lab.sh(0, "dpkg-query -W -f '${Version}' cfi-server")?;
    ensure!(version.ends_with("+upgrade1"), "not upgraded: {version}");

    // Purge: what the packages own goes, the admin's trees stay.
    lab.sh(0, "dpkg --purge cfi-client cfi-server")?;
    let gone = lab.sh(
        0,
        "for p in /usr/bin/cfi /usr/lib/cfi/cfi-agent /var/lib/cfi-server /var/lib/cfi-client /etc/cfi; do \
           test -e $p && echo \"left: $p\"; done; true",
    )?;
    ensure!(gone.is_empty(), "purge left files behind: {gone}");
    ensure!(
        lab.read_file(0, "/var/lib/cfi/lab/etc/motd")? == b"lab motd\n",
        "purge removed the admin's group trees"
    );
    Ok(())
}

#[test]
fn under_systemd_the_units_start_serve_stop_and_go_with_the_packages() -> Result<()> {
    lab::init_test_logging();
    let (server, client) = packages()?;
    // No clients: the lab is the network the systemd host joins.
    let lab = Lab::start_clean(0)?;
    let host = SystemdHost::start(&lab)?;
    host.copy_in(&server, "/tmp/cfi-server.deb")?;
    host.copy_in(&client, "/tmp/cfi-client.deb")?;

    // debhelper's postinst enables and starts both units.
    host.sh("dpkg -i /tmp/cfi-server.deb /tmp/cfi-client.deb")?;
    for unit in ["cfi-server", "cfi-announcer"] {
        wait_until(
            &host,
            Duration::from_secs(20),
            &format!("{unit} active"),
            || Ok(is_active(&host, unit)? == "active"),
        )?;
    }
    wait_until(&host, Duration::from_secs(20), "cfi status answers", || {
        Ok(host.exec(&["cfi", "status", "--json"])?.status.success())
    })?;
    let status: serde_json::Value = serde_json::from_str(&host.sh("cfi status --json")?)
        .context("cfi status --json is not JSON")?;
    ensure!(
        status["state_dir"] == "/var/lib/cfi-server",
        "cfi status: {status}"
    );

    // The announcer saw the server's mDNS and pinned its key in its state
    // dir; the server enrolled this host (accept = "auto") through the key
    // the announcer installed. A sync then reads the group tree inside the
    // server's sandbox: RestrictSUIDSGID= failed every openat2 with ENOSYS.
    wait_until(
        &host,
        Duration::from_secs(30),
        "the announcer pins the server key",
        || {
            Ok(host
                .exec(&["test", "-s", "/var/lib/cfi-client/server_key.pub"])?
                .status
                .success())
        },
    )?;
    wait_until(
        &host,
        Duration::from_secs(30),
        "the server enrolls its own host",
        || {
            let clients: serde_json::Value = serde_json::from_str(&host.sh("cfi clients --json")?)
                .context("cfi clients --json is not JSON")?;
            Ok(clients.as_array().is_some_and(|all| {
                all.iter()
                    .any(|c| c["host"] == host.name() && c["state"] == "online")
            }))
        },
    )?;
    host.sh("echo 'motd from the units test' > /var/lib/cfi/all/etc/motd")?;
    let synced = host.exec(&["cfi", "sync"])?;
    ensure!(
        synced.status.success(),
        "cfi sync under systemd failed ({}): {}{}\njournal:\n{}",
        synced.status,
        String::from_utf8_lossy(&synced.stdout),
        String::from_utf8_lossy(&synced.stderr),
        host.journal("cfi-server")
    );
    ensure!(
        host.sh("cat /etc/motd")? == "motd from the units test\n",
        "cfi sync did not write /etc/motd: {}",
        String::from_utf8_lossy(&synced.stdout)
    );

    // No assertion: the score is for the record (and the report).
    let security = host.sh("systemd-analyze security --no-pager cfi-server | tail -1")?;
    tracing::info!(
        score = security.trim(),
        "systemd-analyze security cfi-server"
    );

    // A clean stop: the daemon exits 0 on SIGTERM, systemd removes the
    // runtime dir and with it the socket. Then it starts again.
    host.sh("systemctl stop cfi-server")?;
    ensure!(is_active(&host, "cfi-server")? == "inactive");
    let result = host.sh("systemctl show -p Result --value cfi-server")?;
    ensure!(
        result.trim() == "success",
        "cfi-server stopped with {result}: {}",
        host.journal("cfi-server")
    );
    ensure!(
        !host
            .exec(&["test", "-e", "/run/cfi/control.sock"])?
            .status
            .success(),
        "the control socket outlived the daemon"
    );
    host.sh("systemctl start cfi-server")?;
    wait_until(
        &host,
        Duration::from_secs(20),
        "cfi status answers again",
        || Ok(host.exec(&["cfi", "status"])?.status.success()),
    )?;
    ensure!(is_active(&host, "cfi-announcer")? == "active");

    // Purge stops what runs (debhelper's prerm) before the files go. The
    // agents the server's sessions ran end when their connections do.
    host.sh("dpkg --purge cfi-client cfi-server")?;
    let cfi_processes = || {
        host.sh("cat /proc/[0-9]*/comm 2>/dev/null | \
             grep -x -e cfi-server -e cfi-announcer -e cfi-agent || true")
    };
    wait_until(
        &host,
        Duration::from_secs(10),
        "cfi process gone after purge",
        || Ok(cfi_processes()?.is_empty()),
    )
    .with_context(|| format!("still running: {}", cfi_processes().unwrap_or_default()))?;
    for unit in ["cfi-server", "cfi-announcer"] {
        let state = is_active(&host, unit)?;
        ensure!(state == "inactive", "{unit} is {state} after purge");
    }
    Ok(())
}

/// `systemctl is-active unit`'s answer (it exits non-zero for all but
/// "active", which is an answer here, not a failure).
fn is_active(host: &SystemdHost, unit: &str) -> Result<String> {
    let out = host.exec(&["systemctl", "is-active", unit])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Polls `done` until it holds; fails after `limit`, naming `what` and
/// quoting the units' journals.
fn wait_until(
    host: &SystemdHost,
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "no {what} within {limit:?}\ncfi-server:\n{}\ncfi-announcer:\n{}",
                host.journal("cfi-server"),
                host.journal("cfi-announcer")
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}
