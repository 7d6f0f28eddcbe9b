//! Case 6 (`parallel`): many statements on one node at parallel degree 4, pgfan against a
//! dblink runner.
//!
//! pgfan: a master and one node cluster, the ticker, relay, reducer and the node daemon (4
//! workers, defaults otherwise) running in this process; `pgfan.run_parallel(sqls, 4, 'n1')`
//! submitted on the master (committed on its own), timed from sending the submit to the
//! reducer's `NOTIFY pgfan_job` for the job (its result is readable then).
//! Baseline: `pgfan_bench.dblink_run` (benches/suite/sql/dblink_runner.sql), PL/pgSQL on the
//! master dispatching the statements over 4 dblink connections to the same node database
//! with dblink_send_query / dblink_is_busy / dblink_get_result, timed around the call. The
//! fair comparison is a pool opened beforehand (pgfan's daemon is already running and
//! connected); the runner with its 4 connections opened and closed inside the timing is
//! reported too.
//! Sets: 8 × `select 1 from pg_sleep(0.5)` (ideal 1.0 s: two rounds of four) and 200 × `select 1`.
//! Runs are interleaved (pgfan, dblink, ...), after one warm-up of each.

pub mod pipeline;

use std::time::Duration;

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::report::{Better, Row};
use crate::rig::{self, Ctx};
use pipeline::{Jobs, Pipeline};

const DEGREE: i32 = 4;
const SLEEPS: usize = 8;
/// Not `select pg_sleep(0.5)`: pgfan fails a job whose statements return `void` (the reducer
/// cannot make a `partials` column of a pseudo-type; reported to the pipeline's owner).
const SLEEP: &str = "select 1 from pg_sleep(0.5)";
const IDEAL_S: f64 = 1.0;
const SMALL: &str = "select 1";
const RUNNER_SQL: &str = include_str!("sql/dblink_runner.sql");
const LIMIT: Duration = Duration::from_secs(120);

/// Seconds of one set run through pgfan; checks that every task ran.
async fn pgfan_set(jobs: &mut Jobs, sqls: &[String]) -> Result<(f64, i64)> {
    let (job, took) = jobs
        .run(
            "select pgfan.run_parallel($1, $2, 'n1')",
            &[&sqls, &DEGREE],
            LIMIT,
        )
        .await?;
    let done: i64 = jobs
        .client()
        .query_one(
            "select count(*) from pgfan.task where job_id = $1 and state = 'done'",
            &[&job],
        )
        .await?
        .get(0);
    if done != sqls.len() as i64 {
        bail!("job {job}: {done} of {} tasks done", sqls.len());
    }
    Ok((rig::secs(took), job))
}

/// Seconds of one set run through the dblink runner on the open pool (or, with `connect`,
/// opening and closing the pool inside the timing); checks that every result came back.
async fn dblink_set(runner: &Client, node: &str, sqls: &[String], connect: bool) -> Result<f64> {
    if connect {
        runner
            .execute("select pgfan_bench.dblink_close($1)", &[&DEGREE])
            .await?;
    }
    let start = std::time::Instant::now();
    let rows: i64 = if connect {
        runner
            .query_one(
                "select r from pgfan_bench.dblink_open($1, $3) o,
                               pgfan_bench.dblink_run($2, $3) r,
                               pgfan_bench.dblink_close($3) c",
                &[&node, &sqls, &DEGREE],
            )
            .await?
            .get(0)
    } else {
        runner
            .query_one("select pgfan_bench.dblink_run($1, $2)", &[&sqls, &DEGREE])
            .await?
            .get(0)
    };
    let took = rig::secs(start.elapsed());
    if rows != sqls.len() as i64 {
        bail!(
            "dblink runner returned {rows} rows for {} statements",
            sqls.len()
        );
    }
    if connect {
        runner
            .execute("select pgfan_bench.dblink_open($1, $2)", &[&node, &DEGREE])
            .await?;
    }
    Ok(took)
}

/// Node-side timing of a job's tasks: last claimed → first start, first start → last
/// finish on the node, and last finish → last shipped to the master.
async fn node_side(node: &Client, job: i64) -> Result<String> {
    let r = node
        .query_one(
            "select (extract(epoch from min(started_at) - max(claimed_at)) * 1000)::float8,
                    (extract(epoch from max(finished_at) - min(started_at)) * 1000)::float8,
                    (extract(epoch from max(shipped_at) - max(finished_at)) * 1000)::float8
               from pgfan_node.task where job_id = $1",
            &[&job],
        )
        .await?;
    let ms = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
    Ok(format!(
        "on the node: last claimed→first start {:.0} ms, first start→last finish {:.0} ms, \
         last finish→last shipped {:.0} ms",
        ms(0),
        ms(1),
        ms(2)
    ))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let (pipe, node) = tokio::try_join!(Pipeline::start(&[]), rig::cluster())?;
    let outcome = measure(ctx, pipe, &node).await;
    drop(node);
    outcome
}

async fn measure(
    ctx: &Ctx,
    mut pipe: Pipeline,
    node: &pgfan::cluster::Cluster,
) -> Result<Vec<Row>> {
    let node_db = node.conninfo("postgres");
    pipeline::install_node(node, "postgres").await?;
    let master = rig::connect(&pipe.master_conninfo()).await?;
    master.query_one("select pgfan.node_add('n1')", &[]).await?;
    pipe.start_node(pipe.node_config("n1", &node_db));
    master
        .batch_execute("create extension if not exists dblink")
        .await?;
    master.batch_execute(RUNNER_SQL).await?;
    let runner = rig::connect(&pipe.master_conninfo()).await?;
    runner
        .execute(
            "select pgfan_bench.dblink_open($1, $2)",
            &[&node_db, &DEGREE],
        )
        .await?;
    let mut jobs = Jobs::connect(&pipe.master_conninfo()).await?;
    let node_client = rig::connect(&node_db).await?;

    let sleeps: Vec<String> = vec![SLEEP.to_string(); SLEEPS];
    let small_n = ctx.size(200, 200);
    let small: Vec<String> = vec![SMALL.to_string(); small_n];
    // Warm-up: the node daemon's pool and plans, the runner's plans.
    pgfan_set(&mut jobs, &small).await?;
    dblink_set(&runner, &node_db, &small, false).await?;

    let (mut p_sleep, mut d_sleep, mut p_small, mut d_small, mut dc_small) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut last_small_job = 0;
    for _ in 0..ctx.runs {
        p_sleep.push(pgfan_set(&mut jobs, &sleeps).await?.0);
        d_sleep.push(dblink_set(&runner, &node_db, &sleeps, false).await?);
        let (s, job) = pgfan_set(&mut jobs, &small).await?;
        p_small.push(small_n as f64 / s);
        last_small_job = job;
        d_small.push(small_n as f64 / dblink_set(&runner, &node_db, &small, false).await?);
        dc_small.push(small_n as f64 / dblink_set(&runner, &node_db, &small, true).await?);
    }
    ctx.note(
        "parallel",
        format!(
            "last {small_n} × select 1 job: {}; {}",
            pipeline::breakdown(&master, last_small_job).await?,
            node_side(&node_client, last_small_job).await?
        ),
    );
    ctx.note(
        "parallel",
        format!(
            "pgfan: run_parallel(sqls, {DEGREE}, 'n1'), node daemon with 4 workers, ticker/relay/reducer/node in-process with default settings; time = submit sent → NOTIFY pgfan_job. dblink: PL/pgSQL runner on the master, {DEGREE} connections, timed around the call"
        ),
    );
    runner
        .execute("select pgfan_bench.dblink_close($1)", &[&DEGREE])
        .await?;
    drop(jobs);
    pipe.shutdown().await?;

    let sleep_metric = format!("{SLEEPS} × pg_sleep(0.5) at degree {DEGREE}, submit → result");
    let small_metric = format!("{small_n} × select 1 at degree {DEGREE}, submit → result");
    let ideal_limit = IDEAL_S * 1.1;
    let sleep_row = Row::versus(
        "parallel",
        &sleep_metric,
        "s",
        Better::Lower,
        p_sleep.clone(),
        "ideal (2 rounds of 0.5 s)",
        &[IDEAL_S],
    );
    let met = sleep_row.pgfan <= ideal_limit;
    Ok(vec![
        sleep_row.goal(format!("<= 1.1x ideal ({ideal_limit:.2} s)"), met),
        Row::versus(
            "parallel",
            &sleep_metric,
            "s",
            Better::Lower,
            p_sleep,
            "dblink runner, 4 open connections",
            &d_sleep,
        ),
        Row::versus(
            "parallel",
            &small_metric,
            "stmts/s",
            Better::Higher,
            p_small.clone(),
            "dblink runner, 4 open connections",
            &d_small,
        )
        .goal_ratio(0.5),
        Row::versus(
            "parallel",
            &small_metric,
            "stmts/s",
            Better::Higher,
            p_small,
            "dblink runner incl. opening 4 conns",
            &dc_small,
        )
        .goal_ratio(1.0),
    ])
}
