//! The server's end of the command runner (`cfi_sync::runner`): one agent
//! channel per connection that runs every ad-hoc command, so a warm
//! `cfi exec` costs a client one fork of `/bin/sh` instead of a new SSH
//! session, a login shell and two program starts.
//!
//! The channel is read by a task of its own ([`pump`], then a demultiplexer
//! that hands each command's messages to whoever waits for them), so that
//! no command's reader can stall the others or the connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cfi_sync::frame::{DATA_CHUNK, FrameError, FrameReader, FrameWriter};
use cfi_sync::history::History;
use cfi_sync::runner::{FromRunner, SERVES_FROM, ToRunner, VERB, VERSION};
use cfi_sync::{PassReport, PushOptions, Source};
use russh::{ChannelWriteHalf, client};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::channel::{QueueReader, Stream, pump};
use super::{Connection, END_WAIT, Exit, STDOUT_QUEUE, SshError};

type Writer = FrameWriter<Pin<Box<dyn AsyncWrite + Send>>>;

/// The runner writer's buffer: room for a frame of [`DATA_CHUNK`] bytes of
/// stdin and its header, the largest the server sends.
const WRITE_BUFFER: usize = 2 * DATA_CHUNK;

/// An open runner channel.
pub(super) struct Runner {
    host: String,
    to: tokio::sync::Mutex<Writer>,
    channel: ChannelWriteHalf<client::Msg>,
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<FromRunner>>>,
    next: AtomicU32,
    alive: AtomicBool,
    /// The runner's protocol version.
    version: u32,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("host", &self.host)
            .field("alive", &self.alive())
            .finish()
    }
}

/// Why no runner could be had.
pub(super) enum OpenError {
    /// The agent has no runner (an older cfi-agent): use a session per
    /// command.
    Unsupported(String),
    /// The connection failed.
    Ssh(SshError),
}

impl Runner {
    /// Opens the runner channel on `conn` and waits for its hello, for at
    /// most the connect timeout.
    pub(super) async fn open(conn: &Connection) -> Result<Arc<Runner>, OpenError> {
        let (from, to) = conn.open(VERB).await.map_err(OpenError::Ssh)?;
        let (queue_tx, queue_rx) = mpsc::channel(STDOUT_QUEUE);
        tokio::spawn(pump(from, queue_tx));
        let mut reader = FrameReader::new(QueueReader::new(queue_rx));
        let hello = timeout(conn.timeouts.connect, reader.recv::<FromRunner>()).await;
        let version = match hello {
            // Version 1 runs commands only; passes then take a session.
            Ok(Ok(FromRunner::Hello { version })) if (1..=VERSION).contains(&version) => version,
            Ok(Ok(FromRunner::Hello { version })) => {
                let _ = to.close().await;
                return Err(OpenError::Unsupported(format!(
                    "runner version {version}, this server speaks {VERSION}"
                )));
            }
            other => {
                let _ = to.close().await;
                if conn.is_closed() {
                    return Err(OpenError::Ssh(conn.lost()));
                }
                let why = match other {
                    Err(_) => "no hello within the connect timeout".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(m)) => format!("unexpected first message {m:?}"),
                };
                return Err(OpenError::Unsupported(why));
            }
        };
        // Through a buffer that holds any frame the server sends whole: a
        // send given up halfway (a pass that ended, a timeout) leaves its
        // frame in the buffer for the next flush, never half on the wire,
        // where it would garble every frame after it.
        let writer: Pin<Box<dyn AsyncWrite + Send>> = Box::pin(
            tokio::io::BufWriter::with_capacity(WRITE_BUFFER, to.make_writer()),
        );
        let runner = Arc::new(Runner {
            host: conn.host.clone(),
            to: tokio::sync::Mutex::new(FrameWriter::new(writer)),
            channel: to,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            alive: AtomicBool::new(true),
            version,
        });
        tokio::spawn(Arc::clone(&runner).demultiplex(reader));
        Ok(runner)
    }

    /// Whether the runner runs sync passes.
    pub(super) fn serves(&self) -> bool {
        self.version >= SERVES_FROM
    }

    /// Whether the channel still carries commands.
    pub(super) fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Closes the channel; the agent kills what still runs.
    pub(super) async fn close(&self) {
        let _ = self.channel.close().await;
    }

    /// Hands each message to the command it is for, until the channel
    /// ends; then every command still waiting learns that it is lost.
    async fn demultiplex(self: Arc<Self>, mut reader: FrameReader<QueueReader>) {
        let end = loop {
            let msg = match reader.recv::<FromRunner>().await {
                Ok(m) => m,
                Err(FrameError::Closed) => break "the command runner's channel ended".to_owned(),
                Err(e) => break format!("the command runner's channel failed: {e}"),
            };
            let (id, last) = match &msg {
                FromRunner::Output { id, .. } | FromRunner::Started { id } => (*id, false),
                FromRunner::Exit { id, .. } | FromRunner::Failed { id, .. } => (*id, true),
                FromRunner::Hello { .. } => continue,
            };
            let mut waiting = self.waiting();
            if let Some(tx) = waiting.get(&id) {
                let _ = tx.send(msg);
            }
            if last {
                waiting.remove(&id);
            }
        };
        tracing::debug!(host = self.host, end, "runner gone");
        self.alive.store(false, Ordering::Relaxed);
        self.waiting().clear();
    }

    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<FromRunner>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new id, the queue of its messages, and the guard that kills what
    /// it names unless it ends.
    fn register(self: &Arc<Self>) -> (u32, mpsc::UnboundedReceiver<FromRunner>, Pending) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiting().insert(id, tx);
        let pending = Pending {
            runner: Arc::clone(self),
            id,
            done: false,
        };
        (id, rx, pending)
    }

    async fn send(&self, msgs: &[ToRunner]) -> Result<(), FrameError> {
        let mut to = self.to.lock().await;
        for m in msgs {
            to.send(m).await?;
        }
        to.flush().await
    }

    /// Runs `command` as [`Connection::exec_with`] does.
    pub(super) async fn exec<F>(
        self: &Arc<Self>,
        conn: &Connection,
        command: &str,
        stdin: Option<&[u8]>,
        limit: Duration,
        mut sink: F,
    ) -> Result<Exit, SshError>
    where
        F: FnMut(Stream, &[u8]) -> Result<(), SshError>,
    {
        let started = Instant::now();
        // Whatever ends this command early (an error, a timeout, the
        // request dropped) kills it on the client.
        let (id, mut rx, mut pending) = self.register();
        let mut start = vec![ToRunner::Start {
            id,
            command: command.to_owned(),
        }];
        for chunk in stdin.unwrap_or_default().chunks(DATA_CHUNK) {
            start.push(ToRunner::Stdin {
                id,
                data: chunk.to_vec(),
            });
        }
        start.push(ToRunner::StdinEnd { id });
        let lost = || SshError::Lost {
            host: self.host.clone(),
            why: "the command runner's channel ended".into(),
        };
        let run = async {
            self.send(&start).await.map_err(|_| lost())?;
            // A client cut off the network keeps its connection looking
            // alive until keepalives give up; one that does not say
            // "started" within the connect timeout is taken for gone now.
            let first = timeout(conn.timeouts.connect, rx.recv()).await;
            let Ok(first) = first else {
                conn.mark_silent("no answer to a command");
                return Err(conn.lost());
            };
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    FromRunner::Output { stderr, data, .. } => {
                        let stream = if stderr {
                            Stream::Stderr
                        } else {
                            Stream::Stdout
                        };
                        sink(stream, &data)?;
                    }
                    FromRunner::Exit { status, signal, .. } => return Ok(Exit { status, signal }),
                    FromRunner::Failed { message, .. } => {
                        return Err(conn.refused(command, message));
                    }
                    FromRunner::Hello { .. } | FromRunner::Started { .. } => {}
                }
                next = rx.recv().await;
            }
            Err(if conn.is_closed() {
                conn.lost()
            } else {
                lost()
            })
        };
        let result = match timeout(limit.saturating_sub(started.elapsed()), run).await {
            Ok(r) => r,
            Err(_) => Err(conn.timed_out(command, limit)),
        };
        pending.done = result.is_ok();
        result
    }
}

impl Runner {
    /// Runs one sync pass of `source`'s tree on the runner (version 2), as
    /// [`Connection::sync`] does over a session of its own: the pass's
    /// byte stream goes as the stdin and stdout of a runner command.
    pub(super) async fn pass(
        self: &Arc<Self>,
        conn: &Connection,
        source: Arc<Source>,
        opts: PushOptions,
        history: Option<&dyn History>,
    ) -> Result<PassReport, SshError> {
        const COMMAND: &str = "serve";
        let started = Instant::now();
        let limit = conn.timeouts.pass;
        let (id, mut rx, mut pending) = self.register();
        let lost = || SshError::Lost {
            host: self.host.clone(),
            why: "the command runner's channel ended".into(),
        };
        // A channel that died under us may never take even this much.
        match timeout(conn.timeouts.connect, self.send(&[ToRunner::Serve { id }])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(lost()),
            Err(_) => {
                conn.mark_silent("no room for a sync pass on the command runner");
                return Err(conn.lost());
            }
        }
        match timeout(conn.timeouts.connect, rx.recv()).await {
            Err(_) => {
                conn.mark_silent("no answer to a sync pass");
                return Err(conn.lost());
            }
            Ok(Some(FromRunner::Started { .. })) => {}
            Ok(Some(FromRunner::Failed { message, .. })) => {
                return Err(conn.refused(COMMAND, message));
            }
            Ok(_) => return Err(lost()),
        }
        let (mut agent_out, from_agent) = tokio::io::duplex(DATA_CHUNK);
        let (to_agent, mut agent_in) = tokio::io::duplex(DATA_CHUNK);
        // The pass's bytes to the agent, as its stdin. It never ends by
        // itself: a send on a dead channel may wait for window space
        // forever, so it is dropped once the pass and the runner's side
        // are done, never waited for.
        let outgoing = async {
            let mut buf = vec![0u8; DATA_CHUNK];
            loop {
                let n = agent_in.read(&mut buf).await.unwrap_or(0);
                let msg = if n == 0 {
                    ToRunner::StdinEnd { id }
                } else {
                    ToRunner::Stdin {
                        id,
                        data: buf[..n].to_vec(),
                    }
                };
                if self.send(&[msg]).await.is_err() || n == 0 {
                    break;
                }
            }
            std::future::pending::<Infallible>().await
        };
        // The agent's stdout to the pass, until the pass's end (its exit
        // status) or the runner's (its queue closes: no status).
        let incoming = async {
            let mut stderr = Vec::new();
            let mut status = None;
            while let Some(msg) = rx.recv().await {
                match msg {
                    FromRunner::Output {
                        stderr: false,
                        data,
                        ..
                    } => {
                        // A pass that ended reads no more: its bytes go.
                        let _ = agent_out.write_all(&data).await;
                    }
                    FromRunner::Output { data, .. } => stderr.extend_from_slice(&data),
                    FromRunner::Exit { status: s, .. } => {
                        status = s;
                        break;
                    }
                    FromRunner::Failed { message, .. } => {
                        stderr.extend_from_slice(message.as_bytes());
                        break;
                    }
                    FromRunner::Hello { .. } | FromRunner::Started { .. } => {}
                }
            }
            drop(agent_out);
            (status, stderr)
        };
        let pass = cfi_sync::push(source, opts, history, from_agent, to_agent);
        let run = async {
            tokio::pin!(pass, outgoing, incoming);
            tokio::select! {
                pushed = &mut pass => {
                    // The report is in; the pass's exit follows it.
                    let ended = tokio::select! {
                        ended = &mut incoming => Some(ended),
                        never = &mut outgoing => match never {},
                        () = tokio::time::sleep(END_WAIT) => None,
                    };
                    (pushed, ended)
                }
                ended = &mut incoming => {
                    // The pass or the runner ended under the pass: what it
                    // sent is queued for the pass to read, but a write of
                    // the pass may be waiting on a dead channel, so the
                    // pass gets a moment, not forever.
                    let pushed = tokio::select! {
                        pushed = &mut pass => pushed,
                        never = &mut outgoing => match never {},
                        () = tokio::time::sleep(END_WAIT) => {
                            Err(cfi_sync::SyncError::Frame(FrameError::Closed))
                        }
                    };
                    (pushed, Some(ended))
                }
                never = &mut outgoing => match never {},
            }
        };
        let (pushed, ended) = match timeout(limit.saturating_sub(started.elapsed()), run).await {
            Ok(done) => done,
            Err(_) => return Err(conn.timed_out(COMMAND, limit)),
        };
        let (status, stderr) = ended.unwrap_or_default();
        pending.done = status.is_some();
        match pushed {
            Ok(report) => Ok(report),
            // The connection or the runner went with the pass cut short:
            // unreachable, as for a pass on a session of its own.
            Err(_) if status.is_none() && (conn.is_closed() || !self.alive()) => {
                Err(if conn.is_closed() {
                    conn.lost()
                } else {
                    lost()
                })
            }
            Err(cause) => {
                let said = String::from_utf8_lossy(&stderr);
                let detail = match (&cause, said.trim()) {
                    (cfi_sync::SyncError::Remote(_), _) => String::new(),
                    (_, "") => String::new(),
                    (_, said) => format!("; {said}"),
                };
                Err(SshError::Pass {
                    host: self.host.clone(),
                    cause,
                    detail,
                })
            }
        }
    }
}

/// A command started on the runner; killed on drop unless it ended.
struct Pending {
    runner: Arc<Runner>,
    id: u32,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let removed = self.runner.waiting().remove(&self.id).is_some();
        if !self.done && removed && self.runner.alive() {
            let (runner, id) = (Arc::clone(&self.runner), self.id);
            tokio::spawn(async move {
                let _ = runner.send(&[ToRunner::Kill { id }]).await;
            });
        }
    }
}
