//! A real apt repository of small test packages, for the package-management
//! tests (issue 5: pkgsync's musthave/mayhave/maynothave, converged by
//! cfi-agent with apt-get on each client).
//!
//! Tests describe packages with [`PackageSpec`]; [`AptRepo::build`] makes a
//! `.deb` of each with `dpkg-deb` and writes the flat repository's index
//! itself (the `index` module), so the host needs dpkg but not dpkg-dev.
//! [`AptRepo::serve_to`] copies the repository into a lab client and makes
//! it the client's only apt source (`deb [trusted=yes] file:… ./`): apt
//! works there offline, as the lab network reaches no mirror. Adding a
//! version later ([`AptRepo::add`]) and serving again is how a test makes
//! an installed package outdated.
//!
//! Bad inputs: [`AptRepo::break_hash`] makes the index lie about a `.deb`
//! (apt fails to fetch it: `Hash Sum mismatch`), [`serve_missing`] points a
//! client's apt at a directory that is not there (`apt-get update` fails),
//! and a package whose `postinst` fails ([`PackageSpec::postinst`]) stays
//! half-configured. [`AptLock`] holds apt's and dpkg's locks in a client,
//! as another apt run would.

mod index;
mod lock;
mod package;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};

pub use self::lock::{AptLock, DPKG_LOCKS, LISTS_LOCK};
pub use self::package::PackageSpec;
use crate::command;
use crate::lab::Lab;

/// Where [`AptRepo::serve_to`] puts the repository in a client.
pub const SERVED_DIR: &str = "/srv/cfi-test-repo";

/// The client's one apt source, once served; every other source is gone.
pub const SOURCES_PATH: &str = "/etc/apt/sources.list.d/cfi-test-repo.list";

/// The directory [`serve_missing`] points apt at, which never exists.
pub const MISSING_DIR: &str = "/srv/cfi-test-repo-missing";

/// Time limit of one `dpkg-deb --build` of a tiny package.
const DPKG_DEB_LIMIT: Duration = Duration::from_secs(60);

/// A package in the repository: its spec and what the index says of its
/// `.deb`.
#[derive(Debug, Clone)]
struct Built {
    spec: PackageSpec,
    size: u64,
    /// Lower-case hex; wrong on purpose after [`AptRepo::break_hash`].
    sha256: String,
}

/// A flat apt repository on the host: `.deb`s, `Packages` and `Release` in
/// one directory, served to lab clients by copying.
#[derive(Debug)]
pub struct AptRepo {
    dir: PathBuf,
    packages: Vec<Built>,
}

impl AptRepo {
    /// Builds every package of `specs` into `dir` (created if missing; it
    /// must be empty) and writes the index. Fails on a spec dpkg-deb
    /// rejects, and on two specs of the same name, version and
    /// architecture.
    pub fn build(dir: &Path, specs: &[PackageSpec]) -> Result<AptRepo> {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let mut entries =
            fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "the apt repository dir {} is not empty",
            dir.display()
        );
        let mut repo = AptRepo {
            dir: dir.to_path_buf(),
            packages: Vec::new(),
        };
        repo.add(specs)?;
        Ok(repo)
    }

    /// Builds more packages into the repository (a new version of one
    /// already there, for an upgrade) and rewrites the index. Clients see
    /// them once served again ([`AptRepo::serve_to`]) and `apt-get
    /// update`d.
    pub fn add(&mut self, specs: &[PackageSpec]) -> Result<()> {
        let scratch = tempfile::tempdir().context("failed to create a temporary dir")?;
        for (i, spec) in specs.iter().enumerate() {
            let deb_name = spec.deb_name();
            ensure!(
                !self.packages.iter().any(|p| p.spec.deb_name() == deb_name),
                "the apt repository {} has {deb_name} already",
                self.dir.display()
            );
            let tree = scratch.path().join(i.to_string());
            spec.write_tree(&tree)?;
            let deb = self.dir.join(&deb_name);
            // gzip -1: the packages are tiny, and every dpkg and apt reads it.
            let mut cmd = Command::new("dpkg-deb");
            cmd.args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
                .arg(&tree)
                .arg(&deb);
            match command::checked(&mut cmd, DPKG_DEB_LIMIT) {
                Ok(_) => {}
                Err(e) if command::is_not_found(&e) => {
                    bail!("dpkg-deb not found: building test packages needs dpkg")
                }
                Err(e) => return Err(e).with_context(|| format!("failed to build {deb_name}")),
            }
            let bytes =
                fs::read(&deb).with_context(|| format!("failed to read {}", deb.display()))?;
            self.packages.push(Built {
                spec: spec.clone(),
                size: bytes.len() as u64,
                sha256: index::sha256_hex(&bytes),
            });
        }
        self.write_index()
    }

    /// Takes package `name` at `version` out of the repository (its `.deb`
    /// and its index entry). An installed copy stays installed in clients,
    /// as a package no source has any more.
    pub fn remove(&mut self, name: &str, version: &str) -> Result<()> {
        let i = self.position(name, version)?;
        let built = self.packages.remove(i);
        let deb = self.dir.join(built.spec.deb_name());
        fs::remove_file(&deb).with_context(|| format!("failed to remove {}", deb.display()))?;
        self.write_index()
    }

    /// Makes the index lie about the `.deb` of `name` at `version`: its
    /// SHA256 becomes another file's, so `apt-get update` still succeeds
    /// but installing the package fails (`Hash Sum mismatch`). Takes effect
    /// in clients once served again.
    pub fn break_hash(&mut self, name: &str, version: &str) -> Result<()> {
        let i = self.position(name, version)?;
        let built = &mut self.packages[i];
        built.sha256 = index::sha256_hex(format!("not {}", built.spec.deb_name()).as_bytes());
        self.write_index()
    }

    /// The repository's directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The specs of the packages in the repository, in the order added.
    pub fn packages(&self) -> impl Iterator<Item = &PackageSpec> {
        self.packages.iter().map(|p| &p.spec)
    }

    /// Copies the repository to [`SERVED_DIR`] in client `client`
    /// (replacing what an earlier call put there) and makes it the client's
    /// only apt source, at [`SOURCES_PATH`]: `/etc/apt/sources.list` and
    /// everything else in `sources.list.d` go. Run `apt-get update` there
    /// to see it.
    pub fn serve_to(&self, lab: &Lab, client: usize) -> Result<()> {
        lab.sh(client, &format!("rm -rf {SERVED_DIR} && mkdir -p /srv"))?;
        lab.copy_in(client, &self.dir, SERVED_DIR)?;
        // The host's copy may be a private temporary dir (0700), and apt
        // fetches as the unprivileged _apt user.
        lab.sh(client, &format!("chmod -R a+rX {SERVED_DIR}"))?;
        use_only_source(lab, client, SERVED_DIR)
    }

    /// [`AptRepo::serve_to`] every client of `lab`.
    pub fn serve_everywhere(&self, lab: &Lab) -> Result<()> {
        (0..lab.clients().len()).try_for_each(|i| self.serve_to(lab, i))
    }

    fn position(&self, name: &str, version: &str) -> Result<usize> {
        self.packages
            .iter()
            .position(|p| p.spec.name() == name && p.spec.version() == version)
            .with_context(|| {
                format!(
                    "the apt repository {} has no {name} {version}",
                    self.dir.display()
                )
            })
    }

    /// Writes `Packages`, then `Release` with `Packages`' hash.
    fn write_index(&self) -> Result<()> {
        let mut packages: Vec<&Built> = self.packages.iter().collect();
        packages.sort_by_key(|p| (p.spec.name(), p.spec.version()));
        let mut text = String::new();
        for built in packages {
            let mut fields = built.spec.control_fields()?;
            let description = fields.pop().expect("control fields end with Description");
            // Relative to the source's URI, which `./` ends in a flat
            // repository.
            fields.push(("Filename", built.spec.deb_name()));
            fields.push(("Size", built.size.to_string()));
            fields.push(("SHA256", built.sha256.clone()));
            fields.push(description);
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&index::stanza(&fields));
        }
        write_file(&self.dir.join("Packages"), text.as_bytes(), 0o644)?;
        let release = index::release(&text, SystemTime::now());
        write_file(&self.dir.join("Release"), release.as_bytes(), 0o644)
    }
}

/// Points client `client`'s apt at [`MISSING_DIR`], which is not there, as
/// its only source: `apt-get update` then fails (exit 100, `E: Failed to
/// fetch file:/srv/cfi-test-repo-missing/./Packages  File not found`), and
/// apt knows no package of the test repository any more.
pub fn serve_missing(lab: &Lab, client: usize) -> Result<()> {
    lab.sh(client, &format!("rm -rf {MISSING_DIR}"))?;
    use_only_source(lab, client, MISSING_DIR)
}

/// Makes `deb [trusted=yes] file:<dir> ./` client `client`'s only apt
/// source, so nothing in it tries a mirror.
fn use_only_source(lab: &Lab, client: usize, dir: &str) -> Result<()> {
    lab.sh(
        client,
        &format!(
            "rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/* && \
             printf '%s\\n' 'deb [trusted=yes] file:{dir} ./' > {SOURCES_PATH}"
        ),
    )?;
    Ok(())
}

/// A directory with mode 0755 whatever the umask: dpkg-deb rejects a
/// `DEBIAN` dir of another mode, and the tree's dirs are installed as they
/// are.
fn make_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("failed to create {}", path.display())),
    }
    set_mode(path, 0o755)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("failed to write {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn the_index_names_each_deb_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let repo = AptRepo::build(
            dir.path(),
            &[
                PackageSpec::new("cfi-test-b", "1.0").file("/usr/share/cfi-test/b", "b\n"),
                PackageSpec::new("cfi-test-a", "1.0").depends("cfi-test-b"),
            ],
        )
        .unwrap();
        let packages = read(dir.path(), "Packages");
        let deb = fs::read(dir.path().join("cfi-test-b_1.0_all.deb")).unwrap();
        // Sorted by name: b comes second.
        let b = packages.split("\n\n").nth(1).unwrap();
        assert!(b.starts_with("Package: cfi-test-b\n"), "{packages}");
        assert!(b.contains("Filename: cfi-test-b_1.0_all.deb\n"), "{b}");
        assert!(b.contains(&format!("Size: {}\n", deb.len())), "{b}");
        let sha256 = index::sha256_hex(&deb);
        assert!(b.contains(&format!("SHA256: {sha256}\n")), "{b}");
        assert!(
            b.ends_with("Description: cfi test package cfi-test-b\n"),
            "{b}"
        );
        let release = read(dir.path(), "Release");
        let entry = format!(
            " {} {} Packages\n",
            index::sha256_hex(packages.as_bytes()),
            packages.len()
        );
        assert!(release.contains(&entry), "{release}");
        assert_eq!(repo.packages().count(), 2);
    }

    #[test]
    fn a_broken_hash_is_in_the_index_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo =
            AptRepo::build(dir.path(), &[PackageSpec::new("cfi-test-a", "1.0")]).unwrap();
        let deb = fs::read(dir.path().join("cfi-test-a_1.0_all.deb")).unwrap();
        repo.break_hash("cfi-test-a", "1.0").unwrap();
        let packages = read(dir.path(), "Packages");
        assert!(packages.contains("SHA256: "), "{packages}");
        assert!(!packages.contains(&index::sha256_hex(&deb)), "{packages}");
        assert!(repo.break_hash("cfi-test-a", "2.0").is_err());
    }

    #[test]
    fn versions_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo =
            AptRepo::build(dir.path(), &[PackageSpec::new("cfi-test-a", "1.0")]).unwrap();
        repo.add(&[PackageSpec::new("cfi-test-a", "2.0")]).unwrap();
        assert!(read(dir.path(), "Packages").contains("Version: 2.0\n"));
        repo.remove("cfi-test-a", "1.0").unwrap();
        let packages = read(dir.path(), "Packages");
        assert!(!packages.contains("Version: 1.0\n"), "{packages}");
        assert!(!dir.path().join("cfi-test-a_1.0_all.deb").exists());
    }

    #[test]
    fn the_same_deb_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = PackageSpec::new("cfi-test-a", "1.0");
        let err = AptRepo::build(dir.path(), &[spec.clone(), spec]).unwrap_err();
        assert!(format!("{err:#}").contains("already"), "{err:#}");
    }

    #[test]
    fn a_dir_with_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("stale.deb"), "").unwrap();
        let err = AptRepo::build(dir.path(), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    }

    #[test]
    fn dpkg_deb_errors_name_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = AptRepo::build(dir.path(), &[PackageSpec::new("Bad_Name", "1.0")]).unwrap_err();
        assert!(
            format!("{err:#}").contains("Bad_Name_1.0_all.deb"),
            "{err:#}"
        );
    }
}
