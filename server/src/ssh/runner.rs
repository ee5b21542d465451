//! The server's end of the command runner (`cfi_sync::runner`): one agent
//! channel per connection that runs every ad-hoc command, so a warm
//! `cfi exec` costs a client one fork of `/bin/sh` instead of a new SSH
//! session, a login shell and two program starts.
//!
//! The channel is read by a task of its own ([`pump`], then a demultiplexer
//! that hands each command's messages to whoever waits for them), so that
//! no command's reader can stall the others or the connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cfi_sync::frame::{DATA_CHUNK, FrameError, FrameReader, FrameWriter};
use cfi_sync::runner::{FromRunner, ToRunner, VERB, VERSION};
use russh::{ChannelWriteHalf, client};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::channel::{QueueReader, Stream, pump};
use super::{Connection, Exit, STDOUT_QUEUE, SshError};

type Writer = FrameWriter<Pin<Box<dyn AsyncWrite + Send>>>;

/// An open runner channel.
pub(super) struct Runner {
    host: String,
    to: tokio::sync::Mutex<Writer>,
    channel: ChannelWriteHalf<client::Msg>,
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<FromRunner>>>,
    next: AtomicU32,
    alive: AtomicBool,
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
        match hello {
            Ok(Ok(FromRunner::Hello { version })) if version == VERSION => {}
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
        }
        let writer: Pin<Box<dyn AsyncWrite + Send>> = Box::pin(to.make_writer());
        let runner = Arc::new(Runner {
            host: conn.host.clone(),
            to: tokio::sync::Mutex::new(FrameWriter::new(writer)),
            channel: to,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(Arc::clone(&runner).demultiplex(reader));
        Ok(runner)
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
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiting().insert(id, tx);
        // Whatever ends this command early (an error, a timeout, the
        // request dropped) kills it on the client.
        let mut pending = Pending {
            runner: Arc::clone(self),
            id,
            done: false,
        };
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
