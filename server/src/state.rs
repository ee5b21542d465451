//! The server's state database (`<state_dir>/state.db`, SQLite in WAL
//! mode): the clients it knows and the host key pinned for each; their
//! package inventory and runs are in [`crate::inventory`].
//!
//! Pinning is trust on first use, keyed by the client's identity (its
//! announced machine id, or `host:port` for a static client), never by the
//! mDNS name, which avahi renames on conflicts. A changed host key is
//! refused and remembered until `cfi forget HOST`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

/// Schema version, in SQLite's `user_version`.
const SCHEMA: i64 = 4;

/// The state database.
#[derive(Debug)]
pub struct StateDb {
    pub(crate) db: Connection,
}

/// A database that does not open or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDbError {
    /// SQLite failed.
    #[error("state database {path}: {cause}")]
    Sqlite {
        /// The file.
        path: String,
        /// The cause.
        cause: rusqlite::Error,
    },
    /// Written by a newer cfi-server.
    #[error(
        "state database {path} has schema {found}, this cfi-server knows {SCHEMA}; upgrade cfi-server"
    )]
    Newer {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
    },
}

/// What checking an offered host key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// First contact: the key is now pinned.
    Pinned,
    /// The key is the pinned one.
    Matches,
    /// Another key than the pinned one: refused.
    Changed {
        /// What is pinned.
        pinned: String,
        /// What the host offered.
        offered: String,
    },
}

/// A client as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its identity.
    pub id: String,
    /// The pinned host key.
    pub host_key: Option<String>,
    /// Unix time of its last pass.
    pub last_sync: Option<i64>,
    /// What that pass did.
    pub last_result: Option<String>,
}

impl StateDb {
    /// Opens (creating) the database.
    pub fn open(path: &Path) -> Result<Self, StateDbError> {
        let shown = path.display().to_string();
        let err = |cause| StateDbError::Sqlite {
            path: shown.clone(),
            cause,
        };
        let db = Connection::open(path).map_err(err)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let found: i64 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if found > SCHEMA {
            return Err(StateDbError::Newer { path: shown, found });
        }
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS clients (
                 id TEXT PRIMARY KEY,
                 host TEXT NOT NULL,
                 hostkey TEXT,
                 refused_key TEXT,
                 first_seen INTEGER NOT NULL DEFAULT (unixepoch()),
                 last_seen INTEGER NOT NULL DEFAULT (unixepoch())
             );
             CREATE INDEX IF NOT EXISTS clients_host ON clients(host);",
        )
        .map_err(err)?;
        if found < 2 {
            // Schema 2: the last pass of each client.
            db.execute_batch(
                "BEGIN;
                 ALTER TABLE clients ADD COLUMN last_sync INTEGER;
                 ALTER TABLE clients ADD COLUMN last_result TEXT;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )
            .map_err(err)?;
        }
        if found < 3 {
            // Schema 3: clients accepted by `cfi accept` (accept = "manual").
            db.execute_batch(
                "BEGIN;
                 ALTER TABLE clients ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = 3;
                 COMMIT;",
            )
            .map_err(err)?;
        }
        if found < 4 {
            crate::inventory::create_tables(&db).map_err(err)?;
        }
        Ok(Self { db })
    }

    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> StateDbError + '_ {
        |cause| StateDbError::Sqlite {
            path: self.db.path().unwrap_or("state.db").to_owned(),
            cause,
        }
    }

    /// Checks the host key `offered` by client `id` (reached as `host`):
    /// pins it on first contact, refuses and remembers a different one.
    pub fn check_host_key(
        &self,
        id: &str,
        host: &str,
        offered: &str,
    ) -> Result<HostKey, StateDbError> {
        let outcome = match self.pinned(id)? {
            None => {
                self.db
                    .execute(
                        "INSERT INTO clients (id, host, hostkey) VALUES (?1, ?2, ?3)
                         ON CONFLICT(id) DO UPDATE SET host = ?2, hostkey = ?3, refused_key = NULL,
                             last_seen = unixepoch()",
                        params![id, host, offered],
                    )
                    .map_err(self.err())?;
                HostKey::Pinned
            }
            Some(p) if p == offered => HostKey::Matches,
            Some(p) => HostKey::Changed {
                pinned: p,
                offered: offered.to_owned(),
            },
        };
        let refused = match &outcome {
            HostKey::Changed { offered, .. } => Some(offered.as_str()),
            _ => None,
        };
        self.db
            .execute(
                "UPDATE clients SET host = ?2, refused_key = ?3, last_seen = unixepoch() WHERE id = ?1",
                params![id, host, refused],
            )
            .map_err(self.err())?;
        Ok(outcome)
    }

    /// The fingerprint pinned for client `id`, to hand to the SSH handshake
    /// so a wrong host is refused before the server authenticates to it.
    pub fn pinned(&self, id: &str) -> Result<Option<String>, StateDbError> {
        let pinned: Option<Option<String>> = self
            .db
            .query_row(
                "SELECT hostkey FROM clients WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(pinned.flatten())
    }

    /// Forgets the pinned key of the clients known by this id or host;
    /// returns how many there were. The next contact pins afresh.
    pub fn forget(&self, id_or_host: &str) -> Result<usize, StateDbError> {
        self.db
            .execute(
                "UPDATE clients SET hostkey = NULL, refused_key = NULL WHERE id = ?1 OR host = ?1",
                params![id_or_host],
            )
            .map_err(self.err())
    }

    /// Marks client `id` (named `host`) accepted: with `accept = "manual"`
    /// it is enrolled from now on.
    pub fn accept(&self, id: &str, host: &str) -> Result<(), StateDbError> {
        self.db
            .execute(
                "INSERT INTO clients (id, host, accepted) VALUES (?1, ?2, 1)
                 ON CONFLICT(id) DO UPDATE SET host = ?2, accepted = 1, last_seen = unixepoch()",
                params![id, host],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Whether client `id` was accepted, or contacted before (a pinned
    /// key: it was enrolled before `accept = "manual"` was set).
    pub fn is_accepted(&self, id: &str) -> Result<bool, StateDbError> {
        let found: Option<bool> = self
            .db
            .query_row(
                "SELECT accepted = 1 OR hostkey IS NOT NULL FROM clients WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(found.unwrap_or(false))
    }

    /// Records a completed pass of client `id` (reached as `host`), with a
    /// few words on what it did.
    pub fn record_sync(&self, id: &str, host: &str, result: &str) -> Result<(), StateDbError> {
        self.db
            .execute(
                "INSERT INTO clients (id, host, last_sync, last_result) VALUES (?1, ?2, unixepoch(), ?3)
                 ON CONFLICT(id) DO UPDATE SET host = ?2, last_sync = unixepoch(), last_result = ?3,
                     last_seen = unixepoch()",
                params![id, host, result],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// What is known of every client, by id.
    pub fn known(&self) -> Result<Vec<Known>, StateDbError> {
        let mut stmt = self
            .db
            .prepare("SELECT id, hostkey, last_sync, last_result FROM clients")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Known {
                    id: r.get(0)?,
                    host_key: r.get(1)?,
                    last_sync: r.get(2)?,
                    last_result: r.get(3)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Clients whose host key changed: (id, host, pinned, offered).
    pub fn refused(&self) -> Result<Vec<(String, String, String, String)>, StateDbError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT id, host, hostkey, refused_key FROM clients
                 WHERE refused_key IS NOT NULL ORDER BY host",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_pins_a_change_is_refused_until_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let db = StateDb::open(&d.path().join("state.db")).unwrap();
        assert_eq!(
            db.check_host_key("m1", "ws1", "SHA256:aaa").unwrap(),
            HostKey::Pinned
        );
        assert_eq!(
            db.check_host_key("m1", "ws1", "SHA256:aaa").unwrap(),
            HostKey::Matches
        );
        assert_eq!(
            db.check_host_key("m1", "ws1", "SHA256:bbb").unwrap(),
            HostKey::Changed {
                pinned: "SHA256:aaa".into(),
                offered: "SHA256:bbb".into()
            }
        );
        assert_eq!(
            db.refused().unwrap(),
            [(
                "m1".into(),
                "ws1".into(),
                "SHA256:aaa".into(),
                "SHA256:bbb".into()
            )]
        );
        assert_eq!(db.forget("ws1").unwrap(), 1);
        assert!(db.refused().unwrap().is_empty());
        assert_eq!(
            db.check_host_key("m1", "ws1", "SHA256:bbb").unwrap(),
            HostKey::Pinned
        );
    }

    #[test]
    fn identity_not_name_carries_the_pin() {
        let d = tempfile::tempdir().unwrap();
        let db = StateDb::open(&d.path().join("state.db")).unwrap();
        db.check_host_key("m1", "ws1", "SHA256:aaa").unwrap();
        // avahi renamed the host: same machine, same key, still trusted.
        assert_eq!(
            db.check_host_key("m1", "ws1-2", "SHA256:aaa").unwrap(),
            HostKey::Matches
        );
        // Another machine took the old name: it gets its own pin.
        assert_eq!(
            db.check_host_key("m2", "ws1", "SHA256:ccc").unwrap(),
            HostKey::Pinned
        );
    }

    #[test]
    fn pins_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        StateDb::open(&path)
            .unwrap()
            .check_host_key("m1", "ws1", "SHA256:aaa")
            .unwrap();
        let db = StateDb::open(&path).unwrap();
        assert!(matches!(
            db.check_host_key("m1", "ws1", "SHA256:zzz").unwrap(),
            HostKey::Changed { .. }
        ));
    }

    #[test]
    fn passes_are_recorded_beside_the_pin() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let db = StateDb::open(&path).unwrap();
        db.check_host_key("h:22", "h", "SHA256:aaa").unwrap();
        db.record_sync("h:22", "h", "3 updated").unwrap();
        db.record_sync("g:22", "g", "0 updated").unwrap();
        let mut known = StateDb::open(&path).unwrap().known().unwrap();
        known.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(known.len(), 2);
        assert_eq!(known[1].host_key.as_deref(), Some("SHA256:aaa"));
        assert_eq!(known[1].last_result.as_deref(), Some("3 updated"));
        assert!(known[0].last_sync.is_some() && known[0].host_key.is_none());
    }

    #[test]
    fn a_schema_1_database_is_upgraded_keeping_its_pins() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE clients (id TEXT PRIMARY KEY, host TEXT NOT NULL, hostkey TEXT,
                 refused_key TEXT, first_seen INTEGER NOT NULL DEFAULT (unixepoch()),
                 last_seen INTEGER NOT NULL DEFAULT (unixepoch()));
             INSERT INTO clients (id, host, hostkey) VALUES ('h:22', 'h', 'SHA256:aaa');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(old);
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.pinned("h:22").unwrap().as_deref(), Some("SHA256:aaa"));
        db.record_sync("h:22", "h", "ok").unwrap();
        drop(db);
        StateDb::open(&path).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 9)
            .unwrap();
        let err = StateDb::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("schema 9") && err.contains("state.db"),
            "{err}"
        );
    }

    #[test]
    fn accepted_clients_and_pinned_ones_count_as_accepted() {
        let d = tempfile::tempdir().unwrap();
        let db = StateDb::open(&d.path().join("state.db")).unwrap();
        assert!(!db.is_accepted("m1").unwrap());
        db.accept("m1", "ws1").unwrap();
        assert!(db.is_accepted("m1").unwrap());
        db.check_host_key("m2", "ws2", "SHA256:aaa").unwrap();
        assert!(db.is_accepted("m2").unwrap());
        // Reopened: the schema upgrade ran once, the answers stay.
        drop(db);
        let db = StateDb::open(&d.path().join("state.db")).unwrap();
        assert!(db.is_accepted("m1").unwrap() && !db.is_accepted("m3").unwrap());
    }
}
