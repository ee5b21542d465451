//! `cfi-agent`: the receiving side of a sync pass, run by the server over
//! SSH as the forced command of its key (or by `cfi sync-local` over
//! pipes). Speaks the protocol on stdin/stdout; logs go to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use cfi_cli::LogArgs;
use cfi_client::forced::{self, Request};
use cfi_sync::AgentOptions;
use clap::{CommandFactory, Parser, Subcommand};

/// The cfi agent: applies what the cfi server sends to this machine.
#[derive(Debug, Parser)]
#[command(name = "cfi-agent", version, about, long_about = None)]
struct Cli {
    /// Root the group tree is applied under.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Ledger of managed files, backups of originals, drifted copies.
    #[arg(long, default_value = "/var/lib/cfi-client", value_name = "DIR")]
    state_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// What to do; without it, what sshd passed in SSH_ORIGINAL_COMMAND
    /// (`serve`, or any shell command, run with /bin/sh -c).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one sync pass on stdin/stdout.
    Serve,
    /// Package convergence on this machine: `pkgs plan|sync|install|remove|refresh`
    /// (`cfi-agent pkgs --help` for the rest). Prints one JSON report.
    Pkgs {
        /// The verb and its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    if let Some(code) = cfi_cli::docs::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    cli.log.init();
    let request = match &cli.command {
        Some(Command::Serve) => Ok(Request::Serve),
        Some(Command::Pkgs { args }) => Ok(Request::Pkgs(args.clone())),
        None => forced::request(std::env::var("SSH_ORIGINAL_COMMAND").ok().as_deref()),
    };
    match request {
        Ok(Request::Serve) => serve(&cli),
        Ok(Request::Run) => run(&cli),
        Ok(Request::Pkgs(words)) => pkgs(&cli, &words),
        Ok(Request::Shell(cmd)) => shell(&cmd),
        Err(e) => {
            eprintln!("cfi-agent: {e}");
            ExitCode::from(2)
        }
    }
}

/// Becomes `/bin/sh -c CMD`: stdin, stdout, stderr, signals and the exit
/// status are the command's own, exactly as without a forced command.
fn shell(cmd: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .exec();
    eprintln!("cfi-agent: cannot run /bin/sh: {err}");
    ExitCode::from(127)
}

/// A package verb: the report on stdout; 0 when all went well, 1 when
/// refused or some names were unknown, 2 when it failed.
fn pkgs(cli: &Cli, words: &[String]) -> ExitCode {
    let cmd = match cfi_client::pkgs::parse(words) {
        Ok(cmd) => cmd,
        // --help and --version end here too, printed as clap does.
        Err(e) => e.exit(),
    };
    let report = cfi_client::pkgs::run(&cmd, &cli.root);
    let code = match (&report.error, report.ok()) {
        (Some(_), _) => 2,
        (None, true) => 0,
        (None, false) => 1,
    };
    match serde_json::to_string(&report) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("cfi-agent: cannot write the report: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(e) = &report.error {
        eprintln!("cfi-agent: pkgs {}: {e}", report.action);
    }
    ExitCode::from(code)
}

/// The command runner: the server's ad-hoc commands and sync passes for
/// the life of this channel.
fn run(cli: &Cli) -> ExitCode {
    // The runner outlives its passes: each one's tables are freed.
    let opts = AgentOptions {
        root: cli.root.clone(),
        state_dir: cli.state_dir.clone(),
        exit_after: false,
    };
    let result = match block_on(async {
        let (input, output) = stdio();
        cfi_sync::runner::serve(input, output, Some(opts)).await
    }) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cfi-agent: command runner: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(cli: &Cli) -> ExitCode {
    let opts = AgentOptions {
        root: cli.root.clone(),
        state_dir: cli.state_dir.clone(),
        exit_after: true,
    };
    let result = match block_on(async {
        let (input, output) = stdio();
        cfi_sync::serve(&opts, input, output).await
    }) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match result {
        Ok(report) if report.ok() => ExitCode::SUCCESS,
        Ok(report) => {
            for e in &report.errors {
                tracing::warn!(path = %e.path, "{}", e.message);
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cfi-agent: sync pass failed: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs `work` on a single-threaded runtime (the agent is one pass or one
/// channel; threads would only cost start-up time).
fn block_on<F: std::future::Future>(work: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => Ok(rt.block_on(work)),
        Err(e) => {
            eprintln!("cfi-agent: cannot start: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Bytes of the input pipe: room for what sshd's channel window lets the
/// server send ahead.
const INPUT_PIPE: usize = 2 << 20;

/// Lets the pipe from sshd hold a whole channel window. With the kernel's
/// 64 KiB, whatever the agent had not read yet (while it wrote a file) piled
/// up in sshd's channel buffer, which sshd grows by copying it into a new
/// allocation and compacts by moving it: that was most of the machine's CPU
/// in a sync to ten hosts. Past `fs.pipe-max-size` (1 MiB) only root may go;
/// a smaller pipe, or none, is left as it is.
fn widen_input_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    use rustix::fs::{FileType, fstat};
    if fstat(fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo) {
        for size in [INPUT_PIPE, INPUT_PIPE / 2] {
            if rustix::pipe::fcntl_setpipe_size(fd, size).is_ok() {
                break;
            }
        }
    }
}

type Input = Box<dyn tokio::io::AsyncRead + Unpin>;
type Output = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// stdin and stdout as the runtime's own non-blocking pipes or sockets
/// (what `cfi sync-local` and sshd hand the agent). tokio's generic stdio
/// goes through a helper thread per read, which costs a context switch a
/// chunk; it remains the fallback for anything else (a file, a tty).
fn stdio() -> (Input, Output) {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().ok();
    widen_input_pipe(std::io::stdin().as_fd());
    let input: Input = match dup(std::io::stdin().as_fd()) {
        Some(fd) => match pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => Box::new(rx),
            Err(_) => Box::new(tokio::io::stdin()),
        },
        None => Box::new(tokio::io::stdin()),
    };
    let output: Output = match dup(std::io::stdout().as_fd()) {
        Some(fd) => match pipe::Sender::from_owned_fd(fd) {
            Ok(tx) => Box::new(tx),
            Err(_) => Box::new(tokio::io::stdout()),
        },
        None => Box::new(tokio::io::stdout()),
    };
    (input, output)
}
