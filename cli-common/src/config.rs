//! Loading a daemon's TOML configuration file: one serde struct per file
//! (`deny_unknown_fields`, a default per field), errors that name the file,
//! and the line and key where toml says so.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file that does not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {file}: {cause}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Not valid TOML, an unknown key, a value of the wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// toml's message, which names the line and the key.
        message: String,
    },
    /// Values that parse but cannot work together.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `file`.
    pub fn invalid(file: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads `file`. A missing file means the defaults unless `required` (the
/// packaged path is optional, a path the admin named is not).
pub fn load<T: DeserializeOwned + Default>(file: &Path, required: bool) -> Result<T, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(file, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(T::default()),
        Err(cause) => Err(ConfigError::Read {
            file: file.to_path_buf(),
            cause,
        }),
    }
}

/// Parses TOML `text` read from `file`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// The shipped example `text` with every commented-out `# key = value`
/// line uncommented: tests parse both to check that the example's comments
/// show the real defaults.
pub fn uncomment_example(text: &str) -> String {
    text.lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|k| k.contains(" = "))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}
