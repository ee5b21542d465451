//! The Debian packages on a clean lab container: built here with
//! `scripts/package` (dpkg-buildpackage, then lintian with no errors),
//! installed, upgraded and purged with dpkg. An admin's group trees and
//! edited config survive the upgrade, the server key is made once and
//! kept, the binaries run from where the packages put them, and purge
//! removes what the packages own and nothing of the admin's.
//!
//! Needs docker and root, like the rest of the lab. Never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cfi_lab::command;
use cfi_lab::lab::{self, Lab};

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
    let (server, client) = build_packages()?;
    let lab = Lab::start(1)?;
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
