//! The real `cfi-agent` binary as sshd runs it: a forced command with the
//! server's request in `SSH_ORIGINAL_COMMAND`.

use std::io::Write;
use std::process::{Command, Stdio};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cfi-agent"))
}

#[test]
fn a_shell_command_passes_stdio_and_status_through() {
    let mut child = agent()
        .env(
            "SSH_ORIGINAL_COMMAND",
            "read x; echo \"out $x\"; echo err >&2; exit 3",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"in\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out in\n");
    assert_eq!(out.stderr, b"err\n");
}

#[test]
fn serve_speaks_the_protocol() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = agent()
        .env("SSH_ORIGINAL_COMMAND", "serve")
        .arg("--root")
        .arg(root.path())
        .arg("--state-dir")
        .arg(state.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // It opened the pass with its hello (magic `cfi-sync` after the frame
    // length and the enum tag), then failed on the closed stdin.
    assert!(
        out.stdout.windows(8).any(|w| w == b"cfi-sync"),
        "{:?}",
        out.stdout
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("peer closed the connection"));
}

#[test]
fn no_command_says_what_to_do() {
    let out = agent().env_remove("SSH_ORIGINAL_COMMAND").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forced command"));
}
