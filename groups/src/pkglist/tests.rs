use std::fs;

use proptest::prelude::*;

use super::*;

const FILE: &str = "/var/lib/cfi/lab/etc/pkgsync/musthave";

fn parse(text: &str) -> Result<PkgList, PkgListError> {
    PkgList::parse(ListKind::MustHave, Path::new(FILE), text.as_bytes())
}

fn names(list: &PkgList) -> Vec<String> {
    list.entries.iter().map(ToString::to_string).collect()
}

fn lines(err: PkgListError) -> Vec<LineError> {
    match err {
        PkgListError::Invalid { lines } => lines,
        other => panic!("not a line error: {other}"),
    }
}

fn lists(must: &str, may: &str, maynot: &str) -> PkgLists {
    let one = |kind, text: &str| PkgList::parse(kind, Path::new(""), text.as_bytes()).unwrap();
    PkgLists {
        must: one(ListKind::MustHave, must),
        may: one(ListKind::MayHave, may),
        maynot: one(ListKind::MayNotHave, maynot),
    }
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let text =
        "# editors\n\nvim # the editor\n  zsh  \n\temacs\t# tab\n   # indented\nless#tight\n";
    let list = parse(text).unwrap();
    assert_eq!(names(&list), ["vim", "zsh", "emacs", "less"]);
    assert_eq!(
        list.entries.iter().map(|e| e.line).collect::<Vec<_>>(),
        [3, 4, 5, 7]
    );
}

#[test]
fn crlf_bom_and_no_final_newline() {
    let list = parse("\u{feff}vim\r\nzsh # shell\r\n\r\nless").unwrap();
    assert_eq!(names(&list), ["vim", "zsh", "less"]);
    assert_eq!(list.entries[2].line, 4);
}

#[test]
fn empty_and_comment_only_files_are_empty_lists() {
    assert!(parse("").unwrap().entries.is_empty());
    assert!(parse("# nothing\n\n   \n").unwrap().entries.is_empty());
}

#[test]
fn duplicates_keep_the_first_line() {
    let list = parse("vim\nzsh\nvim\n  vim # again\n").unwrap();
    assert_eq!(names(&list), ["vim", "zsh"]);
    assert_eq!(list.entries[0].line, 1);
}

#[test]
fn globs_and_literals() {
    let list = parse("linux-image-*\nvim-???\nlib[a-c]*\n[!l]ess\nfoo.bar+1\n").unwrap();
    let kinds: Vec<bool> = list
        .entries
        .iter()
        .map(|e| e.pattern.literal().is_some())
        .collect();
    assert_eq!(kinds, [false, false, false, false, true]);
    let covered = |name| list.find(name, "amd64").map(|e| e.line);
    assert_eq!(covered("linux-image-6.1.0-18-amd64"), Some(1));
    assert_eq!(covered("vim-nox"), Some(2));
    assert_eq!(covered("vim-gtk3"), None);
    assert_eq!(covered("libc6"), Some(3));
    assert_eq!(covered("libd"), None);
    assert_eq!(covered("mess"), Some(4));
    assert_eq!(covered("less"), None);
    assert_eq!(covered("foo.bar+1"), Some(5));
    assert_eq!(covered("foo.bar"), None);
}

#[test]
fn arch_qualifiers() {
    let list = parse("libc6:i386\nvim\nfoo:any\n*:armhf\nbar:arm*\nbaz:all\n").unwrap();
    let e = |i: usize| &list.entries[i];
    assert!(e(0).matches("libc6", "i386"));
    assert!(!e(0).matches("libc6", "amd64"));
    // No qualifier and `:any` cover every architecture, `all` included.
    for arch in ["amd64", "i386", "all"] {
        assert!(e(1).matches("vim", arch));
        assert!(e(2).matches("foo", arch));
    }
    assert_eq!(e(2).arch, Some(ArchPattern::Any));
    assert!(e(3).matches("anything", "armhf"));
    assert!(!e(3).matches("anything", "arm64"));
    assert!(e(4).matches("bar", "arm64") && e(4).matches("bar", "armel"));
    assert!(!e(4).matches("bar", "amd64"));
    assert!(e(5).matches("baz", "all") && !e(5).matches("baz", "amd64"));
    assert_eq!(names(&list)[0], "libc6:i386");
}

#[test]
fn current_kernel_is_its_own_pattern_until_resolved() {
    let list = parse("meta:current-kernel\n").unwrap();
    assert_eq!(list.entries[0].pattern, Pattern::CurrentKernel);
    assert_eq!(names(&list), ["meta:current-kernel"]);
    assert!(list.find("linux-image-6.1.0-18-amd64", "amd64").is_none());

    assert_eq!(
        resolve_current_kernel("6.1.0-18-amd64\n"),
        "linux-image-6.1.0-18-amd64"
    );
    let mut all = lists("", "meta:current-kernel\n", "linux-image-*\n");
    assert_eq!(
        all.classify("linux-image-6.1.0-18-amd64", "amd64"),
        Class::MayNot
    );
    all.resolve_kernel("6.1.0-18-amd64");
    assert_eq!(
        all.classify("linux-image-6.1.0-18-amd64", "amd64"),
        Class::May
    );
    assert_eq!(
        all.classify("linux-image-6.1.0-17-amd64", "amd64"),
        Class::MayNot
    );
}

#[test]
fn the_example_message() {
    let text = "aa\nb1\nc1\nd1\ne1\nf1\nvim editor # two words\n";
    assert_eq!(
        parse(text).unwrap_err().to_string(),
        "/var/lib/cfi/lab/etc/pkgsync/musthave:7: \"vim editor\": \
         not a package name (a space inside; one package a line)"
    );
}

#[test]
fn every_error_names_file_line_text_and_reason() {
    let cases = [
        ("vim editor", "a space inside"),
        ("vim\teditor", "a space inside"),
        ("Vim", "lower case"),
        ("foo_bar", "'_' is not allowed"),
        ("x", "at least two characters"),
        ("-foo", "must start with a-z or 0-9"),
        ("+foo*", "must start with a-z or 0-9"),
        ("café", "non-ASCII"),
        ("a\u{7}b", "control character"),
        ("lib[", "'[' without ']'"),
        ("lib[]", "empty '[]'"),
        ("lib]", "']' without '['"),
        ("x[z-a]", "reversed"),
        ("lib{a,b}", "not a glob here"),
        ("~nvim", "aptitude search patterns"),
        ("?name(vim)", "aptitude search patterns"),
        ("a\\b", "backslash"),
        ("foo:", "no architecture after ':'"),
        (":i386", "no package name before ':'"),
        ("foo:i386:amd64", "more than one ':'"),
        (
            "foo:I386",
            "not an architecture name (Debian names are lower case)",
        ),
        ("foo:x_86", "not an architecture name"),
        ("foo:arm[", "not an architecture name ('[' without ']'"),
        ("foo:native", "':native' is not supported"),
        ("meta:current-kernel:amd64", "takes no architecture"),
        ("meta:kernel", "unknown meta pattern"),
        (
            "debtags:role::program",
            "debtags patterns are not supported",
        ),
    ];
    for (bad, why) in cases {
        let text = format!("vim\n\n{bad} # comment\nzsh\n");
        let errs = lines(parse(&text).unwrap_err());
        assert_eq!(errs.len(), 1, "{bad}");
        let e = &errs[0];
        assert_eq!((e.file.as_path(), e.line), (Path::new(FILE), 3), "{bad}");
        assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("{FILE}:3: \"")), "{shown}");
        assert!(!shown.contains('\u{7}'), "{shown}");
    }
}

#[test]
fn entry_parse_alone_refuses_what_a_file_never_passes_it() {
    for (text, why) in [("", "empty entry"), ("a#b", "'#'"), ("a\nb", "control")] {
        let err = Entry::parse(text, 1).unwrap_err();
        assert!(err.reason.contains(why), "{text:?}: {err}");
    }
    assert_eq!(
        Entry::parse("vim:amd64", 4).unwrap().to_string(),
        "vim:amd64"
    );
}

#[test]
fn all_errors_are_collected_in_order() {
    let err = parse("vim\nBad\nzsh\nx y\nok-pkg\nfoo:\n").unwrap_err();
    let errs = lines(err);
    assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4, 6]);
    let text = PkgListError::Invalid { lines: errs }.to_string();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with(FILE)), "{text}");
}

#[test]
fn a_flood_of_errors_is_capped_in_display() {
    let text = "BAD\n".repeat(200);
    let err = parse(&text).unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), MAX_SHOWN_ERRORS + 1);
    assert!(shown.ends_with("… and 150 more bad lines"), "{shown}");
    assert_eq!(lines(err).len(), 200);
}

#[test]
fn non_utf8_entry_is_an_error_but_a_latin1_comment_is_not() {
    let errs =
        lines(PkgList::parse(ListKind::MayHave, Path::new("f"), b"vim\ncaf\xe9\n").unwrap_err());
    assert_eq!((errs[0].line, errs[0].reason.as_str()), (2, "not UTF-8"));
    assert_eq!(errs[0].shown, "\"caf\\xe9\"");
    let list = PkgList::parse(ListKind::MayHave, Path::new("f"), b"vim # \xe9diteur\n").unwrap();
    assert_eq!(names(&list), ["vim"]);
}

#[test]
fn shown_text_is_escaped_and_truncated() {
    let long = format!("{} x", "a".repeat(200));
    let e = &lines(parse(&long).unwrap_err())[0];
    assert!(
        e.shown.chars().count() < 70 && e.shown.ends_with('…'),
        "{}",
        e.shown
    );
    let e = &lines(parse("a\"b c").unwrap_err())[0];
    assert_eq!(e.shown, "\"a\\\"b c\"");
}

#[test]
fn precedence_literal_beats_glob() {
    let l = lists(
        "vim\ntexlive-*\nlibc6:amd64\n",
        "*\ngdb-dbg\n",
        "vim*\ntexlive-lang-*\ntexlive-base\n*-dbg\ntelnet\n",
    );
    // A literal musthave beats a maynothave glob.
    assert_eq!(l.classify("vim", "amd64"), Class::Must);
    assert_eq!(l.classify("vim-gtk3", "amd64"), Class::MayNot);
    // A literal maynothave beats a musthave glob.
    assert_eq!(l.classify("texlive-base", "all"), Class::MayNot);
    // Among globs, maynothave beats musthave and mayhave.
    assert_eq!(l.classify("texlive-lang-french", "all"), Class::MayNot);
    assert_eq!(l.classify("texlive-latex-base", "all"), Class::Must);
    assert_eq!(l.classify("foo-dbg", "amd64"), Class::MayNot);
    // A literal mayhave beats a maynothave glob: the admin's exception.
    assert_eq!(l.classify("gdb-dbg", "amd64"), Class::May);
    // `*` in mayhave keeps everything else, as pkgsync's --keep-unused.
    assert_eq!(l.classify("htop", "amd64"), Class::May);
    assert_eq!(l.classify("telnet", "amd64"), Class::MayNot);
    // An arch qualifier that does not match falls through.
    assert_eq!(l.classify("libc6", "amd64"), Class::Must);
    assert_eq!(l.classify("libc6", "i386"), Class::May);
    let (kind, entry) = l.decide("texlive-base", "all").unwrap();
    assert_eq!((kind, entry.line), (ListKind::MayNotHave, 3));
}

#[test]
fn unlisted_when_no_list_covers_it() {
    let l = lists("vim\n", "zsh\n", "telnet\n");
    assert_eq!(l.classify("htop", "amd64"), Class::Unlisted);
    assert_eq!(l.decide("htop", "amd64"), None);
    assert_eq!(l.classify("zsh", "amd64"), Class::May);
}

#[test]
fn conflicts_are_literal_names_in_two_lists() {
    let l = lists(
        "vim\nfoo:i386\nbar:amd64\ntexlive-*\n",
        "telnet\n",
        "# x\nvim\nfoo\nbar:i386\ntexlive-base\ntelnet:arm*\n",
    );
    let c = l.conflicts();
    let short: Vec<_> = c
        .iter()
        .map(|c| (c.name.as_str(), c.keep, c.maynot_line))
        .collect();
    assert_eq!(
        short,
        [
            ("vim", (ListKind::MustHave, 1), 2),
            ("foo", (ListKind::MustHave, 2), 3),
            ("telnet", (ListKind::MayHave, 1), 6),
        ]
    );
    assert_eq!(
        c[0].to_string(),
        "vim is in musthave (line 1) and in maynothave (line 2); musthave wins"
    );
    assert!(c[2].to_string().ends_with("maynothave wins"));
    assert_eq!(l.classify("vim", "amd64"), Class::Must);
    assert_eq!(l.classify("telnet", "armhf"), Class::MayNot);
}

#[test]
fn load_one_list_missing_is_empty() {
    let d = tempfile::tempdir().unwrap();
    let list = PkgList::load(ListKind::MayHave, &d.path().join("mayhave")).unwrap();
    assert!(list.entries.is_empty());
    assert_eq!(list.kind, ListKind::MayHave);
}

#[test]
fn load_three_lists() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join(PkgLists::DIR);
    assert!(PkgLists::load(&dir).unwrap().is_none(), "no dir: unmanaged");
    fs::create_dir_all(&dir).unwrap();
    assert!(
        PkgLists::load(&dir).unwrap().is_none(),
        "no lists: unmanaged"
    );

    fs::write(dir.join("maynothave"), "telnet\n").unwrap();
    let err = PkgLists::load(&dir).unwrap_err();
    assert!(
        matches!(&err, PkgListError::Incomplete { missing, .. }
            if missing == &[ListKind::MustHave, ListKind::MayHave]),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("lack musthave and mayhave") && msg.contains(&dir.display().to_string()));

    fs::write(dir.join("musthave"), "vim\n").unwrap();
    fs::write(dir.join("mayhave"), "").unwrap();
    let l = PkgLists::load(&dir).unwrap().unwrap();
    assert_eq!(l.must.file, dir.join("musthave"));
    assert_eq!(l.maynot.kind, ListKind::MayNotHave);
    assert_eq!(l.classify("telnet", "amd64"), Class::MayNot);
    assert_eq!(l.classify("vim", "amd64"), Class::Must);
}

#[test]
fn load_collects_bad_lines_of_all_three_files() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("musthave"), "vim\nBad\n").unwrap();
    fs::write(d.path().join("mayhave"), "ok\n").unwrap();
    fs::write(d.path().join("maynothave"), "a b\n").unwrap();
    let errs = lines(PkgLists::load(d.path()).unwrap_err());
    let at: Vec<_> = errs
        .iter()
        .map(|e| (e.file.file_name().unwrap().to_str().unwrap(), e.line))
        .collect();
    assert_eq!(at, [("musthave", 2), ("maynothave", 1)]);
}

#[test]
fn unreadable_and_oversized_lists_are_named() {
    let d = tempfile::tempdir().unwrap();
    let dir_as_list = d.path().join("musthave");
    fs::create_dir(&dir_as_list).unwrap();
    let err = PkgList::load(ListKind::MustHave, &dir_as_list).unwrap_err();
    assert!(matches!(err, PkgListError::Io { .. }), "{err}");
    assert!(err.to_string().contains(&dir_as_list.display().to_string()));

    let big = d.path().join("mayhave");
    let file = fs::File::create(&big).unwrap();
    file.set_len(MAX_LIST_LEN + 1).unwrap();
    let err = PkgList::load(ListKind::MayHave, &big).unwrap_err();
    assert!(matches!(err, PkgListError::TooLarge { .. }), "{err}");
}

fn valid_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9+.-]{1,30}"
}

fn valid_entry() -> impl Strategy<Value = String> {
    (
        valid_name(),
        proptest::option::of("[a-z0-9][a-z0-9-]{0,10}"),
    )
        .prop_map(|(n, a)| match a {
            // `native`, `meta:` and `debtags:` are refused on purpose; the
            // generator keeps to what parses.
            Some(a) if a != "native" && n != "meta" && n != "debtags" => format!("{n}:{a}"),
            _ => n,
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let parsed = PkgList::parse(ListKind::MustHave, Path::new("f"), &bytes);
        // Displaying the errors (quoting, truncating) must not panic either.
        let _ = parsed.map_err(|e| e.to_string());
    }

    #[test]
    fn list_like_text_never_panics(text in "[a-z0-9+.:*?\\[\\]!^# \t\r\n-]{0,200}") {
        if let Ok(list) = parse(&text) {
            for e in &list.entries {
                let _ = e.matches("libc6", "amd64");
            }
        }
    }

    #[test]
    fn written_lists_parse_back(
        entries in proptest::collection::vec(valid_entry(), 0..40),
        crlf in any::<bool>(),
        indent in "[ \t]{0,3}",
        comment in proptest::option::of("[ -~]{0,20}"),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = String::from("# header\n");
        for e in &entries {
            let tail = comment.as_ref().map(|c| format!(" # {c}")).unwrap_or_default();
            text.push_str(&format!("{indent}{e}{indent}{tail}{eol}{eol}"));
        }
        let list = parse(&text).unwrap();
        let mut want: Vec<String> = Vec::new();
        for e in entries {
            if !want.contains(&e) {
                want.push(e);
            }
        }
        prop_assert_eq!(names(&list), want);
    }

    #[test]
    fn a_literal_matches_exactly_its_name(name in valid_name(), other in valid_name()) {
        let list = parse(&name).unwrap();
        let entry = &list.entries[0];
        prop_assert_eq!(entry.pattern.literal(), Some(name.as_str()));
        prop_assert!(entry.matches(&name, "amd64"));
        prop_assert_eq!(entry.matches(&other, "amd64"), other == name);
    }
}
