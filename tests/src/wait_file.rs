//! `cfi-lab wait-file`, run inside a lab client by `bench propagate`:
//! waits until a file holds the expected content and prints the wall-clock
//! time it saw it, which the benchmark compares with the time it dropped
//! the file on the server (host and containers share one clock).
//!
//! One of these runs per client per drop, started before the drop, so the
//! benchmark needs one `docker exec` per client rather than one per poll.
//! It sleeps on inotify (`IN_MOVED_TO`: cfi renames a finished temp into
//! place; `IN_CLOSE_WRITE` and `IN_CREATE` for writers that do not), so it
//! costs the client no CPU while it waits and sees the file at once. It
//! also looks every 100 ms, in case an event is missed.
//!
//! Protocol on stdout: `ready` once the watch is in place (the benchmark
//! drops the file only after every client said so), then `arrived
//! <unix seconds>` or, on stderr with a non-zero exit, why not. After
//! `arrived` it waits for the end of stdin before it exits, so that the
//! `docker exec` calls of the clients that got the file first do not end,
//! and burn CPU ending, while the others are still being synced.

use std::fs;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::fs::inotify;

use crate::logtime::now_unix;

/// How often the file is looked at without an event.
const RECHECK: Duration = Duration::from_millis(100);

/// Waits up to `limit` for `path` to hold exactly `content`.
pub fn run(path: &Path, content: &[u8], limit: Duration) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC).context("inotify_init failed")?;
    inotify::add_watch(
        &fd,
        dir,
        inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::CREATE,
    )
    .with_context(|| format!("failed to watch {}", dir.display()))?;
    let (tx, events) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&fd, &mut buf);
        while reader.next().is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    say("ready")?;
    let deadline = Instant::now() + limit;
    loop {
        if fs::read(path).is_ok_and(|got| got == content) {
            say(&format!("arrived {:.6}", now_unix()))?;
            // Until the benchmark closes stdin (or goes away).
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let got = fs::read(path).map_or_else(
                |e| format!("({e})"),
                |b| format!("{:?}", String::from_utf8_lossy(&b)),
            );
            bail!(
                "{} does not hold the expected content after {limit:?}; it holds {got}",
                path.display()
            );
        }
        let wait = RECHECK.min(deadline - now);
        if let Err(mpsc::RecvTimeoutError::Disconnected) = events.recv_timeout(wait) {
            // The watch failed: poll instead.
            thread::sleep(wait);
        }
    }
}

fn say(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
