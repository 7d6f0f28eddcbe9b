//! Case 11 (`triggers`): the bundled change-capture triggers (PL/pgSQL) against PgQ's C
//! triggers, per row and per session.
//!
//! One cluster, two databases: pgfan's bundled core and the real PgQ extension
//! (`create extension pgq`), each with queue `q` and the table
//! `t (id int primary key, name text, amount numeric, at timestamptz)`.
//! Per row: `insert into t select g, 'name ' || g, g * 1.5, now() from generate_series(1, N)`
//! (N = 20,000; quick 2,000) into `t` truncated before, timed from sending the statement to
//! its completion, with `pgq.logutriga('q')` and with `pgq.sqltriga('q')` (after insert or
//! update or delete, for each row), minus the same insert without a trigger in the same
//! database and run; reported as µs per row, bundled against C, the goal ≤ 3× C.
//! Runs interleaved after one warm-up of each variant, in one session per database.
//! Memory: 30 tables like `t` with `pgq.logutriga('q')`; a fresh session inserts one row into
//! each (one statement per table); the growth of `sum(total_bytes)` from
//! `pg_backend_memory_contexts` between before the first and after the last insert, divided
//! by 30, bundled against C, goal ≤ 200 kB (the one-time cost of the first trigger in a
//! session is spread over the 30).

use std::time::Instant;

use anyhow::Result;
use pgfan::cluster::Cluster;
use tokio_postgres::Client;

use crate::report::{median, Better, Row};
use crate::rig::{self, Ctx};

const TABLE: &str = "(id int primary key, name text, amount numeric, at timestamptz)";
const MEMORY_TABLES: usize = 30;
const DBS: [&str; 2] = ["bundled", "extension"];

async fn setup(cluster: &Cluster) -> Result<()> {
    let b = rig::bundled_db(cluster, DBS[0]).await?;
    let e = rig::extension_db(cluster, DBS[1]).await?;
    for c in [&b, &e] {
        let mut sql = format!(
            "select pgq.create_queue('q');
             create table plain {TABLE};
             create table logu {TABLE};
             create table sqlt {TABLE};
             create trigger l after insert or update or delete on logu
                 for each row execute function pgq.logutriga('q');
             create trigger s after insert or update or delete on sqlt
                 for each row execute function pgq.sqltriga('q');"
        );
        for i in 1..=MEMORY_TABLES {
            sql.push_str(&format!(
                "create table m{i} {TABLE};
                 create trigger l after insert or update or delete on m{i}
                     for each row execute function pgq.logutriga('q');"
            ));
        }
        c.batch_execute(&sql).await?;
    }
    Ok(())
}

/// Milliseconds of inserting `n` rows into `table` (emptied first, not timed).
async fn insert_ms(c: &Client, table: &str, n: i64) -> Result<f64> {
    c.batch_execute(&format!("truncate {table}")).await?;
    let sql = format!(
        "insert into {table} select g, 'name ' || g, g * 1.5, now() from generate_series(1, {n}) g"
    );
    let t = Instant::now();
    c.batch_execute(&sql).await?;
    Ok(rig::ms(t.elapsed()))
}

/// kB per trigger a fresh session grows by firing the logutriga of each memory table once.
async fn memory_per_trigger(cluster: &Cluster, db: &str) -> Result<f64> {
    let c = rig::connect(&cluster.conninfo(db)).await?;
    const TOTAL: &str = "select sum(total_bytes)::float8 from pg_backend_memory_contexts";
    let before: f64 = c.query_one(TOTAL, &[]).await?.get(0);
    for i in 1..=MEMORY_TABLES {
        c.batch_execute(&format!(
            "insert into m{i} values (1, 'a', 1.5, now()); delete from m{i}"
        ))
        .await?;
    }
    let after: f64 = c.query_one(TOTAL, &[]).await?.get(0);
    Ok((after - before) / MEMORY_TABLES as f64 / 1024.0)
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let cluster = rig::cluster().await?;
    setup(&cluster).await?;
    let n = ctx.size(20_000, 2_000) as i64;
    let sessions = [
        rig::connect(&cluster.conninfo(DBS[0])).await?,
        rig::connect(&cluster.conninfo(DBS[1])).await?,
    ];
    // [db][plain, logu, sqlt]: each run's milliseconds
    let tables = ["plain", "logu", "sqlt"];
    let mut ms = vec![vec![Vec::new(); tables.len()]; DBS.len()];
    for run in 0..=ctx.runs {
        for (d, c) in sessions.iter().enumerate() {
            for (t, table) in tables.iter().enumerate() {
                let took = insert_ms(c, table, n).await?;
                // run 0 is the warm-up
                if run > 0 {
                    ms[d][t].push(took);
                }
            }
        }
    }
    // µs per row of each trigger over the same run's insert without one
    let per_row = |d: usize, t: usize| -> Vec<f64> {
        ms[d][t]
            .iter()
            .zip(&ms[d][0])
            .map(|(with, without)| (with - without) * 1000.0 / n as f64)
            .collect()
    };
    let mut rows = Vec::new();
    for (t, func) in [(1, "logutriga"), (2, "sqltriga")] {
        let row = Row::versus(
            "triggers",
            format!("pgq.{func}('q'), insert of {n} rows, cost per row"),
            "µs/row",
            Better::Lower,
            per_row(0, t),
            "PgQ extension (C)",
            &per_row(1, t),
        );
        let met = row.pgfan <= 3.0 * row.baseline_value.unwrap_or(f64::NAN);
        rows.push(row.goal("<= 3x C", met));
    }
    let (mut bundled, mut extension) = (Vec::new(), Vec::new());
    for _ in 0..ctx.runs {
        bundled.push(memory_per_trigger(&cluster, DBS[0]).await?);
        extension.push(memory_per_trigger(&cluster, DBS[1]).await?);
    }
    let row = Row::versus(
        "triggers",
        format!("memory per trigger per session, {MEMORY_TABLES} triggers fired"),
        "kB",
        Better::Lower,
        bundled,
        "PgQ extension (C)",
        &extension,
    );
    let met = row.pgfan <= 200.0;
    rows.push(row.goal("<= 200 kB", met));
    ctx.note(
        "triggers",
        format!(
            "insert of {n} rows without a trigger: {:.0} ms bundled db, {:.0} ms extension db (medians); \
             trigger rows are (with - without) per row",
            median(&ms[0][0]),
            median(&ms[1][0])
        ),
    );
    Ok(rows)
}
