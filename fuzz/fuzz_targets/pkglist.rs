//! The pkgsync list parser: [`PkgList::parse`], and [`PkgLists`] over three
//! parsed lists.
//!
//! Input: the bytes of up to three list files (musthave, mayhave,
//! maynothave), separated by NUL bytes (a NUL is never valid in a list).
//!
//! Asserts:
//! - parsing never panics;
//! - an error lists every bad line once, in file order, each with a line
//!   number that exists in the file, and its message starts
//!   `<file>:<line>: `;
//! - a parsed list has each entry once, at lines in increasing order, and
//!   written back one entry a line it parses to the same patterns;
//! - a literal entry covers its own name (on its own architecture, if it
//!   names one rather than a glob);
//! - precedence and conflict checks over the three lists never panic, and a
//!   conflict's lines are lines of its lists.

#![no_main]

use std::collections::HashSet;
use std::path::Path;

use cfi_groups::pkglist::{ArchPattern, Entry, LineError};
use cfi_groups::{ListKind, PkgList, PkgListError, PkgLists};
use libfuzzer_sys::fuzz_target;

fn shape(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(ToString::to_string).collect()
}

fn parse(kind: ListKind, text: &[u8]) -> Option<PkgList> {
    let file = Path::new("/etc/pkgsync").join(kind.file_name());
    let lines_in_file = text.split(|&b| b == b'\n').count();
    match PkgList::parse(kind, &file, text) {
        Ok(list) => {
            let mut seen = HashSet::new();
            let mut last = 0;
            for e in &list.entries {
                assert!(seen.insert(e.to_string()), "{e} twice");
                assert!(e.line > last && e.line <= lines_in_file, "line {}", e.line);
                last = e.line;
                let arch = match &e.arch {
                    Some(ArchPattern::Name(a)) => Some(a.as_str()),
                    None | Some(ArchPattern::Any) => Some("amd64"),
                    Some(ArchPattern::Glob(_)) => None,
                };
                if let (Some(name), Some(arch)) = (e.pattern.literal(), arch) {
                    assert!(e.matches(name, arch), "{e} does not cover {name}:{arch}");
                }
            }
            let written: String = list.entries.iter().map(|e| format!("{e}\n")).collect();
            let again = PkgList::parse(kind, &file, written.as_bytes())
                .unwrap_or_else(|e| panic!("{written:?} written back does not parse: {e}"));
            assert_eq!(shape(&again.entries), shape(&list.entries));
            assert_eq!(
                again.entries.iter().map(|e| &e.pattern).collect::<Vec<_>>(),
                list.entries.iter().map(|e| &e.pattern).collect::<Vec<_>>()
            );
            Some(list)
        }
        Err(PkgListError::Invalid { lines }) => {
            assert!(!lines.is_empty());
            let mut last = 0;
            for LineError { file: f, line, .. } in &lines {
                assert_eq!(f, &file);
                assert!(*line > last && *line <= lines_in_file, "line {line}");
                last = *line;
            }
            let err = PkgListError::Invalid {
                lines: lines.clone(),
            };
            let message = err.to_string();
            let first = format!("{}:{}: ", file.display(), lines[0].line);
            assert!(message.starts_with(&first), "{message}");
            None
        }
        Err(e) => panic!("parse gave a non-line error: {e}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let mut texts = input.splitn(3, |&b| b == 0);
    let mut next = |kind| parse(kind, texts.next().unwrap_or_default());
    let (must, may, maynot) = (
        next(ListKind::MustHave),
        next(ListKind::MayHave),
        next(ListKind::MayNotHave),
    );
    let (Some(must), Some(may), Some(maynot)) = (must, may, maynot) else {
        return;
    };
    let mut lists = PkgLists { must, may, maynot };
    for c in lists.conflicts() {
        assert!(lists.maynot.entries.iter().any(|e| e.line == c.maynot_line));
        let _ = c.to_string();
    }
    let names: Vec<String> = [&lists.must, &lists.may, &lists.maynot]
        .iter()
        .flat_map(|l| l.entries.iter().filter_map(|e| e.pattern.literal()))
        .map(str::to_owned)
        .collect();
    for name in &names {
        for arch in ["amd64", "i386", "all"] {
            let _ = lists.classify(name, arch);
        }
    }
    lists.resolve_kernel("6.1.0-18-amd64");
    let _ = lists.classify("linux-image-6.1.0-18-amd64", "amd64");
});
