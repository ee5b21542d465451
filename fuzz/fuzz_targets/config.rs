//! The config parsers: `server.toml` ([`ServerConfig::parse`]),
//! `client.toml` ([`ClientConfig::parse`] and its `check`), the static client
//! list ([`clients::parse`], `host[:port] [group]`), a dsh list
//! ([`clients::parse_dsh_list`]) and [`uncomment_example`].
//!
//! Input: one selector byte (modulo 5 picks the parser), then the file's
//! text (lossily UTF-8, as the files are read as text).
//!
//! Asserts:
//! - parsing never panics;
//! - every error names the file first (`<file>: ` or `<file>:<line>: `);
//!   a TOML syntax or type error names a line; a client list error names
//!   a line of the file;
//! - a config that parses satisfies its checks (server) or checks without
//!   panicking (client);
//! - a parsed client list written back (`address() [group]` per line)
//!   parses to the same hosts, ports and groups; a dsh list's hosts are
//!   each valid in cfi's own list;
//! - `uncomment_example` keeps the number of lines and only drops `# `.

#![no_main]

use std::path::Path;

use cfi_cli::config::{ConfigError, uncomment_example};
use cfi_client::config::ClientConfig;
use cfi_server::clients::{self, ClientsError, StaticClient};
use cfi_server::config::ServerConfig;
use libfuzzer_sys::fuzz_target;

fn check_config_error(file: &Path, err: &ConfigError) {
    let message = err.to_string();
    let prefix = format!("{}: ", file.display());
    assert!(message.starts_with(&prefix), "{message}");
    if let ConfigError::Parse { message, .. } = err {
        assert!(message.contains("line "), "no line in {message:?}");
    }
}

fn check_list_error(file: &Path, text: &str, err: &ClientsError) {
    let ClientsError::Line { origin, .. } = err else {
        panic!("a parse gave a non-line error: {err}");
    };
    assert_eq!(origin.file, file);
    assert!(
        origin.line >= 1 && origin.line <= text.lines().count(),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.starts_with(&format!("{}:{}: ", file.display(), origin.line)));
}

fn key(c: &StaticClient) -> (String, u16, Option<String>) {
    (
        c.host.clone(),
        c.port,
        c.group.as_ref().map(ToString::to_string),
    )
}

fn written_back(list: &[StaticClient], with_group: bool) -> String {
    list.iter()
        .map(|c| match (&c.group, with_group) {
            (Some(g), true) => format!("{} {g}\n", c.address()),
            _ => format!("{}\n", c.address()),
        })
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, text)) = input.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    match selector % 5 {
        0 => {
            let file = Path::new("/etc/cfi/server.toml");
            match ServerConfig::parse(file, &text) {
                Ok(c) => {
                    assert!(c.keepalive > 0 && c.connect_timeout > 0);
                    assert!(c.pkgs_timeout > c.pkgs_lock_timeout);
                    assert!(c.max_handshakes > 0 && c.max_enrollments > 0);
                    assert!(!c.ssh_user.is_empty());
                }
                Err(e) => check_config_error(file, &e),
            }
        }
        1 => {
            let file = Path::new("/etc/cfi/client.toml");
            match ClientConfig::parse(file, &text) {
                Ok(c) => match c.check(file) {
                    Ok(checked) => assert!(checked.config.ssh_port != 0),
                    Err(e) => check_config_error(file, &e),
                },
                Err(e) => check_config_error(file, &e),
            }
        }
        2 => {
            let file = Path::new("/etc/cfi/clients");
            match clients::parse(file, &text) {
                Ok(list) => {
                    let back = written_back(&list, true);
                    let again = clients::parse(file, &back)
                        .unwrap_or_else(|e| panic!("{back:?} written back: {e}"));
                    let (a, b): (Vec<_>, Vec<_>) = (
                        list.iter().map(key).collect(),
                        again.iter().map(key).collect(),
                    );
                    assert_eq!(a, b);
                    for c in &list {
                        let _ = c.name();
                    }
                }
                Err(e) => check_list_error(file, &text, &e),
            }
        }
        3 => {
            let file = Path::new("/etc/dsh/machines.list");
            match clients::parse_dsh_list(file, &text, None) {
                Ok(list) => {
                    let own = clients::parse_dsh_list(file, &written_back(&list, false), None)
                        .expect("dsh hosts written back");
                    let (a, b): (Vec<_>, Vec<_>) = (
                        list.iter().map(key).collect(),
                        own.iter().map(key).collect(),
                    );
                    assert_eq!(a, b);
                    // Each host also stands alone in cfi's own list.
                    for c in &list {
                        clients::parse(file, &c.address())
                            .unwrap_or_else(|e| panic!("{c:?} not valid in cfi's list: {e}"));
                    }
                }
                Err(e) => check_list_error(file, &text, &e),
            }
        }
        _ => {
            let out = uncomment_example(&text);
            // Each line comes out with a `\n` of its own.
            let out: Vec<&str> = out.split_terminator('\n').collect();
            assert_eq!(out.len(), text.lines().count());
            for (a, b) in text.lines().zip(out) {
                assert!(a == b || a.strip_prefix("# ") == Some(b), "{a:?} -> {b:?}");
            }
        }
    }
});
