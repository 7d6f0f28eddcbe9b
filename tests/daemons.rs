//! The ticker daemon and the consumer framework against real PostgreSQL, on both backends.

mod common;

use std::time::Duration;

use common::{eventually, start_ticker, ticker_config, Backend, TestDb, PATIENCE};
use pgfan::cluster::{Cluster, StopMode};
use pgfan::consumer::{self, BatchHandler, BatchRef, ConsumerOptions, HandlerError, RetryEvent};
use pgfan::pgq::Event;
use pgfan::signals::Control;
use pgfan::ticker::TickerConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Transaction;

/// Forwards every event to the test; retries events whose data starts with "retry" once.
struct Collect {
    seen: mpsc::UnboundedSender<(BatchRef, Event)>,
    /// When set, the handler parks in the first batch until the test releases it.
    park: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
}

impl BatchHandler for Collect {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        if let Some((parked, release)) = self.park.take() {
            let _ = parked.send(());
            let _ = release.await;
        }
        let mut retry = Vec::new();
        for e in events {
            if e.data.as_deref().is_some_and(|d| d.starts_with("retry")) && e.retry.is_none() {
                retry.push(RetryEvent {
                    ev_id: e.id,
                    retries: 0,
                });
            }
            let _ = self.seen.send((batch, e.clone()));
        }
        Ok(retry)
    }
}

/// Errors that ended consumers of this test binary, for the message of a test that waited.
static CONSUMER_ERRORS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn start_consumer(
    opts: ConsumerOptions,
    mut handler: Collect,
) -> (watch::Sender<bool>, JoinHandle<u64>) {
    let (stop_tx, stop) = watch::channel(false);
    let handle = tokio::spawn(async move {
        match consumer::run(&opts, &mut handler, stop).await {
            Ok(n) => n,
            Err(e) => {
                let msg = format!("{}/{}: {e:?}", opts.queue, opts.consumer);
                CONSUMER_ERRORS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(msg.clone());
                panic!("consumer failed: {msg}")
            }
        }
    });
    (stop_tx, handle)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<(BatchRef, Event)>) -> (BatchRef, Event) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("an event arrives in time")
        .unwrap_or_else(|| {
            let errors = CONSUMER_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
            panic!("the consumer ended; consumer errors: {errors:#?}")
        })
}

/// A queue that ticks as soon as it has events.
async fn low_latency_queue(db: &TestDb, queue: &str) {
    let c = db.connect().await;
    c.query_one("select pgq.create_queue($1)", &[&queue])
        .await
        .unwrap();
    c.query_one(
        "select pgq.set_queue_config($1, 'ticker_max_lag', '0')",
        &[&queue],
    )
    .await
    .unwrap();
}

async fn ticker_wakes_consumers_on_new_events(backend: Backend) {
    let db = TestDb::new(backend).await;
    low_latency_queue(&db, "fast").await;
    let (ctl, ticker) = start_ticker(ticker_config(&db));
    let mut opts = ConsumerOptions::new(&db.conninfo, "fast", "c1");
    // A consumer that would poll only hourly: events can only reach it through the NOTIFY.
    opts.poll_period = Duration::from_secs(3600);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = db.connect().await;
    let (stop, consumer) = start_consumer(
        opts,
        Collect {
            seen: tx,
            park: None,
        },
    );
    eventually(
        &db,
        "select count(*) = 1 from pgq.get_consumer_info('fast')",
    )
    .await;
    for i in 0..3 {
        client
            .query_one(
                "select pgq.insert_event('fast', 'e', $1)",
                &[&format!("n={i}")],
            )
            .await
            .unwrap();
        let (_, e) = next_event(&mut rx).await;
        assert_eq!(e.data.as_deref(), Some(format!("n={i}").as_str()));
    }
    stop.send(true).unwrap();
    assert!(consumer.await.unwrap() >= 3);
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

async fn ticker_moves_retries_and_rotates_tables(backend: Backend) {
    let db = TestDb::new(backend).await;
    low_latency_queue(&db, "rq").await;
    let client = db.connect().await;
    client
        .query_one(
            "select pgq.set_queue_config('rq', 'rotation_period', '0')",
            &[],
        )
        .await
        .unwrap();
    let mut cfg = ticker_config(&db);
    cfg.retry_period = Duration::from_millis(50);
    cfg.maint_period = Duration::from_millis(50);
    let (ctl, ticker) = start_ticker(cfg);
    let mut opts = ConsumerOptions::new(&db.conninfo, "rq", "c1");
    opts.retry_base = Duration::ZERO;
    opts.poll_period = Duration::from_millis(100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, consumer) = start_consumer(
        opts,
        Collect {
            seen: tx,
            park: None,
        },
    );
    eventually(&db, "select count(*) = 1 from pgq.get_consumer_info('rq')").await;
    client
        .query_one("select pgq.insert_event('rq', 'e', 'retry me')", &[])
        .await
        .unwrap();
    let (first_batch, first) = next_event(&mut rx).await;
    assert_eq!(first.retry, None);
    let (again_batch, again) = next_event(&mut rx).await;
    assert_eq!(
        (again.id, again.retry),
        (first.id, Some(1)),
        "the retried event comes back once, counted"
    );
    assert!(again_batch.batch_id > first_batch.batch_id);
    // Rotation needs ticks past the previous switch; keep events flowing until it happens.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        client
            .query_one("select pgq.insert_event('rq', 'e', 'filler')", &[])
            .await
            .unwrap();
        next_event(&mut rx).await;
        let cur: i32 = client
            .query_one(
                "select queue_cur_table from pgq.queue where queue_name = 'rq'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if cur != 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ticker never rotated the queue"
        );
    }
    stop.send(true).unwrap();
    consumer.await.unwrap();
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

async fn consumer_reads_large_batches_lazily_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut client = db.connect().await;
    client
        .query_one("select pgq.create_queue('big')", &[])
        .await
        .unwrap();
    client
        .query_one("select pgq.register_consumer('big', 'c1')", &[])
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    for i in 0..50 {
        tx.query_one("select pgq.insert_event('big', 'e', $1)", &[&i.to_string()])
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    client
        .batch_execute("select pgq.force_tick('big'); select pgq.ticker('big')")
        .await
        .unwrap();
    let mut opts = ConsumerOptions::new(&db.conninfo, "big", "c1");
    opts.lazy_fetch = 7;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, consumer) = start_consumer(
        opts,
        Collect {
            seen: tx,
            park: None,
        },
    );
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(next_event(&mut rx).await);
    }
    let batches: std::collections::HashSet<i64> = got.iter().map(|(b, _)| b.batch_id).collect();
    assert_eq!(batches.len(), 1, "one transaction, one batch");
    let data: Vec<String> = got.iter().map(|(_, e)| e.data.clone().unwrap()).collect();
    assert_eq!(
        data,
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>(),
        "in ev_id order"
    );
    stop.send(true).unwrap();
    assert_eq!(consumer.await.unwrap(), 1);
}

async fn consumer_stops_only_between_batches(backend: Backend) {
    let db = TestDb::new(backend).await;
    let client = db.connect().await;
    client
        .query_one("select pgq.create_queue('s')", &[])
        .await
        .unwrap();
    client
        .query_one("select pgq.register_consumer('s', 'c1')", &[])
        .await
        .unwrap();
    client
        .query_one("select pgq.insert_event('s', 'e', 'x')", &[])
        .await
        .unwrap();
    client
        .batch_execute("select pgq.force_tick('s'); select pgq.ticker('s')")
        .await
        .unwrap();
    let (parked_tx, parked) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opts = ConsumerOptions::new(&db.conninfo, "s", "c1");
    let (stop, consumer) = start_consumer(
        opts,
        Collect {
            seen: tx,
            park: Some((parked_tx, release_rx)),
        },
    );
    parked.await.expect("the handler is inside the batch");
    stop.send(true).unwrap();
    release.send(()).unwrap();
    assert_eq!(
        consumer.await.unwrap(),
        1,
        "the batch in progress is finished before stopping"
    );
    assert!(rx.recv().await.is_some());
    let open: Option<i64> = client
        .query_one(
            "select current_batch from pgq.get_consumer_info('s', 'c1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, None, "no batch left open");
}

#[tokio::test]
async fn ticker_and_consumer_survive_a_database_restart() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let db = TestDb::empty_on(&cluster).await;
    pgfan::install::install(&mut db.connect().await, pgfan::install::Role::Master)
        .await
        .unwrap();
    low_latency_queue(&db, "r").await;
    let (ctl, ticker) = start_ticker(ticker_config(&db));
    let mut opts = ConsumerOptions::new(&db.conninfo, "r", "c1");
    opts.poll_period = Duration::from_millis(200);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, consumer) = start_consumer(
        opts,
        Collect {
            seen: tx,
            park: None,
        },
    );
    eventually(&db, "select count(*) = 1 from pgq.get_consumer_info('r')").await;
    db.connect()
        .await
        .query_one("select pgq.insert_event('r', 'e', 'before')", &[])
        .await
        .unwrap();
    let (batch, e) = next_event(&mut rx).await;
    assert_eq!(e.data.as_deref(), Some("before"));
    // The handler sees events inside the batch transaction; restart only once it committed.
    let finished = format!(
        "select coalesce(bool_and(last_tick >= {}), false) from pgq.get_consumer_info('r', 'c1')",
        batch.cur_tick_id
    );
    eventually(&db, &finished).await;
    cluster.stop(StopMode::Fast).unwrap();
    cluster.restart().unwrap();
    db.connect()
        .await
        .query_one("select pgq.insert_event('r', 'e', 'after')", &[])
        .await
        .unwrap();
    assert_eq!(next_event(&mut rx).await.1.data.as_deref(), Some("after"));
    stop.send(true).unwrap();
    consumer.await.unwrap();
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

/// The newest tick id of queue `q` in `db`.
async fn newest_tick(db: &TestDb, q: &str) -> i64 {
    common::last_tick(&db.connect().await, q).await
}

#[tokio::test]
async fn discovery_finds_every_database_with_pgq_and_rechecks() {
    // Its own cluster: discovery ticks every database, which must not be other tests' ones.
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let early = TestDb::empty_on(&cluster).await;
    let late = TestDb::empty_on(&cluster).await;
    let plain = TestDb::empty_on(&cluster).await;
    pgfan::install::install(&mut early.connect().await, pgfan::install::Role::Master)
        .await
        .unwrap();
    low_latency_queue(&early, "q").await;
    let (base, _) = early.conninfo.rsplit_once(" dbname=").unwrap();
    let cfg = TickerConfig {
        base_connstr: base.to_string(),
        initial_database: plain.name.clone(),
        check_period: Duration::from_millis(200),
        ..TickerConfig::default()
    };
    let (ctl, ticker) = start_ticker(cfg);
    let first = newest_tick(&early, "q").await;
    early
        .connect()
        .await
        .query_one("select pgq.insert_event('q', 'e', 'x')", &[])
        .await
        .unwrap();
    eventually(
        &early,
        &format!("select max(tick_id) > {first} from pgq.tick"),
    )
    .await;
    // pgq appears in another database after the ticker started: the next check finds it.
    pgfan::install::install(&mut late.connect().await, pgfan::install::Role::Master)
        .await
        .unwrap();
    low_latency_queue(&late, "q").await;
    let first = newest_tick(&late, "q").await;
    late.connect()
        .await
        .query_one("select pgq.insert_event('q', 'e', 'y')", &[])
        .await
        .unwrap();
    eventually(
        &late,
        &format!("select max(tick_id) > {first} from pgq.tick"),
    )
    .await;
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

/// Records, for every batch, the transaction that finished it and its number of events.
struct TxOfBatch(mpsc::UnboundedSender<(i64, i64, usize)>, usize);

impl BatchHandler for TxOfBatch {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        self.1 += events.len();
        Ok(Vec::new())
    }

    async fn batch_end<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
        batch: BatchRef,
    ) -> Result<(), HandlerError> {
        let xid: i64 = tx.query_one("select txid_current()", &[]).await?.get(0);
        let _ = self
            .0
            .send((batch.batch_id, xid, std::mem::take(&mut self.1)));
        Ok(())
    }
}

/// Ticks queue `q` once, events or not (as the ticker does after `force_tick`).
async fn tick(c: &tokio_postgres::Client, q: &str) {
    c.query_one("select pgq.force_tick($1)", &[&q])
        .await
        .unwrap();
    c.query_one("select pgq.ticker($1)", &[&q]).await.unwrap();
}

/// An idle consumer's look costs one transaction, however many idle ticks it finds: the
/// empty batches are finished in the transaction of the batch after them, and a look that
/// found only empty batches leaves the consumer caught up.
async fn idle_ticks_cost_one_transaction_a_look(backend: Backend) {
    let db = TestDb::new(backend).await;
    let c = db.connect().await;
    c.query_one("select pgq.create_queue('idle')", &[])
        .await
        .unwrap();
    c.query_one("select pgq.register_consumer('idle', 'c1')", &[])
        .await
        .unwrap();
    for _ in 0..3 {
        tick(&c, "idle").await;
    }
    c.query_one("select pgq.insert_event('idle', 'e', 'x')", &[])
        .await
        .unwrap();
    tick(&c, "idle").await;
    let mut opts = ConsumerOptions::new(&db.conninfo, "idle", "c1");
    // It looks at start, and then only when the test announces ticks.
    opts.poll_period = Duration::from_secs(3600);
    let (seen, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let consumer =
        tokio::spawn(async move { consumer::run(&opts, &mut TxOfBatch(seen, 0), stop).await });
    let mut next = async || {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("a batch in time")
            .expect("the consumer runs")
    };
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(next().await);
    }
    let counts: Vec<usize> = first.iter().map(|b| b.2).collect();
    assert_eq!(counts, [0, 0, 0, 1], "three idle ticks, then the event's");
    assert!(
        first.iter().all(|b| b.1 == first[0].1),
        "one transaction for the idle batches and the one after them: {first:?}"
    );
    // Caught up: two more idle ticks are found by one look, in one transaction.
    tick(&c, "idle").await;
    tick(&c, "idle").await;
    c.batch_execute(&format!("notify {}, 'idle'", pgfan::ticker::TICK_CHANNEL))
        .await
        .unwrap();
    let (a, b) = (next().await, next().await);
    assert_eq!((a.2, b.2), (0, 0));
    assert_eq!(a.1, b.1, "one transaction for both idle batches");
    assert_ne!(a.1, first[0].1);
    let newest = newest_tick(&db, "idle").await;
    eventually(
        &db,
        &format!(
            "select last_tick = {newest} and current_batch is null \
               from pgq.get_consumer_info('idle', 'c1')"
        ),
    )
    .await;
    stop_tx.send(true).unwrap();
    assert_eq!(consumer.await.unwrap().unwrap(), 6, "six batches finished");
}

both_backends!(
    idle_ticks_cost_one_transaction_a_look,
    ticker_wakes_consumers_on_new_events,
    ticker_moves_retries_and_rotates_tables,
    consumer_reads_large_batches_lazily_in_order,
    consumer_stops_only_between_batches,
);

#[test]
fn example_ticker_configs_load() {
    for file in ["etc/ticker.toml", "etc/ticker.ini"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let cfg = TickerConfig::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cfg.poll_period, Duration::from_millis(10), "{file}");
        assert_eq!(cfg.maint_period, Duration::from_secs(120), "{file}");
    }
}

#[test]
fn an_unmodified_pgqd_ini_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgqd.ini");
    std::fs::write(
        &path,
        "[pgqd]\nlogfile = /tmp/pgqd.log\npidfile = /tmp/pgqd.pid\nbase_connstr = host=/tmp\n\
         initial_database = postgres\ndatabase_list = a, b\nsyslog = 1\nsyslog_ident = pgqd\n\
         check_period = 60\nretry_period = 30\nmaint_period = 120\nticker_period = 1\n\
         stats_period = 30\nconnection_lifetime = 3600\n",
    )
    .unwrap();
    let cfg = TickerConfig::load(&path).unwrap();
    assert_eq!(cfg.database_list, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(cfg.ticker_period, Duration::from_secs(1));
    assert_eq!(cfg.conninfo("a"), "host=/tmp dbname='a'");
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, "[ticker]\npoll_periodd = \"5ms\"\n").unwrap();
    let err = TickerConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("poll_periodd") && err.contains("t.toml"),
        "{err}"
    );
    std::fs::write(&path, "[ticker]\npoll_period = \"soon\"\n").unwrap();
    let err = TickerConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("soon"), "{err}");
    std::fs::write(&path, "[ticker]\npoll_period = \"2s\"\n").unwrap();
    let err = TickerConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("poll_period must not exceed ticker_period"),
        "{err}"
    );
}

/// A configuration for `pgfan::service::run` in a test: the consumer options and the cap.
#[derive(Debug, Clone, PartialEq)]
struct Capped(Duration, String);

impl pgfan::service::StopCap for Capped {
    fn stop_timeout(&self) -> Duration {
        self.0
    }
}

#[tokio::test]
async fn a_stop_abandons_a_stuck_batch_after_the_stop_timeout() {
    let db = TestDb::new(Backend::Bundled).await;
    let client = db.connect().await;
    client
        .batch_execute("select pgq.create_queue('cap'); select pgq.register_consumer('cap', 'c1');")
        .await
        .unwrap();
    // Separate transactions: a tick taken inside the inserting transaction cannot see it.
    client
        .query_one("select pgq.insert_event('cap', 'e', 'x')", &[])
        .await
        .unwrap();
    client
        .batch_execute("select pgq.force_tick('cap')")
        .await
        .unwrap();
    client
        .query_one("select pgq.ticker('cap')", &[])
        .await
        .unwrap();
    let (parked_tx, parked) = oneshot::channel();
    // Never released: the handler is stuck inside the batch.
    let (_release, release_rx) = oneshot::channel();
    let handler = std::sync::Mutex::new(Some(Collect {
        seen: mpsc::unbounded_channel().0,
        park: Some((parked_tx, release_rx)),
    }));
    let (ctl, rx) = mpsc::unbounded_channel();
    let cfg = Capped(Duration::from_millis(300), db.conninfo.clone());
    let daemon = tokio::spawn(pgfan::service::run(
        "test",
        cfg,
        None::<fn() -> Result<Capped, String>>,
        move |c: &Capped| {
            let h = handler.lock().unwrap().take().expect("built once");
            vec![(ConsumerOptions::new(&c.1, "cap", "c1"), h)]
        },
        rx,
    ));
    parked.await.expect("the handler is inside the batch");
    let asked = tokio::time::Instant::now();
    ctl.send(Control::Stop).unwrap();
    daemon
        .await
        .unwrap()
        .expect("a capped stop is a clean exit");
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "waited for the batch until the cap: {took:?}"
    );
    // The abandoned batch was rolled back: its events come again after the restart.
    let again = common::next_batch(&client, "cap", "c1")
        .await
        .expect("the batch is handed out again");
    let events = common::batch_events(&client, again.batch_id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data(), "x");
}
