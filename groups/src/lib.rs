//! What a cfi group is.
//!
//! A group is a named directory under the data dir (`/var/lib/cfi` by
//! default). Its tree, overlaid on the shared `all/` tree, is what every
//! member machine's root must look like. This crate holds the rules for group
//! names ([`name`]), the on-disk layout ([`layout`]), the manifest of an
//! effective tree ([`manifest`]) and the pkgsync package lists a tree may
//! carry ([`pkglist`]); it reads the disk but never writes a group.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod hashcache;
pub mod layout;
pub mod manifest;
pub mod name;
pub mod pkglist;
pub mod relpath;
mod walk;

pub use layout::DataDir;
pub use manifest::{Entry, Kind, Manifest, ManifestError, Tree};
pub use name::{GroupName, InvalidGroupName};
pub use pkglist::{Class, ListKind, PkgList, PkgListError, PkgLists};
pub use relpath::{InvalidPath, RelPath};
