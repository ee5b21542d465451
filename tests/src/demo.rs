//! `cfi-lab demo`: the main job as a newcomer can watch it. A cfi server
//! (the real `cfi-server` daemon, announcing itself over mDNS) and three
//! machines that boot (containers with sshd, `cfi-agent` and the real
//! `cfi-announcer`) and enroll themselves, two into group `lab`, one into
//! `unknown`; then a dropped file reaching the group by itself, drift
//! repaired, commands across the pool, packages planned and rolled out
//! from the group's pkgsync lists, a machine going down and catching up. The admin's `cfi` commands run one after the other, each shown with
//! what it printed; everything is removed at the end.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::aptrepo::{AptRepo, PackageSpec};
use crate::lab::Lab;
use crate::zeroconf::{ZeroconfBinaries, ZeroconfServer};
use crate::{command, debs};

/// What one `cfi` command of the demo may take.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// How long the demo waits for something the pool does by itself.
const WAIT: Duration = Duration::from_secs(60);

/// Runs the demo with the example data dir `layout` (the repository's
/// `var-lib-cfi-layout/`) and cfi's packages when `CFI_LAB_DEBS` names
/// them ([`crate::debs`]: the server a container with cfi-server
/// installed, the machines with cfi-client), else the binaries in
/// `bins` (the server a process here).
pub fn run(bins: ZeroconfBinaries, layout: &Path) -> Result<()> {
    let packaged = debs::configured()?;
    let bins = match packaged {
        Some(p) => ZeroconfBinaries::packaged(p)?,
        None => bins,
    };
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    command::checked(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(layout)
            .arg(&data),
        Duration::from_secs(30),
    )?;

    say("A network of its own for the pool (a docker network), nothing on it yet")?;
    let mut lab = Lab::start_with(Vec::new())?;
    note(&format!("bridge {}", lab.bridge_interface()?))?;

    say("The server: cfi-server serving var-lib-cfi-layout, announcing its key over mDNS")?;
    note("no client list: the machines will announce themselves")?;
    let server_dir = work.path().join("server");
    fs::create_dir_all(&server_dir)?;
    // Packages converge after a pass that changed the lists by default;
    // off here, so that the plan can be seen before it is carried out.
    let extra = "pkgs_after_sync = false\n";
    let server = match packaged {
        Some(p) => {
            let server = ZeroconfServer::start_packaged(p, &server_dir, &data, &lab, extra)?;
            note(&format!(
                "a container, {}, with {} installed by dpkg",
                server.container().unwrap_or_default(),
                debs::file_name(&p.server_deb)
            ))?;
            server
        }
        None => ZeroconfServer::start(&bins.cfi, &server_dir, &data, &lab, extra)?,
    };
    note(&format!("its key: {}", server.fingerprint()?))?;

    say("Three machines boot; each runs cfi-announcer (two ask for group `lab`, one for none)")?;
    if let Some(p) = packaged {
        note(&format!(
            "containers with {} installed by dpkg",
            debs::file_name(&p.client_deb)
        ))?;
    }
    for toml in ["group = \"lab\"\n", "group = \"lab\"\n", ""] {
        let i = lab.add_client(bins.announcing(toml))?;
        let c = lab.client(i);
        note(&format!(
            "{} at {}: /etc/cfi/client.toml {:?}",
            c.name,
            c.addr,
            toml.trim()
        ))?;
    }
    let started = Instant::now();
    server.wait_enrolled(lab.clients(), WAIT)?;
    note(&format!(
        "all three enrolled {:.1} s after the last one booted",
        started.elapsed().as_secs_f64()
    ))?;
    say(
        "What the announcer did on a machine: trusted the only server key announced, installed it",
    )?;
    show(
        &lab,
        0,
        "grep -h 'installed server key' /var/log/cfi-announcer.log | cut -c1-160",
    )?;
    show(&lab, 0, "grep cfi-agent /root/.ssh/authorized_keys")?;

    say("Who is there: found over mDNS, each in its group (no group: `unknown`)")?;
    cfi(&server, &["clients"])?;
    cfi(&server, &["groups"])?;
    show(&lab, 0, "cat /etc/motd")?;

    say("An admin drops a file into the group: it is on the group's machines within a second")?;
    let dropped = data.join("lab/etc/cfi-demo.conf");
    let dropped_at = Instant::now();
    fs::write(
        &dropped,
        "# dropped into /var/lib/cfi/lab/etc/\nlevel = 3\n",
    )?;
    note(&format!("wrote {}", dropped.display()))?;
    wait_for(&lab, &[0, 1], "/etc/cfi-demo.conf")?;
    note(&format!(
        "on both lab machines after {:.0} ms; the third, in `unknown`, did not get it",
        dropped_at.elapsed().as_secs_f64() * 1000.0
    ))?;
    show(&lab, 1, "cat /etc/cfi-demo.conf")?;

    say("Someone edits a managed file on a machine: a sync repairs it and keeps their copy")?;
    lab.sh(1, "echo 'local hack' >> /etc/cfi-demo.conf")?;
    let name1 = lab.client(1).name.clone();
    cfi(&server, &["sync", "-w", &name1])?;
    show(&lab, 1, "ls /var/lib/cfi-client/drift/etc/")?;

    say("A command across the pool: lines stream as host: line")?;
    cfi(&server, &["exec", "-a", "--", "uname", "-n"])?;
    say("The same output from every host, folded")?;
    cfi(
        &server,
        &["exec", "-a", "--gather", "--", "cat", "/etc/debian_version"],
    )?;

    packages(&server, &lab, &data, work.path())?;

    say("A machine shuts down: its announcer says goodbye and it is offline at once")?;
    lab.stop(1)?;
    std::thread::sleep(Duration::from_secs(2));
    cfi(&server, &["clients"])?;
    say("While it is away the group changes; the machine still online gets it at once")?;
    fs::write(
        &dropped,
        "# dropped into /var/lib/cfi/lab/etc/\nlevel = 4\n",
    )?;
    wait_for(&lab, &[0], "/etc/cfi-demo.conf")?;
    say("It boots again, announces itself and catches up")?;
    lab.start_client(1)?;
    let back = Instant::now();
    wait_content(&lab, 1, "/etc/cfi-demo.conf", "level = 4")?;
    note(&format!(
        "caught up {:.1} s after it booted",
        back.elapsed().as_secs_f64()
    ))?;
    show(&lab, 1, "cat /etc/cfi-demo.conf")?;

    say("The daemon")?;
    cfi(&server, &["status"])?;

    say("Tearing down: the daemon stops on SIGTERM, the containers and their network are removed")?;
    server.stop()?;
    drop(lab);
    note("done")?;
    Ok(())
}

/// pkgsync's lists in the `lab` group, a plan, a staged rollout and the
/// inventory, against a small apt repository the demo builds and serves
/// to the machines (they reach no mirror).
fn packages(server: &ZeroconfServer, lab: &Lab, data: &Path, work: &Path) -> Result<()> {
    say("Packages: a group carries pkgsync lists; every machine plans with apt's own simulation")?;
    let repo = AptRepo::build(
        &work.join("repo"),
        &[
            PackageSpec::new("cfi-demo-tools", "1.0")
                .depends("cfi-demo-lib")
                .executable(
                    "/usr/bin/cfi-demo-tool",
                    "#!/bin/sh\necho cfi demo tool 1.0\n",
                ),
            PackageSpec::new("cfi-demo-lib", "1.0"),
        ],
    )?;
    repo.serve_everywhere(lab)?;
    note(
        "an apt repository of two packages (tools needs lib), built with dpkg-deb, served to the machines",
    )?;
    let image = lab.sh(0, "dpkg-query -W -f '${Package}\\n'")?;
    let lists = data.join("lab/etc/pkgsync");
    fs::create_dir_all(&lists)?;
    fs::write(lists.join("musthave"), "cfi-demo-tools\n")?;
    fs::write(
        lists.join("mayhave"),
        format!("# what the image has\n{image}"),
    )?;
    fs::write(lists.join("maynothave"), "telnet\n")?;
    note(&format!(
        "wrote {}/{{musthave,mayhave,maynothave}}: must cfi-demo-tools; may the image's packages; may not telnet",
        lists.display()
    ))?;
    wait_for(lab, &[0, 1], "/etc/pkgsync/maynothave")?;
    cfi(server, &["pkgs", "plan", "-g", "lab"])?;
    say("The rollout: one machine first, the rest only if it went well")?;
    cfi(server, &["pkgs", "sync", "-g", "lab", "--canary", "1"])?;
    show(lab, 1, "cfi-demo-tool")?;
    say("Which machines have what, from the inventory the runs left (no machine is asked)")?;
    cfi(server, &["pkgs", "search", "cfi-demo-*"])?;
    Ok(())
}

/// Waits until `path` exists on every client of `clients`.
fn wait_for(lab: &Lab, clients: &[usize], path: &str) -> Result<()> {
    wait(
        || Ok(clients.iter().all(|&i| lab.read_file(i, path).is_ok())),
        path,
    )
}

/// Waits until `path` on client `i` contains `text`.
fn wait_content(lab: &Lab, i: usize, path: &str, text: &str) -> Result<()> {
    wait(
        || {
            Ok(lab
                .read_file(i, path)
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text)))
        },
        path,
    )
}

fn wait(mut done: impl FnMut() -> Result<bool>, what: &str) -> Result<()> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > WAIT {
            bail!("{what} did not arrive within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs `cfi ARGS`, showing the command line, its output and, when not 0,
/// its exit status.
fn cfi(server: &ZeroconfServer, args: &[&str]) -> Result<()> {
    let mut cmd = server.cli(args);
    out(&format!("\n$ cfi {}\n", args.join(" ")))?;
    let shown = command::output_with_stdin(&mut cmd, Stdio::null(), STEP_LIMIT)
        .with_context(|| format!("cfi {}", args.join(" ")))?;
    out(&String::from_utf8_lossy(&shown.stdout))?;
    out(&String::from_utf8_lossy(&shown.stderr))?;
    if !shown.status.success() {
        out(&format!(
            "(exit status {})\n",
            shown.status.code().unwrap_or(-1)
        ))?;
    }
    Ok(())
}

/// Runs `script` in client `i` (as `docker exec` does) and shows it.
fn show(lab: &Lab, i: usize, script: &str) -> Result<()> {
    out(&format!("\n[{}]$ {script}\n", lab.client(i).name))?;
    Ok(out(&lab.sh(i, script)?)?)
}

fn say(what: &str) -> Result<(), io::Error> {
    if io::stdout().is_terminal() {
        out(&format!("\n\x1b[1m== {what}\x1b[0m\n"))
    } else {
        out(&format!("\n== {what}\n"))
    }
}

fn note(what: &str) -> Result<(), io::Error> {
    out(&format!("   {what}\n"))
}

fn out(text: &str) -> Result<(), io::Error> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}
