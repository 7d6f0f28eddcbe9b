//! Case 4 (`delivery`): end-to-end targeted delivery of `copy` tasks, master + 3 nodes.
//!
//! One producer session inserts N raw copy events (`action=ins&id=<g>&name=name<g>`, target
//! `n1`..`n3` round-robin) into `push_queue` with one set statement per transaction of
//! [`TX_ROWS`] events (`select pgq.insert_event(...) from generate_series($1, $2) g`). The
//! clock runs from the first insert until every row is applied on its node and every job's
//! result is reduced on the master: the N-th job-done notification (`NOTIFY pgfan_job` from
//! pgfan's reducer, `NOTIFY job_done` from the baseline's job table trigger), received on a
//! session that LISTENs from before the first insert, so the end is a signal, not a poll.
//! The row counts on the nodes are checked afterwards.
//!
//! pgfan: `Topology::start(3)` with every daemon default, `copy_tables = public.t`.
//! Baseline: pgqd (defaults) + python3-pgq push/pull, see skytools.rs. Ceiling: the same
//! N rows, same statement shape and transaction size, inserted by the same producer into an
//! ordinary table on pgfan's master (before its pipeline has work), i.e. what the master
//! can absorb at all. Every run starts fresh clusters.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use pgfan::demo::Topology;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use crate::report::{Better, Row};
use crate::rig::{self, Ctx};
use crate::skytools::{self, Baseline};

const CASE: &str = "delivery";
/// Events per producer transaction (one statement each).
pub const TX_ROWS: i32 = 1000;
/// Nodes of the topology.
pub const NODES: usize = 3;
/// How long the master's statistics are given to catch up before they are read.
const STATS_DELAY: Duration = Duration::from_secs(11);
/// A run that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(120);

const PRODUCE: &str = "select pgq.insert_event('push_queue', 'copy',
        'action=ins&id=' || g || '&name=name' || g, 'n' || (1 + (g - 1) % 3), null, null, null)
    from generate_series($1::int, $2::int) g";
const PLAIN_TABLE: &str = "create table plain_events (
    ev_id bigserial primary key,
    ev_time timestamptz not null default now(),
    ev_txid bigint not null default txid_current(),
    ev_type text, ev_data text, ev_extra1 text)";
const PLAIN: &str = "insert into plain_events (ev_type, ev_data, ev_extra1)
    select 'copy', 'action=ins&id=' || g || '&name=name' || g, 'n' || (1 + (g - 1) % 3)
    from generate_series($1::int, $2::int) g";

/// Where a pipeline takes events and shows its effects: pgfan's and the baseline's alike.
pub struct Endpoints {
    /// The master database with `push_queue`.
    pub master: String,
    /// Channel whose payload is the id of a job that just finished.
    pub channel: &'static str,
    /// Node databases, n1 first; each has table `t` ([`skytools::NODE_TABLE`]).
    pub nodes: Vec<String>,
}

impl Endpoints {
    pub fn pgfan(topo: &Topology) -> Endpoints {
        Endpoints {
            master: topo.master_conninfo(),
            channel: "pgfan_job",
            nodes: topo.nodes.iter().map(|n| n.conninfo()).collect(),
        }
    }

    pub fn baseline(b: &Baseline) -> Endpoints {
        Endpoints {
            master: b.master_conninfo(),
            channel: skytools::DONE_CHANNEL,
            nodes: (0..b.nodes.len()).map(|i| b.node_conninfo(i)).collect(),
        }
    }
}

/// Starts pgfan's topology with copies allowed into `public.t`, and creates `t` on the nodes.
pub async fn start_pgfan() -> Result<Topology> {
    let topo = Topology::start(NODES, |cfg| cfg.copy_tables = vec!["public.t".into()])
        .await
        .context("start pgfan's topology")?;
    for node in &topo.nodes {
        rig::connect(&node.conninfo())
            .await?
            .batch_execute(skytools::NODE_TABLE)
            .await?;
    }
    Ok(topo)
}

/// Job-done notifications with their arrival time, from a session that LISTENs on a channel.
pub struct DoneListener {
    pub rx: mpsc::UnboundedReceiver<(i64, SystemTime)>,
    _client: Client,
}

impl DoneListener {
    pub async fn start(conninfo: &str, channel: &'static str) -> Result<DoneListener> {
        let mut session = pgfan::db::connect(conninfo).await?;
        session
            .client
            .batch_execute(&format!("listen {channel}"))
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        // A task of its own stamps each notification as it arrives, whatever the case's
        // main task is doing at that moment.
        tokio::spawn(async move {
            while let Some(msg) = session.messages.recv().await {
                if let AsyncMessage::Notification(n) = msg {
                    let at = SystemTime::now();
                    if n.channel() == channel {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            if tx.send((id, at)).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        Ok(DoneListener {
            rx,
            _client: session.client,
        })
    }

    /// Waits for the next notification; fails after [`STALL`] without one.
    pub async fn next(&mut self) -> Result<(i64, SystemTime)> {
        match tokio::time::timeout(STALL, self.rx.recv()).await {
            Ok(Some(x)) => Ok(x),
            Ok(None) => bail!("the listening session ended"),
            Err(_) => bail!("no job finished for {STALL:?}"),
        }
    }
}

/// Seconds since the epoch, as the database's `extract(epoch from ...)` gives them.
pub fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Inserts events 1..=n through `sql` in transactions of [`TX_ROWS`]; returns the time taken.
async fn produce(client: &Client, sql: &str, n: i32) -> Result<Duration> {
    let stmt = client.prepare(sql).await?;
    let start = Instant::now();
    let mut lo = 1;
    while lo <= n {
        let hi = (lo + TX_ROWS - 1).min(n);
        client.execute(&stmt, &[&lo, &hi]).await?;
        lo = hi + 1;
    }
    Ok(start.elapsed())
}

/// One delivery run: (wall-clock start, seconds until all produced, seconds until all done).
async fn deliver(ep: &Endpoints, n: i32) -> Result<(SystemTime, f64, f64)> {
    let mut done = DoneListener::start(&ep.master, ep.channel).await?;
    let producer = rig::connect(&ep.master).await?;
    let wall = SystemTime::now();
    let start = Instant::now();
    let produced = produce(&producer, PRODUCE, n).await?;
    let mut seen = HashSet::with_capacity(n as usize);
    while seen.len() < n as usize {
        let (id, _) = done
            .next()
            .await
            .with_context(|| format!("{} of {n} jobs done", seen.len()))?;
        seen.insert(id);
    }
    let elapsed = start.elapsed();
    // Jobs are done only after their row committed, so the rows must all be there now.
    for (i, node) in ep.nodes.iter().enumerate() {
        let rows: i64 = rig::connect(node)
            .await?
            .query_one("select count(*) from t", &[])
            .await?
            .get(0);
        let want = (1..=n)
            .filter(|g| (g - 1) as usize % ep.nodes.len() == i)
            .count() as i64;
        if rows != want {
            bail!("node n{} holds {rows} rows, expected {want}", i + 1);
        }
    }
    Ok((wall, rig::secs(produced), rig::secs(elapsed)))
}

/// Rows inserted or updated on the master so far, in every table but push_queue's event
/// tables (the producer's part): the pipeline's row writes.
const MASTER_WRITES: &str = "
    select coalesce(sum(s.n_tup_ins + s.n_tup_upd), 0)::float8
      from pg_stat_user_tables s
     where s.relname <> 'plain_events'
       and s.schemaname || '.' || s.relname not like
           (select replace(queue_data_pfx, '_', '\\_') || '\\_%' from pgq.queue
             where queue_name = 'push_queue')";

/// Server time (ms) of the master's top-level statements so far, but the producer's; NULL
/// without pg_stat_statements (a run without `--profile`). pg_stat_statements shows the
/// producer's statement with its constants replaced (`pgq.insert_event($3, ...`), so it is
/// told by its start: no daemon calls `pgq.insert_event` at top level.
const MASTER_TIME: &str = "
    select coalesce(sum(total_exec_time), 0)::float8 from pg_stat_statements
     where toplevel and query not like '%push_queue%'
       and query not like 'select pgq.insert_event(%'
       and dbid = (select oid from pg_database where datname = current_database())";

/// The master's counters the two delivery metrics come from: (row writes, statement ms).
async fn master_counters(master: &Client) -> Result<(f64, Option<f64>)> {
    let writes = master.query_one(MASTER_WRITES, &[]).await?.get(0);
    // Names are resolved when a statement is parsed: without the extension, the view in
    // MASTER_TIME does not exist at all, so it is asked about first.
    let profiled: bool = master
        .query_one(
            "select exists (select 1 from pg_extension where extname = 'pg_stat_statements')",
            &[],
        )
        .await?
        .get(0);
    let time = match profiled {
        true => Some(master.query_one(MASTER_TIME, &[]).await?.get(0)),
        false => None,
    };
    Ok((writes, time))
}

/// Rows/s of the same insert pattern into an ordinary table.
async fn ceiling(master: &str, n: i32) -> Result<f64> {
    let c = rig::connect(master).await?;
    c.batch_execute(PLAIN_TABLE).await?;
    let t = produce(&c, PLAIN, n).await?;
    c.batch_execute("drop table plain_events").await?;
    Ok(n as f64 / rig::secs(t))
}

/// When each pgfan stage had handled its last task, in seconds after the first insert: from
/// the timestamps of the job, task and node task rows (transaction start times).
async fn pgfan_stages(topo: &Topology, wall: SystemTime) -> Result<String> {
    let t0 = epoch(wall);
    let m = topo.master_client().await?;
    let row = m
        .query_one(
            "select extract(epoch from max(j.routed_at))::float8,
                    extract(epoch from max(t.claimed_at))::float8,
                    extract(epoch from max(t.finished_at))::float8,
                    extract(epoch from max(j.finished_at))::float8,
                    count(*) filter (where j.state <> 'done')
             from pgfan.job j join pgfan.task t using (job_id)",
            &[],
        )
        .await?;
    let mut node_done = f64::MIN;
    let mut node_shipped = f64::MIN;
    for node in &topo.nodes {
        let r = rig::connect(&node.conninfo())
            .await?
            .query_one(
                "select extract(epoch from max(finished_at))::float8,
                        extract(epoch from max(shipped_at))::float8
                 from pgfan_node.task",
                &[],
            )
            .await?;
        node_done = node_done.max(r.get::<_, Option<f64>>(0).unwrap_or(f64::NAN));
        node_shipped = node_shipped.max(r.get::<_, Option<f64>>(1).unwrap_or(f64::NAN));
    }
    let at = |i: usize| -> f64 { row.get::<_, Option<f64>>(i).unwrap_or(f64::NAN) - t0 };
    Ok(format!(
        "last task routed by the relay {:.2} s, claimed by its node {:.2} s, executed {:.2} s, \
         shipped {:.2} s, recorded by the reducer {:.2} s, last job finished {:.2} s",
        at(0),
        at(1),
        node_done - t0,
        node_shipped - t0,
        at(2),
        at(3)
    ))
}

/// The delivery metrics beside the throughput: the master's row writes and (with
/// `--profile`) its statement time, per task.
fn master_per_task(before: (f64, Option<f64>), after: (f64, Option<f64>), n: i32) -> String {
    let writes = (after.0 - before.0) / n as f64;
    let time = match (before.1, after.1) {
        (Some(b), Some(a)) => format!("{:.0} µs", (a - b) * 1000.0 / n as f64),
        _ => "n/a without --profile".to_string(),
    };
    format!(
        "master per task: {writes:.2} rows written (n_tup_ins + n_tup_upd), statement time {time} \
         (top-level, all but the producer's)"
    )
}

async fn pgfan_run(ctx: &Ctx, n: i32) -> Result<(f64, f64, String)> {
    let topo = start_pgfan().await?;
    let result = async {
        let ceiling = ceiling(&topo.master_conninfo(), n).await?;
        let master = topo.master_client().await?;
        if ctx.profile {
            master
                .batch_execute("create extension if not exists pg_stat_statements")
                .await?;
        }
        // Backends report their table counters at most once a second, and an idle one
        // after up to 10 s: the counters are read after the stats had that time.
        tokio::time::sleep(STATS_DELAY).await;
        let before = master_counters(&master).await?;
        let (wall, produced, secs) = deliver(&Endpoints::pgfan(&topo), n).await?;
        tokio::time::sleep(STATS_DELAY).await;
        let after = master_counters(&master).await?;
        let per_task = master_per_task(before, after, n);
        println!("  {per_task}");
        let stages = pgfan_stages(&topo, wall).await?;
        if ctx.profile {
            println!(
                "  CPU of this process (the daemons and the bench) so far: {:.1} s",
                rig::own_cpu_secs()
            );
            for (name, conninfo) in [
                ("master", topo.master_conninfo()),
                ("n1", topo.nodes[0].conninfo()),
            ] {
                let top = rig::top_statements(&conninfo, 15).await?;
                println!("  server time on {name}:\n{top}");
            }
        }
        let note =
            format!("{n} tasks in {secs:.2} s (produced in {produced:.2} s); {per_task}; {stages}");
        Ok::<_, anyhow::Error>((n as f64 / secs, ceiling, note))
    }
    .await;
    let stopped = topo.shutdown().await;
    let r = result?;
    stopped.context("stop pgfan's daemons")?;
    Ok(r)
}

async fn baseline_run(n: i32) -> Result<(f64, String)> {
    let b = Baseline::start(NODES, "").await?;
    let (_, produced, secs) = deliver(&Endpoints::baseline(&b), n)
        .await
        .with_context(|| format!("baseline stalled; logs:\n{}", b.log_tails()))?;
    let note = format!("{n} tasks in {secs:.2} s (produced in {produced:.2} s)");
    Ok((n as f64 / secs, note))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.size(100_000, 10_000) as i32;
    let (mut pgfan, mut plain, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=ctx.runs {
        let (rate, ceiling, note) = pgfan_run(ctx, n).await.context("pgfan")?;
        ctx.note(CASE, format!("run {run} pgfan: {note}"));
        pgfan.push(rate);
        plain.push(ceiling);
        let (rate, note) = baseline_run(n).await.context("pgqd + python3-pgq")?;
        ctx.note(CASE, format!("run {run} baseline: {note}"));
        base.push(rate);
    }
    ctx.note(
        CASE,
        format!(
            "{n} raw copy events over {NODES} nodes round-robin, one producer session, \
             {TX_ROWS} events per transaction in one `insert_event ... from generate_series` \
             statement; end = the {n}th job-done NOTIFY (all rows then checked on the nodes). \
             pgfan: every daemon default (ticker poll 10 ms, node workers 4). Baseline: pgqd \
             defaults (ticker_period 1 s; queues ticker_max_count 500, ticker_max_lag 3 s), \
             python3-pgq consumers with defaults (loop_delay 1 s, lazy fetch 300). Ceiling: \
             the same statements into an ordinary table on pgfan's master. Fresh clusters per run."
        ),
    );
    let metric = format!("copy tasks/s end to end, {} over {NODES} nodes", n);
    Ok(vec![
        Row::versus(
            CASE,
            &metric,
            "tasks/s",
            Better::Higher,
            pgfan.clone(),
            "pgqd + python3-pgq push/pull",
            &base,
        )
        .goal_ratio(3.0),
        Row::versus(
            CASE,
            "same, as a fraction of the master's plain INSERT",
            "tasks/s",
            Better::Higher,
            pgfan,
            "plain INSERT on master",
            &plain,
        ),
    ])
}
