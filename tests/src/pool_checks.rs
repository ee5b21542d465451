//! What the pool benchmarks ([`crate::pool_bench`]) check of the tools
//! they measure, because a speed measured for a wrong result means
//! nothing:
//!
//! - reach: before the timed runs, each tool runs `uname -n` on every host,
//!   and each host must answer with its own name, once;
//! - trees: after every sync, each host's copy must be the source (paths,
//!   kinds, modes, owners, symlink targets, content), compared through a
//!   digest both sides compute with the same script;
//! - first sync: a timed `cfi sync` must have written files (one that
//!   found the work done would measure nothing);
//! - key exchange: which one each tool negotiated, as one client's sshd
//!   logs it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use serde_json::Value;
use tracing::warn;

use crate::cfi_pool::{CfiPool, Hosts};
use crate::lab::Lab;
use crate::pool_tools::{Kex, SshOptions, on_clients};
use crate::{command, docker};

/// The key exchange one client's sshd saw a tool negotiate.
#[derive(Debug, Clone, Serialize)]
pub struct KexSeen {
    /// Who connected, and asking for what.
    pub client: String,
    /// What sshd logged as `kex: algorithm:`.
    pub algorithm: String,
}

/// Checks the answers to `uname -n` (each host's output lines, by
/// address): every client answered with its own name, once.
pub fn check_reach(lab: &Lab, answers: &BTreeMap<String, Vec<String>>) -> Result<()> {
    for c in lab.clients() {
        let got = answers.get(&c.addr.to_string());
        ensure!(
            got.is_some_and(|lines| lines.len() == 1 && lines[0].trim() == c.name),
            "{} ({}) answered {got:?}",
            c.addr,
            c.name
        );
    }
    ensure!(
        answers.len() == lab.clients().len(),
        "answers from {} hosts, the lab has {}",
        answers.len(),
        lab.clients().len()
    );
    Ok(())
}

/// [`check_reach`] through a daemon of `pool`.
pub fn check_reach_cfi(lab: &Lab, pool: &CfiPool) -> Result<()> {
    let daemon = pool.start()?;
    let answers = daemon.exec(Hosts::All, &["uname", "-n"]);
    daemon.stop()?;
    let answers = answers?
        .0
        .hosts
        .into_iter()
        .map(|h| (h.host, h.stdout.lines().map(str::to_owned).collect()))
        .collect();
    check_reach(lab, &answers).context("cfi exec does not reach every host")
}

/// Lists a tree (kinds, modes, owners, sizes, symlink targets) and hashes
/// its files' content: two digests that match when the trees are the same
/// in everything [`crate::compare`] checks. `$1` is the tree's root, which
/// itself is left out.
const DIGEST_SCRIPT: &str = r#"cd "$1" && export LC_ALL=C &&
find . -mindepth 1 \( -type f -printf 'f %m %U:%G %s %p\n' \) \
    -o \( -type d -printf 'd %m %U:%G %p\n' \) \
    -o \( -type l -printf 'l %U:%G %l %p\n' \) \
    -o -printf '? %p\n' | sort | sha256sum &&
find . -type f -print0 | sort -z | xargs -0 -r sha256sum | sha256sum"#;

/// The digest of the tree at `root` on this machine.
pub fn tree_digest_here(root: &Path) -> Result<String> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", DIGEST_SCRIPT, "sh"]).arg(root);
    let out = command::checked(&mut cmd, Duration::from_secs(120))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless every client of `targets` holds the tree of `digest` at
/// `dest`.
pub fn check_trees(lab: &Lab, targets: &[usize], dest: &str, digest: &str) -> Result<()> {
    on_clients(targets, |i| {
        let out = lab.exec(i, &["sh", "-c", DIGEST_SCRIPT, "sh", dest])?;
        let got = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && got == digest,
            "{dest} in {} is not the source tree ({}): {}{}",
            lab.client(i).name,
            out.status,
            got.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    })
}

/// What can be checked of a `cfi sync --json` report beyond its exit
/// status without tying the benchmark to more of its shape than it needs:
/// when it lists `hosts`, each addressed host is there, without an error,
/// and none says it wrote no file (a timed first sync that found the work
/// done would measure nothing).
pub fn check_first_sync(report: &Value, expected: &[String]) -> Result<()> {
    let Some(hosts) = report.get("hosts").and_then(Value::as_array) else {
        warn!("cfi sync --json lists no hosts; only the trees are checked");
        return Ok(());
    };
    ensure!(
        hosts.len() == expected.len(),
        "cfi sync reported {} hosts, {} addressed",
        hosts.len(),
        expected.len()
    );
    for h in hosts {
        let name = h.get("host").and_then(Value::as_str).unwrap_or("?");
        ensure!(
            expected.iter().any(|e| e == name),
            "cfi sync reported on {name}, not addressed"
        );
        if let Some(e) = h.get("error").filter(|e| !e.is_null()) {
            bail!("cfi sync failed on {name}: {e}");
        }
        if let Some(result) = h.get("result").and_then(Value::as_str) {
            ensure!(result == "ok", "cfi sync on {name}: {result}");
        }
        if find_key(h, "files_updated").and_then(Value::as_u64) == Some(0) {
            bail!("cfi sync wrote no file on {name}: not a first sync");
        }
    }
    Ok(())
}

/// The first value named `key` in `v`, depth first.
fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// The sshd config file that makes client 0 log key exchanges.
const KEX_LOG_CONF: &str = "/etc/ssh/sshd_config.d/00-cfi-lab-kex.conf";

/// Has client 0's sshd log at DEBUG1 (which names the negotiated key
/// exchange) and connects to it with ssh (both key exchanges) and, when it
/// runs, cfi (a fresh daemon, so a new connection); sshd goes back to its
/// own log level after.
pub fn observe_kex(
    lab: &Lab,
    ssh: &BTreeMap<Kex, SshOptions>,
    pool: Option<&CfiPool>,
) -> Result<Vec<KexSeen>> {
    let reload = "kill -HUP \"$(cat /run/sshd.pid)\"";
    lab.sh(
        0,
        &format!("printf 'LogLevel DEBUG1\\n' > {KEX_LOG_CONF} && {reload}"),
    )?;
    let seen = observe_kex_logged(lab, ssh, pool);
    let restored = lab.sh(0, &format!("rm -f {KEX_LOG_CONF} && {reload}"));
    let seen = seen?;
    restored?;
    Ok(seen)
}

fn observe_kex_logged(
    lab: &Lab,
    ssh: &BTreeMap<Kex, SshOptions>,
    pool: Option<&CfiPool>,
) -> Result<Vec<KexSeen>> {
    let mut seen = Vec::new();
    for kex in Kex::ALL {
        let algorithm = new_kex_in_log(lab, || {
            // sshd restarts on SIGHUP: retry until it listens again.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut cmd = Command::new("ssh");
                cmd.args(ssh[&kex].args())
                    .arg(format!("root@{}", lab.client(0).addr))
                    .arg("true");
                match command::checked(&mut cmd, Duration::from_secs(20)) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
        let client = match kex {
            Kex::OpensshDefault => "ssh, OpenSSH's default".to_owned(),
            Kex::Curve25519 => format!("ssh -o KexAlgorithms={}", Kex::CURVE25519),
        };
        seen.push(KexSeen { client, algorithm });
    }
    if let Some(pool) = pool {
        let algorithm = new_kex_in_log(lab, || {
            let daemon = pool.start()?;
            daemon.exec(Hosts::One(&pool.hosts()[0]), &["true"])?;
            daemon.stop()
        })?;
        seen.push(KexSeen {
            client: "cfi".to_owned(),
            algorithm,
        });
    }
    Ok(seen)
}

/// Runs `connect` and returns the key exchange(s) client 0's sshd logged
/// for it (several, comma-separated, if it connected more than once with
/// different ones).
fn new_kex_in_log(lab: &Lab, connect: impl FnOnce() -> Result<()>) -> Result<String> {
    let before = logged_kex(lab)?.len();
    connect()?;
    // docker's log lags sshd's stderr a little.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = logged_kex(lab)?;
        if all.len() > before {
            let mut new: Vec<String> = all[before..].to_vec();
            new.dedup();
            return Ok(new.join(", "));
        }
        if Instant::now() >= deadline {
            bail!(
                "sshd of {} logged no key exchange for the connection",
                lab.client(0).name
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `kex: algorithm:` values in client 0's log, oldest first.
fn logged_kex(lab: &Lab) -> Result<Vec<String>> {
    let name = &lab.client(0).name;
    let out = command::checked(&mut docker::command(&["logs", name]), docker::LIMIT)?;
    let text = [out.stdout, out.stderr].concat();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        // `debug1: kex: algorithm: curve25519-sha256 [preauth]`
        .filter_map(|l| l.split_once("kex: algorithm: "))
        .filter_map(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::tree::TreeSpec;

    #[test]
    fn digest_sees_content_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        TreeSpec::new(5, 40, 1).generate(&a).unwrap();
        TreeSpec::new(5, 40, 1).generate(&b).unwrap();
        let base = tree_digest_here(&a).unwrap();
        assert_eq!(base, tree_digest_here(&b).unwrap());
        assert_eq!(base.lines().count(), 2, "{base}");

        let file = crate::compare::walk_tree(&b)
            .unwrap()
            .into_iter()
            .find(|(_, m)| m.is_file())
            .map(|(p, _)| b.join(p))
            .unwrap();
        let mut content = fs::read(&file).unwrap();
        content[0] ^= 1;
        fs::write(&file, &content).unwrap();
        assert_ne!(base, tree_digest_here(&b).unwrap());
        content[0] ^= 1;
        fs::write(&file, &content).unwrap();
        assert_eq!(base, tree_digest_here(&b).unwrap());
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(base, tree_digest_here(&b).unwrap());
    }

    #[test]
    fn first_sync_reports() {
        let hosts = ["10.0.0.2".to_owned()];
        let ok = serde_json::json!({"hosts":[{"host":"10.0.0.2","error":null,
            "report":{"files_updated":300}}]});
        check_first_sync(&ok, &hosts).unwrap();
        let noop = serde_json::json!({"hosts":[{"host":"10.0.0.2","report":{"files_updated":0}}]});
        assert!(check_first_sync(&noop, &hosts).is_err());
        let failed = serde_json::json!({"hosts":[{"host":"10.0.0.2","error":"unreachable"}]});
        assert!(check_first_sync(&failed, &hosts).is_err());
        let failed = serde_json::json!({"hosts":[{"host":"10.0.0.2","result":"failed"}]});
        assert!(check_first_sync(&failed, &hosts).is_err());
        let other = serde_json::json!({"hosts":[{"host":"10.0.0.9"}]});
        assert!(check_first_sync(&other, &hosts).is_err());
        check_first_sync(&serde_json::json!({"converged": 1}), &hosts).unwrap();
    }
}
