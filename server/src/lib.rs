//! The cfi server side: today the local sync pass behind `cfi sync-local`
//! and the output of the admin CLI; the daemon grows here.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod clients;
pub mod local;
pub mod render;
