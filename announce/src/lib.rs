//! cfi's mDNS records and the client's trust in them.
//!
//! Servers and clients find each other over mDNS (DESIGN.md "The enrollment
//! story"): a server announces the SSH key clients should let in, a client
//! announces who it is and which group it wants. This crate is the shared,
//! pure part of that: the service types and TXT records ([`record`]), the
//! ed25519 keys and fingerprints they carry ([`key`]), the signatures that
//! let a server change its key ([`rotation`]), the id a client announces
//! ([`machine_id`]) and the policy that decides which announced server key
//! a client installs ([`trust`], [`verdict`], DESIGN.md "Trust").
//!
//! The records do no I/O and know no mDNS library: they take and give
//! plain (key, value) pairs. [`mdns`] is the glue to mdns-sd that both
//! daemons share.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod key;
pub mod machine_id;
pub mod mdns;
pub mod record;
pub mod rotation;
mod shown;
pub mod trust;
pub mod txt;
pub mod verdict;

pub use key::{BLOB_LEN, InvalidFingerprint, KEY_TYPE, KeyError, PublicKey, parse_fingerprint};
pub use machine_id::{InvalidMachineId, MachineId, MachineIdError, machine_id_from};
pub use record::{
    CLIENT_SERVICE, ClientRecord, GroupField, Rotation, SERVER_SERVICE, ServerRecord, VERSION,
};
pub use rotation::{RotationError, SIGNATURE_BASE64_LEN, sign_rotation, verify_rotation};
pub use trust::{Trust, TrustError};
pub use txt::{
    MAX_PROPERTY_LEN, RecordError, TXT_FINGERPRINT, TXT_GROUP, TXT_HOSTKEY, TXT_ID, TXT_KEY,
    TXT_PREVIOUS, TXT_ROTATION, TXT_VERSION,
};
pub use verdict::{Decision, Ignored, Verdict, decide};
