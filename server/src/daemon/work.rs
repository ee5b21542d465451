//! What the daemon does for each [`Request`]: the answers of the table
//! commands, and sync passes and commands across clients, each reporting
//! through [`Event`]s as it goes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cfi_groups::hashcache::HashCache;
use cfi_groups::{DataDir, GroupName, Tree};
use cfi_sync::history::{DirHistory, History};
use cfi_sync::{PushOptions, Source};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::Daemon;
use super::pool::ReachError;
use super::roster::Member;
use crate::control::{ClientRow, Event, GroupRow, Request, StatusInfo, Targets};
use crate::ssh::{MAX_OUTPUT, SshError, Stream};

/// Where events go; unbounded because the SSH side must never wait on the
/// CLI (an unread channel stalls a connection), with output bounded per
/// client by [`MAX_OUTPUT`] instead.
pub(super) type Events = mpsc::UnboundedSender<Event>;

/// Passes at once when syncing many clients: past this the server's disk
/// and CPU, not the network, are what is waited on.
pub(super) const SYNC_FANOUT: usize = 32;

/// Carries out `request`; an `Err` fails it as a whole.
pub(super) async fn handle(
    daemon: &Arc<Daemon>,
    request: Request,
    events: &Events,
) -> Result<(), String> {
    match request {
        Request::Clients => {
            let clients = daemon.rows();
            send(events, Event::Clients { clients });
        }
        Request::Groups => send(
            events,
            Event::Groups {
                groups: daemon.group_rows()?,
            },
        ),
        Request::Status => send(events, Event::Status(Box::new(daemon.status()))),
        Request::Forget { host } => forget(daemon, &host, events).await?,
        Request::Accept { host } => accept(daemon, &host, events)?,
        Request::Exec {
            targets,
            command,
            stdin,
            fanout,
            timeout,
        } => {
            let limit = match timeout {
                0 => daemon.pool.timeouts().command,
                s => Duration::from_secs(s),
            };
            let job = ExecJob {
                command,
                stdin: stdin.map(Arc::from),
                limit,
            };
            exec(daemon, &targets, Arc::new(job), fanout, events).await?;
        }
        Request::Sync { targets, dry_run } => sync(daemon, &targets, dry_run, events).await?,
        Request::Pkgs(request) => super::packages::run(daemon, *request, events).await?,
        Request::PkgQuery(q) => send(events, super::packages::query(daemon, &q)?),
    }
    Ok(())
}

pub(super) fn send(events: &Events, event: Event) {
    // The request was abandoned when nobody reads: nothing to do about it.
    let _ = events.send(event);
}

/// Resolves `targets` and announces the hosts.
pub(super) fn select(
    daemon: &Daemon,
    targets: &Targets,
    events: &Events,
) -> Result<Vec<Member>, String> {
    let members = daemon.select(targets)?;
    send(
        events,
        Event::Hosts {
            hosts: members.iter().map(|m| m.name.clone()).collect(),
        },
    );
    Ok(members)
}

/// How an error reaching or working on a client is reported.
pub(super) fn failure(host: &str, e: &ReachError) -> Event {
    let host = host.to_owned();
    let error = e.to_string();
    match e {
        // The command may have run: not "unreachable", which promises it
        // did not.
        ReachError::Ssh(
            SshError::Timeout { .. }
            | SshError::OutputTooLarge { .. }
            | SshError::NoExitStatus { .. }
            | SshError::Refused { .. }
            | SshError::Pass { .. },
        ) => Event::Failed { host, error },
        _ => Event::Unreachable { host, error },
    }
}

#[derive(Debug)]
struct ExecJob {
    command: String,
    stdin: Option<Arc<[u8]>>,
    limit: Duration,
}

async fn exec(
    daemon: &Arc<Daemon>,
    targets: &Targets,
    job: Arc<ExecJob>,
    fanout: usize,
    events: &Events,
) -> Result<(), String> {
    if targets.is_empty() {
        return Err("no targets: name them with -a, -g GROUP or -w HOST,…".into());
    }
    let members = select(daemon, targets, events)?;
    let fanout = Arc::new(Semaphore::new(match fanout {
        0 => members.len().max(1),
        n => n,
    }));
    let mut runs = JoinSet::new();
    for m in members {
        let (daemon, job, events, fanout) = (
            Arc::clone(daemon),
            Arc::clone(&job),
            events.clone(),
            Arc::clone(&fanout),
        );
        runs.spawn(async move {
            let _permit = fanout.acquire().await;
            let event = match exec_one(&daemon, &m, &job, &events).await {
                Ok(exit) => Event::Exit {
                    host: m.name.clone(),
                    status: exit.status,
                    signal: exit.signal,
                },
                Err(e) => failure(&m.name, &e),
            };
            send(&events, event);
        });
    }
    while runs.join_next().await.is_some() {}
    Ok(())
}

async fn exec_one(
    daemon: &Daemon,
    m: &Member,
    job: &ExecJob,
    events: &Events,
) -> Result<crate::ssh::Exit, ReachError> {
    let conn = daemon.pool.connect(&m.slot).await?;
    let mut lines = LineSplitter::new(&m.name, events);
    let exit = conn
        .exec_with(
            &job.command,
            job.stdin.as_deref(),
            job.limit,
            |stream, chunk| {
                lines
                    .push(stream, chunk)
                    .map_err(|()| SshError::OutputTooLarge {
                        host: m.name.clone(),
                        command: job.command.clone(),
                    })
            },
        )
        .await;
    lines.finish();
    Ok(exit?)
}

/// Cuts a client's output into [`Event::Line`]s as it arrives.
pub(super) struct LineSplitter<'a> {
    host: &'a str,
    events: &'a Events,
    partial: [Vec<u8>; 2],
    total: usize,
}

impl<'a> LineSplitter<'a> {
    pub(super) fn new(host: &'a str, events: &'a Events) -> Self {
        Self {
            host,
            events,
            partial: [Vec::new(), Vec::new()],
            total: 0,
        }
    }

    pub(super) fn push(&mut self, stream: Stream, chunk: &[u8]) -> Result<(), ()> {
        self.total += chunk.len();
        if self.total > MAX_OUTPUT {
            return Err(());
        }
        let buf = &mut self.partial[stream as usize];
        buf.extend_from_slice(chunk);
        if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = buf.drain(..=end).collect();
            for line in complete[..end].split(|&b| b == b'\n') {
                self.emit(stream, line);
            }
        }
        Ok(())
    }

    /// Sends what is left after the last newline.
    pub(super) fn finish(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.partial[stream as usize]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }

    fn emit(&self, stream: Stream, line: &[u8]) {
        send(
            self.events,
            Event::Line {
                host: self.host.to_owned(),
                stream,
                line: String::from_utf8_lossy(line).into_owned(),
            },
        );
    }
}

pub(super) async fn sync(
    daemon: &Arc<Daemon>,
    targets: &Targets,
    dry_run: bool,
    events: &Events,
) -> Result<(), String> {
    let targets = if targets.is_empty() {
        Targets {
            all: true,
            ..targets.clone()
        }
    } else {
        targets.clone()
    };
    let members = select(daemon, &targets, events)?;
    sync_members(daemon, members, dry_run, events).await;
    Ok(())
}

/// A sync pass on each of `members`, reading each group's tree once,
/// reporting each pass as an [`Event::Synced`], [`Event::Failed`] or
/// [`Event::Unreachable`].
pub(super) async fn sync_members(
    daemon: &Arc<Daemon>,
    members: Vec<Member>,
    dry_run: bool,
    events: &Events,
) {
    let data = DataDir::new(&daemon.config.data_dir);
    let mut by_group: BTreeMap<GroupName, Vec<Member>> = BTreeMap::new();
    for m in members {
        by_group.entry(m.group(&data)).or_default().push(m);
    }
    let fanout = Arc::new(Semaphore::new(SYNC_FANOUT));
    let opts = PushOptions {
        dry_run,
        ..PushOptions::default()
    };
    let mut passes = JoinSet::new();
    for (group, members) in by_group {
        let (tree, history) = match read_tree(daemon, &data, &group).await {
            Ok((t, h)) => (Arc::new(Source::new(t)), Arc::new(h)),
            Err(e) => {
                for m in members {
                    let error = format!("cannot read group {group}: {e}");
                    send(
                        events,
                        Event::Failed {
                            host: m.name,
                            error,
                        },
                    );
                }
                continue;
            }
        };
        for m in members {
            let (daemon, tree, history, events, fanout) = (
                Arc::clone(daemon),
                Arc::clone(&tree),
                Arc::clone(&history),
                events.clone(),
                Arc::clone(&fanout),
            );
            passes.spawn(async move {
                let _permit = fanout.acquire().await;
                // One pass per client at a time: a second waits its turn.
                let _pass = m.slot.pass.lock().await;
                let result = match daemon.pool.connect(&m.slot).await {
                    Ok(conn) => conn
                        .sync(tree, opts, Some(&*history as &dyn History))
                        .await
                        .map_err(ReachError::from),
                    Err(e) => Err(e),
                };
                drop(_pass);
                let converge = !dry_run
                    && daemon.config.pkgs_after_sync
                    && result.as_ref().is_ok_and(changed_lists);
                let event = match result {
                    Ok(report) => {
                        if !dry_run {
                            daemon.record_sync(&m, &report);
                        }
                        Event::Synced {
                            host: m.name.clone(),
                            report: Box::new(report),
                        }
                    }
                    Err(e) => failure(&m.name, &e),
                };
                send(&events, event);
                if converge {
                    super::packages::after_sync(&daemon, &m, &events).await;
                }
            });
        }
    }
    while passes.join_next().await.is_some() {}
}

/// Whether a pass changed the client's pkgsync lists, so its packages
/// should converge on them.
fn changed_lists(report: &cfi_sync::PassReport) -> bool {
    let dir = format!("{}/", cfi_groups::pkglist::PkgLists::DIR);
    report
        .changes
        .iter()
        .any(|c| c.path.trim_start_matches('/').starts_with(&dir))
}

/// Events of work nobody asked for on the control socket (the periodic
/// repair, enrollment, propagation): failures go to the log as they
/// come, and a summary when the last sender is dropped.
pub(super) fn log_events(what: &'static str) -> Events {
    let (events, mut results) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0usize, 0usize);
        while let Some(event) = results.recv().await {
            match event {
                Event::Synced { report, .. } if report.ok() => ok += 1,
                Event::Synced { host, report } => {
                    failed += 1;
                    tracing::warn!(host, errors = report.errors.len(), "{what} left errors");
                }
                Event::Packages { host, report } if !report.ok() => {
                    failed += 1;
                    tracing::warn!(host, result = report.summary(), "packages after {what}");
                }
                Event::Packages { host, report } => {
                    tracing::info!(host, result = report.summary(), "packages after {what}");
                }
                Event::Failed { host, error } | Event::Unreachable { host, error } => {
                    failed += 1;
                    tracing::warn!(host, error, "{what} failed");
                }
                _ => {}
            }
        }
        tracing::info!(ok, failed, "{what} done");
    });
    events
}

/// Reads a group's effective tree, hashing only what changed since the
/// last read, and remembers its manifest, so that a client which applied
/// a recent one gets only the difference. Both caches live in the state
/// dir.
async fn read_tree(
    daemon: &Daemon,
    data: &DataDir,
    group: &GroupName,
) -> Result<(Tree, DirHistory), String> {
    let layers = data.layers(group);
    let cache_dir: PathBuf = daemon.config.state_dir.join("cache");
    let hashes_file = cache_dir.join(format!("hashes-{group}"));
    let history = DirHistory::new(cache_dir.join(format!("manifests-{group}")));
    tokio::task::spawn_blocking(move || {
        let mut hashes = HashCache::load(&hashes_file);
        let tree = Tree::read(&layers, &mut hashes).map_err(|e| e.to_string())?;
        let _ = std::fs::create_dir_all(&cache_dir);
        if let Err(e) = hashes.save(&hashes_file) {
            tracing::warn!(path = %hashes_file.display(), cause = %e, "cannot save hash cache");
        }
        if let Err(e) = history.put(tree.manifest()) {
            tracing::warn!(cause = %e, "cannot remember the manifest; the next change is sent whole");
        }
        Ok((tree, history))
    })
    .await
    .map_err(|e| format!("tree reader died: {e}"))?
}

/// `cfi accept`: records the client as accepted and enrolls it.
fn accept(daemon: &Arc<Daemon>, host: &str, events: &Events) -> Result<(), String> {
    let member = named(daemon, host)?.ok_or_else(|| format!("unknown client {host:?}"))?;
    if member.presence.is_none() {
        return Err(format!(
            "{} is in the static client list ({}): listed clients need no acceptance",
            member.name, member.source
        ));
    }
    daemon
        .db()
        .accept(&member.id, &member.name)
        .map_err(|e| e.to_string())?;
    let was_pending = member.slot.is_held();
    if was_pending {
        member.slot.release();
        tracing::info!(host = member.name, "accepted");
        super::discovery::spawn_enroll(daemon, member.clone());
    }
    send(
        events,
        Event::Accepted {
            host: member.name,
            was_pending,
        },
    );
    Ok(())
}

/// The client `host` names (its name, address or id); an unknown name is
/// an error from the selection.
fn named(daemon: &Daemon, host: &str) -> Result<Option<Member>, String> {
    Ok(daemon
        .select(&Targets {
            hosts: vec![host.to_owned()],
            ..Targets::default()
        })?
        .pop())
}

async fn forget(daemon: &Arc<Daemon>, host: &str, events: &Events) -> Result<(), String> {
    let member = named(daemon, host)?;
    let (id, name) = match &member {
        Some(m) => (m.id.clone(), m.name.clone()),
        None => (host.to_owned(), host.to_owned()),
    };
    let keys = daemon.forget(&id).map_err(|e| e.to_string())?;
    if let Some(m) = member {
        m.slot.close().await;
        m.slot.reset();
    }
    send(events, Event::Forgot { host: name, keys });
    Ok(())
}

impl Daemon {
    fn rows(&self) -> Vec<ClientRow> {
        let data = DataDir::new(&self.config.data_dir);
        let synced = self.synced();
        self.members()
            .into_iter()
            .map(|m| {
                let health = m.slot.health();
                let state = m.state();
                let (host_key, last) = synced.get(&m.id).cloned().unwrap_or_default();
                let (last_sync, last_result) =
                    last.map_or((None, None), |(t, r)| (Some(t), Some(r)));
                ClientRow {
                    group: m.group(&data).to_string(),
                    address: m.address.clone(),
                    source: m.source.clone(),
                    state,
                    host_key,
                    last_sync,
                    last_result,
                    error: health.error,
                    host: m.name,
                }
            })
            .collect()
    }

    fn group_rows(&self) -> Result<Vec<GroupRow>, String> {
        let data = DataDir::new(&self.config.data_dir);
        let mut rows: BTreeMap<String, GroupRow> = BTreeMap::new();
        let listed = data
            .groups()
            .map_err(|e| format!("data dir {}: {e}", self.config.data_dir.display()))?;
        for l in listed {
            if let cfi_groups::layout::Listed::Group(g) = l {
                rows.insert(
                    g.to_string(),
                    GroupRow {
                        name: g.to_string(),
                        has_dir: true,
                        members: Vec::new(),
                    },
                );
            }
        }
        for m in self.members() {
            let g = m.group(&data).to_string();
            rows.entry(g.clone())
                .or_insert_with(|| GroupRow {
                    name: g,
                    has_dir: false,
                    members: Vec::new(),
                })
                .members
                .push(m.name);
        }
        Ok(rows.into_values().collect())
    }

    fn status(&self) -> StatusInfo {
        let members = self.members();
        let online = members
            .iter()
            .filter(|m| m.slot.health().state == crate::control::ClientState::Online)
            .count();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime: self.started.elapsed().as_secs(),
            data_dir: self.config.data_dir.clone(),
            state_dir: self.config.state_dir.clone(),
            key: self.pool.key().fingerprint(),
            clients: members.len(),
            online,
            warnings: self.warnings(),
        }
    }
}
