//! Case 7 (`mapreduce`): an average over rows split across 3 nodes, through pgfan, against the
//! per-node partial query run directly.
//!
//! A master and 3 node clusters, the ticker, relay, reducer and 3 node daemons (defaults)
//! running in this process. Each node holds `big(v bigint)` with a third of 1..3M (quick:
//! 1..300k), loaded directly and vacuumed (setup, not timed). pgfan:
//! `pgfan.submit('all', 'select sum(v)::numeric as s, count(*) as c from big', reduce => 'avg')`,
//! timed from sending the submit to the reducer's `NOTIFY pgfan_job`; every run's answer is
//! checked against `avg(g)` over `generate_series(1, N)` on the master (the single-table
//! answer). Baselines: the same partial query on each node over an open session, one node at
//! a time, the slowest taken (the issue's reference), and the three at once (what the
//! hardware allows for the partials alone: on a 2-core machine 3 nodes cannot all scan at
//! full speed). Runs interleaved after one warm-up of each.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::parallel::pipeline::{self, Jobs, Pipeline};
use crate::report::{Better, Row};
use crate::rig::{self, Ctx};

const NODES: usize = 3;
const PARTIAL: &str = "select sum(v)::numeric as s, count(*) as c from big";
const LIMIT: Duration = Duration::from_secs(120);

/// Milliseconds of the partial query on one node session.
async fn partial(node: &Client) -> Result<f64> {
    let t = Instant::now();
    node.query_one(PARTIAL, &[]).await?;
    Ok(rig::ms(t.elapsed()))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let (pipe, a, b, c) = tokio::try_join!(
        Pipeline::start(&[]),
        rig::cluster(),
        rig::cluster(),
        rig::cluster()
    )?;
    let clusters = [a, b, c];
    let outcome = measure(ctx, pipe, &clusters).await;
    drop(clusters);
    outcome
}

async fn measure(
    ctx: &Ctx,
    mut pipe: Pipeline,
    clusters: &[pgfan::cluster::Cluster; NODES],
) -> Result<Vec<Row>> {
    let per_node = ctx.size(1_000_000, 100_000) as i64;
    let total = per_node * NODES as i64;
    let master = rig::connect(&pipe.master_conninfo()).await?;
    let mut nodes = Vec::new();
    for (i, cluster) in clusters.iter().enumerate() {
        let name = format!("n{}", i + 1);
        pipeline::install_node(cluster, "postgres").await?;
        master
            .query_one("select pgfan.node_add($1)", &[&name])
            .await?;
        let conninfo = cluster.conninfo("postgres");
        pipe.start_node(pipe.node_config(&name, &conninfo));
        nodes.push(rig::connect(&conninfo).await?);
    }
    pipe.wait_started().await?;
    // Vacuumed, so that no run pays for setting hint bits or the visibility map.
    futures_util::future::try_join_all(nodes.iter().enumerate().map(|(i, node)| async move {
        let (lo, hi) = (i as i64 * per_node + 1, (i as i64 + 1) * per_node);
        node.batch_execute(&format!(
            "create table big as select g::bigint as v from generate_series({lo}, {hi}) g"
        ))
        .await?;
        node.batch_execute("vacuum analyze big").await
    }))
    .await?;
    let exact: String = master
        .query_one(
            "select avg(g)::text from generate_series(1, $1::bigint) g",
            &[&total],
        )
        .await?
        .get(0);
    let mut jobs = Jobs::connect(&pipe.master_conninfo()).await?;
    let submit = format!("select pgfan.submit('all', '{PARTIAL}', reduce => 'avg')");

    // Warm-up: caches, the daemons' pools and plans.
    jobs.run(&submit, &[], LIMIT).await?;
    for n in &nodes {
        partial(n).await?;
    }

    let (mut fan, mut slowest, mut together) = (vec![], vec![], vec![]);
    let mut last_job = 0;
    for _ in 0..ctx.runs {
        let (job, took) = jobs.run(&submit, &[], LIMIT).await?;
        let avg: Option<String> = jobs
            .client()
            .query_one(
                "select string_agg(r ->> 'avg', ',') from pgfan.result($1) r",
                &[&job],
            )
            .await?
            .get(0);
        let same: bool = jobs
            .client()
            .query_one(
                "select $1::text::numeric = $2::text::numeric",
                &[&avg, &exact],
            )
            .await?
            .get(0);
        if !same {
            bail!("job {job}: average {avg:?}, the single-table average is {exact}");
        }
        fan.push(rig::ms(took));
        last_job = job;
        let mut worst: f64 = 0.0;
        for n in &nodes {
            worst = worst.max(partial(n).await?);
        }
        slowest.push(worst);
        let t = Instant::now();
        futures_util::future::try_join_all(nodes.iter().map(partial)).await?;
        together.push(rig::ms(t.elapsed()));
    }
    ctx.note(
        "mapreduce",
        format!(
            "{total} rows, {per_node} per node; answer {exact} checked every run; last job: {}",
            pipeline::breakdown(&master, last_job).await?
        ),
    );
    drop(jobs);
    pipe.shutdown().await?;

    let metric = format!("avg over {NODES} nodes × {per_node} rows, submit → result");
    let row = Row::versus(
        "mapreduce",
        &metric,
        "ms",
        Better::Lower,
        fan.clone(),
        "slowest node's partial alone",
        &slowest,
    );
    let limit = 1.2 * row.baseline_value.unwrap_or(f64::NAN) + 50.0;
    let met = row.pgfan <= limit;
    Ok(vec![
        row.goal(format!("<= 1.2x slowest + 50 ms ({limit:.0} ms)"), met),
        Row::versus(
            "mapreduce",
            &metric,
            "ms",
            Better::Lower,
            fan,
            "the 3 partials at once, direct",
            &together,
        ),
    ])
}
