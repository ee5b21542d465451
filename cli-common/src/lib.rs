//! What every cfi binary shares: logging set-up (`tracing` to stderr,
//! filtered by `RUST_LOG` or the `-v`/`-q` flags; stdout is never used for
//! logs: for the agent it carries the protocol) and the loading of TOML
//! configuration files ([`config`]).

pub mod config;
pub mod docs;

use clap::Args;
use tracing_subscriber::EnvFilter;

/// The logging flags every binary takes.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl LogArgs {
    /// Installs the subscriber; `RUST_LOG` wins over the flags.
    pub fn init(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (_, 0) => "warn",
            (_, 1) => "info",
            (_, 2) => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // No colour codes in a log file or the journal.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
}
