//! The tools the pool benchmarks ([`crate::pool_bench`]) run against a
//! lab's hosts, each measured the same way: the wall time of the command
//! that drives the pool, and the CPU the orchestrator burns on this machine
//! for it, which is what a pool's server pays per host.
//!
//! - [`Dsh`]: pdsh or clush running one command on every host, an OpenSSH
//!   client process per host;
//! - [`rsync_push`]: rsync over ssh pushing a tree, one process per host,
//!   all started at once (a parallel loop);
//! - cfi itself, in [`crate::cfi_pool`].
//!
//! CPU comes from `/proc`, in clock ticks (10 ms): for the peers, what this
//! process's waited-for children used (`cutime + cstime` of
//! `/proc/self/stat`, which take in the ssh processes pdsh, clush and rsync
//! wait for); for cfi, the CLI's the same way plus the daemon's own
//! (`utime + stime` of `/proc/<pid>/stat`, all its threads; see
//! [`process_cpu`]). A measurement must not overlap the reaping of any
//! other child: the benchmarks run one thing at a time. Beside it, the
//! machine's whole CPU (`/proc/stat`), since the lab's clients run here
//! too: it shows how much of the wall time the clients' side took.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tracing::warn;

use crate::command;
use crate::lab::{Client, Lab};
use crate::peer::as_millis;

/// Time limit of one command over the whole lab (pdsh, clush, `cfi exec`).
pub const EXEC_LIMIT: Duration = Duration::from_secs(120);

/// Time limit of one push of the tree (an rsync, a `cfi sync`).
pub const SYNC_LIMIT: Duration = Duration::from_secs(600);

/// How many lab clients are set up or checked at once (docker calls on a
/// 2-core machine).
const PARALLEL_CLIENTS: usize = 8;

/// The fanout of pdsh and clush: above any lab size, so every host is
/// contacted at once, as cfi does.
pub const FANOUT: usize = 256;

/// What one measured command cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Cost {
    /// Wall time, process start to exit.
    #[serde(serialize_with = "as_millis", rename = "wall_ms")]
    pub wall: Duration,
    /// The orchestrator's CPU (user + system) on this machine.
    #[serde(serialize_with = "as_millis", rename = "cpu_ms")]
    pub cpu: Duration,
    /// Every process's CPU on this machine meanwhile, all cores: the lab's
    /// clients (sshd, the remote commands) share it, and so does whatever
    /// else runs.
    #[serde(serialize_with = "as_millis", rename = "machine_cpu_ms")]
    pub machine_cpu: Duration,
}

/// A measurement under way: the counters before the measured command.
#[derive(Debug)]
pub struct Meter {
    start: Instant,
    children: Duration,
    machine: Duration,
}

impl Meter {
    /// Reads the counters: call right before the command starts.
    pub fn start() -> Result<Self> {
        Ok(Self {
            children: children_cpu()?,
            machine: machine_cpu()?,
            start: Instant::now(),
        })
    }

    /// Wall time since [`Meter::start`].
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The cost since [`Meter::start`], its CPU being what this process's
    /// children waited for meanwhile used: call right after they are
    /// reaped.
    pub fn stop(self) -> Result<Cost> {
        let wall = self.start.elapsed();
        Ok(Cost {
            wall,
            cpu: children_cpu()?.saturating_sub(self.children),
            machine_cpu: machine_cpu()?.saturating_sub(self.machine),
        })
    }
}

/// Runs `cmd` within `limit`; its cost is its wall time and the CPU of it
/// and the descendants it waited for.
pub fn measured(cmd: &mut Command, limit: Duration) -> Result<(Output, Cost)> {
    let meter = Meter::start()?;
    let out = command::output(cmd, limit)?;
    Ok((out, meter.stop()?))
}

/// CPU of this process's children that have been waited for.
fn children_cpu() -> Result<Duration> {
    // cutime and cstime: fields 16 and 17.
    proc_stat_ticks("self", &[16, 17])
}

/// CPU time of all processes on this machine so far, all cores: the busy
/// columns of `/proc/stat`'s `cpu` line (all but idle and iowait).
pub fn machine_cpu() -> Result<Duration> {
    let text = fs::read_to_string("/proc/stat").context("failed to read /proc/stat")?;
    let ticks = busy_ticks(&text).context("unexpected /proc/stat")?;
    ticks_to_duration(ticks)
}

/// Gets the machine ready for a timed command: dirty pages written back,
/// then the machine quiet. Neither an earlier command's write-back nor what
/// it left running (sshd closing fifty sessions after pdsh, a stopped
/// daemon's clients letting go) is billed to the next one, whichever tool
/// that is. Failing to is worth a warning only.
pub fn settle() {
    match command::checked(&mut Command::new("sync"), Duration::from_secs(120)) {
        Ok(_) => {}
        Err(e) => {
            warn!(cause = %format!("{e:#}"), "sync failed; timings may include earlier write-back")
        }
    }
    if let Err(e) = wait_quiet() {
        warn!(cause = %format!("{e:#}"), "timings may include what earlier commands left running");
    }
}

/// How long one look at the machine's load lasts.
const QUIET_LOOK: Duration = Duration::from_millis(200);

/// The share of all cores that still counts as quiet.
const QUIET_BUSY: f64 = 0.1;

/// How long to wait for quiet at most.
const QUIET_LIMIT: Duration = Duration::from_secs(5);

/// Waits until one [`QUIET_LOOK`] in which all cores together were busy
/// under [`QUIET_BUSY`] of it; an error after [`QUIET_LIMIT`].
fn wait_quiet() -> Result<()> {
    let cores = thread::available_parallelism().map_or(1, usize::from) as f64;
    let started = Instant::now();
    let mut before = machine_cpu()?;
    loop {
        thread::sleep(QUIET_LOOK);
        let now = machine_cpu()?;
        let busy = (now - before).as_secs_f64() / (QUIET_LOOK.as_secs_f64() * cores);
        if busy < QUIET_BUSY {
            return Ok(());
        }
        ensure!(
            started.elapsed() < QUIET_LIMIT,
            "the machine was still {:.0}% busy after {QUIET_LIMIT:?}",
            busy * 100.0
        );
        before = now;
    }
}

/// user nice system idle iowait irq softirq steal (guest time is in user).
fn busy_ticks(proc_stat: &str) -> Result<u64> {
    let line = proc_stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line")?;
    let values = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .context("a non-number in the cpu line")?;
    ensure!(values.len() == 8, "a cpu line of {} columns", values.len());
    Ok(values[0] + values[1] + values[2] + values[5] + values[6] + values[7])
}

/// CPU of process `pid` so far, all its threads.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    // utime and stime: fields 14 and 15.
    proc_stat_ticks(&pid.to_string(), &[14, 15])
}

/// The sum of fields `fields` (numbered as in proc(5), from 1) of
/// `/proc/<pid>/stat`, clock ticks as a duration.
fn proc_stat_ticks(pid: &str, fields: &[usize]) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    let ticks = stat_fields_sum(&text, fields).with_context(|| format!("unexpected {path}"))?;
    ticks_to_duration(ticks)
}

fn ticks_to_duration(ticks: u64) -> Result<Duration> {
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks()?))
}

/// Sums fields of a `/proc/<pid>/stat` line. The second field, the command
/// name in parentheses, may hold spaces: fields are counted after its `)`.
fn stat_fields_sum(text: &str, fields: &[usize]) -> Result<u64> {
    let (_, rest) = text
        .rsplit_once(')')
        .context("no ')' after the command name")?;
    let values: Vec<&str> = rest.split_whitespace().collect();
    fields.iter().try_fold(0, |sum, &f| {
        let value = f
            .checked_sub(3)
            .and_then(|i| values.get(i))
            .with_context(|| format!("no field {f}"))?;
        let value: u64 = value
            .parse()
            .with_context(|| format!("field {f} is {value:?}"))?;
        Ok(sum + value)
    })
}

/// Clock ticks per second (`getconf CLK_TCK`), read once.
fn clock_ticks() -> Result<u64> {
    static TICKS: OnceLock<u64> = OnceLock::new();
    if let Some(&t) = TICKS.get() {
        return Ok(t);
    }
    let out = command::checked(
        Command::new("getconf").arg("CLK_TCK"),
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))?;
    ensure!(ticks > 0, "getconf CLK_TCK printed 0");
    Ok(*TICKS.get_or_init(|| ticks))
}

/// The first line `program arg` prints (on stdout or stderr, as `ssh -V`
/// does), or an error naming the package to install.
pub fn tool_version(program: &str, arg: &str, package: &str) -> Result<String> {
    let out = match command::output(Command::new(program).arg(arg), Duration::from_secs(20)) {
        Ok(out) => out,
        Err(e) if command::is_not_found(&e) => {
            bail!("{program} not found: apt-get install {package} (or run scripts/deps)")
        }
        Err(e) => return Err(e),
    };
    let text = [out.stdout, out.stderr].concat();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or(program)
        .trim()
        .to_owned())
}

/// Runs `f` for every client of `lab`, a few at a time; the first error
/// wins.
pub fn on_every_client(lab: &Lab, f: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    let indices: Vec<usize> = (0..lab.clients().len()).collect();
    on_clients(&indices, f)
}

/// [`on_every_client`] for the clients `indices`.
pub fn on_clients(indices: &[usize], f: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    for chunk in indices.chunks(PARALLEL_CLIENTS) {
        thread::scope(|s| {
            let f = &f;
            let runs: Vec<_> = chunk.iter().map(|&i| s.spawn(move || f(i))).collect();
            runs.into_iter()
                .try_for_each(|run| run.join().expect("client task panicked"))
        })?;
    }
    Ok(())
}

/// The key exchanges the peers run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kex {
    /// OpenSSH's default list (OpenSSH 9: sntrup761x25519 first).
    OpensshDefault,
    /// `-o KexAlgorithms=curve25519-sha256`, what cfi asks for.
    Curve25519,
}

impl Kex {
    /// Both, in report order.
    pub const ALL: [Kex; 2] = [Kex::OpensshDefault, Kex::Curve25519];

    /// The algorithm of [`Kex::Curve25519`].
    pub const CURVE25519: &'static str = "curve25519-sha256";

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Kex::OpensshDefault => "default kex",
            Kex::Curve25519 => "curve25519",
        }
    }

    fn ssh_option(self) -> Option<String> {
        match self {
            Kex::OpensshDefault => None,
            Kex::Curve25519 => Some(format!("KexAlgorithms={}", Kex::CURVE25519)),
        }
    }
}

/// The options every peer hands ssh: the lab's own (see [`Lab::ssh`]: its
/// key, no user config, host key checks off, batch mode, a connect
/// timeout) and the key exchange under test.
#[derive(Debug, Clone)]
pub struct SshOptions {
    args: Vec<String>,
}

impl SshOptions {
    /// The options to reach `lab`'s clients with `kex`.
    pub fn new(lab: &Lab, kex: Kex) -> Result<Self> {
        let ssh = lab.ssh(0);
        let mut args = ssh
            .get_args()
            .map(|a| a.to_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .context("the lab's ssh options are not UTF-8")?;
        // Lab::ssh ends with the destination; the peers add their own.
        match args.pop() {
            Some(dest) if dest.starts_with("root@") => {}
            other => bail!("Lab::ssh no longer ends with root@HOST: {other:?}"),
        }
        if let Some(option) = kex.ssh_option() {
            args.extend(["-o".to_owned(), option]);
        }
        // pdsh, clush and rsync -e split their ssh options at whitespace.
        if let Some(bad) = args.iter().find(|a| a.contains(char::is_whitespace)) {
            bail!("an ssh option with whitespace cannot be passed through pdsh: {bad:?}");
        }
        Ok(Self { args })
    }

    /// One by one, for `ssh` itself.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// As one string, for `PDSH_SSH_ARGS_APPEND`, `clush -o` and `rsync -e`.
    pub fn joined(&self) -> String {
        self.args.join(" ")
    }
}

/// The dsh-style tools cfi exec is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DshTool {
    /// `pdsh -R ssh`.
    Pdsh,
    /// ClusterShell's `clush`.
    Clush,
}

impl DshTool {
    /// Both, in report order.
    pub const ALL: [DshTool; 2] = [DshTool::Pdsh, DshTool::Clush];

    /// The program's name.
    pub fn name(self) -> &'static str {
        match self {
            DshTool::Pdsh => "pdsh",
            DshTool::Clush => "clush",
        }
    }

    /// Its version, or an error naming the Debian package to install.
    pub fn version(self) -> Result<String> {
        match self {
            DshTool::Pdsh => tool_version("pdsh", "-V", "pdsh"),
            DshTool::Clush => tool_version("clush", "--version", "clustershell"),
        }
    }
}

/// pdsh or clush, set to run commands on a lab's hosts.
#[derive(Debug, Clone)]
pub struct Dsh {
    tool: DshTool,
    ssh: SshOptions,
    /// `ip1,ip2,…`.
    hosts: String,
    /// The only clush.conf clush reads.
    clush_conf: PathBuf,
}

impl Dsh {
    /// `tool` reaching `hosts` with `ssh`; clush's configuration goes into
    /// `workdir`.
    pub fn new(tool: DshTool, ssh: SshOptions, hosts: &[Client], workdir: &Path) -> Result<Self> {
        let clush_conf = workdir.join("clush.conf");
        if tool == DshTool::Clush {
            // clush otherwise reads /etc/clustershell and the user's
            // config, whose fanout, timeouts and confdir would change what
            // is measured.
            fs::write(
                &clush_conf,
                format!(
                    "[Main]\nfanout: {FANOUT}\nconnect_timeout: 15\ncommand_timeout: 0\n\
                     color: never\nmaxrc: yes\nconfdir:\n"
                ),
            )
            .with_context(|| format!("failed to write {}", clush_conf.display()))?;
        }
        let hosts = hosts
            .iter()
            .map(|c| c.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            tool,
            ssh,
            hosts,
            clush_conf,
        })
    }

    /// Runs `remote` (a shell command line) on every host. Fails unless
    /// every host ran it and returned 0: both tools are asked to exit with
    /// the largest remote status (`-S`), and ssh's 255 counts.
    pub fn run(&self, remote: &str) -> Result<(Output, Cost)> {
        let mut cmd = self.command(remote);
        let (out, cost) = measured(&mut cmd, EXEC_LIMIT)?;
        command::ensure_success(&cmd, &out)?;
        if !out.stderr.is_empty() {
            warn!(
                tool = self.tool.name(),
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "succeeded with messages on stderr"
            );
        }
        Ok((out, cost))
    }

    fn command(&self, remote: &str) -> Command {
        let fanout = FANOUT.to_string();
        match self.tool {
            DshTool::Pdsh => {
                let mut cmd = Command::new("pdsh");
                cmd.args(["-R", "ssh", "-f", &fanout, "-S", "-l", "root", "-w"])
                    .arg(&self.hosts)
                    .arg(remote)
                    .env("PDSH_SSH_ARGS_APPEND", self.ssh.joined())
                    .env_remove("PDSH_SSH_ARGS")
                    .env_remove("PDSH_RCMD_TYPE")
                    .env_remove("WCOLL");
                cmd
            }
            DshTool::Clush => {
                let mut cmd = Command::new("clush");
                cmd.arg("--conf")
                    .arg(&self.clush_conf)
                    .args(["-n", "-S", "-f", &fanout, "-l", "root", "-w"])
                    .arg(&self.hosts)
                    .arg("-o")
                    .arg(self.ssh.joined())
                    .arg(remote)
                    .env_remove("CLUSTERSHELL_CFGDIR");
                cmd
            }
        }
    }
}

/// Reads `host: line` output (pdsh's and clush's) into a map from host to
/// its lines.
pub fn lines_by_host(stdout: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        if let Some((host, text)) = line.split_once(": ") {
            map.entry(host.to_owned())
                .or_default()
                .push(text.to_owned());
        }
    }
    map
}

/// `rsync -a --delete` of the contents of `source` into `dest` on every
/// one of `hosts` over ssh, all at once (the parallel loop a person writes:
/// `for h in …; do rsync … & done; wait`). Fails unless every rsync
/// succeeds.
pub fn rsync_push(source: &Path, hosts: &[Client], dest: &str, ssh: &SshOptions) -> Result<Cost> {
    let mut src = source.as_os_str().to_owned();
    src.push("/");
    let shell = format!("ssh {}", ssh.joined());
    let commands: Vec<Command> = hosts
        .iter()
        .map(|c| {
            let mut cmd = Command::new("rsync");
            cmd.args(["-a", "--delete", "-e", &shell])
                .arg(&src)
                .arg(format!("root@{}:{dest}/", c.addr));
            cmd
        })
        .collect();
    let meter = Meter::start()?;
    let outs: Vec<(Command, Result<Output>)> = thread::scope(|s| {
        let runs: Vec<_> = commands
            .into_iter()
            .map(|mut cmd| {
                s.spawn(move || {
                    let out = command::output(&mut cmd, SYNC_LIMIT);
                    (cmd, out)
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("rsync thread panicked"))
            .collect()
    });
    let cost = meter.stop()?;
    for (cmd, out) in outs {
        command::ensure_success(&cmd, &out?)?;
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime …
        let line = "42 (a) b) S 1 42 42 0 -1 4194560 10 0 0 0 7 3 120 80 20 0\n";
        assert_eq!(stat_fields_sum(line, &[14, 15]).unwrap(), 10);
        assert_eq!(stat_fields_sum(line, &[16, 17]).unwrap(), 200);
        assert!(stat_fields_sum(line, &[60]).is_err());
        assert!(stat_fields_sum("no parens", &[14]).is_err());
    }

    #[test]
    fn children_cpu_grows_with_a_busy_child() {
        let (_, cost) = measured(
            Command::new("sh").args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"]),
            Duration::from_secs(60),
        )
        .unwrap();
        // Only a lower bound: other tests reap children meanwhile, and
        // their CPU lands in the same counters.
        assert!(cost.cpu > Duration::ZERO, "{cost:?}");
        assert!(process_cpu(std::process::id()).is_ok());
    }

    #[test]
    fn busy_columns_of_proc_stat() {
        let text = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        assert_eq!(busy_ticks(text).unwrap(), 25);
        assert!(busy_ticks("cpu  1 2\n").is_err());
        assert!(machine_cpu().unwrap() > Duration::ZERO);
    }

    #[test]
    fn dsh_output_by_host() {
        let map = lines_by_host(b"10.0.0.2: c0\n10.0.0.3: c1\n10.0.0.2: more: text\n");
        assert_eq!(map["10.0.0.2"], ["c0", "more: text"]);
        assert_eq!(map["10.0.0.3"], ["c1"]);
    }
}
