//! The messages of one sync pass.
//!
//! ```text
//! agent  → server   Hello { applied digest }
//! server → agent    Hello { digest, dry run }  [Manifest chunk… ManifestEnd]
//! agent  → server   Need chunk… NeedEnd        (signatures for files it has)
//! server → agent    Data chunk…  Commit        (zstd whole files or deltas)
//! agent  → server   Report
//! ```
//!
//! The server skips the manifest when the agent last applied the very same
//! digest: the agent then checks its disk against its own ledger, and a
//! no-op pass costs a few hundred bytes.

use cfi_groups::{Entry, RelPath};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::report::PassReport;

/// Bumped on any incompatible change of these messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// First bytes of both hellos: garbage on the pipe (a shell's motd, a wrong
/// program) fails here with a clear message instead of a decode error later.
pub const MAGIC: [u8; 8] = *b"cfi-sync";

/// Server to agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToAgent {
    /// Opens the pass.
    Hello {
        /// [`MAGIC`].
        magic: [u8; 8],
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// Plan only; write nothing.
        dry_run: bool,
        /// Digest of the desired manifest.
        digest: [u8; 32],
        /// Number of manifest entries.
        entries: u64,
        /// How the manifest comes.
        manifest: ManifestMode,
    },
    /// Some entries of the manifest (in a delta: added or changed ones),
    /// in order.
    Manifest(Vec<Entry>),
    /// In a delta: paths no longer in the manifest.
    Removed(Vec<RelPath>),
    /// The manifest is complete.
    ManifestEnd,
    /// A piece of a file's content.
    Data {
        /// Index of the entry in the manifest.
        index: u32,
        /// Whole file or delta against the agent's copy.
        encoding: Encoding,
        /// A piece of a zstd stream.
        chunk: ByteBuf,
        /// Whether this is the last piece of this file.
        last: bool,
    },
    /// The server could not read a file the agent needs.
    Unreadable {
        /// Index of the entry in the manifest.
        index: u32,
        /// Why, for the report.
        reason: String,
    },
    /// All data sent: apply and report.
    Commit,
}

/// How the manifest travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestMode {
    /// Not at all: the agent applied this very digest and has it.
    Unchanged,
    /// Whole.
    #[default]
    Full,
    /// As changes against the digest the agent applied last, which the
    /// server still knew.
    Delta,
}

/// How a file's content is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The whole content, each chunk an independent zstd frame of at most
    /// one data chunk of output.
    Whole,
    /// The whole content, uncompressed: the data did not compress (random
    /// data, archives, images), so zstd would only cost time.
    Raw,
    /// An rsync delta against the agent's current content, one zstd frame
    /// across all chunks.
    Delta,
}

/// Agent to server.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromAgent {
    /// Opens the pass.
    Hello {
        /// [`MAGIC`].
        magic: [u8; 8],
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// Digest of the manifest the agent last applied in full.
        applied: Option<[u8; 32]>,
    },
    /// Files whose content the agent needs.
    Need(Vec<Need>),
    /// No more needs.
    NeedEnd,
    /// The outcome of the pass.
    Report(Box<PassReport>),
    /// The pass failed as a whole.
    Failed(String),
}

/// One file the agent needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct Need {
    /// Index of the entry in the manifest.
    pub index: u32,
    /// fast_rsync signature of the agent's current content, when a delta
    /// is worth it.
    pub signature: Option<ByteBuf>,
}
