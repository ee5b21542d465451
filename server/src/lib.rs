//! The cfi server side: the local sync pass behind `cfi sync-local`, the
//! output of the admin CLI and the SSH transport to clients; the daemon
//! grows here.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod admin;
pub mod check;
pub mod clients;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fold;
pub mod inventory;
pub mod local;
pub mod pkgs;
pub mod render;
pub mod ssh;
pub mod state;
