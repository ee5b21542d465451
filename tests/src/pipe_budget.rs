//! The lab's share of the kernel's pipe budget.
//!
//! Linux counts the memory of pipes per user across the whole kernel
//! (`fs.pipe-user-pages-soft`, 64 MiB by default). A real machine's root
//! has that budget to itself; the lab's clients are containers of one
//! kernel whose roots are all the same user, so they share it. Once the
//! sum passes it, every new pipe of that user gets two pages instead of
//! sixteen and cannot be widened: each sshd session's pipes to its
//! command shrink to 8 KiB. In a sync to 50 lab hosts that tripled the
//! machine's CPU per host (5.0 s against 2.05 s with the limit lifted), for
//! every tool that runs over sshd, and says nothing about a pool of real
//! machines. So while a lab runs, the budget is what its hosts would have
//! on their own kernels, and it goes back to what it was afterwards. A lab
//! killed before its drop leaves it raised, and so can labs that overlap
//! (tests run several at once): each puts back what it found, if nobody
//! changed it since. What stays is a soft limit on pipe memory, which the
//! next lab finds high enough and leaves alone.

use std::path::Path;

use tracing::{info, warn};

const SOFT_LIMIT: &str = "/proc/sys/fs/pipe-user-pages-soft";

/// The kernel's default limit, in pages: what one Debian machine's root has.
const PER_MACHINE: u64 = 16384;

/// The raised limit of a lab, put back on drop.
#[derive(Debug, Default)]
pub struct PipeBudget {
    /// The limit found before the lab raised it, and the one it set.
    raised: Option<(u64, u64)>,
}

impl PipeBudget {
    /// Gives `hosts` lab hosts and the host itself a budget each, as one
    /// machine's kernel gives its root user; only ever raises it. Without
    /// root the limit stays, with a warning.
    pub fn cover(&mut self, hosts: usize) {
        let Some(current) = read(Path::new(SOFT_LIMIT)) else {
            return;
        };
        let wanted = PER_MACHINE.saturating_mul(hosts as u64 + 1);
        // 0 means no limit at all.
        if current == 0 || current >= wanted {
            return;
        }
        match std::fs::write(SOFT_LIMIT, wanted.to_string()) {
            Ok(()) => {
                info!(
                    from = current,
                    to = wanted,
                    "raised fs.pipe-user-pages-soft for the lab: its hosts are one user of one kernel"
                );
                let original = self.raised.map_or(current, |(original, _)| original);
                self.raised = Some((original, wanted));
            }
            Err(e) => warn!(
                cause = %e,
                "cannot raise fs.pipe-user-pages-soft (needs root): lab hosts share one \
                 kernel's pipe budget, and sessions past it get 8 KiB pipes"
            ),
        }
    }
}

impl Drop for PipeBudget {
    fn drop(&mut self) {
        let Some((original, ours)) = self.raised else {
            return;
        };
        // Another lab that raised it further owns it now; it restores it.
        if read(Path::new(SOFT_LIMIT)) == Some(ours) {
            if let Err(e) = std::fs::write(SOFT_LIMIT, original.to_string()) {
                warn!(cause = %e, "cannot put fs.pipe-user-pages-soft back to {original}");
            }
        }
    }
}

fn read(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
