//! `pgfan install`: puts the bundled SQL into a database, idempotently and versioned.
//!
//! The whole install is one transaction under a transaction-scoped advisory lock, so two
//! concurrent runs serialise and the second one finds everything up to date. A component
//! whose real extension is present (the C PgQ from postgresql-NN-pgq3) is left to it.

use std::fmt;

use thiserror::Error;
use tokio_postgres::{Client, Transaction};

use crate::sql::{self, SqlFile};

/// Key of the advisory lock that serialises installs in one database ("pgfan" in ASCII).
const INSTALL_LOCK_KEY: i64 = 0x7067_6661_6e00;

/// The roles the pgq grants refer to; without them grants.sql is skipped.
const PGQ_ROLES: [&str; 3] = ["pgq_reader", "pgq_writer", "pgq_admin"];

/// The roles pgfan's own grants (sql/pgfan/grants.sql) go to, on a master.
const PGFAN_ROLES: [&str; 6] = [
    "pgfan_producer",
    "pgfan_operator",
    "pgfan_node",
    "pgfan_ticker",
    "pgfan_relay",
    "pgfan_reducer",
];

/// The PgQ role each master daemon's role must be a member of (sql/pgfan/grants.sql):
/// without it the daemon cannot run on that role.
const DAEMON_MEMBERSHIPS: [(&str, &str); 3] = [
    ("pgfan_ticker", "pgq_admin"),
    ("pgfan_relay", "pgq_reader"),
    ("pgfan_reducer", "pgq_reader"),
];

/// What kind of database is being prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The master: queue core, the exactly-once ledger, jobs and tasks.
    Master,
    /// A node: the exactly-once ledger and the local task table.
    Node,
    /// Only the queue core and the ledger: plain PgQ use, or a producer database.
    Queue,
}

impl Role {
    fn components(self) -> &'static [&'static str] {
        match self {
            Role::Master => &["pgq", "pgq_ext", "pgfan"],
            Role::Node => &["pgq_ext", "pgfan_node"],
            Role::Queue => &["pgq", "pgq_ext"],
        }
    }
}

/// Errors of `pgfan install`.
#[derive(Debug, Error)]
pub enum InstallError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{file}: {source}")]
    Script {
        file: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("schema {0} exists but was installed neither by pgfan nor as an extension; refusing to touch it")]
    ForeignSchema(String),
    #[error("component {0} is not bundled in this binary")]
    UnknownComponent(String),
}

/// What happened to one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Installed for the first time.
    Installed,
    /// Re-applied because the bundled SQL changed since the recorded version.
    Upgraded { from: String },
    /// The recorded checksum equals the bundled SQL: nothing was executed.
    UpToDate,
    /// The real extension of that name is installed and is used instead.
    Extension { version: String },
}

/// The result of an install, per component.
#[derive(Debug, Clone)]
pub struct Report {
    pub components: Vec<(String, Outcome)>,
    /// False when the pgq roles could not be created, so their grants were skipped.
    pub roles_granted: bool,
    /// False when a master's pgfan roles could not be created (no CREATEROLE), or its
    /// daemon roles could not be made members of their PgQ roles, so only the owner can
    /// use pgfan (or run its daemons) there.
    pub pgfan_roles_granted: bool,
}

impl Report {
    /// The outcome for `name`, if that component was part of the install.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.components {
            match outcome {
                Outcome::Installed => {
                    writeln!(f, "{name}: installed (bundled, pgfan {})", crate::VERSION)?
                }
                Outcome::Upgraded { from } => {
                    writeln!(f, "{name}: upgraded {from} -> {} (bundled)", crate::VERSION)?
                }
                Outcome::UpToDate => {
                    writeln!(f, "{name}: up to date (bundled, pgfan {})", crate::VERSION)?
                }
                Outcome::Extension { version } => {
                    writeln!(f, "{name}: using the installed {name} extension {version}")?
                }
            }
        }
        if !self.roles_granted {
            writeln!(f, "note: roles pgq_reader/pgq_writer/pgq_admin are missing and could not be created; their grants were skipped")?;
        }
        if !self.pgfan_roles_granted {
            writeln!(f, "note: roles pgfan_producer/pgfan_operator/pgfan_node/pgfan_ticker/pgfan_relay/pgfan_reducer (or the daemon roles' memberships in pgq_admin/pgq_reader) are missing and could not be created; their grants were skipped")?;
        }
        Ok(())
    }
}

/// Installs or upgrades every component `role` needs, in one transaction.
pub async fn install(client: &mut Client, role: Role) -> Result<Report, InstallError> {
    let tx = client.transaction().await?;
    tx.execute(
        "select pg_catalog.pg_advisory_xact_lock($1)",
        &[&INSTALL_LOCK_KEY],
    )
    .await?;
    run_files(&tx, &bundled("pgfan_meta")?).await?;
    let mut components = Vec::new();
    for name in role.components() {
        components.push((name.to_string(), install_component(&tx, name).await?));
    }
    let roles_granted = pgq_roles_exist(&tx).await?;
    let pgfan_roles_granted = role != Role::Master
        || (roles_exist(&tx, &PGFAN_ROLES).await? && daemon_memberships_exist(&tx).await?);
    tx.commit().await?;
    Ok(Report {
        components,
        roles_granted,
        pgfan_roles_granted,
    })
}

async fn install_component(tx: &Transaction<'_>, name: &str) -> Result<Outcome, InstallError> {
    if let Some(version) = extension_version(tx, name).await? {
        return Ok(Outcome::Extension { version });
    }
    let files = bundled(name)?;
    let text: String = files.iter().map(|f| f.text).collect();
    let checksum: String = tx.query_one("select md5($1)", &[&text]).await?.get(0);
    let recorded = tx
        .query_opt(
            "select version, checksum from pgfan_meta.component where name = $1",
            &[&name],
        )
        .await?;
    let outcome = match recorded {
        Some(row) if row.get::<_, String>(1) == checksum => return Ok(Outcome::UpToDate),
        Some(row) => Outcome::Upgraded { from: row.get(0) },
        None if schema_exists(tx, name).await? => {
            return Err(InstallError::ForeignSchema(name.into()))
        }
        None => Outcome::Installed,
    };
    run_files(tx, &files).await?;
    tx.execute(
        "insert into pgfan_meta.component (name, version, checksum) values ($1, $2, $3)
         on conflict (name) do update
            set version = excluded.version, checksum = excluded.checksum, installed_at = now()",
        &[&name, &crate::VERSION, &checksum],
    )
    .await?;
    Ok(outcome)
}

async fn run_files(tx: &Transaction<'_>, files: &[SqlFile]) -> Result<(), InstallError> {
    for file in files {
        // pgq's grants name the pgq roles; pgfan's own grants.sql checks for its roles.
        if file.path == "pgq/grants.sql" && !pgq_roles_exist(tx).await? {
            tracing::warn!(file = file.path, "Skipping grants: pgq roles are missing");
            continue;
        }
        tx.batch_execute(file.text)
            .await
            .map_err(|source| InstallError::Script {
                file: file.path,
                source,
            })?;
    }
    Ok(())
}

fn bundled(name: &str) -> Result<Vec<SqlFile>, InstallError> {
    sql::component(name).ok_or_else(|| InstallError::UnknownComponent(name.into()))
}

async fn extension_version(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<String>, InstallError> {
    let row = tx
        .query_opt(
            "select extversion from pg_catalog.pg_extension where extname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

async fn schema_exists(tx: &Transaction<'_>, name: &str) -> Result<bool, InstallError> {
    let row = tx
        .query_one(
            "select exists (select 1 from pg_catalog.pg_namespace where nspname = $1)",
            &[&name],
        )
        .await?;
    Ok(row.get(0))
}

async fn pgq_roles_exist(tx: &Transaction<'_>) -> Result<bool, InstallError> {
    roles_exist(tx, &PGQ_ROLES).await
}

async fn roles_exist(tx: &Transaction<'_>, names: &[&str]) -> Result<bool, InstallError> {
    let roles: Vec<String> = names.iter().map(|r| r.to_string()).collect();
    let row = tx
        .query_one("select count(*) = cardinality($1::text[]) from pg_catalog.pg_roles where rolname = any($1)", &[&roles])
        .await?;
    Ok(row.get(0))
}

/// Whether every daemon role is a member of the PgQ role it needs.
async fn daemon_memberships_exist(tx: &Transaction<'_>) -> Result<bool, InstallError> {
    let (members, groups): (Vec<String>, Vec<String>) = DAEMON_MEMBERSHIPS
        .iter()
        .map(|(m, g)| (m.to_string(), g.to_string()))
        .unzip();
    let row = tx
        .query_one(
            "select count(*) = cardinality($1::text[])
               from unnest($1::text[], $2::text[]) u(m, g)
               join pg_catalog.pg_roles rm on rm.rolname = u.m
               join pg_catalog.pg_roles rg on rg.rolname = u.g
              where pg_catalog.pg_has_role(rm.oid, rg.oid, 'member')",
            &[&members, &groups],
        )
        .await?;
    Ok(row.get(0))
}
