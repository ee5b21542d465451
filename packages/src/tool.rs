//! Running apt's tools: non-interactive, in the C locale (their messages
//! are parsed), output collected and, when asked, echoed to stderr line by
//! line as it comes (the server shows it as progress; stdout is the
//! report's).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

/// Whether a tool's output is echoed to stderr as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    Quiet,
    Stream,
}

pub(crate) struct ToolOutput {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `program`, non-interactively, in the C locale (its messages are
/// parsed).
pub(crate) fn tool(program: &str, args: &[String], log: Log) -> Result<ToolOutput, String> {
    tracing::debug!(program, ?args, "running");
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("APT_LISTCHANGES_FRONTEND", "none")
        .env("NEEDRESTART_MODE", "a")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = child.stdout.take().map(|s| echo(s, log));
    let stderr = child.stderr.take().map(|s| echo(s, log));
    let collect = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    let status = child.wait().map_err(|e| format!("{program}: {e}"))?;
    Ok(ToolOutput {
        ok: status.success(),
        stdout,
        stderr,
    })
}

/// Collects a pipe, echoing each line to stderr when streaming.
fn echo(pipe: impl Read + Send + 'static, log: Log) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line);
            if log == Log::Stream {
                eprint!("{text}");
            }
            all.push_str(&text);
            line.clear();
        }
        all
    })
}
