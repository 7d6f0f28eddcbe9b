//! The `pgfan` command: parses the command line and hands over to the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "pgfan", version, about = "Spread SQL work over many PostgreSQL servers through PgQ queues")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install or upgrade pgfan's SQL in a database (idempotent; safe to run concurrently).
    Install {
        /// libpq connection string of the target database.
        #[arg(long, env = "PGFAN_DB")]
        db: String,
        /// What the database is in the pgfan topology.
        #[arg(long, value_enum, default_value = "master")]
        role: pgfan::install::Role,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PGFAN_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Install { db, role } => {
            let mut client = pgfan::db::connect_client(&db).await.context("connecting to the database")?;
            let report = pgfan::install::install(&mut client, role).await.context("installing")?;
            print!("{report}");
        }
    }
    Ok(())
}
