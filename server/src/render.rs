//! How the CLI shows results to a person. Scripts use `--json`.

use std::fmt::Write;

use cfi_sync::PassReport;
use cfi_sync::report::Action;

/// A pass report as lines for a terminal.
pub fn pass(report: &PassReport) -> String {
    let mut out = String::new();
    let verb = if report.dry_run {
        "would change"
    } else {
        "changed"
    };
    for c in &report.changes {
        let tag = match c.action {
            Action::Create => "create",
            Action::Update => "update",
            Action::Metadata => "chmod ",
            Action::Delete => "delete",
            Action::Restore => "restore",
            Action::Mkdir => "mkdir ",
            Action::Rmdir => "rmdir ",
        };
        let _ = writeln!(out, "{tag} {}", c.path);
        if let Some(diff) = &c.diff {
            out.push_str(diff);
        }
    }
    for d in &report.drift {
        let _ = writeln!(out, "drift  {d} (changed locally; repaired, copy kept)");
    }
    for e in &report.errors {
        let _ = writeln!(out, "error  {}: {}", e.path, e.message);
    }
    let _ = writeln!(
        out,
        "{verb}: {} updated, {} unchanged, {} deleted, {} restored, {} dirs created, {} drifted, {} errors; {} bytes sent, {} received",
        report.files_updated,
        report.files_unchanged,
        report.files_deleted,
        report.files_restored,
        report.dirs_created,
        report.drift.len(),
        report.errors.len(),
        report.bytes_to_agent,
        report.bytes_from_agent,
    );
    out
}
