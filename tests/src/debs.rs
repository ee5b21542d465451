//! The lab running cfi's Debian packages instead of loose binaries, so
//! that every end-to-end test also tests the packages (issue 6).
//!
//! When [`DEBS_ENV`] names a directory holding one `cfi-server_*.deb` and
//! one `cfi-client_*.deb` (`scripts/package` writes them to
//! `target/debian/`; `scripts/test` builds them and sets it):
//!
//! - lab clients run the lab image with cfi-client installed by `dpkg -i`
//!   ([`Packages::client_image`], built once per package): the announcer
//!   the init starts and the agent that is root's forced command are the
//!   package's files, where the package put them, with its config and
//!   unit beside them;
//! - the daemon of the end-to-end tests and of the demo is the lab image
//!   with cfi-server installed ([`Packages::server_image`]), run as a
//!   container on the lab's network ([`crate::server_container`]);
//! - [`crate::lab::built_binary`] gives the packages' own files, unpacked
//!   with `dpkg-deb -x`: the `cfi` the tests run on the host, and the
//!   daemons a few tests start by hand there (a rogue server). Installing
//!   the packages under systemd, upgrading and purging them is what
//!   `tests/package_lab.rs` tests, in clean containers.
//!
//! Without it, the lab mounts the loose binaries of cargo's target dir
//! into its clients, as a developer's `cargo test` builds them.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tracing::info;

use crate::image::{self, INIT_PATH};
use crate::{command, docker, leftovers};

/// The environment variable naming the directory of the packages.
pub const DEBS_ENV: &str = "CFI_LAB_DEBS";

/// Where the packages put cfi's binaries, searched in this order.
const BINARY_DIRS: &[&str] = &["usr/bin", "usr/sbin", "usr/lib/cfi"];

/// Time limit of unpacking or installing one package.
const DPKG_LIMIT: Duration = Duration::from_secs(300);

/// The two packages the lab runs, and their files unpacked.
#[derive(Debug)]
pub struct Packages {
    /// `cfi-server_<version>_<arch>.deb`.
    pub server_deb: PathBuf,
    /// `cfi-client_<version>_<arch>.deb`.
    pub client_deb: PathBuf,
    /// Both packages' files, as `dpkg-deb -x` lays them out, in `server/`
    /// and `client/`.
    root: PathBuf,
    /// blake3 of both packages, hex: names the unpacked tree and the image.
    hash: String,
}

/// The packages [`DEBS_ENV`] names, unpacked on first use; `None` when it
/// is not set. An error when it is set but does not hold exactly one of
/// each package: a lab told to test packages never falls back to loose
/// binaries.
pub fn configured() -> Result<Option<&'static Packages>> {
    static PACKAGES: OnceLock<Result<Option<Packages>, String>> = OnceLock::new();
    let found = PACKAGES.get_or_init(|| {
        let Some(dir) = std::env::var_os(DEBS_ENV).filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        Packages::open(Path::new(&dir))
            .map(Some)
            .map_err(|e| format!("{DEBS_ENV}={}: {e:#}", Path::new(&dir).display()))
    });
    found
        .as_ref()
        .map(Option::as_ref)
        .map_err(|e| anyhow!("{e}"))
}

impl Packages {
    /// The packages in `dir`, unpacked beside them (once per content).
    pub fn open(dir: &Path) -> Result<Self> {
        let server_deb = only_deb(dir, "cfi-server_")?;
        let client_deb = only_deb(dir, "cfi-client_")?;
        let mut hasher = blake3::Hasher::new();
        for deb in [&server_deb, &client_deb] {
            let bytes =
                fs::read(deb).with_context(|| format!("failed to read {}", deb.display()))?;
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        let hash = hasher.finalize().to_hex()[..16].to_owned();
        let root = dir.join(format!("unpacked-{hash}"));
        let packages = Self {
            server_deb,
            client_deb,
            root,
            hash,
        };
        packages.unpack()?;
        Ok(packages)
    }

    /// The packaged file of binary `name` (`cfi`, `cfi-server`,
    /// `cfi-announcer`, `cfi-agent`), or `None` when no package has it.
    pub fn binary(&self, name: &str) -> Option<PathBuf> {
        ["server", "client"]
            .iter()
            .flat_map(|package| BINARY_DIRS.iter().map(move |dir| (package, dir)))
            .map(|(package, dir)| self.root.join(package).join(dir).join(name))
            .find(|p| p.is_file())
    }

    /// Whether `host` is the file that cfi-client installs at
    /// `container_path`: mounting it there in a client of
    /// [`Packages::client_image`] would change nothing, so the lab does
    /// not.
    pub fn installs(&self, host: &Path, container_path: &str) -> bool {
        let packaged = self
            .root
            .join("client")
            .join(container_path.trim_start_matches('/'));
        match (host.canonicalize(), packaged.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// The lab image `base` with cfi-client installed by `dpkg -i`, built
    /// once per base and package (its tag says which).
    pub fn client_image(&self, base: &str) -> Result<String> {
        self.installed_image(base, &self.client_deb, "cfi-lab/debian12-cfi-client")
    }

    /// The lab image `base` with cfi-server installed, for a server
    /// container ([`crate::server_container`]).
    pub fn server_image(&self, base: &str) -> Result<String> {
        self.installed_image(base, &self.server_deb, "cfi-lab/debian12-cfi-server")
    }

    fn installed_image(&self, base: &str, deb: &Path, repository: &str) -> Result<String> {
        let tag = blake3::hash(format!("{base}\n{}", self.hash).as_bytes()).to_hex();
        let reference = format!("{repository}:{}", &tag[..12]);
        image::ensure_built(&reference, DPKG_LIMIT * 2, || {
            install_into_image(base, deb, &reference).with_context(|| {
                format!("failed to build {reference} ({} installed)", file_name(deb))
            })
        })?;
        Ok(reference)
    }

    /// `dpkg-deb -x` of both packages into `server/` and `client/` of
    /// [`Packages::root`], unless an
    /// earlier run did: into a temporary dir renamed into place, so a
    /// concurrent or killed run never leaves a half tree there.
    fn unpack(&self) -> Result<()> {
        if self.root.is_dir() {
            return Ok(());
        }
        let parent = self
            .root
            .parent()
            .context("unpacked tree without a parent")?;
        let temp = tempfile::Builder::new()
            .prefix(".unpacking-")
            .tempdir_in(parent)
            .with_context(|| format!("failed to create a temporary dir in {}", parent.display()))?;
        for (deb, package) in [(&self.server_deb, "server"), (&self.client_deb, "client")] {
            let mut cmd = Command::new("dpkg-deb");
            cmd.arg("-x").arg(deb).arg(temp.path().join(package));
            command::checked(&mut cmd, DPKG_LIMIT)
                .with_context(|| format!("failed to unpack {}", deb.display()))?;
        }
        let temp = temp.keep();
        if let Err(e) = fs::rename(&temp, &self.root) {
            let _ = fs::remove_dir_all(&temp);
            if !self.root.is_dir() {
                return Err(e).with_context(|| {
                    format!(
                        "failed to rename {} to {}",
                        temp.display(),
                        self.root.display()
                    )
                });
            }
        }
        Ok(())
    }
}

/// `docker commit` of a container of `base` in which `dpkg -i deb` ran,
/// as `reference`, with the lab's init as its command.
fn install_into_image(base: &str, deb: &Path, reference: &str) -> Result<()> {
    info!(image = reference, deb = %deb.display(), "installing a package into a lab image");
    let name = format!(
        "cfi-lab-debs-{}-{}",
        std::process::id(),
        file_name(deb).replace(['_', '+', '~'], "-")
    );
    let label = format!("{}={}", leftovers::OWNER_LABEL, leftovers::owner_label());
    docker::run(&[
        "run",
        "--detach",
        "--network",
        "none",
        "--label",
        &label,
        "--name",
        &name,
        base,
        "sleep",
        "infinity",
    ])?;
    let built = (|| {
        let mut cp = docker::command(&["cp"]);
        cp.arg(deb).arg(format!("{name}:/tmp/package.deb"));
        command::checked(&mut cp, docker::LIMIT)?;
        let mut install = docker::command(&[
            "exec",
            &name,
            "sh",
            "-c",
            "dpkg -i /tmp/package.deb && rm /tmp/package.deb",
        ]);
        command::checked(&mut install, DPKG_LIMIT)
            .with_context(|| format!("dpkg -i {} failed", file_name(deb)))?;
        docker::run(&[
            "commit",
            "--change",
            &format!("CMD [\"{INIT_PATH}\"]"),
            "--message",
            &format!("cfi lab image with {} installed", file_name(deb)),
            &name,
            reference,
        ])?;
        Ok(())
    })();
    let removed = docker::run(&["rm", "--force", &name]);
    built.and(removed.map(drop))
}

/// The one file of `dir` named `<prefix>…​.deb`.
fn only_deb(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("failed to read {}", dir.display()))?
            .path();
        let name = file_name(&path);
        if name.starts_with(prefix) && name.ends_with(".deb") {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no {prefix}*.deb in {} (scripts/package builds them)",
            dir.display()
        ),
        n => bail!(
            "{n} {prefix}*.deb in {}: which one to test is not clear",
            dir.display()
        ),
    }
}

/// The last component of `path`, for messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(OsStr::to_string_lossy)
        .unwrap_or_default()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_needs_exactly_one_of_each_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = only_deb(dir.path(), "cfi-client_").unwrap_err();
        assert!(format!("{err:#}").contains("scripts/package"), "{err:#}");
        fs::write(dir.path().join("cfi-client_0.1.0_amd64.deb"), "x").unwrap();
        fs::write(dir.path().join("cfi-server_0.1.0_amd64.deb"), "x").unwrap();
        assert!(only_deb(dir.path(), "cfi-client_").is_ok());
        fs::write(dir.path().join("cfi-client_0.2.0_amd64.deb"), "x").unwrap();
        let err = only_deb(dir.path(), "cfi-client_").unwrap_err();
        assert!(format!("{err:#}").contains("2 cfi-client_"), "{err:#}");
    }
}
