//! Rotation signatures: how a server hands its clients over to a new key.
//!
//! A client with `trust = "first-use"` pins the first server key it sees and
//! then refuses every other one (DESIGN.md "Trust"). When the server replaces
//! its key A by B, it announces B together with a signature by A over B; a
//! client that pinned A checks it with A and moves to B. Anyone on the LAN
//! can announce a key, but only A's holder can sign for it.
//!
//! The signed message is a fixed context string and B's SSH wire blob, so a
//! signature made for another purpose with A can never pass as a rotation.
//! The signature travels in TXT `rot` as the standard padded base64 of the
//! 64 raw ed25519 signature bytes (88 characters).

use base64ct::{Base64, Encoding};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

use crate::key::PublicKey;

/// What starts every signed rotation message; the NUL ends the context so no
/// blob can extend it.
const CONTEXT: &[u8] = b"cfi-server-key-rotation-v1\0";

/// Length of a rotation signature in base64: 64 bytes, padded.
pub const SIGNATURE_BASE64_LEN: usize = 88;

/// Why a rotation could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// The seed given is not the private half of the old public key.
    #[error("cannot sign the rotation to {new}: the private key does not match the old key {old}")]
    KeyMismatch {
        /// Fingerprint of the old public key.
        old: String,
        /// Fingerprint of the new key.
        new: String,
    },
}

/// Signs the move from `old_public` to `new` with the old key's 32-byte
/// ed25519 seed (the private key as OpenSSH stores it). Returns the value of
/// TXT `rot`.
pub fn sign_rotation(
    old_seed: &[u8; 32],
    old_public: &PublicKey,
    new: &PublicKey,
) -> Result<String, RotationError> {
    // from_seed_and_public_key checks that the seed derives the public key,
    // so a server with mismatched key files cannot publish a rotation no
    // client would accept.
    let pair =
        Ed25519KeyPair::from_seed_and_public_key(old_seed, &old_public.raw()).map_err(|_| {
            RotationError::KeyMismatch {
                old: old_public.fingerprint(),
                new: new.fingerprint(),
            }
        })?;
    let signature = pair.sign(&message(new));
    Ok(Base64::encode_string(signature.as_ref()))
}

/// Whether `signature` (TXT `rot`) is `old`'s signature over the move to
/// `new`. Anything malformed is simply not a valid signature.
pub fn verify_rotation(old: &PublicKey, new: &PublicKey, signature: &str) -> bool {
    if signature.len() != SIGNATURE_BASE64_LEN {
        return false;
    }
    let Ok(bytes) = Base64::decode_vec(signature) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, old.raw())
        .verify(&message(new), &bytes)
        .is_ok()
}

/// Whether `signature` has the shape of a rotation signature: 88 characters
/// of padded base64 of 64 bytes. Says nothing about whom it is from.
pub(crate) fn is_signature_shaped(signature: &str) -> bool {
    signature.len() == SIGNATURE_BASE64_LEN
        && Base64::decode_vec(signature).is_ok_and(|bytes| bytes.len() == 64)
}

/// The bytes a rotation to `new` signs.
fn message(new: &PublicKey) -> Vec<u8> {
    [CONTEXT, new.blob()].concat()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key pair from a fixed seed, so tests need no randomness.
    pub(crate) fn pair(n: u8) -> ([u8; 32], PublicKey) {
        use ring::signature::KeyPair;
        let seed = [n; 32];
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let raw = pair.public_key().as_ref().try_into().unwrap();
        (seed, PublicKey::from_raw(raw))
    }

    #[test]
    fn signing_and_verifying_round_trip() {
        let ((seed_a, a), (_, b)) = (pair(1), pair(2));
        let sig = sign_rotation(&seed_a, &a, &b).unwrap();
        assert_eq!(sig.len(), SIGNATURE_BASE64_LEN);
        assert!(sig.ends_with("=="));
        assert!(is_signature_shaped(&sig));
        assert!(verify_rotation(&a, &b, &sig));
    }

    #[test]
    fn wrong_keys_and_mangled_signatures_fail() {
        let ((seed_a, a), (seed_b, b), (_, c)) = (pair(1), pair(2), pair(3));
        let sig = sign_rotation(&seed_a, &a, &b).unwrap();
        // Over another key, by another key, the other way round.
        assert!(!verify_rotation(&a, &c, &sig));
        assert!(!verify_rotation(&c, &b, &sig));
        assert!(!verify_rotation(&b, &a, &sig));
        let by_b = sign_rotation(&seed_b, &b, &c).unwrap();
        assert!(!verify_rotation(&a, &c, &by_b));
        // Truncated, garbage, flipped, empty, padded differently.
        for bad in [
            sig[..86].to_owned(),
            sig[..84].to_owned() + "====",
            "!".repeat(88),
            String::new(),
            format!("{}A==", &sig[..85]),
            sig.replace("==", "=A"),
            format!("{sig}AAAA"),
        ] {
            assert!(!verify_rotation(&a, &b, &bad), "{bad:?}");
        }
        let mut flipped = Base64::decode_vec(&sig).unwrap();
        flipped[10] ^= 1;
        assert!(!verify_rotation(&a, &b, &Base64::encode_string(&flipped)));
    }

    #[test]
    fn a_seed_of_another_key_is_refused() {
        let ((_, a), (seed_b, b)) = (pair(1), pair(2));
        let err = sign_rotation(&seed_b, &a, &b).unwrap_err();
        assert!(err.to_string().contains(&a.fingerprint()), "{err}");
    }
}
