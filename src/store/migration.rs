//! Whether a database's schema is the one this station's migrations make: the versions sqlx
//! recorded in `_sqlx_migrations` compared with the station's own list, without changing
//! anything (`station check`).

use sqlx::migrate::Migrator;

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(super) struct Applied {
    /// The migration's version (its file name's timestamp).
    pub(super) version: i64,
    /// Whether it ran to the end.
    pub(super) success: bool,
    /// SHA-384 of the SQL that ran.
    pub(super) checksum: Vec<u8>,
}

/// The schema's state against this station's migrations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationState {
    /// Migrations this station knows.
    pub known: usize,
    /// Of those, the ones the database has.
    pub applied: usize,
    /// Versions this station would apply.
    pub pending: Vec<i64>,
    /// Versions the database has that this station does not know (a newer station migrated
    /// it): this station refuses to work on it.
    pub unknown: Vec<i64>,
    /// Versions applied from SQL other than this station's (an edited migration) or that failed
    /// half-way.
    pub damaged: Vec<i64>,
}

impl MigrationState {
    /// Whether the schema is exactly the one this station's migrations make.
    pub fn current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.damaged.is_empty()
    }
}

impl std::fmt::Display for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.current() {
            return write!(f, "migrations current ({} of {})", self.applied, self.known);
        }
        let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.pending.is_empty() {
            parts.push(format!(
                "{} pending ({})",
                self.pending.len(),
                list(&self.pending)
            ));
        }
        if !self.unknown.is_empty() {
            parts.push(format!(
                "{} from a newer station ({})",
                self.unknown.len(),
                list(&self.unknown)
            ));
        }
        if !self.damaged.is_empty() {
            parts.push(format!(
                "{} edited or failed half-way ({})",
                self.damaged.len(),
                list(&self.damaged)
            ));
        }
        write!(f, "migrations NOT current: {}", parts.join("; "))
    }
}

/// Compares what a database recorded with a migrator's list.
pub(super) fn state(migrator: &Migrator, applied: &[Applied]) -> MigrationState {
    let known: Vec<_> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let mut state = MigrationState {
        known: known.len(),
        applied: 0,
        pending: Vec::new(),
        unknown: Vec::new(),
        damaged: Vec::new(),
    };
    for migration in &known {
        match applied.iter().find(|a| a.version == migration.version) {
            None => state.pending.push(migration.version),
            Some(row) if !row.success || *row.checksum != *migration.checksum => {
                state.damaged.push(row.version);
            }
            Some(_) => state.applied += 1,
        }
    }
    state.unknown = applied
        .iter()
        .filter(|a| !known.iter().any(|m| m.version == a.version))
        .map(|a| a.version)
        .collect();
    state
}
