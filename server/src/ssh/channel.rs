//! Reading a channel to its end: stdout queued for the sync pass, stderr,
//! exit status and signal collected, so no channel is ever left unread
//! (an unread channel stalls the whole connection, keepalives included).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use russh::{ChannelMsg, ChannelReadHalf, Sig};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::{STDERR_TAIL, STDOUT_QUEUE, SshError};

/// How a channel ended, from every message but its stdout.
#[derive(Debug, Default)]
pub(super) struct Ending {
    pub(super) status: Option<u32>,
    pub(super) signal: Option<String>,
    pub(super) stderr: Vec<u8>,
    /// sshd refused the command.
    pub(super) refused: Option<String>,
    /// The client sent EOF: no more output.
    pub(super) eof: bool,
    /// The client closed the channel (and russh answered the close).
    pub(super) closed: bool,
    /// The agent's stdout outran the pass reading it.
    pub(super) overflowed: bool,
}

impl Ending {
    /// Takes one message that is not stdout; true when the channel is done.
    pub(super) fn absorb(&mut self, msg: ChannelMsg) -> bool {
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
    pub(super) fn keep_stderr_tail(&mut self) {
        if self.stderr.len() > 2 * STDERR_TAIL {
            self.stderr.drain(..self.stderr.len() - STDERR_TAIL);
        }
    }

    /// One line for an error message: how the agent ended and what it said.
    pub(super) fn describe(&self) -> String {
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

/// Which output of a command a chunk is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Reads a channel to its end for [`Connection::exec_with`]: each chunk of
/// stdout and stderr goes to `sink` as it arrives; an error from `sink`
/// stops reading.
pub(super) async fn collect<F>(from: &mut ChannelReadHalf, mut sink: F) -> Result<Ending, SshError>
where
    F: FnMut(Stream, &[u8]) -> Result<(), SshError>,
{
    let mut ending = Ending::default();
    while let Some(msg) = from.wait().await {
        let done = match msg {
            ChannelMsg::Data { data } => {
                sink(Stream::Stdout, &data)?;
                false
            }
            // SSH_EXTENDED_DATA_STDERR (RFC 4254, 5.2).
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                sink(Stream::Stderr, &data)?;
                false
            }
            other => ending.absorb(other),
        };
        if done {
            break;
        }
    }
    Ok(ending)
}

/// Reads the agent's channel for [`Connection::sync`]: stdout into the
/// queue the pass reads, the rest into the [`Ending`]. Never waits for the
/// pass, so the connection never stalls on it.
pub(super) async fn pump(mut from: ChannelReadHalf, stdout: mpsc::Sender<ChannelMsg>) -> Ending {
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
pub(super) struct QueueReader {
    pub(super) queue: mpsc::Receiver<ChannelMsg>,
    /// The message being read and how far.
    pub(super) current: Option<(ChannelMsg, usize)>,
}

impl QueueReader {
    pub(super) fn new(queue: mpsc::Receiver<ChannelMsg>) -> Self {
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
    use tokio::io::AsyncReadExt;

    use super::*;

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
