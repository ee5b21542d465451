//! `cfi`: the cfi admin CLI.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cfi_cli::LogArgs;
use cfi_groups::GroupName;
use cfi_server::admin::{self, Outcome, Show};
use cfi_server::control::{Request, Targets};
use cfi_server::local::{self, LocalSync};
use cfi_sync::PushOptions;
use clap::{CommandFactory, Parser, Subcommand};

/// cfi: mirror group trees onto a pool of machines and run commands on
/// them, through the cfi-server daemon.
///
/// Exit status: 0 all went well; 1 some client failed (a command's
/// non-zero exit, a failed pass); 2 some client was unreachable, or the
/// command failed as a whole.
#[derive(Debug, Parser)]
#[command(name = "cfi", version, about)]
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "CFI_SOCKET",
        default_value = "/run/cfi/control.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

/// Which clients: any mix of -a, -g and -w, minus -x.
#[derive(Debug, Clone, clap::Args)]
struct TargetArgs {
    /// Every client.
    #[arg(short = 'a', long)]
    all: bool,
    /// The clients of GROUP (repeatable).
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// These clients, by name as `cfi clients` shows them (comma-separated,
    /// repeatable).
    #[arg(
        short = 'w',
        long = "hosts",
        value_name = "HOST,…",
        value_delimiter = ','
    )]
    hosts: Vec<String>,
    /// Not these clients (comma-separated, repeatable).
    #[arg(
        short = 'x',
        long = "exclude",
        value_name = "HOST,…",
        value_delimiter = ','
    )]
    exclude: Vec<String>,
}

impl TargetArgs {
    fn targets(self) -> Targets {
        Targets {
            all: self.all,
            groups: self.groups,
            hosts: self.hosts,
            exclude: self.exclude,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The clients: host, group, state, last sync, address, where listed.
    ///
    /// States: online (connected), offline (was connected, lost),
    /// unreachable (never reached: see the note), static-only (not tried
    /// yet), pending (connecting), hostkey-changed (refused until
    /// `cfi forget HOST`).
    Clients(JsonArg),
    /// The groups of the data dir and their clients.
    Groups(JsonArg),
    /// Sync the targets' roots to their groups' trees (every client when
    /// no target is named).
    Sync {
        #[command(flatten)]
        targets: TargetArgs,
        /// Show what would change, with diffs of text files; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run a command on the targets, all at once over the pooled
    /// connections, like dsh -M: lines stream as `host: line`.
    ///
    /// stdin, when it is not a terminal, is sent to the command on every
    /// client (clush does the same; --no-stdin stops it).
    #[command(after_help = "Examples:
  cfi exec -a -- uname -r
  cfi exec -g lab -x ws07 --gather -- cat /etc/debian_version
  cfi exec -w ws01,ws02 -- tee /etc/motd < motd
  cfi exec -a --script fix.sh -- --dry-run
  cfi exec -a --json -- df -h / | jq '.hosts[] | select(.result != \"ok\")'")]
    Exec(ExecArgs),
    /// The daemon's state.
    Status(JsonArg),
    /// Enroll a client that announced itself while the server has
    /// `accept = "manual"` (shown as pending in `cfi clients`).
    Accept {
        /// The client.
        host: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Forget a client's pinned host key (after a reinstall): the next
    /// contact pins the key it presents.
    Forget {
        /// The client.
        host: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Packages: converge on the groups' pkgsync lists, install and remove
    /// across the pool, and ask the inventory.
    ///
    /// A group manages packages by carrying pkgsync's lists in its tree:
    /// etc/pkgsync/musthave (installed if missing), mayhave (kept if
    /// installed), maynothave (removed); everything else is marked
    /// automatic and autoremoved unless a kept package needs it. Each client
    /// plans with apt's own simulation, so the plan is what a sync does.
    ///
    /// Never removed: Essential and Priority: required packages, the
    /// running kernel, openssh-server, cfi-client. A plan removing more
    /// than pkgs_max_removals is refused unless --force.
    #[command(subcommand)]
    Pkgs(PkgsCommand),
    /// Sync a group's tree onto a directory of this machine, through a
    /// local cfi-agent (the same protocol the server speaks over SSH).
    ///
    /// Exit status: 0 all converged, 1 some paths failed (listed), 2 the
    /// pass failed.
    SyncLocal(SyncLocalArgs),
}

/// `cfi pkgs …` (its help is on [`Command::Pkgs`]).
#[derive(Debug, Subcommand)]
enum PkgsCommand {
    /// What `cfi pkgs sync` would do on each client (every client when no
    /// target is named); identical plans are folded under their hosts.
    Plan {
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        tuning: PkgTuning,
        #[command(flatten)]
        out: PkgOutput,
    },
    /// Converge the clients' packages on their pkgsync lists.
    #[command(after_help = "Examples:
  cfi pkgs plan -g lab
  cfi pkgs sync -g lab --canary 2
  cfi pkgs sync -w ws07 --force")]
    Sync {
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        rollout: Rollout,
        #[command(flatten)]
        tuning: PkgTuning,
        #[command(flatten)]
        out: PkgOutput,
    },
    /// Install packages, a .deb file or .deb URLs on the targets.
    #[command(after_help = "Examples:
  cfi pkgs install vim -g lab
  cfi pkgs install ./site-tools_1.2_all.deb -a --canary 1
  cfi pkgs install http://repo.lan/pool/x_1.0_all.deb -w ws01,ws02

A package installed this way that no musthave or mayhave keeps is removed
again by the next `cfi pkgs sync`: add it to the group's lists to keep it.")]
    Install {
        /// Package names (`vim`, `libc6:i386`, `vim=2:9.0.1378-2`), one
        /// local .deb file, or http(s) URLs of .deb files.
        #[arg(required = true, value_name = "PKG|FILE.deb|URL")]
        what: Vec<String>,
        #[command(flatten)]
        targets: TargetArgs,
        /// Leave packages that are installed alone (no upgrade).
        #[arg(long)]
        only_missing: bool,
        #[command(flatten)]
        rollout: Rollout,
        #[command(flatten)]
        tuning: PkgTuning,
        #[command(flatten)]
        out: PkgOutput,
    },
    /// Remove packages from the targets.
    Remove {
        /// Package names.
        #[arg(required = true, value_name = "PKG")]
        packages: Vec<String>,
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        rollout: Rollout,
        #[command(flatten)]
        tuning: PkgTuning,
        #[command(flatten)]
        out: PkgOutput,
    },
    /// Which clients have packages matching a shell glob, in which
    /// versions, from the inventory (no client is contacted).
    Search {
        /// A package name or glob (`vim`, `linux-image-*`).
        pattern: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Everything installed on one client, from the inventory.
    List {
        /// The client.
        host: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// apt-get update on the targets and a new inventory (every client
    /// when none is named).
    Refresh {
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        out: PkgOutput,
    },
    /// Upgradable packages across the pool, from the inventory (as fresh
    /// as the last `cfi pkgs refresh`).
    Outdated(JsonArg),
}

/// A staged rollout.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Rollout {
    /// Run on this many clients first (in name order) and stop if any of
    /// them fails.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    canary: usize,
}

/// Overrides of the server's pkgs_* settings for one run.
#[derive(Debug, Clone, clap::Args)]
struct PkgTuning {
    /// Go past the removal budget (never past the protected packages).
    #[arg(long)]
    force: bool,
    /// The removal budget [default: the server's pkgs_max_removals].
    #[arg(long, value_name = "N")]
    max_removals: Option<usize>,
    /// Autoremove nothing this time.
    #[arg(long)]
    keep_unused: bool,
    /// Also upgrade every package (apt-get dist-upgrade).
    #[arg(long)]
    upgrade: bool,
    /// Clients at once [default: 32].
    #[arg(
        short = 'c',
        long,
        value_name = "N",
        default_value_t = 0,
        hide_default_value = true
    )]
    fanout: usize,
}

#[derive(Debug, Clone, Copy, clap::Args)]
struct PkgOutput {
    /// Show apt's output, host by host, as it comes.
    #[arg(long)]
    apt_output: bool,
    /// One JSON object at the end: every client's report.
    #[arg(long, conflicts_with = "apt_output")]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::Args)]
struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    #[command(flatten)]
    targets: TargetArgs,
    /// Clients at once (default: all).
    #[arg(
        short = 'c',
        long,
        value_name = "N",
        default_value_t = 0,
        hide_default_value = true
    )]
    fanout: usize,
    /// Seconds the command may run on a client [default: the server's
    /// command_timeout].
    #[arg(long, value_name = "S", default_value_t = 0, hide_default_value = true)]
    timeout: u64,
    /// Fold identical outputs under their hosts, as dshbak -c does.
    #[arg(long, short = 'b', conflicts_with = "json")]
    gather: bool,
    /// Ship this local script and run it on every client, with the words
    /// after -- as its arguments (its #! line picks the interpreter).
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Do not send stdin.
    #[arg(long)]
    no_stdin: bool,
    /// One JSON object at the end: every client's status, stdout, stderr.
    #[arg(long)]
    json: bool,
    /// The command (run by /bin/sh -c on each client).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SyncLocalArgs {
    /// Data dir holding the group trees.
    #[arg(long, default_value = "/var/lib/cfi", value_name = "DIR")]
    data_dir: PathBuf,
    /// Group to apply (`all/` is layered under it).
    #[arg(long, short)]
    group: GroupName,
    /// Target root.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The agent's ledger, backups and drifted copies for this root.
    #[arg(long, default_value = "/var/lib/cfi-client", value_name = "DIR")]
    state_dir: PathBuf,
    /// The server's hash cache and recent manifests: unchanged files are not
    /// hashed again, and a changed tree is sent as a manifest delta.
    #[arg(long, default_value = "/var/cache/cfi", value_name = "DIR")]
    cache_dir: PathBuf,
    /// Use no cache: hash every file, send whole manifests.
    #[arg(long)]
    no_cache: bool,
    /// Show what would change, with diffs of text files; write nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// zstd level for file data; 0 (the default here) sends files
    /// uncompressed, since over a local pipe compression only costs CPU.
    /// Deltas are compressed either way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(-7..=19))]
    level: i32,
    /// The agent binary [default: beside cfi, then /usr/lib/cfi/cfi-agent].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    if let Some(code) = cfi_cli::docs::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    cli.log.init();
    let socket = cli.socket.as_path();
    let result = match cli.command {
        Command::SyncLocal(args) => sync_local(args),
        Command::Clients(j) => admin::clients(socket, j.json).map(code),
        Command::Groups(j) => admin::groups(socket, j.json).map(code),
        Command::Status(j) => admin::status(socket, j.json).map(code),
        Command::Forget { host, json } => admin::forget(socket, &host, json.json).map(code),
        Command::Accept { host, json } => admin::accept(socket, &host, json.json).map(code),
        Command::Sync {
            targets,
            dry_run,
            json,
        } => {
            let request = Request::Sync {
                targets: targets.targets(),
                dry_run,
            };
            let show = if json.json { Show::Json } else { Show::Stream };
            admin::sync(socket, &request, show).map(code)
        }
        Command::Exec(args) => exec(socket, args),
        Command::Pkgs(cmd) => pkgs(socket, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cfi: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn code(outcome: Outcome) -> ExitCode {
    ExitCode::from(outcome as u8)
}

fn exec(socket: &Path, args: ExecArgs) -> Result<ExitCode> {
    let (command, stdin) = match &args.script {
        Some(file) => {
            let script = std::fs::read(file)
                .with_context(|| format!("cannot read script {}", file.display()))?;
            (script_runner(&args.command), Some(script))
        }
        None => {
            if args.command.is_empty() {
                bail!("no command: give it after --, as in `cfi exec -a -- uname -r`");
            }
            let stdin = if args.no_stdin || std::io::stdin().is_terminal() {
                None
            } else {
                let mut data = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut data)
                    .context("cannot read stdin")?;
                Some(data)
            };
            (args.command.join(" "), stdin)
        }
    };
    let show = match (args.json, args.gather) {
        (true, _) => Show::Json,
        (false, true) => Show::Gather,
        (false, false) => Show::Stream,
    };
    let request = Request::Exec {
        targets: args.targets.targets(),
        command,
        stdin,
        fanout: args.fanout,
        timeout: args.timeout,
    };
    admin::exec(socket, &request, show).map(code)
}

fn pkgs(socket: &Path, cmd: PkgsCommand) -> Result<ExitCode> {
    use cfi_server::control::{PkgAction, PkgQuery, PkgsRequest};
    let (targets, action, canary, tuning, out) = match cmd {
        PkgsCommand::Search { pattern, json } => {
            return cfi_server::pkgs::query(socket, PkgQuery::Search { pattern }, json.json)
                .map(code);
        }
        PkgsCommand::List { host, json } => {
            return cfi_server::pkgs::query(socket, PkgQuery::List { host }, json.json).map(code);
        }
        PkgsCommand::Outdated(json) => {
            return cfi_server::pkgs::query(socket, PkgQuery::Outdated, json.json).map(code);
        }
        PkgsCommand::Plan {
            targets,
            tuning,
            out,
        } => (targets, PkgAction::Plan, 0, Some(tuning), out),
        PkgsCommand::Sync {
            targets,
            rollout,
            tuning,
            out,
        } => (targets, PkgAction::Sync, rollout.canary, Some(tuning), out),
        PkgsCommand::Refresh { targets, out } => (targets, PkgAction::Refresh, 0, None, out),
        PkgsCommand::Remove {
            packages,
            targets,
            rollout,
            tuning,
            out,
        } => (
            targets,
            PkgAction::Remove { packages },
            rollout.canary,
            Some(tuning),
            out,
        ),
        PkgsCommand::Install {
            what,
            targets,
            only_missing,
            rollout,
            tuning,
            out,
        } => (
            targets,
            install_action(what, only_missing)?,
            rollout.canary,
            Some(tuning),
            out,
        ),
    };
    let tuning = tuning.as_ref();
    let request = PkgsRequest {
        targets: targets.targets(),
        action,
        canary,
        force: tuning.is_some_and(|t| t.force),
        max_removals: tuning.and_then(|t| t.max_removals),
        keep_unused: tuning.and_then(|t| t.keep_unused.then_some(true)),
        upgrade: tuning.and_then(|t| t.upgrade.then_some(true)),
        fanout: tuning.map_or(0, |t| t.fanout),
    };
    let show = if out.json { Show::Json } else { Show::Stream };
    cfi_server::pkgs::run(socket, request, show, out.apt_output).map(code)
}

/// Sorts `cfi pkgs install` words into package names, one .deb file (read
/// here and shipped to every client) and URLs.
fn install_action(what: Vec<String>, only_missing: bool) -> Result<cfi_server::control::PkgAction> {
    use cfi_server::control::{DebFile, PkgAction};
    let (mut packages, mut urls, mut deb) = (Vec::new(), Vec::new(), None);
    for w in what {
        if ["http://", "https://", "ftp://"]
            .iter()
            .any(|s| w.starts_with(s))
        {
            urls.push(w);
        } else if w.ends_with(".deb") || w.contains('/') {
            if deb.is_some() {
                bail!("one .deb file at a time: {w} is the second");
            }
            let path = Path::new(&w);
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {w}"))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            deb = Some(DebFile { name, bytes });
        } else {
            packages.push(w);
        }
    }
    Ok(PkgAction::Install {
        packages,
        deb,
        urls,
        only_missing,
    })
}

/// The command that runs a script arriving on stdin: saved to a private
/// temp file (so its #! line is honoured and it may read a terminal-less
/// stdin of its own), run with `args`, removed whatever happens.
fn script_runner(args: &[String]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    format!(
        "f=$(mktemp \"${{TMPDIR:-/tmp}}/cfi-script.XXXXXX\") || exit 127; \
         trap 'rm -f \"$f\"' EXIT; cat > \"$f\" && chmod 700 \"$f\" && \"$f\" {} </dev/null",
        quoted.join(" ")
    )
}

/// `word` as one word for /bin/sh.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn sync_local(args: SyncLocalArgs) -> Result<ExitCode> {
    tracing::debug!("cfi started");
    let job = LocalSync {
        data_dir: args.data_dir,
        group: args.group,
        root: args.root,
        state_dir: args.state_dir,
        cache_dir: (!args.no_cache).then_some(args.cache_dir),
        agent: args.agent.unwrap_or_else(local::default_agent),
        push: PushOptions {
            dry_run: args.dry_run,
            compression: (args.level != 0).then_some(args.level),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(local::run(&job))?;
    tracing::debug!("run returned");
    let text = if args.json {
        serde_json::to_string(&report)? + "\n"
    } else {
        cfi_server::render::pass(&report)
    };
    print_or_pipe_closed(&text)?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_or_pipe_closed(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
