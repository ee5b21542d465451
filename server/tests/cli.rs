//! The real binaries: errors a person sees from `cfi`, `cfi-agent` and
//! `cfi-server`, an agent killed with SIGKILL at random points of a pass,
//! and the daemon's control socket (mode, bad requests, a second daemon,
//! SIGTERM).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Rng;

fn cfi() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cfi"))
}

/// The agent binary, built by `cargo build --workspace --bins`.
fn agent() -> PathBuf {
    let p = cfi().with_file_name("cfi-agent");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(lab.group()).unwrap();
        fs::create_dir_all(lab.root()).unwrap();
        lab
    }
    fn group(&self) -> PathBuf {
        self.dir.path().join("data/lab")
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(cfi());
        c.arg("sync-local")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--group")
            .arg("lab")
            .arg("--root")
            .arg(self.root())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(extra);
        if !extra.contains(&"--agent") {
            c.arg("--agent").arg(agent());
        }
        c
    }
    fn sync(&self, extra: &[&str]) -> Output {
        self.command(extra).output().unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn json_report_has_the_fields_scripts_use() {
    let lab = Lab::new();
    fs::write(lab.group().join("motd"), "hi\n").unwrap();
    let out = lab.sync(&["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "files_updated",
        "files_unchanged",
        "files_deleted",
        "files_restored",
        "bytes_to_agent",
        "bytes_from_agent",
    ] {
        assert!(v[key].is_u64(), "{key} missing in {v}");
    }
    assert!(v["drift"].is_array());
    assert_eq!(v["files_updated"], 1);
    assert_eq!(fs::read(lab.root().join("motd")).unwrap(), b"hi\n");
}

#[test]
fn invalid_group_name_is_a_clear_error() {
    let lab = Lab::new();
    let c = lab.command(&[]);
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut c2 = Command::new(cfi());
    for a in args {
        c2.arg(if a == "lab" { "../etc".into() } else { a });
    }
    drop(c);
    let out = c2.output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid group name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_group_and_root_are_named() {
    let lab = Lab::new();
    fs::remove_dir(lab.group()).unwrap();
    let out = lab.sync(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("data/lab does not exist"),
        "{}",
        stderr(&out)
    );
    let lab = Lab::new();
    fs::remove_dir(lab.root()).unwrap();
    let out = lab.sync(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_agent_is_named() {
    let lab = Lab::new();
    let out = lab.sync(&["--agent", "/nonexistent/cfi-agent"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/cfi-agent"),
        "{}",
        stderr(&out)
    );
}

// ---- crash test ----------------------------------------------------------

type Files = BTreeMap<String, Vec<u8>>;

/// Two versions of a tree: v2 changes half the files, drops some, adds
/// some, so a pass has plenty of renames, deletions and deltas to do.
fn versions(seed: u64) -> (Files, Files) {
    let mut rng = Rng(seed | 1);
    let mut v1 = Files::new();
    for i in 0..240 {
        let size = 2_000 + (rng.next() % 60_000) as usize;
        v1.insert(format!("d{}/f{i}", i % 12), rng.bytes(size));
    }
    let mut v2 = Files::new();
    for (i, (p, c)) in v1.iter().enumerate() {
        match i % 6 {
            0 => {}
            1..=3 => {
                let mut c = c.clone();
                let at = c.len() / 2;
                c[at..at + 500].copy_from_slice(&rng.bytes(500));
                v2.insert(p.clone(), c);
            }
            _ => {
                v2.insert(p.clone(), c.clone());
            }
        }
    }
    for i in 0..40 {
        v2.insert(format!("new{}/g{i}", i % 4), rng.bytes(30_000));
    }
    (v1, v2)
}

fn write_files(dir: &Path, files: &Files) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap();
    }
    for (p, c) in files {
        let full = dir.join(p);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, c).unwrap();
        fs::set_permissions(&full, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// Every file of the root, relative path → content.
fn read_files(root: &Path) -> Files {
    let mut out = Files::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn agent_pid_of(parent: u32) -> Option<i32> {
    let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Kills the agent with SIGKILL at random points of a pass, 24 times. Every
/// file must be wholly old or wholly new, and the next pass must converge
/// with no temp file left.
#[test]
fn an_agent_killed_mid_pass_never_tears_a_file() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let (v1, v2) = versions(seed);
    let mut rng = Rng(seed.rotate_left(17) | 1);

    // How long an uninterrupted v1 → v2 pass takes here.
    let lab = Lab::new();
    write_files(&lab.group(), &v1);
    assert!(lab.sync(&[]).status.success());
    write_files(&lab.group(), &v2);
    let t = Instant::now();
    assert!(lab.sync(&[]).status.success());
    let full = t.elapsed();

    let mut killed = 0;
    for run in 0..24 {
        let lab = Lab::new();
        write_files(&lab.group(), &v1);
        let out = lab.sync(&[]);
        assert!(out.status.success(), "{}", stderr(&out));
        write_files(&lab.group(), &v2);

        let mut child = lab
            .command(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64((rng.next() % 1000) as f64 / 1000.0 * 1.1);
        let start = Instant::now();
        let mut agent = None;
        while start.elapsed() < delay || agent.is_none() {
            agent = agent.or_else(|| agent_pid_of(child.id()));
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Some(pid) = agent {
            if rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        let _ = child.wait();

        for (p, c) in read_files(&lab.root()) {
            // Temps are not managed files: the next pass removes them,
            // which the convergence check below proves.
            let name = p.rsplit('/').next().unwrap();
            if name.starts_with(".cfi.") && name.ends_with(".tmp") {
                continue;
            }
            assert!(
                v1.get(&p) == Some(&c) || v2.get(&p) == Some(&c),
                "run {run}: {p} is torn or foreign after a kill at {delay:?}"
            );
        }
        let out = lab.sync(&[]);
        assert!(out.status.success(), "run {run}: {}", stderr(&out));
        assert_eq!(read_files(&lab.root()), v2, "run {run}: did not converge");
    }
    assert!(
        killed >= 12,
        "only {killed} of 24 runs killed the agent mid-pass"
    );
}

// ---- cfi-server ------------------------------------------------------------

fn cfi_server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cfi-server"))
}

#[test]
fn pubkey_makes_one_key_usable_by_openssh() {
    let state = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = cfi_server()
            .args(["--config", "/dev/null", "--state-dir"])
            .arg(state.path())
            .arg("pubkey")
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run(&[]);
    assert!(first.starts_with("ssh-ed25519 AAAA"), "{first}");
    assert_eq!(run(&[]), first, "the key must not change between runs");
    let key = state.path().join("server_key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // OpenSSH reads it: `ssh -i` works with the same key.
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .unwrap();
    assert!(derived.status.success(), "{}", stderr(&derived));
    let derived = String::from_utf8(derived.stdout).unwrap();
    assert_eq!(derived.split(' ').nth(1), first.split(' ').nth(1));
    assert!(run(&["--fingerprint"]).starts_with("SHA256:"));
}

#[test]
fn check_config_reports_or_names_the_bad_line() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("cfi/lab")).unwrap();
    fs::write(d.path().join("clients"), "ws1 lab\nws2\n").unwrap();
    let config = d.path().join("server.toml");
    fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nclients_file = \"{}\"\n",
            d.path().join("cfi").display(),
            d.path().join("clients").display()
        ),
    )
    .unwrap();
    let out = cfi_server()
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"], serde_json::json!(["lab"]));
    assert_eq!(
        v["static_clients"],
        serde_json::json!(["ws1:22 lab", "ws2:22 unknown"])
    );

    fs::write(d.path().join("clients"), "ws1 lab\nws2 Bad\n").unwrap();
    let out = cfi_server()
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("clients:2"), "{}", stderr(&out));

    fs::write(&config, "data_dir = \"/x\"\nsockett = \"/y\"\n").unwrap();
    let out = cfi_server()
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("sockett"), "{}", stderr(&out));
}

// ---- the daemon and cfi over its socket, without clients -------------------

/// A daemon on a temp dir with an empty client list; SIGTERM on drop.
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        let child = cfi_server()
            .arg("--config")
            .arg("/dev/null")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--state-dir")
            .arg(dir.path())
            .arg("--socket")
            .arg(dir.path().join("run/control.sock"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            dir,
            child: Some(child),
        };
        let started = Instant::now();
        while d.cfi(&["status"]).status.code() != Some(0) {
            assert!(started.elapsed() < Duration::from_secs(20), "no daemon");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    fn cfi(&self, args: &[&str]) -> Output {
        Command::new(cfi())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// SIGTERM; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the daemon ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

#[test]
fn cfi_without_a_daemon_names_the_socket() {
    let out = Command::new(cfi())
        .args(["--socket", "/nonexistent/cfi.sock", "clients"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/cfi.sock") && err.contains("is cfi-server running"),
        "{err}"
    );
}

#[test]
fn the_daemon_answers_refuses_bad_requests_and_stops_cleanly() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixStream;

    let mut d = Daemon::start();
    let meta = fs::metadata(d.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let out = d.cfi(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["clients"], 0);
    assert!(status["key"].as_str().unwrap().starts_with("SHA256:"));

    // Mistakes are named, with exit status 2.
    for (args, says) in [
        (&["exec", "--", "true"][..], "no targets"),
        (
            &["exec", "-w", "ws9", "--", "true"][..],
            "unknown client \"ws9\"",
        ),
        (&["exec", "-a"][..], "no command"),
        (&["sync", "-g", "Bad Group"][..], "Bad Group"),
    ] {
        let out = d.cfi(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }

    // A request that is not one gets an error event, and the daemon lives on.
    let mut raw = UnixStream::connect(d.socket()).unwrap();
    raw.write_all(b"{\"request\":\"reboot\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&raw).read_line(&mut line).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "error", "{line}");
    assert!(line.contains("reboot"), "{line}");
    assert_eq!(d.cfi(&["groups"]).status.code(), Some(0));

    // A second daemon on the same socket is refused; the first keeps it.
    let second = cfi_server()
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(d.dir.path())
        .arg("--socket")
        .arg(d.socket())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        stderr(&second).contains("another cfi-server"),
        "{}",
        stderr(&second)
    );
    assert_eq!(d.cfi(&["status"]).status.code(), Some(0));

    assert!(d.stop().success());
    assert!(!d.socket().exists(), "the socket outlived the daemon");
}
