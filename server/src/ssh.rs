//! The server's SSH transport: one russh connection per client, many
//! channels on it.
//!
//! The server logs in as root with its own ed25519 key ([`ServerKey`]). The
//! client's announcer installed that key in `/root/.ssh/authorized_keys` as a
//! forced command (`restrict,command="/usr/lib/cfi/cfi-agent …"`), so sshd
//! runs the agent for every channel, whatever the server asks, with
//! `SSH_ORIGINAL_COMMAND` set to the request: `serve` is a sync pass on the
//! channel's stdin/stdout ([`Connection::sync`], `cfi_sync::push` on this
//! side), anything else a shell command ([`Connection::exec`]).
//!
//! Trust runs the other way too (DESIGN.md, "Trust"): the client's host key
//! is pinned per machine. [`Connection::connect`] takes the pinned
//! fingerprint; without one it accepts the key and reports its fingerprint so
//! the caller can pin it, with one a different key is refused.
//!
//! What OpenSSH needs handled (CRATES.md): sshd allows 10 sessions per
//! connection, so channels are bounded by a semaphore; every channel is
//! drained as its messages arrive, because russh delivers them from its one
//! connection task and an unread channel stalls all others, keepalives
//! included; the exit status comes from the channel's messages, and a
//! channel that ends without one is a failure.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use cfi_groups::Tree;
use cfi_sync::{PassReport, PushOptions, SyncError};
use russh::keys::ssh_key::{Fingerprint, LineEnding};
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig, cipher, client, kex};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

/// sshd's default `MaxSessions` is 10. Two stay free for channels whose
/// close is still on its way to sshd when the next one opens.
pub const MAX_CHANNELS: usize = 8;

/// Keepalives sent without an answer before the connection counts as dead.
const KEEPALIVE_MAX: usize = 3;

/// How much of a command's stdout or stderr [`Connection::exec`] keeps;
/// more fails the command rather than the server's memory.
pub const MAX_OUTPUT: usize = 64 << 20;

/// How much of the agent's stderr a failed pass quotes (the end of it).
const STDERR_TAIL: usize = 4096;

/// SSH data messages (at most 32 KiB each) the agent may send ahead of the
/// pass reading them. The protocol never sends much unasked; a queue rather
/// than back-pressure because a full channel would stall the connection.
const STDOUT_QUEUE: usize = 1024;

/// How long a channel gets to end (exit status, close) after its work.
const END_WAIT: Duration = Duration::from_secs(5);

/// curve25519 first: OpenSSH 9's post-quantum default costs several times
/// the CPU per handshake (CRATES.md). The extension names are how russh
/// asks for strict kex and server-sig-algs.
const KEX: &[kex::Name] = &[
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

const CIPHERS: &[cipher::Name] = &[cipher::CHACHA20_POLY1305, cipher::AES_256_GCM];

/// The client's ed25519 host key is the one pinned (and the one the
/// announcer advertises), so it is the only one asked for.
const HOST_KEY_ALGORITHMS: &[Algorithm] = &[Algorithm::Ed25519];

/// Why an SSH operation failed. Every message names the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The server's key file cannot be read, parsed or written.
    #[error("server key {}: {why}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The pinned fingerprint is not of the form `SHA256:…`.
    #[error("pinned host key of {host} is not a fingerprint: {pin:?}")]
    BadPin {
        /// The client.
        host: String,
        /// What was pinned.
        pin: String,
    },
    /// The timeouts contradict each other.
    #[error("invalid SSH timeouts: {0}")]
    Timeouts(String),
    /// TCP connect failed (refused, unreachable, no such host).
    #[error("cannot connect to {host}: {cause}")]
    Connect {
        /// The client.
        host: String,
        /// The cause.
        cause: io::Error,
    },
    /// No SSH session within the connect timeout.
    #[error("cannot connect to {host}: no SSH session within {after:?}")]
    ConnectTimeout {
        /// The client.
        host: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The host presented another key than the one pinned for it.
    #[error(
        "host key of {host} changed: pinned {pinned}, presented {presented}; refusing to \
         connect (if the machine was reinstalled, forget its pinned key)"
    )]
    HostKeyChanged {
        /// The client.
        host: String,
        /// The pinned fingerprint.
        pinned: String,
        /// The fingerprint of the key the host presented.
        presented: String,
    },
    /// The key exchange or the SSH protocol failed.
    #[error("SSH session with {host} failed: {cause}")]
    Protocol {
        /// The client.
        host: String,
        /// The cause.
        cause: russh::Error,
    },
    /// The client did not accept the server's key.
    #[error(
        "{host} rejected the server key {key} for {user}: is it in the client's \
         /root/.ssh/authorized_keys?"
    )]
    AuthRejected {
        /// The client.
        host: String,
        /// The user.
        user: String,
        /// The server key's fingerprint.
        key: String,
    },
    /// Authentication took longer than the auth timeout.
    #[error("authentication to {host} took longer than {after:?}")]
    AuthTimeout {
        /// The client.
        host: String,
        /// The auth timeout.
        after: Duration,
    },
    /// The connection is gone (keepalive or inactivity timeout, peer closed).
    #[error("connection to {host} lost: {why}")]
    Lost {
        /// The client.
        host: String,
        /// Why, as far as known.
        why: String,
    },
    /// The client refused a channel or the command on it.
    #[error("{host} refused to run `{command}`: {why}")]
    Refused {
        /// The client.
        host: String,
        /// The command.
        command: String,
        /// sshd's reason.
        why: String,
    },
    /// The channel ended without an exit status: the command's fate is
    /// unknown.
    #[error("`{command}` on {host} ended without an exit status")]
    NoExitStatus {
        /// The client.
        host: String,
        /// The command.
        command: String,
    },
    /// The command wrote more than [`MAX_OUTPUT`] to stdout or stderr.
    #[error("`{command}` on {host} wrote more than {MAX_OUTPUT} bytes of output")]
    OutputTooLarge {
        /// The client.
        host: String,
        /// The command.
        command: String,
    },
    /// The command or pass ran past its timeout; its channel was closed.
    #[error("`{command}` on {host} did not finish within {after:?}")]
    Timeout {
        /// The client.
        host: String,
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The sync pass failed as a whole.
    #[error("sync pass on {host} failed: {cause}{detail}")]
    Pass {
        /// The client.
        host: String,
        /// What the engine saw.
        cause: SyncError,
        /// What the channel said besides: exit status, the end of the
        /// agent's stderr.
        detail: String,
    },
}

/// The server's own key pair: ed25519, in OpenSSH's format, unencrypted
/// (the daemon starts unattended).
#[derive(Clone)]
pub struct ServerKey {
    key: Arc<PrivateKey>,
    path: PathBuf,
    public_line: String,
}

impl fmt::Debug for ServerKey {
    // Never the private half.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl ServerKey {
    /// Loads the key at `path`, or generates one there (mode 0600, comment
    /// `cfi-server@<hostname>`) if there is none.
    pub fn load_or_generate(path: &Path) -> Result<ServerKey, SshError> {
        match fs::read(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::generate(path),
            Err(e) => Err(key_error(path, format!("cannot read: {e}"))),
        }
    }

    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<ServerKey, SshError> {
        let text = fs::read(path).map_err(|e| key_error(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<ServerKey, SshError> {
        let key = PrivateKey::from_openssh(text)
            .map_err(|e| key_error(path, format!("not an OpenSSH private key: {e}")))?;
        if key.is_encrypted() {
            return Err(key_error(
                path,
                "encrypted; the server needs a key without a passphrase".into(),
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(key_error(
                path,
                format!("a {} key; the server uses ed25519", key.algorithm()),
            ));
        }
        Self::new(path, key)
    }

    fn new(path: &Path, key: PrivateKey) -> Result<ServerKey, SshError> {
        let public_line = key
            .public_key()
            .to_openssh()
            .map_err(|e| key_error(path, format!("cannot encode the public key: {e}")))?;
        Ok(ServerKey {
            key: Arc::new(key),
            path: path.to_owned(),
            public_line,
        })
    }

    /// Writes a new key beside `path` and links it into place, so a
    /// concurrent start that made one first wins and both use that one.
    fn generate(path: &Path) -> Result<ServerKey, SshError> {
        let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
            .map_err(|e| key_error(path, format!("cannot generate: {e}")))?;
        key.set_comment(format!("cfi-server@{}", hostname()));
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| key_error(path, format!("cannot encode: {e}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| key_error(path, format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".new-{}", std::process::id()));
        let temp = PathBuf::from(temp);
        let write = || -> io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::hard_link(&temp, path)
        };
        let written = write();
        let _ = fs::remove_file(&temp);
        match written {
            Ok(()) => {
                tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "generated the server key");
                Self::new(path, key)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(key_error(path, format!("cannot write: {e}"))),
        }
    }

    /// The public key as one `authorized_keys` line:
    /// `ssh-ed25519 AAAA… cfi-server@HOST`.
    pub fn public_line(&self) -> &str {
        &self.public_line
    }

    /// The public key's fingerprint, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Where the key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn key_error(path: &Path, why: String) -> SshError {
    SshError::Key {
        path: path.to_owned(),
        why,
    }
}

/// The kernel's host name, for the key's comment.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The time limits of a connection and its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and SSH handshake (key exchange, host key check).
    pub connect: Duration,
    /// Public-key authentication.
    pub auth: Duration,
    /// A keepalive goes out when nothing came in for this long; after
    /// three unanswered ones the connection is dead. Below `inactivity`.
    pub keepalive: Duration,
    /// Nothing received for this long ends the connection.
    pub inactivity: Duration,
    /// One [`Connection::exec`], from opening its channel to its close.
    pub command: Duration,
    /// One [`Connection::sync`] pass.
    pub pass: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            auth: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            inactivity: Duration::from_secs(30),
            command: Duration::from_secs(300),
            pass: Duration::from_secs(3600),
        }
    }
}

impl Timeouts {
    fn check(&self) -> Result<(), SshError> {
        let bad = |why: &str| Err(SshError::Timeouts(why.into()));
        if [
            self.connect,
            self.auth,
            self.keepalive,
            self.command,
            self.pass,
        ]
        .contains(&Duration::ZERO)
        {
            return bad("a timeout of zero would fail everything");
        }
        if self.keepalive >= self.inactivity {
            // The keepalive's answer is what keeps an idle connection
            // from its inactivity timeout.
            return bad("the keepalive interval must be below the inactivity timeout");
        }
        Ok(())
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// Its exit status; `None` when a signal killed it.
    pub status: Option<u32>,
    /// The signal that killed it (`TERM`, `KILL`, …).
    pub signal: Option<String>,
}

impl ExecOutput {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Checks the client's host key against the pin during the handshake.
struct Verifier {
    /// The pinned key, or after first use the key first seen: a later key
    /// exchange on the same connection must present it again.
    expected: Option<Fingerprint>,
    /// Where the accepted key's fingerprint goes for [`Connection`].
    accepted: Arc<OnceLock<Fingerprint>>,
    /// Why the connection ended, for the errors of its channels.
    ended: Arc<OnceLock<String>>,
}

/// Why the handshake failed: the host key is refused here, not in russh.
#[derive(Debug)]
enum HandshakeError {
    Ssh(russh::Error),
    HostKeyChanged {
        pinned: Fingerprint,
        presented: Fingerprint,
    },
    Certificate,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ssh(e) => e.fmt(f),
            Self::HostKeyChanged { pinned, presented } => {
                write!(f, "host key changed from {pinned} to {presented}")
            }
            Self::Certificate => f.write_str("the host presented a certificate"),
        }
    }
}

impl From<russh::Error> for HandshakeError {
    fn from(e: russh::Error) -> Self {
        Self::Ssh(e)
    }
}

impl client::Handler for Verifier {
    type Error = HandshakeError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, HandshakeError> {
        // No certificate algorithms are offered; a server sending one
        // anyway is not one of ours.
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Err(HandshakeError::Certificate);
        };
        let presented = key.fingerprint(HashAlg::Sha256);
        match self.expected {
            Some(pinned) if pinned != presented => {
                Err(HandshakeError::HostKeyChanged { pinned, presented })
            }
            _ => {
                self.expected = Some(presented);
                let _ = self.accepted.set(presented);
                Ok(true)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<HandshakeError>,
    ) -> Result<(), HandshakeError> {
        let (why, result) = match reason {
            client::DisconnectReason::ReceivedDisconnect(info) if info.message.is_empty() => {
                ("the client disconnected".to_owned(), Ok(()))
            }
            client::DisconnectReason::ReceivedDisconnect(info) => {
                (format!("the client disconnected: {}", info.message), Ok(()))
            }
            // Returned as russh's default does, so the session ends with it.
            client::DisconnectReason::Error(e) => (e.to_string(), Err(e)),
        };
        let _ = self.ended.set(why);
        result
    }
}

/// An authenticated SSH connection to one client. Channels opened on it
/// run concurrently, at most [`MAX_CHANNELS`] at a time. Dropping it closes
/// the connection.
pub struct Connection {
    handle: client::Handle<Verifier>,
    host: String,
    host_key: Fingerprint,
    ended: Arc<OnceLock<String>>,
    channels: Semaphore,
    timeouts: Timeouts,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("host_key", &self.host_key.to_string())
            .field("closed", &self.handle.is_closed())
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` (`host:port` or a socket address), checks its
    /// host key against `pinned` (`SHA256:…`; `None` accepts any key, see
    /// [`Connection::host_key`]) and logs in as `user` with `key`.
    pub async fn connect<A>(
        addr: A,
        user: &str,
        key: &ServerKey,
        pinned: Option<&str>,
        timeouts: &Timeouts,
    ) -> Result<Connection, SshError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let host = addr.to_string();
        timeouts.check()?;
        let expected = pinned
            .map(|pin| {
                Fingerprint::from_str(pin).map_err(|_| SshError::BadPin {
                    host: host.clone(),
                    pin: pin.to_owned(),
                })
            })
            .transpose()?;
        let started = Instant::now();
        let connect_timeout = || SshError::ConnectTimeout {
            host: host.clone(),
            after: timeouts.connect,
        };
        let stream = timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_timeout())?
            .map_err(|cause| SshError::Connect {
                host: host.clone(),
                cause,
            })?;
        // Frames of the sync protocol are small and answered: no Nagle.
        let _ = stream.set_nodelay(true);
        let accepted = Arc::new(OnceLock::new());
        let ended = Arc::new(OnceLock::new());
        let verifier = Verifier {
            expected,
            accepted: Arc::clone(&accepted),
            ended: Arc::clone(&ended),
        };
        let left = timeouts.connect.saturating_sub(started.elapsed());
        let handshake = client::connect_stream(Arc::new(config(timeouts)), stream, verifier);
        let mut handle = match timeout(left, handshake).await {
            Err(_) => return Err(connect_timeout()),
            Ok(Ok(handle)) => handle,
            Ok(Err(HandshakeError::HostKeyChanged { pinned, presented })) => {
                return Err(SshError::HostKeyChanged {
                    host,
                    pinned: pinned.to_string(),
                    presented: presented.to_string(),
                });
            }
            Ok(Err(HandshakeError::Certificate)) => {
                return Err(SshError::Protocol {
                    host,
                    cause: russh::Error::UnknownKey,
                });
            }
            Ok(Err(HandshakeError::Ssh(cause))) => return Err(SshError::Protocol { host, cause }),
        };
        let Some(host_key) = accepted.get().copied() else {
            // russh calls check_server_key before it completes the handshake.
            return Err(SshError::Protocol {
                host,
                cause: russh::Error::UnknownKey,
            });
        };
        let login = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::clone(&key.key), None));
        match timeout(timeouts.auth, login).await {
            Err(_) => {
                return Err(SshError::AuthTimeout {
                    host,
                    after: timeouts.auth,
                });
            }
            Ok(Err(cause)) => return Err(SshError::Protocol { host, cause }),
            Ok(Ok(result)) if !result.success() => {
                return Err(SshError::AuthRejected {
                    host,
                    user: user.to_owned(),
                    key: key.fingerprint(),
                });
            }
            Ok(Ok(_)) => {}
        }
        tracing::debug!(host, host_key = %host_key, first_use = pinned.is_none(), took = ?started.elapsed(), "connected");
        Ok(Connection {
            handle,
            host,
            host_key,
            ended,
            channels: Semaphore::new(MAX_CHANNELS),
            timeouts: *timeouts,
        })
    }

    /// The client as it was addressed.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The fingerprint (`SHA256:…`) of the host key the client presented:
    /// the one to pin after a first contact.
    pub fn host_key(&self) -> String {
        self.host_key.to_string()
    }

    /// Whether the connection is gone (closed, or keepalives unanswered).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Says goodbye to the client and closes the connection.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    /// Runs one sync pass of `tree` on the client: the agent's `serve` on a
    /// channel of its own.
    pub async fn sync(&self, tree: Arc<Tree>, opts: PushOptions) -> Result<PassReport, SshError> {
        const COMMAND: &str = "serve";
        // Held to the end; the semaphore is never closed.
        let _permit = self.channels.acquire().await;
        let started = Instant::now();
        let limit = self.timeouts.pass;
        let timed_out = || self.timed_out(COMMAND, limit);
        let (from_agent, to_agent) = timeout(limit, self.open(COMMAND))
            .await
            .map_err(|_| timed_out())??;
        let (stdout_tx, stdout_rx) = mpsc::channel(STDOUT_QUEUE);
        let mut pump = tokio::spawn(pump(from_agent, stdout_tx));
        let pass = cfi_sync::push(
            tree,
            opts,
            None,
            QueueReader::new(stdout_rx),
            to_agent.make_writer(),
        );
        let pushed = timeout(limit.saturating_sub(started.elapsed()), pass).await;
        // The agent exits after its report; after a failure, our EOF tells
        // it to. Either way the channel ends soon.
        let _ = to_agent.eof().await;
        let ending = timeout(END_WAIT, &mut pump).await.ok().and_then(Result::ok);
        if !ending.as_ref().is_some_and(|e| e.closed) {
            let _ = to_agent.close().await;
        }
        match pushed {
            Err(_) => Err(timed_out()),
            Ok(Ok(report)) => {
                if let Some(e) = ending.as_ref().filter(|e| e.status != Some(0)) {
                    tracing::warn!(host = self.host, ending = %e.describe(), "the agent reported, then ended badly");
                }
                Ok(report)
            }
            Ok(Err(cause)) => {
                let detail = match (&cause, &ending) {
                    // An agent that said why needs nothing beside it.
                    (SyncError::Remote(_), _) => String::new(),
                    (_, Some(e)) => format!("; {}", e.describe()),
                    (_, None) if self.is_closed() => format!("; {}", self.lost()),
                    (_, None) => "; the channel did not end".into(),
                };
                Err(SshError::Pass {
                    host: self.host.clone(),
                    cause,
                    detail,
                })
            }
        }
    }

    /// Runs `command` on the client (`/bin/sh -c` there) with `stdin` fed
    /// to it (or none: EOF at once), within the command timeout. A non-zero
    /// exit is in the output, not an error.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecOutput, SshError> {
        let _permit = self.channels.acquire().await;
        let started = Instant::now();
        let limit = self.timeouts.command;
        let (mut from, to) = timeout(limit, self.open(command))
            .await
            .map_err(|_| self.timed_out(command, limit))??;
        let run = async {
            // Output is read while stdin is written, and a command that
            // exits without reading all of its stdin is done all the same.
            let feed = async {
                if let Some(data) = stdin {
                    let _ = to.data(&data[..]).await;
                }
                let _ = to.eof().await;
            };
            let collect = collect(&mut from, &self.host, command);
            tokio::pin!(feed, collect);
            let mut fed = false;
            loop {
                tokio::select! {
                    out = &mut collect => break out,
                    () = &mut feed, if !fed => fed = true,
                }
            }
        };
        let collected = timeout(limit.saturating_sub(started.elapsed()), run).await;
        let (stdout, ending) = match collected {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                let _ = to.close().await;
                return Err(e);
            }
            Err(_) => {
                let _ = to.close().await;
                return Err(self.timed_out(command, limit));
            }
        };
        if !ending.closed {
            let _ = to.close().await;
        }
        if let Some(why) = ending.refused {
            return Err(self.refused(command, why));
        }
        if ending.status.is_none() && ending.signal.is_none() {
            return Err(if self.is_closed() {
                self.lost()
            } else {
                SshError::NoExitStatus {
                    host: self.host.clone(),
                    command: command.to_owned(),
                }
            });
        }
        Ok(ExecOutput {
            stdout,
            stderr: ending.stderr,
            status: ending.status,
            signal: ending.signal,
        })
    }

    /// Opens a session channel and asks for `command` on it.
    async fn open(
        &self,
        command: &str,
    ) -> Result<(ChannelReadHalf, ChannelWriteHalf<client::Msg>), SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| match e {
                russh::Error::ChannelOpenFailure(why) => self.refused(command, format!("{why:?}")),
                _ if self.is_closed() => self.lost(),
                cause => SshError::Protocol {
                    host: self.host.clone(),
                    cause,
                },
            })?;
        // The reply (success or failure) arrives on the channel.
        channel.exec(true, command).await.map_err(|_| self.lost())?;
        Ok(channel.split())
    }

    fn lost(&self) -> SshError {
        SshError::Lost {
            host: self.host.clone(),
            why: self
                .ended
                .get()
                .cloned()
                .unwrap_or_else(|| "the connection closed".into()),
        }
    }

    fn timed_out(&self, command: &str, after: Duration) -> SshError {
        SshError::Timeout {
            host: self.host.clone(),
            command: command.to_owned(),
            after,
        }
    }

    fn refused(&self, command: &str, why: String) -> SshError {
        SshError::Refused {
            host: self.host.clone(),
            command: command.to_owned(),
            why,
        }
    }
}

fn config(timeouts: &Timeouts) -> client::Config {
    client::Config {
        inactivity_timeout: Some(timeouts.inactivity),
        keepalive_interval: Some(timeouts.keepalive),
        keepalive_max: KEEPALIVE_MAX,
        preferred: russh::Preferred {
            kex: Cow::Borrowed(KEX),
            key: Cow::Borrowed(HOST_KEY_ALGORITHMS),
            cipher: Cow::Borrowed(CIPHERS),
            ..russh::Preferred::DEFAULT
        },
        nodelay: true,
        ..client::Config::default()
    }
}

/// How a channel ended, from every message but its stdout.
#[derive(Debug, Default)]
struct Ending {
    status: Option<u32>,
    signal: Option<String>,
    stderr: Vec<u8>,
    /// sshd refused the command.
    refused: Option<String>,
    /// The client sent EOF: no more output.
    eof: bool,
    /// The client closed the channel (and russh answered the close).
    closed: bool,
    /// The agent's stdout outran the pass reading it.
    overflowed: bool,
}

impl Ending {
    /// Takes one message that is not stdout; true when the channel is done.
    fn absorb(&mut self, msg: ChannelMsg) -> bool {
        match msg {
            // SSH_EXTENDED_DATA_STDERR (RFC 4254, 5.2).
            ChannelMsg::ExtendedData { data, ext: 1 } => self.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => self.status = Some(exit_status),
            ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            } => {
                let name = match signal_name {
                    Sig::Custom(name) => name,
                    known => format!("{known:?}"),
                };
                if !error_message.is_empty() {
                    self.stderr.extend_from_slice(error_message.as_bytes());
                }
                self.signal = Some(name);
            }
            ChannelMsg::Failure => {
                self.refused = Some("the request was denied".into());
                return true;
            }
            ChannelMsg::Eof => self.eof = true,
            ChannelMsg::Close => {
                self.closed = true;
                return true;
            }
            _ => {}
        }
        false
    }

    /// Keeps the end of stderr only.
    fn keep_stderr_tail(&mut self) {
        if self.stderr.len() > 2 * STDERR_TAIL {
            self.stderr.drain(..self.stderr.len() - STDERR_TAIL);
        }
    }

    /// One line for an error message: how the agent ended and what it said.
    fn describe(&self) -> String {
        let mut text = match (&self.refused, self.status, &self.signal) {
            (Some(why), _, _) => format!("sshd refused the command: {why}"),
            (None, Some(status), _) => format!("the agent exited with status {status}"),
            (None, None, Some(signal)) => format!("the agent was killed by SIG{signal}"),
            (None, None, None) => "the agent ended without an exit status".into(),
        };
        if self.overflowed {
            text.push_str(&format!(
                "; it sent more than {STDOUT_QUEUE} unread messages"
            ));
        }
        let start = self.stderr.len().saturating_sub(STDERR_TAIL);
        let tail = String::from_utf8_lossy(&self.stderr[start..]);
        let tail = tail.trim();
        if !tail.is_empty() {
            let cut = if start > 0 { "…" } else { "" };
            text.push_str(&format!(": {cut}{tail}"));
        }
        text
    }
}

/// Reads a channel to its end for [`Connection::exec`].
async fn collect(
    from: &mut ChannelReadHalf,
    host: &str,
    command: &str,
) -> Result<(Vec<u8>, Ending), SshError> {
    let mut stdout = Vec::new();
    let mut ending = Ending::default();
    while let Some(msg) = from.wait().await {
        let done = match msg {
            ChannelMsg::Data { data } => {
                stdout.extend_from_slice(&data);
                false
            }
            other => ending.absorb(other),
        };
        if stdout.len() > MAX_OUTPUT || ending.stderr.len() > MAX_OUTPUT {
            return Err(SshError::OutputTooLarge {
                host: host.to_owned(),
                command: command.to_owned(),
            });
        }
        if done {
            break;
        }
    }
    Ok((stdout, ending))
}

/// Reads the agent's channel for [`Connection::sync`]: stdout into the
/// queue the pass reads, the rest into the [`Ending`]. Never waits for the
/// pass, so the connection never stalls on it.
async fn pump(mut from: ChannelReadHalf, stdout: mpsc::Sender<ChannelMsg>) -> Ending {
    let mut stdout = Some(stdout);
    let mut ending = Ending::default();
    while let Some(msg) = from.wait().await {
        match msg {
            data @ ChannelMsg::Data { .. } => {
                if let Some(queue) = &stdout {
                    match queue.try_send(data) {
                        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The pass sees the stream end early and fails.
                            ending.overflowed = true;
                            stdout = None;
                        }
                    }
                }
            }
            other => {
                let done = ending.absorb(other);
                ending.keep_stderr_tail();
                if ending.eof || done {
                    stdout = None;
                }
                if done {
                    break;
                }
            }
        }
    }
    ending
}

/// The agent's stdout as an [`AsyncRead`]: the data messages [`pump`]
/// queued, in order; EOF when the queue ends.
struct QueueReader {
    queue: mpsc::Receiver<ChannelMsg>,
    /// The message being read and how far.
    current: Option<(ChannelMsg, usize)>,
}

impl QueueReader {
    fn new(queue: mpsc::Receiver<ChannelMsg>) -> Self {
        Self {
            queue,
            current: None,
        }
    }
}

impl AsyncRead for QueueReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let (copied, finished) = match this.current.as_mut() {
                Some((ChannelMsg::Data { data }, at)) => {
                    let n = buf.remaining().min(data.len() - *at);
                    buf.put_slice(&data[*at..*at + n]);
                    *at += n;
                    (n, *at == data.len())
                }
                Some(_) => (0, true),
                None => match ready!(this.queue.poll_recv(cx)) {
                    Some(msg) => {
                        this.current = Some((msg, 0));
                        continue;
                    }
                    None => return Poll::Ready(Ok(())),
                },
            };
            if finished {
                this.current = None;
            }
            if copied > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn a_missing_key_is_generated_private_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server_key");
        let made = ServerKey::load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let line = made.public_line();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[0], "ssh-ed25519");
        assert!(fields[1].starts_with("AAAA"), "{line}");
        assert!(fields[2].starts_with("cfi-server@"), "{line}");
        assert!(made.fingerprint().starts_with("SHA256:"));

        let loaded = ServerKey::load_or_generate(&path).unwrap();
        assert_eq!(loaded.public_line(), made.public_line());
        assert_eq!(loaded.fingerprint(), made.fingerprint());
        // No temp files left beside it.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_key_that_is_not_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server_key");
        fs::write(&path, "not a key").unwrap();
        let err = ServerKey::load_or_generate(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not an OpenSSH private key"), "{err}");
    }

    #[test]
    fn timeouts_need_keepalives_below_inactivity() {
        Timeouts::default().check().unwrap();
        let t = Timeouts {
            keepalive: Duration::from_secs(30),
            ..Timeouts::default()
        };
        assert!(t.check().is_err());
        let t = Timeouts {
            connect: Duration::ZERO,
            ..Timeouts::default()
        };
        assert!(t.check().is_err());
    }

    #[tokio::test]
    async fn a_bad_pin_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_generate(&dir.path().join("k")).unwrap();
        // Port 9 of TEST-NET-1: never reached, the pin fails first.
        let err = Connection::connect(
            "192.0.2.1:9",
            "root",
            &key,
            Some("MD5:xx"),
            &Timeouts::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SshError::BadPin { .. }), "{err}");
        assert!(err.to_string().contains("192.0.2.1:9"), "{err}");
    }

    #[tokio::test]
    async fn the_queue_reads_as_one_stream() {
        let (tx, rx) = mpsc::channel(8);
        for chunk in [&b"hel"[..], b"", b"lo ", b"world"] {
            tx.send(ChannelMsg::Data {
                data: chunk.to_vec().into(),
            })
            .await
            .unwrap();
        }
        drop(tx);
        let mut reader = QueueReader::new(rx);
        let mut small = [0u8; 2];
        reader.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"he");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"llo world");
    }

    #[test]
    fn an_ending_says_how_the_agent_ended() {
        let mut e = Ending::default();
        assert!(!e.absorb(ChannelMsg::ExtendedData {
            data: b"cfi-agent: no such state dir\n".to_vec().into(),
            ext: 1,
        }));
        assert!(!e.absorb(ChannelMsg::ExitStatus { exit_status: 2 }));
        assert!(!e.absorb(ChannelMsg::Eof));
        assert!(e.absorb(ChannelMsg::Close));
        assert_eq!(
            e.describe(),
            "the agent exited with status 2: cfi-agent: no such state dir"
        );
        let mut e = Ending::default();
        e.absorb(ChannelMsg::ExitSignal {
            signal_name: Sig::KILL,
            core_dumped: false,
            error_message: String::new(),
            lang_tag: String::new(),
        });
        assert_eq!(e.describe(), "the agent was killed by SIGKILL");
    }
}
