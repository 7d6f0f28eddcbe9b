//! Cases 1 and 2: producing events.
//!
//! Case 1 (`insert`): pgbench, 2 clients, transactions of 100 single-row statements, prepared
//! protocol, against three databases of one cluster: `pgq.insert_event` on pgfan's bundled
//! core, the same call on the real PgQ extension (C), and a plain INSERT of the same row into
//! an ordinary table (bigserial primary key, the event columns, the same defaults).
//! Case 2 (`bulk`): COPY into `pgq.current_event_table` from 2 sessions, and the bundled core's
//! set form `select pgq.insert_event(q, t, d) from unnest($1)`, against case 1's bundled rate.
//! Runs are interleaved (A B C A B C ...) so drift hits every variant alike.

use std::time::Instant;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures_util::SinkExt;
use pgfan::cluster::Cluster;

use crate::report::{Better, Row};
use crate::rig::{self, Ctx};

const STATEMENTS: usize = 100;
const CLIENTS: u32 = 2;
const DATA: &str = "action=ins&id=12345&name=some+short+name";

const PLAIN_TABLE: &str = "create table plain_events (
    ev_id bigserial primary key,
    ev_time timestamptz not null default now(),
    ev_txid bigint not null default txid_current(),
    ev_owner int4, ev_retry int4,
    ev_type text, ev_data text, ev_extra1 text, ev_extra2 text, ev_extra3 text, ev_extra4 text)";

struct Dbs {
    cluster: Cluster,
}

async fn setup() -> Result<Dbs> {
    let cluster = rig::cluster().await?;
    let b = rig::bundled_db(&cluster, "bundled").await?;
    b.execute("select pgq.create_queue('bench')", &[]).await?;
    let e = rig::extension_db(&cluster, "extension").await?;
    e.execute("select pgq.create_queue('bench')", &[]).await?;
    let p = rig::create_db(&cluster, "plain").await?;
    p.batch_execute(PLAIN_TABLE).await?;
    Ok(Dbs { cluster })
}

fn script(dir: &std::path::Path, name: &str, statement: &str) -> Result<std::path::PathBuf> {
    let mut s = String::from("begin;\n");
    for _ in 0..STATEMENTS {
        s.push_str(statement);
        s.push('\n');
    }
    s.push_str("end;\n");
    let path = dir.join(format!("{name}.sql"));
    std::fs::write(&path, s)?;
    Ok(path)
}

/// Events/s of pgbench runs per variant: (bundled, extension, plain).
async fn pgbench_rates(ctx: &Ctx, dbs: &Dbs) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let dir = dbs.cluster.dir();
    let ins = format!("select pgq.insert_event('bench', 'ev', '{DATA}');");
    let plain = format!("insert into plain_events (ev_type, ev_data) values ('ev', '{DATA}');");
    let variants = [
        ("bundled", script(dir, "insert_event", &ins)?),
        ("extension", script(dir, "insert_event_c", &ins)?),
        ("plain", script(dir, "plain_insert", &plain)?),
    ];
    let seconds = ctx.size(10, 2) as u32;
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ctx.runs {
        for (i, (db, path)) in variants.iter().enumerate() {
            let cluster = &dbs.cluster;
            let tps =
                tokio::task::block_in_place(|| rig::pgbench(cluster, db, path, CLIENTS, seconds))
                    .with_context(|| format!("pgbench on {db}"))?;
            rates[i].push(tps * STATEMENTS as f64);
        }
    }
    ctx.note(
        "insert",
        format!(
            "pgbench -M prepared -c {CLIENTS} -j {CLIENTS} -T {seconds}, {STATEMENTS} statements per transaction, data {:?}; plain table has a bigserial primary key",
            DATA
        ),
    );
    let [b, e, p] = rates;
    Ok((b, e, p))
}

pub async fn run_insert(ctx: &Ctx) -> Result<Vec<Row>> {
    let dbs = setup().await?;
    let (bundled, ext, plain) = pgbench_rates(ctx, &dbs).await?;
    let unit = "events/s";
    let metric = "insert_event, 2 clients, 100/tx";
    Ok(vec![
        Row::versus(
            "insert",
            metric,
            unit,
            Better::Higher,
            bundled.clone(),
            "PgQ extension (C)",
            &ext,
        )
        .goal_ratio(1.0),
        Row::versus(
            "insert",
            metric,
            unit,
            Better::Higher,
            bundled,
            "plain INSERT",
            &plain,
        )
        .goal_ratio(0.85),
    ])
}

/// Rows/s of `sessions` concurrent COPYs of `rows` rows each into the bundled core's current
/// event table.
async fn copy_rate(cluster: &Cluster, rows: usize, sessions: usize) -> Result<f64> {
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(rig::connect(&cluster.conninfo("bundled")).await?);
    }
    // PgQ's event tables have no ev_time default; producers that COPY supply it.
    let now = "2026-01-01 00:00:00+00\t";
    let mut payload = String::with_capacity(rows * (DATA.len() + now.len() + 4));
    for _ in 0..rows {
        payload.push_str(now);
        payload.push_str("ev\t");
        payload.push_str(DATA);
        payload.push('\n');
    }
    let payload = Bytes::from(payload);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let table: String = c
                .query_one("select pgq.current_event_table('bench')", &[])
                .await?
                .get(0);
            let sink = c
                .copy_in::<_, Bytes>(&format!(
                    "copy {table} (ev_time, ev_type, ev_data) from stdin"
                ))
                .await?;
            futures_util::pin_mut!(sink);
            sink.send(payload).await?;
            sink.finish().await?;
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((rows * sessions) as f64 / start.elapsed().as_secs_f64())
}

/// Rows/s of `sessions` concurrent `insert_event ... from unnest($1)` statements of `rows` each.
async fn set_rate(cluster: &Cluster, rows: usize, sessions: usize) -> Result<f64> {
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(rig::connect(&cluster.conninfo("bundled")).await?);
    }
    let data: Vec<String> = vec![DATA.to_string(); rows];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            c.execute(
                "select pgq.insert_event('bench', 'ev', d) from unnest($1::text[]) d",
                &[&data],
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((rows * sessions) as f64 / start.elapsed().as_secs_f64())
}

pub async fn run_bulk(ctx: &Ctx) -> Result<Vec<Row>> {
    let dbs = setup().await?;
    let rows = ctx.size(200_000, 20_000);
    let (bundled, _, _) = {
        // Case 1's bundled rate, measured again in this run as the reference.
        let quick = Ctx::new(true, ctx.runs, ctx.profile);
        let c = if ctx.quick { ctx } else { &quick };
        pgbench_rates(c, &dbs).await?
    };
    let mut copy = Vec::new();
    let mut set = Vec::new();
    for _ in 0..ctx.runs {
        copy.push(copy_rate(&dbs.cluster, rows, CLIENTS as usize).await?);
        set.push(set_rate(&dbs.cluster, rows, CLIENTS as usize).await?);
    }
    ctx.note(
        "bulk",
        format!("{CLIENTS} sessions × {rows} rows each, one statement per session; reference: case 1's bundled insert_event rate (2 s pgbench runs)"),
    );
    let unit = "events/s";
    Ok(vec![
        Row::versus(
            "bulk",
            "COPY into current_event_table",
            unit,
            Better::Higher,
            copy,
            "insert_event (case 1)",
            &bundled,
        )
        .goal_ratio(4.0),
        Row::versus(
            "bulk",
            "insert_event over unnest($1), one statement",
            unit,
            Better::Higher,
            set,
            "insert_event (case 1)",
            &bundled,
        ),
    ])
}
