//! The authorized_keys editor: [`edit`] (and [`cfi_line`], which builds the
//! only lines `edit` is given).
//!
//! Input: `agent command NUL comment NUL file`; a missing part takes the
//! packaged value (`/usr/lib/cfi/cfi-agent`, `cfi-server@lab`, empty file).
//!
//! Asserts:
//! - neither function panics;
//! - a line `cfi_line` builds is a cfi line: `edit` finds it again, so
//!   install is idempotent and `forget` removes it;
//! - removing (`edit(text, None)`) keeps every other line byte for byte, in
//!   order, and leaves no cfi line;
//! - installing leaves exactly one cfi line, the given one; installing again
//!   changes nothing; removing after installing gives what removing alone
//!   gives, and for a file without a cfi line, the original bytes (plus the
//!   `\n` added before an appended line when the file did not end in one).

#![no_main]

use cfi_client::authorized_keys::{cfi_line, edit};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn";

/// Whether one line (with its ending) is cfi's: `edit` drops exactly those.
fn is_cfi(segment: &[u8]) -> bool {
    !segment.is_empty() && edit(segment, None).is_empty()
}

fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split_inclusive(|&b| b == b'\n')
}

fn cfi_lines(text: &[u8]) -> Vec<&[u8]> {
    lines(text).filter(|l| is_cfi(l)).collect()
}

fn trim_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(3, |&b| b == 0);
    let command = parts.next().map(String::from_utf8_lossy);
    let comment = parts.next().map(String::from_utf8_lossy);
    let text = parts.next().unwrap_or_default();
    let command = command.as_deref().unwrap_or("/usr/lib/cfi/cfi-agent");
    let comment = comment.as_deref().unwrap_or("cfi-server@lab");

    let removed = edit(text, None);
    let kept: Vec<u8> = lines(text)
        .filter(|l| !is_cfi(l))
        .flatten()
        .copied()
        .collect();
    assert_eq!(removed, kept, "removing changed another line");
    assert!(cfi_lines(&removed).is_empty());

    let Ok(line) = cfi_line(command, "ssh-ed25519", KEY, comment) else {
        return;
    };
    assert!(!line.contains(['\n', '\r']), "{line:?}");
    assert!(
        is_cfi(line.as_bytes()),
        "cfi_line built {line:?}, which is not found as a cfi line"
    );

    let installed = edit(text, Some(&line));
    let found = cfi_lines(&installed);
    assert_eq!(found.len(), 1, "{} cfi lines after install", found.len());
    assert_eq!(trim_end(found[0]), line.as_bytes());
    assert_eq!(
        edit(&installed, Some(&line)),
        installed,
        "install is not idempotent"
    );
    let mut expected = removed;
    if cfi_lines(text).is_empty() && !expected.is_empty() && !expected.ends_with(b"\n") {
        // The line was appended after a `\n` the file lacked.
        expected.push(b'\n');
    }
    assert_eq!(
        edit(&installed, None),
        expected,
        "remove after install differs"
    );
});
