//! Held-transaction soak: a transaction stays open on the master (it has a txid, so it pins
//! the xmin horizon of every snapshot) while jobs and raw events keep flowing through the
//! live pipeline (pgfan::demo::Topology: ticker, relay, reducer, two node daemons).
//!
//! What PgQ's design promises, checked with exact counts (contrib `pgstattuple`):
//! - event tables never hold a dead tuple: events are only inserted, and whole tables are
//!   truncated by rotation, so a transaction that stops VACUUM cannot bloat them;
//! - rotation stops while the transaction is open (a table may be reused only once no
//!   consumer's position predates the previous switch, and every tick's snapshot now
//!   starts at the held txid) and resumes when it ends: the current table moves on and the
//!   table reused is truncated, its pre-hold events gone;
//! - the bookkeeping tables (pgq.tick, pgq.subscription, pgfan.job, pgfan.task, ...) gain
//!   dead tuples only in proportion to the work done, and once the transaction ends VACUUM
//!   reclaims them and later work reuses the space instead of growing the tables.
//!
//! The hold lasts 30 s by default (CI); `PGFAN_SOAK_SECS=600` soaks for ten minutes. Every
//! phase prints its numbers: dead tuples and sizes before, during and after the hold.

use std::collections::BTreeMap;
use std::time::Duration;

use pgfan::demo::Topology;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;

/// Default length of the hold, in seconds.
const DEFAULT_HOLD_SECS: u64 = 30;
/// Upper bound for a state the pipeline reaches by itself; reaching it means it is broken.
const PATIENCE: Duration = Duration::from_secs(60);
/// Rotation period of every queue: short, so several rotations happen within seconds.
const ROTATION_PERIOD: &str = "1 second";
/// How often the hold samples the state.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Whether every job submitted so far finished, and well.
const ALL_FINISHED: &str = "select not exists (select from pgfan.job where state <> 'done')";
/// The first part of the hold, without load.
const IDLE: Duration = Duration::from_secs(5);

fn hold_duration() -> Duration {
    let secs = std::env::var("PGFAN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_HOLD_SECS);
    Duration::from_secs(secs)
}

/// One queue with its event tables.
#[derive(Debug, Clone)]
struct Queue {
    name: String,
    tables: Vec<String>,
}

impl Queue {
    fn table(&self, n: i32) -> &str {
        &self.tables[n as usize]
    }
}

async fn queues(m: &Client) -> Vec<Queue> {
    m.query(
        "select queue_name,
                array(select queue_data_pfx || '_' || n
                        from generate_series(0, queue_ntables - 1) n order by n)
           from pgq.queue order by queue_name",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Queue {
        name: r.get(0),
        tables: r.get(1),
    })
    .collect()
}

/// A queue's rotation state: current table, txids of the last switch's two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rotation {
    cur: i32,
    step1: i64,
    step2: Option<i64>,
}

async fn rotation(m: &Client, q: &Queue) -> Rotation {
    let r = m
        .query_one(
            "select queue_cur_table, queue_switch_step1, queue_switch_step2
               from pgq.queue where queue_name = $1",
            &[&q.name],
        )
        .await
        .unwrap();
    Rotation {
        cur: r.get(0),
        step1: r.get(1),
        step2: r.get(2),
    }
}

async fn count(m: &Client, sql: &str) -> i64 {
    m.query_one(sql, &[]).await.unwrap().get(0)
}

/// Dead tuples of every event table, exactly (pgstattuple reads every page).
async fn event_dead_tuples(m: &Client, qs: &[Queue]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for t in qs.iter().flat_map(|q| &q.tables) {
        let dead = count(
            m,
            &format!("select dead_tuple_count from pgstattuple('{t}'::regclass)"),
        )
        .await;
        out.insert(t.clone(), dead);
    }
    out
}

/// The bookkeeping tables' state: heap and total size, live and dead tuples, free space.
#[derive(Debug, Clone, Copy, Default)]
struct TableStat {
    live: i64,
    dead: i64,
    /// Bytes of the heap not holding live tuples: dead tuples plus free space.
    waste: i64,
    heap: i64,
    total: i64,
}

/// Every table of the schemas pgq, pgq_ext and pgfan except the event tables.
async fn bookkeeping(m: &Client) -> BTreeMap<String, TableStat> {
    m.query(
        "select c.oid::regclass::text, s.tuple_count, s.dead_tuple_count,
                s.table_len - s.tuple_len, s.table_len, pg_total_relation_size(c.oid)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace,
                lateral pgstattuple(c.oid) s
          where c.relkind = 'r' and n.nspname in ('pgq', 'pgq_ext', 'pgfan')
            and c.relname !~ '^event_'
          order by 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let stat = TableStat {
            live: r.get(1),
            dead: r.get(2),
            waste: r.get(3),
            heap: r.get(4),
            total: r.get(5),
        };
        (r.get(0), stat)
    })
    .collect()
}

fn print_bookkeeping(phase: &str, stats: &BTreeMap<String, TableStat>) {
    println!("bookkeeping tables {phase}:");
    println!(
        "  {:<28} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "table", "live", "dead", "waste kB", "heap kB", "total kB"
    );
    for (t, s) in stats {
        println!(
            "  {:<28} {:>8} {:>8} {:>10} {:>10} {:>10}",
            t,
            s.live,
            s.dead,
            s.waste / 1024,
            s.heap / 1024,
            s.total / 1024
        );
    }
}

/// Jobs submitted through `pgfan.submit` and raw copy events, in a loop until stopped.
struct Load {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl Load {
    /// Starts the loop; raw row ids start at `first_id` so that every phase's rows differ.
    fn start(conninfo: String, first_id: i64) -> Load {
        let (stop, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let m = pgfan::db::connect_client(&conninfo).await.unwrap();
            let mut id = first_id;
            while !*stop_rx.borrow() {
                // A map-reduce over both nodes, and a raw copy event routed by hash.
                let job: i64 = m
                    .query_one(
                        "select pgfan.submit('all', 'select count(*) as n from items',
                                             reduce => 'sum')",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                let data = format!("action=ins&id={id}&name=r{id}");
                let target = format!("hash:k{id}");
                m.query_one(
                    "select pgq.insert_event('push_queue', 'copy', $1, $2, null, null, null)",
                    &[&data, &target],
                )
                .await
                .unwrap();
                id += 1;
                let state: String = m
                    .query_one("select pgfan.wait($1, '60 s')", &[&job])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(state, "done", "job {job} under load");
            }
            (id - first_id) as u64
        });
        Load { stop, handle }
    }

    /// Stops after the job in progress; returns the number of raw rows it sent.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.expect("the load loop")
    }
}

/// Polls `sql` (one boolean) until true, at most PATIENCE.
async fn eventually(m: &Client, what: &str, sql: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !m.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(Instant::now() < deadline, "never happened: {what}\n{sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `done(rotation)` holds for queue `q`, at most PATIENCE.
async fn await_rotation(m: &Client, q: &Queue, what: &str, done: impl Fn(Rotation) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = rotation(m, q).await;
        if done(r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: never happened: {what}; rotation state {r:?}",
            q.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rows_before(m: &Client, table: &str, txid: i64) -> i64 {
    count(
        m,
        &format!("select count(*) from {table} where ev_txid < {txid}"),
    )
    .await
}

async fn jobs_done(m: &Client) -> i64 {
    count(m, "select count(*) from pgfan.job where state = 'done'").await
}

async fn topology() -> (Topology, Client) {
    let topo = Topology::start_with_ticker(
        2,
        |cfg| {
            cfg.copy_tables = vec!["public.items".into()];
            cfg.poll_period = Duration::from_millis(200);
            cfg.heartbeat_period = Duration::from_millis(200);
        },
        // Maintenance (rotation) every half second instead of pgqd's 2 minutes.
        |ticker| ticker.maint_period = Duration::from_millis(500),
    )
    .await
    .expect("topology starts");
    for node in &topo.nodes {
        pgfan::db::connect_client(&node.conninfo())
            .await
            .unwrap()
            .batch_execute("create table items (id bigint primary key, name text)")
            .await
            .unwrap();
    }
    let m = topo.master_client().await.unwrap();
    m.batch_execute("create extension if not exists pgstattuple")
        .await
        .unwrap();
    for q in queues(&m).await {
        m.query_one(
            "select pgq.set_queue_config($1, 'rotation_period', $2)",
            &[&q.name, &ROTATION_PERIOD],
        )
        .await
        .unwrap();
    }
    (topo, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_transaction_blocks_rotation_without_bloating_event_tables() {
    let hold = hold_duration();
    let started = Instant::now();
    let (topo, m) = topology().await;
    let qs = queues(&m).await;
    let warm = warm_up(&topo, &m, &qs).await;
    let before = vacuum_bookkeeping(&m).await;
    print_bookkeeping("before the hold (vacuumed)", &before);

    // The held transaction: a txid, nothing else.
    let held = topo.master_client().await.unwrap();
    held.batch_execute("begin").await.unwrap();
    let x: i64 = held
        .query_one("select txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    let held_at = Instant::now();
    // First idle: what the daemons alone (ticks, polls, heartbeats) leave behind per second
    // while nothing can be vacuumed.
    tokio::time::sleep(IDLE).await;
    let idle = bookkeeping(&m).await;
    print_rates(
        "without load (first 5 s of the hold), per second",
        &before,
        &idle,
        IDLE.as_secs() as i64,
    );

    let jobs_at_load = jobs_done(&m).await;
    let load = Load::start(topo.master_conninfo(), warm as i64);
    let blocked = await_blocked(&m, &qs, x).await;
    let mut samples = 0;
    while held_at.elapsed() < hold {
        // Sleeping is what holds the transaction open; the state is sampled meanwhile.
        tokio::time::sleep(SAMPLE_EVERY.min(hold.saturating_sub(held_at.elapsed()))).await;
        samples += 1;
        check_blocked(&m, &qs, &blocked, x).await;
        let dead = event_dead_tuples(&m, &qs).await;
        println!(
            "hold +{:>4.0} s: {} jobs done under load, dead tuples in the event tables: {}",
            held_at.elapsed().as_secs_f64(),
            jobs_done(&m).await - jobs_at_load,
            dead.values().sum::<i64>()
        );
        assert!(
            dead.values().all(|d| *d == 0),
            "event tables have no dead tuples: {dead:?}"
        );
    }
    let during = bookkeeping(&m).await;
    let hold_jobs = jobs_done(&m).await - jobs_at_load;
    print_bookkeeping(
        &format!("at the end of the {} s hold", hold.as_secs()),
        &during,
    );
    print_rates("under load, per job", &idle, &during, hold_jobs);
    assert!(
        samples > 0 && hold_jobs > 0,
        "jobs completed during the hold"
    );

    let old_rows = old_rows(&m, &qs, &blocked, x).await;
    held.batch_execute("commit").await.unwrap();
    check_released(&m, &qs, &blocked, &old_rows, x).await;

    // Once the transaction ended, VACUUM reclaims what the hold left behind, and more work
    // (a quarter of the hold's) reuses that space: the hot small tables do not grow.
    vacuum_bookkeeping(&m).await;
    let target = jobs_done(&m).await + hold_jobs / 4;
    eventually(
        &m,
        "a quarter of the hold's work again",
        &format!("select count(*) >= {target} from pgfan.job where state = 'done'"),
    )
    .await;
    let rows = warm + load.stop().await;
    check_every_row_once(&topo, rows).await;
    let after = vacuum_bookkeeping(&m).await;
    print_bookkeeping("after the release, more work and a VACUUM", &after);
    check_reclaimed(&during, &after);
    println!(
        "total {:.1} s (hold {} s, {hold_jobs} jobs during the hold)",
        started.elapsed().as_secs_f64(),
        hold.as_secs()
    );
    topo.shutdown().await.unwrap();
}

/// Loads until every event table of every queue holds events, so that the rotation after
/// the hold has a table with old events to truncate; returns the raw rows sent.
async fn warm_up(topo: &Topology, m: &Client, qs: &[Queue]) -> u64 {
    let load = Load::start(topo.master_conninfo(), 0);
    for q in qs {
        let all_filled = q
            .tables
            .iter()
            .map(|t| format!("exists (select from {t})"))
            .collect::<Vec<_>>()
            .join(" and ");
        let what = format!("{} fills its tables", q.name);
        eventually(m, &what, &format!("select {all_filled}")).await;
    }
    let warm = load.stop().await;
    // The last raw events may still be on their way; the idle part of the hold starts
    // once nothing is.
    eventually(m, "every job finished", ALL_FINISHED).await;
    println!("warm-up: {warm} raw rows, {} jobs done", jobs_done(m).await);
    warm
}

/// Waits until every queue completed a switch after the held transaction `x` began (one
/// whose step1 ran before may still complete); returns the state that must then stay.
async fn await_blocked(m: &Client, qs: &[Queue], x: i64) -> Vec<Rotation> {
    let mut blocked = Vec::new();
    for q in qs {
        await_rotation(m, q, "a switch completed after the hold began", |r| {
            r.step2.is_some_and(|s| s > x)
        })
        .await;
        blocked.push(rotation(m, q).await);
    }
    blocked
}

/// No queue rotated since `blocked`, although maintenance lists every rotation as due.
async fn check_blocked(m: &Client, qs: &[Queue], blocked: &[Rotation], x: i64) {
    let due: Vec<String> = m
        .query(
            "select func_arg from pgq.maint_operations()
              where func_name = 'pgq.maint_rotate_tables_step1'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (q, b) in qs.iter().zip(blocked) {
        assert_eq!(
            rotation(m, q).await,
            *b,
            "{}: no rotation while the transaction {x} is open",
            q.name
        );
        assert!(
            due.contains(&q.name),
            "{}: its rotation is due, and maintenance keeps trying: {due:?}",
            q.name
        );
    }
}

/// Per queue, the table it rotates into next and its events from before the hold (some).
async fn old_rows(m: &Client, qs: &[Queue], blocked: &[Rotation], x: i64) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for (q, b) in qs.iter().zip(blocked) {
        let next = q.table((b.cur + 1) % q.tables.len() as i32).to_string();
        let n = rows_before(m, &next, x).await;
        assert!(n > 0, "{next} holds events from before the hold");
        out.push((next, n));
    }
    out
}

/// Every queue rotates once the transaction ended, into the table with the old events,
/// which it truncated; the event tables still have no dead tuple.
async fn check_released(
    m: &Client,
    qs: &[Queue],
    blocked: &[Rotation],
    old_rows: &[(String, i64)],
    x: i64,
) {
    for ((q, b), (next, n)) in qs.iter().zip(blocked).zip(old_rows) {
        await_rotation(m, q, "rotation after the transaction ended", |r| {
            r.cur != b.cur
        })
        .await;
        let left = rows_before(m, next, x).await;
        println!(
            "{}: rotated away from table {} after the release; {next} had {n} events from before the hold, now {left}",
            q.name, b.cur
        );
        assert_eq!(left, 0, "{next} was truncated when it was reused");
    }
    let dead = event_dead_tuples(m, qs).await;
    assert!(
        dead.values().all(|d| *d == 0),
        "event tables have no dead tuples: {dead:?}"
    );
}

/// PostgreSQL's page size.
const PAGE: i64 = 8192;

/// Tables whose row count does not grow with the work: their size must stay put.
const FIXED_ROWS: &[&str] = &[
    "pgq.consumer",
    "pgq.queue",
    "pgq.subscription",
    "pgfan.node",
    "pgfan.partition",
];

/// After the release and a VACUUM, (almost) every dead tuple of the hold is gone (what
/// stays belongs to transactions running at that moment), and the tables with a fixed
/// number of rows are no larger than at the end of the hold, give or take one page: the
/// hold's space was reused. The page: under load an update can find its page full before
/// pruning may remove the versions a running batch still sees, and the table then takes
/// one more page (seen once in about ten runs: pgq.subscription 352 kB -> 360 kB).
fn check_reclaimed(during: &BTreeMap<String, TableStat>, after: &BTreeMap<String, TableStat>) {
    for (t, d) in during {
        let a = after[t];
        assert!(
            a.dead <= (d.dead / 20).max(10),
            "{t}: VACUUM reclaims the hold's dead tuples ({} at the end of the hold, {} after)",
            d.dead,
            a.dead
        );
        if FIXED_ROWS.contains(&t.as_str()) {
            assert!(
                a.heap <= d.heap + PAGE,
                "{t}: no growth after the hold beyond a page ({} bytes at its end, {} after)",
                d.heap,
                a.heap
            );
        }
    }
}

/// Dead tuples added between `from` and `to`, divided by `per` (seconds or jobs).
fn print_rates(
    what: &str,
    from: &BTreeMap<String, TableStat>,
    to: &BTreeMap<String, TableStat>,
    per: i64,
) {
    let rates: Vec<String> = to
        .iter()
        .filter_map(|(t, s)| {
            let added = s.dead - from[t].dead;
            (added > 0).then(|| format!("{t} {:.1}", added as f64 / per.max(1) as f64))
        })
        .collect();
    println!("dead tuples added {what}: {}", rates.join(", "));
}

/// VACUUMs the bookkeeping tables (as autovacuum or the ticker's maintenance would) and
/// returns their state; only tuples of transactions still running may stay dead.
async fn vacuum_bookkeeping(m: &Client) -> BTreeMap<String, TableStat> {
    for t in bookkeeping(m).await.keys() {
        m.batch_execute(&format!("vacuum {t}")).await.unwrap();
    }
    bookkeeping(m).await
}

/// Every raw copy event inserted its row on exactly one node, once.
async fn check_every_row_once(topo: &Topology, rows: u64) {
    let m = topo.master_client().await.unwrap();
    eventually(&m, "every job finished", ALL_FINISHED).await;
    let mut total = 0;
    for node in &topo.nodes {
        let c = pgfan::db::connect_client(&node.conninfo()).await.unwrap();
        total += count(&c, "select count(*) from items").await;
    }
    assert_eq!(total, rows as i64, "each raw row arrived exactly once");
}
