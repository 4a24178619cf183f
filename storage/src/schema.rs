//! The schema's version: which migrations of `migrations/` are applied, and moving
//! it up or down (`phoenix-api migrate status|up|down`, and every server's start).
//!
//! Every migration is a reversible pair `NNNN_name.up.sql` + `NNNN_name.down.sql`,
//! embedded at build time. sqlx records each applied up step in `_sqlx_migrations`
//! (version, description, SHA-384 of the up file); an up file never changes once
//! released, so databases migrated by any earlier release keep matching.
//!
//! A down step that cannot undo its up step without losing data says so on a line
//! of its own, `-- lossy: table, table.column, …`, naming what it drops; going down
//! across it is refused unless forced. This module reads that marker; what it
//! names is also what the round-trip test excuses from its data checksum.
//!
//! Servers call [`prepare`] at start: a schema behind theirs is migrated up (or,
//! with `--no-migrate`, refused, naming both versions); a schema ahead of theirs is
//! accepted (expand and contract: a release works against the schema of the next
//! one), never migrated down.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::{Migrate, Migration};

use crate::{PgConnection, PgPool, StoreError, templates};

/// The marker that starts a lossy down step's line.
const LOSSY_MARKER: &str = "-- lossy:";

/// sqlx's bookkeeping table: its default name, which every release has used (and
/// which [`applied`] reads).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// One migration this binary knows: its up step and its down step.
#[derive(Clone, Debug)]
pub struct Step {
    pub version: i64,
    pub description: String,
    up: &'static Migration,
    down: Option<&'static Migration>,
}

impl Step {
    /// What going down across this step drops (`table` or `table.column`); empty
    /// for a step whose down loses nothing.
    pub fn lossy(&self) -> Vec<String> {
        self.down
            .map(|down| lossy_marker(down.sql.as_str()))
            .unwrap_or_default()
    }

    /// The SHA-384 of the up file, as `_sqlx_migrations` records it.
    pub fn checksum(&self) -> &[u8] {
        &self.up.checksum
    }

    pub fn has_down(&self) -> bool {
        self.down.is_some()
    }
}

/// Every migration this binary knows, oldest first.
pub fn steps() -> Vec<Step> {
    let mut by_version: BTreeMap<i64, Step> = BTreeMap::new();
    for migration in crate::MIGRATOR.iter() {
        if migration.migration_type.is_up_migration() {
            by_version
                .entry(migration.version)
                .and_modify(|s| s.up = migration)
                .or_insert(Step {
                    version: migration.version,
                    description: migration.description.to_string(),
                    up: migration,
                    down: None,
                });
        }
    }
    for migration in crate::MIGRATOR.iter() {
        if migration.migration_type.is_down_migration()
            && let Some(step) = by_version.get_mut(&migration.version)
        {
            step.down = Some(migration);
        }
    }
    by_version.into_values().collect()
}

/// The newest schema version this binary knows.
pub fn latest() -> i64 {
    steps().last().map_or(0, |s| s.version)
}

/// What a down step's `-- lossy:` line names.
pub fn lossy_marker(sql: &str) -> Vec<String> {
    sql.lines()
        .filter_map(|line| line.trim().strip_prefix(LOSSY_MARKER))
        .flat_map(|names| names.split(','))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// One migration as the database and this binary see it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
    /// False for a migration applied by a newer release (this binary has no file).
    pub known: bool,
    /// The applied checksum differs from this binary's up file.
    pub checksum_mismatch: bool,
    /// What its down step drops; empty when it loses nothing.
    pub lossy: Vec<String>,
}

/// Where the schema stands against this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// Every migration this binary knows is applied, and nothing newer.
    Current,
    /// Some migration this binary knows is not applied.
    Behind,
    /// Migrations of a newer release are applied (this binary knows them all).
    Ahead,
    /// A migration failed half-way, or an applied one differs from this binary's.
    Broken,
}

/// `phoenix-api migrate status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaStatus {
    /// The newest applied version (0: none).
    pub current: i64,
    /// The newest version this binary knows.
    pub latest: i64,
    pub standing: Standing,
    /// A migration recorded as failed, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<i64>,
    pub migrations: Vec<MigrationState>,
}

impl SchemaStatus {
    /// Why a server cannot start on this schema, if it cannot (ahead is fine).
    pub fn problem(&self) -> Option<String> {
        if let Some(version) = self.dirty {
            return Some(format!(
                "migration {version} failed half-way (_sqlx_migrations.success is false); repair the schema by hand, then delete that row"
            ));
        }
        let mismatched: Vec<String> = self
            .migrations
            .iter()
            .filter(|m| m.checksum_mismatch)
            .map(|m| format!("{:04}", m.version))
            .collect();
        if !mismatched.is_empty() {
            return Some(format!(
                "applied migration(s) {} differ from this binary's (a released migration was edited); restore the original files",
                mismatched.join(", ")
            ));
        }
        None
    }

    /// Applied migrations this binary does not know (of a newer release).
    pub fn unknown(&self) -> Vec<i64> {
        self.migrations
            .iter()
            .filter(|m| !m.known)
            .map(|m| m.version)
            .collect()
    }
}

struct Applied {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
    installed_on: chrono::DateTime<chrono::Utc>,
}

async fn applied(conn: &mut PgConnection) -> Result<Vec<Applied>, StoreError> {
    // Not created here: `CREATE TABLE IF NOT EXISTS` from two processes at once
    // can fail (a unique violation in pg_type), so only a migrator holding the
    // lock creates it ([`up`]).
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, Vec<u8>, bool, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT version, checksum, success, installed_on FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, checksum, success, installed_on)| Applied {
            version,
            checksum,
            success,
            installed_on,
        })
        .collect())
}

/// Reads the schema's state (no bookkeeping table yet: nothing applied).
pub async fn status(conn: &mut PgConnection) -> Result<SchemaStatus, StoreError> {
    let applied = applied(conn).await?;
    Ok(compare(&steps(), &applied))
}

fn compare(steps: &[Step], applied: &[Applied]) -> SchemaStatus {
    let mut migrations: BTreeMap<i64, MigrationState> = steps
        .iter()
        .map(|s| {
            (
                s.version,
                MigrationState {
                    version: s.version,
                    description: s.description.clone(),
                    applied: false,
                    applied_at: None,
                    known: true,
                    checksum_mismatch: false,
                    lossy: s.lossy(),
                },
            )
        })
        .collect();
    let by_version: BTreeMap<i64, &Step> = steps.iter().map(|s| (s.version, s)).collect();
    let mut dirty = None;
    for a in applied {
        if !a.success && dirty.is_none() {
            dirty = Some(a.version);
        }
        let state = migrations.entry(a.version).or_insert(MigrationState {
            version: a.version,
            description: String::new(),
            applied: true,
            applied_at: None,
            known: false,
            checksum_mismatch: false,
            lossy: Vec::new(),
        });
        state.applied = true;
        state.applied_at = Some(a.installed_on);
        state.checksum_mismatch = by_version
            .get(&a.version)
            .is_some_and(|s| s.checksum() != a.checksum.as_slice());
    }
    let migrations: Vec<MigrationState> = migrations.into_values().collect();
    let current = applied.iter().map(|a| a.version).max().unwrap_or(0);
    let latest = steps.last().map_or(0, |s| s.version);
    let broken = dirty.is_some() || migrations.iter().any(|m| m.checksum_mismatch);
    let standing = if broken {
        Standing::Broken
    } else if migrations.iter().any(|m| m.known && !m.applied) {
        Standing::Behind
    } else if migrations.iter().any(|m| !m.known) {
        Standing::Ahead
    } else {
        Standing::Current
    };
    SchemaStatus {
        current,
        latest,
        standing,
        dirty,
        migrations,
    }
}

/// Why the schema was not moved.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{0}")]
    Broken(String),
    #[error(
        "the schema is at version {current}, and migrations {unknown:?} belong to a newer release than this binary (which knows up to {latest}); go down with that release's phoenix-api"
    )]
    NewerRelease {
        current: i64,
        latest: i64,
        unknown: Vec<i64>,
    },
    #[error("migration {0:04} has no down step")]
    NoDownStep(i64),
    #[error("--to {0} is not a migration this binary knows (0 or one of {1})")]
    UnknownTarget(i64, String),
    #[error(
        "going down to {to} loses data: {}; nothing was changed. Take a backup first (docs/OPERATIONS.md), then add --force",
        lossy.iter().map(|(v, what)| format!("{v:04} drops {}", what.join(", "))).collect::<Vec<_>>().join("; ")
    )]
    Lossy {
        to: i64,
        lossy: Vec<(i64, Vec<String>)>,
    },
    #[error(
        "the schema is at version {current} and this {binary} needs {latest}: run `phoenix-api migrate up` (the Helm chart's migration Job does), or start without --no-migrate"
    )]
    Behind {
        binary: &'static str,
        current: i64,
        latest: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for SchemaError {
    fn from(err: sqlx::Error) -> Self {
        SchemaError::Store(err.into())
    }
}

impl From<sqlx::migrate::MigrateError> for SchemaError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        SchemaError::Store(err.into())
    }
}

/// One step taken by [`up`] or [`down`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    pub version: i64,
    pub description: String,
    /// `up` or `down`.
    pub direction: &'static str,
    #[serde(skip)]
    pub took: Duration,
}

/// Runs `f` holding sqlx's migration lock (the one every release's migrator takes),
/// so concurrent migrators, old or new, wait for each other.
async fn locked<T>(
    conn: &mut PgConnection,
    f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, SchemaError>,
) -> Result<T, SchemaError> {
    conn.lock().await?;
    let result = f(&mut *conn).await;
    let unlocked = conn.unlock().await;
    let value = result?;
    unlocked?;
    Ok(value)
}

fn refuse_broken(status: &SchemaStatus) -> Result<(), SchemaError> {
    match status.problem() {
        Some(problem) => Err(SchemaError::Broken(problem)),
        None => Ok(()),
    }
}

/// Applies every known migration up to `to` (default: all) that is not applied.
/// `on_step` hears of each as it is done.
pub async fn up(
    conn: &mut PgConnection,
    to: Option<i64>,
    mut on_step: impl FnMut(&Moved),
) -> Result<Vec<Moved>, SchemaError> {
    let steps = steps();
    if let Some(to) = to {
        check_target(&steps, to)?;
    }
    locked(conn, async move |conn| {
        conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
        let status = status(conn).await?;
        refuse_broken(&status)?;
        let applied: Vec<i64> = status
            .migrations
            .iter()
            .filter(|m| m.applied)
            .map(|m| m.version)
            .collect();
        let mut moved = Vec::new();
        for step in &steps {
            if applied.contains(&step.version) || to.is_some_and(|to| step.version > to) {
                continue;
            }
            let took = conn.apply(MIGRATIONS_TABLE, step.up).await?;
            let m = Moved {
                version: step.version,
                description: step.description.clone(),
                direction: "up",
                took,
            };
            on_step(&m);
            moved.push(m);
        }
        Ok(moved)
    })
    .await
}

fn check_target(steps: &[Step], to: i64) -> Result<(), SchemaError> {
    if to == 0 || steps.iter().any(|s| s.version == to) {
        return Ok(());
    }
    let known: Vec<String> = steps.iter().map(|s| s.version.to_string()).collect();
    Err(SchemaError::UnknownTarget(to, known.join(", ")))
}

/// What going down to `to` would undo, newest first; refused as a whole (nothing
/// changed) when a step is of a newer release, has no down step, or is lossy
/// without `force`.
pub fn plan_down(
    steps: &[Step],
    status: &SchemaStatus,
    to: i64,
    force: bool,
) -> Result<Vec<Step>, SchemaError> {
    check_target(steps, to)?;
    refuse_broken(status)?;
    let unknown: Vec<i64> = status.unknown().into_iter().filter(|v| *v > to).collect();
    if !unknown.is_empty() {
        return Err(SchemaError::NewerRelease {
            current: status.current,
            latest: status.latest,
            unknown,
        });
    }
    let undo: Vec<Step> = steps
        .iter()
        .rev()
        .filter(|s| s.version > to)
        .filter(|s| {
            status
                .migrations
                .iter()
                .any(|m| m.version == s.version && m.applied)
        })
        .cloned()
        .collect();
    if let Some(step) = undo.iter().find(|s| !s.has_down()) {
        return Err(SchemaError::NoDownStep(step.version));
    }
    let lossy: Vec<(i64, Vec<String>)> = undo
        .iter()
        .map(|s| (s.version, s.lossy()))
        .filter(|(_, what)| !what.is_empty())
        .collect();
    if !lossy.is_empty() && !force {
        return Err(SchemaError::Lossy { to, lossy });
    }
    Ok(undo)
}

/// Undoes every applied migration above `to`, newest first (see [`plan_down`]).
pub async fn down(
    conn: &mut PgConnection,
    to: i64,
    force: bool,
    mut on_step: impl FnMut(&Moved),
) -> Result<Vec<Moved>, SchemaError> {
    let steps = steps();
    locked(conn, async move |conn| {
        let status = status(conn).await?;
        let undo = plan_down(&steps, &status, to, force)?;
        let mut moved = Vec::new();
        for step in undo {
            let down = step.down.ok_or(SchemaError::NoDownStep(step.version))?;
            let took = conn.revert(MIGRATIONS_TABLE, down).await?;
            let m = Moved {
                version: step.version,
                description: step.description.clone(),
                direction: "down",
                took,
            };
            on_step(&m);
            moved.push(m);
        }
        Ok(moved)
    })
    .await
}

/// How a server treats a schema behind its own at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStart {
    /// Apply the missing migrations (the default).
    Migrate,
    /// Refuse to start, naming both versions (`--no-migrate`: an admin or the Helm
    /// chart's migration Job moves the schema).
    Refuse,
}

/// Makes the schema fit for a server of this build, then seeds the built-in
/// pipeline catalog when the schema is exactly this build's. `binary` names the
/// server in messages. Safe to run from several processes at once.
pub async fn prepare(
    pool: &PgPool,
    binary: &'static str,
    on_start: OnStart,
) -> Result<SchemaStatus, SchemaError> {
    let mut conn = pool.acquire().await?;
    let before = status(&mut conn).await?;
    refuse_broken(&before)?;
    if before.standing == Standing::Behind {
        match on_start {
            OnStart::Refuse => {
                return Err(SchemaError::Behind {
                    binary,
                    current: before.current,
                    latest: before.latest,
                });
            }
            OnStart::Migrate => {
                up(&mut conn, None, |m| {
                    tracing::info!(
                        version = m.version,
                        "applied migration {:04} {}",
                        m.version,
                        m.description
                    )
                })
                .await?;
            }
        }
    }
    let after = status(&mut conn).await?;
    match after.standing {
        Standing::Current => templates::seed_builtin(&mut conn).await?,
        // A newer release owns the catalog: seeding ours would flip its templates
        // back and forth while both run.
        Standing::Ahead => tracing::warn!(
            schema = after.current,
            known = after.latest,
            "the schema is newer than this {binary} (migrations {:?} belong to a newer release); running against it as expand-and-contract allows, and leaving the built-in catalog to the newer release",
            after.unknown()
        ),
        Standing::Behind | Standing::Broken => {
            refuse_broken(&after)?;
            return Err(SchemaError::Behind {
                binary,
                current: after.current,
                latest: after.latest,
            });
        }
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(versions: &[i64]) -> Vec<Applied> {
        let steps = steps();
        versions
            .iter()
            .map(|v| Applied {
                version: *v,
                checksum: steps
                    .iter()
                    .find(|s| s.version == *v)
                    .map(|s| s.checksum().to_vec())
                    .unwrap_or_default(),
                success: true,
                installed_on: chrono::Utc::now(),
            })
            .collect()
    }

    #[test]
    fn every_migration_is_a_pair() {
        for step in steps() {
            assert!(step.has_down(), "{:04} has no down step", step.version);
        }
    }

    #[test]
    fn the_lossy_marker_lists_what_is_dropped() {
        let sql =
            "-- lossy: load_runs, host_loads , hosts.max_load_processes\n-- why\nDROP TABLE x;";
        assert_eq!(
            lossy_marker(sql),
            ["load_runs", "host_loads", "hosts.max_load_processes"]
        );
        assert!(lossy_marker("-- Indexes only\nDROP INDEX i;").is_empty());
        let by_version: BTreeMap<i64, Vec<String>> = steps()
            .into_iter()
            .map(|s| (s.version, s.lossy()))
            .collect();
        assert_eq!(by_version[&8], ["pipeline_templates.variables"]);
        assert!(by_version[&6].is_empty());
        assert!(by_version[&7].is_empty());
    }

    #[test]
    fn standing_against_this_binary() {
        let steps = steps();
        let all: Vec<i64> = steps.iter().map(|s| s.version).collect();
        let status = compare(&steps, &applied(&all));
        assert_eq!(status.standing, Standing::Current);
        assert_eq!(status.current, latest());

        let status = compare(&steps, &applied(&all[..all.len() - 1]));
        assert_eq!(status.standing, Standing::Behind);

        let mut newer = all.clone();
        newer.push(latest() + 1);
        let status = compare(&steps, &applied(&newer));
        assert_eq!(status.standing, Standing::Ahead);
        assert_eq!(status.unknown(), [latest() + 1]);
        assert_eq!(status.current, latest() + 1);

        let mut edited = applied(&all);
        edited[0].checksum = vec![0; 48];
        let status = compare(&steps, &edited);
        assert_eq!(status.standing, Standing::Broken);
        assert!(status.problem().unwrap().contains("0001"));
    }

    #[test]
    fn going_down_refuses_loss_without_force_and_newer_migrations_always() {
        let steps = steps();
        let all: Vec<i64> = steps.iter().map(|s| s.version).collect();
        let status = compare(&steps, &applied(&all));
        // 0007 and 0006 lose nothing, 0008 does.
        let err = plan_down(&steps, &status, 5, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0008 drops pipeline_templates.variables"),
            "{err}"
        );
        assert!(err.contains("--force"), "{err}");
        let undo = plan_down(&steps, &status, 5, true).unwrap();
        let versions: Vec<i64> = undo.iter().map(|s| s.version).collect();
        let from_6: Vec<i64> = all.iter().copied().filter(|v| *v >= 6).rev().collect();
        assert_eq!(versions, from_6);

        let below_8 = compare(&steps, &applied(&all[..7]));
        let undo = plan_down(&steps, &below_8, 5, false).unwrap();
        assert_eq!(undo.iter().map(|s| s.version).collect::<Vec<_>>(), [7, 6]);

        let mut newer = all.clone();
        newer.push(latest() + 1);
        let status = compare(&steps, &applied(&newer));
        let err = plan_down(&steps, &status, 7, true).unwrap_err();
        assert!(matches!(err, SchemaError::NewerRelease { .. }), "{err}");
        let err = plan_down(&steps, &status, 4242, true).unwrap_err();
        assert!(matches!(err, SchemaError::UnknownTarget(4242, _)), "{err}");
    }

    /// The checksums `_sqlx_migrations` holds in every database a release migrated.
    /// A released up file must never change: a database it migrated would no longer
    /// match, and every server would refuse to start on it.
    #[test]
    fn released_up_files_keep_their_checksums() {
        const RELEASED: &[(i64, &str)] = &[
            (
                1,
                "ef4ff25b523c8cabd4967ef84679b2a453bbd85ff755d8cb5226197f16a28256fb14a563c4f0cb5ee5ead9a0188389d2",
            ),
            (
                2,
                "2fbf8dcb8a554f2ae87ddeb05c0fcfd6b46ff5b83b40480b30aa21a7f4c6ffa11066698b8b4060f2f91fe8da97882420",
            ),
            (
                3,
                "d86c9bb5339824b76cd0647c87b51f22de717e1fc72d6630774b8de5ee95c249bb3f354a1400188e3de0e459f42712b7",
            ),
            (
                4,
                "fce097ffe96e2c6dbb348ec12620c94e88e9a7b75a35512792ad0d9fc2ae81b4b509fc5122ce138fc8d296b780a935c2",
            ),
            (
                5,
                "17b2ba656c3c7cd959650485083e6a7f19cc3f4ef383e07b50bd80f7008a4e95c45e3d88e171f230e1c7e9e211e2c631",
            ),
            (
                6,
                "9b4320aed3d0fbb873f214b00ec0bb8db9ed175e311db92e146cff8f82d59a0b984e1646ddd9eabfd03f18b2860e5031",
            ),
            (
                7,
                "95a205eb2a9f349799e846726080829ff32b870afe70bc2bf4bc5ba15b8870de7b94bc7004e41acd5ecbca9cba548242",
            ),
            (
                8,
                "12e99aad8a86da72b9b7aa4cb75db29b79c5a31bf624fadce25f7deb14a59d176ba358d13a7be16801ffbe00773d7888",
            ),
        ];
        let steps = steps();
        for (version, sha384) in RELEASED {
            let step = steps
                .iter()
                .find(|s| s.version == *version)
                .unwrap_or_else(|| panic!("released migration {version:04} is gone"));
            let hex: String = step.checksum().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&hex, sha384, "the up file of {version:04} changed");
        }
    }
}
