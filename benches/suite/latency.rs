//! Case 5 (`latency`): latency at low load, master + 3 nodes, pgfan's defaults vs pgqd's.
//!
//! One producer session sends a raw copy event every 100 ms (10 events/s), each in its own
//! transaction (`select pgq.insert_event('push_queue', 'copy', 'action=ins&id=..&name=..',
//! '<node>', ...)` in autocommit), to n1..n3 round-robin. For each event:
//! - insert → applied: the node row's `applied_at` (`clock_timestamp()` of the inserting
//!   statement on the node) minus the client's clock just before it sent the insert; every
//!   cluster runs on this machine, so the clocks agree and no poller adds its period;
//! - insert → job result available: arrival of the job-done NOTIFY on a session that
//!   LISTENs on the master (pgfan's reducer sends `pgfan_job`; the baseline's job table
//!   trigger sends `job_done` when the python reducer marks the job done), minus the same
//!   send time.
//!
//! pgfan runs twice: direct (defaults), and pooled: the node daemons reach the master
//! through PgBouncer in transaction mode (two server connections for the three nodes),
//! `pooled = true`, `claim_poll_period` 1 s, so new work waits for a node's next poll.
//!
//! The first [`WARMUP`] events only warm connections and plans and are not counted. One run.
//! For pgfan the case also prints where the time goes: the median of each pipeline
//! timestamp relative to the send time.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};
use pgfan::bouncer::Bouncer;
use pgfan::demo::Topology;
use tokio::time::MissedTickBehavior;

use crate::delivery::{self, epoch, DoneListener, Endpoints, NODES};
use crate::report::{percentile, Better, Row};
use crate::rig::{self, Ctx};
use crate::skytools::Baseline;

const CASE: &str = "latency";
/// Time between two events: 10 events/s.
const PERIOD: Duration = Duration::from_millis(100);
/// Events sent before the measured ones.
const WARMUP: usize = 10;

/// One sent event.
struct Sample {
    id: i32,
    node: usize,
    /// Client clock just before the insert was sent, seconds since the epoch.
    sent: f64,
    ev_id: i64,
}

/// Measured latencies of one pipeline, in ms, sorted; plus the samples for a breakdown.
struct Measured {
    applied: Vec<f64>,
    result: Vec<f64>,
    samples: Vec<Sample>,
}

/// Sends `WARMUP + n` events at [`PERIOD`] and collects both latencies of the last `n`.
/// `job_ids` maps push event ids to job ids (pgfan's relay creates a job per raw event);
/// without it the event id is the job id (the baseline's relay).
async fn measure(ep: &Endpoints, n: usize, job_ids: Option<&str>) -> Result<Measured> {
    let mut done = DoneListener::start(&ep.master, ep.channel).await?;
    let producer = rig::connect(&ep.master).await?;
    let stmt = producer
        .prepare("select pgq.insert_event('push_queue', 'copy', $1, $2, null, null, null)")
        .await?;
    let mut tick = tokio::time::interval(PERIOD);
    // A late send is not followed by a burst: the spacing, not the schedule, sets the load.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let total = WARMUP + n;
    let mut samples = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let id = i as i32 + 1;
        let node = i % ep.nodes.len();
        let data = format!("action=ins&id={id}&name=name{id}");
        let target = format!("n{}", node + 1);
        let sent = epoch(SystemTime::now());
        let ev_id: i64 = producer.query_one(&stmt, &[&data, &target]).await?.get(0);
        samples.push(Sample {
            id,
            node,
            sent,
            ev_id,
        });
    }
    let mut finished: HashMap<i64, f64> = HashMap::with_capacity(total);
    while finished.len() < total {
        let (job, at) = done
            .next()
            .await
            .with_context(|| format!("{} of {total} jobs done", finished.len()))?;
        finished.entry(job).or_insert(epoch(at));
    }
    let jobs: HashMap<i64, i64> = match job_ids {
        Some(sql) => producer
            .query(sql, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        None => samples.iter().map(|s| (s.ev_id, s.ev_id)).collect(),
    };
    let mut applied_at: HashMap<i32, f64> = HashMap::with_capacity(total);
    for node in &ep.nodes {
        for r in rig::connect(node)
            .await?
            .query(
                "select id, extract(epoch from applied_at)::float8 from t",
                &[],
            )
            .await?
        {
            applied_at.insert(r.get(0), r.get(1));
        }
    }
    let samples: Vec<Sample> = samples.into_iter().skip(WARMUP).collect();
    let (mut applied, mut result) = (Vec::new(), Vec::new());
    for s in &samples {
        let Some(a) = applied_at.get(&s.id) else {
            bail!("row {} missing on node n{}", s.id, s.node + 1);
        };
        let Some(f) = jobs.get(&s.ev_id).and_then(|j| finished.get(j)) else {
            bail!("no finished job for event {}", s.ev_id);
        };
        applied.push((a - s.sent) * 1000.0);
        result.push((f - s.sent) * 1000.0);
    }
    applied.sort_by(f64::total_cmp);
    result.sort_by(f64::total_cmp);
    Ok(Measured {
        applied,
        result,
        samples,
    })
}

/// Median of each of pgfan's pipeline timestamps relative to the send time, in ms. The
/// database's are transaction start times (`now()`) except `applied_at`.
async fn pgfan_breakdown(topo: &Topology, samples: &[Sample]) -> Result<String> {
    let m = topo.master_client().await?;
    // push event id → (task id, [routed, claimed on master, recorded by reducer, job done])
    let mut master: HashMap<i64, (i64, [f64; 4])> = HashMap::new();
    for r in m
        .query(
            "select j.source_ev_id, t.task_id,
                    extract(epoch from j.routed_at)::float8,
                    extract(epoch from t.claimed_at)::float8,
                    extract(epoch from t.finished_at)::float8,
                    extract(epoch from j.finished_at)::float8
             from pgfan.job j join pgfan.task t using (job_id)
             where j.source_queue = 'push_queue'",
            &[],
        )
        .await?
    {
        master.insert(
            r.get(0),
            (r.get(1), [at(&r, 2), at(&r, 3), at(&r, 4), at(&r, 5)]),
        );
    }
    // task id → [claimed on node, started, finished, shipped]
    let mut node: HashMap<i64, [f64; 4]> = HashMap::new();
    for n in &topo.nodes {
        for r in rig::connect(&n.conninfo())
            .await?
            .query(
                "select task_id, extract(epoch from claimed_at)::float8,
                        extract(epoch from started_at)::float8,
                        extract(epoch from finished_at)::float8,
                        extract(epoch from shipped_at)::float8
                 from pgfan_node.task",
                &[],
            )
            .await?
        {
            node.insert(r.get(0), [at(&r, 1), at(&r, 2), at(&r, 3), at(&r, 4)]);
        }
    }
    let names = [
        "routed (relay tx)",
        "claim committed on master (node's master tx)",
        "claimed on node (node tx)",
        "started",
        "finished (worker tx)",
        "shipped",
        "recorded (reducer tx)",
        "job finished (reducer tx)",
    ];
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for s in samples {
        let Some((task, mt)) = master.get(&s.ev_id) else {
            continue;
        };
        let Some(nt) = node.get(task) else { continue };
        let ts = [mt[0], mt[1], nt[0], nt[1], nt[2], nt[3], mt[2], mt[3]];
        let row: Vec<f64> = ts.iter().map(|t| (t - s.sent) * 1000.0).collect();
        for (col, t) in columns.iter_mut().zip(&row) {
            col.push(*t);
        }
        rows.push(row);
    }
    let median = names
        .iter()
        .zip(columns)
        .map(|(name, mut col)| {
            col.sort_by(f64::total_cmp);
            format!("{name} +{:.1}", percentile(&col, 0.5))
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The tail is what the p99 goal is about: the slowest samples' own timelines show which
    // hop their time went to (the worker's commit stands in for the applied time).
    rows.sort_by(|a, b| b[4].total_cmp(&a[4]));
    let slowest = rows
        .iter()
        .take(5)
        .map(|r| {
            let stages: Vec<String> = r.iter().map(|t| format!("{t:.1}")).collect();
            format!("[{}]", stages.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ");
    Ok(format!(
        "{median}; the 5 slowest by worker commit, same stages: {slowest}"
    ))
}

/// A nullable epoch column; NaN where the stage has not stamped its time.
fn at(r: &tokio_postgres::Row, i: usize) -> f64 {
    r.get::<_, Option<f64>>(i).unwrap_or(f64::NAN)
}

/// The claim poll of the pooled-mode measurement: the latency it should show.
const POOLED_POLL: Duration = Duration::from_secs(1);

async fn pgfan_measure(n: usize, pooled: bool) -> Result<(Measured, String)> {
    let mut topo = delivery::start_pgfan().await?;
    // Pooled: every node daemon reaches the master through PgBouncer in transaction mode,
    // two server connections for the three of them, and polls.
    let bouncer = match pooled {
        true => Some(Bouncer::start(&topo.master, 2)?),
        false => None,
    };
    if let Some(b) = &bouncer {
        for i in 0..topo.nodes.len() {
            topo.stop_node(i).await?;
            let cfg = &mut topo.nodes[i].config;
            cfg.master = b.conninfo("postgres");
            cfg.pooled = true;
            cfg.claim_poll_period = POOLED_POLL;
            topo.start_node(i);
        }
    }
    let result = async {
        let m = measure(
            &Endpoints::pgfan(&topo),
            n,
            Some("select source_ev_id, job_id from pgfan.job where source_queue = 'push_queue'"),
        )
        .await?;
        let breakdown = pgfan_breakdown(&topo, &m.samples).await?;
        Ok::<_, anyhow::Error>((m, breakdown))
    }
    .await;
    let stopped = topo.shutdown().await;
    drop(bouncer);
    let r = result?;
    stopped.context("stop pgfan's daemons")?;
    Ok(r)
}

async fn baseline_measure(n: usize) -> Result<Measured> {
    let b = Baseline::start(NODES, "").await?;
    measure(&Endpoints::baseline(&b), n, None)
        .await
        .with_context(|| format!("baseline stalled; logs:\n{}", b.log_tails()))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.size(500, 100);
    let (pgfan, breakdown) = pgfan_measure(n, false).await.context("pgfan")?;
    let (pooled, _) = pgfan_measure(n, true).await.context("pgfan, pooled")?;
    let base = baseline_measure(n).await.context("pgqd + python3-pgq")?;
    ctx.note(
        CASE,
        format!(
            "{n} samples (+{WARMUP} unmeasured warm-up events) at 10 events/s, one event per \
             transaction, n1..n{NODES} round-robin, one run; applied = node row's \
             clock_timestamp() - client send time, result = job-done NOTIFY arrival - send \
             time. pgfan defaults: ticker poll_period 10 ms and ticker_period 1 s, pipeline \
             queues ticker_max_lag 0 (so their inserts wake the ticker at commit), \
             relay/reducer/node wake on the ticker's NOTIFY with a \
             1 s polling fallback, node workers 4. Baseline: pgqd defaults (ticker_period \
             1 s; queues ticker_max_count 500, ticker_max_lag 3 s, ticker_idle_period 60 s), \
             python3-pgq consumers with defaults (loop_delay 1 s)."
        ),
    );
    ctx.note(
        CASE,
        format!("pgfan median timeline after the send, ms: {breakdown}"),
    );
    let mut rows = Vec::new();
    for (what, p, goal) in [
        ("insert -> applied on node", 0.5, Some(15.0)),
        ("insert -> applied on node", 0.95, None),
        ("insert -> applied on node", 0.99, Some(60.0)),
        ("insert -> job result available", 0.5, None),
        ("insert -> job result available", 0.95, None),
        ("insert -> job result available", 0.99, None),
    ] {
        let (ours, theirs) = if what.ends_with("node") {
            (&pgfan.applied, &base.applied)
        } else {
            (&pgfan.result, &base.result)
        };
        let v = percentile(ours, p);
        let pct = (p * 100.0).round();
        let mut row = Row::versus(
            CASE,
            format!("{what}, p{pct}"),
            "ms",
            Better::Lower,
            vec![v],
            "pgqd + python3-pgq push/pull",
            &[percentile(theirs, p)],
        );
        if let Some(limit) = goal {
            row = row.goal(format!("p{pct} <= {limit} ms"), v <= limit);
        }
        rows.push(row);
    }
    for p in [0.5_f64, 0.99] {
        let pct = (p * 100.0).round();
        rows.push(Row::versus(
            CASE,
            format!(
                "insert -> applied, pooled ({}s poll), p{pct}",
                POOLED_POLL.as_secs()
            ),
            "ms",
            Better::Lower,
            vec![percentile(&pooled.applied, p)],
            "pgqd + python3-pgq push/pull",
            &[percentile(&base.applied, p)],
        ));
    }
    Ok(rows)
}
