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
//! Version 2 also runs sync passes ([`ToRunner::Serve`]): the agent's
//! side of a pass, in this process, on a thread of its own, with the
//! pass's byte stream carried as a command's stdin and stdout. A pass then
//! costs a client no sshd session, login shell or agent start either,
//! which was most of what a small change cost each client of a group.
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

use crate::agent::AgentOptions;
use crate::frame::{FrameError, FrameReader, FrameWriter};

/// The `SSH_ORIGINAL_COMMAND` that starts the runner.
pub const VERB: &str = "run";

/// The runner protocol's version, in [`FromRunner::Hello`].
pub const VERSION: u32 = 2;

/// The first version that runs sync passes ([`ToRunner::Serve`]).
pub const SERVES_FROM: u32 = 2;

/// Pass input queued for the pass's thread at most, in chunks: beyond it
/// the runner stops reading its channel, and SSH's window holds the server
/// back, so a client with a slow disk never buffers a tree in memory.
const PASS_QUEUE: usize = 16;

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
    /// Kill the command and what it started (SIGKILL to its group); a
    /// pass loses its input and ends.
    Kill {
        /// The command.
        id: u32,
    },
    /// Run a sync pass ([`crate::agent::serve`]): its input comes as
    /// [`ToRunner::Stdin`], its output goes as [`FromRunner::Output`], and
    /// [`FromRunner::Exit`] ends it (status 0, or 1 with the reason on
    /// stderr). Version 2 and later.
    Serve {
        /// The server's id for it, unique on this channel.
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
    /// Its process group (its pid); none for a pass.
    group: Option<Pid>,
    /// Where its input goes; `None` once ended.
    stdin: Option<Input>,
    /// A sync pass, not a command.
    pass: bool,
}

/// Where a command's or a pass's input goes.
enum Input {
    /// A command's stdin: a command that stops reading never holds up
    /// the runner.
    Command(mpsc::UnboundedSender<Vec<u8>>),
    /// A pass's stream: bounded, so that a slow pass slows the server.
    Pass(mpsc::Sender<Vec<u8>>),
}

/// Runs commands for the server until `input` ends, then kills the ones
/// still running. Errors are the channel's: a command's failure is a
/// message to the server.
/// `pass` is where sync passes apply; without it [`ToRunner::Serve`] is
/// refused.
pub async fn serve<R, W>(input: R, output: W, pass: Option<AgentOptions>) -> Result<(), FrameError>
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
                    let stdin = child.stdin.take().map(feed).map(Input::Command);
                    let pass = false;
                    running.insert(id, Running { group, stdin, pass });
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
            Ok(ToRunner::Serve { id }) => match &pass {
                // The state dir's lock would hold a second one back anyway;
                // saying so at once is clearer than a wait and a "busy".
                Some(_) if running.values().any(|r| r.pass) => {
                    let message = "a sync pass is already running here".to_owned();
                    let _ = out_tx.send(FromRunner::Failed { id, message });
                }
                Some(opts) => {
                    let (stdin, output) = start_pass(opts.clone());
                    running.insert(
                        id,
                        Running {
                            group: None,
                            stdin: Some(Input::Pass(stdin)),
                            pass: true,
                        },
                    );
                    let _ = out_tx.send(FromRunner::Started { id });
                    let (out, done) = (out_tx.clone(), done_tx.clone());
                    children.spawn(async move {
                        finish_pass(id, output, &out).await;
                        let _ = done.send(id);
                    });
                }
                None => {
                    let message = "this runner has no root to sync".to_owned();
                    let _ = out_tx.send(FromRunner::Failed { id, message });
                }
            },
            Ok(ToRunner::Stdin { id, data }) => {
                match running.get(&id).and_then(|r| r.stdin.as_ref()) {
                    // A command that stopped reading just loses it.
                    Some(Input::Command(tx)) => {
                        let _ = tx.send(data);
                    }
                    // A pass that ended does too: its queue is closed.
                    Some(Input::Pass(tx)) => {
                        let _ = tx.send(data).await;
                    }
                    None => {}
                }
            }
            Ok(ToRunner::StdinEnd { id }) => {
                if let Some(r) = running.get_mut(&id) {
                    r.stdin = None;
                }
            }
            Ok(ToRunner::Kill { id }) => {
                if let Some(r) = running.get_mut(&id) {
                    if let Some(group) = r.group {
                        let _ = kill_process_group(group, Signal::KILL);
                    }
                    // A pass without input fails at its next read.
                    r.stdin = None;
                }
            }
            Err(FrameError::Closed) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    for r in running.values_mut() {
        if let Some(group) = r.group {
            let _ = kill_process_group(group, Signal::KILL);
        }
        r.stdin = None;
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

/// Starts a pass on a thread of its own (its file work blocks, and must not
/// hold up the commands): its input queue, and its output with its result.
fn start_pass(opts: AgentOptions) -> (mpsc::Sender<Vec<u8>>, PassOutput) {
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Vec<u8>>(PASS_QUEUE);
    let (pass_out, output) = tokio::io::duplex(OUTPUT_CHUNK);
    let (mut feed_in, pass_in) = tokio::io::duplex(OUTPUT_CHUNK);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("cfi-pass".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build();
            let result = match rt {
                Ok(rt) => rt.block_on(async {
                    // Input is copied in on this thread too, so the pass
                    // reads a byte stream as it does from sshd. A pass
                    // that ends stops the copy: what comes after is lost.
                    let feed = async {
                        while let Some(data) = stdin_rx.recv().await {
                            if feed_in.write_all(&data).await.is_err() {
                                break;
                            }
                        }
                        drop(feed_in);
                    };
                    let pass = crate::agent::serve(&opts, pass_in, pass_out);
                    tokio::pin!(pass);
                    let result = tokio::select! {
                        r = &mut pass => r,
                        () = feed => pass.await,
                    };
                    result.map(drop).map_err(|e| e.to_string())
                }),
                Err(e) => Err(format!("cannot start the pass: {e}")),
            };
            let _ = done_tx.send(result);
        });
    if let Err(e) = thread {
        // done_tx went with the closure: the pass reports that it died.
        tracing::warn!(cause = %e, "cannot start a pass thread");
    }
    let output = PassOutput {
        output,
        done: done_rx,
    };
    (stdin_tx, output)
}

/// A pass's output stream and, once it ends, its result.
struct PassOutput {
    output: tokio::io::DuplexStream,
    done: tokio::sync::oneshot::Receiver<Result<(), String>>,
}

/// Forwards a pass's output and then its end.
async fn finish_pass(
    id: u32,
    PassOutput { output, done }: PassOutput,
    out: &mpsc::UnboundedSender<FromRunner>,
) {
    forward(id, Some(output), false, out).await;
    let why = match done.await {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(format!("cfi-agent: sync pass: {why}\n")),
        Err(_) => Some("cfi-agent: the sync pass died\n".to_owned()),
    };
    if let Some(why) = &why {
        let _ = out.send(FromRunner::Output {
            id,
            stderr: true,
            data: why.clone().into_bytes(),
        });
    }
    let _ = out.send(FromRunner::Exit {
        id,
        status: Some(u32::from(why.is_some())),
        signal: None,
    });
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

    type Ends = (
        FrameWriter<tokio::io::DuplexStream>,
        FrameReader<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Result<(), FrameError>>,
    );

    /// A runner over in-memory pipes, and the server's ends.
    fn runner() -> Ends {
        runner_with(None)
    }

    /// A runner that runs passes as `pass` says.
    fn runner_with(pass: Option<AgentOptions>) -> Ends {
        let (to_runner, runner_in) = tokio::io::duplex(1 << 16);
        let (runner_out, from_runner) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(runner_in, runner_out, pass));
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
    async fn a_sync_pass_runs_on_the_runner_and_lands_in_its_root() {
        let d = tempfile::tempdir().unwrap();
        let (group, root, state) = (d.path().join("g"), d.path().join("r"), d.path().join("s"));
        std::fs::create_dir_all(group.join("etc")).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(group.join("etc/motd"), "hello\n".repeat(100)).unwrap();
        let tree = cfi_groups::Tree::read(
            std::slice::from_ref(&group),
            &mut cfi_groups::hashcache::HashCache::default(),
        )
        .unwrap();
        let (mut to, mut from, task) = runner_with(Some(AgentOptions {
            root: root.clone(),
            state_dir: state,
            exit_after: false,
        }));
        assert!(matches!(
            from.recv::<FromRunner>().await.unwrap(),
            FromRunner::Hello { .. }
        ));
        to.send(&ToRunner::Serve { id: 7 }).await.unwrap();
        to.flush().await.unwrap();
        assert_eq!(
            from.recv::<FromRunner>().await.unwrap(),
            FromRunner::Started { id: 7 }
        );

        // The server's side: push's byte stream as the pass's stdin and
        // stdout, as cfi-server carries it.
        let (mut agent_out, from_agent) = tokio::io::duplex(1 << 16);
        let (to_agent, mut agent_in) = tokio::io::duplex(1 << 16);
        let outgoing = async {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = agent_in.read(&mut buf).await.unwrap();
                let msg = match n {
                    0 => ToRunner::StdinEnd { id: 7 },
                    n => ToRunner::Stdin {
                        id: 7,
                        data: buf[..n].to_vec(),
                    },
                };
                to.send(&msg).await.unwrap();
                to.flush().await.unwrap();
                if n == 0 {
                    return to;
                }
            }
        };
        let incoming = async {
            loop {
                match from.recv::<FromRunner>().await.unwrap() {
                    FromRunner::Output {
                        stderr: false,
                        data,
                        ..
                    } => {
                        let _ = agent_out.write_all(&data).await;
                    }
                    end @ FromRunner::Exit { .. } => return end,
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        let source = std::sync::Arc::new(crate::Source::new(tree));
        let pass = crate::push(
            source,
            crate::PushOptions::default(),
            None,
            from_agent,
            to_agent,
        );
        let (report, to, end) = tokio::join!(pass, outgoing, incoming);
        let report = report.unwrap();
        assert_eq!(report.files_updated, 1);
        assert_eq!(
            end,
            FromRunner::Exit {
                id: 7,
                status: Some(0),
                signal: None
            }
        );
        assert_eq!(
            std::fs::read(root.join("etc/motd")).unwrap(),
            "hello\n".repeat(100).into_bytes()
        );
        drop(to);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn one_pass_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let (mut to, mut from, task) = runner_with(Some(AgentOptions {
            root: d.path().to_path_buf(),
            state_dir: d.path().join("state"),
            exit_after: false,
        }));
        from.recv::<FromRunner>().await.unwrap();
        to.send(&ToRunner::Serve { id: 1 }).await.unwrap();
        to.send(&ToRunner::Serve { id: 2 }).await.unwrap();
        to.flush().await.unwrap();
        assert_eq!(
            from.recv::<FromRunner>().await.unwrap(),
            FromRunner::Started { id: 1 }
        );
        assert!(matches!(
            from.recv::<FromRunner>().await.unwrap(),
            FromRunner::Failed { id: 2, .. }
        ));
        // The first, left without input, ends when the channel does.
        drop(to);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_runner_without_a_root_refuses_passes() {
        let (mut to, mut from, task) = runner();
        from.recv::<FromRunner>().await.unwrap();
        to.send(&ToRunner::Serve { id: 1 }).await.unwrap();
        to.flush().await.unwrap();
        assert!(matches!(
            from.recv::<FromRunner>().await.unwrap(),
            FromRunner::Failed { id: 1, .. }
        ));
        drop(to);
        task.await.unwrap().unwrap();
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
