//! The package inventory of every client and the history of package runs,
//! in the state database, so `cfi pkgs search`, `list` and `outdated`
//! answer across the pool without touching a host.

use cfi_packages::{Inventory, PkgReport};
use rusqlite::{Connection, params};

use crate::control::PkgRow;
use crate::state::{StateDb, StateDbError};

/// Schema 4: what each client has installed (with the candidate of an
/// upgradable package) and every package run.
pub(crate) fn create_tables(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS pkg_hosts (
             id TEXT PRIMARY KEY,
             host TEXT NOT NULL,
             refreshed INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS packages (
             id TEXT NOT NULL,
             name TEXT NOT NULL,
             arch TEXT NOT NULL,
             version TEXT NOT NULL,
             auto INTEGER NOT NULL,
             candidate TEXT,
             PRIMARY KEY (id, name, arch)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS packages_name ON packages(name);
         CREATE TABLE IF NOT EXISTS pkg_runs (
             run INTEGER PRIMARY KEY,
             id TEXT NOT NULL,
             host TEXT NOT NULL,
             at INTEGER NOT NULL DEFAULT (unixepoch()),
             action TEXT NOT NULL,
             ok INTEGER NOT NULL,
             summary TEXT NOT NULL,
             report TEXT NOT NULL
         );
         PRAGMA user_version = 4;
         COMMIT;",
    )
}

/// The most runs kept per client: the history is for "what happened
/// lately", not an archive.
const RUNS_KEPT: i64 = 100;

impl StateDb {
    /// Records a package run of client `id` (named `host`) and, when it
    /// carries one, replaces the client's inventory, in one transaction.
    pub fn record_pkg_run(
        &mut self,
        id: &str,
        host: &str,
        report: &PkgReport,
    ) -> Result<(), StateDbError> {
        let path = self.db.path().unwrap_or("state.db").to_owned();
        let err = |cause| StateDbError::Sqlite {
            path: path.clone(),
            cause,
        };
        let json = serde_json::to_string(&PkgReport {
            inventory: None,
            ..report.clone()
        })
        .unwrap_or_default();
        let tx = self.db.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO pkg_runs (id, host, action, ok, summary, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, host, report.action, report.ok(), report.summary(), json],
        )
        .map_err(err)?;
        tx.execute(
            "DELETE FROM pkg_runs WHERE id = ?1 AND run NOT IN
                 (SELECT run FROM pkg_runs WHERE id = ?1 ORDER BY run DESC LIMIT ?2)",
            params![id, RUNS_KEPT],
        )
        .map_err(err)?;
        if let Some(inv) = &report.inventory {
            store(&tx, id, host, inv).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Packages whose name matches the shell glob `pattern`, on every
    /// client, by name then host.
    pub fn search_packages(&self, pattern: &str) -> Result<Vec<PkgRow>, StateDbError> {
        self.package_rows("p.name GLOB ?1", pattern)
    }

    /// Everything installed on the client named `host` (or with that id).
    pub fn host_packages(&self, host: &str) -> Result<Vec<PkgRow>, StateDbError> {
        self.package_rows("(h.host = ?1 OR h.id = ?1)", host)
    }

    /// Every upgradable package on every client.
    pub fn outdated_packages(&self) -> Result<Vec<PkgRow>, StateDbError> {
        self.package_rows("p.candidate IS NOT NULL AND ?1 = ?1", "")
    }

    fn package_rows(&self, filter: &str, arg: &str) -> Result<Vec<PkgRow>, StateDbError> {
        let sql = format!(
            "SELECT h.host, p.name, p.arch, p.version, p.auto, p.candidate, h.refreshed
             FROM packages p JOIN pkg_hosts h ON h.id = p.id
             WHERE {filter} ORDER BY p.name, h.host, p.arch"
        );
        let mut stmt = self.db.prepare(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(params![arg], |r| {
                Ok(PkgRow {
                    host: r.get(0)?,
                    name: r.get(1)?,
                    arch: r.get(2)?,
                    version: r.get(3)?,
                    auto: r.get(4)?,
                    candidate: r.get(5)?,
                    refreshed: r.get(6)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

fn store(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    host: &str,
    inv: &Inventory,
) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM packages WHERE id = ?1", params![id])?;
    tx.execute(
        "INSERT INTO pkg_hosts (id, host, refreshed) VALUES (?1, ?2, unixepoch())
         ON CONFLICT(id) DO UPDATE SET host = ?2, refreshed = unixepoch()",
        params![id, host],
    )?;
    let mut insert = tx.prepare(
        "INSERT OR REPLACE INTO packages (id, name, arch, version, auto, candidate)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
    )?;
    for p in &inv.installed {
        insert.execute(params![id, p.name, p.arch, p.version, p.auto])?;
    }
    let mut candidate = tx.prepare(
        "UPDATE packages SET candidate = ?4 WHERE id = ?1 AND name = ?2 AND (arch = ?3 OR arch = 'all')",
    )?;
    for u in &inv.upgradable {
        candidate.execute(params![id, u.name, u.arch, u.candidate])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cfi_packages::report::{Installed, Upgradable};

    use super::*;

    fn report(installed: &[(&str, &str)], upgradable: &[(&str, &str)]) -> PkgReport {
        PkgReport {
            action: "refresh".into(),
            inventory: Some(Inventory {
                installed: installed
                    .iter()
                    .map(|(n, v)| Installed {
                        name: (*n).into(),
                        arch: "amd64".into(),
                        version: (*v).into(),
                        auto: false,
                    })
                    .collect(),
                upgradable: upgradable
                    .iter()
                    .map(|(n, c)| Upgradable {
                        name: (*n).into(),
                        arch: "amd64".into(),
                        current: String::new(),
                        candidate: (*c).into(),
                    })
                    .collect(),
            }),
            ..PkgReport::default()
        }
    }

    #[test]
    fn inventory_answers_search_list_and_outdated_and_is_replaced_by_the_next_run() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let mut db = StateDb::open(&path).unwrap();
        db.record_pkg_run(
            "m1",
            "ws1",
            &report(&[("vim", "9.0"), ("bash", "5.2")], &[("vim", "9.1")]),
        )
        .unwrap();
        db.record_pkg_run("m2", "ws2", &report(&[("vim", "9.1")], &[]))
            .unwrap();
        let hosts = |rows: Vec<PkgRow>| {
            rows.into_iter()
                .map(|r| format!("{} {} {}", r.host, r.name, r.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hosts(db.search_packages("vi*").unwrap()),
            ["ws1 vim 9.0", "ws2 vim 9.1"]
        );
        assert_eq!(
            hosts(db.search_packages("[b]ash").unwrap()),
            ["ws1 bash 5.2"]
        );
        assert_eq!(
            hosts(db.host_packages("ws1").unwrap()),
            ["ws1 bash 5.2", "ws1 vim 9.0"]
        );
        let outdated = db.outdated_packages().unwrap();
        assert_eq!(outdated.len(), 1);
        assert_eq!(outdated[0].candidate.as_deref(), Some("9.1"));
        // The next run replaces the inventory, and it survives a restart.
        db.record_pkg_run("m1", "ws1", &report(&[("bash", "5.2")], &[]))
            .unwrap();
        drop(db);
        let db = StateDb::open(&path).unwrap();
        assert_eq!(hosts(db.search_packages("vim").unwrap()), ["ws2 vim 9.1"]);
        assert!(db.outdated_packages().unwrap().is_empty());
    }

    #[test]
    fn run_history_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&d.path().join("state.db")).unwrap();
        for _ in 0..(RUNS_KEPT + 5) {
            db.record_pkg_run("m1", "ws1", &PkgReport::default())
                .unwrap();
        }
        let n: i64 = db
            .db
            .query_row("SELECT count(*) FROM pkg_runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, RUNS_KEPT);
    }
}
