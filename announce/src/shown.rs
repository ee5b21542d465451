//! How values read from the network appear in error messages.
//!
//! TXT values come from any machine on the LAN, so a message never shows one
//! as it is: it is quoted and escaped (no control bytes reach a terminal or a
//! log line) and cut short (a record may carry 255-byte values).

/// How many characters of a value a message shows.
const SHOWN_CHARS: usize = 64;

/// `raw`, quoted, escaped and cut to [`SHOWN_CHARS`] characters.
pub(crate) fn shown(raw: &str) -> String {
    let cut = truncated(raw);
    let ellipsis = if cut.len() < raw.len() { "…" } else { "" };
    format!("{cut:?}{ellipsis}")
}

/// Like [`shown`], for bytes that may not be UTF-8.
pub(crate) fn shown_bytes(raw: &[u8]) -> String {
    shown(&String::from_utf8_lossy(raw))
}

/// The first [`SHOWN_CHARS`] characters of `raw`, as they are.
pub(crate) fn truncated(raw: &str) -> &str {
    raw.char_indices()
        .nth(SHOWN_CHARS)
        .map_or(raw, |(end, _)| &raw[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(shown("a\x1b[31m"), r#""a\u{1b}[31m""#);
        let long = "é".repeat(100);
        assert_eq!(shown(&long), format!("{:?}…", "é".repeat(64)));
        assert_eq!(truncated(&long), "é".repeat(64));
        assert_eq!(shown_bytes(b"\xffx"), "\"\u{fffd}x\"");
    }
}
