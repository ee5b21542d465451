//! The host side of a lab network: the Linux bridge docker makes for it,
//! which the cfi-server daemon of a test restricts its mDNS to, and the
//! firewall rule that lets mDNS cross that bridge between two clients.
//!
//! Why a rule: docker isolates an `--internal` network in the FORWARD
//! chain, dropping whatever enters its bridge for an address off the
//! network's subnet (`-i <bridge> ! -d <subnet> -j DROP`). Where
//! br_netfilter is loaded with `net.bridge.bridge-nf-call-iptables=1`
//! (docker's usual setup), packets *bridged* from one container to another
//! go through that chain too, and mDNS's 224.0.0.251 is off the subnet: it
//! is dropped between clients, while it passes between a client and the
//! host (INPUT and OUTPUT, not FORWARD). So the lab accepts, in
//! `DOCKER-USER` (the chain docker leaves to its users and consults
//! first), link-local multicast (224.0.0.0/24, which RFC 5771 keeps on the
//! link) that both enters and leaves the lab's bridge: nothing gets
//! further than the network. IGMP snooping is no obstacle: a bridge floods
//! 224.0.0.0/24 to every port whatever it snooped (RFC 4541, 2.1.2).
//!
//! Each rule's comment is its network's name (`cfi-lab-…`), so
//! [`remove_stale_multicast_rules`] finds those of networks that are gone.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use tracing::{debug, warn};

use crate::{command, docker};

/// The chain docker consults first and leaves to its users.
const CHAIN: &str = "DOCKER-USER";

/// Time limit of one iptables call (`-w` waits for the xtables lock).
const IPTABLES_LIMIT: Duration = Duration::from_secs(30);

/// Whether the kernel has a bridge called `name`.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .is_dir()
}

/// Accepts link-local multicast between the ports of `bridge`, the bridge
/// of the lab network `network`. Returns false, having done nothing, when
/// docker keeps no `DOCKER-USER` chain (it leaves iptables alone, so
/// nothing drops); fails when the chain is there but the rule cannot go in
/// (not root, say).
pub fn allow_multicast(bridge: &str, network: &str) -> Result<bool> {
    let list = command::output(&mut iptables(&["-S", CHAIN]), IPTABLES_LIMIT);
    match list {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Legacy iptables says "No chain", iptables-nft "incompatible".
            if stderr.contains("No chain") || stderr.contains("incompatible") {
                debug!(
                    chain = CHAIN,
                    "no docker chain in iptables: nothing drops multicast"
                );
                return Ok(false);
            }
            bail!(
                "failed to list iptables chain {CHAIN} to let mDNS across {bridge}: {}",
                stderr.trim()
            );
        }
        Err(e) if command::is_not_found(&e) => {
            debug!("no iptables: docker does not filter, nothing drops multicast");
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let mut args = vec!["-I", CHAIN, "1"];
    args.extend(rule(bridge, network));
    let mut cmd = iptables(&args);
    command::checked(&mut cmd, IPTABLES_LIMIT)?;
    debug!(bridge, network, "multicast allowed across the lab bridge");
    Ok(true)
}

/// Removes the rule [`allow_multicast`] added for `bridge` and `network`.
pub fn remove_multicast_rule(bridge: &str, network: &str) -> Result<()> {
    let mut args = vec!["-D", CHAIN];
    args.extend(rule(bridge, network));
    command::checked(&mut iptables(&args), IPTABLES_LIMIT)?;
    Ok(())
}

/// Removes the rules of lab networks docker no longer has: those of labs
/// whose process died before dropping them. Best effort, like the rest of
/// [`crate::leftovers`]: failures are logged.
pub fn remove_stale_multicast_rules() {
    let Ok(out) = command::output(&mut iptables(&["-S", CHAIN]), IPTABLES_LIMIT) else {
        return;
    };
    if !out.status.success() {
        return;
    }
    let ours = parse_rules(&String::from_utf8_lossy(&out.stdout));
    if ours.is_empty() {
        return;
    }
    let networks: HashSet<String> =
        match docker::stdout(&["network", "ls", "--format", "{{.Name}}"]) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) => {
                warn!(cause = %format!("{e:#}"), "failed to list docker networks");
                return;
            }
        };
    for (bridge, network) in ours {
        if networks.contains(&network) {
            continue;
        }
        warn!(
            network,
            bridge, "removing the multicast rule of a lab network that is gone"
        );
        if let Err(e) = remove_multicast_rule(&bridge, &network) {
            warn!(network, cause = %format!("{e:#}"), "failed to remove an old lab's multicast rule");
        }
    }
}

/// The rule's match and target, after `-I CHAIN 1` or `-D CHAIN`.
fn rule<'a>(bridge: &'a str, network: &'a str) -> [&'a str; 12] {
    [
        "-i",
        bridge,
        "-o",
        bridge,
        "-d",
        "224.0.0.0/24",
        "-m",
        "comment",
        "--comment",
        network,
        "-j",
        "ACCEPT",
    ]
}

/// `(bridge, network)` of each of the lab's rules in `iptables -S` output.
/// Network names need no quoting, so iptables prints the comment bare (it
/// quotes only names with other characters: stripped all the same).
fn parse_rules(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |flag: &str| {
                let at = words.iter().position(|w| *w == flag)?;
                words.get(at + 1).map(|w| w.trim_matches('"').to_owned())
            };
            let network = after("--comment")?;
            let bridge = after("-i")?;
            (network.starts_with("cfi-lab-") && words.contains(&"ACCEPT"))
                .then_some((bridge, network))
        })
        .collect()
}

fn iptables(args: &[&str]) -> Command {
    // As root PATH has /usr/sbin; -w waits for another caller's lock.
    let mut cmd = Command::new("iptables");
    cmd.arg("-w").args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_labs_rules_in_a_listing() {
        let listing = "-N DOCKER-USER\n\
             -A DOCKER-USER -d 224.0.0.0/24 -i cfi-lab-1a2b3c4 -o cfi-lab-1a2b3c4 \
             -m comment --comment cfi-lab-77-1a2b3c4 -j ACCEPT\n\
             -A DOCKER-USER -i br0 -m comment --comment \"someone else\" -j ACCEPT\n\
             -A DOCKER-USER -d 224.0.0.0/24 -i cfi-lab-0000001 -o cfi-lab-0000001 \
             -m comment --comment \"cfi-lab-78-0000001\" -j ACCEPT\n\
             -A DOCKER-USER -j RETURN\n";
        assert_eq!(
            parse_rules(listing),
            [
                (
                    "cfi-lab-1a2b3c4".to_owned(),
                    "cfi-lab-77-1a2b3c4".to_owned()
                ),
                (
                    "cfi-lab-0000001".to_owned(),
                    "cfi-lab-78-0000001".to_owned()
                ),
            ]
        );
    }
}
