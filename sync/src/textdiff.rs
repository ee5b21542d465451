//! Unified diffs for the dry run, for files that look like text.

use similar::TextDiff;

/// Largest file a dry run shows a diff for.
pub const DIFF_MAX: u64 = 256 << 10;

/// Text means valid UTF-8 without NUL bytes, as `diff` guesses.
pub fn is_text(bytes: &[u8]) -> bool {
    !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}

/// A unified diff of `old` → `new` labelled with `path`, or `None` when
/// either side is not text.
pub fn unified(path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    if !is_text(old) || !is_text(new) {
        return None;
    }
    let (old, new) = (
        std::str::from_utf8(old).ok()?,
        std::str::from_utf8(new).ok()?,
    );
    let diff = TextDiff::from_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_text_and_skips_binary() {
        let d = unified("etc/motd", b"hello\nworld\n", b"hello\nthere\n").unwrap();
        assert!(d.contains("--- a/etc/motd"));
        assert!(d.contains("-world\n") && d.contains("+there\n"), "{d}");
        assert!(unified("bin", b"\0\x01", b"x").is_none());
    }
}
