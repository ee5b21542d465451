//! cfi's delta-sync engine and the server ↔ agent wire protocol.
//!
//! The server side ([`sender::push`]) holds a group's effective tree; the
//! agent side ([`agent::serve`]) holds a target root and its state dir. They
//! talk over any async byte pipe: a child's stdin/stdout, an SSH channel, or
//! an in-memory duplex in tests. See [`message`] for the exchange, [`plan`]
//! for how the agent decides, [`apply`] for how it switches atomically.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod agent;
pub mod apply;
pub mod delta;
pub mod error;
pub mod frame;
pub mod history;
pub mod ledger;
pub mod message;
pub mod plan;
pub mod report;
pub mod rootdir;
pub mod runner;
pub mod sender;
pub mod source;
pub mod textdiff;

pub use agent::{AgentOptions, serve};
pub use error::SyncError;
pub use report::PassReport;
pub use sender::{PushOptions, push};
pub use source::Source;
