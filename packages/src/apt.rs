//! Reading what apt says: its simulation (`apt-get -s`, the plan apt would
//! really carry out after its resolver ran) and its errors.

use crate::report::{PkgChange, Plan, Upgradable};

/// apt's plan in `apt-get -s` output: `Inst`, `Remv` and `Purg` lines
/// (`Conf` repeats `Inst`). `native` is the architecture of a `Remv` line
/// without one.
pub fn parse_simulation(text: &str, native: &str) -> Plan {
    let mut plan = Plan::default();
    for line in text.lines() {
        let Some((verb, rest)) = line.split_once(' ') else {
            continue;
        };
        let list = match verb {
            "Inst" => None,
            "Remv" | "Purg" => Some(()),
            _ => continue,
        };
        let Some(change) = parse_op(rest, native) else {
            continue;
        };
        match (list, &change.from) {
            (Some(()), _) => plan.remove.push(change),
            (None, Some(_)) => plan.upgrade.push(change),
            (None, None) => plan.install.push(change),
        }
    }
    for list in [&mut plan.install, &mut plan.upgrade, &mut plan.remove] {
        list.sort();
        list.dedup();
    }
    plan
}

/// `NAME[:ARCH] [OLD] (NEW RELEASE… [ARCH]) …`, the part after the verb.
fn parse_op(rest: &str, native: &str) -> Option<PkgChange> {
    let (qualified, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (name, mut arch) = match qualified.split_once(':') {
        Some((n, a)) => (n, Some(a.to_owned())),
        None => (qualified, None),
    };
    if name.is_empty() {
        return None;
    }
    let mut from = None;
    if let Some(inner) = rest.strip_prefix('[') {
        let (old, after) = inner.split_once(']')?;
        from = Some(old.to_owned());
        rest = after.trim_start();
    }
    let mut to = None;
    if let Some(inner) = rest.strip_prefix('(') {
        let inner = inner.split_once(')').map_or(inner, |(i, _)| i);
        to = inner.split_whitespace().next().map(str::to_owned);
        // The architecture closes the parenthesis: `(1.0 Debian:12 [amd64])`.
        if arch.is_none() {
            arch = inner
                .rsplit_once('[')
                .and_then(|(_, a)| a.strip_suffix(']'))
                .map(str::to_owned);
        }
    }
    Some(PkgChange {
        name: name.to_owned(),
        arch: arch.unwrap_or_else(|| native.to_owned()),
        from,
        to,
    })
}

/// The upgradable packages in an `apt-get -s dist-upgrade`.
pub fn upgradable(plan: &Plan) -> Vec<Upgradable> {
    plan.upgrade
        .iter()
        .map(|c| Upgradable {
            name: c.name.clone(),
            arch: c.arch.clone(),
            current: c.from.clone().unwrap_or_default(),
            candidate: c.to.clone().unwrap_or_default(),
        })
        .collect()
}

/// The names apt refused as unknown or uninstallable in its error lines,
/// as they were given to it.
pub fn unknown_names(stderr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in stderr.lines() {
        let Some(msg) = line.strip_prefix("E: ") else {
            continue;
        };
        let name = if let Some(n) = msg.strip_prefix("Unable to locate package ") {
            Some(n.trim())
        } else if let Some(rest) = msg
            .strip_prefix("Package '")
            .or_else(|| msg.strip_prefix("Couldn't find any package by glob '"))
            .or_else(|| msg.strip_prefix("Couldn't find any package by regex '"))
        {
            rest.split_once('\'').map(|(n, _)| n)
        } else {
            None
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            out.push(n.to_owned());
        }
    }
    out
}

/// Whether apt failed because another process holds the dpkg lock, and
/// apt's words for it, which name the holder when apt said who it is.
/// After a `DPkg::Lock::Timeout` the holder is only in the progress line
/// on stdout ("Waiting for cache lock: Could not get lock … held by
/// process 445 (perl)..."), so `output` is searched whole, `\r`-separated
/// progress included.
pub fn lock_error(output: &str) -> Option<&str> {
    let segments = || output.split(['\n', '\r']).map(str::trim);
    segments()
        .find_map(|l| l.find("Could not get lock").map(|at| &l[at..]))
        .or_else(|| {
            segments().find_map(|l| l.find("Unable to acquire the dpkg").map(|at| &l[at..]))
        })
        .map(|m| m.trim_end_matches('.').trim_end())
}

/// apt's own error lines, for a message: the `E:` lines, or the last lines
/// when there are none.
pub fn errors(stderr: &str) -> String {
    let e: Vec<&str> = stderr.lines().filter(|l| l.starts_with("E: ")).collect();
    let lines = if e.is_empty() {
        let all: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        e
    };
    let text = lines.join("; ");
    if text.is_empty() {
        "no message".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: &str = "\
Reading package lists...
The following NEW packages will be installed:
  hello
Inst base-files [12.4+deb12u11] (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Conf base-files (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Inst libgcrypt20-dev [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []
Remv bc [1.07.1-3+b1]
Purg cscope:i386 [15.9-1]
Inst hello (2.10-3 Debian:12.15/oldstable [amd64])
Inst cfi-test-a (1.0 localhost [all])
Conf hello (2.10-3 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn simulation_lines_become_the_plan() {
        let plan = parse_simulation(SIM, "amd64");
        let names = |l: &[PkgChange]| l.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plan.install), ["cfi-test-a", "hello"]);
        assert_eq!(names(&plan.upgrade), ["base-files", "libgcrypt20-dev"]);
        assert_eq!(names(&plan.remove), ["bc", "cscope"]);
        assert_eq!(plan.install[0].arch, "all");
        assert_eq!(plan.install[1].to.as_deref(), Some("2.10-3"));
        assert_eq!(plan.upgrade[0].from.as_deref(), Some("12.4+deb12u11"));
        assert_eq!(plan.upgrade[1].to.as_deref(), Some("1.10.1-3+deb12u1"));
        assert_eq!(plan.remove[0].arch, "amd64");
        assert_eq!(plan.remove[1].arch, "i386");
        assert_eq!(plan.remove[0].to, None);
        let up = upgradable(&plan);
        assert_eq!(up[0].current, "12.4+deb12u11");
        assert_eq!(up[0].candidate, "12.4+deb12u15");
    }

    #[test]
    fn errors_name_the_unknown_packages() {
        let stderr = "E: Unable to locate package no-such\n\
                      E: Package 'virt' has no installation candidate\n\
                      E: Couldn't find any package by glob 'x*'\n\
                      W: something else\n";
        assert_eq!(unknown_names(stderr), ["no-such", "virt", "x*"]);
        assert!(lock_error(stderr).is_none());
        assert_eq!(
            errors(stderr),
            "E: Unable to locate package no-such; E: Package 'virt' has no installation candidate; \
             E: Couldn't find any package by glob 'x*'"
        );
    }

    #[test]
    fn the_lock_message_names_the_holder() {
        let stderr = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 42 (perl)\n\
                      E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?\n";
        assert!(lock_error(stderr).unwrap().contains("process 42 (perl)"));
        let timed_out = "Reading package lists...\n\rWaiting for cache lock: Could not get lock \
                         /var/lib/dpkg/lock-frontend. It is held by process 445 (perl)... 2s\r\n\
                         E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?\n";
        assert_eq!(
            lock_error(timed_out),
            Some(
                "Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 445 (perl)... 2s"
            )
        );
        assert!(lock_error("E: Unable to acquire the dpkg frontend lock (x)").is_some());
    }

    proptest::proptest! {
        #[test]
        fn any_output_parses_without_panic(text in ".{0,400}") {
            let _ = parse_simulation(&text, "amd64");
            let _ = unknown_names(&text);
            let _ = errors(&text);
        }
    }
}
