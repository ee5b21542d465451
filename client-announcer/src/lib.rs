//! The client side of cfi. Today it holds the agent, which the server runs
//! over SSH as the forced command of its key ([`forced`]); the sync logic
//! lives in `cfi-sync` so both sides of the protocol are tested together.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod authorized_keys;
pub mod forced;
