//! What dpkg and apt say is installed: `dpkg-query` output and apt's
//! `extended_states` (the auto-installed marks).

use std::collections::HashSet;

/// The `dpkg-query -W -f` format [`parse_query`] reads: one line per
/// package instance dpkg knows.
pub const QUERY_FORMAT: &str = "${Package}\\t${Architecture}\\t${Version}\\t${db:Status-Abbrev}\\t${Essential}\\t${Priority}\\n";

/// A package instance dpkg has on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpkgPackage {
    /// The package name.
    pub name: String,
    /// Its architecture (`all` for architecture-independent packages).
    pub arch: String,
    /// The installed version.
    pub version: String,
    /// `Essential: yes`.
    pub essential: bool,
    /// `Priority:` (required, important, standard, optional, extra).
    pub priority: String,
}

/// The installed instances in `dpkg-query -W -f` [`QUERY_FORMAT`] output.
/// Installed means anything but not-installed and config-files: a
/// half-configured package is on the system and apt acts on it.
pub fn parse_query(text: &str) -> Vec<DpkgPackage> {
    let mut out: Vec<DpkgPackage> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (name, arch, version, status) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let (essential, priority) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            // db:Status-Abbrev is want, state, error flag: "ii ", "rc ", "iF ".
            let state = status.chars().nth(1)?;
            if matches!(state, 'n' | 'c') || name.is_empty() {
                return None;
            }
            Some(DpkgPackage {
                name: name.to_owned(),
                arch: arch.to_owned(),
                version: version.to_owned(),
                essential: essential == "yes",
                priority: priority.to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

/// The `(name, arch)` pairs apt's `extended_states` marks as
/// automatically installed. The file is deb822 stanzas of `Package`,
/// `Architecture` and `Auto-Installed: 1`; a stanza without an
/// architecture is the native one (apt wrote those before multiarch).
pub fn parse_extended_states(text: &str, native: &str) -> HashSet<(String, String)> {
    let mut auto = HashSet::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut arch, mut is_auto) = (None, None, false);
        for line in stanza.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "package" => name = Some(value),
                "architecture" => arch = Some(value),
                "auto-installed" => is_auto = value == "1",
                _ => {}
            }
        }
        if let (Some(name), true) = (name, is_auto) {
            auto.insert((name.to_owned(), arch.unwrap_or(native).to_owned()));
        }
    }
    auto
}

/// Whether `(name, arch)` is marked auto; an `all` package is recorded
/// under the native architecture.
pub fn is_auto(auto: &HashSet<(String, String)>, name: &str, arch: &str, native: &str) -> bool {
    let arch = if arch == "all" { native } else { arch };
    auto.contains(&(name.to_owned(), arch.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_means_not_removed_and_not_config_files() {
        let text = "bash\tamd64\t5.2\tii \tyes\trequired\n\
                    old\tamd64\t1.0\trc \tno\toptional\n\
                    half\tall\t2.0\tiF \t\toptional\n\
                    gone\tamd64\t\tun \t\t\n\
                    libc6\ti386\t2.36\tii \tno\trequired\n";
        let got = parse_query(text);
        let names: Vec<_> = got.iter().map(|p| (&*p.name, &*p.arch)).collect();
        assert_eq!(
            names,
            [("bash", "amd64"), ("half", "all"), ("libc6", "i386")]
        );
        assert!(got[0].essential);
        assert_eq!(got[0].priority, "required");
        assert!(!got[1].essential);
    }

    #[test]
    fn auto_marks_by_name_and_architecture() {
        let text = "Package: curl\nArchitecture: amd64\nAuto-Installed: 1\n\n\
                    Package: bc\nArchitecture: amd64\nAuto-Installed: 0\n\n\
                    Package: libc6\nArchitecture: i386\nAuto-Installed: 1\n\n\
                    Package: oldstyle\nAuto-Installed: 1\n";
        let auto = parse_extended_states(text, "amd64");
        assert!(is_auto(&auto, "curl", "amd64", "amd64"));
        assert!(!is_auto(&auto, "bc", "amd64", "amd64"));
        assert!(is_auto(&auto, "libc6", "i386", "amd64"));
        assert!(!is_auto(&auto, "libc6", "amd64", "amd64"));
        assert!(is_auto(&auto, "oldstyle", "all", "amd64"));
    }
}
