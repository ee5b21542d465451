//! The static client list: `/etc/cfi/clients`, and dsh's lists when asked.
//!
//! ```text
//! # host[:port] [group]
//! lab-01                lab
//! 10.0.0.12:2222        render
//! [fd00::7]:22          lab
//! kiosk-3
//! ```
//!
//! mDNS says who is there; this list says whom to try when mDNS does not
//! (other subnets, machines that do not announce). With `read_dsh = true`
//! the hosts of dsh's `machines.list` (no group) and of each
//! `/etc/dsh/group/<name>` (group `<name>`) are added; cfi's own list wins.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cfi_groups::GroupName;

/// One statically listed client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticClient {
    /// Host name or address, as written (without brackets for IPv6).
    pub host: String,
    /// sshd port.
    pub port: u16,
    /// The group it asks for; `None` means `unknown`.
    pub group: Option<GroupName>,
    /// Where it was listed, for messages.
    pub origin: Origin,
}

impl StaticClient {
    /// The name it goes by in `cfi`: the host as listed, with the port
    /// when it is not 22 (`host:2222`, `[fd00::1]:2222`).
    pub fn name(&self) -> String {
        match (self.port, self.host.contains(':')) {
            (22, _) => self.host.clone(),
            (port, true) => format!("[{}]:{port}", self.host),
            (port, false) => format!("{}:{port}", self.host),
        }
    }

    /// Where to connect: `host:port`, IPv6 in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The static clients of a configuration: its `clients_file` (none when
/// the file does not exist) and, with `read_dsh`, dsh's lists.
pub fn load(config: &crate::config::ServerConfig) -> Result<Vec<StaticClient>, ClientsError> {
    let own = match std::fs::read_to_string(&config.clients_file) {
        Ok(text) => parse(&config.clients_file, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(cause) => {
            return Err(ClientsError::Read {
                file: config.clients_file.clone(),
                cause,
            });
        }
    };
    Ok(if config.read_dsh {
        merge(own, parse_dsh(&config.dsh_dir)?)
    } else {
        own
    })
}

/// A file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A line that does not parse, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientsError {
    /// The file cannot be read.
    #[error("cannot read client list {file}: {cause}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A malformed line.
    #[error("{origin}: {message}")]
    Line {
        /// Where.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
}

const SSH_PORT: u16 = 22;

/// The lines that say something, with where they stand: `#` starts a
/// comment, blank lines are skipped.
fn lines<'a>(file: &'a Path, text: &'a str) -> impl Iterator<Item = (Origin, &'a str)> {
    text.lines().enumerate().filter_map(move |(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then(|| {
            let origin = Origin {
                file: file.to_path_buf(),
                line: i + 1,
            };
            (origin, line)
        })
    })
}

/// Parses cfi's own list (`host[:port] [group]` per line).
pub fn parse(file: &Path, text: &str) -> Result<Vec<StaticClient>, ClientsError> {
    let mut out: Vec<StaticClient> = Vec::new();
    let mut seen: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for (origin, line) in lines(file, text) {
        let fail = |message: String| ClientsError::Line {
            origin: origin.clone(),
            message,
        };
        let mut words = line.split_whitespace();
        let target = words.next().unwrap_or_default();
        let group = words
            .next()
            .map(GroupName::parse)
            .transpose()
            .map_err(|e| fail(e.to_string()))?;
        if let Some(extra) = words.next() {
            return Err(fail(format!(
                "unexpected {extra:?}: a line is `host[:port] [group]`"
            )));
        }
        let (host, port) = split_host_port(target).map_err(fail)?;
        if let Some(first) = seen.insert((host.clone(), port), origin.line) {
            return Err(fail(format!(
                "{host}:{port} is already listed on line {first}"
            )));
        }
        out.push(StaticClient {
            host,
            port,
            group,
            origin,
        });
    }
    Ok(out)
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port`; checks the host name.
fn split_host_port(target: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{target:?}: missing ']' after an IPv6 address"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        match after {
            "" => (v6, None),
            _ => (
                v6,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{target:?}: expected ':port' after ']'"))?,
                ),
            ),
        }
    } else if target.matches(':').count() > 1 {
        return Err(format!(
            "{target:?}: write an IPv6 address in brackets, as [{target}]:22"
        ));
    } else {
        match target.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (target, None),
        }
    };
    let port = match port {
        None => SSH_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?,
    };
    if !target.starts_with('[') && !valid_host(host) {
        return Err(format!(
            "{host:?} is not a host name or address (letters, digits, '-', '.')"
        ));
    }
    Ok((host.to_owned(), port))
}

/// A DNS name (RFC 1123 labels) or an IPv4 address.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// dsh's lists: `machines.list` (hosts, no group) and `group/<name>`
/// (hosts of group `<name>`). dsh allows `user@host`; the user is dropped,
/// since cfi always logs in as root. A group file whose name is not a valid
/// group name is refused, naming the file.
pub fn parse_dsh(dsh_dir: &Path) -> Result<Vec<StaticClient>, ClientsError> {
    let mut out = Vec::new();
    let mut read = |file: &Path, group: Option<GroupName>| -> Result<(), ClientsError> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(cause) => {
                return Err(ClientsError::Read {
                    file: file.to_path_buf(),
                    cause,
                });
            }
        };
        out.extend(parse_dsh_list(file, &text, group)?);
        Ok(())
    };
    read(&dsh_dir.join("machines.list"), None)?;
    let groups = dsh_dir.join("group");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&groups) {
        Ok(dir) => dir.filter_map(Result::ok).map(|d| d.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(cause) => {
            return Err(ClientsError::Read {
                file: groups,
                cause,
            });
        }
    };
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let group = GroupName::parse(&name).map_err(|e| ClientsError::Line {
            origin: Origin {
                file: file.clone(),
                line: 0,
            },
            message: format!("dsh group file name: {e}"),
        })?;
        read(&file, Some(group))?;
    }
    Ok(out)
}

/// Parses one dsh list (`[user@]host[:port]` per line) read from `file`,
/// every host in `group`.
pub fn parse_dsh_list(
    file: &Path,
    text: &str,
    group: Option<GroupName>,
) -> Result<Vec<StaticClient>, ClientsError> {
    let mut out = Vec::new();
    for (origin, line) in lines(file, text) {
        let target = line.rsplit_once('@').map_or(line, |(_, h)| h);
        let (host, port) = split_host_port(target).map_err(|message| ClientsError::Line {
            origin: origin.clone(),
            message,
        })?;
        out.push(StaticClient {
            host,
            port,
            group: group.clone(),
            origin,
        });
    }
    Ok(out)
}

/// cfi's list first; a dsh entry for a host already listed is dropped, and
/// a later dsh group file gives a host listed only in `machines.list` its
/// group.
pub fn merge(own: Vec<StaticClient>, dsh: Vec<StaticClient>) -> Vec<StaticClient> {
    let mut out = own;
    let own_count = out.len();
    for c in dsh {
        match out
            .iter_mut()
            .position(|o| o.host == c.host && o.port == c.port)
        {
            Some(i) if i < own_count => {}
            Some(i) => {
                if out[i].group.is_none() {
                    out[i] = c;
                }
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<StaticClient>, ClientsError> {
        parse(Path::new("/etc/cfi/clients"), text)
    }

    #[test]
    fn parses_hosts_ports_groups_and_comments() {
        let list = p(
            "# lab\nlab-01 lab\n\n10.0.0.12:2222 render # farm\n[fd00::7]:22 lab\nkiosk-3\n[::1]\n",
        )
        .unwrap();
        let got: Vec<(String, u16, Option<String>)> = list
            .iter()
            .map(|c| {
                (
                    c.host.clone(),
                    c.port,
                    c.group.as_ref().map(|g| g.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("lab-01".into(), 22, Some("lab".into())),
                ("10.0.0.12".into(), 2222, Some("render".into())),
                ("fd00::7".into(), 22, Some("lab".into())),
                ("kiosk-3".into(), 22, None),
                ("::1".into(), 22, None),
            ]
        );
        assert_eq!(list[1].origin.line, 4);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, needle) in [
            (
                "ok\nbad_host\n",
                "/etc/cfi/clients:2: \"bad_host\" is not a host name",
            ),
            ("a:0\n", "is not a port"),
            ("a:99999\n", "is not a port"),
            ("a Lab\n", "invalid group name"),
            ("a lab extra\n", "unexpected \"extra\""),
            ("fd00::1\n", "in brackets"),
            ("[fd00::1\n", "missing ']'"),
            ("[nothex]:22\n", "not an IPv6 address"),
            (
                "a\nb\na\n",
                "/etc/cfi/clients:3: a:22 is already listed on line 1",
            ),
        ] {
            let err = p(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn reads_dsh_lists_and_own_list_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("machines.list"), "localhost\nroot@ws1\nws2\n").unwrap();
        std::fs::create_dir(d.path().join("group")).unwrap();
        std::fs::write(d.path().join("group/lab"), "ws1\nws3 # new\n").unwrap();
        let dsh = parse_dsh(d.path()).unwrap();
        let own = p("ws2 render\n").unwrap();
        let all = merge(own, dsh);
        let got: Vec<(String, Option<String>)> = all
            .iter()
            .map(|c| (c.host.clone(), c.group.as_ref().map(|g| g.to_string())))
            .collect();
        assert_eq!(
            got,
            [
                ("ws2".into(), Some("render".into())),
                ("localhost".into(), None),
                ("ws1".into(), Some("lab".into())),
                ("ws3".into(), Some("lab".into())),
            ]
        );
    }

    #[test]
    fn a_badly_named_dsh_group_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("group")).unwrap();
        std::fs::write(d.path().join("group/Lab Room"), "ws1\n").unwrap();
        let err = parse_dsh(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("Lab Room") && err.contains("invalid group name"),
            "{err}"
        );
    }

    #[test]
    fn missing_dsh_dir_is_empty() {
        assert!(parse_dsh(Path::new("/nonexistent/dsh")).unwrap().is_empty());
    }
}
