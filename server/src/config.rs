//! `/etc/cfi/server.toml`: every key optional, with the defaults below.
//! The example shipped in `server/server.toml` is the same text with every
//! key commented out; a test keeps the two in step.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Group trees: `<data_dir>/<group>/…`.
    pub data_dir: PathBuf,
    /// The server's key, state database and caches.
    pub state_dir: PathBuf,
    /// The control socket `cfi` talks to (mode 0600).
    pub socket: PathBuf,
    /// Static clients: `host[:port] [group]` per line.
    pub clients_file: PathBuf,
    /// Also read dsh's `machines.list` and `group/*` (off: dsh ships a
    /// machines.list naming localhost).
    pub read_dsh: bool,
    /// Where dsh keeps its lists.
    pub dsh_dir: PathBuf,
    /// New clients: `auto` (enroll) or `manual` (pending until `cfi accept`).
    pub accept: Accept,
    /// The user the server logs in as on clients.
    pub ssh_user: String,
    /// Seconds to wait for a client's TCP connect and SSH handshake.
    pub connect_timeout: u64,
    /// Seconds a `cfi exec` command may run before it counts as failed.
    pub command_timeout: u64,
    /// Seconds between SSH keepalives; a client that misses three is offline.
    pub keepalive: u64,
    /// Handshakes under way at once (a wave of netbooted machines).
    pub max_handshakes: usize,
    /// Seconds between passes that repair drift on every online client.
    pub repair_interval: u64,
    /// Announce the server and enroll clients that announce themselves
    /// over mDNS.
    pub mdns: bool,
    /// Network interfaces mDNS runs on; empty: every interface.
    pub mdns_interfaces: Vec<String>,
    /// The instance name the server announces; none: the host name.
    pub mdns_name: Option<String>,
    /// Clients enrolled at once (a wave of netbooted machines).
    pub max_enrollments: usize,
    /// Sync a group's online members as soon as its tree changes.
    pub watch: bool,
    /// Converge packages on a client after a pass that changed its pkgsync
    /// lists (`etc/pkgsync/`).
    pub pkgs_after_sync: bool,
    /// A package run that would remove more packages is refused unless
    /// forced (`cfi pkgs sync --force`).
    pub pkgs_max_removals: usize,
    /// Autoremove nothing: packages in no list stay (pkgsync's -k).
    pub pkgs_keep_unused: bool,
    /// Also upgrade every package on `cfi pkgs sync` (apt-get dist-upgrade).
    pub pkgs_upgrade: bool,
    /// Run apt-get update before sync, install and refresh.
    pub pkgs_update: bool,
    /// Seconds a client waits for another apt or dpkg to let go of the lock.
    pub pkgs_lock_timeout: u64,
    /// Seconds a package run may take on a client.
    pub pkgs_timeout: u64,
}

/// Whether new clients are enrolled without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    /// Enroll at once.
    Auto,
    /// Keep pending until `cfi accept HOST`.
    Manual,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/cfi"),
            state_dir: PathBuf::from("/var/lib/cfi-server"),
            socket: PathBuf::from("/run/cfi/control.sock"),
            clients_file: PathBuf::from("/etc/cfi/clients"),
            read_dsh: false,
            dsh_dir: PathBuf::from("/etc/dsh"),
            accept: Accept::Auto,
            ssh_user: "root".into(),
            connect_timeout: 5,
            command_timeout: 600,
            keepalive: 10,
            max_handshakes: 32,
            repair_interval: 900,
            mdns: true,
            mdns_interfaces: Vec::new(),
            mdns_name: None,
            max_enrollments: 16,
            watch: true,
            pkgs_after_sync: true,
            pkgs_max_removals: 10,
            pkgs_keep_unused: false,
            pkgs_upgrade: false,
            pkgs_update: true,
            pkgs_lock_timeout: 120,
            pkgs_timeout: 1800,
        }
    }
}

pub use cfi_cli::config::ConfigError;

impl ServerConfig {
    /// The packaged path.
    pub const PATH: &'static str = "/etc/cfi/server.toml";

    /// Loads a file; a missing file at the default path means defaults.
    pub fn load(file: &Path, required: bool) -> Result<Self, ConfigError> {
        let config: Self = cfi_cli::config::load(file, required)?;
        config.check(file)?;
        Ok(config)
    }

    /// Parses TOML text read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = cfi_cli::config::parse(file, text)?;
        config.check(file)?;
        Ok(config)
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::invalid(file, message);
        if self.keepalive == 0 || self.connect_timeout == 0 {
            return Err(invalid(
                "keepalive and connect_timeout must be at least 1 second".into(),
            ));
        }
        if self.pkgs_timeout <= self.pkgs_lock_timeout {
            return Err(invalid(format!(
                "pkgs_timeout ({} s) must be longer than pkgs_lock_timeout ({} s)",
                self.pkgs_timeout, self.pkgs_lock_timeout
            )));
        }
        if self.max_handshakes == 0 || self.max_enrollments == 0 {
            return Err(invalid(
                "max_handshakes and max_enrollments must be at least 1".into(),
            ));
        }
        if let Some(n) = self
            .mdns_name
            .as_ref()
            .filter(|n| n.is_empty() || n.len() > 63 || n.contains(char::is_control))
        {
            return Err(invalid(format!(
                "mdns_name {n:?} must be 1 to 63 bytes without control characters"
            )));
        }
        if let Some(i) = self.mdns_interfaces.iter().find(|i| i.is_empty()) {
            return Err(invalid(format!(
                "mdns_interfaces: {i:?} is not an interface name"
            )));
        }
        if self.ssh_user.is_empty() || self.ssh_user.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "ssh_user {:?} is not a user name",
                self.ssh_user
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../server.toml");

    #[test]
    fn the_shipped_example_is_all_defaults() {
        assert_eq!(
            ServerConfig::parse(Path::new("server.toml"), EXAMPLE).unwrap(),
            ServerConfig::default()
        );
        // Uncommented, every key of the example parses to the same defaults:
        // the comments cannot drift from the code.
        let uncommented = cfi_cli::config::uncomment_example(EXAMPLE);
        assert_eq!(
            ServerConfig::parse(Path::new("server.toml"), &uncommented).unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_line() {
        let err = ServerConfig::parse(
            Path::new("/etc/cfi/server.toml"),
            "data_dir = \"/x\"\nreed_dsh = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/cfi/server.toml")
                && err.contains("reed_dsh")
                && err.contains("line 2"),
            "{err}"
        );
        let err = ServerConfig::parse(Path::new("s.toml"), "accept = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
        let err = ServerConfig::parse(Path::new("s.toml"), "keepalive = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keepalive"), "{err}");
    }

    #[test]
    fn a_missing_default_file_means_defaults_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/server.toml");
        assert_eq!(
            ServerConfig::load(missing, false).unwrap(),
            ServerConfig::default()
        );
        assert!(
            ServerConfig::load(missing, true)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/server.toml")
        );
    }
}
