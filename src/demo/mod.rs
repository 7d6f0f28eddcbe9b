//! `pgfan demo`: the whole pipeline on throwaway local clusters, end to end.
//!
//! Starts a master and three node clusters from the local PostgreSQL binaries, installs
//! pgfan everywhere, runs the ticker, relay, reducer and node daemons in this process, and
//! runs the seed workloads through the public SQL API, checking each answer:
//! (a) a map-reduce average over rows split across the nodes, (b) many small statements
//! and concurrent index builds at a parallel degree, (c) targeted row copies, (d) ordered
//! lanes side by side, (e) a node whose server stops mid-run and whose tasks complete
//! after it comes back. Then it stops everything cleanly.

mod topology;
mod workloads;

use std::time::{Duration, Instant};

use thiserror::Error;
use tokio_postgres::Client;

use crate::cluster::ClusterError;
use crate::install::InstallError;
pub use topology::{wait_nodes_started, NodeHost, Topology};

/// Sizes of the demo workloads.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Rows of the map-reduce table, split evenly across the nodes.
    pub rows: i64,
    /// Small statements run at `parallel` on one node.
    pub statements: usize,
    /// Parallel degree of the small statements.
    pub parallel: i32,
    /// Rows copied to the nodes.
    pub copies: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            rows: 3_000_000,
            statements: 200,
            parallel: 4,
            copies: 300,
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
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("daemon {0}")]
    Daemon(String),
    #[error("check failed: {0}")]
    Check(String),
}

/// Runs the demo, printing each step with its duration.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let all = Instant::now();
    let t = Instant::now();
    let mut topo = Topology::start(3, workloads::configure_node).await?;
    step(
        t,
        &format!(
            "started a master and {} node clusters, installed pgfan, started ticker, relay, reducer and node daemons",
            topo.nodes.len()
        ),
    );
    let outcome = workloads::run_all(&mut topo, opts).await;
    if outcome.is_ok() {
        print_status(&topo).await?;
    }
    let t = Instant::now();
    let stopped = topo.shutdown().await;
    step(t, "stopped every daemon cleanly");
    outcome?;
    stopped?;
    println!(
        "ok: every workload checked; {:.1} s in all",
        all.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What `pgfan status` shows at the end of the demo.
async fn print_status(topo: &Topology) -> Result<(), DemoError> {
    let limits = crate::status::Limits {
        max_lag: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(30),
        jobs: 5,
    };
    let status = crate::status::collect(&topo.master_client().await?, limits).await?;
    println!("pgfan status:");
    for line in crate::status::render(&status).lines() {
        println!("  {line}");
    }
    Ok(())
}

fn step(started: Instant, what: &str) {
    println!(
        "[{:>9.1} ms] {what}",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(DemoError::Check(what()))
    }
}

/// Waits for `job` with `pgfan.wait` and requires it to be done.
async fn wait_done(master: &Client, job: i64, limit: Duration) -> Result<(), DemoError> {
    let limit = format!("{} milliseconds", limit.as_millis());
    let state: String = master
        .query_one("select pgfan.wait($1, $2::text::interval)", &[&job, &limit])
        .await?
        .get(0);
    if state == "done" {
        return Ok(());
    }
    let summary: Option<String> = master
        .query_one("select pgfan.job_summary($1)", &[&job])
        .await?
        .get(0);
    Err(DemoError::Check(format!(
        "job {job} is {state}: {}",
        summary.unwrap_or_default()
    )))
}

/// The rows of a done job's result.
async fn result(master: &Client, job: i64) -> Result<Vec<serde_json::Value>, DemoError> {
    Ok(master
        .query("select * from pgfan.result($1)", &[&job])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
