//! `cfi pkgs` end to end on real apt and dpkg: the daemon with a static
//! list of lab hosts (real sshd, `cfi-agent` as the forced command), a real
//! apt repository of small packages built here with dpkg-deb and served to
//! the clients, and pkgsync lists in a group tree that `cfi sync` delivers.
//!
//! Needs docker and root (the lab builds its image) and the workspace's
//! binaries built (`cargo build --bins`). Never skips.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cfi_lab::aptrepo::{AptLock, AptRepo, PackageSpec};
use cfi_lab::lab::{self, Lab};
use serde_json::Value;

use common::daemon::{self, Server};

/// The test packages: a needs b; new-1 and new-2 for a musthave glob;
/// glob-1 and glob-2 for a mayhave glob; x for maynothave; y unlisted; may
/// in mayhave; ess is Essential; evil conflicts with openssh-server; h is
/// the one whose hash the broken repository gets wrong; u gets a 2.0.
fn specs() -> Vec<PackageSpec> {
    let mut specs = vec![
        PackageSpec::new("cfi-test-a", "1.0")
            .depends("cfi-test-b")
            .file("/usr/share/cfi-test/a", "a 1.0\n"),
        PackageSpec::new("cfi-test-ess", "1.0").essential(true),
        PackageSpec::new("cfi-test-evil", "1.0").conflicts("openssh-server"),
    ];
    for name in [
        "b", "new-1", "new-2", "glob-1", "glob-2", "x", "y", "may", "d", "h", "u",
    ] {
        specs.push(PackageSpec::new(&format!("cfi-test-{name}"), "1.0"));
    }
    specs
}

/// What every client has before the tests' lists apply.
const PREINSTALLED: &[&str] = &[
    "cfi-test-x",
    "cfi-test-y",
    "cfi-test-may",
    "cfi-test-glob-1",
    "cfi-test-glob-2",
    "cfi-test-ess",
    "cfi-test-u",
];

/// A lab of `n` clients, all in group `lab`, their apt fed by the test
/// repository, the test packages of [`PREINSTALLED`] installed, and a
/// daemon that knows them; `extra` goes into its configuration.
struct PkgLab {
    lab: Lab,
    server: Server,
    repo: AptRepo,
    /// The packages of the image, which the lists keep (mayhave).
    baseline: Vec<String>,
    _repo_dir: tempfile::TempDir,
}

impl PkgLab {
    fn start(n: usize, extra: &str) -> Result<Self> {
        lab::init_test_logging();
        let agent = lab::built_binary("cfi-agent")?;
        let repo_dir = tempfile::tempdir()?;
        let repo = AptRepo::build(&repo_dir.path().join("repo"), &specs())?;
        let lab = Lab::start(n)?;
        lab.install_agent_everywhere(&agent)?;
        repo.serve_everywhere(&lab)?;
        let baseline: Vec<String> = lab
            .sh(0, "dpkg-query -W -f '${Package}\\n'")?
            .lines()
            .map(str::to_owned)
            .collect();
        for i in 0..n {
            let install = format!(
                "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {} >/dev/null",
                PREINSTALLED.join(" ")
            );
            lab.sh(i, &install)?;
        }
        let server = start_server(&lab, extra)?;
        server.wait_for_state("online", Duration::from_secs(30))?;
        Ok(Self {
            lab,
            server,
            repo,
            baseline,
            _repo_dir: repo_dir,
        })
    }

    fn name(&self, i: usize) -> String {
        self.lab.client(i).addr.to_string()
    }

    /// Writes the group's lists (mayhave: the image's packages plus
    /// `may`) and delivers them with `cfi sync`.
    fn lists(&self, must: &str, may: &str, maynot: &str) -> Result<()> {
        let dir = self.server.data().join("lab/etc/pkgsync");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("musthave"), must)?;
        let mut mayhave = format!("# the image\n{}\n", self.baseline.join("\n"));
        mayhave.push_str(may);
        fs::write(dir.join("mayhave"), mayhave)?;
        fs::write(dir.join("maynothave"), maynot)?;
        self.server.json(&["sync", "-a"], 0)?;
        Ok(())
    }

    /// The test packages dpkg has installed on client `i`.
    fn installed(&self, i: usize) -> Result<BTreeSet<String>> {
        let out = self.lab.sh(
            i,
            "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' 'cfi-test-*'",
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("ii "))
            .map(|n| n.trim().to_owned())
            .collect())
    }

    /// `cfi pkgs ARGS --json`, which must exit with `code`: the report of
    /// each host, by host.
    fn pkgs(&self, args: &[&str], code: i32) -> Result<Vec<Value>> {
        let v = self.json(args, code)?;
        Ok(v["hosts"].as_array().context("no hosts")?.clone())
    }

    /// `cfi pkgs ARGS --json`, which must exit with `code`, parsed.
    fn json(&self, args: &[&str], code: i32) -> Result<Value> {
        let mut all = vec!["pkgs"];
        all.extend_from_slice(args);
        self.server.json(&all, code)
    }
}

/// Serves `body` over HTTP on `addr` (the lab's gateway, which the
/// clients reach) to whoever asks, as `name`; its URL.
fn serve_file(addr: std::net::Ipv4Addr, body: Vec<u8>, name: &str) -> Result<String> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((addr, 0))?;
    let url = format!("http://{}/{name}", listener.local_addr()?);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    Ok(url)
}

/// The daemon for `lab`: every client in group `lab`, by address.
fn start_server(lab: &Lab, extra: &str) -> Result<Server> {
    let groups = vec!["lab"; lab.clients().len()];
    daemon::start_static(lab, &groups, &format!("pkgs_timeout = 300\n{extra}"))
}

fn names(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

const MUST: &str =
    "# what every machine of the lab needs\ncfi-test-a\ncfi-test-new-*\ncfi-test-u\n";
const MAY: &str = "cfi-test-may\ncfi-test-glob-*\n";
const MAYNOT: &str = "cfi-test-x\ncfi-test-ess   # Essential: the rails keep it\n";

#[test]
fn lists_converge_with_the_rails_and_the_canary_on_real_apt() -> Result<()> {
    let mut t = PkgLab::start(3, "pkgs_after_sync = false\npkgs_lock_timeout = 3\n")?;
    t.lists(MUST, MAY, MAYNOT)?;
    let before = t.installed(0)?;

    // The plan is apt's own: a's dependency b comes along, the musthave
    // glob installs both new-*, x goes (maynothave) and so does y (in no
    // list), while may and the mayhave glob stay and the Essential one is
    // kept. Nothing changes.
    let hosts = t.pkgs(&["plan"], 0)?;
    ensure!(hosts.len() == 3, "{hosts:?}");
    for h in &hosts {
        let r = &h["packages"];
        ensure!(!r["applied"].as_bool().unwrap_or(true), "{r}");
        ensure!(
            names(&r["plan"]["install"])
                == set(&[
                    "cfi-test-a",
                    "cfi-test-b",
                    "cfi-test-new-1",
                    "cfi-test-new-2"
                ]),
            "{r}"
        );
        ensure!(
            names(&r["plan"]["remove"]) == set(&["cfi-test-x", "cfi-test-y"]),
            "{r}"
        );
        ensure!(r["kept"][0]["name"] == "cfi-test-ess", "{r}");
    }
    ensure!(t.installed(0)? == before, "a plan changed the machine");
    // As text, the three identical plans are one, under the folded hosts.
    let out = t.server.cfi(&["pkgs", "plan"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.matches("would install: cfi-test-a 1.0").count() == 1
            && text.contains("would remove: cfi-test-x 1.0, cfi-test-y 1.0"),
        "{text}"
    );

    // Two removals over a budget of one: refused everywhere, nothing done.
    let hosts = t.pkgs(&["sync", "-a", "--max-removals", "1"], 1)?;
    for h in &hosts {
        let refused = h["packages"]["refused"].as_str().unwrap_or_default();
        ensure!(refused.contains("max_removals = 1"), "{h}");
    }
    ensure!(
        t.installed(0)? == before,
        "a refused plan changed the machine"
    );

    // The first host in name order is the canary; its dpkg lock is held,
    // so it fails after the lock timeout, and the rollout stops there.
    let first = t.pkgs(&["plan"], 0)?[0]["host"]
        .as_str()
        .unwrap()
        .to_owned();
    let canary = (0..3).find(|&i| t.name(i) == first).unwrap();
    let lock = AptLock::hold_dpkg(&t.lab, canary)?;
    let hosts = t.pkgs(&["sync", "-a", "--canary", "1"], 1)?;
    for h in &hosts {
        if h["host"] == first.as_str() {
            let error = h["packages"]["error"].as_str().unwrap_or_default();
            ensure!(
                error.contains("lock") && error.contains(&format!("process {}", lock.pid())),
                "{h}"
            );
        } else {
            ensure!(h["result"] == "skipped", "{h}");
        }
    }
    for i in 0..3 {
        ensure!(
            t.installed(i)? == before,
            "client {i} changed though the canary failed"
        );
    }
    lock.release()?;

    // Now for real, everywhere.
    let hosts = t.pkgs(&["sync", "-a"], 0)?;
    let want = set(&[
        "cfi-test-a",
        "cfi-test-b",
        "cfi-test-new-1",
        "cfi-test-new-2",
        "cfi-test-may",
        "cfi-test-glob-1",
        "cfi-test-glob-2",
        "cfi-test-ess",
        "cfi-test-u",
    ]);
    for (i, h) in hosts.iter().enumerate() {
        ensure!(h["packages"]["applied"] == true, "{h}");
        ensure!(t.installed(i)? == want, "client {i}: {:?}", t.installed(i)?);
    }
    ensure!(
        t.lab.read_file(0, "/usr/share/cfi-test/a")? == b"a 1.0\n",
        "cfi-test-a's file is missing"
    );
    // A second run has nothing to do.
    for h in t.pkgs(&["sync", "-a"], 0)? {
        ensure!(h["packages"]["applied"] == false, "{h}");
    }

    // keep-unused: an unlisted package stays; without it, it goes.
    let c0 = t.name(0);
    t.lab.sh(
        0,
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q cfi-test-y >/dev/null",
    )?;
    t.pkgs(&["sync", "-w", &c0, "--keep-unused"], 0)?;
    ensure!(
        t.installed(0)?.contains("cfi-test-y"),
        "keep-unused removed y"
    );
    t.pkgs(&["sync", "-w", &c0], 0)?;
    ensure!(
        !t.installed(0)?.contains("cfi-test-y"),
        "y was not autoremoved"
    );

    // The protected set: a package that conflicts with openssh-server is
    // refused, forced or not, and sshd stays.
    let hosts = t.pkgs(&["install", "cfi-test-evil", "-w", &c0, "--force"], 1)?;
    let refused = hosts[0]["packages"]["refused"].as_str().unwrap_or_default();
    ensure!(refused.contains("openssh-server"), "{}", hosts[0]);
    ensure!(
        t.lab
            .sh(0, "dpkg-query -W -f '${db:Status-Abbrev}' openssh-server")?
            .starts_with("ii"),
        "openssh-server is gone"
    );

    // Converging after a pass that changed the lists, by itself.
    let config = t.server.data().with_file_name("server.toml");
    let text =
        fs::read_to_string(&config)?.replace("pkgs_after_sync = false", "pkgs_after_sync = true");
    fs::write(&config, text)?;
    t.server.restart_with("")?;
    t.server.wait_for_state("online", Duration::from_secs(30))?;
    t.lists(&format!("{MUST}cfi-test-d\n"), MAY, MAYNOT)?;
    for i in 0..3 {
        ensure!(
            t.installed(i)?.contains("cfi-test-d"),
            "client {i} lacks d after cfi sync"
        );
    }
    Ok(())
}

#[test]
fn inventory_and_bad_input_on_real_apt() -> Result<()> {
    let mut t = PkgLab::start(2, "pkgs_after_sync = false\npkgs_lock_timeout = 2\n")?;
    let (c0, c1) = (t.name(0), t.name(1));
    t.lists(
        "cfi-test-a\nno-such-package\n",
        "cfi-test-glob-*\ncfi-test-may\ncfi-test-ess\ncfi-test-x\ncfi-test-y\ncfi-test-u\n",
        "",
    )?;

    // An unknown name is reported per host; the rest goes on.
    let hosts = t.pkgs(&["sync", "-a"], 1)?;
    for (i, h) in hosts.iter().enumerate() {
        let r = &h["packages"];
        ensure!(
            r["unknown"] == serde_json::json!(["no-such-package"]),
            "{r}"
        );
        ensure!(r["applied"] == true, "{r}");
        ensure!(t.installed(i)?.contains("cfi-test-a"), "client {i} lacks a");
    }

    // search answers from the inventory what dpkg says on each host.
    let rows = t.json(&["search", "cfi-test-*"], 0)?;
    let mut seen = BTreeSet::new();
    for r in rows.as_array().context("rows")? {
        seen.insert(format!(
            "{} {} {}",
            r["host"].as_str().unwrap(),
            r["name"].as_str().unwrap(),
            r["version"].as_str().unwrap()
        ));
    }
    let mut dpkg = BTreeSet::new();
    for i in 0..2 {
        let out = t.lab.sh(
            i,
            "dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n' 'cfi-test-*'",
        )?;
        for l in out.lines().filter_map(|l| l.strip_prefix("ii ")) {
            dpkg.insert(format!("{} {}", t.name(i), l.trim()));
        }
    }
    ensure!(seen == dpkg, "search: {seen:?}\ndpkg: {dpkg:?}");
    let list = t.json(&["list", &c0], 0)?;
    ensure!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|r| r["name"] == "openssh-server")),
        "{list}"
    );

    // A new version in the repository: refresh, and outdated shows it.
    t.repo.add(&[PackageSpec::new("cfi-test-u", "2.0")])?;
    t.repo.serve_everywhere(&t.lab)?;
    t.pkgs(&["refresh"], 0)?;
    let rows = t.json(&["outdated"], 0)?;
    let outdated: BTreeSet<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} {}",
                r["host"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["candidate"].as_str().unwrap_or("")
            )
        })
        .collect();
    ensure!(
        outdated
            == [
                format!("{c0} cfi-test-u 2.0"),
                format!("{c1} cfi-test-u 2.0")
            ]
            .into_iter()
            .collect(),
        "{rows}"
    );

    // A server killed with SIGKILL, then one stopped with SIGTERM: each
    // comes back with its pins (the clients are online again, no host key
    // refused), the inventory and every client's last pass as they were.
    let kept = |t: &PkgLab| -> Result<Value> {
        let clients: Vec<Value> = t
            .server
            .json(&["clients"], 0)?
            .as_array()
            .context("clients")?
            .iter()
            .map(|c| {
                serde_json::json!([
                    c["host"],
                    c["group"],
                    c["host_key"],
                    c["last_sync"],
                    c["last_result"]
                ])
            })
            .collect();
        Ok(serde_json::json!({
            "clients": clients,
            "search": t.json(&["search", "cfi-test-*"], 0)?,
            "outdated": t.json(&["outdated"], 0)?,
            "list": t.json(&["list", &c1], 0)?,
        }))
    };
    // A pin lost would be made again on first contact, and logged so.
    let first_use = |t: &PkgLab| t.server.log().matches("pinned on first contact").count();
    let pinned = first_use(&t);
    ensure!(pinned == 2, "{pinned} first contacts before the restarts");
    let before = kept(&t)?;
    t.server.kill()?;
    t.server.spawn(&lab::built_binary("cfi-server")?)?;
    t.server.wait_for_state("online", Duration::from_secs(30))?;
    let after = kept(&t)?;
    ensure!(
        before == after,
        "lost in a crash:\nbefore {before:#}\nafter {after:#}"
    );
    t.server.restart_with("")?;
    t.server.wait_for_state("online", Duration::from_secs(30))?;
    let after = kept(&t)?;
    ensure!(
        before == after,
        "lost in a restart:\nbefore {before:#}\nafter {after:#}"
    );

    // --only-missing leaves an installed package alone; --upgrade upgrades.
    let hosts = t.pkgs(&["install", "cfi-test-u", "--only-missing", "-w", &c0], 0)?;
    ensure!(
        hosts[0]["packages"]["plan"]["upgrade"] == serde_json::json!([]),
        "{}",
        hosts[0]
    );
    t.pkgs(&["sync", "--upgrade", "-w", &c0], 1)?;
    let version = |i| t.lab.sh(i, "dpkg-query -W -f '${Version}' cfi-test-u");
    ensure!(
        version(0)? == "2.0" && version(1)? == "1.0",
        "u: {:?} {:?}",
        version(0),
        version(1)
    );

    // A .deb file from the admin's machine, and one from a URL.
    let deb = t
        .repo
        .dir()
        .join(PackageSpec::new("cfi-test-d", "1.0").deb_name());
    t.pkgs(&["install", deb.to_str().unwrap(), "-w", &c1], 0)?;
    ensure!(
        t.installed(1)?.contains("cfi-test-d"),
        "d not installed from its .deb"
    );
    let y = t
        .repo
        .dir()
        .join(PackageSpec::new("cfi-test-y", "1.0").deb_name());
    let url = serve_file(t.lab.gateway()?, fs::read(&y)?, "cfi-test-y_1.0_all.deb")?;
    t.lab.sh(
        1,
        "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q cfi-test-y >/dev/null",
    )?;
    t.pkgs(&["install", &url, "-w", &c1], 0)?;
    ensure!(
        t.installed(1)?.contains("cfi-test-y"),
        "y not installed from {url}"
    );

    // A broken repository: the .deb does not match its index. A clear error
    // on the host, nothing installed.
    t.repo.break_hash("cfi-test-h", "1.0")?;
    t.repo.serve_to(&t.lab, 1)?;
    let hosts = t.pkgs(&["install", "cfi-test-h", "-w", &c1], 1)?;
    let error = hosts[0]["packages"]["error"].as_str().unwrap_or_default();
    ensure!(error.contains("Hash Sum mismatch"), "{}", hosts[0]);
    ensure!(
        !t.installed(1)?.contains("cfi-test-h"),
        "h installed from a broken repository"
    );

    // The dpkg lock held by another process: waited for, then a clear error
    // naming the holder.
    let lock = AptLock::hold_dpkg(&t.lab, 0)?;
    let hosts = t.pkgs(&["install", "cfi-test-d", "-w", &c0], 1)?;
    let error = hosts[0]["packages"]["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("lock") && error.contains(&lock.pid().to_string()),
        "{}",
        hosts[0]
    );
    lock.release()?;

    // A malformed list line: the error names the file and the line, and
    // nothing changes.
    let before = t.installed(0)?;
    t.lists("cfi-test-a\n", "cfi-test-may\n", "cfi-test-x\ntwo words\n")?;
    let hosts = t.pkgs(&["sync", "-w", &c0], 1)?;
    let error = hosts[0]["packages"]["error"].as_str().unwrap_or_default();
    ensure!(error.contains("/etc/pkgsync/maynothave:2"), "{}", hosts[0]);
    ensure!(t.installed(0)? == before, "a bad list changed the machine");

    // A repository that is not there: refresh fails with apt's words.
    cfi_lab::aptrepo::serve_missing(&t.lab, 1)?;
    let hosts = t.pkgs(&["refresh", "-w", &c1], 1)?;
    let error = hosts[0]["packages"]["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("apt-get update failed") && error.contains("File not found"),
        "{}",
        hosts[0]
    );

    // install and remove never default to every client.
    let out = t.server.cfi(&["pkgs", "remove", "cfi-test-a"])?;
    ensure!(out.status.code() == Some(2), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no targets"),
        "{out:?}"
    );
    // An admin's remove of a listed package works; the next sync puts it back.
    t.pkgs(&["remove", "cfi-test-a", "-w", &c0], 0)?;
    ensure!(!t.installed(0)?.contains("cfi-test-a"), "remove left a");
    Ok(())
}
