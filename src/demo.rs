//! `pgfan demo`: the whole current feature set, end to end, on a throwaway cluster.
//!
//! Starts a PostgreSQL cluster from the local binaries in a scratch directory, installs the
//! bundled queue core, produces events (single inserts from concurrent transactions, one
//! bulk COPY, one rolled-back transaction), ticks, consumes every batch and checks that
//! each committed event arrived exactly once and the rolled-back ones never did.

use std::collections::HashSet;
use std::time::Instant;

use thiserror::Error;
use tokio_postgres::Client;

use crate::cluster::{Cluster, ClusterError};
use crate::install::{self, InstallError, Role};
use crate::pgq::{self, PgqError};

const QUEUE: &str = "demo_queue";
const CONSUMER: &str = "demo_consumer";

/// Sizes of the demo workload.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Producer transactions run concurrently.
    pub producers: usize,
    /// Transactions per producer.
    pub transactions: usize,
    /// Events per transaction.
    pub events_per_tx: usize,
    /// Events in the bulk COPY.
    pub bulk_events: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            producers: 4,
            transactions: 50,
            events_per_tx: 20,
            bulk_events: 20_000,
        }
    }
}

/// Errors of the demo.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("install: {0}")]
    Install(#[from] InstallError),
    #[error("{0}")]
    Pgq(#[from] PgqError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("producer task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("check failed: {0}")]
    Check(String),
}

/// Runs the demo, printing each step with its duration.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let t = Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    step(
        t,
        &format!(
            "started a throwaway PostgreSQL cluster on port {}",
            cluster.port()
        ),
    );

    let conninfo = cluster.conninfo("postgres");
    let t = Instant::now();
    let mut client = crate::db::connect_client(&conninfo).await?;
    let report = install::install(&mut client, Role::Master).await?;
    step(
        t,
        &format!(
            "pgfan install: {}",
            report.to_string().trim().replace('\n', "; ")
        ),
    );

    let t = Instant::now();
    pgq::create_queue(&client, QUEUE).await?;
    pgq::register_consumer(&client, QUEUE, CONSUMER).await?;
    step(
        t,
        &format!("created queue {QUEUE} and registered consumer {CONSUMER}"),
    );

    let t = Instant::now();
    let single = produce_concurrently(&conninfo, opts).await?;
    let rate = single as f64 / t.elapsed().as_secs_f64();
    step(
        t,
        &format!(
            "{} producers committed {single} events with pgq.insert_event ({rate:.0} ev/s)",
            opts.producers
        ),
    );

    let t = Instant::now();
    let bulk = produce_bulk(&mut client, opts.bulk_events).await?;
    let rate = bulk as f64 / t.elapsed().as_secs_f64();
    step(
        t,
        &format!("one COPY into pgq.current_event_table committed {bulk} events ({rate:.0} ev/s)"),
    );

    let t = Instant::now();
    produce_rolled_back(&mut client).await?;
    step(t, "one transaction inserted 100 events and rolled back");

    let t = Instant::now();
    let (batches, seen) = consume_all(&client).await?;
    let rate = seen.len() as f64 / t.elapsed().as_secs_f64();
    step(
        t,
        &format!(
            "consumed {} events in {batches} batches ({rate:.0} ev/s)",
            seen.len()
        ),
    );

    check(single + bulk as usize, &seen)?;
    println!("ok: every committed event delivered exactly once, rolled-back events never");
    drop(cluster);
    Ok(())
}

fn step(started: Instant, what: &str) {
    println!(
        "[{:>8.1} ms] {what}",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

async fn produce_concurrently(conninfo: &str, opts: DemoOptions) -> Result<usize, DemoError> {
    let mut tasks = Vec::new();
    for p in 0..opts.producers {
        let conninfo = conninfo.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = crate::db::connect_client(&conninfo).await?;
            for t in 0..opts.transactions {
                let tx = client.transaction().await?;
                for e in 0..opts.events_per_tx {
                    pgq::insert_event(&tx, QUEUE, "single", &format!("p={p}&t={t}&e={e}")).await?;
                }
                tx.commit().await?;
            }
            Ok::<usize, DemoError>(opts.transactions * opts.events_per_tx)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total)
}

async fn produce_bulk(client: &mut Client, n: usize) -> Result<u64, DemoError> {
    let tx = client.transaction().await?;
    let rows = (0..n).map(|i| ("bulk".to_string(), format!("i={i}")));
    let copied = pgq::copy_events(&tx, QUEUE, rows).await?;
    tx.commit().await?;
    Ok(copied)
}

async fn produce_rolled_back(client: &mut Client) -> Result<(), DemoError> {
    let tx = client.transaction().await?;
    for i in 0..100 {
        pgq::insert_event(&tx, QUEUE, "rolled_back", &format!("i={i}")).await?;
    }
    tx.rollback().await?;
    Ok(())
}

/// Ticks and consumes until a tick yields no batch with events.
async fn consume_all(client: &Client) -> Result<(usize, Vec<(String, String)>), DemoError> {
    let mut seen = Vec::new();
    let mut batches = 0;
    loop {
        pgq::force_tick(client, QUEUE).await?;
        pgq::ticker(client, QUEUE).await?;
        let mut got = 0;
        while let Some(batch) = pgq::next_batch(client, QUEUE, CONSUMER).await? {
            let events = pgq::batch_events(client, batch.id).await?;
            got += events.len();
            seen.extend(
                events
                    .into_iter()
                    .map(|e| (e.ev_type.unwrap_or_default(), e.data.unwrap_or_default())),
            );
            pgq::finish_batch(client, batch.id).await?;
            batches += 1;
        }
        if got == 0 {
            return Ok((batches, seen));
        }
    }
}

fn check(expected: usize, seen: &[(String, String)]) -> Result<(), DemoError> {
    let unique: HashSet<&(String, String)> = seen.iter().collect();
    if unique.len() != seen.len() {
        return Err(DemoError::Check(format!(
            "{} duplicate deliveries",
            seen.len() - unique.len()
        )));
    }
    if seen.iter().any(|(t, _)| t == "rolled_back") {
        return Err(DemoError::Check("a rolled-back event was delivered".into()));
    }
    if seen.len() != expected {
        return Err(DemoError::Check(format!(
            "expected {expected} events, got {}",
            seen.len()
        )));
    }
    Ok(())
}
