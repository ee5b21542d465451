//! Man pages and shell completions, written by each binary from its own
//! clap definition, so they cannot drift from the flags. `debian/rules`
//! runs `BINARY --man-pages DIR [SECTION]` and `BINARY --completions SHELL` at build
//! time; both are hidden from `--help` since admins read the result, not
//! the switch.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Command;
use clap_complete::Shell;

/// Handles `--man-pages DIR` or `--completions SHELL` when it is the first
/// argument: writes them and says how to exit. `None` otherwise: parse
/// the command line as usual.
pub fn generate_if_asked(cmd: impl FnOnce() -> Command) -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().skip(1).take(3).collect();
    let (flag, value) = (args.first()?.to_str()?, args.get(1));
    let result = match (flag, value) {
        ("--man-pages", Some(dir)) => {
            let section = args
                .get(2)
                .map_or("1".into(), |s| s.to_string_lossy().into_owned());
            man_pages(cmd(), Path::new(dir), &section)
        }
        ("--completions", Some(shell)) => {
            let shell = shell.to_string_lossy();
            match shell.parse::<Shell>() {
                Ok(shell) => completions(cmd(), shell),
                Err(_) => Err(format!(
                    "--completions {shell}: want bash, zsh, fish, elvish or powershell"
                )),
            }
        }
        ("--man-pages" | "--completions", None) => Err(format!("{flag} needs a value")),
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            ExitCode::from(2)
        }
    })
}

/// `NAME.1` for the binary and `NAME-SUB.1` for each visible subcommand,
/// down the tree (`cfi-pkgs.1`, `cfi-pkgs-sync.1`), in `dir`.
fn man_pages(cmd: Command, dir: &Path, section: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_owned();
    pages(&cmd, &name, dir, section)
}

fn pages(cmd: &Command, name: &str, dir: &Path, section: &str) -> Result<(), String> {
    write_page(cmd, name, dir, section)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{name}-{}", sub.get_name());
        pages(&sub.clone().name(name.clone()), &name, dir, section)?;
    }
    Ok(())
}

fn write_page(cmd: &Command, name: &str, dir: &Path, section: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.{section}"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section.to_owned())
        .render(&mut page)
        .map_err(|e| format!("{name}: {e}"))?;
    std::fs::write(&path, page).map_err(|e| format!("{}: {e}", path.display()))
}

fn completions(mut cmd: Command, shell: Shell) -> Result<(), String> {
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| format!("stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Command {
        Command::new("demo")
            .about("A demo")
            .subcommand(
                Command::new("run")
                    .about("Runs")
                    .subcommand(Command::new("fast")),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn a_page_per_visible_subcommand() {
        let d = tempfile::tempdir().unwrap();
        man_pages(demo(), d.path(), "1").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["demo-run-fast.1", "demo-run.1", "demo.1"]);
        let page = std::fs::read_to_string(d.path().join("demo-run.1")).unwrap();
        assert!(
            page.contains(".TH demo-run 1") && page.contains("Runs"),
            "{page}"
        );
    }
}
