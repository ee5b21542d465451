//! The lab: real client hosts for end-to-end tests. Each client is a docker
//! container of the [`crate::image`] image on a docker network of the lab's
//! own, running OpenSSH's sshd as a real host would, reachable from the
//! test as `root` with a key pair the lab makes.
//!
//! The network is `--internal`: clients reach each other and the host (the
//! bridge's gateway address, [`Lab::gateway`]), nothing beyond, so a test
//! cannot talk to the outside world by accident. Multicast crosses it, so
//! clients and the host see each other's mDNS: a cfi-server daemon on the
//! host keeps its mDNS to [`Lab::bridge_interface`] (see [`crate::bridge`]
//! for the firewall rule it takes between clients). Node loss and
//! network cuts are docker's own (`docker stop`/`kill`, `docker network
//! disconnect`), per DESIGN.md.
//!
//! A client may start with more than sshd ([`ClientSpec`]): cfi's client
//! config, avahi, and the project's binaries mounted in place, in which
//! case its start-up runs `cfi-announcer` and passes it docker stop's
//! SIGTERM.
//!
//! Dropping a [`Lab`] removes its containers and network. A test process
//! that dies without unwinding cannot do that; the next [`Lab::start`]
//! removes what such a process left (every container and network carries
//! an owner label: this boot's id and the owner's pid).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tracing::{debug, warn};

pub use crate::client_spec::ClientSpec;
use crate::debs::{self, Packages};
use crate::image::{self, ANNOUNCER_LOG_PATH, AUTHORIZED_KEYS_ENV};
use crate::lab_disk::LabDisk;
use crate::pipe_budget::PipeBudget;
use crate::{bridge, command, docker, leftovers};

/// Where [`Lab::install_agent`] puts `cfi-agent` in a client.
pub const AGENT_PATH: &str = "/usr/lib/cfi/cfi-agent";

/// How long a started (or reconnected) client gets to answer on port 22.
const SSHD_LIMIT: Duration = Duration::from_secs(20);

/// How many clients are created at once (the machine may have 2 cores).
const PARALLEL_STARTS: usize = 4;

/// One client host of a [`Lab`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Container name, also the host's name (`uname -n`):
    /// `<network>-c<index>`.
    pub name: String,
    /// The client's address on the lab network: where its sshd listens.
    /// After [`Lab::stop`] or [`Lab::disconnect`] it is the last address
    /// the client had (nothing answers there).
    pub addr: IpAddr,
}

/// A lab of client containers on a network of its own; removed on drop.
#[derive(Debug)]
pub struct Lab {
    network: String,
    /// The network's Linux bridge on the host, named by the lab.
    bridge: String,
    /// Whether the lab added [`bridge::allow_multicast`]'s rule, which drop
    /// removes.
    multicast_rule: bool,
    image: String,
    /// The packages installed in [`Lab::image`], if any.
    packages: Option<&'static Packages>,
    /// [`leftovers::OWNER_LABEL`]'s value on the lab's containers.
    owner: String,
    /// Container names, known before the containers exist, so that drop
    /// removes whatever a failed start left.
    names: Vec<String>,
    /// Containers of failed [`Lab::add_client`] calls that could not be
    /// removed then: drop tries again.
    stray: Vec<String>,
    clients: Vec<Client>,
    /// `id` and `id.pub`, the key root accepts in every client.
    keys: TempDir,
    /// The contents of `id.pub`.
    public_key: String,
    /// The image's glibc, read once from a client.
    image_glibc: OnceLock<(u32, u32)>,
    /// The disk of clients with [`ClientSpec::disks`], once one has them;
    /// dropped (unmounted) after [`Drop`] removed the clients.
    disk: Option<LabDisk>,
    /// The kernel's per-user pipe budget, raised for the lab's hosts while
    /// they run and put back after [`Drop`] removed them.
    pipes: PipeBudget,
}

impl Lab {
    /// Starts `n` clients on a new network and waits until every one's sshd
    /// answers. Builds the image first if it does not exist yet (minutes;
    /// needs root and debootstrap); fails with what to install or start
    /// when docker is not usable.
    pub fn start(n: usize) -> Result<Lab> {
        Lab::start_with(vec![ClientSpec::default(); n])
    }

    /// [`Lab::start`] with a client per spec, client `i` as `specs[i]`
    /// says. Fails before any container exists when a spec is bad (a
    /// binary to mount that is not there), and after the start when a
    /// mounted binary's glibc needs are newer than the image's.
    ///
    /// With [`debs::DEBS_ENV`] set, the clients run cfi's packages
    /// (see [`crate::debs`]): cfi-client is installed in their image, and
    /// specs that mount its own files leave them out.
    pub fn start_with(specs: Vec<ClientSpec>) -> Result<Lab> {
        Lab::start_on(debs::configured()?, specs)
    }

    /// [`Lab::start`] on the lab image without cfi's packages, whatever
    /// [`debs::DEBS_ENV`] says: for tests that install them themselves.
    pub fn start_clean(n: usize) -> Result<Lab> {
        Lab::start_on(None, vec![ClientSpec::default(); n])
    }

    fn start_on(packages: Option<&'static Packages>, specs: Vec<ClientSpec>) -> Result<Lab> {
        let options = specs
            .iter()
            .map(|spec| spec.docker_args(packages))
            .collect::<Result<Vec<_>>>()?;
        let base = image::ensure_image()?;
        let image = match packages {
            Some(p) => p.client_image(&base)?,
            None => base,
        };
        leftovers::remove();
        let (network, bridge_name) = unique_names();
        // Named after the network, so leftovers::remove finds it too.
        let keys = tempfile::Builder::new()
            .prefix(&format!("{network}-keys-"))
            .tempdir()
            .context("failed to create a temporary dir for the lab's key")?;
        let public_key = generate_key(&keys.path().join("id"))?;
        let owner = leftovers::owner_label();
        docker::run(&[
            "network",
            "create",
            "--internal",
            // A name of the lab's, so tests know it without asking docker.
            "--opt",
            &format!("com.docker.network.bridge.name={bridge_name}"),
            "--label",
            &format!("{}={owner}", leftovers::OWNER_LABEL),
            &network,
        ])
        .with_context(|| format!("failed to create the lab network {network}"))?;
        let mut lab = Lab {
            names: Vec::new(),
            stray: Vec::new(),
            network,
            bridge: bridge_name,
            multicast_rule: false,
            image,
            packages,
            owner,
            clients: Vec::new(),
            keys,
            public_key,
            image_glibc: OnceLock::new(),
            disk: None,
            pipes: PipeBudget::default(),
        };
        lab.pipes.cover(specs.len());
        match bridge::allow_multicast(&lab.bridge, &lab.network) {
            Ok(added) => lab.multicast_rule = added,
            // Not fatal: only mDNS between two clients needs it, and a
            // docker-group user may run the lab without root.
            Err(e) => warn!(
                bridge = lab.bridge,
                cause = %format!("{e:#}"),
                "failed to let multicast across the lab bridge: mDNS between clients will be \
                 dropped (run as root)"
            ),
        }
        lab.names = (0..specs.len())
            .map(|i| format!("{}-c{i}", lab.network))
            .collect();
        let mut options = options;
        for (i, spec) in specs.iter().enumerate() {
            let disks = lab.disk_args(&lab.names[i].clone(), spec)?;
            options[i].extend(disks);
        }
        let starts: Vec<_> = lab.names.iter().zip(&options).collect();
        for chunk in starts.chunks(PARALLEL_STARTS) {
            thread::scope(|s| {
                let runs: Vec<_> = chunk
                    .iter()
                    .map(|(name, options)| s.spawn(|| lab.run_container(name, options)))
                    .collect();
                runs.into_iter()
                    .try_for_each(|run| run.join().expect("docker run thread panicked"))
            })?;
        }
        for i in 0..specs.len() {
            let name = lab.names[i].clone();
            let addr = lab.address(&name)?;
            lab.clients.push(Client { name, addr });
        }
        for (i, spec) in specs.iter().enumerate() {
            lab.wait_for_sshd(i)?;
            if !spec.binaries.is_empty() {
                lab.check_glibc(i)?;
            }
        }
        Ok(lab)
    }

    /// Starts one more client, as `spec` says, on the lab's network, waits
    /// for its sshd and returns its index, for every per-client call. A
    /// client that fails to start is removed again.
    pub fn add_client(&mut self, spec: ClientSpec) -> Result<usize> {
        let mut options = spec.docker_args(self.packages)?;
        let i = self.clients.len();
        let name = format!("{}-c{i}", self.network);
        options.extend(self.disk_args(&name, &spec)?);
        self.pipes.cover(i + 1);
        self.names.push(name.clone());
        let started = self.run_container(&name, &options).and_then(|()| {
            let addr = self.address(&name)?;
            self.clients.push(Client {
                name: name.clone(),
                addr,
            });
            self.wait_for_sshd(i)?;
            if !spec.binaries.is_empty() {
                self.check_glibc(i)?;
            }
            Ok(())
        });
        if let Err(e) = started {
            self.clients.truncate(i);
            self.names.truncate(i);
            if docker::run(&["rm", "--force", "--volumes", &name]).is_err() {
                self.stray.push(name);
            }
            return Err(e);
        }
        Ok(i)
    }

    /// The docker network's name, `cfi-lab-<pid>-<random>`.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The image the clients run.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// All clients, by index.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Client `i`. Panics when there is no such client, as indexing does.
    pub fn client(&self, i: usize) -> &Client {
        &self.clients[i]
    }

    /// The private key root accepts in every client (its `.pub` is beside).
    pub fn key(&self) -> PathBuf {
        self.keys.path().join("id")
    }

    /// An `ssh root@<client i>` command with the lab's key, host key checks
    /// off (clients make new host keys per lab), no user config, no
    /// prompts, and a 3 s connect timeout. Append the remote command and run
    /// it with [`command::output`], which bounds the whole call.
    pub fn ssh(&self, i: usize) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(self.key())
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=3",
            ])
            .arg(format!("root@{}", self.clients[i].addr));
        cmd
    }

    /// Stops client `i` (`docker stop`: SIGTERM, SIGKILL after 2 s): node
    /// loss with a clean shutdown.
    pub fn stop(&self, i: usize) -> Result<()> {
        self.docker_on(i, &["stop", "-t", "2"])
    }

    /// Kills client `i` (`docker kill`): node loss without a goodbye.
    pub fn kill(&self, i: usize) -> Result<()> {
        self.docker_on(i, &["kill"])
    }

    /// Starts client `i` again after [`Lab::stop`] or [`Lab::kill`] and
    /// waits for its sshd. Its address may have changed; its host key has
    /// not.
    pub fn start_client(&mut self, i: usize) -> Result<()> {
        self.docker_on(i, &["start"])?;
        self.refresh(i)
    }

    /// Cuts client `i` off the lab network (`docker network disconnect`);
    /// it keeps running.
    pub fn disconnect(&self, i: usize) -> Result<()> {
        let name = &self.names[i];
        docker::run(&["network", "disconnect", &self.network, name])
            .with_context(|| format!("failed to disconnect {name}"))?;
        Ok(())
    }

    /// Puts client `i` back on the lab network and waits for its sshd to
    /// answer. Docker may give it another address.
    pub fn reconnect(&mut self, i: usize) -> Result<()> {
        let name = &self.names[i];
        docker::run(&["network", "connect", &self.network, name])
            .with_context(|| format!("failed to reconnect {name}"))?;
        self.refresh(i)
    }

    /// Runs `argv` in client `i` (`docker exec`, as root) within 60 s. A
    /// non-zero exit is in the returned status, not an error.
    pub fn exec(&self, i: usize, argv: &[&str]) -> Result<Output> {
        self.exec_limited(i, argv, docker::LIMIT)
    }

    /// [`Lab::exec`] with a time limit of the caller's. At the limit the
    /// docker client is killed; the program in the container is not (docker
    /// does not end an exec whose client went away): it goes with the
    /// container.
    pub fn exec_limited(&self, i: usize, argv: &[&str], limit: Duration) -> Result<Output> {
        let mut cmd = docker::command(&["exec", &self.names[i]]);
        cmd.args(argv);
        command::output(&mut cmd, limit)
    }

    /// Runs `script` with `sh -c` in client `i`; its stdout, or an error
    /// quoting its stderr when it fails.
    pub fn sh(&self, i: usize, script: &str) -> Result<String> {
        let out = self.exec(i, &["sh", "-c", script])?;
        if !out.status.success() {
            bail!(
                "`{script}` failed in {} ({}): {}",
                self.names[i],
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The contents of `path` in client `i`.
    pub fn read_file(&self, i: usize, path: &str) -> Result<Vec<u8>> {
        let out = self.exec(i, &["cat", "--", path])?;
        if !out.status.success() {
            bail!(
                "failed to read {path} in {}: {}",
                self.names[i],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// Copies `host_path` (a file or a directory) to `container_path` in
    /// client `i` (`docker cp`; the parent must exist there). Works on a
    /// stopped client too.
    pub fn copy_in(&self, i: usize, host_path: &Path, container_path: &str) -> Result<()> {
        let name = &self.names[i];
        let mut cmd = docker::command(&["cp"]);
        cmd.arg(host_path).arg(format!("{name}:{container_path}"));
        command::checked(&mut cmd, docker::LIMIT).with_context(|| {
            format!(
                "failed to copy {} to {name}:{container_path}",
                host_path.display()
            )
        })?;
        Ok(())
    }

    /// Appends `line` (options, key type, key, comment: one `authorized_keys`
    /// line, such as cfi's forced command) to root's authorized keys in
    /// client `i`; the lab's own key stays. Until the client starts again:
    /// its start-up writes the file afresh, with the lab's key alone.
    pub fn authorize(&self, i: usize, line: &str) -> Result<()> {
        if line.contains('\n') {
            bail!("an authorized_keys line with a newline: {line:?}");
        }
        // The line travels as an argument, so its quotes need no escaping.
        let out = self.exec(
            i,
            &[
                "sh",
                "-c",
                "printf '%s\\n' \"$1\" >> /root/.ssh/authorized_keys",
                "sh",
                line,
            ],
        )?;
        if !out.status.success() {
            bail!(
                "failed to add a key to root's authorized_keys in {}: {}",
                self.names[i],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Installs the host-built `cfi-agent` at `binary` (see
    /// [`built_binary`]) as [`AGENT_PATH`] in client `i`, which must be
    /// running. The binary is linked against the host's glibc: this fails
    /// when that is newer than the image's, rather than letting the agent
    /// fail later on a missing symbol.
    ///
    /// Nothing to do when `binary` is the packaged agent that the lab's
    /// image has installed there already ([`crate::debs`]).
    pub fn install_agent(&self, i: usize, binary: &Path) -> Result<()> {
        if self
            .packages
            .is_some_and(|p| p.installs(binary, AGENT_PATH))
        {
            return Ok(());
        }
        self.check_glibc(i)?;
        self.copy_in(i, binary, AGENT_PATH)?;
        self.sh(i, &format!("chmod 0755 {AGENT_PATH}"))?;
        Ok(())
    }

    /// [`Lab::install_agent`] in every client.
    pub fn install_agent_everywhere(&self, binary: &Path) -> Result<()> {
        (0..self.clients.len()).try_for_each(|i| self.install_agent(i, binary))
    }

    /// Copies `container_path` (a file or a directory) of client `i` to
    /// `host_path` (`docker cp`). Works on a stopped client too.
    pub fn copy_out(&self, i: usize, container_path: &str, host_path: &Path) -> Result<()> {
        let name = &self.names[i];
        let mut cmd = docker::command(&["cp"]);
        cmd.arg(format!("{name}:{container_path}")).arg(host_path);
        command::checked(&mut cmd, docker::LIMIT).with_context(|| {
            format!(
                "failed to copy {name}:{container_path} to {}",
                host_path.display()
            )
        })?;
        Ok(())
    }

    /// The host-side name of the lab network's Linux bridge, the interface
    /// a daemon on the host keeps its mDNS to (the lab names it
    /// `cfi-lab-<random>`, which fits IFNAMSIZ).
    pub fn bridge_interface(&self) -> Result<String> {
        if !bridge::exists(&self.bridge) {
            bail!(
                "the bridge {} of lab network {} is not there",
                self.bridge,
                self.network
            );
        }
        Ok(self.bridge.clone())
    }

    /// The host's address on the lab network (the bridge's): where clients
    /// reach a daemon on the host.
    pub fn gateway(&self) -> Result<Ipv4Addr> {
        let text = docker::stdout(&[
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
            &self.network,
        ])
        .with_context(|| format!("failed to inspect the lab network {}", self.network))?;
        text.split_whitespace()
            .find_map(|word| word.parse().ok())
            .with_context(|| {
                format!(
                    "no IPv4 gateway on the lab network {}: {text:?}",
                    self.network
                )
            })
    }

    /// Client `i`'s `docker logs`: sshd's log and the start-up script's
    /// notes, across restarts. For failure messages.
    pub fn logs(&self, i: usize) -> Result<String> {
        container_logs(&self.names[i], &[])
    }

    /// What the announcer that client `i`'s start-up ran has written
    /// ([`ANNOUNCER_LOG_PATH`], across restarts); empty when it never ran.
    /// Works on a stopped client too. For failure messages.
    pub fn announcer_log(&self, i: usize) -> Result<String> {
        let text = self.stored_file(i, ANNOUNCER_LOG_PATH)?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Client `i`'s machine id (`/etc/machine-id`, written at its first
    /// start: 32 hex digits), trimmed. Works on a stopped client too.
    pub fn machine_id(&self, i: usize) -> Result<String> {
        let text = self
            .stored_file(i, "/etc/machine-id")?
            .with_context(|| format!("{} has no /etc/machine-id", self.names[i]))?;
        Ok(String::from_utf8_lossy(&text).trim().to_owned())
    }

    /// `docker run`s client `name` with `options` (from
    /// [`ClientSpec::docker_args`]).
    /// The `docker run` options that give client `name` the disks `spec`
    /// asks for: directories of the lab's disk, set up with the first, or
    /// docker volumes where it cannot be (not root, no loop device).
    fn disk_args(&mut self, name: &str, spec: &ClientSpec) -> Result<Vec<String>> {
        if spec.disks.is_empty() {
            return Ok(Vec::new());
        }
        if self.disk.is_none() {
            match LabDisk::create(&self.network) {
                Ok(disk) => self.disk = Some(disk),
                Err(e) => warn!(
                    cause = %format!("{e:#}"),
                    "no journaled lab disk: client disks are docker volumes on this machine's \
                     file system (without a journal there, a create after a big delete is slow)"
                ),
            }
        }
        let mut args = Vec::new();
        for path in &spec.disks {
            args.push("--mount".to_owned());
            args.push(match &self.disk {
                Some(disk) => format!(
                    "type=bind,src={},dst={path}",
                    disk.dir_for(name, path)?.display()
                ),
                None => format!("type=volume,dst={path}"),
            });
        }
        Ok(args)
    }

    fn run_container(&self, name: &str, options: &[String]) -> Result<()> {
        let label = format!("{}={}", leftovers::OWNER_LABEL, self.owner);
        let keys = format!("{AUTHORIZED_KEYS_ENV}={}", self.public_key);
        let mut args = vec![
            "run",
            "--detach",
            // tini as PID 1: forwards docker stop's SIGTERM, reaps orphans.
            "--init",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            &self.network,
            "--label",
            &label,
            "--env",
            &keys,
        ];
        args.extend(options.iter().map(String::as_str));
        args.push(&self.image);
        docker::run(&args).with_context(|| format!("failed to start lab client {name}"))?;
        Ok(())
    }

    /// The contents of file `path` in client `i`, running or stopped, or
    /// `None` when there is no such file.
    fn stored_file(&self, i: usize, path: &str) -> Result<Option<Vec<u8>>> {
        let dir = tempfile::tempdir().context("failed to create a temporary dir")?;
        let copy = dir.path().join("file");
        let name = &self.names[i];
        let mut cmd = docker::command(&["cp"]);
        cmd.arg(format!("{name}:{path}")).arg(&copy);
        let out = command::output(&mut cmd, docker::LIMIT)?;
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Could not find")
        {
            return Ok(None);
        }
        command::ensure_success(&cmd, &out)
            .with_context(|| format!("failed to copy {path} out of {name}"))?;
        fs::read(&copy).map(Some).with_context(|| {
            format!(
                "failed to read {path} of {name} (copied to {})",
                copy.display()
            )
        })
    }

    fn docker_on(&self, i: usize, args: &[&str]) -> Result<()> {
        let name = &self.names[i];
        let mut all = args.to_vec();
        all.push(name);
        docker::run(&all).with_context(|| format!("failed to {} {name}", args[0]))?;
        Ok(())
    }

    /// Reads client `i`'s address again and waits for its sshd.
    fn refresh(&mut self, i: usize) -> Result<()> {
        let addr = self.address(&self.names[i])?;
        self.clients[i].addr = addr;
        self.wait_for_sshd(i)
    }

    /// The address of container `name` on the lab network.
    fn address(&self, name: &str) -> Result<IpAddr> {
        // `range` rather than `index`: a container off the network gives an
        // empty answer instead of a template error.
        let format = format!(
            "{{{{range $net, $ep := .NetworkSettings.Networks}}}}\
             {{{{if eq $net \"{}\"}}}}{{{{$ep.IPAddress}}}}{{{{end}}}}{{{{end}}}}",
            self.network
        );
        let text = docker::stdout(&["inspect", "--format", &format, name])?;
        if text.is_empty() {
            bail!("{name} has no address on the lab network {}", self.network);
        }
        text.parse()
            .with_context(|| format!("docker inspect gave {name} a bad address {text:?}"))
    }

    /// Waits until client `i` answers on port 22 with an SSH banner.
    fn wait_for_sshd(&self, i: usize) -> Result<()> {
        let Client { name, addr } = &self.clients[i];
        let target = SocketAddr::new(*addr, 22);
        let deadline = Instant::now() + SSHD_LIMIT;
        let started = Instant::now();
        loop {
            let answer = ssh_banner(target);
            match answer {
                Ok(()) => {
                    debug!(client = name, %addr, elapsed = ?started.elapsed(), "sshd answers");
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    let logs = container_logs(name, &["--tail", "20"])
                        .unwrap_or_else(|e| format!("(no logs: {e:#})"));
                    bail!(
                        "sshd of {name} not answering at {target} within {SSHD_LIMIT:?}: {e:#}\n\
                         docker logs {name}:\n{logs}"
                    );
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The image's glibc version, from client `i`'s `getconf`, against the
    /// host's.
    fn check_glibc(&self, i: usize) -> Result<()> {
        let image = match self.image_glibc.get() {
            Some(v) => *v,
            None => {
                let text = self.sh(i, "getconf GNU_LIBC_VERSION")?;
                let v = parse_glibc(&text)?;
                *self.image_glibc.get_or_init(|| v)
            }
        };
        let host = host_glibc()?;
        if host > image {
            bail!(
                "the host's glibc {}.{} is newer than the lab image's {}.{}: binaries built \
                 here may need symbols the clients lack; build cfi on Debian 12",
                host.0,
                host.1,
                image.0,
                image.1
            );
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.names.is_empty() || !self.stray.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(self.names.iter().chain(&self.stray).map(String::as_str));
            if let Err(e) = docker::run(&args) {
                warn!(network = self.network, cause = %format!("{e:#}"), "failed to remove lab clients");
            }
        }
        if self.multicast_rule {
            if let Err(e) = bridge::remove_multicast_rule(&self.bridge, &self.network) {
                warn!(network = self.network, cause = %format!("{e:#}"), "failed to remove the lab's multicast rule");
            }
        }
        // After many containers, docker may still be letting go of their
        // endpoints for a moment ("has active endpoints").
        let mut tries = 0;
        while let Err(e) = docker::run(&["network", "rm", &self.network]) {
            tries += 1;
            if tries >= 10 || !format!("{e:#}").contains("active endpoints") {
                warn!(network = self.network, cause = %format!("{e:#}"), "failed to remove lab network");
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Logging for a test that runs a lab: `RUST_LOG`, else info (the lab
/// says what it starts and waits for), through the test harness's capture.
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// The path of the workspace binary `name` built in the same profile as the
/// running test (`target/<profile>/<name>`), or an error saying how to
/// build it. `cargo test` builds the binaries only of the packages it
/// tests: `cargo test --workspace` builds `cfi-agent`, `cargo test -p
/// cfi-lab` does not.
///
/// With [`debs::DEBS_ENV`] set, cfi's binaries are the packages' files
/// instead ([`crate::debs`]).
pub fn built_binary(name: &str) -> Result<PathBuf> {
    if let Some(path) = debs::configured()?.and_then(|p| p.binary(name)) {
        return Ok(path);
    }
    let exe = env::current_exe().context("failed to find the running executable")?;
    // target/<profile>/deps/<test>-<hash>, or target/<profile>/cfi-lab.
    let mut dir = exe.parent().context("executable without a directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps without a parent")?;
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build it first (cargo build --bins, or test with \
             cargo test --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`); returns the public
/// key line.
fn generate_key(path: &Path) -> Result<String> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "cfi-lab", "-f"])
        .arg(path);
    match command::checked(&mut cmd, Duration::from_secs(30)) {
        Ok(_) => {}
        Err(e) if command::is_not_found(&e) => {
            bail!(
                "ssh-keygen not found: the lab needs OpenSSH's client: apt-get install openssh-client"
            )
        }
        Err(e) => return Err(e),
    }
    let public = path.with_extension("pub");
    let line = fs::read_to_string(&public)
        .with_context(|| format!("failed to read {}", public.display()))?;
    Ok(line.trim().to_owned())
}

/// `docker logs [options] name`: the container's stdout, then its stderr
/// (where sshd and the start-up script write).
fn container_logs(name: &str, options: &[&str]) -> Result<String> {
    let mut cmd = docker::command(&["logs"]);
    cmd.args(options).arg(name);
    let out = command::checked(&mut cmd, docker::LIMIT)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Connects to `target` and reads the server's identification string.
fn ssh_banner(target: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))
        .with_context(|| format!("failed to connect to {target}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut banner = [0u8; 8];
    stream
        .read_exact(&mut banner)
        .with_context(|| format!("no SSH banner from {target}"))?;
    if !banner.starts_with(b"SSH-2.0-") {
        bail!(
            "{target} answered {:?}, not SSH",
            String::from_utf8_lossy(&banner)
        );
    }
    Ok(())
}

/// The network's name, `cfi-lab-<pid>-<random>`, unique on this docker
/// daemon in practice and saying which process made it, and its bridge's,
/// `cfi-lab-<random>`: 15 characters, the most a Linux interface name has.
fn unique_names() -> (String, String) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    // RandomState's keys are random per process: a cheap random number
    // without another dependency.
    let mut h = RandomState::new().build_hasher();
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    let random = h.finish() & 0xfff_ffff;
    (
        format!("cfi-lab-{}-{random:07x}", std::process::id()),
        format!("cfi-lab-{random:07x}"),
    )
}

fn host_glibc() -> Result<(u32, u32)> {
    let out = command::checked(
        Command::new("getconf").arg("GNU_LIBC_VERSION"),
        Duration::from_secs(10),
    )?;
    parse_glibc(&String::from_utf8_lossy(&out.stdout))
}

/// `glibc 2.36` → (2, 36).
fn parse_glibc(text: &str) -> Result<(u32, u32)> {
    let version = text
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("unexpected GNU_LIBC_VERSION {text:?}"))?;
    let (major, minor) = version
        .split_once('.')
        .with_context(|| format!("unexpected glibc version {version:?}"))?;
    let number = |s: &str| {
        s.parse::<u32>()
            .with_context(|| format!("unexpected glibc version {version:?}"))
    };
    Ok((number(major)?, number(minor)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions() {
        assert_eq!(parse_glibc("glibc 2.36\n").unwrap(), (2, 36));
        assert!((2, 40) > parse_glibc("glibc 2.36").unwrap());
        assert!(parse_glibc("musl").is_err());
    }

    #[test]
    fn the_agent_goes_where_the_debs_put_binaries() {
        assert!(AGENT_PATH.starts_with(&format!("{}/", image::CFI_LIB_DIR)));
    }

    #[test]
    fn network_names_differ_and_bridge_names_fit() {
        let ((a, bridge_a), (b, bridge_b)) = (unique_names(), unique_names());
        assert_ne!(a, b);
        assert_ne!(bridge_a, bridge_b);
        assert!(
            a.starts_with(&format!("cfi-lab-{}-", std::process::id())),
            "{a}"
        );
        // IFNAMSIZ is 16, with the NUL.
        assert_eq!(bridge_a.len(), 15, "{bridge_a}");
        assert!(a.ends_with(&bridge_a["cfi-lab-".len()..]), "{a} {bridge_a}");
    }
}
