//! `phoenix-api migrate status|up|down`: the admin command that shows and moves the
//! schema's version (the moves themselves live in `phoenix_storage::schema`).

use std::fmt::Write as _;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use phoenix_storage::schema::{self, Moved, SchemaStatus, Standing};

/// `phoenix-api migrate …`
#[derive(Clone, Debug, Subcommand)]
pub enum MigrateCommand {
    /// Show the schema's version, every migration this phoenix-api knows (applied or
    /// not), and what going down across each would lose.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://… phoenix-api migrate status -o json"
    )]
    Status {
        /// table: for people; json: the whole status, for scripts.
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Table)]
        output: StatusFormat,
    },
    /// Apply the migrations not applied yet, oldest first, up to --to (default:
    /// all this phoenix-api knows), then seed the built-in pipeline catalog when
    /// the schema is this release's. Safe to run while servers run.
    #[command(after_help = "Example:\n  DATABASE_URL=postgres://… phoenix-api migrate up")]
    Up {
        /// Stop after this version.
        #[arg(long, value_name = "N")]
        to: Option<i64>,
    },
    /// Undo applied migrations down to version N (0: an empty database), newest
    /// first. A step whose down loses data (`-- lossy:` in its file) is refused
    /// unless --force; nothing is changed then. Stop the servers of the newer
    /// release first (or run them with --no-migrate): one that starts would migrate
    /// up again. Take a backup first (docs/OPERATIONS.md).
    #[command(
        after_help = "Examples:\n  phoenix-api migrate down --to 7           # refused if 0008 loses data\n  phoenix-api migrate down --to 7 --force   # after a pg_dump"
    )]
    Down {
        /// The version to end at.
        #[arg(long, value_name = "N")]
        to: i64,
        /// Go down even across steps that lose data.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
}

/// Runs one `migrate` command against `database_url`, printing to stdout.
pub async fn run(database_url: &str, command: MigrateCommand) -> anyhow::Result<()> {
    let pool = phoenix_storage::connect(database_url, 1)
        .await
        .context("connecting to Postgres")?;
    let mut conn = pool.acquire().await?;
    let print_step = |m: &Moved| {
        println!(
            "{} {:04} {} ({} ms)",
            if m.direction == "up" {
                "applied "
            } else {
                "reverted"
            },
            m.version,
            m.description,
            m.took.as_millis()
        );
    };
    match command {
        MigrateCommand::Status { output } => {
            let status = schema::status(&mut conn).await?;
            match output {
                StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                StatusFormat::Table => print!("{}", status_table(&status)),
            }
        }
        MigrateCommand::Up { to } => {
            let moved = schema::up(&mut conn, to, print_step).await?;
            let status = schema::status(&mut conn).await?;
            if status.standing == Standing::Current {
                phoenix_storage::templates::seed_builtin(&mut conn).await?;
            }
            if moved.is_empty() {
                println!("nothing to apply");
            }
            println!("{}", summary(&status));
        }
        MigrateCommand::Down { to, force } => {
            let moved = schema::down(&mut conn, to, force, print_step).await?;
            if moved.is_empty() {
                println!("nothing to undo");
            }
            println!("{}", summary(&schema::status(&mut conn).await?));
        }
    }
    Ok(())
}

/// One line: the version, what this binary knows, and where that leaves it.
fn summary(status: &SchemaStatus) -> String {
    let standing = match status.standing {
        Standing::Current => "up to date".to_string(),
        Standing::Behind => "behind: `phoenix-api migrate up` applies the rest".to_string(),
        Standing::Ahead => format!(
            "ahead: migrations {:?} belong to a newer release",
            status.unknown()
        ),
        Standing::Broken => status.problem().unwrap_or_default(),
    };
    format!(
        "schema at version {} (this phoenix-api {} knows up to {}): {standing}",
        status.current,
        env!("CARGO_PKG_VERSION"),
        status.latest
    )
}

fn status_table(status: &SchemaStatus) -> String {
    let mut rows = vec![[
        "VERSION".to_string(),
        "DESCRIPTION".into(),
        "APPLIED".into(),
        "GOING DOWN".into(),
    ]];
    for m in &status.migrations {
        let applied = match (m.applied, m.applied_at) {
            (true, Some(at)) => at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            (true, None) => "yes".into(),
            (false, _) => "no".into(),
        };
        let mut applied = applied;
        if m.checksum_mismatch {
            applied.push_str(" (EDITED SINCE)");
        }
        let (description, down) = if !m.known {
            (
                "(a newer release's)".to_string(),
                "unknown here".to_string(),
            )
        } else if m.lossy.is_empty() {
            (m.description.clone(), "loses nothing".to_string())
        } else {
            (
                m.description.clone(),
                format!("drops {}", m.lossy.join(", ")),
            )
        };
        rows.push([format!("{:04}", m.version), description, applied, down]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    writeln!(out, "{}\n", summary(status)).unwrap();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                write!(line, "{cell:<width$}   ", width = widths[i]).unwrap();
            }
        }
        writeln!(out, "{}", line.trim_end()).unwrap();
    }
    out
}
