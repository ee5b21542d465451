//! Package convergence on a client, the way Debian's pkgsync does it
//! (DESIGN.md, "Packages"), run by `cfi-agent pkgs …` on the server's
//! behalf.
//!
//! - [`dpkg`] reads what is installed and what apt marked automatic.
//! - [`plan`] turns the group's pkgsync lists into apt's request and judges
//!   apt's answer with the safety rails.
//! - [`apt`] reads apt's simulation (the plan after the resolver, which is
//!   what apt will really do) and its errors.
//! - [`run`] drives apt-get, apt-mark and dpkg-query on the real system,
//!   reading the machine (`machine.rs`) and running the tools (`tool.rs`).
//! - [`report`] is what a run prints and the server stores.

pub mod apt;
pub mod dpkg;
mod machine;
pub mod plan;
pub mod report;
pub mod run;
mod tool;

pub use report::{Inventory, PkgReport};
