//! The cfi lab: reproducible trees, tree comparison and benchmarks that run
//! the real `cfi` binary next to its peers (rsync) on the same data.
//!
//! The `cfi-lab` binary is a thin CLI over these modules:
//!
//! - [`tree`] generates the reproducible group tree the benchmarks sync;
//! - [`change`] mutates it reproducibly (the "1% change") and undoes that;
//! - [`compare`] checks that a target is the source, byte for byte;
//! - [`peer`] is what every sync tool under test looks like, with
//!   [`cfi`] and [`rsync`] as the two implementations;
//! - [`bench`] runs the phases and takes the timings, [`report`] renders them.
//!
//! It is a test harness, not a library for others: errors are `anyhow`
//! chains that name the operation and the path, the same as in a binary.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod bench;
pub mod cfi;
pub mod change;
pub mod compare;
pub mod peer;
pub mod report;
pub mod rsync;
pub mod tree;
