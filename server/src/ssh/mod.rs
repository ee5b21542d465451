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

mod channel;
mod key;
mod runner;

pub use channel::Stream;
pub use key::ServerKey;

use channel::{QueueReader, collect, pump};

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cfi_sync::frame::FrameError;
use cfi_sync::history::History;
use cfi_sync::{PassReport, PushOptions, Source, SyncError};
use russh::keys::ssh_key::Fingerprint;
use russh::keys::{Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelReadHalf, ChannelWriteHalf, Disconnect, cipher, client, kex};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

/// sshd's default `MaxSessions` is 10: one is the command runner's, two
/// stay free for channels whose close is still on its way to sshd when the
/// next one opens.
pub const MAX_CHANNELS: usize = 7;

/// Keepalives sent without an answer before the connection counts as dead.
const KEEPALIVE_MAX: usize = 3;

/// TCP_USER_TIMEOUT for a connection with `timeouts`, in milliseconds: the
/// keepalives' own patience, one interval per unanswered keepalive and
/// one more.
fn user_timeout_ms(timeouts: Timeouts) -> u32 {
    let patience = timeouts.keepalive * (KEEPALIVE_MAX as u32 + 1);
    u32::try_from(patience.as_millis()).unwrap_or(u32::MAX)
}

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

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    /// Its exit status; `None` when a signal killed it.
    pub status: Option<u32>,
    /// The signal that killed it (`TERM`, `KILL`, …).
    pub signal: Option<String>,
}

impl Exit {
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

/// Whether commands go through the agent's runner.
#[derive(Debug)]
enum RunnerState {
    /// Not opened yet (or it died: opened again when needed).
    Untried,
    /// Open.
    Ready(Arc<runner::Runner>),
    /// The agent has none: a session per command.
    Unsupported,
}

/// An authenticated SSH connection to one client. Channels opened on it
/// run concurrently, at most [`MAX_CHANNELS`] at a time. Dropping it closes
/// the connection.
pub struct Connection {
    handle: client::Handle<Verifier>,
    host: String,
    host_key: Fingerprint,
    ended: Arc<OnceLock<String>>,
    /// Set when the client stopped answering channel requests: the
    /// connection counts as closed before keepalives notice.
    silent: AtomicBool,
    channels: Semaphore,
    /// The command runner, opened by the first command.
    runner: tokio::sync::Mutex<RunnerState>,
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
        // russh's keepalives cannot see a peer that vanished while data is
        // in flight: its session loop then waits on a full socket buffer,
        // keepalive timer included, for as long as TCP retransmits (about
        // 15 minutes). TCP_USER_TIMEOUT has the kernel fail the socket
        // when sent data stays unacknowledged for as long as the
        // keepalives would give a silent peer.
        let _ = rustix::net::sockopt::set_tcp_user_timeout(&stream, user_timeout_ms(*timeouts));
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
        // The previous key (after `cfi-server rotate-key`) for clients
        // that have not installed the new one yet.
        let login = async {
            let first = handle
                .authenticate_publickey(
                    user,
                    PrivateKeyWithHashAlg::new(Arc::clone(&key.key), None),
                )
                .await;
            match (&first, &key.previous) {
                (Ok(r), Some(previous)) if !r.success() => {
                    handle
                        .authenticate_publickey(
                            user,
                            PrivateKeyWithHashAlg::new(Arc::clone(previous), None),
                        )
                        .await
                }
                _ => first,
            }
        };
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
            silent: AtomicBool::new(false),
            channels: Semaphore::new(MAX_CHANNELS),
            runner: tokio::sync::Mutex::new(RunnerState::Untried),
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
        self.silent.load(Ordering::Relaxed) || self.handle.is_closed()
    }

    /// Opens the command runner ahead of the first command, so that it
    /// finds the client's agent started.
    pub async fn warm_up(&self) {
        if let Err(e) = self.runner().await {
            tracing::debug!(host = self.host, error = %e, "cannot open the command runner");
        }
    }

    /// The runner, opened on first use; `None` when the agent has none.
    async fn runner(&self) -> Result<Option<Arc<runner::Runner>>, SshError> {
        let mut state = self.runner.lock().await;
        match &*state {
            RunnerState::Ready(r) if r.alive() => return Ok(Some(Arc::clone(r))),
            RunnerState::Unsupported => return Ok(None),
            RunnerState::Ready(_) | RunnerState::Untried => {}
        }
        match runner::Runner::open(self).await {
            Ok(r) => {
                *state = RunnerState::Ready(Arc::clone(&r));
                Ok(Some(r))
            }
            Err(runner::OpenError::Unsupported(why)) => {
                tracing::info!(
                    host = self.host,
                    why,
                    "the agent has no command runner; one session per command"
                );
                *state = RunnerState::Unsupported;
                Ok(None)
            }
            Err(runner::OpenError::Ssh(e)) => Err(e),
        }
    }

    /// Says goodbye to the client and closes the connection.
    pub async fn close(self) {
        if let RunnerState::Ready(r) = &*self.runner.lock().await {
            r.close().await;
        }
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    /// Runs one sync pass of `source`'s tree on the client: the agent's `serve` on a
    /// channel of its own.
    /// With `history`, a client that applied an earlier manifest it holds
    /// gets only the difference.
    pub async fn sync(
        &self,
        source: Arc<Source>,
        opts: PushOptions,
        history: Option<&dyn History>,
    ) -> Result<PassReport, SshError> {
        // A runner that serves passes spares the client a session.
        if let Some(runner) = self.runner().await?.filter(|r| r.serves()) {
            return runner.pass(self, source, opts, history).await;
        }
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
            source,
            opts,
            history,
            QueueReader::new(stdout_rx),
            to_agent.make_writer(),
        );
        let mut ending = None;
        let pushed = timeout(limit.saturating_sub(started.elapsed()), async {
            tokio::pin!(pass);
            tokio::select! {
                pushed = &mut pass => pushed,
                ended = &mut pump => {
                    // The channel ended under the pass (the agent died):
                    // what it sent is queued for the pass to read, but a
                    // write waiting for window space on a closed channel
                    // never completes, so the pass gets a moment, not
                    // forever.
                    ending = ended.ok();
                    timeout(END_WAIT, &mut pass)
                        .await
                        .unwrap_or(Err(SyncError::Frame(FrameError::Closed)))
                }
            }
        })
        .await;
        // The agent exits after its report; after a failure, our EOF tells
        // it to. Either way the channel ends soon.
        let _ = to_agent.eof().await;
        if ending.is_none() {
            ending = timeout(END_WAIT, &mut pump).await.ok().and_then(Result::ok);
        }
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
            // The connection went (the network, the client's power) with
            // the agent silent: the client is unreachable, which is what
            // the admin acts on. A pass cut short is harmless: every file
            // is whole, and the next pass finishes the job.
            Ok(Err(_))
                if self.is_closed()
                    && ending
                        .as_ref()
                        .is_none_or(|e| e.status.is_none() && e.signal.is_none()) =>
            {
                Err(self.lost())
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
    /// to it (or none: EOF at once), within the command timeout, and keeps
    /// its output. A non-zero exit is in the output, not an error.
    pub async fn exec(&self, command: &str, stdin: Option<&[u8]>) -> Result<ExecOutput, SshError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let exit = self
            .exec_with(command, stdin, self.timeouts.command, |stream, chunk| {
                let kept = match stream {
                    Stream::Stdout => &mut stdout,
                    Stream::Stderr => &mut stderr,
                };
                if kept.len() + chunk.len() > MAX_OUTPUT {
                    return Err(SshError::OutputTooLarge {
                        host: self.host.clone(),
                        command: command.to_owned(),
                    });
                }
                kept.extend_from_slice(chunk);
                Ok(())
            })
            .await?;
        Ok(ExecOutput {
            stdout,
            stderr,
            status: exit.status,
            signal: exit.signal,
        })
    }

    /// Runs `command` like [`Connection::exec`] within `limit`, handing
    /// each chunk of its output to `sink` as it arrives (an error from
    /// `sink` ends the command). Returns how it ended.
    pub async fn exec_with<F>(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        limit: Duration,
        sink: F,
    ) -> Result<Exit, SshError>
    where
        F: FnMut(Stream, &[u8]) -> Result<(), SshError>,
    {
        if let Some(runner) = self.runner().await? {
            return runner.exec(self, command, stdin, limit, sink).await;
        }
        self.exec_session(command, stdin, limit, sink).await
    }

    /// Runs `command` like [`Connection::exec_with`], always on a session
    /// channel of its own, never through the command runner: an agent verb
    /// (`cfi-agent pkgs …`) must reach the forced command, which the runner's
    /// `/bin/sh -c` does not.
    pub async fn exec_session<F>(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        limit: Duration,
        sink: F,
    ) -> Result<Exit, SshError>
    where
        F: FnMut(Stream, &[u8]) -> Result<(), SshError>,
    {
        let _permit = self.channels.acquire().await;
        let started = Instant::now();
        let (mut from, to) = timeout(limit, self.open(command))
            .await
            .map_err(|_| self.timed_out(command, limit))??;
        let run = async {
            // Output is read while stdin is written, and a command that
            // exits without reading all of its stdin is done all the same.
            let feed = async {
                if let Some(data) = stdin {
                    let _ = to.data(data).await;
                }
                let _ = to.eof().await;
            };
            let collect = collect(&mut from, sink);
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
        let ending = match collected {
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
        Ok(Exit {
            status: ending.status,
            signal: ending.signal,
        })
    }

    /// Opens a session channel and asks for `command` on it. A client that
    /// does not answer within the connect timeout is taken for gone (cut
    /// off the network, frozen): reported as lost at once rather than after
    /// the keepalives give up, and the connection is not used again.
    async fn open(
        &self,
        command: &str,
    ) -> Result<(ChannelReadHalf, ChannelWriteHalf<client::Msg>), SshError> {
        let opening = timeout(self.timeouts.connect, self.handle.channel_open_session()).await;
        let channel = match opening {
            Err(_) => {
                self.mark_silent("no answer to a channel request");
                return Err(self.lost());
            }
            Ok(opened) => opened.map_err(|e| match e {
                russh::Error::ChannelOpenFailure(why) => self.refused(command, format!("{why:?}")),
                _ if self.is_closed() => self.lost(),
                cause => SshError::Protocol {
                    host: self.host.clone(),
                    cause,
                },
            })?,
        };
        // The reply (success or failure) arrives on the channel.
        channel.exec(true, command).await.map_err(|_| self.lost())?;
        Ok(channel.split())
    }

    /// Takes the client for gone: `what` got no answer within the connect
    /// timeout.
    fn mark_silent(&self, what: &str) {
        self.silent.store(true, Ordering::Relaxed);
        let _ = self
            .ended
            .set(format!("{what} within {:?}", self.timeouts.connect));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
