//! What a lab client starts with, beyond sshd: cfi's client config, avahi,
//! the project's binaries bind-mounted in place, extra environment. A
//! [`ClientSpec`] becomes `docker run` arguments that the image's start-up
//! script ([`crate::image::INIT_PATH`]) acts on at every start.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::debs::Packages;
use crate::image::{ANNOUNCER_PATH, AVAHI_ENV, CLIENT_TOML_ENV};
use crate::lab::AGENT_PATH;

/// How to start one lab client. `ClientSpec::default()` is a bare client,
/// the kind [`crate::lab::Lab::start`] makes.
///
/// ```no_run
/// # use cfi_lab::lab::{ClientSpec, Lab};
/// # fn f(announcer: &std::path::Path) -> anyhow::Result<()> {
/// let spec = ClientSpec::default()
///     .client_toml("group = \"lab\"\ntrust = \"any\"\n")
///     .avahi(true)
///     .announcer(announcer);
/// let lab = Lab::start_with(vec![spec.clone(), spec])?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSpec {
    /// Written to `/etc/cfi/client.toml` at every start; with the announcer
    /// at [`ANNOUNCER_PATH`], the start-up script runs it with this config.
    pub client_toml: Option<String>,
    /// Whether the client runs dbus and avahi-daemon, for `avahi-browse`,
    /// `avahi-publish` and static services in `/etc/avahi/services`.
    pub avahi: bool,
    /// Host files bind-mounted read-only into the client: `(host path,
    /// container path)`. They are in place before the start-up script
    /// runs, unlike [`crate::lab::Lab::install_agent`]'s copies.
    pub binaries: Vec<(PathBuf, String)>,
    /// tmpfs mounts: (container path, size as `docker run --tmpfs` takes
    /// it, e.g. `16m`), for a client whose disk fills up.
    pub tmpfs: Vec<(String, String)>,
    /// Directories on a disk of the client's own, as a real machine's:
    /// the container's root is on docker's storage driver, which on a host
    /// with fuse-overlayfs costs every file operation a round trip through
    /// a FUSE daemon. The lab mounts them from its journaled disk
    /// ([`crate::lab_disk`]), else (no loop device) from docker volumes on
    /// the machine's own file system.
    pub disks: Vec<String>,
    /// Extra environment of the container (and so of the announcer the
    /// start-up script runs), such as `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

impl ClientSpec {
    /// Sets [`ClientSpec::client_toml`].
    pub fn client_toml(mut self, text: impl Into<String>) -> Self {
        self.client_toml = Some(text.into());
        self
    }

    /// Sets [`ClientSpec::avahi`].
    pub fn avahi(mut self, on: bool) -> Self {
        self.avahi = on;
        self
    }

    /// Bind-mounts `host` at `container_path`, read-only.
    pub fn binary(mut self, host: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        self.binaries.push((host.into(), container_path.into()));
        self
    }

    /// Bind-mounts the host-built `cfi-announcer` (see
    /// [`crate::lab::built_binary`]) at [`ANNOUNCER_PATH`].
    pub fn announcer(self, host: impl Into<PathBuf>) -> Self {
        self.binary(host, ANNOUNCER_PATH)
    }

    /// Bind-mounts the host-built `cfi-agent` at [`AGENT_PATH`].
    pub fn agent(self, host: impl Into<PathBuf>) -> Self {
        self.binary(host, AGENT_PATH)
    }

    /// A tmpfs of `size` (`16m`) at `path` in the client.
    pub fn tmpfs(mut self, path: impl Into<String>, size: impl Into<String>) -> Self {
        self.tmpfs.push((path.into(), size.into()));
        self
    }

    /// A directory at `path` on a disk of the client's own.
    pub fn disk(mut self, path: impl Into<String>) -> Self {
        self.disks.push(path.into());
        self
    }

    /// Adds `name=value` to the container's environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The `docker run` options for this spec, checked: every binary is a
    /// file on the host (docker would make a missing one an empty
    /// directory) and goes to an absolute path.
    /// A binary that `packages` (installed in the image) put at its path
    /// already is not mounted.
    pub(crate) fn docker_args(&self, packages: Option<&Packages>) -> Result<Vec<String>> {
        let mut args = Vec::new();
        let mut env = |name: &str, value: &str| {
            args.push("--env".to_owned());
            args.push(format!("{name}={value}"));
        };
        if let Some(text) = &self.client_toml {
            env(CLIENT_TOML_ENV, text);
        }
        if self.avahi {
            env(AVAHI_ENV, "1");
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                bail!("bad environment variable name {name:?} for a lab client");
            }
            env(name, value);
        }
        for (path, size) in &self.tmpfs {
            if !path.starts_with('/') || path.contains([':', ',']) || size.contains([':', ',']) {
                bail!("bad tmpfs {path:?} of size {size:?} for a lab client");
            }
            args.push("--tmpfs".to_owned());
            args.push(format!("{path}:size={size}"));
        }
        for path in &self.disks {
            if !path.starts_with('/') || path.contains([':', ',']) {
                bail!("bad disk path {path:?} for a lab client");
            }
        }
        for (host, container) in &self.binaries {
            if packages.is_some_and(|p| p.installs(host, container)) {
                continue;
            }
            args.push("--volume".to_owned());
            args.push(bind_mount(host, container)?);
        }
        Ok(args)
    }
}

/// `host:container:ro`, with `host` made absolute.
fn bind_mount(host: &Path, container: &str) -> Result<String> {
    let source = host
        .canonicalize()
        .with_context(|| format!("failed to find {} to mount in a lab client", host.display()))?;
    if !source.is_file() {
        bail!(
            "{} is not a file: only files are mounted in lab clients",
            source.display()
        );
    }
    let source = source
        .to_str()
        .with_context(|| format!("{} is not UTF-8: docker cannot mount it", source.display()))?;
    if !container.starts_with('/') {
        bail!("{container:?} is not an absolute path in a lab client");
    }
    // `-v` separates its fields with colons.
    if source.contains(':') || container.contains(':') {
        bail!("cannot bind-mount {source} at {container}: `docker run -v` splits on ':'");
    }
    Ok(format!("{source}:{container}:ro"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_client_needs_no_options() {
        assert!(ClientSpec::default().docker_args(None).unwrap().is_empty());
    }

    #[test]
    fn options_carry_config_avahi_env_and_mounts() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().canonicalize().unwrap();
        let args = ClientSpec::default()
            .client_toml("a = 1\nb = 2\n")
            .avahi(true)
            .env("RUST_LOG", "debug")
            .announcer(file.path())
            .docker_args(None)
            .unwrap();
        assert_eq!(
            args,
            [
                "--env".to_owned(),
                format!("{CLIENT_TOML_ENV}=a = 1\nb = 2\n"),
                "--env".to_owned(),
                format!("{AVAHI_ENV}=1"),
                "--env".to_owned(),
                "RUST_LOG=debug".to_owned(),
                "--volume".to_owned(),
                format!("{}:{ANNOUNCER_PATH}:ro", path.display()),
            ]
        );
    }

    #[test]
    fn missing_binaries_and_relative_targets_are_refused() {
        let missing = ClientSpec::default().agent("/nonexistent/cfi-agent");
        let err = missing.docker_args(None).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/cfi-agent"),
            "{err:#}"
        );

        let file = tempfile::NamedTempFile::new().unwrap();
        let relative = ClientSpec::default().binary(file.path(), "usr/lib/cfi/x");
        assert!(relative.docker_args(None).is_err());
        let bad_env = ClientSpec::default().env("A=B", "c");
        assert!(bad_env.docker_args(None).is_err());
    }
}
