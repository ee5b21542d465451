//! The control protocol between `cfi` and `cfi-server`: over the control
//! socket, `cfi` writes one [`Request`] as a JSON line, the daemon answers
//! with [`Event`]s, one JSON line each, as the work goes, and closes the
//! connection after [`Event::Done`] (or [`Event::Error`]). JSON lines keep
//! the protocol readable with `socat` and stable across versions: unknown
//! fields are ignored, a request the daemon does not know is answered with
//! an error naming it.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use cfi_sync::PassReport;
use serde::{Deserialize, Serialize};

use crate::ssh::Stream;

/// The largest request line the daemon reads: a broadcast stdin or a
/// script travels inside it.
pub const MAX_REQUEST: usize = 64 << 20;

/// Which clients a command is for (`-a`, `-g`, `-w`, `-x`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Targets {
    /// Every known client.
    pub all: bool,
    /// Members of these groups.
    pub groups: Vec<String>,
    /// These hosts, by name (`host` or `host:port`).
    pub hosts: Vec<String>,
    /// Minus these hosts.
    pub exclude: Vec<String>,
}

impl Targets {
    /// Whether nothing was named.
    pub fn is_empty(&self) -> bool {
        !self.all && self.groups.is_empty() && self.hosts.is_empty()
    }
}

/// What `cfi` asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// The client table.
    Clients,
    /// The groups of the data dir, with their members.
    Groups,
    /// The daemon's own state.
    Status,
    /// Sync passes on the targets (every client when none are named).
    Sync {
        /// The clients.
        targets: Targets,
        /// Report what would change; change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// A command on the targets.
    Exec {
        /// The clients.
        targets: Targets,
        /// The command line, run by `/bin/sh -c` on each client.
        command: String,
        /// Fed to the command on every client.
        #[serde(default, with = "opt_bytes")]
        stdin: Option<Vec<u8>>,
        /// Clients at once (0: all).
        #[serde(default)]
        fanout: usize,
        /// Seconds the command may run (0: the configured limit).
        #[serde(default)]
        timeout: u64,
    },
    /// Drop the pinned host key of a client; the next contact pins anew.
    Forget {
        /// The client, by name.
        host: String,
    },
    /// Enroll a pending client (`accept = "manual"`).
    Accept {
        /// The client, by name.
        host: String,
    },
    /// A package action on the targets (`cfi pkgs plan|sync|install|remove|refresh`).
    Pkgs(Box<PkgsRequest>),
    /// A question to the package inventory (`cfi pkgs search|list|outdated`).
    PkgQuery(PkgQuery),
}

/// A package action across clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PkgsRequest {
    /// The clients (plan, sync and refresh: every client when none are
    /// named).
    pub targets: Targets,
    /// What to do.
    pub action: PkgAction,
    /// Run on this many clients first and stop if any of them fails.
    pub canary: usize,
    /// Past the removal budget (never past the protected packages).
    pub force: bool,
    /// Overrides `pkgs_max_removals`.
    pub max_removals: Option<usize>,
    /// Overrides `pkgs_keep_unused`.
    pub keep_unused: Option<bool>,
    /// Overrides `pkgs_upgrade`.
    pub upgrade: Option<bool>,
    /// Clients at once (0: the sync fanout).
    pub fanout: usize,
}

/// The package actions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum PkgAction {
    /// What a sync would do; changes nothing.
    #[default]
    Plan,
    /// Converge on each client's pkgsync lists.
    Sync,
    /// Install packages, a .deb file or .deb URLs.
    Install {
        /// Package names.
        #[serde(default)]
        packages: Vec<String>,
        /// A .deb file: its name and bytes.
        #[serde(default)]
        deb: Option<DebFile>,
        /// URLs of .deb files, fetched by each client.
        #[serde(default)]
        urls: Vec<String>,
        /// Leave installed packages alone.
        #[serde(default)]
        only_missing: bool,
    },
    /// Remove packages.
    Remove {
        /// Package names.
        packages: Vec<String>,
    },
    /// apt-get update and a new inventory.
    Refresh,
}

/// A .deb file shipped to every target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebFile {
    /// Its file name (`foo_1.0_all.deb`).
    pub name: String,
    /// Its bytes.
    #[serde(with = "bytes")]
    pub bytes: Vec<u8>,
}

/// The inventory questions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "kebab-case")]
pub enum PkgQuery {
    /// Packages whose name matches a shell glob, on every client.
    Search {
        /// The glob.
        pattern: String,
    },
    /// Everything installed on one client.
    List {
        /// The client.
        host: String,
    },
    /// Upgradable packages on every client.
    Outdated,
}

/// One package on one client, from the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkgRow {
    /// The client.
    pub host: String,
    /// The package.
    pub name: String,
    /// Its architecture.
    pub arch: String,
    /// The installed version.
    pub version: String,
    /// Automatically installed.
    pub auto: bool,
    /// A newer candidate, when upgradable.
    pub candidate: Option<String>,
    /// Unix time the client's inventory was taken.
    pub refreshed: i64,
}

/// What the daemon says while it works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The targets the request resolved to, before work starts.
    Hosts {
        /// Client names.
        hosts: Vec<String>,
    },
    /// A line of a command's output (lossy UTF-8, without its newline).
    Line {
        /// The client.
        host: String,
        /// stdout or stderr.
        stream: Stream,
        /// The line.
        line: String,
    },
    /// A command ended on a client.
    Exit {
        /// The client.
        host: String,
        /// Its exit status; none when a signal ended it.
        status: Option<u32>,
        /// The signal that ended it.
        signal: Option<String>,
    },
    /// A sync pass ended on a client.
    Synced {
        /// The client.
        host: String,
        /// What the pass did.
        report: Box<PassReport>,
    },
    /// A package run ended on a client.
    Packages {
        /// The client.
        host: String,
        /// What it did.
        report: Box<cfi_packages::PkgReport>,
    },
    /// A client was left alone (a canary failed).
    Skipped {
        /// The client.
        host: String,
        /// Why.
        reason: String,
    },
    /// The answer to [`Request::PkgQuery`].
    PkgRows {
        /// Matching packages.
        rows: Vec<PkgRow>,
    },
    /// The client could not be reached (connect, handshake, host key,
    /// authentication, or the connection was lost).
    Unreachable {
        /// The client.
        host: String,
        /// Why.
        error: String,
    },
    /// The work failed on a reachable client (timeout, a failed pass).
    Failed {
        /// The client.
        host: String,
        /// Why.
        error: String,
    },
    /// The answer to [`Request::Clients`].
    Clients {
        /// One row per client.
        clients: Vec<ClientRow>,
    },
    /// The answer to [`Request::Groups`].
    Groups {
        /// One row per group.
        groups: Vec<GroupRow>,
    },
    /// The answer to [`Request::Status`].
    Status(Box<StatusInfo>),
    /// The answer to [`Request::Accept`].
    Accepted {
        /// The client.
        host: String,
        /// Whether it was pending (not accepted before).
        was_pending: bool,
    },
    /// The answer to [`Request::Forget`].
    Forgot {
        /// The client.
        host: String,
        /// Pinned keys dropped.
        keys: usize,
    },
    /// The request failed as a whole.
    Error {
        /// Why.
        message: String,
    },
    /// The request is complete.
    Done,
}

/// How the server sees a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientState {
    /// Listed, never contacted yet.
    StaticOnly,
    /// Announced and not contacted yet: being enrolled, or, with
    /// `accept = "manual"`, waiting for `cfi accept`.
    Pending,
    /// Connected.
    Online,
    /// Was connected; the connection was lost (and, for an announced
    /// client, its mDNS record is gone too).
    Offline,
    /// Announced over mDNS but not answering: the connection was lost
    /// while the record lives on (a network problem, or a machine that
    /// died without a goodbye; its record expires within two minutes).
    Stale,
    /// Never reached: refused, timed out, no such host, or rejected the key.
    Unreachable,
    /// Presented another host key than the pinned one: refused until
    /// `cfi forget`.
    HostkeyChanged,
}

/// One row of `cfi clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRow {
    /// Its name, as listed.
    pub host: String,
    /// Its group (`unknown` when none was asked for or the group has no
    /// directory).
    pub group: String,
    /// Where the server connects.
    pub address: String,
    /// Where it is listed (`file:line`).
    pub source: String,
    /// See [`ClientState`].
    pub state: ClientState,
    /// The pinned host key's fingerprint.
    pub host_key: Option<String>,
    /// Unix time of the last successful pass.
    pub last_sync: Option<i64>,
    /// What the last pass did, in a few words.
    pub last_result: Option<String>,
    /// The last error reaching it.
    pub error: Option<String>,
}

/// One row of `cfi groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    /// The group.
    pub name: String,
    /// Whether `<data_dir>/<name>` exists.
    pub has_dir: bool,
    /// The clients in it.
    pub members: Vec<String>,
}

/// The answer to `cfi status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// cfi-server's version.
    pub version: String,
    /// Its pid.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime: u64,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The state dir.
    pub state_dir: PathBuf,
    /// The server key's fingerprint.
    pub key: String,
    /// Clients known.
    pub clients: usize,
    /// Clients connected.
    pub online: usize,
    /// Problems worth a look (an unreadable client list, …).
    pub warnings: Vec<String>,
}

/// A connection to the daemon, from the CLI's side.
#[derive(Debug)]
pub struct ControlClient {
    socket: PathBuf,
    lines: BufReader<UnixStream>,
}

/// The control socket cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nothing listens, or the socket is not accessible.
    #[error("cannot reach cfi-server at {}: {cause} (is cfi-server running? is this the right --socket?)", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// The connection broke.
    #[error("control socket {}: {cause}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// The daemon sent something that is not an event.
    #[error("control socket {}: unexpected answer {line:?}: {cause}", socket.display())]
    Garbled {
        /// The socket.
        socket: PathBuf,
        /// What came.
        line: String,
        /// Why it does not parse.
        cause: serde_json::Error,
    },
}

impl ControlClient {
    /// Connects and sends `request`.
    pub fn send(socket: &Path, request: &Request) -> Result<Self, ControlError> {
        let io_err = |cause| ControlError::Io {
            socket: socket.to_owned(),
            cause,
        };
        let mut stream = UnixStream::connect(socket).map_err(|cause| ControlError::Connect {
            socket: socket.to_owned(),
            cause,
        })?;
        let mut line = serde_json::to_vec(request).map_err(|e| io_err(e.into()))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io_err)?;
        Ok(Self {
            socket: socket.to_owned(),
            lines: BufReader::new(stream),
        })
    }

    /// The next event; `None` once the daemon closed the connection.
    pub fn next_event(&mut self) -> Result<Option<Event>, ControlError> {
        let mut line = String::new();
        let n = self
            .lines
            .read_line(&mut line)
            .map_err(|cause| ControlError::Io {
                socket: self.socket.clone(),
                cause,
            })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|cause| ControlError::Garbled {
                socket: self.socket.clone(),
                line: line.trim_end().to_owned(),
                cause,
            })
    }
}

/// Binary bytes (a .deb) as a list of numbers would triple their size:
/// hex doubles it and needs no crate.
mod bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut hex = String::with_capacity(v.len() * 2);
        for b in v {
            let _ = write!(hex, "{b:02x}");
        }
        s.serialize_str(&hex)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let hex = String::deserialize(d)?;
        if hex.len() % 2 != 0 {
            return Err(D::Error::custom("odd-length hex"));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(D::Error::custom))
            .collect()
    }
}

/// Bytes as a string in JSON: UTF-8 text as is (the common case: stdin
/// piped from a file or a script), anything else base64-free as a list of
/// numbers, so no encoding crate is needed and text stays readable.
mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|b| match std::str::from_utf8(b) {
                Ok(t) => Repr::Text(t.to_owned()),
                Err(_) => Repr::Bytes(b.clone()),
            })
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Repr>::deserialize(d)?.map(|r| match r {
            Repr::Text(t) => t.into_bytes(),
            Repr::Bytes(b) => b,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_binary_stdin() {
        for stdin in [None, Some(b"text\n".to_vec()), Some(vec![0xff, 0, 1])] {
            let r = Request::Exec {
                targets: Targets {
                    groups: vec!["lab".into()],
                    ..Targets::default()
                },
                command: "cat".into(),
                stdin,
                fanout: 0,
                timeout: 0,
            };
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn a_deb_travels_as_hex() {
        let r = Request::Pkgs(Box::new(PkgsRequest {
            action: PkgAction::Install {
                packages: vec![],
                deb: Some(DebFile {
                    name: "a_1_all.deb".into(),
                    bytes: vec![0, 0xff, 0x10],
                }),
                urls: vec![],
                only_missing: true,
            },
            ..PkgsRequest::default()
        }));
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"00ff10\""), "{line}");
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
    }

    #[test]
    fn an_unknown_request_is_named_in_the_error() {
        let err = serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).unwrap_err();
        assert!(err.to_string().contains("reboot"), "{err}");
    }
}
