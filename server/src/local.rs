//! One sync pass onto a local root: the server side runs in this process,
//! the agent as a child over pipes, exactly as it would over SSH. This is
//! how a server manages its own machine, and how the engine is benchmarked
//! without a network.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cfi_groups::hashcache::HashCache;
use cfi_groups::{DataDir, GroupName, Tree};
use cfi_sync::history::{DirHistory, History};
use cfi_sync::{PassReport, PushOptions, Source};

/// What `cfi sync-local` was asked to do.
#[derive(Debug, Clone)]
pub struct LocalSync {
    /// The data dir holding group trees.
    pub data_dir: PathBuf,
    /// The group to apply.
    pub group: GroupName,
    /// The target root.
    pub root: PathBuf,
    /// The agent's state dir.
    pub state_dir: PathBuf,
    /// Where the server keeps its hash cache; `None` hashes every file.
    pub cache_dir: Option<PathBuf>,
    /// The agent binary.
    pub agent: PathBuf,
    /// Options of the pass.
    pub push: PushOptions,
}

/// Finds the agent: beside this binary (a build tree), then where the
/// package installs it, then on `PATH`.
pub fn default_agent() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("cfi-agent"));
    let packaged = PathBuf::from("/usr/lib/cfi/cfi-agent");
    beside
        .filter(|p| p.is_file())
        .or_else(|| packaged.is_file().then_some(packaged))
        .unwrap_or_else(|| PathBuf::from("cfi-agent"))
}

/// Caches are per data dir and group: the key keeps two data dirs apart.
fn cache_key(data_dir: &Path) -> String {
    blake3::hash(data_dir.as_os_str().as_encoded_bytes()).to_hex()[..16].to_string()
}

fn cache_file(dir: &Path, data_dir: &Path, group: &GroupName) -> PathBuf {
    dir.join(format!("hashes-{group}-{}", cache_key(data_dir)))
}

/// Runs one pass.
pub async fn run(job: &LocalSync) -> Result<PassReport> {
    let data = DataDir::new(&job.data_dir);
    if !data.has_group(&job.group) {
        bail!(
            "group directory {} does not exist",
            data.group_dir(&job.group).display()
        );
    }
    if !job.root.is_dir() {
        bail!("target root {} is not a directory", job.root.display());
    }
    let layers = data.layers(&job.group);
    let cache_path = job
        .cache_dir
        .as_deref()
        .map(|d| cache_file(d, &job.data_dir, &job.group));
    // The agent starts (and loads its ledger) while the tree is read.
    let mut child = tokio::process::Command::new(&job.agent)
        .arg("--root")
        .arg(&job.root)
        .arg("--state-dir")
        .arg(&job.state_dir)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("failed to start agent {}", job.agent.display()))?;
    tracing::debug!("agent started");
    let tree = tokio::task::spawn_blocking(move || -> Result<Tree> {
        let mut cache = cache_path
            .as_deref()
            .map(HashCache::load)
            .unwrap_or_default();
        tracing::debug!("hash cache loaded");
        let tree = Tree::read(&layers, &mut cache)?;
        if let Some(path) = &cache_path {
            if let Err(e) = cache.save(path) {
                tracing::warn!(path = %path.display(), cause = %e, "cannot save hash cache");
            }
        }
        Ok(tree)
    })
    .await
    .context("tree reader died")??;
    tracing::debug!(entries = tree.manifest().len(), "tree read");

    let stdin = child.stdin.take().context("agent stdin")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let history = job.cache_dir.as_deref().map(|d| {
        let key = cache_key(&job.data_dir);
        DirHistory::new(d.join(format!("manifests-{}-{key}", job.group)))
    });
    if let Some(h) = &history {
        if let Err(e) = h.put(tree.manifest()) {
            tracing::warn!(cause = %e, "cannot remember the manifest; the next change is sent whole");
        }
    }
    let history = history.as_ref().map(|h| h as &dyn History);
    let result = cfi_sync::push(
        Arc::new(Source::new(tree)),
        job.push,
        history,
        stdout,
        stdin,
    )
    .await;
    tracing::debug!("pass done");
    // With the report in hand the agent has saved its ledger and is only
    // freeing memory: tokio reaps it in the background.
    let err = match result {
        Ok(report) => return Ok(report),
        Err(e) => e,
    };
    let status = child.wait().await.context("failed to wait for the agent")?;
    // An agent that said why it failed needs no exit status beside it.
    if status.success() || matches!(err, cfi_sync::SyncError::Remote(_)) {
        return Err(err.into());
    }
    Err(err).with_context(|| format!("agent {} exited with {status}", job.agent.display()))
}
