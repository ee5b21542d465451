//! `cfi-agent pkgs …`: the package verbs the server runs over SSH (or an
//! admin runs by hand). The flags are what the server sends; the work is
//! `cfi-packages`'. One JSON report goes to stdout, apt's output to stderr.

use std::io::Read;
use std::path::Path;

use cfi_packages::PkgReport;
use cfi_packages::run::{self, Action, Options};
use clap::{Args, Parser, Subcommand};

/// The package verbs.
#[derive(Debug, Parser)]
#[command(name = "pkgs", no_binary_name = false)]
pub struct PkgsCommand {
    /// What to do.
    #[command(subcommand)]
    pub action: PkgsAction,
    /// How.
    #[command(flatten)]
    pub options: PkgsOptions,
}

/// The package verbs.
#[derive(Debug, Subcommand)]
pub enum PkgsAction {
    /// What `sync` would do, from apt's own simulation; changes nothing
    /// (but apt's lists, with --update).
    Plan,
    /// Converge on the pkgsync lists under the root's etc/pkgsync.
    Sync,
    /// Install packages, .deb files or URLs of .deb files.
    Install {
        /// Package names (`name`, `name:arch`, `name=version`).
        packages: Vec<String>,
        /// Read one .deb from stdin and install it under this file name.
        #[arg(long, value_name = "NAME.deb")]
        deb_stdin: Option<String>,
        /// Download a .deb with apt's downloader and install it.
        #[arg(long, value_name = "URL")]
        url: Vec<String>,
        /// Leave installed packages alone (no upgrade).
        #[arg(long)]
        only_missing: bool,
    },
    /// Remove packages.
    Remove {
        /// Package names.
        #[arg(required = true)]
        packages: Vec<String>,
    },
    /// Update apt's lists and report the installed and upgradable packages.
    Refresh,
}

/// The knobs of every verb.
#[derive(Debug, Args)]
pub struct PkgsOptions {
    /// Refuse a plan that removes more packages than this unless --force.
    #[arg(long, global = true, default_value_t = 10, value_name = "N")]
    pub max_removals: usize,
    /// Go past max-removals (never past the protected packages).
    #[arg(long, global = true)]
    pub force: bool,
    /// Autoremove nothing: unlisted packages stay (pkgsync -k).
    #[arg(long, global = true)]
    pub keep_unused: bool,
    /// Also upgrade every package (apt-get dist-upgrade).
    #[arg(long, global = true)]
    pub upgrade: bool,
    /// Run apt-get update first.
    #[arg(long, global = true)]
    pub update: bool,
    /// Seconds to wait for another apt or dpkg to finish.
    #[arg(long, global = true, default_value_t = 120, value_name = "S")]
    pub lock_timeout: u64,
    /// Simulate only.
    #[arg(long, global = true)]
    pub dry_run: bool,
}

/// Parses the words after `pkgs` (as sshd hands them over in
/// SSH_ORIGINAL_COMMAND).
pub fn parse(words: &[String]) -> Result<PkgsCommand, clap::Error> {
    PkgsCommand::try_parse_from(std::iter::once("pkgs".to_owned()).chain(words.iter().cloned()))
}

/// Runs `cmd` with the lists of `root`; the report, which carries any
/// failure.
pub fn run(cmd: &PkgsCommand, root: &Path) -> PkgReport {
    let o = &cmd.options;
    let opts = Options {
        lists_dir: root.join(cfi_groups::pkglist::PkgLists::DIR),
        max_removals: o.max_removals,
        force: o.force,
        keep_unused: o.keep_unused,
        upgrade: o.upgrade,
        update: o.update,
        lock_timeout: o.lock_timeout,
        dry_run: o.dry_run,
    };
    // The downloaded or received .deb files live until apt is done.
    let scratch = tempfile::Builder::new().prefix("cfi-deb-").tempdir();
    let action = match &cmd.action {
        PkgsAction::Plan => Action::Plan,
        PkgsAction::Sync => Action::Sync,
        PkgsAction::Refresh => Action::Refresh,
        PkgsAction::Remove { packages } => Action::Remove {
            packages: packages.clone(),
        },
        PkgsAction::Install {
            packages,
            deb_stdin,
            url,
            only_missing,
        } => {
            let mut packages = packages.clone();
            let fetched = scratch
                .as_ref()
                .map_err(|e| format!("cannot make a scratch dir: {e}"))
                .and_then(|dir| fetch(dir.path(), deb_stdin.as_deref(), url));
            match fetched {
                Ok(debs) => packages.extend(debs),
                Err(e) => return failed(cmd, e),
            }
            if packages.is_empty() {
                return failed(
                    cmd,
                    "nothing to install: name packages, --deb-stdin or --url".into(),
                );
            }
            Action::Install {
                packages,
                only_missing: *only_missing,
            }
        }
    };
    run::run(&action, &opts)
}

/// The .deb files to install, as absolute paths (apt's way of telling a
/// file from a package name).
fn fetch(dir: &Path, deb_stdin: Option<&str>, urls: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    if let Some(name) = deb_stdin {
        if !name.ends_with(".deb") || name.contains('/') || name.starts_with('.') {
            return Err(format!(
                "--deb-stdin {name:?}: want a file name ending in .deb"
            ));
        }
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {name} from stdin: {e}"))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(path.display().to_string());
    }
    for url in urls {
        out.push(run::download(url, dir)?.display().to_string());
    }
    Ok(out)
}

fn failed(cmd: &PkgsCommand, error: String) -> PkgReport {
    let verb = match cmd.action {
        PkgsAction::Install { .. } => "install",
        _ => "pkgs",
    };
    PkgReport {
        action: verb.to_owned(),
        error: Some(error),
        ..PkgReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_go_before_or_after_the_verb() {
        let c = parse(&words("sync --max-removals 3 --keep-unused")).unwrap();
        assert!(matches!(c.action, PkgsAction::Sync));
        assert_eq!(c.options.max_removals, 3);
        assert!(c.options.keep_unused && !c.options.force);
        let c = parse(&words("--force install vim emacs --only-missing")).unwrap();
        match c.action {
            PkgsAction::Install {
                packages,
                only_missing,
                ..
            } => {
                assert_eq!(packages, ["vim", "emacs"]);
                assert!(only_missing);
            }
            other => panic!("{other:?}"),
        }
        assert!(c.options.force);
    }

    #[test]
    fn bad_words_are_a_clap_error() {
        assert!(parse(&words("frobnicate")).is_err());
        assert!(parse(&words("remove")).is_err());
        assert!(parse(&words("sync --max-removals many")).is_err());
    }
}
