//! Case 9 (`fanout`): how the relay's routing scales with the number of nodes: a
//! `pgfan.run_on_all('select 1')` routed to 1, 10, 100 and 1,000 registered nodes.
//!
//! A master cluster (benchmark settings) with the ticker, relay and reducer running in this
//! process, defaults. Nodes n1..n1000 are registered with `pgfan.node_add` (each gets its
//! pull queue), 1, then 10, 100 and 1,000 of them, measuring after each step. Only n1..n3 have a node
//! database (three databases of one node cluster) and a running node daemon, which checks
//! that the routed tasks run; the others are registered only, their tasks stay queued.
//! What is measured is routing, not execution.
//!
//! Time to route: from sending the submit (committed on its own) to the arrival of the last
//! of the relay's wake-ups for the job's pull queues: every task event goes in through
//! `pgfan.enqueue`, which sends `NOTIFY pgfan_ticker_wake, '<queue>'` at the commit of the
//! relay's routing transaction, so a session listening on that channel sees the moment the
//! job is routed to every node, without polling. The job's `n_tasks` is checked each run.
//! Reduced: the last job at 1,000 nodes is answered by the nodes without a daemon (the three
//! live ones have answered by then), each through `pgfan.node_ship_batch` in a statement of
//! its own, one after the other, while the reducer runs; measured once, from the last
//! answer's commit to the job's `NOTIFY pgfan_job`.
//! Also reported: the relay's routing transaction alone, from its start (`job.routed_at`,
//! the relay transaction's `now()`) to the commit wake-up (server and client clocks are the
//! same machine's).
//! Floor: 1,000 plain `pgq.insert_event` into 1,000 queues in one transaction (one round
//! trip: `begin; select pgq.insert_event(...) from generate_series(1, 1000); commit`) in a
//! database of the same cluster that no ticker watches. Per-node overhead: (time at 1,000
//! nodes - time at 1 node) / 999 for each run, median. One warm-up job per step, then `--runs` jobs, 300 ms apart so the
//! ticker has ticked the previous job's pull queues.
//! `--profile` prints the master's top statements (pg_stat_statements, nested ones included)
//! over the measured runs at 1,000 nodes: what the routing transaction is made of, and what
//! ran beside it. Tracking every nested statement (1,000 different INSERTs a job) slows
//! the routing itself, so a `--profile` run's times are not comparable with a plain run's.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use pgfan::cluster::Cluster;
use tokio_postgres::{AsyncMessage, Client};

use crate::parallel::pipeline::{self, Pipeline};
use crate::report::{median, Better, Row};
use crate::rig::{self, Ctx};

const CASE: &str = "fanout";
/// Registered nodes at each step.
const STEPS: [usize; 4] = [1, 10, 100, 1000];
/// Nodes with a database and a running daemon.
const LIVE: usize = 3;
const FLOOR_QUEUES: usize = 1000;
/// Issue 14's goal for a `run_on_all` to 1,000 nodes, submit → routed.
const GOAL_MS: f64 = 100.0;
/// Issue 14's goal for the same job, from its last node's answer to done.
const REDUCE_GOAL_MS: f64 = 300.0;
const LIMIT: Duration = Duration::from_secs(60);
const PAUSE: Duration = Duration::from_millis(300);

/// A master session listening on the ticker's wake-up channel.
struct Watch {
    session: pgfan::db::Session,
}

/// One routed job: time to route and the relay's routing transaction, both in ms.
struct Routed {
    job: i64,
    route_ms: f64,
    tx_ms: f64,
}

impl Watch {
    async fn connect(master: &str) -> Result<Watch> {
        let session = pgfan::db::connect(master).await?;
        session
            .client
            .batch_execute("listen pgfan_ticker_wake")
            .await?;
        Ok(Watch { session })
    }

    /// Submits `run_on_all('select 1')` and waits for the wake-ups of the `nodes` pull
    /// queues.
    async fn route(&mut self, nodes: usize) -> Result<Routed> {
        let mut waiting: HashSet<String> =
            (1..=nodes).map(|i| format!("pgfan_node_n{i}")).collect();
        while self.session.messages.try_recv().is_ok() {}
        let start = Instant::now();
        let job: i64 = self
            .session
            .client
            .query_one("select pgfan.run_on_all('select 1')", &[])
            .await?
            .get(0);
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, self.session.messages.recv()).await {
                Ok(Some(AsyncMessage::Notification(n))) => {
                    waiting.remove(n.payload());
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("master session closed while job {job} was routed"),
                Err(_) => bail!(
                    "job {job}: {} of {nodes} pull queues not woken after {LIMIT:?}",
                    waiting.len()
                ),
            }
        }
        let route_ms = rig::ms(start.elapsed());
        let routed = epoch(SystemTime::now());
        let r = self
            .session
            .client
            .query_one(
                "select n_tasks, extract(epoch from routed_at)::float8 from pgfan.job
                  where job_id = $1",
                &[&job],
            )
            .await?;
        let (n_tasks, routed_at): (Option<i32>, Option<f64>) = (r.get(0), r.get(1));
        if n_tasks != Some(nodes as i32) {
            bail!("job {job} has {n_tasks:?} tasks, not {nodes}");
        }
        Ok(Routed {
            job,
            route_ms,
            tx_ms: (routed - routed_at.context("routed_at not set")?) * 1000.0,
        })
    }
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The result every simulated node ships for its `select 1` task.
const ANSWER: &str = r#"{"state": "done", "error": null, "columns": ["?column?"], "types": ["integer"], "rows": [["1"]]}"#;

/// The nodes without a daemon answer `job`, each its own task through the node door
/// (`pgfan.node_ship_batch`, one autocommit statement per node, as each daemon's ship
/// round would be); returns the ms from the last answer's commit to the job's
/// `NOTIFY pgfan_job` (the reducer has recorded and reduced everything).
async fn answer(master_conninfo: &str, job: i64) -> Result<f64> {
    let mut listen = pgfan::db::connect(master_conninfo).await?;
    listen.client.batch_execute("listen pgfan_job").await?;
    let ship = rig::connect(master_conninfo).await?;
    let open = ship
        .query(
            "select task_id, node_name from pgfan.task
              where job_id = $1 and state not in ('done', 'failed', 'cancelled')
              order by task_id",
            &[&job],
        )
        .await?;
    let job_text = job.to_string();
    let mut last = Instant::now();
    for row in &open {
        let (task, node): (i64, String) = (row.get(0), row.get(1));
        ship.query_one(
            "select pgfan.node_ship_batch($1, $2, $3, $4)",
            &[&node, &vec![task], &vec![job_text.as_str()], &vec![ANSWER]],
        )
        .await?;
        last = Instant::now();
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, listen.messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) if n.payload() == job_text => break,
            Ok(Some(_)) => {}
            Ok(None) => bail!("master session closed while job {job} was reduced"),
            Err(_) => bail!("job {job} not done {LIMIT:?} after its last answer"),
        }
    }
    let state: String = ship
        .query_one("select state from pgfan.job where job_id = $1", &[&job])
        .await?
        .get(0);
    if state != "done" {
        bail!("job {job} is {state} after its answers");
    }
    Ok(rig::ms(last.elapsed()))
}

/// Milliseconds of [`FLOOR_QUEUES`] `pgq.insert_event` into as many queues in one transaction.
async fn floor(db: &Client) -> Result<f64> {
    let sql = format!(
        "begin;
         select pgq.insert_event('f_' || g, 'sql', 'select 1') from generate_series(1, {FLOOR_QUEUES}) g;
         commit"
    );
    let t = Instant::now();
    db.batch_execute(&sql).await?;
    Ok(rig::ms(t.elapsed()))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let (pipe, nodes) = tokio::try_join!(Pipeline::start(&[]), rig::cluster())?;
    let outcome = measure(ctx, pipe, &nodes).await;
    drop(nodes);
    outcome
}

async fn measure(ctx: &Ctx, mut pipe: Pipeline, nodes: &Cluster) -> Result<Vec<Row>> {
    let master = rig::connect(&pipe.master_conninfo()).await?;
    for i in 1..=LIVE {
        let db = format!("n{i}");
        rig::create_db(nodes, &db).await?;
        pipeline::install_node(nodes, &db).await?;
    }
    let floor_db = rig::bundled_db(&pipe.master, "floor").await?;
    floor_db
        .batch_execute(&format!(
            "select pgq.create_queue('f_' || g) from generate_series(1, {FLOOR_QUEUES}) g"
        ))
        .await?;
    let mut watch = Watch::connect(&pipe.master_conninfo()).await?;

    let mut registered = 0;
    let mut route: Vec<Vec<f64>> = Vec::new();
    let mut tx: Vec<Vec<f64>> = Vec::new();
    let mut last_job = 0;
    for &n in &STEPS {
        let t = Instant::now();
        for i in registered + 1..=n {
            let name = format!("n{i}");
            master
                .query_one("select pgfan.node_add($1)", &[&name])
                .await?;
            if i <= LIVE {
                pipe.start_node(pipe.node_config(&name, &nodes.conninfo(&name)));
            } else {
                // The nodes without a daemon here stand for started ones elsewhere: a
                // started node has sent a heartbeat (else it gets no `all` work).
                master
                    .query_one("select pgfan.node_heartbeat($1, 4, 'bench')", &[&name])
                    .await?;
            }
        }
        if n > registered {
            println!(
                "  registered n{}..n{n} in {:.1} s",
                registered + 1,
                t.elapsed().as_secs_f64()
            );
        }
        registered = n;
        pipe.wait_started().await?;
        watch.route(n).await.context("warm-up")?;
        let profiled = ctx.profile && n == STEPS[STEPS.len() - 1];
        if profiled {
            master
                .batch_execute(
                    "create extension if not exists pg_stat_statements;
                     select pg_stat_statements_reset()",
                )
                .await?;
        }
        let (mut r, mut x) = (Vec::new(), Vec::new());
        for _ in 0..ctx.runs {
            tokio::time::sleep(PAUSE).await;
            let routed = watch.route(n).await?;
            r.push(routed.route_ms);
            x.push(routed.tx_ms);
            last_job = routed.job;
        }
        if profiled {
            // Where the master's time went during the measured runs, the relay's routing
            // statements and whatever ran beside them (the ticker's rounds, for one).
            println!(
                "  {n} nodes, {} runs: the master's top statements (nested included)\n{}",
                ctx.runs,
                rig::top_statements(&pipe.master_conninfo(), 15).await?
            );
        }
        route.push(r);
        tx.push(x);
    }
    // The live nodes ran their tasks of the last job: what was routed is runnable.
    let done = format!(
        "select count(*) = {LIVE} from pgfan.task where job_id = {last_job} and state = 'done'"
    );
    rig::until(&master, &done, Duration::from_millis(50), LIMIT)
        .await
        .context("the live nodes' tasks of the last job")?;
    let answered = std::time::Instant::now();
    let reduce_ms = answer(&pipe.master_conninfo(), last_job).await?;
    println!(
        "  the other {} nodes answered in {:.1} s; reduced {reduce_ms:.1} ms after the last",
        STEPS[STEPS.len() - 1] - LIVE,
        answered.elapsed().as_secs_f64()
    );

    let mut fl = Vec::new();
    floor(&floor_db).await?;
    for _ in 0..ctx.runs.max(5) {
        fl.push(floor(&floor_db).await?);
    }
    drop(watch);
    pipe.shutdown().await?;

    let med: Vec<f64> = route.iter().map(|r| median(r)).collect();
    let tx_med: Vec<f64> = tx.iter().map(|r| median(r)).collect();
    let slope = |i: usize, j: usize, m: &[f64]| (m[j] - m[i]) / (STEPS[j] - STEPS[i]) as f64;
    let floor_ms = median(&fl);
    ctx.note(
        CASE,
        format!(
            "ticker/relay/reducer in-process, defaults; n1..n{LIVE} have node daemons, the other \
             nodes are registered only (routing measured, not execution); {} runs per step + 1 \
             warm-up; median time to route {} ms at {:?} nodes, routing transaction {} ms; slope \
             1→10 {:.3} ms/node, 10→100 {:.3} ms/node, 100→1000 {:.3} ms/node; floor \
             {floor_ms:.2} ms, median of {} runs",
            ctx.runs,
            fmt_list(&med),
            STEPS,
            fmt_list(&tx_med),
            slope(0, 1, &med),
            slope(1, 2, &med),
            slope(2, 3, &med),
            fl.len()
        ),
    );

    let last = STEPS.len() - 1;
    let floor_name = format!("{FLOOR_QUEUES} × pgq.insert_event, 1 tx");
    let mut rows = Vec::new();
    for (i, &n) in STEPS.iter().enumerate().take(last) {
        rows.push(Row::single(
            CASE,
            format!("run_on_all to {n} node(s), submit → routed"),
            "ms",
            Better::Lower,
            route[i].clone(),
        ));
    }
    let routed_ms = median(&route[last]);
    rows.push(
        Row::versus(
            CASE,
            format!("run_on_all to {} nodes, submit → routed", STEPS[last]),
            "ms",
            Better::Lower,
            route[last].clone(),
            &floor_name,
            &fl,
        )
        .goal(format!("<= {GOAL_MS} ms"), routed_ms <= GOAL_MS),
    );
    rows.push(Row::versus(
        CASE,
        format!(
            "relay's routing tx at {} nodes, start → commit",
            STEPS[last]
        ),
        "ms",
        Better::Lower,
        tx[last].clone(),
        &floor_name,
        &fl,
    ));
    rows.push(
        Row::single(
            CASE,
            format!("run_on_all to {} nodes, last answer → reduced", STEPS[last]),
            "ms",
            Better::Lower,
            vec![reduce_ms],
        )
        .goal(
            format!("<= {REDUCE_GOAL_MS} ms"),
            reduce_ms <= REDUCE_GOAL_MS,
        ),
    );
    let per_node: Vec<f64> = (0..ctx.runs)
        .map(|k| (route[last][k] - route[0][k]) / (STEPS[last] - STEPS[0]) as f64)
        .collect();
    let per_event: Vec<f64> = fl.iter().map(|f| f / FLOOR_QUEUES as f64).collect();
    rows.push(Row::versus(
        CASE,
        format!("per-node overhead, slope 1 → {} nodes", STEPS[last]),
        "ms/node",
        Better::Lower,
        per_node,
        "floor per insert_event",
        &per_event,
    ));
    Ok(rows)
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
