//! `cfi-lab announce-many`, run inside a lab client by `bench rss`: one
//! process announcing many synthetic cfi clients over mDNS, as that many
//! machines running `cfi-announcer` would, so that a server can be shown a
//! thousand clients without a thousand containers.
//!
//! Each synthetic client is a valid `_cfi-client._tcp` record
//! ([`ClientRecord::to_txt`]): a distinct id (derived from the prefix and
//! its number), the group asked for, and the fingerprint of this
//! container's real sshd host key, at this container's address. It has an
//! instance name and a host label of its own (`<prefix>-<n>-<id prefix>`
//! on `cfi-<prefix>-<n>.local.`), like the announcer's. The server can
//! reach its sshd but is refused: the server's key is installed nowhere, as
//! on a machine whose announcer has not yet trusted it.
//!
//! The port is 22 for all of them, or, with [`Synthetic::forward_from`],
//! one port each from there, which this process forwards to the
//! container's sshd: the server keeps one announced client per address
//! (`ip:port`), as real machines each have their own.
//!
//! Records are registered at [`Synthetic::rate`] per second, or all at
//! once. It announces until killed (the lab removes the container), and
//! says `announced N clients` on stderr once every record is registered.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cfi_announce::{CLIENT_SERVICE, ClientRecord, GroupField, MachineId, PublicKey, mdns};
use cfi_groups::GroupName;
use tracing::info;

/// What to announce.
#[derive(Debug, Clone)]
pub struct Synthetic<'a> {
    /// How many clients.
    pub count: usize,
    /// What their names and ids are derived from; distinct per process.
    pub prefix: &'a str,
    /// The group they ask for.
    pub group: &'a str,
    /// The sshd host key (`.pub`) whose fingerprint they announce.
    pub host_key: &'a Path,
    /// Client `n` at port `forward_from + n`, forwarded to port 22 here;
    /// `None`: all at port 22.
    pub forward_from: Option<u16>,
    /// Clients registered per second (a wave of machines booting);
    /// `None`: all at once.
    pub rate: Option<f64>,
}

/// Announces `what` and never returns, unless announcing fails.
pub fn run(what: &Synthetic<'_>) -> Result<()> {
    let text = fs::read_to_string(what.host_key)
        .with_context(|| format!("failed to read {}", what.host_key.display()))?;
    let hostkey = PublicKey::parse(text.trim())
        .with_context(|| format!("{} is not an ed25519 key", what.host_key.display()))?
        .fingerprint();
    let group = GroupName::parse(what.group).context("bad --group")?;
    let daemon = mdns::start(&[]).context("failed to start mDNS")?;
    let sshd = SocketAddr::from((Ipv4Addr::LOCALHOST, 22));
    let started = Instant::now();
    for n in 0..what.count {
        if let Some(rate) = what.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let port = match what.forward_from {
            None => 22,
            Some(base) => {
                let port = u16::try_from(n)
                    .ok()
                    .and_then(|n| base.checked_add(n))
                    .context("--forward-from leaves too few ports")?;
                let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                    .with_context(|| format!("failed to listen on port {port}"))?;
                thread::spawn(move || forward(&listener, sshd));
                port
            }
        };
        let id = synthetic_id(what.prefix, n)?;
        let record = ClientRecord {
            id: id.clone(),
            group: GroupField::Valid(group.clone()),
            hostkey: Some(hostkey.clone()),
        };
        let txt = record.to_txt().context("failed to build a client record")?;
        let instance = format!("{}-{n:04}-{}", what.prefix, &id.as_str()[..6]);
        let host = format!("cfi-{}-{n:04}.local.", what.prefix);
        let info = mdns::service(CLIENT_SERVICE, &instance, &host, port, &txt, &[])
            .with_context(|| format!("failed to build the service {instance}"))?;
        // mdns-sd's command queue is bounded: a burst of registrations is
        // told to try again.
        loop {
            match daemon.register(info.clone()) {
                Err(mdns_sd::Error::Again) => thread::sleep(Duration::from_millis(10)),
                other => break other.with_context(|| format!("failed to announce {instance}"))?,
            }
        }
    }
    info!(prefix = what.prefix, "announced {} clients", what.count);
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Relays every connection to `listener` to `target`, both ways, until
/// either side closes.
fn forward(listener: &TcpListener, target: SocketAddr) {
    for inbound in listener.incoming() {
        let Ok(inbound) = inbound else { continue };
        thread::spawn(move || {
            let Ok(outbound) = TcpStream::connect(target) else {
                return;
            };
            let (Ok(mut in_read), Ok(mut out_write)) = (inbound.try_clone(), outbound.try_clone())
            else {
                return;
            };
            let up = thread::spawn(move || {
                let _ = io::copy(&mut in_read, &mut out_write);
                let _ = out_write.shutdown(Shutdown::Write);
            });
            let (mut out_read, mut in_write) = (outbound, inbound);
            let _ = io::copy(&mut out_read, &mut in_write);
            let _ = in_write.shutdown(Shutdown::Write);
            let _ = up.join();
        });
    }
}

/// The id of synthetic client `n` of `prefix`: 32 hex digits, as a real
/// client's, distinct for every (prefix, n).
pub fn synthetic_id(prefix: &str, n: usize) -> Result<MachineId> {
    let hash = blake3::hash(format!("cfi-lab synthetic client {prefix} {n}").as_bytes());
    let hex = hash.to_hex();
    MachineId::parse(&hex[..32]).context("a synthetic id is not a machine id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_valid() {
        let a = synthetic_id("r0", 0).unwrap();
        let b = synthetic_id("r0", 1).unwrap();
        let c = synthetic_id("r1", 0).unwrap();
        assert!(a != b && a != c && b != c);
        assert_eq!(a.as_str().len(), 32);
        let record = ClientRecord {
            id: a,
            group: GroupField::Valid(GroupName::parse("lab").unwrap()),
            hostkey: None,
        };
        let txt = record.to_txt().unwrap();
        let parsed =
            ClientRecord::from_txt(txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))))
                .unwrap();
        assert_eq!(parsed, record);
    }
}
