//! Shell globs over package and architecture names: `*`, `?` and `[...]`.
//!
//! The semantics are dpkg-query's (`fnmatch(3)` without flags), which is
//! what pkgsync's README promises for its lists: anchored on the whole name,
//! `*` any run of characters, `?` one character, `[a-z]` a set with ranges,
//! `[!x]` (or `[^x]`) its complement. Names are ASCII, so the matcher works
//! on bytes. Compiling also validates: every character must be one a name
//! may hold, so a glob that can never match a real package is an error
//! instead of a silent no-op.

/// One step of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This exact byte.
    Byte(u8),
    /// `?`: any one byte.
    One,
    /// `*`: any run of bytes, empty included.
    Star,
    /// `[...]`: one byte in (or, negated, not in) the inclusive ranges.
    Set {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Self::Byte(want) => *want == b,
            Self::One => true,
            Self::Star => false,
            Self::Set { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&b)) != *negated
            }
        }
    }
}

/// A compiled, validated glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

/// Whether `text` holds a glob character, i.e. must be compiled as a glob.
pub(crate) fn is_glob(text: &str) -> bool {
    text.bytes().any(|b| matches!(b, b'*' | b'?' | b'['))
}

impl Glob {
    /// Compiles `source`, allowing `allowed` bytes as literal characters
    /// (inside sets too) besides the glob syntax. The error is the reason
    /// for the admin.
    pub(crate) fn compile(source: &str, allowed: fn(u8) -> bool) -> Result<Self, String> {
        let bytes = source.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i += 1;
            match b {
                // `**` means the same as `*`; one star keeps matching linear.
                b'*' if tokens.last() == Some(&Token::Star) => {}
                b'*' => tokens.push(Token::Star),
                b'?' => tokens.push(Token::One),
                b'[' => {
                    let (set, next) = compile_set(bytes, i, allowed)?;
                    tokens.push(set);
                    i = next;
                }
                b if allowed(b) => tokens.push(Token::Byte(b)),
                b => return Err(bad_char(b)),
            }
        }
        Ok(Self {
            source: source.to_owned(),
            tokens,
        })
    }

    /// Whether the glob matches all of `text`.
    pub fn matches(&self, text: &str) -> bool {
        let text = text.as_bytes();
        let tokens = &self.tokens[..];
        let (mut t, mut s) = (0, 0);
        // Where to resume after the last star: its next token and the text
        // position it has swallowed up to. Only the last star ever needs
        // to backtrack, so this is O(pattern × text) at worst.
        let mut resume: Option<(usize, usize)> = None;
        while let Some(&b) = text.get(s) {
            match tokens.get(t) {
                Some(Token::Star) => {
                    t += 1;
                    resume = Some((t, s));
                    continue;
                }
                Some(token) if token.matches(b) => {
                    t += 1;
                    s += 1;
                    continue;
                }
                _ => {}
            }
            let Some((rt, rs)) = resume else {
                return false;
            };
            t = rt;
            s = rs + 1;
            resume = Some((rt, s));
        }
        tokens
            .get(t..)
            .unwrap_or_default()
            .iter()
            .all(|token| *token == Token::Star)
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the first character is a literal byte that fails `ok`: a
    /// name glob starting with `-` can never match a package.
    pub(crate) fn starts_with_literal(&self, ok: fn(u8) -> bool) -> bool {
        matches!(self.tokens.first(), Some(Token::Byte(b)) if !ok(*b))
    }
}

/// Compiles the set whose body starts at `bytes[i]` (just after `[`).
/// Returns the token and the index just after the closing `]`.
fn compile_set(
    bytes: &[u8],
    mut i: usize,
    allowed: fn(u8) -> bool,
) -> Result<(Token, usize), String> {
    let negated = matches!(bytes.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let Some(&lo) = bytes.get(i) else {
            return Err("'[' without ']' in a glob".to_owned());
        };
        i += 1;
        if lo == b']' {
            if ranges.is_empty() {
                return Err("empty '[]' in a glob".to_owned());
            }
            return Ok((Token::Set { negated, ranges }, i));
        }
        if !allowed(lo) {
            return Err(bad_char(lo));
        }
        // `-` between two characters is a range; first or last it is
        // itself, as in fnmatch.
        match (bytes.get(i), bytes.get(i + 1)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                if !allowed(hi) {
                    return Err(bad_char(hi));
                }
                if hi < lo {
                    return Err(format!(
                        "range '{}-{}' in a glob is reversed",
                        char::from(lo),
                        char::from(hi)
                    ));
                }
                ranges.push((lo, hi));
                i += 2;
            }
            _ => ranges.push((lo, lo)),
        }
    }
}

/// Why byte `b` is refused, naming the likely mistake.
pub(crate) fn bad_char(b: u8) -> String {
    match b {
        b'A'..=b'Z' => "Debian names are lower case".to_owned(),
        b'{' | b'}' => "'{...}' is not a glob here (only * ? [...], as dpkg-query)".to_owned(),
        b'(' | b')' | b'|' | b'~' => {
            "aptitude search patterns are not supported (only the globs * ? [...])".to_owned()
        }
        b'\\' => "backslash escapes are not supported (no package name needs one)".to_owned(),
        b'[' => "'[' inside '[...]' in a glob".to_owned(),
        b']' => "']' without '[' in a glob".to_owned(),
        b if b.is_ascii_graphic() => format!("'{}' is not allowed here", char::from(b)),
        _ => "a control character inside".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_char(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b)
    }

    fn glob(s: &str) -> Glob {
        Glob::compile(s, name_char).unwrap()
    }

    #[test]
    fn star_question_and_sets() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("*", &["a", "libc6", ""], &[]),
            ("lib*", &["lib", "libc6", "libfoo-dev"], &["xlib", "li"]),
            ("*-dev", &["libc6-dev", "-dev"], &["libc6-dev1", "dev"]),
            ("lib*-dev", &["libc-dev", "lib-dev"], &["libc-dbg"]),
            ("a*b*c", &["abc", "aXbYc", "abbbc", "acbc"], &["ab", "acb"]),
            ("vim-???", &["vim-gtk", "vim-nox"], &["vim-gtk3", "vim-x"]),
            (
                "linux-image-[0-9]*",
                &["linux-image-6.1"],
                &["linux-image-amd64"],
            ),
            ("[!l]*", &["vim", "zsh"], &["less", ""]),
            ("[^l]*", &["vim"], &["less"]),
            ("x[-+]y", &["x-y", "x+y"], &["x.y"]),
            ("x[a-c.]", &["xa", "xb", "x."], &["xd", "x"]),
            ("**", &["anything"], &[]),
        ];
        for (pattern, yes, no) in cases {
            let g = glob(pattern);
            for y in *yes {
                assert!(g.matches(y), "{pattern} should match {y}");
            }
            for n in *no {
                assert!(!g.matches(n), "{pattern} should not match {n}");
            }
        }
    }

    #[test]
    fn refuses_broken_globs_with_a_reason() {
        for (bad, why) in [
            ("lib[", "without ']'"),
            ("lib[a-", "without ']'"),
            ("lib[]", "empty"),
            ("lib[!]", "empty"),
            ("lib]", "without '['"),
            ("x[z-a]", "reversed"),
            ("Lib*", "lower case"),
            ("lib{a,b}", "not a glob here"),
            ("~nvim", "aptitude"),
            ("a\\*", "backslash"),
            ("a[[]", "inside"),
            ("a_b*", "'_'"),
        ] {
            let err = Glob::compile(bad, name_char).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn pathological_stars_stay_fast() {
        // Exponential for a naive recursive matcher.
        let g = glob(&format!("{}c", "a*".repeat(50)));
        assert!(!g.matches(&format!("{}b", "a".repeat(5000))));
        assert!(g.matches(&format!("{}c", "a".repeat(5000))));
    }
}
