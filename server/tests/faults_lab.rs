//! Faults in the lab (issue 7), on real sshd and the real daemon:
//!
//! - `cfi-server` and `cfi-agent` killed with SIGKILL at random points of
//!   `cfi sync` (the server on the host, the agent inside a client), 60
//!   runs: after each kill every file is wholly the old or wholly the new
//!   version, and the next pass converges with nothing left over;
//! - a client cut off the network in the middle of a sync and of an exec
//!   is reported unreachable within the timeouts, while the other client
//!   finishes, and converges when it is back;
//! - a client whose disk fills up during a pass gets a clear error naming
//!   the file and the cause, and keeps the previous version whole.
//!
//! Needs docker and root, like the rest of the lab. Never skips.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cfi_lab::lab::{self, ClientSpec, Lab};

use common::daemon::{self, Server};
use common::{BASE, Rng};

/// Files of the tree the kill runs sync; every one changes between the two
/// versions, so that a pass writes all of them.
const FILES: usize = 24;

/// Bytes of each file: two versions fit the full-disk test's tmpfs.
const FILE_SIZE: usize = 256 * 1024;

/// Bytes of each file in the kill test: big enough that a pass takes a
/// while to kill into, compared with what comes around it (the `cfi` call,
/// the `docker exec` that kills the agent). At 256 KiB a pass took 275 ms,
/// and only 2 of 30 agent kills landed in one.
const KILL_FILE_SIZE: usize = 1 << 20;

/// Kill runs of each kind (server, agent).
const RUNS: usize = 30;

/// How long a `cfi` call may take before the test calls it hung.
const CFI_LIMIT: Duration = Duration::from_secs(60);

/// Path → sha256 of a version of the tree, below [`BASE`].
type Hashes = BTreeMap<String, String>;

/// Content of file `k` in version `v`: incompressible and different in
/// every version.
fn content(k: usize, v: u64, size: usize) -> Vec<u8> {
    let seed = (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (v + 1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    Rng(seed | 1).bytes(size)
}

/// Writes version `v` of the tree into `layer` and returns its hashes.
fn write_version(layer: &Path, v: u64) -> Result<Hashes> {
    write_version_of(layer, v, FILE_SIZE)
}

/// [`write_version`] with files of `size` bytes.
fn write_version_of(layer: &Path, v: u64, size: usize) -> Result<Hashes> {
    let dir = layer.join(BASE);
    fs::create_dir_all(&dir)?;
    let mut hashes = Hashes::new();
    for k in 0..FILES {
        let name = format!("f{k:02}");
        let bytes = content(k, v, size);
        fs::write(dir.join(&name), &bytes)?;
        hashes.insert(name, sha256(&bytes)?);
    }
    Ok(hashes)
}

/// sha256 by coreutils, as the clients compute it.
fn sha256(bytes: &[u8]) -> Result<String> {
    let file = tempfile::NamedTempFile::new()?;
    fs::write(file.path(), bytes)?;
    let out = Command::new("sha256sum").arg(file.path()).output()?;
    ensure!(out.status.success(), "sha256sum failed");
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .context("no sha256sum output")?
        .to_owned())
}

/// Every entry below [`BASE`] in client `i`: name → sha256 for files, and
/// `"<kind>"` for anything else.
fn client_tree(lab: &Lab, i: usize) -> Result<BTreeMap<String, String>> {
    let script = format!(
        "cd /{BASE} && find . -mindepth 1 ! -type f -printf '%P <%y>\\n' && \
         find . -mindepth 1 -type f -exec sha256sum {{}} +"
    );
    // The agent of a killed server's pass may still be renaming files into
    // place for a moment, and fuse-overlayfs (docker's storage here) can
    // answer a read racing such a rename with EIO: look again.
    let mut tries = 0;
    let text = loop {
        match lab.sh(i, &script) {
            Ok(text) => break text,
            Err(e) if tries < 5 && format!("{e:#}").contains("Input/output error") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(e),
        }
    };
    let mut tree = BTreeMap::new();
    for line in text.lines() {
        let (a, b) = line.split_once(' ').context("bad listing line")?;
        if let Some(kind) = b.strip_prefix('<') {
            tree.insert(a.to_owned(), format!("<{kind}"));
        } else {
            let name = b.trim_start().trim_start_matches("./");
            tree.insert(name.to_owned(), a.to_owned());
        }
    }
    Ok(tree)
}

/// No file of client `i` is torn: each is wholly `old`'s or `new`'s, none
/// is missing. Temps of an interrupted pass (`.cfi.*.tmp`) are not
/// managed files; the next pass removes them, which [`assert_exactly`]
/// checks.
fn assert_whole(lab: &Lab, i: usize, old: &Hashes, new: &Hashes, what: &str) -> Result<()> {
    let tree = client_tree(lab, i)?;
    for (name, hash) in &tree {
        if name.starts_with(".cfi.") && name.ends_with(".tmp") {
            continue;
        }
        ensure!(
            old.get(name) == Some(hash) || new.get(name) == Some(hash),
            "{what}: {}:/{BASE}/{name} is torn or foreign ({hash})",
            lab.client(i).name
        );
    }
    for name in old.keys() {
        ensure!(
            tree.contains_key(name),
            "{what}: {}:/{BASE}/{name} is missing",
            lab.client(i).name
        );
    }
    Ok(())
}

/// Client `i` holds exactly `want` below [`BASE`], nothing else.
fn assert_exactly(lab: &Lab, i: usize, want: &Hashes, what: &str) -> Result<()> {
    let tree = client_tree(lab, i)?;
    ensure!(
        &tree == want,
        "{what}: {} did not converge:\n got {tree:?}\nwant {want:?}",
        lab.client(i).name
    );
    Ok(())
}

/// `cfi sync` as a child, not waited for.
fn spawn_sync(server: &Server) -> Result<std::process::Child> {
    server
        .command(&["sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to run cfi sync")
}

/// Waits for `child` within [`CFI_LIMIT`]: a `cfi` that hangs after a fault
/// is a failure.
fn wait_exit(
    child: std::process::Child,
    server: &Server,
    what: &str,
) -> Result<std::process::ExitStatus> {
    match cfi_lab::command::wait_for(child, CFI_LIMIT)? {
        Some(status) => Ok(status),
        None => bail!(
            "{what}: cfi did not exit within {CFI_LIMIT:?}; the server's log:\n{}",
            cfi_lab::zeroconf::tail(&server.log(), 40)
        ),
    }
}

/// Kills with SIGKILL every `cfi-agent` in client `i` that serves a pass:
/// the command runner while it runs one (its `cfi-pass` thread), or an
/// agent that sshd started for one (`SSH_ORIGINAL_COMMAND=serve`, an agent
/// without passes on its runner); how many there were.
fn kill_serving_agents(lab: &Lab, i: usize) -> Result<usize> {
    let out = lab.sh(
        i,
        "n=0; for p in $(pgrep -x cfi-agent); do \
           if grep -qx cfi-pass /proc/$p/task/*/comm 2>/dev/null \
              || tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx SSH_ORIGINAL_COMMAND=serve; then \
             kill -KILL $p && n=$((n + 1)); \
           fi; \
         done; echo $n",
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("unexpected kill count {out:?}"))
}

#[test]
fn killed_server_and_agents_mid_sync_never_tear_a_file_and_the_next_pass_converges() -> Result<()> {
    lab::init_test_logging();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    eprintln!("fault test seed {seed}");
    let mut rng = Rng(seed);
    let lab = Lab::start(2)?;
    lab.install_agent_everywhere(&lab::built_binary("cfi-agent")?)?;
    let mut server = daemon::start_static(&lab, &["lab", "lab"], "")?;
    server.wait_for_state("online", Duration::from_secs(30))?;
    let layer = server.data().join("lab");
    let versions = [
        write_version_of(&layer, 0, KILL_FILE_SIZE)?,
        write_version_of(&layer, 1, KILL_FILE_SIZE)?,
    ];

    // How long an uninterrupted pass of every file takes here.
    let mut current = 1;
    server.json(&["sync"], 0)?;
    let mut full = Duration::ZERO;
    for _ in 0..2 {
        current = 1 - current;
        write_version_of(&layer, current as u64, KILL_FILE_SIZE)?;
        let started = Instant::now();
        let answer = server.json(&["sync"], 0)?;
        full = full.max(started.elapsed());
        ensure!(answer["ok"] == 2, "{answer:#}");
    }
    eprintln!("a full pass takes {full:?}");

    let (mut server_cut, mut agent_cut) = (0, 0);
    for run in 0..2 * RUNS {
        let kill_server = run % 2 == 0;
        let old = &versions[current];
        current = 1 - current;
        let new = &versions[current];
        write_version_of(&layer, current as u64, KILL_FILE_SIZE)?;
        let delay = full.mul_f64(rng.unit() * 1.1);
        let what = format!(
            "run {run} (kill {} after {delay:?})",
            if kill_server {
                "cfi-server"
            } else {
                "cfi-agent"
            }
        );
        let child = spawn_sync(&server)?;
        std::thread::sleep(delay);
        if kill_server {
            server.kill()?;
            let status = wait_exit(child, &server, &what)?;
            if !status.success() {
                server_cut += 1;
            }
            server.spawn(&lab::built_binary("cfi-server")?)?;
        } else {
            if kill_serving_agents(&lab, run / 2 % 2)? > 0 {
                agent_cut += 1;
            }
            wait_exit(child, &server, &what)?;
        }
        for i in 0..2 {
            assert_whole(&lab, i, old, new, &what)?;
        }
        // The next pass converges (the restarted server reconnects first).
        server.wait_for_state("online", Duration::from_secs(30))?;
        let answer = server.json(&["sync"], 0)?;
        ensure!(answer["ok"] == 2, "{what}: the next pass: {answer:#}");
        for i in 0..2 {
            assert_exactly(&lab, i, new, &what)?;
        }
    }
    eprintln!(
        "{server_cut} of {RUNS} server kills cut a pass short; \
         {agent_cut} of {RUNS} agent kills hit an agent serving a pass"
    );
    // Kills that all came too late would test nothing.
    ensure!(
        server_cut >= RUNS / 3 && agent_cut >= RUNS / 3,
        "too few kills landed mid-pass: {server_cut} server, {agent_cut} agent of {RUNS} each"
    );
    Ok(())
}

#[test]
fn a_network_cut_mid_sync_and_mid_exec_is_reported_in_time_and_heals() -> Result<()> {
    lab::init_test_logging();
    let mut lab = Lab::start(2)?;
    lab.install_agent_everywhere(&lab::built_binary("cfi-agent")?)?;
    let server = daemon::start_static(&lab, &["lab", "lab"], "")?;
    server.wait_for_state("online", Duration::from_secs(30))?;
    let layer = server.data().join("lab");
    let first = write_version(&layer, 0)?;
    server.json(&["sync"], 0)?;

    // Mid-sync: a big file makes the pass long enough to cut into.
    let big = noise_file(&layer, 96 << 20)?;
    let mut second = write_version(&layer, 1)?;
    second.insert("big".into(), big);
    let (out, took) = cut_during(&mut lab, 1, Duration::from_millis(300), || {
        server.json(&["sync"], 2)
    })?;
    cut_reported("sync", &out, took)?;
    assert_exactly(&lab, 0, &second, "the client that stayed")?;
    // `big` is new there: absent or whole, never torn.
    assert_whole(&lab, 1, &first, &second, "the client cut off")?;

    // Mid-exec: a command that outlives the cut.
    lab.reconnect(1)?;
    server.wait_for_state("online", Duration::from_secs(60))?;
    let (out, took) = cut_during(&mut lab, 1, Duration::from_secs(1), || {
        server.json(&["exec", "-a", "--", "sleep 5; echo done"], 2)
    })?;
    cut_reported("exec", &out, took)?;

    // Back on the network: the next pass converges.
    lab.reconnect(1)?;
    server.wait_for_state("online", Duration::from_secs(60))?;
    let answer = server.json(&["sync"], 0)?;
    ensure!(answer["ok"] == 2, "{answer:#}");
    assert_exactly(&lab, 1, &second, "after the network came back")?;
    Ok(())
}

/// The other client went well and the cut one was reported unreachable,
/// soon (connect_timeout = 3 and keepalive = 1, from start_static: well
/// within 30 s, a bound against hangs, not a timing).
fn cut_reported(what: &str, out: &serde_json::Value, took: Duration) -> Result<()> {
    ensure!(
        took < Duration::from_secs(30),
        "{what}: the cut reported after {took:?}"
    );
    ensure!(
        out["ok"] == 1 && out["unreachable"] == 1,
        "{what} across the cut: {out:#}"
    );
    Ok(())
}

/// Runs `call` and cuts client `i` off the network `after` its start; what
/// `call` returned and how long after the cut it did.
fn cut_during<T: Send>(
    lab: &mut Lab,
    i: usize,
    after: Duration,
    call: impl FnOnce() -> Result<T> + Send,
) -> Result<(T, Duration)> {
    std::thread::scope(|s| {
        let started = Instant::now();
        let running = s.spawn(call);
        std::thread::sleep(after);
        let cut = Instant::now();
        lab.disconnect(i)?;
        let out = running.join().expect("cfi call panicked")?;
        ensure!(
            cut > started,
            "the call ended before the cut: make it longer"
        );
        Ok((out, cut.elapsed()))
    })
}

/// Writes `len` incompressible bytes to `big` under [`BASE`] of `layer`;
/// their sha256.
fn noise_file(layer: &Path, len: usize) -> Result<String> {
    let bytes = common::noise(len);
    fs::write(layer.join(BASE).join("big"), &bytes)?;
    sha256(&bytes)
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_previous_version_stays_whole() -> Result<()> {
    lab::init_test_logging();
    // The tree's directory is a small tmpfs: room for two versions (the
    // old and the new side by side during a pass), not for the big file.
    let spec = ClientSpec::default().tmpfs(format!("/{BASE}"), "16m");
    let lab = Lab::start_with(vec![spec])?;
    lab.install_agent_everywhere(&lab::built_binary("cfi-agent")?)?;
    let server = daemon::start_static(&lab, &["lab"], "")?;
    server.wait_for_state("online", Duration::from_secs(30))?;
    let layer = server.data().join("lab");
    let first = write_version(&layer, 0)?;
    server.json(&["sync"], 0)?;
    assert_exactly(&lab, 0, &first, "the first version")?;

    noise_file(&layer, 32 << 20)?;
    let answer = server.json(&["sync"], 1)?;
    let error = answer.to_string();
    ensure!(
        error.contains("No space left on device") && error.contains("big"),
        "the error does not say what and where: {answer:#}"
    );
    // Nothing of the new version is half there; the old one is whole.
    let tree = client_tree(&lab, 0)?;
    for (name, hash) in &first {
        ensure!(tree.get(name) == Some(hash), "{name} changed: {tree:?}");
    }
    ensure!(
        tree.keys().all(|n| first.contains_key(n)),
        "leftovers on the full disk: {tree:?}"
    );

    // With the big file gone again, the next pass goes through.
    fs::remove_file(layer.join(BASE).join("big"))?;
    let second = write_version(&layer, 1)?;
    server.json(&["sync"], 0)?;
    assert_exactly(&lab, 0, &second, "after the disk had room again")?;
    Ok(())
}
