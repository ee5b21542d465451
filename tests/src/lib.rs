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
//! - [`bench`](mod@bench) runs the phases and takes the timings, [`report`] renders them.
//!
//! The pool benchmarks (`bench exec`, `bench sync`) run on a [`lab`] of
//! real hosts:
//!
//! - [`pool_bench`] runs cfi and its peers there and takes the timings,
//!   [`pool_checks`] checks every result, [`pool_report`] renders them;
//! - [`pool_tools`] runs the peers (pdsh, clush, rsync over ssh) and
//!   measures wall time and the orchestrator's CPU; [`cfi_pool`] runs cfi's
//!   daemon and CLI the same way.
//!
//! The zero-config benchmarks (`bench propagate`, `bench enroll`, `bench
//! rss`) run cfi as a pool that nobody lists: clients announce themselves.
//!
//! - [`zeroconf`] runs `cfi-server` on the host with its mDNS on the lab's
//!   bridge and reads `cfi clients --json`, its memory and its CPU;
//! - [`propagate_bench`], [`enroll_bench`] and [`rss_bench`] take the
//!   timings and render them; [`logtime`] reads the daemons' log times
//!   that split a latency into its steps, [`stats`] summarizes samples;
//! - [`wait_file`] and [`announce_many`] are the helpers they run inside
//!   lab clients (`cfi-lab wait-file`, `cfi-lab announce-many`).
//!
//! [`load_bench`] (`bench load`) runs a big statically listed pool through
//! a burst of changes to its group.
//!
//! [`demo`] is the main job narrated on a lab (`cfi-lab demo`).
//!
//! The end-to-end tests (`tests/lab.rs`) run on real hosts:
//!
//! - [`image`] builds the Debian 12 client image with debootstrap, once per
//!   recipe;
//! - [`apt_sources`] finds the Debian mirror apt uses here, for that build;
//! - [`lab`] starts client containers of it on a docker network of their
//!   own, reachable over SSH, and removes them on drop; [`client_spec`]
//!   says what a client starts with (cfi's config, avahi, cfi's binaries);
//!   [`bridge`] is the network's side on the host, and lets mDNS across
//!   it; [`leftovers`] removes what labs of killed processes left;
//!   [`pipe_budget`] gives its hosts the pipe memory each would have on a
//!   kernel of its own;
//! - [`debs`] has the lab run cfi's Debian packages instead of loose
//!   binaries (`CFI_LAB_DEBS`, as `scripts/test` sets it);
//! - [`docker`] and [`command`] run the external programs, each within a
//!   time limit;
//! - [`aptrepo`] builds apt repositories of test packages and serves them
//!   to clients, for the package-management tests (`tests/aptrepo_lab.rs`).
//!
//! It is a test harness, not a library for others: errors are `anyhow`
//! chains that name the operation and the path, the same as in a binary.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod announce_many;
pub mod apt_sources;
pub mod aptrepo;
pub mod bench;
pub mod bridge;
pub mod cfi;
pub mod cfi_pool;
pub mod change;
pub mod client_spec;
pub mod command;
pub mod compare;
pub mod daemon_process;
pub mod debs;
pub mod demo;
pub mod docker;
pub mod enroll_bench;
pub mod image;
pub mod lab;
pub mod lab_disk;
pub mod leftovers;
pub mod load_bench;
pub mod logtime;
pub mod peer;
pub mod pipe_budget;
pub mod pool_bench;
pub mod pool_checks;
pub mod pool_report;
pub mod pool_tools;
pub mod propagate_bench;
pub mod report;
pub mod rss_bench;
pub mod rsync;
pub mod server_container;
pub mod stats;
pub mod systemd_host;
pub mod tree;
pub mod wait_file;
pub mod zeroconf;
