//! The control socket: a Unix socket of mode 0600 (root alone talks to a
//! daemon that holds root on every client), one request per connection,
//! answered with a stream of JSON lines (see [`crate::control`]).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Daemon, work};
use crate::control::{Event, MAX_REQUEST, Request};

/// Binds the socket: made under a temporary name, set to 0600, then
/// renamed into place, so it is never reachable with a wider mode. A stale
/// socket (nobody listening) is replaced; a live one means another daemon
/// runs, which is an error.
pub(super) fn bind(path: &Path) -> Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("socket dir {}", dir.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another cfi-server is listening on {}; stop it first",
                    path.display()
                );
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("socket {}", path.display())),
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener =
        UnixListener::bind(&temp).with_context(|| format!("cannot bind {}", temp.display()))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("cannot put the socket at {}", path.display()))?;
    Ok(listener)
}

/// Removes the socket on the way out.
pub(super) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(socket = %path.display(), cause = %e, "cannot remove the socket");
    }
}

/// Accepts requests until `stop`; requests under way end with it.
pub(super) async fn serve(daemon: Arc<Daemon>, listener: UnixListener, stop: CancellationToken) {
    let mut requests = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        while requests.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                requests.spawn(answer(Arc::clone(&daemon), stream));
            }
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                tracing::error!(cause = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    requests.shutdown().await;
}

/// Reads one request and streams its events back. When `cfi` goes away
/// (Ctrl-C), the work is dropped with the connection.
async fn answer(daemon: Arc<Daemon>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let request = match reader.read_until(b'\n', &mut line).await {
        Ok(_) if line.len() > MAX_REQUEST => Err(format!(
            "request larger than {MAX_REQUEST} bytes (stdin or script too large?)"
        )),
        Ok(0) => return,
        Ok(_) => serde_json::from_slice::<Request>(&line).map_err(|e| format!("bad request: {e}")),
        Err(e) => Err(format!("cannot read the request: {e}")),
    };
    let (events, mut queue) = mpsc::unbounded_channel();
    let work = async move {
        let outcome = match request {
            Ok(r) => {
                tracing::debug!(request = ?r, "request");
                work::handle(&daemon, r, &events).await
            }
            Err(e) => Err(e),
        };
        let _ = events.send(match outcome {
            Ok(()) => Event::Done,
            Err(message) => Event::Error { message },
        });
    };
    tokio::pin!(work);
    let mut working = true;
    loop {
        tokio::select! {
            () = &mut work, if working => working = false,
            event = queue.recv() => {
                let Some(event) = event else { break };
                // What else is queued goes in the same write: a command
                // printing fast on 200 clients is many small lines.
                let mut text = Vec::new();
                let mut next = Some(event);
                while let Some(event) = next {
                    encode(&event, &mut text);
                    next = if text.len() < 64 << 10 { queue.try_recv().ok() } else { None };
                }
                if write.write_all(&text).await.is_err() {
                    tracing::info!("cfi went away; abandoning its request");
                    return;
                }
            }
        }
    }
    let _ = write.shutdown().await;
}

fn encode(event: &Event, out: &mut Vec<u8>) {
    match serde_json::to_writer(&mut *out, event) {
        Ok(()) => out.push(b'\n'),
        Err(e) => tracing::error!(cause = %e, "cannot encode an event"),
    }
}
