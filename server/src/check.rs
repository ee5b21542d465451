//! `cfi-server --check-config`: load everything the daemon would load at
//! start and say what it found, or the first thing that is wrong, naming
//! the file and line.

use std::path::PathBuf;

use cfi_groups::DataDir;
use cfi_groups::layout::Listed;
use serde::Serialize;

use crate::clients::{self, StaticClient};
use crate::config::ServerConfig;

/// What a good configuration amounts to.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The data dir.
    pub data_dir: PathBuf,
    /// Valid group directories.
    pub groups: Vec<String>,
    /// Directories under the data dir whose names are not group names
    /// (never synced; shown so the admin sees why).
    pub ignored_dirs: Vec<String>,
    /// Statically listed clients, `host:port group`.
    pub static_clients: Vec<String>,
}

/// Why the configuration cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The data dir is missing or unreadable.
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, String),
    /// A client list does not parse.
    #[error(transparent)]
    Clients(#[from] clients::ClientsError),
}

/// Checks a loaded configuration.
pub fn check(config: &ServerConfig) -> Result<CheckReport, CheckError> {
    let data = DataDir::new(&config.data_dir);
    let listed = data
        .groups()
        .map_err(|e| CheckError::DataDir(config.data_dir.clone(), e.to_string()))?;
    let mut groups = Vec::new();
    let mut ignored_dirs = Vec::new();
    for l in listed {
        match l {
            Listed::Group(g) => groups.push(g.to_string()),
            Listed::Invalid(path, why) => ignored_dirs.push(format!("{}: {why}", path.display())),
        }
    }
    let all = clients::load(config)?;
    Ok(CheckReport {
        data_dir: config.data_dir.clone(),
        groups,
        ignored_dirs,
        static_clients: all.iter().map(show).collect(),
    })
}

fn show(c: &StaticClient) -> String {
    let group = c.group.as_ref().map_or("unknown", |g| g.as_str());
    format!("{} {group}", c.address())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_groups_odd_dirs_and_clients() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("cfi");
        for g in ["lab", "all", "Bad Dir"] {
            std::fs::create_dir_all(data.join(g)).unwrap();
        }
        let clients = d.path().join("clients");
        std::fs::write(&clients, "ws1 lab\n[fd00::1]:2222\n").unwrap();
        let config = ServerConfig {
            data_dir: data,
            clients_file: clients,
            ..ServerConfig::default()
        };
        let r = check(&config).unwrap();
        assert_eq!(r.groups, ["all", "lab"]);
        assert_eq!(r.ignored_dirs.len(), 1);
        assert!(r.ignored_dirs[0].contains("Bad Dir"));
        assert_eq!(r.static_clients, ["ws1:22 lab", "[fd00::1]:2222 unknown"]);
    }

    #[test]
    fn a_bad_client_line_fails_the_check() {
        let d = tempfile::tempdir().unwrap();
        let clients = d.path().join("clients");
        std::fs::write(&clients, "ws1 Lab\n").unwrap();
        let config = ServerConfig {
            data_dir: d.path().to_path_buf(),
            clients_file: clients.clone(),
            ..ServerConfig::default()
        };
        let err = check(&config).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:1", clients.display())), "{err}");
    }

    #[test]
    fn a_missing_data_dir_is_named() {
        let config = ServerConfig {
            data_dir: "/nonexistent/cfi".into(),
            ..ServerConfig::default()
        };
        assert!(
            check(&config)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/cfi")
        );
    }
}
