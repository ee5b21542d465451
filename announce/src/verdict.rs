//! Which announced server key a client installs: [`decide`].
//!
//! The announcer calls [`decide`] whenever the set of announced server
//! records changes, with its [`Trust`] policy and the key it pinned, and
//! acts on the [`Verdict`]. This is pure logic: the caller reads and stores
//! the pin, writes `authorized_keys` and logs [`Verdict::why`] and each
//! [`Ignored`] key.

use std::fmt;

use crate::key::PublicKey;
use crate::record::{Rotation, ServerRecord};
use crate::trust::Trust;

/// What [`decide`] concluded, and the announced keys it passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do with `authorized_keys`.
    pub verdict: Verdict,
    /// Announced keys that were not accepted, with why. The same keys come
    /// back on every call while they are announced: log each once.
    pub ignored: Vec<Ignored>,
}

/// What to do with the server key in `authorized_keys`. No verdict asks to
/// remove the installed key: `Nothing` and `Refuse` leave the file as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Install `key` in place of the installed one, and pin it.
    Install {
        /// The key to install.
        key: PublicKey,
        /// Why, for the log.
        why: String,
    },
    /// The installed key is still the right one.
    Keep {
        /// The installed key.
        key: PublicKey,
        /// Why, for the log.
        why: String,
    },
    /// No acceptable key is announced, and nothing looks wrong: wait.
    Nothing {
        /// What is awaited, for the log.
        why: String,
    },
    /// The announcements are ambiguous or hostile: install nothing, warn.
    Refuse {
        /// What is wrong, for the log.
        why: String,
    },
}

/// An announced key that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The key.
    pub key: PublicKey,
    /// Why it was not accepted.
    pub why: String,
}

impl Verdict {
    /// The message for the log.
    pub fn why(&self) -> &str {
        match self {
            Self::Install { why, .. }
            | Self::Keep { why, .. }
            | Self::Nothing { why }
            | Self::Refuse { why } => why,
        }
    }

    /// The key to have installed, for `Install` and `Keep`.
    pub fn key(&self) -> Option<&PublicKey> {
        match self {
            Self::Install { key, .. } | Self::Keep { key, .. } => Some(key),
            Self::Nothing { .. } | Self::Refuse { .. } => None,
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ignoring key {} ({})", self.key.fingerprint(), self.why)
    }
}

/// Decides which server key to have installed under `trust`, given the key
/// pinned so far (`None` before the first install) and every server record
/// announced now. The same key announced several times counts once.
pub fn decide(trust: &Trust, pinned: Option<&PublicKey>, seen: &[ServerRecord]) -> Decision {
    let announced = Announced::collect(seen);
    match (trust, pinned) {
        (Trust::Any, _) => trust_any(pinned, &announced),
        (Trust::Pinned(fingerprint), _) => trust_pinned(fingerprint, pinned, &announced),
        (Trust::FirstUse, None) => first_use(&announced),
        (Trust::FirstUse, Some(pinned)) => follow_pin(pinned, &announced),
    }
}

/// One distinct announced key and every rotation announced with it.
#[derive(Debug)]
struct Announced<'a> {
    key: &'a PublicKey,
    fingerprint: String,
    rotations: Vec<&'a Rotation>,
}

impl<'a> Announced<'a> {
    /// The distinct keys of `seen`, sorted by fingerprint so that messages
    /// do not change with the order announcements arrive in.
    fn collect(seen: &'a [ServerRecord]) -> Vec<Self> {
        let mut announced: Vec<Self> = Vec::new();
        for record in seen {
            let index = match announced.iter().position(|a| *a.key == record.key) {
                Some(index) => index,
                None => {
                    announced.push(Self {
                        key: &record.key,
                        fingerprint: record.key.fingerprint(),
                        rotations: Vec::new(),
                    });
                    announced.len() - 1
                }
            };
            let entry = &mut announced[index];
            if let Some(rotation) = &record.rotation {
                if !entry.rotations.contains(&rotation) {
                    entry.rotations.push(rotation);
                }
            }
        }
        announced.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        announced
    }

    /// Whether a rotation announced with this key is signed by `old`.
    fn signed_by(&self, old: &PublicKey) -> bool {
        self.rotations.iter().any(|r| r.is_signed(old, self.key))
    }

    fn ignored(&self, why: String) -> Ignored {
        Ignored {
            key: self.key.clone(),
            why,
        }
    }
}

/// `trust = "any"`: the one key announced, whatever it is.
fn trust_any(pinned: Option<&PublicKey>, announced: &[Announced]) -> Decision {
    let verdict = match announced {
        [] => Verdict::Nothing {
            why: "trust = \"any\": no cfi server is announced".to_owned(),
        },
        [only] if Some(only.key) == pinned => Verdict::Keep {
            key: only.key.clone(),
            why: format!(
                "trust = \"any\": {} is still the only server key announced",
                only.fingerprint
            ),
        },
        [only] => Verdict::Install {
            key: only.key.clone(),
            why: format!(
                "trust = \"any\": installing {}, the only server key announced, without \
                 checking it; anyone on this network who announces a key gets root here",
                only.fingerprint
            ),
        },
        several => Verdict::Refuse {
            why: format!(
                "trust = \"any\": {} servers announce different keys ({}); installing none",
                several.len(),
                fingerprints(several)
            ),
        },
    };
    Decision {
        verdict,
        ignored: Vec::new(),
    }
}

/// `trust = "pinned"`: the key of `fingerprint` or nothing.
fn trust_pinned(
    fingerprint: &str,
    pinned: Option<&PublicKey>,
    announced: &[Announced],
) -> Decision {
    let matching = announced.iter().find(|a| a.fingerprint == fingerprint);
    // Needed to tell a rotation signed by the configured key, which this
    // policy does not follow, from a stranger; an installed key with the
    // right fingerprint serves when the server no longer announces it.
    let configured = matching
        .map(|a| a.key)
        .or(pinned.filter(|p| p.fingerprint() == fingerprint));
    let ignored = announced
        .iter()
        .filter(|a| a.fingerprint != fingerprint)
        .map(|a| match configured {
            Some(old) if a.signed_by(old) => a.ignored(format!(
                "it carries a rotation signed by {fingerprint}, but trust = \"pinned\" \
                 follows no rotation: set server_fingerprint = \"{}\" to accept it",
                a.fingerprint
            )),
            _ => a.ignored(format!("not server_fingerprint {fingerprint}")),
        })
        .collect::<Vec<_>>();
    let verdict = match matching {
        Some(m) if Some(m.key) == pinned => Verdict::Keep {
            key: m.key.clone(),
            why: format!("the pinned key {fingerprint} is announced"),
        },
        Some(m) => Verdict::Install {
            key: m.key.clone(),
            why: format!("installing {fingerprint}: it is server_fingerprint"),
        },
        None => Verdict::Nothing {
            why: format!(
                "waiting for {fingerprint} (server_fingerprint); {}",
                match ignored.len() {
                    0 => "no cfi server is announced".to_owned(),
                    n => format!("ignoring {n} other announced key(s)"),
                }
            ),
        },
    };
    Decision { verdict, ignored }
}

/// `trust = "first-use"` before any key is pinned: the one key announced.
fn first_use(announced: &[Announced]) -> Decision {
    // A key that signed a rotation to another announced key is that
    // server's past: its record lingers until its mDNS TTL runs out (about
    // two minutes), and the rotation says both keys are one server's.
    let superseded = |old: &Announced| announced.iter().any(|new| new.signed_by(old.key));
    let (past, current): (Vec<&Announced>, Vec<&Announced>) =
        announced.iter().partition(|a| superseded(a));
    let verdict = match current[..] {
        [] if announced.is_empty() => Verdict::Nothing {
            why: "no cfi server is announced yet; the first key announced will be pinned"
                .to_owned(),
        },
        [only] => Verdict::Install {
            key: only.key.clone(),
            why: format!(
                "first use: installing and pinning {}, the only server key announced",
                only.fingerprint
            ),
        },
        _ => {
            // With keys that sign each other round in a circle, nothing is
            // current: name them all.
            let named = if current.is_empty() { &past } else { &current };
            Verdict::Refuse {
                why: format!(
                    "{} servers announce different keys at first use ({}); installing {}; \
                     set trust = \"pinned\" with server_fingerprint, or stop the rogue server",
                    named.len(),
                    fingerprints(named.iter().copied()),
                    if named.len() == 2 { "neither" } else { "none" },
                ),
            }
        }
    };
    let ignored = match (&verdict, &current[..]) {
        (Verdict::Install { .. }, [only]) => past
            .iter()
            .map(|a| {
                a.ignored(format!(
                    "it signed a rotation to {}, which replaces it",
                    only.fingerprint
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    Decision { verdict, ignored }
}

/// `trust = "first-use"` with `pinned`: that key, or one it signed a
/// rotation to. Only one step is followed: a client that missed a rotation
/// sees a key signed by a key it never pinned, and refuses it.
fn follow_pin(pinned: &PublicKey, announced: &[Announced]) -> Decision {
    let pinned_fp = pinned.fingerprint();
    let still_announced = announced.iter().any(|a| a.key == pinned);
    let (successors, others): (Vec<&Announced>, Vec<&Announced>) = announced
        .iter()
        .filter(|a| a.key != pinned)
        .partition(|a| a.signed_by(pinned));
    let ignored: Vec<Ignored> = others
        .iter()
        .map(|a| a.ignored(why_not_successor(a, &pinned_fp)))
        .collect();
    let verdict = match successors[..] {
        [next] => Verdict::Install {
            key: next.key.clone(),
            why: format!(
                "rotation from {pinned_fp} to {}, signed by {pinned_fp}: installing and pinning {}",
                next.fingerprint, next.fingerprint
            ),
        },
        [] if still_announced => Verdict::Keep {
            key: pinned.clone(),
            why: format!("the pinned key {pinned_fp} is announced"),
        },
        [] if ignored.is_empty() => Verdict::Nothing {
            why: format!("the pinned key {pinned_fp} is not announced; no cfi server is"),
        },
        [] => Verdict::Refuse {
            why: format!(
                "the pinned key {pinned_fp} is not announced and no announced key carries a \
                 rotation signed by it; ignoring {}; if the server's key really changed without \
                 a signed rotation, this client must be pinned again",
                ignored
                    .iter()
                    .map(|i| format!("{} ({})", i.key.fingerprint(), i.why))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        ref several => Verdict::Refuse {
            why: format!(
                "the pinned key {pinned_fp} signed rotations to {} different keys ({}); \
                 installing none",
                several.len(),
                fingerprints(several.iter().copied())
            ),
        },
    };
    Decision { verdict, ignored }
}

/// Why `key`, announced while `pinned` is pinned, is not its successor.
fn why_not_successor(key: &Announced, pinned: &str) -> String {
    if key.rotations.is_empty() {
        return format!("not the pinned key {pinned}, and it carries no rotation");
    }
    if key.rotations.iter().any(|r| r.previous == pinned) {
        return format!("its rotation names the pinned key {pinned} but is not signed by it");
    }
    let mut from: Vec<&str> = key.rotations.iter().map(|r| r.previous.as_str()).collect();
    from.sort_unstable();
    format!(
        "its rotation is from {}, not from the pinned key {pinned}",
        from.join(", ")
    )
}

fn fingerprints<'a>(keys: impl IntoIterator<Item = &'a Announced<'a>>) -> String {
    keys.into_iter()
        .map(|a| a.fingerprint.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
