//! Package runs across clients: `cfi pkgs plan|sync|install|remove|refresh`
//! and the convergence after a pass that changed a client's pkgsync lists.
//!
//! Each run is `cfi-agent pkgs …` on a session channel of its own (the
//! forced command must see it; see [`crate::ssh::Connection::exec_session`]),
//! which plans with apt's simulation and applies on the client and prints
//! one JSON report. apt's output comes back on stderr and is passed on as
//! lines, so a long run shows progress. Every report is stored with the
//! client's new inventory. One package run per client at a time.

use std::sync::Arc;
use std::time::Duration;

use cfi_packages::PkgReport;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Daemon;
use super::pool::ReachError;
use super::roster::Member;
use super::work::{Events, LineSplitter, SYNC_FANOUT, failure, select, send};
use crate::control::{Event, PkgAction, PkgsRequest, Targets};
use crate::fold::host_order;
use crate::ssh::{SshError, Stream};

/// The most stdout a report may take (an inventory of a few thousand
/// packages is a few hundred KiB).
const MAX_REPORT: usize = 16 << 20;

/// What runs on each client.
#[derive(Debug)]
struct Job {
    command: String,
    stdin: Option<Vec<u8>>,
    limit: Duration,
}

/// Carries out `request` on its targets, canaries first.
pub(super) async fn run(
    daemon: &Arc<Daemon>,
    request: PkgsRequest,
    events: &Events,
) -> Result<(), String> {
    let job = Arc::new(job(&request, daemon)?);
    let targets = match &request.action {
        PkgAction::Install { .. } | PkgAction::Remove { .. } if request.targets.is_empty() => {
            return Err(
                "no targets: name them with -a, -g GROUP or -w HOST,… (install and remove never default to every client)"
                    .into(),
            );
        }
        _ if request.targets.is_empty() => Targets {
            all: true,
            ..request.targets.clone()
        },
        _ => request.targets.clone(),
    };
    let mut members = select(daemon, &targets, events)?;
    members.sort_by(|a, b| host_order(&a.name, &b.name));
    let rest = members.split_off(request.canary.min(members.len()));
    let fanout = match request.fanout {
        0 => SYNC_FANOUT,
        n => n,
    };
    if !members.is_empty() {
        let canaries: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        let failed = wave(daemon, members, &job, fanout, events).await;
        if !failed.is_empty() {
            let reason = format!(
                "canary {} failed; the rollout stopped before this host (canaries: {})",
                failed.join(", "),
                canaries.join(", ")
            );
            for m in rest {
                send(
                    events,
                    Event::Skipped {
                        host: m.name,
                        reason: reason.clone(),
                    },
                );
            }
            return Ok(());
        }
    }
    wave(daemon, rest, &job, fanout, events).await;
    Ok(())
}

/// Converges packages on `m` after a pass that changed its lists, when the
/// configuration asks for it; the result goes to `events`.
pub(super) async fn after_sync(daemon: &Arc<Daemon>, m: &Member, events: &Events) {
    let request = PkgsRequest {
        action: PkgAction::Sync,
        ..PkgsRequest::default()
    };
    match job(&request, daemon) {
        Ok(job) => {
            let event = outcome(daemon, m, &job, events).await.1;
            send(events, event);
        }
        Err(e) => tracing::error!(host = m.name, error = e, "cannot converge packages"),
    }
}

/// Runs `job` on every member, `fanout` at once; the names of those that
/// did not end well.
async fn wave(
    daemon: &Arc<Daemon>,
    members: Vec<Member>,
    job: &Arc<Job>,
    fanout: usize,
    events: &Events,
) -> Vec<String> {
    let fanout = Arc::new(Semaphore::new(fanout.max(1)));
    let mut runs = JoinSet::new();
    for m in members {
        let (daemon, job, events, fanout) = (
            Arc::clone(daemon),
            Arc::clone(job),
            events.clone(),
            Arc::clone(&fanout),
        );
        runs.spawn(async move {
            let _permit = fanout.acquire().await;
            let (ok, event) = outcome(&daemon, &m, &job, &events).await;
            send(&events, event);
            (!ok).then_some(m.name)
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = runs.join_next().await {
        if let Ok(Some(name)) = done {
            failed.push(name);
        }
    }
    failed.sort_by(|a, b| host_order(a, b));
    failed
}

/// One run on `m`, recorded: whether it went well, and its event.
async fn outcome(daemon: &Daemon, m: &Member, job: &Job, events: &Events) -> (bool, Event) {
    let _one = m.slot.pkgs.lock().await;
    match run_one(daemon, m, job, events).await {
        Ok(Err(error)) => (
            false,
            Event::Failed {
                host: m.name.clone(),
                error,
            },
        ),
        Ok(Ok(report)) => {
            if let Err(e) = daemon.db().record_pkg_run(&m.id, &m.name, &report) {
                tracing::error!(host = m.name, error = %e, "cannot record the package run");
            }
            let ok = report.ok();
            let event = Event::Packages {
                host: m.name.clone(),
                report: Box::new(report),
            };
            (ok, event)
        }
        Err(e) => (false, failure(&m.name, &e)),
    }
}

/// The agent's report, or why there is none from a reachable client.
async fn run_one(
    daemon: &Daemon,
    m: &Member,
    job: &Job,
    events: &Events,
) -> Result<Result<PkgReport, String>, ReachError> {
    let conn = daemon.pool.connect(&m.slot).await?;
    let mut stdout = Vec::new();
    let mut lines = LineSplitter::new(&m.name, events);
    let too_large = || SshError::OutputTooLarge {
        host: m.name.clone(),
        command: job.command.clone(),
    };
    let exit = conn
        .exec_session(
            &job.command,
            job.stdin.as_deref(),
            job.limit,
            |stream, chunk| match stream {
                Stream::Stdout if stdout.len() + chunk.len() > MAX_REPORT => Err(too_large()),
                Stream::Stdout => {
                    stdout.extend_from_slice(chunk);
                    Ok(())
                }
                Stream::Stderr => lines.push(stream, chunk).map_err(|()| too_large()),
            },
        )
        .await;
    lines.finish();
    let exit = exit?;
    let text = String::from_utf8_lossy(&stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Ok(serde_json::from_str(last).map_err(|_| {
        let status = exit
            .status
            .map_or_else(|| format!("signal {}", exit.signal.unwrap_or_default()), |s| format!("exit {s}"));
        let shown: String = last.chars().take(200).collect();
        let said = if shown.is_empty() {
            String::new()
        } else {
            format!(", said {shown:?}")
        };
        format!(
            "no package report from the agent ({status}{said}); is cfi-agent on {} as new as this server?",
            m.name
        )
    }))
}

/// The agent command line for `request`, with the configured defaults.
fn job(request: &PkgsRequest, daemon: &Daemon) -> Result<Job, String> {
    let c = &daemon.config;
    let mut words: Vec<String> = vec!["cfi-agent".into(), "pkgs".into()];
    let mut stdin = None;
    let mut update = c.pkgs_update;
    match &request.action {
        // A plan refreshes apt's lists too, as pkgsync's --simulate does:
        // planned against stale lists, a package just added to the
        // repository would be "unknown".
        PkgAction::Plan => words.push("plan".into()),
        PkgAction::Sync => words.push("sync".into()),
        PkgAction::Refresh => words.push("refresh".into()),
        PkgAction::Remove { packages } => {
            if packages.is_empty() {
                return Err("pkgs remove: name the packages".into());
            }
            words.push("remove".into());
            words.extend(checked_names(packages)?);
            update = false;
        }
        PkgAction::Install {
            packages,
            deb,
            urls,
            only_missing,
        } => {
            words.push("install".into());
            words.extend(checked_names(packages)?);
            for url in urls {
                words.push("--url".into());
                words.push(checked_url(url)?);
            }
            if let Some(deb) = deb {
                if !is_deb_name(&deb.name) {
                    return Err(format!(
                        "{:?}: a .deb file name is letters, digits and ._+~:- ending in .deb",
                        deb.name
                    ));
                }
                words.push("--deb-stdin".into());
                words.push(deb.name.clone());
                stdin = Some(deb.bytes.clone());
            }
            if packages.is_empty() && urls.is_empty() && deb.is_none() {
                return Err("pkgs install: name packages, a .deb file or a URL".into());
            }
            if *only_missing {
                words.push("--only-missing".into());
            }
        }
    }
    let max_removals = request.max_removals.unwrap_or(c.pkgs_max_removals);
    words.extend([
        "--max-removals".into(),
        max_removals.to_string(),
        "--lock-timeout".into(),
        c.pkgs_lock_timeout.to_string(),
    ]);
    for (on, flag) in [
        (request.force, "--force"),
        (
            request.keep_unused.unwrap_or(c.pkgs_keep_unused),
            "--keep-unused",
        ),
        (
            // A plan shows what a sync would do, upgrades included.
            request.upgrade.unwrap_or(c.pkgs_upgrade)
                && matches!(request.action, PkgAction::Sync | PkgAction::Plan),
            "--upgrade",
        ),
        (update, "--update"),
    ] {
        if on {
            words.push(flag.into());
        }
    }
    Ok(Job {
        command: words.join(" "),
        stdin,
        limit: Duration::from_secs(c.pkgs_timeout),
    })
}

/// Package arguments travel as words of a command line: each must be one
/// word that apt could take for a package (`name`, `name:arch`,
/// `name=version`, `name/release`), never a flag.
fn checked_names(names: &[String]) -> Result<Vec<String>, String> {
    for n in names {
        let ok = !n.is_empty()
            && !n.starts_with('-')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:=~/_".contains(c));
        // No globs: apt-get takes `foo*` for a regular expression, which
        // matches far more than the admin meant.
        if !ok {
            return Err(format!(
                "{n:?} is not a package name (letters, digits and +-.:=~/_; no globs)"
            ));
        }
    }
    Ok(names.to_vec())
}

fn checked_url(url: &str) -> Result<String, String> {
    let ok = ["http://", "https://", "ftp://"]
        .iter()
        .any(|s| url.starts_with(s))
        && url.len() < 2048
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"`\\$;&|<>".contains(c));
    if ok {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "{url:?} is not a URL cfi passes on (http://, https:// or ftp://, without spaces or quotes)"
        ))
    }
}

fn is_deb_name(name: &str) -> bool {
    name.ends_with(".deb")
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name.len() < 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~:-".contains(c))
}

/// The inventory questions, answered from the state database.
pub(super) fn query(daemon: &Daemon, q: &crate::control::PkgQuery) -> Result<Event, String> {
    use crate::control::PkgQuery;
    let db = daemon.db();
    let rows = match q {
        PkgQuery::Search { pattern } => db.search_packages(pattern),
        PkgQuery::List { host } => {
            let rows = db.host_packages(host).map_err(|e| e.to_string())?;
            if rows.is_empty() {
                return Err(format!(
                    "no inventory of {host:?}: run `cfi pkgs refresh -w {host}` (or check the name with `cfi clients`)"
                ));
            }
            Ok(rows)
        }
        PkgQuery::Outdated => db.outdated_packages(),
    }
    .map_err(|e| e.to_string())?;
    Ok(Event::PkgRows { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_words_cannot_become_flags_or_shell() {
        assert!(checked_names(&["vim".into(), "libc6:i386".into(), "foo=1.0-1".into()]).is_ok());
        for bad in ["--force-yes", "a b", "x;reboot", "$(id)", ""] {
            assert!(checked_names(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(checked_url("http://repo/pool/a_1.0_all.deb").is_ok());
        for bad in [
            "file:///etc/shadow",
            "http://x/a b.deb",
            "http://x/$(id).deb",
        ] {
            assert!(checked_url(bad).is_err(), "{bad}");
        }
        assert!(is_deb_name("cfi-test-a_1.0_all.deb"));
        assert!(!is_deb_name("../x.deb") && !is_deb_name("x.tar") && !is_deb_name("-x.deb"));
    }
}
