//! The command runner: one long-lived agent channel per client that starts
//! the server's ad-hoc commands itself.
//!
//! Without it every `cfi exec` costs each client a new SSH session: sshd
//! forks, runs the forced command through the user's shell, which execs
//! the agent, which execs `/bin/sh -c`. With it the agent, started once per
//! connection (`SSH_ORIGINAL_COMMAND=run`), forks `/bin/sh -c` and nothing
//! else: on a pool whose clients share cores with their sshd, that is most
//! of the cost of a warm command.
//!
//! Frames as in [`crate::frame`]; commands are multiplexed by an id the
//! server picks. The runner sends [`FromRunner::Hello`] first, so a server
//! talking to an agent without the runner (which would run `run` as a
//! shell command and fail) notices and falls back to a session per command.
//!
//! Each command runs in a process group of its own, so a kill (timeout,
//! `cfi` interrupted) reaches what it started. When the server goes away
//! (the channel ends), every command still running is killed: a command
//! lives no longer than the connection that asked for it.

use std::collections::HashMap;
use std::process::Stdio;

use rustix::process::{Pid, Signal, kill_process_group};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::frame::{FrameError, FrameReader, FrameWriter};

/// The `SSH_ORIGINAL_COMMAND` that starts the runner.
pub const VERB: &str = "run";

/// The runner protocol's version, in [`FromRunner::Hello`].
pub const VERSION: u32 = 1;

/// How much output one [`FromRunner::Output`] carries at most.
const OUTPUT_CHUNK: usize = 32 << 10;

/// Server to runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToRunner {
    /// Run `command` with `/bin/sh -c`.
    Start {
        /// The server's id for it, unique on this channel.
        id: u32,
        /// The command line.
        command: String,
    },
    /// Bytes for the command's stdin.
    Stdin {
        /// The command.
        id: u32,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The command's stdin ends.
    StdinEnd {
        /// The command.
        id: u32,
    },
    /// Kill the command and what it started (SIGKILL to its group).
    Kill {
        /// The command.
        id: u32,
    },
}

/// Runner to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromRunner {
    /// The runner is there; the first message.
    Hello {
        /// [`VERSION`].
        version: u32,
    },
    /// A command was started: sent at once, so that a server hears within
    /// a round trip whether the client still answers.
    Started {
        /// The command.
        id: u32,
    },
    /// Some of a command's output.
    Output {
        /// The command.
        id: u32,
        /// stderr rather than stdout.
        stderr: bool,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A command ended (after all its output).
    Exit {
        /// The command.
        id: u32,
        /// Its exit status; none when a signal ended it.
        status: Option<u32>,
        /// The signal that ended it (`TERM`, `KILL`, …).
        signal: Option<String>,
    },
    /// A command could not be started.
    Failed {
        /// The command.
        id: u32,
        /// Why.
        message: String,
    },
}

/// A running command as the runner tracks it.
struct Running {
    /// Its process group (its pid).
    group: Option<Pid>,
    /// Where its stdin goes; `None` once ended.
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

/// Runs commands for the server until `input` ends, then kills the ones
/// still running. Errors are the channel's: a command's failure is a
/// message to the server.
pub async fn serve<R, W>(input: R, output: W) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_all(out_rx, FrameWriter::new(output)));
    let _ = out_tx.send(FromRunner::Hello { version: VERSION });
    let mut reader = FrameReader::new(input);
    let mut running: HashMap<u32, Running> = HashMap::new();
    let mut children = JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u32>();
    let result = loop {
        let msg = tokio::select! {
            msg = reader.recv::<ToRunner>() => msg,
            Some(id) = done_rx.recv() => {
                running.remove(&id);
                continue;
            }
        };
        match msg {
            Ok(ToRunner::Start { id, command }) => match spawn(&command) {
                Ok(mut child) => {
                    let group = child.id().and_then(|p| Pid::from_raw(p as i32));
                    let stdin = child.stdin.take().map(feed);
                    running.insert(id, Running { group, stdin });
                    let _ = out_tx.send(FromRunner::Started { id });
                    let (out, done) = (out_tx.clone(), done_tx.clone());
                    children.spawn(async move {
                        watch(id, child, &out).await;
                        let _ = done.send(id);
                    });
                }
                Err(e) => {
                    let message = format!("cannot run /bin/sh: {e}");
                    let _ = out_tx.send(FromRunner::Failed { id, message });
                }
            },
            Ok(ToRunner::Stdin { id, data }) => {
                if let Some(tx) = running.get(&id).and_then(|r| r.stdin.as_ref()) {
                    // A command that stopped reading just loses it.
                    let _ = tx.send(data);
                }
            }
            Ok(ToRunner::StdinEnd { id }) => {
                if let Some(r) = running.get_mut(&id) {
                    r.stdin = None;
                }
            }
            Ok(ToRunner::Kill { id }) => {
                if let Some(group) = running.get(&id).and_then(|r| r.group) {
                    let _ = kill_process_group(group, Signal::KILL);
                }
            }
            Err(FrameError::Closed) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    for r in running.values() {
        if let Some(group) = r.group {
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
    while children.join_next().await.is_some() {}
    drop(out_tx);
    let written = writer.await.unwrap_or(Ok(()));
    result.and(written)
}

fn spawn(command: &str) -> std::io::Result<Child> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
}

/// Writes what the queue holds, flushing whenever it runs dry.
async fn write_all<W: AsyncWrite + Unpin>(
    mut queue: mpsc::UnboundedReceiver<FromRunner>,
    mut out: FrameWriter<W>,
) -> Result<(), FrameError> {
    while let Some(msg) = queue.recv().await {
        out.send(&msg).await?;
        while let Ok(more) = queue.try_recv() {
            out.send(&more).await?;
        }
        out.flush().await?;
    }
    out.shutdown().await
}

/// A task that writes what arrives to the command's stdin, closing it
/// when the sender goes: a command slow to read never holds up the runner.
fn feed(mut stdin: ChildStdin) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if stdin.write_all(&data).await.is_err() {
                break;
            }
        }
        // Dropping stdin closes it: the command sees EOF.
    });
    tx
}

/// Forwards a command's output and then its end.
async fn watch(id: u32, mut child: Child, out: &mpsc::UnboundedSender<FromRunner>) {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::join!(
        forward(id, stdout, false, out),
        forward(id, stderr, true, out)
    );
    let msg = match child.wait().await {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            FromRunner::Exit {
                id,
                status: status.code().map(|c| c as u32),
                signal: status.signal().map(signal_name),
            }
        }
        Err(e) => FromRunner::Failed {
            id,
            message: format!("cannot wait for the command: {e}"),
        },
    };
    let _ = out.send(msg);
}

async fn forward<R: AsyncRead + Unpin>(
    id: u32,
    pipe: Option<R>,
    stderr: bool,
    out: &mpsc::UnboundedSender<FromRunner>,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                if out.send(FromRunner::Output { id, stderr, data }).is_err() {
                    return;
                }
            }
        }
    }
}

/// The name SSH gives a signal (RFC 4254 6.10: without "SIG").
fn signal_name(number: i32) -> String {
    let known = [
        (1, "HUP"),
        (2, "INT"),
        (3, "QUIT"),
        (4, "ILL"),
        (6, "ABRT"),
        (8, "FPE"),
        (9, "KILL"),
        (11, "SEGV"),
        (13, "PIPE"),
        (14, "ALRM"),
        (15, "TERM"),
        (10, "USR1"),
        (12, "USR2"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == number)
        .map_or_else(|| number.to_string(), |(_, name)| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A runner over in-memory pipes, and the server's ends.
    fn runner() -> (
        FrameWriter<tokio::io::DuplexStream>,
        FrameReader<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Result<(), FrameError>>,
    ) {
        let (to_runner, runner_in) = tokio::io::duplex(1 << 16);
        let (runner_out, from_runner) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(runner_in, runner_out));
        (
            FrameWriter::new(to_runner),
            FrameReader::new(from_runner),
            task,
        )
    }

    /// Everything the runner says about `id` until its end.
    async fn outcome(
        from: &mut FrameReader<tokio::io::DuplexStream>,
        id: u32,
    ) -> (Vec<u8>, Vec<u8>, FromRunner) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match from.recv::<FromRunner>().await.unwrap() {
                FromRunner::Output {
                    id: i,
                    stderr,
                    data,
                } if i == id => if stderr { &mut err } else { &mut out }.extend(data),
                end @ (FromRunner::Exit { id: _, .. } | FromRunner::Failed { id: _, .. }) => {
                    return (out, err, end);
                }
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn commands_run_with_stdin_output_and_status() {
        let (mut to, mut from, task) = runner();
        assert_eq!(
            from.recv::<FromRunner>().await.unwrap(),
            FromRunner::Hello { version: VERSION }
        );
        to.send(&ToRunner::Start {
            id: 7,
            command: "tr a-z A-Z; echo oops >&2; exit 3".into(),
        })
        .await
        .unwrap();
        to.send(&ToRunner::Stdin {
            id: 7,
            data: b"shout\n".to_vec(),
        })
        .await
        .unwrap();
        to.send(&ToRunner::StdinEnd { id: 7 }).await.unwrap();
        to.flush().await.unwrap();
        let (out, err, end) = outcome(&mut from, 7).await;
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"SHOUT\n"[..], &b"oops\n"[..])
        );
        assert_eq!(
            end,
            FromRunner::Exit {
                id: 7,
                status: Some(3),
                signal: None
            }
        );
        drop(to);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_kill_reaches_the_whole_group_and_a_closed_channel_kills_the_rest() {
        let (mut to, mut from, task) = runner();
        from.recv::<FromRunner>().await.unwrap();
        // The child of the shell keeps the output pipe open: only a kill
        // of the group ends the command.
        for id in [1, 2] {
            to.send(&ToRunner::Start {
                id,
                command: "sleep 60 & wait".into(),
            })
            .await
            .unwrap();
        }
        to.send(&ToRunner::Kill { id: 1 }).await.unwrap();
        to.flush().await.unwrap();
        let (_, _, end) = tokio::time::timeout(Duration::from_secs(10), outcome(&mut from, 1))
            .await
            .expect("a killed command ends");
        assert_eq!(
            end,
            FromRunner::Exit {
                id: 1,
                status: None,
                signal: Some("KILL".into())
            }
        );
        drop(to);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the runner ends with its channel, killing command 2")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn signals_have_ssh_names() {
        assert_eq!(signal_name(15), "TERM");
        assert_eq!(signal_name(64), "64");
    }
}
