//! Case 10 (`fleet`): what an idle fleet of 1,000 node daemons costs the master in direct
//! mode (issue 14): master backends, CPU, transactions/s and statements/s.
//!
//! A master cluster (benchmark settings, but `max_connections` 1200 and pg_stat_statements
//! preloaded, top-level statements) with 1,000 nodes registered by `pgfan.node_add`, one
//! statement each (timed). n1..n20 are real: a database each, 10 on each of two node
//! clusters, and a node daemon each, a process of the release binary `cargo bench` builds
//! with the suite (`CARGO_BIN_EXE_pgfan`), from a TOML file with pgfan's defaults, like the
//! ticker, relay and reducer. No connection string sets an `application_name`: each daemon
//! names its sessions itself (`pgfan node n7`, `pgfan ticker`, ...).
//!
//! The other 980 are simulated in this process, making the master calls of an idle node
//! daemon through the same doors, with pgfan's own code where it can be shared: per node
//! ONE master session (a `db::SharedSession` as the bench's superuser, which the node doors
//! accept, named `pgfan node <name>`) shared by
//! - the claim: pgfan's consumer framework itself (`consumer::run` through the node doors,
//!   the daemon's default `claim_poll_period` as its poll period): it LISTENs on
//!   `pgfan_tick`, registers with `pgfan.node_register`, looks for a batch
//!   (`pgfan.node_next_batch`) when its queue ticks or the period passes, and reads and
//!   finishes the empty batches of idle ticks in that one transaction, its handler doing
//!   nothing for them, as the daemon's claim does;
//! - the heartbeat: `pgfan.node_heartbeat(name, 4, version)` at start, then every
//!   `heartbeat_period` (the daemon's default), each node's second beat at its own point of
//!   the first period (golden-ratio spread), so that the beats do not come in step.
//!
//! A second phase, pooled: the same fleet through PgBouncer in transaction mode (Debian's,
//! `default_pool_size` 50), the daemons with `pooled = true`, a 20 s `claim_poll_period`,
//! one shared login bound to no node and each node's key (`pgfan.node_set_pool_key`); the
//! simulated ones without LISTEN and one heartbeat at start, as a pooled daemon (its looks
//! refresh the heartbeat). The window starts after every node has beaten and one more poll
//! period; it reports PgBouncer's server connections in use (the backends named `pgfan
//! pooled node`), transactions/s and CPU. Its goal is on the fleet's own transactions,
//! counted in pg_stat_statements under the fleet's one login (each look's `START
//! TRANSACTION`, each keyed door call made on its own) over the window, three whole poll
//! periods: a node's looks then count three each, whatever its phase. The window's total
//! minus the base window's is reported beside it: that difference also carries the two
//! windows' own noise (the ticker's, the reducer's), about as large as the 1 % between a
//! fleet at its budget (50/s) and over it.
//!
//! An idle daemon asks about cancellations and ships results only while it has tasks: the
//! simulator does neither. `--quick`: 200 nodes (180 simulated).
//!
//! After a warm-up job to the 20 real nodes (`pgfan.submit` to their comma list:
//! `run_on_all` would wait for simulated nodes that never answer), the master is vacuumed
//! and analyzed and every queue's ticks are backdated to a steady idle state (the last tick
//! 0-60 s ago at a random point, earlier ones 60 s apart), so that new queues do not tick in
//! their first minutes' back-off (1, 2, 4, ... s apart) and the idle ticks (one a minute per
//! queue) do not come in step. Then a settling minute (every claim gets its first idle tick
//! and the fleet its steady cycle) and one idle window of 60 s (quick: 5 s and 10 s):
//! - transactions/s: the master database's `xact_commit + xact_rollback` difference
//!   (pg_stat_database) minus the measuring session's own transactions (backends flush
//!   their counts up to ~1 s late, idle ones ~10 s: an edge error);
//! - statements/s: top-level calls in pg_stat_statements (reset at the start), the
//!   measuring session's left out;
//! - CPU: utime+stime of the postmaster and all its children (/proc) in % of one core, and
//!   the part of it in the node sessions' backends;
//! - backends: client backends in pg_stat_activity sampled every 5 s (quick: 2 s), the
//!   most; the most sessions named for one node daemon, over the 20 real ones and over the
//!   simulated ones; the node sessions' backends' memory (Pss) at the end.
//!
//! Before the fleet starts, one window of the master with its own daemons alone (ticker,
//! relay, reducer; the 1,000 queues registered, no node daemon; 30 s after a vacuum and
//! the backdating, quick: 5 s): the fleet's part of the master's transactions/s and CPU is
//! the fleet's window minus this one, as issue 14 measured an idle node daemon's cost
//! ("the master's commit rate with them running minus without them"). The goals are on
//! that part; the totals are reported beside it.
//!
//! One window: `--runs` does not apply. The simulator shares the machine (its CPU is in
//! the notes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pgfan::bouncer::Bouncer;
use pgfan::cluster::Cluster;
use pgfan::consumer::{self, BatchHandler, BatchRef, ConsumerOptions, HandlerError, RetryEvent};
use pgfan::db::SharedSession;
use pgfan::install::{self, Role};
use pgfan::pgq::Event;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Transaction};

use crate::parallel::pipeline;
use crate::report::{Better, Row};
use crate::rig::{self, cpu_ticks, Ctx, Proc};

const CASE: &str = "fleet";
/// Registered nodes (quick: 200).
const NODES: usize = 1000;
/// Nodes with a database and a daemon process.
const REAL: usize = 20;
/// Node clusters the real nodes' databases are spread over.
const NODE_CLUSTERS: usize = 2;
/// The master's settings on top of the benchmark ones: room for 1,000 node sessions, and
/// the statement counts.
const MASTER_SETTINGS: &[(&str, &str)] = &[
    ("max_connections", "1200"),
    ("shared_preload_libraries", "'pg_stat_statements'"),
    ("pg_stat_statements.track", "'top'"),
];
/// The node daemon's defaults: `claim_poll_period` and `heartbeat_period`.
fn periods() -> (Duration, Duration) {
    let d = pgfan::node::NodeConfig::new("n", "", "");
    (d.claim_poll_period, d.heartbeat_period)
}
/// Simulated nodes start this far apart (980 connections in ~20 s, not at once).
const SIM_START_GAP: Duration = Duration::from_millis(20);
/// A simulated node's first beat comes this long after its claim started, so that the
/// fleet's first beats do not all meet its first looks.
const FIRST_BEAT: Duration = Duration::from_secs(5);
const CPU_GOAL_PCT: f64 = 5.0;
/// Pooled mode: PgBouncer's server connections to the master (the goal's bound) and the
/// claim poll period the goal names.
const POOL_SIZE: u32 = 50;
const POOLED_POLL: Duration = Duration::from_secs(20);
/// Pooled mode: master transactions/s of the idle fleet of 1,000 (per node: 0.05/s).
const POOLED_TPS_GOAL: f64 = 50.0;
/// Pooled mode: the daemons' one login (bound to no node; each acts by its node's key)
/// and their sessions' one application_name.
const POOL_LOGIN: &str = "pgfan_fleet_pool";
const POOLED_NAME: &str = "pgfan pooled node";
/// Master transactions/s per idle node daemon (50/s for 1,000).
const TPS_PER_NODE_GOAL: f64 = 0.05;
const LIMIT: Duration = Duration::from_secs(60);
/// Simulated heartbeats that failed (and were tried again).
static BEAT_ERRORS: AtomicUsize = AtomicUsize::new(0);

/// The claim of an idle node daemon: its batches are the empty ones of its queue's idle
/// ticks, for which the daemon's claim handler does nothing (the framework reads and
/// finishes them).
struct IdleClaim;

impl BatchHandler for IdleClaim {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
        _events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        Ok(Vec::new())
    }
}

/// The simulated node daemons: a claim and a heartbeat task each, until stopped.
struct Simulator {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
    /// Each simulated node's master session (direct mode), and its connection string.
    sessions: Vec<(std::sync::Arc<SharedSession>, String)>,
}

/// A point of `period` for node `k`: the fractional parts of k × the golden ratio spread
/// evenly over [0, 1) in any prefix, so the nodes' beats are spread whatever their number.
fn phase(k: usize, period: Duration) -> Duration {
    let x = (k as f64 * 0.618_033_988_749_894_9).fract();
    period.mul_f64(x)
}

impl Simulator {
    /// Simulated daemons for `names` on the master at `master`: direct (LISTEN, the
    /// default poll period), or `pooled` with that poll period and no LISTEN.
    fn start(master: &str, names: &[String], pooled: Option<Duration>) -> Simulator {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut sessions = Vec::new();
        let (poll, heartbeat) = periods();
        let poll = pooled.unwrap_or(poll);
        for (i, name) in names.iter().enumerate() {
            // As the daemon names its session: pooled daemons share one name.
            let conninfo = match pooled {
                Some(_) => format!("{master} application_name='{POOLED_NAME}'"),
                None => format!("{master} application_name='pgfan node {name}'"),
            };
            let session = SharedSession::new("master");
            if pooled.is_none() {
                sessions.push((session.clone(), conninfo.clone()));
            }
            let start = SIM_START_GAP * i as u32;
            let queue = format!("pgfan_node_{name}");
            let mut opts = ConsumerOptions::new(conninfo.clone(), queue.clone(), queue);
            opts.poll_period = poll;
            opts.listen = pooled.is_none();
            opts.shared = Some(session.clone());
            opts.node = Some(name.clone());
            opts.node_key = pooled.map(|_| node_key(name));
            let mut handler = IdleClaim;
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                tokio::time::sleep(start).await;
                consumer::run(&opts, &mut handler, stop).await?;
                Ok(())
            });
            // Pooled, as the daemon: one beat at start, then the looks refresh it.
            let period = pooled.is_none().then_some(heartbeat);
            let when = (start + FIRST_BEAT, phase(i + 1, heartbeat), period);
            let key = pooled.map_or(String::new(), |_| node_key(name));
            let who = (conninfo, name.clone(), key);
            tasks.spawn(beat(session, who, when, stop_rx.clone()));
        }
        Simulator {
            stop,
            tasks,
            sessions,
        }
    }

    /// Makes every simulated session report its pending statistics now, and waits until
    /// they have; returns how many transactions that took (one per session).
    ///
    /// An idle backend counts the transactions it runs to read notifications (one per
    /// NOTIFY committed in its database, whatever the channel) but reports them only with
    /// its next statement that reads a table (a backend with nothing else pending does not
    /// report its transaction counts): with a look every 10 minutes, `pg_stat_database`
    /// took in during a window the reads of NOTIFYs from long before it (the warm-up
    /// job's, by the thousand), which made the idle fleet's transactions/s look five times
    /// what its backends committed (a perf uprobe on `AtEOXact_PgStat` counted the
    /// commits). Flushed at both ends, the window's count is the window's transactions.
    async fn flush(&self) -> Result<i64> {
        let flushes = self.sessions.iter().map(|(session, conninfo)| async move {
            session
                .lock(conninfo)
                .await?
                // Reading a table too: a backend whose only pending statistics are its
                // transaction counts does not report them, forced or not.
                .query_typed(
                    "select pg_catalog.pg_stat_force_next_flush()
                       from (select from pg_catalog.pg_database limit 1) t",
                    &[],
                )
                .await
        });
        let done = futures_util::future::join_all(flushes).await;
        let n = done.iter().filter(|r| r.is_ok()).count() as i64;
        // A backend reports at most once a second: the forced report comes within that.
        // (Pooled: no session of its own to flush, and the window stays whole periods.)
        if !self.sessions.is_empty() {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Ok(n)
    }

    /// Fails if a simulated node's task has ended.
    fn check(&mut self) -> Result<()> {
        match self.tasks.try_join_next() {
            Some(Ok(Err(e))) => Err(e.context("a simulated node failed")),
            Some(_) => bail!("a simulated node's task ended"),
            None => Ok(()),
        }
    }

    async fn stop(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        let all = async {
            while let Some(r) = self.tasks.join_next().await {
                r??;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .context("simulated nodes did not stop within 30 s")?
    }
}

/// A simulated node's heartbeat on its shared master session: after `first`, again
/// `second` later, then every `period` (None: only the first), until stopped.
async fn beat(
    session: std::sync::Arc<SharedSession>,
    (conninfo, node, key): (String, String, String),
    (first, second, period): (Duration, Duration, Option<Duration>),
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let (mut next, mut gap) = (tokio::time::Instant::now() + first, second);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return Ok(()),
        }
        // Unnamed, as the daemon's (a pooler may run a named statement's parse and
        // execution on different server connections).
        let sql = pgfan::node::door::keyed("pgfan.node_heartbeat($1, $2, $3)", 4);
        let args: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 4] = [
            (&node, Type::TEXT),
            (&4i32, Type::INT4),
            (&pgfan::VERSION, Type::TEXT),
            (&key, Type::TEXT),
        ];
        let done = async {
            session
                .lock(&conninfo)
                .await?
                .query_typed(&sql, &args)
                .await
        };
        match done.await {
            Ok(_) => match period {
                Some(period) => (next, gap) = (next + gap, period),
                None => {
                    let _ = stop.changed().await;
                    return Ok(());
                }
            },
            // As a daemon does, it tries again (here a second later); counted in the notes.
            Err(e) => {
                if BEAT_ERRORS.fetch_add(1, Ordering::Relaxed) == 0 {
                    println!(
                        "  first failed simulated heartbeat ({node}): {}",
                        pgfan::db::describe(&e)
                    );
                }
                next = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
    }
}

/// The parent pid of a process, from /proc/<pid>/stat (field 4, after the command name).
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU ticks of `postmaster` and of every process it started (the whole cluster).
fn cluster_ticks(postmaster: i32) -> HashMap<i32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == postmaster || parent_pid(pid) == Some(postmaster) {
            if let Ok(t) = cpu_ticks(pid) {
                out.insert(pid, t);
            }
        }
    }
    out
}

/// Ticks used between two readings: processes gone by the end are lost (an idle fleet's
/// backends stay), processes born in between count whole.
fn ticks_between(
    before: &HashMap<i32, u64>,
    after: &HashMap<i32, u64>,
    only: Option<&[i32]>,
) -> u64 {
    after
        .iter()
        .filter(|(p, _)| only.is_none_or(|o| o.contains(p)))
        .map(|(p, t)| t.saturating_sub(before.get(p).copied().unwrap_or(0)))
        .sum()
}

/// Proportional set size of a process in kB (/proc/<pid>/smaps_rollup).
fn pss_kb(pid: i32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The measuring session on the master; counts its own transactions (each statement is
/// one), which are taken off the master's count.
struct Probe {
    session: pgfan::db::Session,
    own: i64,
}

/// Client backends on the master at one moment.
#[derive(Default)]
struct Backends {
    total: i64,
    /// Sessions named `pgfan node <name>`, per name.
    nodes: HashMap<String, i64>,
    /// Other sessions per application_name.
    others: HashMap<String, i64>,
}

impl Probe {
    async fn query(&mut self, sql: &str) -> Result<Vec<tokio_postgres::Row>> {
        self.own += 1;
        Ok(self.session.client.query(sql, &[]).await?)
    }

    async fn xacts(&mut self) -> Result<i64> {
        let rows = self
            .query(
                "select (xact_commit + xact_rollback)::int8 from pg_stat_database
                  where datname = current_database()",
            )
            .await?;
        Ok(rows.first().context("no pg_stat_database row")?.get(0))
    }

    async fn backends(&mut self) -> Result<Backends> {
        let rows = self
            .query(
                "select application_name, count(*) from pg_stat_activity
                  where backend_type = 'client backend' and pid <> pg_backend_pid()
                  group by 1",
            )
            .await?;
        let mut b = Backends::default();
        for r in rows {
            let (app, n): (String, i64) = (r.get(0), r.get(1));
            b.total += n;
            match app.strip_prefix("pgfan node ") {
                Some(node) => b.nodes.insert(node.to_string(), n),
                None => b.others.insert(app, n),
            };
        }
        Ok(b)
    }

    /// Notifications received on the channels it listens on since the last call.
    fn notifications(&mut self) -> usize {
        let mut n = 0;
        while let Ok(m) = self.session.messages.try_recv() {
            n += usize::from(matches!(m, AsyncMessage::Notification(_)));
        }
        n
    }
}

/// What the idle window measured.
struct Window {
    secs: f64,
    nodes: usize,
    tps: f64,
    statements: f64,
    /// Transactions of the pooled login (pooled mode), counted by statement.
    pool_tps: f64,
    /// `pgfan_tick` notifications a listener received per second.
    tick_notifications: f64,
    /// The most frequent statements: calls/s and the start of their text.
    top: Vec<(f64, String)>,
    cpu_pct: f64,
    node_sessions_cpu_pct: f64,
    /// Most client backends at a sample; its breakdown.
    backends_max: i64,
    /// Most sessions named for node daemons at a sample (pooled: PgBouncer's server
    /// connections, which carry their last client's application_name).
    node_sessions_max: i64,
    backends_last: Backends,
    /// Most sessions of one node daemon, over the real nodes and over the simulated ones.
    per_real_max: i64,
    per_sim_max: i64,
    /// Sum and mean of the node sessions' backends' Pss, MB.
    node_pss_total_mb: f64,
    /// CPU of each daemon process, and of the bench process, % of a core.
    daemon_cpu: Vec<(String, f64)>,
    bench_cpu_pct: f64,
}

/// The most sessions any of `names` holds.
fn most_sessions(b: &Backends, names: impl Iterator<Item = String>) -> i64 {
    names
        .map(|n| b.nodes.get(&n).copied().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

async fn window(
    ctx: &Ctx,
    probe: &mut Probe,
    daemons: &mut [Proc],
    mut sim: Option<&mut Simulator>,
    nodes: usize,
) -> Result<Window> {
    let len = Duration::from_secs(ctx.size(60, 10) as u64);
    let every = Duration::from_secs(ctx.size(5, 2) as u64);
    // SAFETY: sysconf only reads a system constant.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let postmaster: i32 = probe.query("select pg_backend_pid()").await?[0].get(0);
    let postmaster = parent_pid(postmaster).context("the postmaster's pid")?;
    let node_pids = probe
        .query("select pid from pg_stat_activity where application_name like 'pgfan node %'")
        .await?;
    let node_pids: Vec<i32> = node_pids.iter().map(|r| r.get(0)).collect();
    probe
        .query(&format!("listen {}", pgfan::ticker::TICK_CHANNEL))
        .await?;
    probe.notifications();
    if let Some(sim) = sim.as_ref() {
        sim.flush().await?;
    }
    // Statements are counted over the window itself (not over the flush before it).
    probe.query("select pg_stat_statements_reset()").await?;
    probe.own = 0;
    let x0 = probe.xacts().await?;
    let cpu0 = cluster_ticks(postmaster);
    let daemons0: Vec<u64> = daemons
        .iter()
        .map(|d| cpu_ticks(d.pid()))
        .collect::<Result<_>>()?;
    let bench0 = rig::own_cpu_secs();
    let t0 = Instant::now();
    let (mut per_real_max, mut per_sim_max, mut backends_max) = (0, 0, 0);
    let mut node_sessions_max = 0;
    let mut last = Backends::default();
    while t0.elapsed() < len {
        tokio::time::sleep(every.min(len.saturating_sub(t0.elapsed()))).await;
        last = probe.backends().await?;
        backends_max = backends_max.max(last.total);
        let pooled = last.others.get(POOLED_NAME).copied().unwrap_or(0);
        node_sessions_max = node_sessions_max.max(last.nodes.values().sum::<i64>() + pooled);
        per_real_max = per_real_max.max(most_sessions(&last, (1..=REAL).map(|k| format!("n{k}"))));
        per_sim_max = per_sim_max.max(most_sessions(
            &last,
            (REAL + 1..=nodes).map(|k| format!("n{k}")),
        ));
    }
    let cpu1 = cluster_ticks(postmaster);
    let daemons1: Vec<u64> = daemons
        .iter()
        .map(|d| cpu_ticks(d.pid()))
        .collect::<Result<_>>()?;
    let bench1 = rig::own_cpu_secs();
    let cpu_secs = t0.elapsed().as_secs_f64();
    let flushes = match sim.as_ref() {
        Some(sim) => sim.flush().await?,
        None => 0,
    };
    let x1 = probe.xacts().await?;
    let secs = t0.elapsed().as_secs_f64();
    let ticks = probe.notifications();
    // The reads of pg_stat_database: the first one's commit is in the difference, the
    // last one's is not.
    let own = probe.own - 1;
    let rows = probe
        .query(
            "select calls::float8, regexp_replace(left(query, 70), '\\s+', ' ', 'g')
               from pg_stat_statements
              where toplevel and dbid = (select oid from pg_database where datname = current_database())
                and query !~ 'pg_stat_(statements|activity|database|force_next_flush)|pg_backend_pid'
              order by calls desc",
        )
        .await?;
    let calls: f64 = rows.iter().map(|r| r.get::<_, f64>(0)).sum();
    // The pooled fleet's own transactions, one by one: its looks (explicit transactions)
    // and its keyed door calls made on their own (docs: pgfan::node::door::keyed).
    let pool_xacts: f64 = probe
        .query(&format!(
            "select coalesce(sum(calls), 0)::float8 from pg_stat_statements
              where toplevel and userid = (select oid from pg_roles where rolname = '{POOL_LOGIN}')
                and (query = 'START TRANSACTION' or query ~ 'from \\(select set_config\\(')"
        ))
        .await?[0]
        .get(0);
    let top = rows
        .iter()
        .take(10)
        .map(|r| (r.get::<_, f64>(0) / secs, r.get::<_, String>(1)))
        .collect();
    for d in daemons.iter_mut() {
        d.alive()?;
    }
    if let Some(sim) = sim.as_mut() {
        sim.check()?;
    }
    let pct = |ticks: u64| ticks as f64 / hz / cpu_secs * 100.0;
    let daemon_cpu = daemons.iter().zip(daemons1.iter().zip(&daemons0));
    let daemon_cpu = daemon_cpu
        .map(|(d, (b, a))| (d.name.clone(), pct(b - a)))
        .collect();
    let node_pss: f64 = node_pids.iter().filter_map(|&p| pss_kb(p)).sum();
    Ok(Window {
        secs,
        nodes,
        tps: (x1 - x0 - own - flushes) as f64 / secs,
        statements: calls / secs,
        pool_tps: pool_xacts / secs,
        tick_notifications: ticks as f64 / secs,
        top,
        cpu_pct: pct(ticks_between(&cpu0, &cpu1, None)),
        node_sessions_cpu_pct: pct(ticks_between(&cpu0, &cpu1, Some(&node_pids))),
        backends_max,
        node_sessions_max,
        backends_last: last,
        per_real_max,
        per_sim_max,
        node_pss_total_mb: node_pss / 1024.0,
        daemon_cpu,
        bench_cpu_pct: (bench1 - bench0) / cpu_secs * 100.0,
    })
}

/// Registers n1..n`nodes`, one `node_add` each; returns each call's time in ms.
async fn register(m: &Client, nodes: usize) -> Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(nodes);
    for k in 1..=nodes {
        let t = Instant::now();
        m.query_one("select pgfan.node_add($1)", &[&format!("n{k}")])
            .await
            .with_context(|| format!("node_add n{k}"))?;
        ms.push(rig::ms(t.elapsed()));
    }
    Ok(ms)
}

/// The real nodes' databases, `REAL / NODE_CLUSTERS` per cluster; their conninfos.
async fn node_databases(clusters: &[Cluster]) -> Result<Vec<String>> {
    let mut conninfos = Vec::new();
    for k in 1..=REAL {
        let cluster = &clusters[(k - 1) * clusters.len() / REAL];
        let db = format!("n{k}");
        rig::create_db(cluster, &db).await?;
        pipeline::install_node(cluster, &db).await?;
        conninfos.push(cluster.conninfo(&db));
    }
    Ok(conninfos)
}

/// The daemons' configuration files: pgfan's defaults (pooled: the node daemons reach the
/// master at `node_master` with `pooled = true` and a [`POOLED_POLL`] claim poll); no
/// application_name set, so each daemon names its sessions itself.
fn configs(
    master: &Cluster,
    node_master: &str,
    pooled: bool,
    node_dbs: &[String],
) -> Vec<(String, &'static str, String)> {
    let m = master.conninfo("postgres");
    let mode = match pooled {
        true => format!(
            "pooled = true\nclaim_poll_period = \"{}s\"\npool_key = \"{{key}}\"\n",
            POOLED_POLL.as_secs()
        ),
        false => String::new(),
    };
    let mut v = vec![
        (
            "ticker".to_string(),
            "ticker",
            format!(
                "[ticker]\nbase_connstr = \"host=127.0.0.1 port={} user=postgres\"\ndatabase_list = [\"postgres\"]\n",
                master.port()
            ),
        ),
        ("relay".into(), "relay", format!("[relay]\nmaster = \"{m}\"\n")),
        ("reducer".into(), "reducer", format!("[reducer]\nmaster = \"{m}\"\n")),
    ];
    for (i, db) in node_dbs.iter().enumerate() {
        let name = format!("n{}", i + 1);
        v.push((
            format!("node_{name}"),
            "node",
            format!(
                "[node]\nname = \"{name}\"\nmaster = \"{node_master}\"\ndb = \"{db}\"\n{}",
                mode.replace("{key}", &node_key(&name))
            ),
        ));
    }
    v
}

/// Moves every queue's ticks back so that it is in PgQ's steady idle state at its own
/// point of the minute: the last tick 0-60 s ago, the ones before it 60 s apart.
async fn backdate_ticks(m: &Client) -> Result<()> {
    m.execute(
        "with q as materialized (select queue_id, random() * interval '60 s' as back from pgq.queue),
              r as (select t.tick_queue, t.tick_id, q.back,
                           row_number() over (partition by t.tick_queue order by t.tick_id desc) as k
                      from pgq.tick t join q on q.queue_id = t.tick_queue)
         update pgq.tick t set tick_time = now() - r.back - (r.k - 1) * interval '60 s'
           from r where t.tick_queue = r.tick_queue and t.tick_id = r.tick_id",
        &[],
    )
    .await
    .context("backdate ticks")?;
    Ok(())
}

/// Waits until every node has sent a heartbeat since `since` (epoch seconds on the
/// master's clock), failing early if a simulated node's task ended.
async fn wait_started(m: &Client, sim: &mut Simulator, since: f64) -> Result<()> {
    let deadline = Instant::now() + 2 * LIMIT;
    loop {
        sim.check()?;
        let sql = "select count(*) from pgfan.node
                    where heartbeat is null or heartbeat < to_timestamp($1)";
        let silent: i64 = m.query_one(sql, &[&since]).await?.get(0);
        if silent == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{silent} node daemon(s) sent no heartbeat within {:?}",
                2 * LIMIT
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    // The release binary cargo builds with the suite (benches get every binary built).
    let exe = rig::pgfan_exe()?;
    if !exe.is_file() {
        bail!(
            "{} is missing; run the case through cargo bench",
            exe.display()
        );
    }
    let (master, a, b) = tokio::try_join!(
        pipeline::cluster_with(MASTER_SETTINGS),
        rig::cluster(),
        rig::cluster()
    )?;
    let clusters = [a, b];
    debug_assert_eq!(clusters.len(), NODE_CLUSTERS);
    let outcome = measure(ctx, &exe, &master, &clusters).await;
    drop((master, clusters));
    outcome
}

async fn measure(
    ctx: &Ctx,
    exe: &Path,
    master: &Cluster,
    clusters: &[Cluster],
) -> Result<Vec<Row>> {
    let nodes = ctx.size(NODES, 200);
    let mut m = rig::connect(&master.conninfo("postgres")).await?;
    install::install(&mut m, Role::Master).await?;
    m.batch_execute("create extension pg_stat_statements")
        .await?;
    let node_dbs = node_databases(clusters).await?;
    let add_ms = register(&m, nodes).await?;
    println!(
        "  registered {nodes} nodes in {:.1} s",
        add_ms.iter().sum::<f64>() / 1000.0
    );
    let base = base_phase(ctx, exe, master, &m).await?;
    let direct = idle_phase(ctx, exe, master, &m, &node_dbs, None).await?;
    let bouncer = Bouncer::start_for(master, POOL_SIZE, &[POOL_LOGIN])?;
    let pooled = idle_phase(ctx, exe, master, &m, &node_dbs, Some(&bouncer)).await?;
    drop(bouncer);
    notes(ctx, &direct, &add_ms);
    base_notes(ctx, &base);
    pooled_notes(ctx, &pooled);
    let mut rows = rows(&direct, &base, &add_ms);
    rows.extend(pooled_rows(&pooled, &base));
    Ok(rows)
}

/// The master with its own daemons (ticker, relay, reducer) and the registered nodes'
/// queues, but no node daemon: what the master costs without the fleet, so that the
/// fleet's own cost is the difference, as issue 14 measured it ("the master's commit
/// rate with them running minus without them").
async fn base_phase(ctx: &Ctx, exe: &Path, master: &Cluster, m: &Client) -> Result<Window> {
    let dir = master.dir().join("fleet-base");
    std::fs::create_dir_all(&dir)?;
    let mut daemons = Vec::new();
    let conninfo = master.conninfo("postgres");
    for (name, role, cfg) in configs(master, &conninfo, false, &[]) {
        daemons.push(Proc::spawn(exe, &dir, &name, role, &cfg)?);
    }
    let outcome = async {
        m.batch_execute("vacuum analyze").await?;
        backdate_ticks(m).await?;
        tokio::time::sleep(Duration::from_secs(ctx.size(30, 5) as u64)).await;
        let mut probe = Probe {
            session: pgfan::db::connect(&conninfo).await?,
            own: 0,
        };
        let nodes = m
            .query_one("select count(*)::int8 from pgfan.node", &[])
            .await?
            .get::<_, i64>(0) as usize;
        window(ctx, &mut probe, &mut daemons, None, nodes).await
    }
    .await;
    for d in daemons {
        d.stop().await?;
    }
    outcome
}

fn base_notes(ctx: &Ctx, w: &Window) {
    ctx.note(
        CASE,
        format!(
            "without the fleet (ticker, relay and reducer, the {} queues, no node daemon), \
             one idle window of {:.1} s: master {:.1} transactions/s, {:.1} statements/s, \
             CPU {:.2} % of a core; the fleet's part in the rows is the fleet's window minus \
             this one",
            w.nodes, w.secs, w.tps, w.statements, w.cpu_pct
        ),
    );
}

/// One idle window of the fleet: direct, or `pooled` through that PgBouncer. Starts the
/// daemons and the simulator, lets the fleet settle, measures, stops them.
async fn idle_phase(
    ctx: &Ctx,
    exe: &Path,
    master: &Cluster,
    m: &Client,
    node_dbs: &[String],
    pooled: Option<&Bouncer>,
) -> Result<Window> {
    let nodes = m
        .query_one("select count(*)::int8 from pgfan.node", &[])
        .await?
        .get::<_, i64>(0) as usize;
    let dir = master.dir().join(if pooled.is_some() {
        "fleet-pooled"
    } else {
        "fleet"
    });
    std::fs::create_dir_all(&dir)?;
    let since: f64 = m
        .query_one("select extract(epoch from now())::float8", &[])
        .await?
        .get(0);
    let node_master = match pooled {
        Some(b) => {
            pool_login(m).await?;
            format!("{} user={POOL_LOGIN}", b.conninfo("postgres"))
        }
        None => master.conninfo("postgres"),
    };
    let mut daemons = Vec::new();
    for (name, role, cfg) in configs(master, &node_master, pooled.is_some(), node_dbs) {
        daemons.push(Proc::spawn(exe, &dir, &name, role, &cfg)?);
    }
    let sim_names: Vec<String> = (REAL + 1..=nodes).map(|k| format!("n{k}")).collect();
    let poll = pooled.map(|_| POOLED_POLL);
    let mut sim = Simulator::start(&node_master, &sim_names, poll);
    let outcome = async {
        wait_started(m, &mut sim, since).await?;
        match pooled {
            // Every node has looked once and beaten; one more poll period makes the cycle.
            Some(_) => tokio::time::sleep(POOLED_POLL).await,
            None => settle_direct(ctx, master, m, nodes).await?,
        }
        let mut probe = Probe {
            session: pgfan::db::connect(&master.conninfo("postgres")).await?,
            own: 0,
        };
        window(ctx, &mut probe, &mut daemons, Some(&mut sim), nodes).await
    }
    .await;
    let stopped = sim.stop().await;
    for d in daemons {
        d.stop().await?;
    }
    let log = std::env::temp_dir().join("pgfan-bench-fleet-master.log");
    if outcome.is_err() {
        std::fs::write(&log, master.log())?;
    }
    let w = outcome.with_context(|| format!("the master's log: {}", log.display()))?;
    stopped?;
    Ok(w)
}

/// Direct mode's way to a steady idle state: every node session up, a warm-up job to the
/// real nodes, vacuum, ticks backdated, a settling minute.
async fn settle_direct(ctx: &Ctx, master: &Cluster, m: &Client, nodes: usize) -> Result<()> {
    let sessions = format!(
        "select count(distinct application_name) >= {nodes} from pg_stat_activity
          where application_name like 'pgfan node %'"
    );
    rig::until(m, &sessions, Duration::from_millis(200), LIMIT)
        .await
        .context("node sessions on the master")?;
    let targets: Vec<String> = (1..=REAL).map(|k| format!("n{k}")).collect();
    let job: i64 = m
        .query_one("select pgfan.submit($1, 'select 1')", &[&targets.join(",")])
        .await?
        .get(0);
    let state: String = m
        .query_one("select pgfan.wait($1, '60 s')", &[&job])
        .await?
        .get(0);
    if state != "done" {
        bail!("warm-up job {job} is {state}");
    }
    for db in ["postgres", "template1"] {
        rig::connect(&master.conninfo(db))
            .await?
            .batch_execute("vacuum analyze")
            .await?;
    }
    backdate_ticks(m).await?;
    tokio::time::sleep(Duration::from_secs(ctx.size(60, 5) as u64)).await;
    Ok(())
}

fn notes(ctx: &Ctx, w: &Window, add_ms: &[f64]) {
    let (n, k) = (add_ms.len(), add_ms.len().min(100));
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let (first, last) = (mean(&add_ms[..k]), mean(&add_ms[n - k..]));
    ctx.note(
        CASE,
        format!(
            "{n} nodes: n1..n{REAL} real (databases on {NODE_CLUSTERS} node clusters, daemons \
             as processes of the release binary, defaults), n{}..n{n} simulated in the bench \
             process (one master session each, pgfan's consumer framework through the node \
             doors with a {:?} poll, a heartbeat every {:?}); master max_connections 1200, \
             pg_stat_statements loaded; one idle window of {:.1} s after a settling minute \
             (quick: 5 s); node_add {first:.1} ms each for the first {k}, {last:.1} ms for the \
             last {k}",
            REAL + 1,
            periods().0,
            periods().1,
            w.secs,
        ),
    );
    let b = &w.backends_last;
    let mut others: Vec<String> = b.others.iter().map(|(a, c)| format!("{a:?} {c}")).collect();
    others.sort();
    let (nodes, node_sessions) = (b.nodes.len(), b.nodes.values().sum::<i64>());
    let cpu = |prefix: &str| {
        let v: Vec<f64> = w
            .daemon_cpu
            .iter()
            .filter(|(d, _)| d.starts_with(prefix))
            .map(|x| x.1)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    ctx.note(
        CASE,
        format!(
            "master client backends at the end: {} ({node_sessions} node sessions of {nodes} \
             nodes; others: {}); most sessions of one node daemon: real {}, simulated {}; node \
             sessions' backends {:.0} MB Pss in all, {:.2} MB each; master CPU {:.2} % of a \
             core, of which the node sessions' backends {:.2} %; process CPU: node daemon \
             {:.3} % (mean of {REAL}), ticker {:.3} %, relay {:.3} %, reducer {:.3} %, the bench \
             process (simulator, measuring) {:.2} %; simulated heartbeats that failed and \
             were retried: {}",
            b.total,
            others.join(", "),
            w.per_real_max,
            w.per_sim_max,
            w.node_pss_total_mb,
            w.node_pss_total_mb / node_sessions.max(1) as f64,
            w.cpu_pct,
            w.node_sessions_cpu_pct,
            cpu("node_"),
            cpu("ticker"),
            cpu("relay"),
            cpu("reducer"),
            w.bench_cpu_pct,
            BEAT_ERRORS.load(Ordering::Relaxed)
        ),
    );
    let top: Vec<String> = w.top.iter().map(|(r, q)| format!("{r:.2}/s {q}")).collect();
    ctx.note(
        CASE,
        format!(
            "{:.1} pgfan_tick notifications/s reached a listener. Every NOTIFY committed in the \
             master database costs each idle LISTENing backend there one transaction \
             (PostgreSQL 15 signals every listener of the database, whatever the channel, and \
             reads the notification queue in a transaction of its own), which an idle backend \
             reports to pg_stat_database only after its next statement: the simulated sessions \
             are made to report (pg_stat_force_next_flush) at both ends of the window, so that \
             it counts its own transactions, not reads of earlier NOTIFYs (the real daemons' \
             20 sessions are not). Statements: {:.1}/s. Statements by calls: {}",
            w.tick_notifications,
            w.statements,
            top.join(" | ")
        ),
    );
    ctx.note(
        CASE,
        format!(
            "for comparison, computed, not measured: seed 002's push/pull with pgqd runs 2N+2 \
             processes ({} at N = {n}), each consumer polling every second (pgqd's loop_delay \
             1 s): about {n} master transactions/s idle; before issue 14's change an idle pgfan \
             node daemon cost the master about 3.8 transactions/s ({:.0}/s for {n})",
            2 * n + 2,
            3.8 * n as f64
        ),
    );
}

fn rows(w: &Window, base: &Window, add_ms: &[f64]) -> Vec<Row> {
    let n = w.nodes;
    let row = |metric: String, unit: &str, v: f64| {
        Row::single(CASE, metric, unit, Better::Lower, vec![v])
    };
    let (cpu, tps) = (w.cpu_pct - base.cpu_pct, w.tps - base.tps);
    let (tps_goal, per_node) = (TPS_PER_NODE_GOAL * n as f64, tps / n as f64);
    let sessions = format!("master sessions per node daemon (max of {REAL})");
    let fleet = |what: &str| format!("master {what}, idle fleet of {n}");
    let part = |what: &str| format!("master {what}, idle fleet of {n}: the fleet's part");
    vec![
        row(sessions, "sessions", w.per_real_max as f64).goal("<= 1", w.per_real_max <= 1),
        row(fleet("client backends"), "backends", w.backends_max as f64),
        row(fleet("CPU"), "% core", w.cpu_pct),
        row(part("CPU"), "% core", cpu).goal(format!("<= {CPU_GOAL_PCT} %"), cpu <= CPU_GOAL_PCT),
        row(fleet("transactions/s"), "tx/s", w.tps),
        row(part("transactions/s"), "tx/s", tps)
            .goal(format!("<= {tps_goal:.0}/s"), tps <= tps_goal),
        row(
            "master transactions/s per idle node daemon".into(),
            "tx/s",
            per_node,
        )
        .goal(
            format!("<= {TPS_PER_NODE_GOAL}/s"),
            per_node <= TPS_PER_NODE_GOAL,
        ),
        row(fleet("statements/s"), "stmt/s", w.statements),
        row(
            format!("registering {n} nodes (node_add each)"),
            "s",
            add_ms.iter().sum::<f64>() / 1000.0,
        ),
    ]
}

fn pooled_notes(ctx: &Ctx, w: &Window) {
    ctx.note(
        CASE,
        format!(
            "pooled: the same {} nodes through PgBouncer in transaction mode \
             (default_pool_size {POOL_SIZE}): the {REAL} daemons with pooled = true and \
             claim_poll_period {POOLED_POLL:?}, the simulated ones without LISTEN at the same \
             poll; one idle window of {:.1} s after every node had beaten and one more poll \
             period; master CPU {:.2} % of a core, {:.1} statements/s; most PgBouncer server \
             connections at a sample (backends named for node daemons): {}; statements by \
             calls: {}",
            w.nodes,
            w.secs,
            w.cpu_pct,
            w.statements,
            w.node_sessions_max,
            w.top
                .iter()
                .map(|(r, q)| format!("{r:.2}/s {q}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    );
}

fn pooled_rows(w: &Window, base: &Window) -> Vec<Row> {
    let n = w.nodes;
    let row = |metric: String, unit: &str, v: f64| {
        Row::single(CASE, metric, unit, Better::Lower, vec![v])
    };
    let tps_goal = POOLED_TPS_GOAL * n as f64 / NODES as f64;
    let what = |m: &str| {
        format!(
            "pooled ({}s poll): {m}, idle fleet of {n}",
            POOLED_POLL.as_secs()
        )
    };
    let servers = w.node_sessions_max as f64;
    let tps = w.pool_tps;
    vec![
        row(what("PgBouncer server connections"), "connections", servers)
            .goal(format!("<= {POOL_SIZE}"), servers <= f64::from(POOL_SIZE)),
        row(what("master CPU"), "% core", w.cpu_pct),
        row(what("master transactions/s"), "tx/s", w.tps),
        row(
            what("master transactions/s minus the base window's"),
            "tx/s",
            w.tps - base.tps,
        ),
        row(
            what("master transactions/s, the fleet's own (its login's, by statement)"),
            "tx/s",
            tps,
        )
        .goal(format!("<= {tps_goal:.0}/s"), tps <= tps_goal),
    ]
}

/// Node `name`'s key in the pooled phase.
fn node_key(name: &str) -> String {
    format!("{name}-fleet-key-{}", "0123456789abcdef".repeat(2))
}

/// The pooled daemons' login, and every node's key.
async fn pool_login(m: &Client) -> Result<()> {
    m.batch_execute(&format!(
        "create role {POOL_LOGIN} login; grant pgfan_node to {POOL_LOGIN}"
    ))
    .await?;
    for row in m.query("select node_name from pgfan.node", &[]).await? {
        let name: String = row.get(0);
        m.query_one(
            "select pgfan.node_set_pool_key($1, $2)",
            &[&name, &node_key(&name)],
        )
        .await?;
    }
    Ok(())
}
