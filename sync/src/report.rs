//! What a pass did (or, in a dry run, would do), per file and in total.

use serde::{Deserialize, Serialize};

use crate::message::ManifestMode;

/// The outcome of one pass on one root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Files and symlinks written or whose mode, owner or mtime was set.
    pub files_updated: u64,
    /// Files and symlinks already as desired.
    pub files_unchanged: u64,
    /// Files and symlinks removed because they left the tree.
    pub files_deleted: u64,
    /// Originals put back because the file that replaced them left the tree.
    pub files_restored: u64,
    /// Directories created.
    pub dirs_created: u64,
    /// Directories removed.
    pub dirs_removed: u64,
    /// Managed paths changed locally since cfi wrote them; repaired, the
    /// changed copy kept under the state dir.
    pub drift: Vec<String>,
    /// Files the agent had to read and hash (stat cache misses).
    pub files_hashed: u64,
    /// How the manifest travelled: unchanged, full or delta.
    pub manifest: ManifestMode,
    /// Per path: what changed.
    pub changes: Vec<Change>,
    /// Per path: what failed. The rest of the pass went on.
    pub errors: Vec<PathError>,
    /// Bytes the server sent to the agent.
    pub bytes_to_agent: u64,
    /// Bytes the agent sent to the server.
    pub bytes_from_agent: u64,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The path below the root, escaped for display.
    pub path: String,
    /// What happened to it.
    pub action: Action,
    /// In a dry run, a unified diff for a text file.
    pub diff: Option<String>,
}

/// The kinds of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A new file or symlink.
    Create,
    /// New content.
    Update,
    /// Only mode, owner or mtime set.
    Metadata,
    /// Removed.
    Delete,
    /// Original put back.
    Restore,
    /// Directory created.
    Mkdir,
    /// Directory removed.
    Rmdir,
}

/// One failed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathError {
    /// The path below the root, escaped for display.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

impl PassReport {
    /// Whether every path converged.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}
