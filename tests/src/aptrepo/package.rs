//! [`PackageSpec`]: one test package, and the tree `dpkg-deb --build`
//! makes its `.deb` of.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use super::index::stanza;
use super::{make_dir, write_file};

const MAINTAINER: &str = "cfi lab <root@localhost>";

/// One test package: what its control file says and the files it ships.
/// A builder: `PackageSpec::new("cfi-test-a", "1.0").depends("cfi-test-b")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    name: String,
    version: String,
    architecture: String,
    depends: Vec<String>,
    conflicts: Vec<String>,
    provides: Vec<String>,
    essential: bool,
    priority: String,
    section: String,
    description: String,
    /// Absolute path in the installed system → contents and mode.
    files: BTreeMap<String, (Vec<u8>, u32)>,
    postinst: Option<String>,
}

impl PackageSpec {
    /// Package `name` at `version`, architecture `all`, priority
    /// `optional`, section `misc`, no relations, no files.
    pub fn new(name: &str, version: &str) -> Self {
        PackageSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: "all".to_owned(),
            depends: Vec::new(),
            conflicts: Vec::new(),
            provides: Vec::new(),
            essential: false,
            priority: "optional".to_owned(),
            section: "misc".to_owned(),
            description: format!("cfi test package {name}"),
            files: BTreeMap::new(),
            postinst: None,
        }
    }

    /// The architecture (`all`, `amd64`, …).
    pub fn architecture(mut self, architecture: &str) -> Self {
        self.architecture = architecture.to_owned();
        self
    }

    /// Adds one entry of the Depends field, as written there:
    /// `cfi-test-b`, `cfi-test-b (>= 2.0)`, `cfi-test-b | cfi-test-c`.
    pub fn depends(mut self, relation: &str) -> Self {
        self.depends.push(relation.to_owned());
        self
    }

    /// Adds one entry of the Conflicts field.
    pub fn conflicts(mut self, relation: &str) -> Self {
        self.conflicts.push(relation.to_owned());
        self
    }

    /// Adds one entry of the Provides field (a virtual package name).
    pub fn provides(mut self, relation: &str) -> Self {
        self.provides.push(relation.to_owned());
        self
    }

    /// `Essential: yes`: apt refuses to remove the package without
    /// `--allow-remove-essential`.
    pub fn essential(mut self, essential: bool) -> Self {
        self.essential = essential;
        self
    }

    /// The Priority field (`required`, `important`, `standard`,
    /// `optional`, `extra`).
    pub fn priority(mut self, priority: &str) -> Self {
        self.priority = priority.to_owned();
        self
    }

    /// The Section field.
    pub fn section(mut self, section: &str) -> Self {
        self.section = section.to_owned();
        self
    }

    /// The Description's synopsis (one line).
    pub fn description(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }

    /// Ships a regular file (mode 0644) at absolute `path`, so a test sees
    /// the package installed on disk.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.to_owned(), (contents.into(), 0o644));
        self
    }

    /// Ships an executable (mode 0755) at absolute `path`.
    pub fn executable(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.to_owned(), (contents.into(), 0o755));
        self
    }

    /// The package's `postinst` script (a whole script, `#!` line
    /// included). One that exits non-zero leaves the package
    /// half-configured and every later apt-get run failing on it.
    pub fn postinst(mut self, script: &str) -> Self {
        self.postinst = Some(script.to_owned());
        self
    }

    /// The package name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version, as given.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `.deb`'s file name, as Debian names it: `name_version_arch.deb`,
    /// the version without its epoch.
    pub fn deb_name(&self) -> String {
        let version = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        format!("{}_{version}_{}.deb", self.name, self.architecture)
    }

    /// The control stanza: the fields both `DEBIAN/control` and the
    /// repository's `Packages` carry, Description last, so `Packages` can
    /// put its own fields before it.
    pub(super) fn control_fields(&self) -> Result<Vec<(&'static str, String)>> {
        let mut fields = vec![
            ("Package", self.name.clone()),
            ("Version", self.version.clone()),
            ("Architecture", self.architecture.clone()),
            ("Maintainer", MAINTAINER.to_owned()),
            ("Installed-Size", self.installed_size_kib().to_string()),
        ];
        for (field, list) in [
            ("Depends", &self.depends),
            ("Conflicts", &self.conflicts),
            ("Provides", &self.provides),
        ] {
            if !list.is_empty() {
                fields.push((field, list.join(", ")));
            }
        }
        if self.essential {
            fields.push(("Essential", "yes".to_owned()));
        }
        fields.push(("Priority", self.priority.clone()));
        fields.push(("Section", self.section.clone()));
        fields.push(("Description", self.description.clone()));
        for (field, value) in &fields {
            // A newline would start another field (or stanza) in the index.
            ensure!(
                !value.is_empty() && !value.contains('\n'),
                "package {}: field {field} must be one non-empty line: {value:?}",
                self.name
            );
        }
        Ok(fields)
    }

    /// What dpkg-gencontrol would say: KiB per file, rounded up.
    fn installed_size_kib(&self) -> u64 {
        self.files
            .values()
            .map(|(contents, _)| (contents.len() as u64).div_ceil(1024).max(1))
            .sum::<u64>()
            .max(1)
    }

    /// Writes the package tree (`DEBIAN/` and the shipped files) at `root`,
    /// every directory 0755.
    pub(super) fn write_tree(&self, root: &Path) -> Result<()> {
        make_dir(root)?;
        let debian = root.join("DEBIAN");
        make_dir(&debian)?;
        write_file(
            &debian.join("control"),
            stanza(&self.control_fields()?).as_bytes(),
            0o644,
        )?;
        if let Some(script) = &self.postinst {
            write_file(&debian.join("postinst"), script.as_bytes(), 0o755)?;
        }
        for (path, (contents, mode)) in &self.files {
            let relative = path.strip_prefix('/').with_context(|| {
                format!("package {}: file path {path:?} is not absolute", self.name)
            })?;
            ensure!(
                !relative.is_empty() && !relative.split('/').any(|c| c == ".." || c.is_empty()),
                "package {}: bad file path {path:?}",
                self.name
            );
            let mut dir = root.to_path_buf();
            for component in Path::new(relative).parent().into_iter().flatten() {
                dir.push(component);
                make_dir(&dir)?;
            }
            write_file(&root.join(relative), contents, *mode)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_names_drop_the_epoch() {
        let spec = PackageSpec::new("cfi-test-a", "2:1.0-1").architecture("amd64");
        assert_eq!(spec.deb_name(), "cfi-test-a_1.0-1_amd64.deb");
    }

    #[test]
    fn control_lists_relations_and_flags() {
        let spec = PackageSpec::new("cfi-test-a", "1.0")
            .depends("cfi-test-b (>= 1.0)")
            .depends("cfi-test-c | cfi-test-d")
            .provides("cfi-test-virtual")
            .essential(true)
            .file("/usr/share/cfi-test/a", vec![0; 1025]);
        let control = stanza(&spec.control_fields().unwrap());
        assert_eq!(
            control,
            "Package: cfi-test-a\n\
             Version: 1.0\n\
             Architecture: all\n\
             Maintainer: cfi lab <root@localhost>\n\
             Installed-Size: 2\n\
             Depends: cfi-test-b (>= 1.0), cfi-test-c | cfi-test-d\n\
             Provides: cfi-test-virtual\n\
             Essential: yes\n\
             Priority: optional\n\
             Section: misc\n\
             Description: cfi test package cfi-test-a\n"
        );
    }

    #[test]
    fn a_newline_in_a_field_is_refused() {
        let spec = PackageSpec::new("cfi-test-a", "1.0").depends("b\nPackage: evil");
        let err = spec.control_fields().unwrap_err();
        assert!(format!("{err:#}").contains("Depends"), "{err:#}");
    }

    #[test]
    fn a_file_outside_the_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for path in ["relative/path", "/usr/../../etc/passwd", "/"] {
            let spec = PackageSpec::new("cfi-test-a", "1.0").file(path, "x");
            let err = spec.write_tree(&dir.path().join("tree")).unwrap_err();
            assert!(format!("{err:#}").contains(path), "{path}: {err:#}");
        }
    }
}
