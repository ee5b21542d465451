//! Which Debian mirror this machine's apt uses, read from
//! `/etc/apt/sources.list` and `/etc/apt/sources.list.d/` (both the
//! one-line and the deb822 format, sources.list(5)), so the lab's image
//! build fetches from the same place apt does instead of a hard-coded host.

use std::env;
use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The Debian mirror for `suite`: `CFI_LAB_MIRROR` if set, else the first
/// `deb` source for that suite in `/etc/apt/sources.list` and
/// `/etc/apt/sources.list.d/*.{list,sources}`.
pub fn mirror(suite: &str) -> Result<String> {
    if let Some(m) = env::var_os("CFI_LAB_MIRROR") {
        return Ok(m.to_string_lossy().trim_end_matches('/').to_owned());
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let parse: fn(&str, &str) -> Option<String> =
            match file.extension().and_then(|e| e.to_str()) {
                Some("list") => one_line_mirror,
                Some("sources") => deb822_mirror,
                _ => continue,
            };
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", file.display())),
        };
        if let Some(m) = parse(&text, suite) {
            return Ok(m);
        }
    }
    bail!(
        "no apt source for {suite} in /etc/apt/sources.list*: \
         set CFI_LAB_MIRROR to a Debian mirror (http://…/debian)"
    )
}

/// The URI of the first `deb URI <suite> …` line.
fn one_line_mirror(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // Options: `[arch=amd64 signed-by=…]`, possibly several words.
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        (words.next()? == suite).then(|| uri.trim_end_matches('/').to_owned())
    })
}

/// The first URI of the first enabled `Types: deb` stanza listing `suite`
/// among its `Suites` (deb822 format, sources.list(5)).
fn deb822_mirror(text: &str, suite: &str) -> Option<String> {
    let mut stanza: Vec<(String, String)> = Vec::new();
    let mut found = None;
    let mut check = |stanza: &mut Vec<(String, String)>| {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let has = |name: &str, word: &str| {
            field(name).is_some_and(|v| v.split_whitespace().any(|w| w == word))
        };
        if found.is_none()
            && has("Types", "deb")
            && has("Suites", suite)
            && !field("Enabled").is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
        {
            found = field("URIs")
                .and_then(|v| v.split_whitespace().next())
                .map(|u| u.trim_end_matches('/').to_owned());
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            check(&mut stanza);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    check(&mut stanza);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources() {
        let text = "\
# deb http://old.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://m.example/debian/ bookworm main
deb http://other.example/debian bookworm-security main
";
        assert_eq!(
            one_line_mirror(text, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            one_line_mirror("deb http://x/debian trixie main\n", "bookworm"),
            None
        );
    }

    #[test]
    fn deb822_sources() {
        // The layout of this machine's debian.sources.
        let text = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";
        assert_eq!(
            deb822_mirror(text, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let disabled = "Types: deb\nURIs: http://a/debian\nSuites: bookworm\nEnabled: no\n\n\
                        Types: deb-src deb\nURIs:\n http://b/debian\nSuites: bookworm\n";
        assert_eq!(
            deb822_mirror(disabled, "bookworm").as_deref(),
            Some("http://b/debian")
        );
    }
}
