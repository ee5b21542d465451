//! The `cfi pkgs` commands: package runs across clients, shown as they
//! end (or, for a plan, with identical plans folded under their hosts),
//! and questions to the inventory the daemon keeps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use cfi_packages::PkgReport;
use cfi_packages::report::PkgChange;

use crate::admin::{
    HostResult, Outcome, Show, Summary, ago, answer, columns, converse, eprint, failure, json_line,
    print, progress,
};
use crate::control::{Event, PkgAction, PkgQuery, PkgRow, PkgsRequest, Request};
use crate::fold::{self, HostOutput};
use crate::ssh::Stream;

/// `cfi pkgs plan|sync|install|remove|refresh`. With `apt_lines`, apt's
/// output is shown host by host as it comes.
pub fn run(socket: &Path, request: PkgsRequest, show: Show, apt_lines: bool) -> Result<Outcome> {
    let plan = request.action == PkgAction::Plan;
    // A plan is read as a whole: identical ones folded, at the end.
    let show = if plan && show == Show::Stream {
        Show::Gather
    } else {
        show
    };
    let mut bar = indicatif::ProgressBar::hidden();
    let mut summary = Summary::default();
    converse(
        socket,
        &Request::Pkgs(Box::new(request)),
        |event| match event {
            Event::Hosts { hosts } => bar = progress(show, hosts.len()),
            Event::Line {
                host,
                stream: Stream::Stderr,
                line,
            } => {
                if apt_lines && show != Show::Json {
                    bar.suspend(|| eprint(&format!("{host}: {line}\n")));
                } else {
                    bar.set_message(format!("{host}: {}", line.trim()));
                }
            }
            Event::Packages { host, report } => {
                bar.inc(1);
                if show == Show::Stream {
                    let text = host_lines(&host, &report);
                    bar.suspend(|| {
                        let _ = print(&text);
                    });
                }
                summary.add(HostResult {
                    result: if report.ok() { "ok" } else { "failed" },
                    packages: Some(report),
                    host,
                    ..HostResult::default()
                });
            }
            Event::Skipped { host, reason } => {
                bar.inc(1);
                if show != Show::Json {
                    bar.suspend(|| eprint(&format!("{host}: skipped: {reason}\n")));
                }
                summary.add(HostResult {
                    host,
                    result: "skipped",
                    error: Some(reason),
                    ..HostResult::default()
                });
            }
            trouble @ (Event::Unreachable { .. } | Event::Failed { .. }) => {
                summary.add(failure(&bar, show, trouble));
            }
            _ => {}
        },
    )?;
    bar.finish_and_clear();
    summary.sort();
    match show {
        Show::Json => print(&json_line(&summary)?)?,
        Show::Gather => {
            let texts: Vec<(String, String)> = summary
                .hosts
                .iter()
                .filter_map(|h| Some((h.host.clone(), render(h.packages.as_deref()?))))
                .collect();
            let shown: Vec<HostOutput<'_>> = texts
                .iter()
                .map(|(host, text)| HostOutput {
                    host,
                    output: text.as_bytes(),
                })
                .collect();
            print(&fold::gather(&shown))?;
        }
        Show::Stream => {}
    }
    Ok(summary.finish(show))
}

/// A report as `host: …` lines.
pub fn host_lines(host: &str, report: &PkgReport) -> String {
    render(report)
        .lines()
        .map(|l| format!("{host}: {l}\n"))
        .collect()
}

/// A report, one line per kind of change (what a plan would do, what a run
/// did), then what went wrong.
pub fn render(r: &PkgReport) -> String {
    let mut out = String::new();
    let done = |verb: &str| {
        if r.applied {
            verb.to_owned()
        } else {
            format!("would {verb}")
        }
    };
    let versions = |list: &[PkgChange], show: fn(&PkgChange) -> String| {
        list.iter().map(show).collect::<Vec<_>>().join(", ")
    };
    let with_to = |c: &PkgChange| format!("{} {}", c.name, c.to.as_deref().unwrap_or("?"));
    let with_from = |c: &PkgChange| format!("{} {}", c.name, c.from.as_deref().unwrap_or("?"));
    let upgrade = |c: &PkgChange| {
        let (f, t) = (
            c.from.as_deref().unwrap_or("?"),
            c.to.as_deref().unwrap_or("?"),
        );
        format!("{} {f} -> {t}", c.name)
    };
    for (list, verb, show) in [
        (
            &r.plan.install,
            "install",
            with_to as fn(&PkgChange) -> String,
        ),
        (&r.plan.upgrade, "upgrade", upgrade),
        (&r.plan.remove, "remove", with_from),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "{}: {}", done(verb), versions(list, show));
        }
    }
    if r.error.is_none() && r.refused.is_none() {
        for (names, what) in [(&r.marks.auto, "auto"), (&r.marks.manual, "manual")] {
            if !names.is_empty() {
                let _ = writeln!(
                    out,
                    "{}: {}",
                    done(&format!("mark {what}")),
                    names.join(" ")
                );
            }
        }
    }
    for k in &r.kept {
        let _ = writeln!(out, "kept: {} ({})", k.name, k.reason);
    }
    if !r.unknown.is_empty() {
        let _ = writeln!(out, "unknown to apt: {}", r.unknown.join(" "));
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(why) = &r.refused {
        let _ = writeln!(out, "refused: {why}");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error: {e}");
    }
    if r.plan.is_empty() && r.error.is_none() && r.refused.is_none() {
        let _ = writeln!(
            out,
            "{}",
            if r.action == "refresh" {
                "refreshed"
            } else {
                "nothing to do"
            }
        );
    }
    out
}

/// `cfi pkgs search|list|outdated`.
pub fn query(socket: &Path, q: PkgQuery, json: bool) -> Result<Outcome> {
    let rows = answer(
        socket,
        &Request::PkgQuery(q.clone()),
        "package rows",
        |e| match e {
            Event::PkgRows { rows } => Some(rows),
            _ => None,
        },
    )?;
    if json {
        print(&json_line(&rows)?)?;
        return Ok(Outcome::Ok);
    }
    let text = match q {
        PkgQuery::List { .. } => list_table(&rows),
        PkgQuery::Search { pattern } if rows.is_empty() => {
            eprint(&format!(
                "cfi: no client has a package matching {pattern:?} (as of its last inventory)\n"
            ));
            return Ok(Outcome::Failed);
        }
        PkgQuery::Search { .. } => by_version(&rows, false),
        PkgQuery::Outdated => by_version(&rows, true),
    };
    print(&text)?;
    Ok(Outcome::Ok)
}

/// One row per package, version (and candidate) and architecture, with
/// the hosts that have it folded.
fn by_version(rows: &[PkgRow], candidates: bool) -> String {
    let mut grouped: BTreeMap<(&str, &str, &str, &str), Vec<&str>> = BTreeMap::new();
    for r in rows {
        let candidate = r.candidate.as_deref().unwrap_or("");
        let key = (
            r.name.as_str(),
            r.version.as_str(),
            candidate,
            r.arch.as_str(),
        );
        grouped.entry(key).or_default().push(&r.host);
    }
    let mut table = vec![if candidates {
        ["PACKAGE", "INSTALLED", "CANDIDATE", "ARCH", "HOSTS"].map(String::from)
    } else {
        ["PACKAGE", "VERSION", "ARCH", "HOSTS", ""].map(String::from)
    }];
    for ((name, version, candidate, arch), hosts) in grouped {
        let hosts = fold::fold_hosts(&hosts);
        table.push(if candidates {
            [name, version, candidate, arch, &hosts].map(String::from)
        } else {
            [name, version, arch, &hosts, ""].map(String::from)
        });
    }
    columns(&table)
}

fn list_table(rows: &[PkgRow]) -> String {
    let mut table = vec![["PACKAGE", "VERSION", "ARCH", "AUTO", "CANDIDATE"].map(String::from)];
    for r in rows {
        table.push([
            r.name.clone(),
            r.version.clone(),
            r.arch.clone(),
            if r.auto { "auto".into() } else { String::new() },
            r.candidate.clone().unwrap_or_default(),
        ]);
    }
    let mut out = columns(&table);
    if let Some(r) = rows.first() {
        let _ = writeln!(
            out,
            "({} packages on {}, inventory of {})",
            rows.len(),
            r.host,
            ago(r.refreshed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use cfi_packages::report::{Kept, Plan};

    use super::*;

    fn change(name: &str, from: Option<&str>, to: Option<&str>) -> PkgChange {
        PkgChange {
            name: name.into(),
            arch: "all".into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
        }
    }

    #[test]
    fn a_plan_reads_as_what_would_happen() {
        let r = PkgReport {
            action: "plan".into(),
            plan: Plan {
                install: vec![change("a", None, Some("1.0")), change("b", None, Some("2"))],
                upgrade: vec![change("x", Some("1"), Some("2"))],
                remove: vec![change("c", Some("1.0"), None)],
            },
            kept: vec![Kept {
                name: "openssh-server".into(),
                reason: "protected".into(),
            }],
            unknown: vec!["nope".into()],
            ..PkgReport::default()
        };
        assert_eq!(
            render(&r),
            "would install: a 1.0, b 2\nwould upgrade: x 1 -> 2\nwould remove: c 1.0\n\
             kept: openssh-server (protected)\nunknown to apt: nope\n"
        );
        assert_eq!(
            host_lines("ws1", &PkgReport::default()),
            "ws1: nothing to do\n"
        );
    }

    #[test]
    fn search_folds_hosts_with_the_same_version() {
        let row = |host: &str, version: &str| PkgRow {
            host: host.into(),
            name: "vim".into(),
            arch: "amd64".into(),
            version: version.into(),
            auto: false,
            candidate: None,
            refreshed: 0,
        };
        let rows = [row("ws1", "9.0"), row("ws2", "9.0"), row("ws3", "9.1")];
        assert_eq!(
            by_version(&rows, false),
            "PACKAGE  VERSION  ARCH   HOSTS\nvim      9.0      amd64  ws[1-2]\nvim      9.1      amd64  ws3\n"
        );
    }
}
