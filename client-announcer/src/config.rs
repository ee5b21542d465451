//! `/etc/cfi/client.toml`: every key optional, with the defaults below.
//! The example shipped in `client-announcer/client.toml` is the same text
//! with every key commented out; a test keeps the two in step.

use std::path::{Path, PathBuf};

use cfi_announce::Trust;
use cfi_groups::GroupName;
use serde::Deserialize;

pub use cfi_cli::config::ConfigError;

/// The announcer's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// The group this machine asks for; none: the server's `unknown`.
    pub group: Option<String>,
    /// Which server keys to install: `first-use`, `pinned` or `any`.
    pub trust: String,
    /// With `trust = "pinned"`: the one server key to accept (`SHA256:…`,
    /// as `cfi-server pubkey --fingerprint` prints it).
    pub server_fingerprint: Option<String>,
    /// The file the server's key line goes into.
    pub authorized_keys: PathBuf,
    /// The port this machine's sshd listens on (announced).
    pub ssh_port: u16,
    /// The pinned server key and the agent's ledger and backups.
    pub state_dir: PathBuf,
    /// The machine's identity, from which the announced id is derived.
    pub machine_id_file: PathBuf,
    /// The forced command of the server's key line.
    pub agent_command: String,
    /// The sshd host key whose fingerprint is announced (the `.pub` file).
    pub host_key: PathBuf,
    /// Network interfaces to announce on and listen on; empty: all.
    pub interfaces: Vec<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            group: None,
            trust: "first-use".into(),
            server_fingerprint: None,
            authorized_keys: PathBuf::from("/root/.ssh/authorized_keys"),
            ssh_port: 22,
            state_dir: PathBuf::from("/var/lib/cfi-client"),
            machine_id_file: PathBuf::from("/etc/machine-id"),
            agent_command: "/usr/lib/cfi/cfi-agent".into(),
            host_key: PathBuf::from("/etc/ssh/ssh_host_ed25519_key.pub"),
            interfaces: Vec::new(),
        }
    }
}

/// A configuration checked and turned into what the announcer works with.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The configuration as read.
    pub config: ClientConfig,
    /// Its group, validated.
    pub group: Option<GroupName>,
    /// Its trust policy.
    pub trust: Trust,
}

impl ClientConfig {
    /// The packaged path.
    pub const PATH: &'static str = "/etc/cfi/client.toml";

    /// Loads a file; a missing file at the default path means defaults.
    pub fn load(file: &Path, required: bool) -> Result<Self, ConfigError> {
        cfi_cli::config::load(file, required)
    }

    /// Parses TOML text read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        cfi_cli::config::parse(file, text)
    }

    /// Checks the values that parse but may not work, naming `file` (where
    /// they came from; flags may have changed them since).
    pub fn check(self, file: &Path) -> Result<Checked, ConfigError> {
        let invalid = |message: String| ConfigError::invalid(file, message);
        let group = self
            .group
            .as_deref()
            .map(|g| GroupName::parse(g).map_err(|e| invalid(format!("group {g:?}: {e}"))))
            .transpose()?;
        let trust = Trust::from_config(&self.trust, self.server_fingerprint.as_deref())
            .map_err(|e| invalid(e.to_string()))?;
        // The line is built now so that a command sshd would misread is an
        // error at start, not at the first server key.
        crate::authorized_keys::cfi_line(
            &self.agent_command,
            "ssh-ed25519",
            PROBE_KEY,
            "cfi-server@check",
        )
        .map_err(|e| invalid(format!("agent_command: {e}")))?;
        if self.ssh_port == 0 {
            return Err(invalid("ssh_port must not be 0".into()));
        }
        if let Some(i) = self.interfaces.iter().find(|i| i.is_empty()) {
            return Err(invalid(format!(
                "interfaces: {i:?} is not an interface name"
            )));
        }
        Ok(Checked {
            config: self,
            group,
            trust,
        })
    }
}

/// A well-formed ed25519 key blob, only to check `agent_command`.
const PROBE_KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn";

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../client.toml");

    fn check(text: &str) -> Result<Checked, ConfigError> {
        let file = Path::new("/etc/cfi/client.toml");
        ClientConfig::parse(file, text)?.check(file)
    }

    #[test]
    fn the_shipped_example_is_all_defaults() {
        let file = Path::new("client.toml");
        assert_eq!(
            ClientConfig::parse(file, EXAMPLE).unwrap(),
            ClientConfig::default()
        );
        let uncommented = cfi_cli::config::uncomment_example(EXAMPLE);
        assert_eq!(
            ClientConfig::parse(file, &uncommented).unwrap(),
            ClientConfig::default()
        );
        let checked = ClientConfig::default().check(file).unwrap();
        assert_eq!(checked.trust, Trust::FirstUse);
        assert_eq!(checked.group, None);
    }

    #[test]
    fn bad_values_name_the_file_and_the_key() {
        for (text, needle) in [
            ("group = \"Lab\"\n", "group"),
            ("group = \"..\"\n", "group"),
            ("trust = \"sometimes\"\n", "sometimes"),
            ("trust = \"pinned\"\n", "server_fingerprint"),
            ("agent_command = \"/bin/sh\"\n", "agent_command"),
            (
                "agent_command = \"/usr/lib/cfi/cfi-agent \\\"x\\\"\"\n",
                "agent_command",
            ),
            ("ssh_port = 0\n", "ssh_port"),
            ("ssh_port = 70000\n", "ssh_port"),
            ("grup = \"lab\"\n", "grup"),
        ] {
            let err = check(text).unwrap_err().to_string();
            assert!(
                err.contains("/etc/cfi/client.toml") && err.contains(needle),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn a_pinned_fingerprint_and_a_group_are_taken() {
        let fp = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
        let c = check(&format!(
            "group = \"lab\"\ntrust = \"pinned\"\nserver_fingerprint = \"{fp}\"\n"
        ))
        .unwrap();
        assert_eq!(c.group.unwrap().as_str(), "lab");
        assert_eq!(c.trust, Trust::Pinned(fp.into()));
    }
}
