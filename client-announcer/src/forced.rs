//! What the agent does when sshd runs it as a forced command.
//!
//! The server's key is installed as
//! `restrict,command="/usr/lib/cfi/cfi-agent --root / --state-dir …" …`, so
//! every channel the server opens runs the agent, with the command the
//! server asked for in `SSH_ORIGINAL_COMMAND`. An agent verb (`serve`, `run`,
//! `pkgs …`) runs
//! in the agent; anything else is an ad-hoc command (`cfi exec`) and runs
//! with `/bin/sh -c`, stdin, stdout, stderr and the exit status passed
//! through. The server key is root on this machine by design (it writes any
//! file through `serve`), so the shell adds no power; the forced command is
//! there to give the agent, not a login shell, the first word.

/// What one SSH channel asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Speak the sync protocol on stdin/stdout.
    Serve,
    /// Run the server's commands for the life of the channel
    /// (`cfi_sync::runner`).
    Run,
    /// A package verb (`pkgs sync …`), with the words after `pkgs`.
    Pkgs(Vec<String>),
    /// Run this with `/bin/sh -c`.
    Shell(String),
}

/// Why a forced command cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForcedError {
    /// Started by hand without a verb, or by sshd with no command.
    #[error(
        "no command: run `cfi-agent serve`, or install cfi-agent as the forced command of the server's key in authorized_keys"
    )]
    NoCommand,
}

/// Reads the command sshd passed in `SSH_ORIGINAL_COMMAND`.
pub fn request(original: Option<&str>) -> Result<Request, ForcedError> {
    let Some(cmd) = original.map(str::trim).filter(|c| !c.is_empty()) else {
        return Err(ForcedError::NoCommand);
    };
    let verb = cmd.strip_prefix("cfi-agent ").map_or(cmd, str::trim);
    let mut words = verb.split_whitespace();
    Ok(match (verb, words.next()) {
        ("serve", _) => Request::Serve,
        (cfi_sync::runner::VERB, _) => Request::Run,
        // Package names, flags and URLs hold no spaces or quotes, so the
        // words need no shell parsing; anything shell-like is refused by
        // the verb's own argument parser, never run.
        (_, Some("pkgs")) => Request::Pkgs(words.map(String::from).collect()),
        _ => Request::Shell(cmd.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_verbs_run_in_the_agent() {
        assert_eq!(request(Some("serve")), Ok(Request::Serve));
        assert_eq!(request(Some(" cfi-agent  serve ")), Ok(Request::Serve));
        assert_eq!(request(Some("run")), Ok(Request::Run));
        assert_eq!(
            request(Some("cfi-agent pkgs sync --max-removals 3")),
            Ok(Request::Pkgs(vec![
                "sync".into(),
                "--max-removals".into(),
                "3".into()
            ]))
        );
    }

    #[test]
    fn anything_else_is_a_shell_command() {
        assert_eq!(
            request(Some("uname -n; exit 3")),
            Ok(Request::Shell("uname -n; exit 3".into()))
        );
        assert_eq!(
            request(Some("serve && reboot")),
            Ok(Request::Shell("serve && reboot".into()))
        );
    }

    #[test]
    fn no_command_is_an_error_that_says_what_to_do() {
        for none in [None, Some(""), Some("   ")] {
            let err = request(none).unwrap_err().to_string();
            assert!(err.contains("forced command"), "{err}");
        }
    }
}
