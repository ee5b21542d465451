//! Errors that end a whole pass. Failures of single paths do not: they go
//! into the report and the rest of the pass goes on.
//!
//! Messages carry their cause in the text, not as `source()`: the text
//! also travels to the server as the agent's failure, and `{:#}` in a
//! binary then prints each cause once.

use std::path::PathBuf;

use crate::frame::FrameError;
use crate::ledger::StateError;

/// Why a pass failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The pipe failed or carried malformed frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent's state dir is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The target root cannot be opened.
    #[error("cannot open target root {path}: {cause}")]
    Root {
        /// The root.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The manifest the server sent is malformed.
    #[error("invalid manifest: {0}")]
    Manifest(cfi_groups::ManifestError),
    /// The other side reported a failure.
    #[error("agent failed: {0}")]
    Remote(String),
    /// A local task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<cfi_groups::ManifestError> for SyncError {
    fn from(e: cfi_groups::ManifestError) -> Self {
        Self::Manifest(e)
    }
}
