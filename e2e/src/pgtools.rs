//! What the upgrade tests compare a database by, and the `pg_dump` / `pg_restore`
//! an operator runs (docs/OPERATIONS.md), with the machine's own Postgres client
//! binaries (next to the server binaries the throwaway cluster uses).
//!
//! - [`schema_fingerprint`]: `pg_dump --schema-only`, every object of the schema
//!   as text, so a down step that forgets a function or an index shows.
//! - [`data_checksums`]: per table, its row count and an md5 over its rows.
//! - [`dump`] / [`restore`]: a custom-format dump, and its restore into another
//!   database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use phoenix_storage::PgPool;

use crate::throwaway::find_bin_dir;

fn tool(name: &str) -> PathBuf {
    find_bin_dir()
        .expect("Postgres binaries (apt-get install postgresql)")
        .join(name)
}

fn run(mut command: Command) -> String {
    let out = command.output().expect("run a Postgres client tool");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The whole schema as `pg_dump --schema-only` prints it, without its comments
/// and the per-run `\restrict` keys of newer pg_dump releases.
pub fn schema_fingerprint(database_url: &str) -> String {
    let mut command = Command::new(tool("pg_dump"));
    command.args(["--schema-only", "--no-owner", "--no-privileges", "--dbname"]);
    command.arg(database_url);
    run(command)
        .lines()
        .filter(|l| {
            !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
        })
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `table → (rows, md5 of its rows as text in order)` for every table of the
/// public schema but sqlx's bookkeeping.
pub async fn data_checksums(pool: &PgPool) -> BTreeMap<String, (i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("list tables");
    let mut sums = BTreeMap::new();
    for table in tables {
        // A table name the catalog gave, of our own schema.
        let (rows, md5): (i64, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM \"{table}\" t"
        )))
        .fetch_one(pool)
        .await
        .expect("checksum a table");
        sums.insert(table, (rows, md5.unwrap_or_default()));
    }
    sums
}

/// `pg_dump --format=custom` of the database into `file`.
pub fn dump(database_url: &str, file: &Path) {
    let mut command = Command::new(tool("pg_dump"));
    command.args(["--format=custom", "--no-owner", "--no-privileges", "--file"]);
    command.arg(file).arg("--dbname").arg(database_url);
    run(command);
}

/// `pg_restore` of `file` into the (empty) database at `database_url`.
pub fn restore(file: &Path, database_url: &str) {
    let mut command = Command::new(tool("pg_restore"));
    command.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--dbname",
    ]);
    command.arg(database_url).arg(file);
    run(command);
}
