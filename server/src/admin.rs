//! The `cfi` commands that talk to the daemon: each sends one request over
//! the control socket, shows the events as a person or a script wants them,
//! and says how the command should exit.
//!
//! Exit status, for every command: 0 all went well; 1 some client failed
//! (a non-zero exit, a failed pass); 2 some client was unreachable, or the
//! request failed as a whole (`cfi: …` on stderr).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use cfi_sync::PassReport;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::control::{ClientRow, ControlClient, Event, GroupRow, Request, StatusInfo};
use crate::fold::{self, HostOutput};
use crate::ssh::Stream;

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Lines as they come (`host: line`).
    Stream,
    /// Identical outputs folded under their hosts, at the end.
    Gather,
    /// One JSON object at the end.
    Json,
}

/// How a command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// All went well.
    Ok = 0,
    /// Some client failed.
    Failed = 1,
    /// Some client was unreachable.
    Unreachable = 2,
}

/// Sends `request` and hands every event to `on_event` until the daemon
/// says it is done. A request the daemon refuses is an error with its
/// message; a daemon that hangs up early is one too.
pub(crate) fn converse(
    socket: &Path,
    request: &Request,
    mut on_event: impl FnMut(Event),
) -> Result<()> {
    let mut control = ControlClient::send(socket, request)?;
    while let Some(event) = control.next_event()? {
        match event {
            Event::Done => return Ok(()),
            Event::Error { message } => bail!("{message}"),
            other => on_event(other),
        }
    }
    bail!(
        "cfi-server closed {} before finishing the request (did it stop? see its log)",
        socket.display()
    )
}

/// Sends `request` and returns the one event `pick` takes; a daemon that
/// sends no such event is an error saying `what` was missing.
pub(crate) fn answer<T>(
    socket: &Path,
    request: &Request,
    what: &str,
    pick: impl Fn(Event) -> Option<T>,
) -> Result<T> {
    let mut found = None;
    converse(socket, request, |e| {
        if let Some(t) = pick(e) {
            found = Some(t);
        }
    })?;
    found.ok_or_else(|| anyhow!("cfi-server sent no {what}"))
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> Result<()> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub(crate) fn eprint(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

pub(crate) fn json_line<T: Serialize>(value: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// A progress bar on stderr when a person watches (stdout and stderr are
/// terminals); hidden otherwise.
pub(crate) fn progress(show: Show, len: usize) -> ProgressBar {
    if show == Show::Json || !io::stdout().is_terminal() || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} hosts {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// `cfi clients`.
pub fn clients(socket: &Path, json: bool) -> Result<Outcome> {
    let rows: Vec<ClientRow> = answer(socket, &Request::Clients, "client table", |e| match e {
        Event::Clients { clients } => Some(clients),
        _ => None,
    })?;
    if json {
        print(&json_line(&rows)?)?;
        return Ok(Outcome::Ok);
    }
    let mut table = vec![
        [
            "HOST",
            "GROUP",
            "STATE",
            "LAST SYNC",
            "ADDRESS",
            "SOURCE",
            "NOTE",
        ]
        .map(String::from),
    ];
    for r in &rows {
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let last = match (&r.last_sync, &r.last_result) {
            (Some(t), Some(what)) => format!("{} ({what})", ago(*t)),
            _ => "never".into(),
        };
        table.push([
            r.host.clone(),
            r.group.clone(),
            state,
            last,
            r.address.clone(),
            r.source.clone(),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    print(&columns(&table))?;
    Ok(Outcome::Ok)
}

/// `cfi groups`.
pub fn groups(socket: &Path, json: bool) -> Result<Outcome> {
    let rows: Vec<GroupRow> = answer(socket, &Request::Groups, "group list", |e| match e {
        Event::Groups { groups } => Some(groups),
        _ => None,
    })?;
    if json {
        print(&json_line(&rows)?)?;
        return Ok(Outcome::Ok);
    }
    let mut table = vec![["GROUP", "CLIENTS", "MEMBERS"].map(String::from)];
    for g in &rows {
        let name = if g.has_dir {
            g.name.clone()
        } else {
            format!("{} (no directory)", g.name)
        };
        table.push([
            name,
            g.members.len().to_string(),
            fold::fold_hosts(&g.members),
        ]);
    }
    print(&columns(&table))?;
    Ok(Outcome::Ok)
}

/// `cfi status`.
pub fn status(socket: &Path, json: bool) -> Result<Outcome> {
    let info: StatusInfo = answer(socket, &Request::Status, "status", |e| match e {
        Event::Status(s) => Some(*s),
        _ => None,
    })?;
    if json {
        print(&json_line(&info)?)?;
        return Ok(Outcome::Ok);
    }
    let mut text = format!(
        "cfi-server {} (pid {}), up {}s\ndata dir  {}\nstate dir {}\nkey       {}\nclients   {} known, {} online\n",
        info.version,
        info.pid,
        info.uptime,
        info.data_dir.display(),
        info.state_dir.display(),
        info.key,
        info.clients,
        info.online
    );
    for w in &info.warnings {
        let _ = writeln!(text, "warning: {w}");
    }
    print(&text)?;
    Ok(Outcome::Ok)
}

/// `cfi forget HOST`.
pub fn forget(socket: &Path, host: &str, json: bool) -> Result<Outcome> {
    let request = Request::Forget {
        host: host.to_owned(),
    };
    let (host, keys) = answer(socket, &request, "confirmation", |e| match e {
        Event::Forgot { host, keys } => Some((host, keys)),
        _ => None,
    })?;
    if json {
        print(&json_line(
            &serde_json::json!({ "host": host, "keys": keys }),
        )?)?;
    } else if keys == 0 {
        print(&format!("{host}: no pinned key; nothing to forget\n"))?;
    } else {
        print(&format!(
            "{host}: pinned host key forgotten; the next contact pins the key it presents\n"
        ))?;
    }
    Ok(Outcome::Ok)
}

/// `cfi accept HOST`.
pub fn accept(socket: &Path, host: &str, json: bool) -> Result<Outcome> {
    let request = Request::Accept {
        host: host.to_owned(),
    };
    let (host, was_pending) = answer(socket, &request, "confirmation", |e| match e {
        Event::Accepted { host, was_pending } => Some((host, was_pending)),
        _ => None,
    })?;
    if json {
        print(&json_line(
            &serde_json::json!({ "host": host, "was_pending": was_pending }),
        )?)?;
    } else if was_pending {
        print(&format!("{host}: accepted; enrolling it now\n"))?;
    } else {
        print(&format!("{host}: was accepted already\n"))?;
    }
    Ok(Outcome::Ok)
}

/// One client's end of an `exec` or `sync`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct HostResult {
    pub(crate) host: String,
    /// `ok`, `failed`, `skipped` or `unreachable`.
    pub(crate) result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) report: Option<Box<PassReport>>,
    /// A package run's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) packages: Option<Box<cfi_packages::PkgReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// What a multi-client command ended with, for `--json` and the summary.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) hosts: Vec<HostResult>,
    ok: usize,
    failed: usize,
    skipped: usize,
    unreachable: usize,
}

impl Summary {
    pub(crate) fn add(&mut self, r: HostResult) {
        match r.result {
            "ok" => self.ok += 1,
            "failed" => self.failed += 1,
            "skipped" => self.skipped += 1,
            _ => self.unreachable += 1,
        }
        self.hosts.push(r);
    }

    /// Says on stderr which hosts did not go well (unless the result is
    /// JSON) and how the command exits.
    pub(crate) fn finish(&self, show: Show) -> Outcome {
        if show != Show::Json {
            if let Some(line) = self.line() {
                eprint(&line);
            }
        }
        self.outcome()
    }

    /// Counts again after results changed.
    fn recount(&mut self) {
        let hosts = std::mem::take(&mut self.hosts);
        *self = Self::default();
        for h in hosts {
            self.add(h);
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        if self.unreachable > 0 {
            Outcome::Unreachable
        } else if self.failed > 0 || self.skipped > 0 {
            Outcome::Failed
        } else {
            Outcome::Ok
        }
    }

    /// One line for stderr when not all went well, naming the hosts.
    pub(crate) fn line(&self) -> Option<String> {
        if self.failed == 0 && self.unreachable == 0 && self.skipped == 0 {
            return None;
        }
        let named = |what: &str| {
            let hosts: Vec<&str> = self
                .hosts
                .iter()
                .filter(|h| h.result == what)
                .map(|h| h.host.as_str())
                .collect();
            fold::fold_hosts(&hosts)
        };
        let mut line = format!("cfi: {} ok", self.ok);
        if self.failed > 0 {
            let _ = write!(line, ", {} failed: {}", self.failed, named("failed"));
        }
        if self.skipped > 0 {
            let _ = write!(line, ", {} skipped: {}", self.skipped, named("skipped"));
        }
        if self.unreachable > 0 {
            let _ = write!(
                line,
                ", {} unreachable: {}",
                self.unreachable,
                named("unreachable")
            );
        }
        Some(line + "\n")
    }

    pub(crate) fn sort(&mut self) {
        self.hosts
            .sort_by(|a, b| fold::host_order(&a.host, &b.host));
    }
}

/// `cfi exec`: `request` must be a [`Request::Exec`].
pub fn exec(socket: &Path, request: &Request, show: Show) -> Result<Outcome> {
    let mut bar = ProgressBar::hidden();
    let mut summary = Summary::default();
    // Per host: stdout and stderr kept apart (for --json) and merged in
    // arrival order (for --gather).
    let mut outputs: HashMap<String, [String; 3]> = HashMap::new();
    let mut stdout = io::stdout().lock();
    let mut broken_pipe = false;
    converse(socket, request, |event| match event {
        Event::Hosts { hosts } => bar = progress(show, hosts.len()),
        Event::Line { host, stream, line } => {
            if show == Show::Stream {
                let text = format!("{host}: {line}\n");
                bar.suspend(|| match stream {
                    Stream::Stdout if !broken_pipe => {
                        broken_pipe = stdout.write_all(text.as_bytes()).is_err();
                    }
                    Stream::Stdout => {}
                    Stream::Stderr => eprint(&text),
                });
            } else {
                let kept = outputs.entry(host).or_default();
                let i = if stream == Stream::Stdout { 0 } else { 1 };
                for k in [i, 2] {
                    kept[k].push_str(&line);
                    kept[k].push('\n');
                }
            }
        }
        Event::Exit {
            host,
            status,
            signal,
        } => {
            bar.inc(1);
            let ok = status == Some(0);
            if show == Show::Stream && !ok {
                let how = match (&status, &signal) {
                    (Some(s), _) => format!("exited with status {s}"),
                    (None, Some(sig)) => format!("killed by SIG{sig}"),
                    (None, None) => "ended".into(),
                };
                bar.suspend(|| eprint(&format!("{host}: {how}\n")));
            }
            summary.add(HostResult {
                host,
                result: if ok { "ok" } else { "failed" },
                status,
                signal,
                ..HostResult::default()
            });
        }
        trouble @ (Event::Unreachable { .. } | Event::Failed { .. }) => {
            summary.add(failure(&bar, show, trouble));
        }
        _ => {}
    })?;
    bar.finish_and_clear();
    drop(stdout);
    summary.sort();
    for h in &mut summary.hosts {
        if let Some([out, err, _]) = outputs.get(&h.host) {
            h.stdout = Some(out.clone());
            h.stderr = Some(err.clone());
        }
    }
    match show {
        Show::Json => print(&json_line(&summary)?)?,
        Show::Gather => {
            let shown: Vec<HostOutput<'_>> = summary
                .hosts
                .iter()
                .filter(|h| h.result != "unreachable")
                .map(|h| HostOutput {
                    host: &h.host,
                    output: outputs.get(&h.host).map_or(&b""[..], |o| o[2].as_bytes()),
                })
                .collect();
            print(&fold::gather(&shown))?;
        }
        Show::Stream => {}
    }
    Ok(summary.finish(show))
}

/// A client that failed or was unreachable ([`Event::Failed`] or
/// [`Event::Unreachable`]): counted, and said at once on stderr unless the
/// result is JSON.
pub(crate) fn failure(bar: &ProgressBar, show: Show, event: Event) -> HostResult {
    let (result, host, error) = match event {
        Event::Unreachable { host, error } => ("unreachable", host, error),
        Event::Failed { host, error } => ("failed", host, error),
        other => (
            "failed",
            String::new(),
            format!("unexpected event {other:?}"),
        ),
    };
    bar.inc(1);
    if show != Show::Json {
        bar.suspend(|| eprint(&format!("{host}: {result}: {error}\n")));
    }
    HostResult {
        host,
        result,
        error: Some(error),
        ..HostResult::default()
    }
}

/// `cfi sync`: `request` must be a [`Request::Sync`].
pub fn sync(socket: &Path, request: &Request, show: Show) -> Result<Outcome> {
    let mut bar = ProgressBar::hidden();
    let mut summary = Summary::default();
    let mut summary_fix = false;
    converse(socket, request, |event| match event {
        Event::Hosts { hosts } => bar = progress(show, hosts.len()),
        Event::Synced { host, report } => {
            bar.inc(1);
            let ok = report.ok();
            if show != Show::Json {
                let mut text = String::new();
                if report.dry_run || !report.changes.is_empty() || !ok {
                    // The pass's own lines, each under its host.
                    for line in crate::render::pass(&report).lines() {
                        let _ = writeln!(text, "{host}: {line}");
                    }
                } else {
                    let _ = writeln!(
                        text,
                        "{host}: up to date ({} files)",
                        report.files_unchanged
                    );
                }
                bar.suspend(|| {
                    let _ = print(&text);
                });
            }
            summary.add(HostResult {
                host,
                result: if ok { "ok" } else { "failed" },
                report: Some(report),
                ..HostResult::default()
            });
        }
        trouble @ (Event::Unreachable { .. } | Event::Failed { .. }) => {
            summary.add(failure(&bar, show, trouble));
        }
        // Packages converging after a pass that changed the lists.
        Event::Packages { host, report } => {
            if show != Show::Json {
                let text = crate::pkgs::host_lines(&host, &report);
                bar.suspend(|| {
                    let _ = print(&text);
                });
            }
            if let Some(h) = summary.hosts.iter_mut().find(|h| h.host == host) {
                if !report.ok() {
                    h.result = "failed";
                    summary_fix = true;
                }
                h.packages = Some(report);
            }
        }
        _ => {}
    })?;
    bar.finish_and_clear();
    if summary_fix {
        summary.recount();
    }
    summary.sort();
    if show == Show::Json {
        print(&json_line(&summary)?)?;
    } else if let Some(line) = summary.line() {
        eprint(&line);
    }
    Ok(summary.outcome())
}

/// "5m ago" for a unix time.
pub(crate) fn ago(t: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match now.saturating_sub(t).max(0) {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_outranks_failed_and_names_hosts() {
        let mut s = Summary::default();
        assert_eq!(s.outcome(), Outcome::Ok);
        for (host, result) in [("ws1", "ok"), ("ws3", "failed"), ("ws2", "failed")] {
            s.add(HostResult {
                host: host.into(),
                result,
                ..HostResult::default()
            });
        }
        assert_eq!(s.outcome(), Outcome::Failed);
        s.add(HostResult {
            host: "db".into(),
            result: "unreachable",
            ..HostResult::default()
        });
        assert_eq!(s.outcome(), Outcome::Unreachable);
        assert_eq!(
            s.line().unwrap(),
            "cfi: 1 ok, 2 failed: ws[2-3], 1 unreachable: db\n"
        );
    }

    #[test]
    fn columns_line_up() {
        let rows = [
            ["HOST", "STATE", "NOTE"].map(String::from),
            ["ws10", "online", ""].map(String::from),
        ];
        assert_eq!(columns(&rows), "HOST  STATE   NOTE\nws10  online\n");
    }
}
