//! What both daemons need from mdns-sd, in one place: a daemon on the
//! interfaces the admin chose, the TXT and IPv4 addresses of a resolved
//! service in the shape the record parsers take, and the start-up check
//! that the daemon can see its own announcement.
//!
//! mdns-sd runs its own thread and reports on flume channels, which tokio
//! code awaits with `recv_async`. Its failures can be silent: when another
//! stack holds port 5353 exclusively, `ServiceDaemon::new` still succeeds
//! (see `../shared/CRATES.md`), hence [`sees_itself`].

use std::net::Ipv4Addr;
use std::time::Duration;

use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

/// An mDNS daemon that did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MdnsError {
    /// mdns-sd refused.
    #[error("mDNS: cannot {op}: {cause}")]
    Daemon {
        /// What was attempted.
        op: &'static str,
        /// mdns-sd's message.
        cause: mdns_sd::Error,
    },
}

fn daemon_err(op: &'static str) -> impl FnOnce(mdns_sd::Error) -> MdnsError {
    move |cause| MdnsError::Daemon { op, cause }
}

/// Starts mdns-sd's daemon on IPv4 only (cfi reaches clients over IPv4
/// and IPv6 link-local scopes only add duplicates), on `interfaces` when
/// some are named and on every interface otherwise. Loopback stays off: a
/// service announced there would be reached at 127.0.0.1.
pub fn start(interfaces: &[String]) -> Result<ServiceDaemon, MdnsError> {
    let daemon = ServiceDaemon::new().map_err(daemon_err("start the daemon"))?;
    daemon
        .disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4, IfKind::LoopbackV6])
        .map_err(daemon_err("choose interfaces"))?;
    if !interfaces.is_empty() {
        daemon
            .disable_interface(IfKind::All)
            .map_err(daemon_err("choose interfaces"))?;
        let named: Vec<IfKind> = interfaces.iter().map(IfKind::from).collect();
        daemon
            .enable_interface(named)
            .map_err(daemon_err("choose interfaces"))?;
        daemon
            .disable_interface(IfKind::IPv6)
            .map_err(daemon_err("choose interfaces"))?;
    }
    Ok(daemon)
}

/// A service of type `service_type` to announce: instance `instance` on host
/// label `host` (`name.local.`), `port`, TXT `txt`, on `interfaces` (all
/// when empty). Its addresses follow the machine's: mdns-sd re-announces
/// when they change (DHCP renewals, a cable moved).
pub fn service(
    service_type: &str,
    instance: &str,
    host: &str,
    port: u16,
    txt: &[(String, String)],
    interfaces: &[String],
) -> Result<ServiceInfo, MdnsError> {
    let txt: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut info = ServiceInfo::new(service_type, instance, host, "", port, &txt[..])
        .map_err(daemon_err("build the service"))?
        .enable_addr_auto();
    if !interfaces.is_empty() {
        info.set_interfaces(interfaces.iter().map(IfKind::from).collect());
    }
    Ok(info)
}

/// Registers `info`; returns its full name.
pub fn register(daemon: &ServiceDaemon, info: ServiceInfo) -> Result<String, MdnsError> {
    let fullname = info.get_fullname().to_owned();
    daemon.register(info).map_err(daemon_err("announce"))?;
    Ok(fullname)
}

/// Unregisters `fullname`, which sends goodbye packets (RFC 6762 §10.1)
/// so that peers see it leave at once, and stops the daemon, each within
/// two seconds.
pub async fn goodbye(daemon: &ServiceDaemon, fullname: &str) {
    let wait = Duration::from_secs(2);
    if let Ok(status) = daemon.unregister(fullname) {
        let _ = tokio::time::timeout(wait, status.recv_async()).await;
    }
    if let Ok(status) = daemon.shutdown() {
        let _ = tokio::time::timeout(wait, status.recv_async()).await;
    }
}

/// Checks in the background that the daemon resolves its own service
/// within five seconds, and logs an error naming what cannot find this
/// machine (`who`) when it does not. Abort the handle to stop the check.
pub fn check_visible(
    daemon: &ServiceDaemon,
    service_type: &'static str,
    fullname: &str,
    who: &'static str,
) -> tokio::task::JoinHandle<()> {
    let (daemon, fullname) = (daemon.clone(), fullname.to_owned());
    tokio::spawn(async move {
        if look(&daemon, service_type, &fullname, Duration::from_secs(5)).await != Some(false) {
            return;
        }
        tracing::error!(
            service = fullname,
            "cannot see our own mDNS announcement: is no network interface up (mdns-sd \
             uses only interfaces that are up, and finds new ones within seconds), is \
             another mDNS stack holding port 5353 exclusively (avahi with \
             disallow-other-stacks=yes), or is multicast blocked? {who} will not find \
             this machine"
        );
        // An interface that comes up later is picked up: say so when it is.
        if sees_itself(
            &daemon,
            service_type,
            &fullname,
            Duration::from_secs(24 * 3600),
        )
        .await
        {
            tracing::info!(service = fullname, "our mDNS announcement is visible now");
        }
    })
}

/// The TXT properties of `service` as (key, value) pairs.
pub fn properties(service: &ResolvedService) -> Vec<(String, Option<Vec<u8>>)> {
    service
        .get_properties()
        .iter()
        .map(|p| (p.key().to_owned(), p.val().map(<[u8]>::to_vec)))
        .collect()
}

/// Borrows [`properties`] in the shape the record parsers take.
pub fn borrowed(
    props: &[(String, Option<Vec<u8>>)],
) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    props.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
}

/// The usable IPv4 addresses of `service`, sorted: mdns-sd also reports
/// loopback and IPv6 addresses, which do not reach the host.
pub fn ipv4_addresses(service: &ResolvedService) -> Vec<Ipv4Addr> {
    let mut addrs: Vec<Ipv4Addr> = service
        .get_addresses_v4()
        .into_iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && !a.is_multicast())
        .collect();
    addrs.sort();
    addrs
}

/// This machine's host name made into DNS label characters (letters,
/// digits, `-`), at most 40 of them, or `fallback` when it has none: the
/// instance name of the service a daemon announces.
pub fn host_label(fallback: &str) -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if label.is_empty() {
        fallback.to_owned()
    } else {
        label
    }
}

/// The instance label of a full service name (`ws01-3fa2._cfi-client._tcp.local.`
/// gives `ws01-3fa2`), for messages.
pub fn instance_of(fullname: &str) -> &str {
    fullname.find("._").map_or(fullname, |end| &fullname[..end])
}

/// Whether the daemon resolves its own service `fullname` of type
/// `service_type` within `wait`: if not, it is deaf or mute on the
/// network, and the caller says so loudly.
pub async fn sees_itself(
    daemon: &ServiceDaemon,
    service_type: &str,
    fullname: &str,
    wait: Duration,
) -> bool {
    look(daemon, service_type, fullname, wait).await == Some(true)
}

/// Whether the daemon resolved `fullname` within `wait`; `None` when the
/// daemon stopped meanwhile (a shutdown is no reason to complain).
async fn look(
    daemon: &ServiceDaemon,
    service_type: &str,
    fullname: &str,
    wait: Duration,
) -> Option<bool> {
    let events = daemon.browse(service_type).ok()?;
    let found = tokio::time::timeout(wait, async {
        while let Ok(event) = events.recv_async().await {
            if let ServiceEvent::ServiceResolved(s) = event {
                if s.get_fullname() == fullname {
                    return Some(true);
                }
            }
        }
        None
    })
    .await
    .unwrap_or(Some(false));
    let _ = daemon.stop_browse(service_type);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_is_the_first_label() {
        assert_eq!(
            instance_of("ws01-3fa2._cfi-client._tcp.local."),
            "ws01-3fa2"
        );
        assert_eq!(instance_of("odd"), "odd");
    }
}
