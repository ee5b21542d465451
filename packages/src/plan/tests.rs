use std::path::Path;

use cfi_groups::pkglist::{ListKind, PkgList};

use super::*;
use crate::report::PkgChange;

fn lists(must: &str, may: &str, maynot: &str) -> PkgLists {
    let parse =
        |kind, text: &str| PkgList::parse(kind, Path::new("list"), text.as_bytes()).unwrap();
    PkgLists {
        must: parse(ListKind::MustHave, must),
        may: parse(ListKind::MayHave, may),
        maynot: parse(ListKind::MayNotHave, maynot),
    }
}

fn pkg(name: &str) -> DpkgPackage {
    DpkgPackage {
        name: name.into(),
        arch: "amd64".into(),
        version: "1.0".into(),
        essential: false,
        priority: "optional".into(),
    }
}

struct Machine {
    installed: Vec<DpkgPackage>,
    auto: HashSet<(String, String)>,
    available: Vec<String>,
}

impl Machine {
    fn new(installed: &[&str], auto: &[&str], available: &[&str]) -> Self {
        let mut installed: Vec<DpkgPackage> = installed.iter().map(|n| pkg(n)).collect();
        // As dpkg::parse_query returns them.
        installed.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &mut installed {
            if p.name == "bash" {
                p.essential = true;
            }
            if p.name == "mawk" {
                p.priority = "required".into();
            }
        }
        Self {
            installed,
            auto: auto
                .iter()
                .map(|n| ((*n).to_owned(), "amd64".to_owned()))
                .collect(),
            available: available.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    fn sys(&self) -> System<'_> {
        System {
            installed: &self.installed,
            auto: &self.auto,
            native: "amd64",
            available: &self.available,
            kernel_image: "linux-image-6.1.0-9-amd64",
        }
    }
}

#[test]
fn musthave_installs_what_is_missing_and_maynothave_removes() {
    let m = Machine::new(&["vim", "telnet", "bash"], &[], &["vim", "emacs", "telnet"]);
    let wish = converge(&lists("vim\nemacs\n", "bash\n", "telnet\n"), m.sys(), false);
    assert_eq!(wish.install, ["emacs"]);
    assert_eq!(wish.remove, ["telnet"]);
    assert_eq!(wish.apt_args(), ["emacs", "telnet-"]);
    assert!(wish.autoremove);
}

#[test]
fn unlisted_manual_packages_are_marked_auto_listed_auto_ones_manual() {
    let m = Machine::new(
        &["vim", "stray", "lib-kept", "dep"],
        &["lib-kept", "dep"],
        &[],
    );
    let wish = converge(&lists("vim\n", "lib-*\n", ""), m.sys(), false);
    assert_eq!(wish.marks.auto, ["stray"], "dep is auto already");
    assert_eq!(wish.marks.manual, ["lib-kept"]);
}

#[test]
fn keep_unused_marks_nothing_auto_and_does_not_autoremove() {
    let m = Machine::new(&["vim", "stray"], &[], &[]);
    let wish = converge(&lists("vim\n", "", ""), m.sys(), true);
    assert!(wish.marks.auto.is_empty());
    assert!(!wish.autoremove);
}

#[test]
fn protected_packages_are_kept_from_maynothave_and_never_marked_auto() {
    let m = Machine::new(
        &[
            "bash",
            "mawk",
            "openssh-server",
            "cfi-client",
            "linux-image-6.1.0-9-amd64",
            "xx",
        ],
        &[],
        &[],
    );
    let wish = converge(
        &lists(
            "",
            "",
            "bash\nopenssh-server\nlinux-image-*\ncfi-client\nxx\n",
        ),
        m.sys(),
        false,
    );
    assert_eq!(wish.remove, ["xx"]);
    let kept: Vec<&str> = wish.kept.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        kept,
        [
            "bash",
            "cfi-client",
            "linux-image-6.1.0-9-amd64",
            "openssh-server"
        ]
    );
    assert!(wish.kept[0].reason.contains("Essential"));
    assert!(wish.marks.auto.is_empty(), "{:?}", wish.marks.auto);
}

#[test]
fn musthave_globs_expand_over_what_apt_knows_and_respect_maynothave() {
    let m = Machine::new(
        &["fonts-a"],
        &[],
        &["fonts-a", "fonts-b", "fonts-c", "other"],
    );
    let wish = converge(&lists("fonts-*\n", "", "fonts-c\n"), m.sys(), false);
    assert_eq!(wish.install, ["fonts-b"]);
}

#[test]
fn arch_qualified_musthave_asks_for_that_architecture() {
    let m = Machine::new(&["libc6"], &[], &[]);
    let wish = converge(&lists("libc6:i386\n", "", ""), m.sys(), false);
    assert_eq!(wish.install, ["libc6:i386"]);
}

#[test]
fn unknown_names_are_dropped_from_the_request() {
    let m = Machine::new(&["telnet"], &[], &[]);
    let mut wish = converge(&lists("nope\nvim\n", "", "telnet\n"), m.sys(), false);
    wish.drop_names(&["nope".into()]);
    assert_eq!(wish.apt_args(), ["vim", "telnet-"]);
}

fn removal(name: &str) -> PkgChange {
    PkgChange {
        name: name.into(),
        arch: "amd64".into(),
        from: Some("1.0".into()),
        to: None,
    }
}

#[test]
fn a_plan_removing_a_protected_package_is_refused_even_forced() {
    let m = Machine::new(&["bash", "openssh-server", "x"], &[], &[]);
    let plan = Plan {
        remove: vec![removal("x"), removal("openssh-server")],
        ..Plan::default()
    };
    let err = check(&plan, &m.installed, "linux-image-x", 10, true).unwrap_err();
    assert!(err.contains("openssh-server"), "{err}");
    assert!(!err.contains("x ("), "{err}");
}

#[test]
fn the_removal_budget_refuses_unless_forced() {
    let m = Machine::new(&["a", "b", "c"], &[], &[]);
    let plan = Plan {
        remove: vec![removal("a"), removal("b"), removal("c")],
        ..Plan::default()
    };
    let err = check(&plan, &m.installed, "k", 2, false).unwrap_err();
    assert!(
        err.contains("remove 3 packages") && err.contains("max_removals = 2"),
        "{err}"
    );
    assert!(err.contains("a b c"), "{err}");
    check(&plan, &m.installed, "k", 2, true).unwrap();
    check(&plan, &m.installed, "k", 3, false).unwrap();
}
