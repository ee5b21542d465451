//! Runs a package action on this machine with the real tools: dpkg-query
//! and apt's `extended_states` for the inventory, apt-mark and apt-get for
//! the change, `apt-get -s` for the plan.
//!
//! Every plan is apt's own simulation of the whole request, made with the
//! new auto marks in a private copy of `extended_states` (apt-mark and
//! apt-get both take `-o Dir::State::extended_states=…`), so the plan
//! includes the resolver's choices and the autoremovals the marks cause,
//! and nothing on the machine changes. Applying repeats the same request
//! for real once the rails accepted the simulation.
//!
//! What the machine has is read by [`crate::machine`]; the tools run
//! through [`crate::tool`].

use std::path::{Path, PathBuf};

use cfi_groups::pkglist::PkgLists;

use crate::apt;
pub use crate::machine::{EXTENDED_STATES, inventory};
use crate::machine::{Machine, available_names};
use crate::plan::{self, Wish};
use crate::report::{Marks, PkgReport, Plan};
use crate::tool::{Log, ToolOutput, tool};

/// Rounds of dropping names apt does not know before giving up.
const MAX_UNKNOWN_ROUNDS: usize = 8;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The convergence a `Sync` would carry out; changes nothing.
    Plan,
    /// Converge on the lists.
    Sync,
    /// Install packages: names, or paths of `.deb` files.
    Install {
        /// The packages.
        packages: Vec<String>,
        /// Leave installed ones alone (no upgrade).
        only_missing: bool,
    },
    /// Remove packages.
    Remove {
        /// The packages.
        packages: Vec<String>,
    },
    /// Update apt's lists and report the inventory.
    Refresh,
}

impl Action {
    /// The verb, as in the report.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Sync => "sync",
            Self::Install { .. } => "install",
            Self::Remove { .. } => "remove",
            Self::Refresh => "refresh",
        }
    }
}

/// How to do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where the pkgsync lists are (`<root>/etc/pkgsync`).
    pub lists_dir: PathBuf,
    /// The most packages a run removes without `force`.
    pub max_removals: usize,
    /// Past the removal budget (never past the protected set).
    pub force: bool,
    /// Autoremove nothing (pkgsync's `--keep-unused`).
    pub keep_unused: bool,
    /// Also upgrade everything (`dist-upgrade`).
    pub upgrade: bool,
    /// Run `apt-get update` first.
    pub update: bool,
    /// Seconds to wait for the dpkg lock.
    pub lock_timeout: u64,
    /// Simulate only.
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lists_dir: PathBuf::from("/etc/pkgsync"),
            max_removals: 10,
            force: false,
            keep_unused: false,
            upgrade: false,
            update: false,
            lock_timeout: 120,
            dry_run: false,
        }
    }
}

/// Carries out `action`; failures are in the report, never a panic.
pub fn run(action: &Action, opts: &Options) -> PkgReport {
    let mut report = PkgReport {
        action: action.verb().to_owned(),
        ..PkgReport::default()
    };
    let dry = opts.dry_run || *action == Action::Plan;
    if let Err(e) = carry_out(action, opts, dry, &mut report) {
        report.error = Some(e);
    }
    match inventory() {
        Ok(inv) => report.inventory = Some(inv),
        Err(e) => report.warnings.push(format!("no inventory: {e}")),
    }
    report
}

fn carry_out(
    action: &Action,
    opts: &Options,
    dry: bool,
    report: &mut PkgReport,
) -> Result<(), String> {
    if opts.update || *action == Action::Refresh {
        update(opts)?;
    }
    let sys = Machine::read()?;
    let (mut wish, verb) = match action {
        Action::Refresh => return Ok(()),
        Action::Plan | Action::Sync => {
            let Some(lists) = lists(opts, &sys, report)? else {
                return Ok(());
            };
            let available = if lists
                .must
                .entries
                .iter()
                .any(|e| e.pattern.literal().is_none())
            {
                available_names()?
            } else {
                Vec::new()
            };
            let wish = plan::converge(&lists, sys.system(&available), opts.keep_unused);
            (
                wish,
                if opts.upgrade {
                    "dist-upgrade"
                } else {
                    "install"
                },
            )
        }
        Action::Install {
            packages,
            only_missing,
        } => {
            warn_unlisted(opts, &sys, packages, report);
            let wish = Wish {
                install: packages.clone(),
                ..Wish::default()
            };
            (
                wish,
                if *only_missing {
                    "install --no-upgrade"
                } else {
                    "install"
                },
            )
        }
        Action::Remove { packages } => {
            let wish = Wish {
                remove: packages.clone(),
                ..Wish::default()
            };
            (wish, "install")
        }
    };
    report.kept = std::mem::take(&mut wish.kept);
    report.marks = wish.marks.clone();
    let plan = simulate(&mut wish, verb, &sys, report)?;
    report.plan = plan;
    if let Err(why) = plan::check(
        &report.plan,
        &sys.installed,
        &sys.kernel_image,
        opts.max_removals,
        opts.force,
    ) {
        report.refused = Some(why);
        return Ok(());
    }
    if dry || (report.plan.is_empty() && wish.marks.auto.is_empty() && wish.marks.manual.is_empty())
    {
        return Ok(());
    }
    apply(&wish, verb, opts)?;
    report.applied = true;
    Ok(())
}

/// The lists of this machine, `None` (with a warning) when it has none.
fn lists(
    opts: &Options,
    sys: &Machine,
    report: &mut PkgReport,
) -> Result<Option<PkgLists>, String> {
    let Some(mut lists) = PkgLists::load(&opts.lists_dir).map_err(|e| e.to_string())? else {
        report.warnings.push(format!(
            "no package lists in {}: nothing to converge",
            opts.lists_dir.display()
        ));
        return Ok(None);
    };
    lists.resolve_kernel(&sys.kernel_release);
    report
        .warnings
        .extend(lists.conflicts().iter().map(ToString::to_string));
    Ok(Some(lists))
}

/// A `pkgs install` of a package the lists do not keep lasts only until
/// the next `pkgs sync`: say so.
fn warn_unlisted(opts: &Options, sys: &Machine, packages: &[String], report: &mut PkgReport) {
    let Ok(Some(lists)) = PkgLists::load(&opts.lists_dir) else {
        return;
    };
    for p in packages.iter().filter(|p| !p.contains('/')) {
        let (name, arch) = p.split_once(':').unwrap_or((p, &sys.native));
        if matches!(
            lists.classify(name, arch),
            cfi_groups::pkglist::Class::Unlisted | cfi_groups::pkglist::Class::MayNot
        ) {
            report.warnings.push(format!(
                "{p} is in neither musthave nor mayhave of {}: the next pkgs sync removes it",
                opts.lists_dir.display()
            ));
        }
    }
}

/// apt's simulation of `wish`, with its marks applied to a private copy of
/// `extended_states`; names apt does not know are dropped into `unknown`
/// and the rest is simulated again.
fn simulate(
    wish: &mut Wish,
    verb: &str,
    sys: &Machine,
    report: &mut PkgReport,
) -> Result<Plan, String> {
    let scratch = tempfile::Builder::new()
        .prefix("cfi-pkgs-")
        .tempdir()
        .map_err(|e| format!("cannot make a scratch dir: {e}"))?;
    let states = scratch.path().join("extended_states");
    match std::fs::copy(EXTENDED_STATES, &states) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&states, "").map_err(|e| format!("{}: {e}", states.display()))?;
        }
        Err(e) => return Err(format!("cannot copy {EXTENDED_STATES}: {e}")),
    }
    let states_opt = format!("Dir::State::extended_states={}", states.display());
    mark(&wish.marks, &["-o", &states_opt], None)?;
    for _ in 0..MAX_UNKNOWN_ROUNDS {
        let mut argv: Vec<String> = ["-s", "-q", "-o", &states_opt].map(String::from).to_vec();
        argv.extend(apt_verb(verb, wish.autoremove));
        argv.extend(wish.apt_args());
        let out = tool("apt-get", &argv, Log::Quiet)?;
        if out.ok {
            return Ok(apt::parse_simulation(&out.stdout, &sys.native));
        }
        let unknown = apt::unknown_names(&out.stderr);
        if unknown.is_empty()
            || !unknown.iter().any(|u| {
                wish.apt_args()
                    .iter()
                    .any(|a| a == u || a.trim_end_matches('-') == u)
            })
        {
            return Err(format!(
                "apt cannot plan this: {}",
                apt::errors(&out.stderr)
            ));
        }
        wish.drop_names(&unknown);
        for name in unknown {
            if name == sys.kernel_image {
                // Netbooted machines and containers run a kernel no
                // package holds: meta:current-kernel then names nothing.
                report.warnings.push(format!(
                    "meta:current-kernel: no package {name} for the running kernel here; nothing to keep"
                ));
            } else if !report.unknown.contains(&name) {
                report.unknown.push(name);
            }
        }
    }
    Err("apt keeps refusing package names; see unknown".to_owned())
}

fn apt_verb(verb: &str, autoremove: bool) -> Vec<String> {
    let mut v: Vec<String> = verb.split(' ').map(String::from).collect();
    if autoremove {
        v.push("--autoremove".to_owned());
    }
    v
}

/// The real run: marks, then apt-get, non-interactive, keeping the
/// admin's changed conffiles.
fn apply(wish: &Wish, verb: &str, opts: &Options) -> Result<(), String> {
    let lock = format!("DPkg::Lock::Timeout={}", opts.lock_timeout);
    mark(&wish.marks, &["-o", &lock], Some(opts.lock_timeout))?;
    let mut argv: Vec<String> = [
        "-y",
        "-q",
        "-o",
        &lock,
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]
    .map(String::from)
    .to_vec();
    argv.extend(apt_verb(verb, wish.autoremove));
    argv.extend(wish.apt_args());
    let out = tool("apt-get", &argv, Log::Stream)?;
    if out.ok {
        Ok(())
    } else {
        Err(apt_failure("apt-get", &out, opts.lock_timeout))
    }
}

/// apt's failure in words; with a lock timeout, apt names the holder on
/// stdout ("Waiting for cache lock: … held by process 445 (perl)") and
/// only says it gave up on stderr.
fn apt_failure(what: &str, out: &ToolOutput, lock_timeout: u64) -> String {
    let both = format!(
        "{}\n{}",
        out.stdout.replace("Waiting for cache lock: ", "E: "),
        out.stderr
    );
    let stderr = &out.stderr;
    match apt::lock_error(&both) {
        Some(msg) => {
            format!("the dpkg lock is still held after {lock_timeout} s (lock_timeout): {msg}")
        }
        None => format!("{what} failed: {}", apt::errors(stderr)),
    }
}

fn mark(marks: &Marks, opts: &[&str], lock_timeout: Option<u64>) -> Result<(), String> {
    for (how, names) in [("auto", &marks.auto), ("manual", &marks.manual)] {
        if names.is_empty() {
            continue;
        }
        let mut argv: Vec<String> = opts.iter().map(|s| (*s).to_owned()).collect();
        argv.push(how.to_owned());
        argv.extend(names.iter().cloned());
        let out = tool("apt-mark", &argv, Log::Quiet)?;
        if !out.ok {
            return Err(apt_failure("apt-mark", &out, lock_timeout.unwrap_or(0)));
        }
    }
    Ok(())
}

fn update(opts: &Options) -> Result<(), String> {
    let lock = format!("DPkg::Lock::Timeout={}", opts.lock_timeout);
    let out = tool(
        "apt-get",
        &["-q", "-o", &lock, "update"].map(String::from),
        Log::Stream,
    )?;
    // apt-get update exits 0 on a failed fetch it can work around ("W:
    // Failed to fetch"), which leaves the old lists: that is a broken
    // repository too, and the admin must hear of it.
    let failed_fetch = out
        .stderr
        .lines()
        .any(|l| l.starts_with("W: Failed to fetch") || l.starts_with("E: "));
    if out.ok && !failed_fetch {
        return Ok(());
    }
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: Failed to fetch"))
        .collect();
    match apt::lock_error(&out.stderr) {
        Some(_) => Err(apt_failure("apt-get update", &out, opts.lock_timeout)),
        None if lines.is_empty() => Err(format!(
            "apt-get update failed: {}",
            apt::errors(&out.stderr)
        )),
        None => Err(format!("apt-get update failed: {}", lines.join("; "))),
    }
}

/// Fetches `url` into `dir` with apt's own downloader (it honours apt's
/// proxy settings), for `pkgs install URL`.
pub fn download(url: &str, dir: &Path) -> Result<PathBuf, String> {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| n.ends_with(".deb") && !n.starts_with('.'))
        .unwrap_or("download.deb");
    let target = dir.join(name);
    let argv = [
        "download-file".to_owned(),
        url.to_owned(),
        target.display().to_string(),
    ];
    let out = tool("/usr/lib/apt/apt-helper", &argv, Log::Stream)?;
    if out.ok {
        Ok(target)
    } else {
        Err(format!(
            "cannot download {url}: {}",
            apt::errors(&out.stderr)
        ))
    }
}
