//! The test apt repository (`cfi_lab::aptrepo`) on real lab clients: apt
//! installs and upgrades from it offline, prints the simulations the agent
//! of issue 5 reads, sees the lock holder's locks, and fails on the broken
//! repositories the way the package tests count on.
//!
//! Like `tests/lab.rs` they need docker, and root for the first run (the
//! client image is built with debootstrap). They never skip.

use std::process::Output;

use anyhow::{Result, ensure};
use cfi_lab::aptrepo::{self, AptLock, AptRepo, PackageSpec, SOURCES_PATH};
use cfi_lab::lab::{self, Lab};
use tempfile::TempDir;

/// The repository the tests start from: a depends on b, c on e, and d,
/// x, y alone; b and a ship a file each.
fn specs() -> Vec<PackageSpec> {
    vec![
        PackageSpec::new("cfi-test-a", "1.0")
            .depends("cfi-test-b")
            .file("/usr/share/cfi-test/a", "a 1.0\n"),
        PackageSpec::new("cfi-test-b", "1.0").file("/usr/share/cfi-test/b", "b 1.0\n"),
        PackageSpec::new("cfi-test-c", "1.0").depends("cfi-test-e"),
        PackageSpec::new("cfi-test-d", "1.0"),
        PackageSpec::new("cfi-test-e", "1.0"),
        PackageSpec::new("cfi-test-x", "1.0"),
        PackageSpec::new("cfi-test-y", "1.0"),
    ]
}

/// A one-client lab whose apt knows only the repository of `specs`.
fn lab_with_repo(specs: &[PackageSpec]) -> Result<(Lab, AptRepo, TempDir)> {
    lab::init_test_logging();
    let dir = tempfile::tempdir()?;
    let repo = AptRepo::build(&dir.path().join("repo"), specs)?;
    let lab = Lab::start(1)?;
    repo.serve_to(&lab, 0)?;
    apt_ok(&lab, &["apt-get", "update"])?;
    Ok((lab, repo, dir))
}

/// `argv` in client 0, non-interactive.
fn apt(lab: &Lab, argv: &[&str]) -> Result<Output> {
    let mut all = vec!["env", "DEBIAN_FRONTEND=noninteractive"];
    all.extend_from_slice(argv);
    lab.exec(0, &all)
}

/// [`apt`], which must succeed; its stdout.
fn apt_ok(lab: &Lab, argv: &[&str]) -> Result<String> {
    let out = apt(lab, argv)?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}):\n{}\n{}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`apt`], which must fail with apt's exit status 100; its stdout and
/// stderr.
fn apt_fails(lab: &Lab, argv: &[&str]) -> Result<(String, String)> {
    let out = apt(lab, argv)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(100),
        "`{}` exited with {} rather than 100:\n{stdout}\n{stderr}",
        argv.join(" "),
        out.status
    );
    Ok((stdout, stderr))
}

/// `Package Version Status-Abbrev` of each installed package `cfi-test-*`.
fn installed(lab: &Lab) -> Result<Vec<String>> {
    let text = lab.sh(
        0,
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' 'cfi-test-*' \
         | grep -v ' un *$' || true",
    )?;
    Ok(text.lines().map(|l| l.trim_end().to_owned()).collect())
}

/// The simulation's action lines (Inst, Conf, Remv, Purg), in order.
fn actions(simulation: &str) -> Vec<&str> {
    simulation
        .lines()
        .filter(|l| {
            ["Inst ", "Conf ", "Remv ", "Purg "]
                .iter()
                .any(|a| l.starts_with(a))
        })
        .collect()
}

#[test]
fn apt_installs_a_dependency_chain_and_upgrades_it() -> Result<()> {
    let (lab, mut repo, _dir) = lab_with_repo(&specs())?;
    let sources = lab.sh(
        0,
        "ls /etc/apt/sources.list /etc/apt/sources.list.d 2>&1 || true",
    )?;
    ensure!(
        !sources.contains("/etc/apt/sources.list:") && sources.contains("cfi-test-repo.list"),
        "other apt sources left: {sources}"
    );
    ensure!(
        String::from_utf8(lab.read_file(0, SOURCES_PATH)?)?
            == "deb [trusted=yes] file:/srv/cfi-test-repo ./\n"
    );

    apt_ok(&lab, &["apt-get", "install", "-y", "cfi-test-a"])?;
    ensure!(
        installed(&lab)? == ["cfi-test-a 1.0 ii", "cfi-test-b 1.0 ii"],
        "installed: {:?}",
        installed(&lab)?
    );
    ensure!(lab.read_file(0, "/usr/share/cfi-test/b")? == b"b 1.0\n");
    let auto = apt_ok(&lab, &["apt-mark", "showauto"])?;
    ensure!(auto == "cfi-test-b\n", "auto-installed: {auto:?}");

    // A new version makes b outdated, once served and updated.
    repo.add(&[PackageSpec::new("cfi-test-b", "2.0").file("/usr/share/cfi-test/b", "b 2.0\n")])?;
    repo.serve_to(&lab, 0)?;
    apt_ok(&lab, &["apt-get", "update"])?;
    let simulation = apt_ok(&lab, &["apt-get", "-s", "upgrade"])?;
    ensure!(
        actions(&simulation)
            == [
                "Inst cfi-test-b [1.0] (2.0 cfi-test-repo:localhost [all])",
                "Conf cfi-test-b (2.0 cfi-test-repo:localhost [all])",
            ],
        "{simulation}"
    );
    apt_ok(&lab, &["apt-get", "upgrade", "-y"])?;
    ensure!(
        installed(&lab)? == ["cfi-test-a 1.0 ii", "cfi-test-b 2.0 ii"],
        "installed: {:?}",
        installed(&lab)?
    );
    ensure!(lab.read_file(0, "/usr/share/cfi-test/b")? == b"b 2.0\n");
    Ok(())
}

#[test]
fn apt_simulations_say_what_apt_would_do() -> Result<()> {
    let mut specs = specs();
    specs.push(PackageSpec::new("cfi-test-x", "2.0"));
    let (lab, _repo, _dir) = lab_with_repo(&specs)?;
    apt_ok(
        &lab,
        &["apt-get", "install", "-y", "cfi-test-c", "cfi-test-y"],
    )?;
    apt_ok(&lab, &["apt-get", "install", "-y", "cfi-test-x=1.0"])?;
    let before = installed(&lab)?;

    // Removals first, then unpacks, then configures; e goes with c, as
    // autoremove's.
    let simulation = apt_ok(
        &lab,
        &[
            "apt-get",
            "-s",
            "install",
            "cfi-test-a",
            "cfi-test-c-",
            "--autoremove",
        ],
    )?;
    ensure!(
        actions(&simulation)
            == [
                "Remv cfi-test-c [1.0]",
                "Remv cfi-test-e [1.0]",
                "Inst cfi-test-b (1.0 cfi-test-repo:localhost [all])",
                "Inst cfi-test-a (1.0 cfi-test-repo:localhost [all])",
                "Conf cfi-test-b (1.0 cfi-test-repo:localhost [all])",
                "Conf cfi-test-a (1.0 cfi-test-repo:localhost [all])",
            ],
        "{simulation}"
    );

    // dist-upgrade takes package arguments as install does, and upgrades
    // the rest (x) besides.
    let simulation = apt_ok(
        &lab,
        &["apt-get", "-s", "dist-upgrade", "cfi-test-a", "cfi-test-y-"],
    )?;
    ensure!(
        actions(&simulation)
            == [
                "Remv cfi-test-y [1.0]",
                "Inst cfi-test-b (1.0 cfi-test-repo:localhost [all])",
                "Inst cfi-test-a (1.0 cfi-test-repo:localhost [all])",
                "Inst cfi-test-x [1.0] (2.0 cfi-test-repo:localhost [all])",
                "Conf cfi-test-b (1.0 cfi-test-repo:localhost [all])",
                "Conf cfi-test-a (1.0 cfi-test-repo:localhost [all])",
                "Conf cfi-test-x (2.0 cfi-test-repo:localhost [all])",
            ],
        "{simulation}"
    );

    // Auto marks kept in a file of the caller's: apt-mark writes there (not
    // to /var/lib/apt/extended_states), and the simulation reads them.
    let real_marks = lab.read_file(0, "/var/lib/apt/extended_states")?;
    let es = "Dir::State::extended_states=/tmp/cfi-test-es";
    apt_ok(&lab, &["apt-mark", "-o", es, "auto", "cfi-test-y"])?;
    ensure!(lab.read_file(0, "/var/lib/apt/extended_states")? == real_marks);
    let marks = String::from_utf8(lab.read_file(0, "/tmp/cfi-test-es")?)?;
    ensure!(
        marks == "Package: cfi-test-y\nArchitecture: amd64\nAuto-Installed: 1\n\n",
        "{marks:?}"
    );
    let simulation = apt_ok(
        &lab,
        &["apt-get", "-s", "-o", es, "install", "--autoremove"],
    )?;
    ensure!(
        actions(&simulation) == ["Remv cfi-test-y [1.0]"],
        "{simulation}"
    );
    let simulation = apt_ok(&lab, &["apt-get", "-s", "install", "--autoremove"])?;
    ensure!(actions(&simulation).is_empty(), "{simulation}");

    // An unknown package fails the whole simulation.
    let (stdout, stderr) = apt_fails(
        &lab,
        &["apt-get", "-s", "install", "cfi-test-a", "no-such-package"],
    )?;
    ensure!(actions(&stdout).is_empty(), "{stdout}");
    ensure!(
        stderr == "E: Unable to locate package no-such-package\n",
        "{stderr:?}"
    );

    ensure!(
        installed(&lab)? == before,
        "a simulation changed the system"
    );
    Ok(())
}

#[test]
fn a_held_dpkg_lock_stops_installs_but_not_simulations() -> Result<()> {
    let (lab, _repo, _dir) = lab_with_repo(&specs())?;
    let lock = AptLock::hold_dpkg(&lab, 0)?;
    let held_by = format!(
        "Could not get lock /var/lib/dpkg/lock-frontend. It is held by process {} (perl)",
        lock.pid()
    );

    let (stdout, stderr) = apt_fails(
        &lab,
        &[
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=2",
            "install",
            "-y",
            "cfi-test-a",
        ],
    )?;
    // Waiting, apt reports the holder on stdout, the failure on stderr.
    ensure!(
        stdout.contains(&format!("Waiting for cache lock: {held_by}...")),
        "{stdout}"
    );
    ensure!(
        stderr
            == "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), \
                is another process using it?\n",
        "{stderr:?}"
    );
    let (_, stderr) = apt_fails(&lab, &["apt-get", "install", "-y", "cfi-test-a"])?;
    ensure!(stderr.starts_with(&format!("E: {held_by}\n")), "{stderr:?}");
    // A second holder sees the first.
    let err = AptLock::hold_dpkg(&lab, 0).unwrap_err();
    ensure!(
        format!("{err:#}").contains("cannot lock /var/lib/dpkg/lock-frontend"),
        "{err:#}"
    );

    // Neither a simulation nor an update takes the dpkg lock.
    let simulation = apt_ok(&lab, &["apt-get", "-s", "install", "cfi-test-a"])?;
    ensure!(actions(&simulation).len() == 4, "{simulation}");
    apt_ok(&lab, &["apt-get", "update"])?;

    lock.release()?;
    apt_ok(&lab, &["apt-get", "install", "-y", "cfi-test-a"])?;
    ensure!(installed(&lab)?.len() == 2, "{:?}", installed(&lab)?);

    // The lists lock stops an update, without waiting for the timeout.
    let lists = AptLock::hold(&lab, 0, &[aptrepo::LISTS_LOCK])?;
    let (_, stderr) = apt_fails(&lab, &["apt-get", "update"])?;
    ensure!(
        stderr
            == format!(
                "E: Could not get lock /var/lib/apt/lists/lock. It is held by process {} \
                 (perl)\nE: Unable to lock directory /var/lib/apt/lists/\n",
                lists.pid()
            ),
        "{stderr:?}"
    );
    Ok(())
}

#[test]
fn broken_repositories_fail_apt() -> Result<()> {
    let mut specs = specs();
    specs.push(
        PackageSpec::new("cfi-test-broken", "1.0")
            .postinst("#!/bin/sh\necho failing on purpose >&2\nexit 1\n"),
    );
    let (lab, mut repo, _dir) = lab_with_repo(&specs)?;

    // An index whose hash is not the .deb's: the update is fine, the
    // fetch is not.
    repo.break_hash("cfi-test-d", "1.0")?;
    repo.serve_to(&lab, 0)?;
    apt_ok(&lab, &["apt-get", "update"])?;
    let (stdout, stderr) = apt_fails(&lab, &["apt-get", "install", "-y", "cfi-test-d"])?;
    ensure!(stdout.contains("Hash Sum mismatch"), "{stdout}");
    ensure!(
        stderr.starts_with(
            "E: Failed to fetch file:/srv/cfi-test-repo/cfi-test-d_1.0_all.deb  Hash Sum mismatch\n"
        ),
        "{stderr:?}"
    );
    ensure!(installed(&lab)?.is_empty(), "{:?}", installed(&lab)?);

    // A failing postinst leaves the package half-configured.
    let (_, stderr) = apt_fails(&lab, &["apt-get", "install", "-y", "cfi-test-broken"])?;
    ensure!(
        stderr.contains("E: Sub-process /usr/bin/dpkg returned an error code (1)"),
        "{stderr:?}"
    );
    ensure!(
        installed(&lab)? == ["cfi-test-broken 1.0 iF"],
        "{:?}",
        installed(&lab)?
    );
    apt_ok(&lab, &["dpkg", "--purge", "cfi-test-broken"])?;

    // A source that is not there fails the update, and apt no longer knows
    // the test packages.
    aptrepo::serve_missing(&lab, 0)?;
    let (_, stderr) = apt_fails(&lab, &["apt-get", "update"])?;
    ensure!(
        stderr
            == "E: Failed to fetch file:/srv/cfi-test-repo-missing/./Packages  File not found - \
                /srv/cfi-test-repo-missing/./Packages (2: No such file or directory)\n\
                E: Some index files failed to download. They have been ignored, or old ones \
                used instead.\n",
        "{stderr:?}"
    );
    let (_, stderr) = apt_fails(&lab, &["apt-get", "-s", "install", "cfi-test-a"])?;
    ensure!(
        stderr == "E: Unable to locate package cfi-test-a\n",
        "{stderr:?}"
    );
    Ok(())
}

/// The lock holder's report for a path it cannot create, so `hold` fails
/// with the reason rather than waiting.
#[test]
fn a_lock_that_cannot_be_taken_says_why() -> Result<()> {
    lab::init_test_logging();
    let lab = Lab::start(1)?;
    let err = AptLock::hold(&lab, 0, &["/no/such/dir/lock"]).unwrap_err();
    let shown = format!("{err:#}");
    ensure!(
        shown.contains("cannot open /no/such/dir/lock: No such file or directory"),
        "{shown}"
    );
    let holders = lab.sh(0, "grep -lx perl /proc/[0-9]*/comm || true")?;
    ensure!(
        holders.is_empty(),
        "a failed holder is still running: {holders}"
    );
    Ok(())
}
