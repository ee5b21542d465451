//! Every case of DESIGN.md "Trust", through [`decide`].

use super::*;
use crate::rotation::tests::pair;

fn key(n: u8) -> PublicKey {
    pair(n).1
}

fn plain(n: u8) -> ServerRecord {
    ServerRecord {
        key: key(n),
        rotation: None,
    }
}

/// The record of key `new` with a rotation from `old` signed by `signer`.
fn rotated(old: u8, new: u8, signer: u8) -> ServerRecord {
    let (seed, signer) = pair(signer);
    let new = key(new);
    let mut rotation = Rotation::sign(&seed, &signer, &new).unwrap();
    rotation.previous = key(old).fingerprint();
    ServerRecord {
        key: new,
        rotation: Some(rotation),
    }
}

fn fp(n: u8) -> String {
    key(n).fingerprint()
}

fn installs(decision: &Decision) -> Option<&PublicKey> {
    match &decision.verdict {
        Verdict::Install { key, .. } => Some(key),
        _ => None,
    }
}

#[track_caller]
fn assert_install(decision: &Decision, n: u8, why: &str) {
    assert_eq!(installs(decision), Some(&key(n)), "{decision:#?}");
    assert!(decision.verdict.why().contains(why), "{decision:#?}");
}

#[track_caller]
fn assert_keep(decision: &Decision, n: u8) {
    assert!(
        matches!(&decision.verdict, Verdict::Keep { key: k, .. } if *k == key(n)),
        "{decision:#?}"
    );
}

#[track_caller]
fn assert_refuse(decision: &Decision, why: &[&str]) {
    let Verdict::Refuse { why: text } = &decision.verdict else {
        panic!("not refused: {decision:#?}");
    };
    for part in why {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
}

#[track_caller]
fn assert_nothing(decision: &Decision, why: &str) {
    let Verdict::Nothing { why: text } = &decision.verdict else {
        panic!("not nothing: {decision:#?}");
    };
    assert!(text.contains(why), "{why:?} not in {text}");
}

#[track_caller]
fn assert_ignored(decision: &Decision, n: u8, why: &str) {
    let found = decision.ignored.iter().find(|i| i.key == key(n));
    let found = found.unwrap_or_else(|| panic!("{} not ignored: {decision:#?}", fp(n)));
    assert!(found.why.contains(why), "{why:?} not in {}", found.why);
    assert!(
        found
            .to_string()
            .starts_with(&format!("ignoring key {} (", fp(n)))
    );
}

#[test]
fn any_installs_the_one_key_loudly() {
    let d = decide(&Trust::Any, None, &[plain(1), plain(1)]);
    assert_install(&d, 1, "anyone on this network");
    assert_keep(&decide(&Trust::Any, Some(&key(1)), &[plain(1)]), 1);
    let d = decide(&Trust::Any, Some(&key(1)), &[plain(2)]);
    assert_install(&d, 2, "trust = \"any\"");
    assert_nothing(&decide(&Trust::Any, None, &[]), "no cfi server");
}

#[test]
fn any_refuses_several_keys() {
    let d = decide(&Trust::Any, Some(&key(1)), &[plain(1), plain(2)]);
    assert_refuse(&d, &["2 servers", &fp(1), &fp(2)]);
}

#[test]
fn pinned_takes_its_key_and_ignores_the_rest() {
    let trust = Trust::Pinned(fp(1));
    let d = decide(&trust, None, &[plain(2), plain(1), plain(3)]);
    assert_install(&d, 1, "server_fingerprint");
    assert_ignored(&d, 2, "not server_fingerprint");
    assert_ignored(&d, 3, "not server_fingerprint");
    assert_keep(&decide(&trust, Some(&key(1)), &[plain(1)]), 1);
    // A key installed under another policy is replaced.
    assert_install(&decide(&trust, Some(&key(2)), &[plain(1)]), 1, "");
}

#[test]
fn pinned_waits_and_follows_no_rotation() {
    let trust = Trust::Pinned(fp(1));
    assert_nothing(
        &decide(&trust, None, &[]),
        &format!("waiting for {}", fp(1)),
    );
    let d = decide(&trust, Some(&key(1)), &[rotated(1, 2, 1)]);
    assert_nothing(&d, &format!("waiting for {}", fp(1)));
    assert_ignored(&d, 2, "follows no rotation");
    let d = decide(&trust, None, &[plain(1), rotated(1, 2, 1)]);
    assert_keep_or_install(&d, 1);
    assert_ignored(&d, 2, &format!("server_fingerprint = \"{}\"", fp(2)));
}

fn assert_keep_or_install(d: &Decision, n: u8) {
    assert_eq!(d.verdict.key(), Some(&key(n)), "{d:#?}");
}

#[test]
fn first_use_installs_the_only_key() {
    let d = decide(&Trust::FirstUse, None, &[plain(1), plain(1)]);
    assert_install(&d, 1, "first use");
    assert!(d.ignored.is_empty());
    assert_nothing(&decide(&Trust::FirstUse, None, &[]), "first key");
}

#[test]
fn two_keys_at_first_use_install_neither() {
    let d = decide(&Trust::FirstUse, None, &[plain(2), plain(1)]);
    let (a, b) = (fp(1).min(fp(2)), fp(1).max(fp(2)));
    assert_refuse(
        &d,
        &[&format!(
            "2 servers announce different keys at first use ({a}, {b}); installing neither; \
             set trust = \"pinned\" with server_fingerprint, or stop the rogue server"
        )],
    );
    // The same whatever order they arrive in.
    assert_eq!(decide(&Trust::FirstUse, None, &[plain(1), plain(2)]), d);
    let d = decide(&Trust::FirstUse, None, &[plain(1), plain(2), plain(3)]);
    assert_refuse(&d, &["3 servers", "installing none"]);
    // A rotation signed by a key that is not announced proves nothing.
    let d = decide(&Trust::FirstUse, None, &[plain(1), rotated(3, 2, 3)]);
    assert_refuse(&d, &["installing neither"]);
}

#[test]
fn first_use_during_a_rotation_takes_the_new_key() {
    // The old record lingers for its TTL after the server rotated.
    let d = decide(&Trust::FirstUse, None, &[plain(1), rotated(1, 2, 1)]);
    assert_install(&d, 2, "first use");
    assert_ignored(&d, 1, "replaces it");
    // Keys that sign each other round in a circle: ambiguous.
    let d = decide(
        &Trust::FirstUse,
        None,
        &[rotated(2, 1, 2), rotated(1, 2, 1)],
    );
    assert_refuse(&d, &["installing neither", &fp(1), &fp(2)]);
}

#[test]
fn the_pinned_key_is_kept_and_a_rogue_never_installed() {
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[plain(1), plain(9)]);
    assert_keep(&d, 1);
    assert_ignored(&d, 9, "not the pinned key");
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[plain(9)]);
    assert_refuse(
        &d,
        &[
            &format!("the pinned key {} is not announced", fp(1)),
            &fp(9),
        ],
    );
    assert_ignored(&d, 9, "carries no rotation");
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[]);
    assert_nothing(&d, "is not announced");
}

#[test]
fn a_rotation_signed_by_the_pinned_key_is_followed() {
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[rotated(1, 2, 1)]);
    let why = format!("rotation from {} to {}, signed by {}", fp(1), fp(2), fp(1));
    assert_install(&d, 2, &why);
    // With the old key still announced, and a rogue beside them.
    let seen = [plain(1), rotated(1, 2, 1), plain(9)];
    let d = decide(&Trust::FirstUse, Some(&key(1)), &seen);
    assert_install(&d, 2, &why);
    assert_ignored(&d, 9, "not the pinned key");
    // Once pinned, the new key is kept and the old one ignored.
    assert_keep(&decide(&Trust::FirstUse, Some(&key(2)), &seen), 2);
}

#[test]
fn a_rotation_signed_by_another_key_is_refused() {
    // Claims to come from the pinned key 1, signed by the rogue 9.
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[rotated(1, 9, 9)]);
    assert_refuse(&d, &["not announced"]);
    assert_ignored(&d, 9, "names the pinned key");
    assert_ignored(&d, 9, "not signed by it");
    let d = decide(
        &Trust::FirstUse,
        Some(&key(1)),
        &[plain(1), rotated(1, 9, 9)],
    );
    assert_keep(&d, 1);
    assert_ignored(&d, 9, "not signed by it");
}

#[test]
fn a_replayed_rotation_from_another_key_is_refused() {
    // A genuine rotation 3 → 4 from another site, replayed here.
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[rotated(3, 4, 3)]);
    assert_refuse(&d, &["not announced"]);
    assert_ignored(&d, 4, &format!("its rotation is from {}", fp(3)));
    // A rotation 1 → 2 re-announced with key 9 does not verify for 9.
    let mut replayed = rotated(1, 2, 1);
    replayed.key = key(9);
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[replayed]);
    assert_eq!(installs(&d), None, "{d:#?}");
    assert_ignored(&d, 9, "not signed by it");
    // A client that missed the rotation 1 → 2 refuses 2 → 3.
    let d = decide(&Trust::FirstUse, Some(&key(1)), &[rotated(2, 3, 2)]);
    assert_refuse(&d, &["pinned again"]);
}

#[test]
fn two_signed_successors_install_neither() {
    let seen = [rotated(1, 2, 1), rotated(1, 3, 1)];
    let d = decide(&Trust::FirstUse, Some(&key(1)), &seen);
    assert_refuse(
        &d,
        &["signed rotations to 2 different keys", &fp(2), &fp(3)],
    );
}

#[test]
fn the_same_key_with_and_without_a_rotation_counts_once() {
    let seen = [plain(2), rotated(1, 2, 1), rotated(1, 2, 1)];
    let d = decide(&Trust::FirstUse, Some(&key(1)), &seen);
    assert_install(&d, 2, "rotation");
    assert!(d.ignored.is_empty(), "{d:#?}");
}
