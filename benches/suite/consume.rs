//! Case 3 (`consume`): how fast a consumer reads a backlog.
//!
//! One queue per run on pgfan's bundled core. Three consumers are registered before anything
//! is produced, so they read exactly the same backlog: pgfan's consumer framework and two
//! python3-pgq `pgq.Consumer`s (`pgq_lazy_fetch` 0 and 500). The backlog is N small events
//! (`id=<n>&name=some+short+name`, ~30 bytes) produced in chunks of [`PER_TICK`] events,
//! one transaction each, with `pgq.ticker(queue)` after every chunk: N / PER_TICK batches of
//! known, identical size for every consumer. Each consumer then reads the whole backlog
//! alone; the order rotates between runs so cache warmth favours none of them.
//!
//! The handlers do the same minimal work: count each event and add up the length of its
//! data. Both clocks start before the consumer connects and stop when the batch holding
//! the last event has committed its `finish_batch`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use pgfan::cluster::Cluster;
use pgfan::consumer::{self, BatchHandler, BatchRef, ConsumerOptions, HandlerError, RetryEvent};
use pgfan::pgq::Event;
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::report::{Better, Row};
use crate::rig::{self, Ctx};

const CASE: &str = "consume";
const DB: &str = "consume";
/// Events per tick, hence per batch.
const PER_TICK: usize = 10_000;
/// pgq_lazy_fetch values of the python baselines; the faster one is the reported baseline.
const PY_LAZY: [i32; 2] = [0, 500];
/// A run that takes longer than this has hung.
const DEADLINE: Duration = Duration::from_secs(1200);
/// Consumer that measures the server-side floor of reading the backlog.
const FLOOR: &str = "floor";

/// Counts events and their data bytes; asks the consumer to stop after the batch in which
/// it saw `target` events.
struct Count {
    events: u64,
    data_bytes: u64,
    batches: u64,
    target: u64,
    stop: watch::Sender<bool>,
}

impl BatchHandler for Count {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        for e in events {
            self.events += 1;
            self.data_bytes += e.data.as_ref().map_or(0, |d| d.len()) as u64;
        }
        Ok(Vec::new())
    }

    async fn batch_end<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
    ) -> Result<(), HandlerError> {
        self.batches += 1;
        if self.events >= self.target {
            // Honoured between batches, i.e. right after this batch commits.
            self.stop.send_replace(true);
        }
        Ok(())
    }
}

/// What one consumer's read of the backlog gave.
struct Read {
    events: u64,
    data_bytes: u64,
    batches: u64,
    seconds: f64,
    /// Including interpreter start and exit (python only).
    wall_seconds: Option<f64>,
}

impl Read {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Creates `queue`, registers `consumers` and produces `n` events, ticking after every
/// [`PER_TICK`]. Returns the total length of the events' data, for the handlers' check.
async fn backlog(c: &Client, queue: &str, consumers: &[String], n: usize) -> Result<u64> {
    c.execute("select pgq.create_queue($1)", &[&queue]).await?;
    for name in consumers {
        c.execute("select pgq.register_consumer($1, $2)", &[&queue, name])
            .await?;
    }
    let mut first = 1i64;
    while first <= n as i64 {
        let last = (first + PER_TICK as i64 - 1).min(n as i64);
        // One statement, so one transaction per chunk; data is short and distinct per event.
        c.query_one(
            "select count(pgq.insert_event($1, 'ev', 'id=' || i || '&name=some+short+name'))
               from generate_series($2::bigint, $3::bigint) i",
            &[&queue, &first, &last],
        )
        .await
        .context("produce a chunk")?;
        let tick: Option<i64> = c
            .query_one("select pgq.ticker($1)", &[&queue])
            .await?
            .get(0);
        ensure!(tick.is_some(), "ticker({queue}) did not tick after a chunk");
        first = last + 1;
    }
    let bytes: i64 = c
        .query_one(
            "select sum(length('id=' || i || '&name=some+short+name'))::int8
               from generate_series(1, $1::bigint) i",
            &[&(n as i64)],
        )
        .await?
        .get(0);
    Ok(bytes as u64)
}

/// pgfan's consumer framework with its default options.
async fn read_pgfan(conninfo: &str, queue: &str, n: usize) -> Result<(Read, ConsumerOptions)> {
    let opts = ConsumerOptions::new(conninfo, queue, "pgfan");
    let (stop_tx, stop) = watch::channel(false);
    let mut handler = Count {
        events: 0,
        data_bytes: 0,
        batches: 0,
        target: n as u64,
        stop: stop_tx,
    };
    let start = Instant::now();
    tokio::time::timeout(DEADLINE, consumer::run(&opts, &mut handler, stop))
        .await
        .context("pgfan consumer timed out")??;
    let seconds = start.elapsed().as_secs_f64();
    Ok((
        Read {
            events: handler.events,
            data_bytes: handler.data_bytes,
            batches: handler.batches,
            seconds,
            wall_seconds: None,
        },
        opts,
    ))
}

/// A python3-pgq Consumer (consume_backlog.py) with `pgq_lazy_fetch = lazy`.
async fn read_python(
    cluster: &Cluster,
    queue: &str,
    consumer: &str,
    lazy: i32,
    n: usize,
) -> Result<Read> {
    let dir = cluster.dir();
    let ini = dir.join(format!("{consumer}.ini"));
    let result = dir.join(format!("{consumer}.json"));
    let log = dir.join(format!("{consumer}.log"));
    let _ = std::fs::remove_file(&result);
    std::fs::write(
        &ini,
        format!(
            "[consume_backlog]\njob_name = {consumer}\ndb = {conn}\nqueue_name = {queue}\n\
             consumer_name = {consumer}\npgq_lazy_fetch = {lazy}\nloop_delay = 0.1\n\
             logfile = {log}\nexpect_events = {n}\nresult_file = {result}\ndeadline = {deadline}\n",
            conn = cluster.conninfo(DB),
            log = dir.join(format!("{consumer}.pylog")).display(),
            result = result.display(),
            deadline = DEADLINE.as_secs(),
        ),
    )?;
    let ini = ini
        .to_str()
        .context("non-UTF-8 cluster directory")?
        .to_string();
    let start = Instant::now();
    let mut child = rig::spawn_python("consume_backlog.py", &[&ini], &log)?;
    // The script ends itself after the backlog or at its deadline (SIGALRM), so waiting
    // for its exit cannot hang.
    let status = tokio::task::block_in_place(|| child.0.wait())?;
    let wall = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "consume_backlog.py ({consumer}) exited with {status}; its output:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&result).with_context(|| format!("read {}", result.display()))?,
    )?;
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("no {k} in {}", result.display()))
    };
    Ok(Read {
        events: field("events")? as u64,
        data_bytes: field("data_bytes")? as u64,
        batches: field("batches")? as u64,
        seconds: field("seconds")?,
        wall_seconds: Some(wall),
    })
}

/// The server's share of reading the backlog: every batch opened, its events read by the
/// batch query with count/sum on the server (nothing sent to a client) and finished, on one
/// session. No consumer can read faster than this, whatever its language.
async fn read_floor(c: &Client, queue: &str, n: usize) -> Result<Read> {
    let start = Instant::now();
    let (mut events, mut data_bytes, mut batches) = (0u64, 0u64, 0u64);
    while events < n as u64 {
        c.batch_execute("begin").await?;
        let batch: Option<i64> = c
            .query_one("select pgq.next_batch($1, $2)", &[&queue, &FLOOR])
            .await?
            .get(0);
        let batch = batch.context("floor consumer: no batch before the end of the backlog")?;
        let sql: String = c
            .query_one("select pgq.batch_event_sql($1)", &[&batch])
            .await?
            .get(0);
        let row = c
            .query_one(
                &format!("select count(*), coalesce(sum(length(ev_data)), 0)::int8 from ({sql}) e"),
                &[],
            )
            .await?;
        c.query_one("select pgq.finish_batch($1)", &[&batch])
            .await?;
        c.batch_execute("commit").await?;
        events += row.get::<_, i64>(0) as u64;
        data_bytes += row.get::<_, i64>(1) as u64;
        batches += 1;
    }
    Ok(Read {
        events,
        data_bytes,
        batches,
        seconds: start.elapsed().as_secs_f64(),
        wall_seconds: None,
    })
}

/// Every consumer must have read exactly the backlog.
fn check(who: &str, r: &Read, n: usize, bytes: u64) -> Result<()> {
    ensure!(
        r.events == n as u64 && r.data_bytes == bytes,
        "{who} read {} events with {} data bytes, expected {n} with {bytes}",
        r.events,
        r.data_bytes
    );
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = ctx.size(1_000_000, 100_000);
    let cluster = rig::cluster().await?;
    let admin = rig::bundled_db(&cluster, DB).await?;
    let conninfo = cluster.conninfo(DB);
    let py_names: Vec<String> = PY_LAZY.iter().map(|l| format!("py_lazy{l}")).collect();
    let mut consumers = vec!["pgfan".to_string()];
    consumers.extend(py_names.iter().cloned());
    consumers.push(FLOOR.to_string());
    let mut floor_rates = Vec::new();

    let mut pgfan_rates = Vec::new();
    let mut py_rates = vec![Vec::new(); PY_LAZY.len()];
    let mut py_wall = vec![Vec::new(); PY_LAZY.len()];
    let mut opts = None;
    let mut batches = 0;
    for run in 0..ctx.runs {
        let queue = format!("consume_{run}");
        let t = Instant::now();
        let bytes = backlog(&admin, &queue, &consumers, n).await?;
        let produced = t.elapsed();
        // Rotate who reads first; 0 is pgfan, 1.. the python variants, last the floor.
        for k in 0..consumers.len() {
            let who = (run + k) % consumers.len();
            if who == consumers.len() - 1 {
                let r = read_floor(&admin, &queue, n).await?;
                check("floor", &r, n, bytes)?;
                println!(
                    "  run {run}: server floor {:.0} events/s ({:.2} s)",
                    r.rate(),
                    r.seconds
                );
                floor_rates.push(r.rate());
            } else if who == 0 {
                let (r, o) = read_pgfan(&conninfo, &queue, n).await?;
                check("pgfan", &r, n, bytes)?;
                batches = r.batches;
                println!(
                    "  run {run}: pgfan {:.0} events/s ({:.2} s, {} batches)",
                    r.rate(),
                    r.seconds,
                    r.batches
                );
                pgfan_rates.push(r.rate());
                opts = Some(o);
            } else {
                let i = who - 1;
                let r = read_python(&cluster, &queue, &py_names[i], PY_LAZY[i], n).await?;
                check(&py_names[i], &r, n, bytes)?;
                let wall = r.wall_seconds.unwrap_or(f64::NAN);
                println!(
                    "  run {run}: python lazy_fetch={} {:.0} events/s ({:.2} s; {:.2} s with interpreter start, {} batches)",
                    PY_LAZY[i],
                    r.rate(),
                    r.seconds,
                    wall,
                    r.batches
                );
                py_rates[i].push(r.rate());
                py_wall[i].push(n as f64 / wall);
            }
        }
        admin
            .execute("select pgq.drop_queue($1, true)", &[&queue])
            .await?;
        println!(
            "  run {run}: backlog of {n} produced in {:.1} s",
            produced.as_secs_f64()
        );
    }

    let opts = opts.context("no pgfan run")?;
    ctx.note(
        CASE,
        format!(
            "backlog: {n} events of ~30 bytes on the bundled core, {PER_TICK} per tick (ticks by pgq.ticker(queue) after each one-transaction chunk), {batches} batches; every consumer registered before producing, reads alone, order rotated per run; handler counts events and sums len(ev_data)"
        ),
    );
    ctx.note(
        CASE,
        format!(
            "pgfan: consumer::run with ConsumerOptions defaults (lazy_fetch = {} events per cursor FETCH, no min_count/min_interval/min_lag); timed from before connect to the return after the last batch's commit",
            opts.lazy_fetch
        ),
    );
    let medians: Vec<f64> = py_rates.iter().map(|r| crate::report::median(r)).collect();
    let best = (0..PY_LAZY.len())
        .max_by(|&a, &b| medians[a].total_cmp(&medians[b]))
        .context("no python variant")?;
    let variants: Vec<String> = (0..PY_LAZY.len())
        .map(|i| {
            format!(
                "pgq_lazy_fetch={} {:.0} events/s ({:.0} with interpreter start and exit)",
                PY_LAZY[i],
                medians[i],
                crate::report::median(&py_wall[i])
            )
        })
        .collect();
    ctx.note(
        CASE,
        format!(
            "python3-pgq pgq.Consumer (consume_backlog.py), medians: {}; baseline = the faster, timed in-process from the first work() (before it connects) to the return of the work() that saw the last event, which is the same span as pgfan's",
            variants.join(", ")
        ),
    );
    let floor = crate::report::median(&floor_rates);
    ctx.note(
        CASE,
        format!(
            "server floor (batch query run with count/sum on the server, nothing sent; next_batch and finish_batch included): {floor:.0} events/s; a client costing nothing would read {:.1}x as fast as the python baseline",
            floor / medians[best]
        ),
    );
    Ok(vec![
        Row::versus(
            CASE,
            format!("read {n}-event backlog, {PER_TICK}-event batches"),
            "events/s",
            Better::Higher,
            pgfan_rates,
            format!("python3-pgq Consumer, lazy_fetch={}", PY_LAZY[best]),
            &py_rates[best],
        )
        .goal_ratio(10.0),
        Row::versus(
            CASE,
            "same backlog, server-side floor of any consumer",
            "events/s",
            Better::Higher,
            floor_rates,
            format!("python3-pgq Consumer, lazy_fetch={}", PY_LAZY[best]),
            &py_rates[best],
        ),
    ])
}
