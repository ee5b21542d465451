//! The client side of cfi: the announcer ([`announcer`]: mDNS, the trust
//! policy, the pinned server key in [`pin`], the one cfi line of
//! `authorized_keys` in [`authorized_keys`], configured by [`config`]) and
//! the agent, which the server runs over SSH as the forced command of its
//! key ([`forced`]); the sync logic lives in `cfi-sync` so both sides of the
//! protocol are tested together.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod announcer;
pub mod authorized_keys;
pub mod config;
pub mod forced;
pub mod pin;
pub mod pkgs;
