//! Batch semantics consumers rely on: every committed event reaches each consumer exactly
//! once, a transaction's events arrive together, rolled-back events never arrive, batches
//! follow each other tick by tick, a batch id is stable until `finish_batch`, cursors return
//! the same rows as `get_batch_events`, and `next_batch_custom` honours its thresholds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    all_data, batch_events, consume_all, finish_batch, insert_event, last_tick, next_batch,
    queue_db, register, set_queue_config, set_tick_age, tick, ticker, BatchInfo, Ev,
};
use common::{Backend, TestDb};
use tokio_postgres::{AsyncMessage, Client};

const PRODUCERS: usize = 4;
const TXS_PER_PRODUCER: usize = 20;
const EVENTS_PER_TX: usize = 3;

/// One producer session: `TXS_PER_PRODUCER` committed transactions of `EVENTS_PER_TX` events.
async fn producer(conninfo: String, p: usize) {
    let mut client = pgfan::db::connect_client(&conninfo).await.unwrap();
    for t in 0..TXS_PER_PRODUCER {
        let tx = client.transaction().await.unwrap();
        for e in 0..EVENTS_PER_TX {
            let ev_type = if e % 2 == 0 { "a" } else { "b" };
            let data = format!("p{p}-t{t}-e{e}");
            tx.query_one("select pgq.insert_event('q', $1, $2)", &[&ev_type, &data])
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// The transaction label of an event's data: "p1-t2-e0" → "p1-t2", "L-3" → "L".
fn tx_label(data: &str) -> String {
    match data.rsplit_once('-') {
        Some((label, _)) if data.starts_with('p') => label.to_string(),
        _ => data.split('-').next().unwrap().to_string(),
    }
}

/// Checks what one consumer received against the committed events.
fn check_consumer(
    name: &str,
    batches: &[(BatchInfo, Vec<Ev>)],
    expected: &[String],
    registered_at: i64,
    tick_before_long_commit: i64,
) {
    let got = all_data(batches);
    let missing: Vec<_> = expected.iter().filter(|d| !got.contains(d)).collect();
    let extra: Vec<_> = got.iter().filter(|d| !expected.contains(d)).collect();
    assert!(
        got == expected,
        "{name} must get every committed event exactly once\nmissing: {missing:?}\nunexpected: {extra:?}\ngot {} events, expected {}",
        got.len(),
        expected.len()
    );
    assert!(
        !got.iter().any(|d| d.starts_with('R')),
        "{name} got events of a rolled-back transaction"
    );

    // Batches follow each other: prev tick of each = cur tick of the one before.
    let mut prev = registered_at;
    for (b, _) in batches {
        assert_eq!(
            b.prev_tick_id, prev,
            "{name}: batch {} must start at the tick the previous batch ended at",
            b.batch_id
        );
        assert!(
            b.cur_tick_id > b.prev_tick_id,
            "{name}: batch {} tick ids must increase ({} -> {})",
            b.batch_id,
            b.prev_tick_id,
            b.cur_tick_id
        );
        prev = b.cur_tick_id;
    }

    // All events of a transaction land in one batch, and share one txid.
    let mut batch_of: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut txid_of: BTreeMap<String, BTreeSet<Option<i64>>> = BTreeMap::new();
    for (b, evs) in batches {
        for e in evs {
            batch_of
                .entry(tx_label(e.data()))
                .or_default()
                .insert(b.batch_id);
            txid_of
                .entry(tx_label(e.data()))
                .or_default()
                .insert(e.txid);
        }
    }
    for (label, ids) in &batch_of {
        assert_eq!(
            ids.len(),
            1,
            "{name}: the events of transaction {label} were split over batches {ids:?}"
        );
        assert_eq!(
            txid_of[label].len(),
            1,
            "{name}: the events of transaction {label} carry different txids {:?}",
            txid_of[label]
        );
    }

    // The long transaction arrives only in a batch ending after its commit.
    let long_batch = batches
        .iter()
        .find(|(_, evs)| evs.iter().any(|e| e.data().starts_with('L')))
        .map(|(b, _)| *b)
        .unwrap_or_else(|| panic!("{name} never got the long transaction"));
    assert!(
        long_batch.cur_tick_id > tick_before_long_commit,
        "{name} got the long transaction in batch {:?}, which ends at a tick taken before its commit ({tick_before_long_commit})",
        long_batch
    );
}

async fn concurrent_producers_deliver_each_event_once_per_consumer(backend: Backend) {
    let (db, client) = queue_db(backend, &["q"]).await;
    set_queue_config(&client, "q", "ticker_max_count", "1").await;
    let registered_at = last_tick(&client, "q").await;
    register(&client, "q", "c1").await;
    register(&client, "q", "c2").await;
    let mut expected: Vec<String> = Vec::new();

    // A long transaction stays open across many ticks.
    let long = db.connect().await;
    long.batch_execute("begin").await.unwrap();
    for d in ["L-1", "L-2"] {
        insert_event(&long, "q", "a", d).await;
        expected.push(d.to_string());
    }
    let long_txid: i64 = long
        .query_one("select txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    tick(&client, "q").await;

    // A transaction that will roll back, open while others commit and ticks happen.
    let rolled_back = db.connect().await;
    rolled_back.batch_execute("begin").await.unwrap();
    for d in ["R-1", "R-2", "R-3"] {
        insert_event(&rolled_back, "q", "a", d).await;
    }

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(producer(db.conninfo.clone(), p)))
        .collect();
    for p in 0..PRODUCERS {
        for t in 0..TXS_PER_PRODUCER {
            for e in 0..EVENTS_PER_TX {
                expected.push(format!("p{p}-t{t}-e{e}"));
            }
        }
    }

    // Tick and consume (c1) while the producers run; c2 consumes only at the end.
    let mut c1 = Vec::new();
    let mut rounds = 0;
    loop {
        let done = producers.iter().all(|p| p.is_finished());
        client
            .query_one("select pgq.ticker('q')", &[])
            .await
            .unwrap();
        c1.extend(consume_all(&client, "q", "c1").await);
        rounds += 1;
        if rounds == 3 {
            insert_event(&long, "q", "b", "L-3").await;
            expected.push("L-3".to_string());
        }
        if done {
            break;
        }
    }
    for p in producers {
        p.await.expect("producer task");
    }
    if rounds < 3 {
        insert_event(&long, "q", "b", "L-3").await;
        expected.push("L-3".to_string());
    }
    rolled_back.batch_execute("rollback").await.unwrap();
    tick(&client, "q").await;
    c1.extend(consume_all(&client, "q", "c1").await);
    assert!(
        !all_data(&c1).iter().any(|d| d.starts_with('L')),
        "c1 got events of the long transaction before it committed"
    );

    // Push the long transaction far (> 100 txids) below the next snapshots' xmax, so the
    // batch has to find it outside the [xmax1, xmax2] range scan.
    let mut now_txid = 0;
    for _ in 0..120 {
        now_txid = client
            .query_one("select txid_current()", &[])
            .await
            .unwrap()
            .get(0);
    }
    assert!(
        now_txid - long_txid > 100,
        "test setup: the long transaction must be > 100 txids old, is {}",
        now_txid - long_txid
    );
    let tick_before_long_commit = tick(&client, "q").await;
    long.batch_execute("commit").await.unwrap();
    tick(&client, "q").await;
    insert_event(&client, "q", "a", "after-1").await;
    expected.push("after-1".to_string());
    tick(&client, "q").await;
    c1.extend(consume_all(&client, "q", "c1").await);
    let c2 = consume_all(&client, "q", "c2").await;

    expected.sort();
    check_consumer("c1", &c1, &expected, registered_at, tick_before_long_commit);
    check_consumer("c2", &c2, &expected, registered_at, tick_before_long_commit);
    assert!(
        c1.len() > 2,
        "c1 consumed while producing, so it must have seen several batches, saw {}",
        c1.len()
    );
}

/// Waits for the next WARNING notice of `session` (bounded: its absence is a failure).
async fn next_warning(messages: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .expect("a WARNING notice must arrive")
            .expect("session still open");
        if let AsyncMessage::Notice(n) = msg {
            if n.severity() == "WARNING" {
                return n.message().to_string();
            }
        }
    }
}

async fn batch_id_is_stable_until_finish_and_second_finish_warns(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut session = db.session().await;
    let client = &session.client;
    client
        .batch_execute("select pgq.create_queue('q')")
        .await
        .unwrap();
    register(client, "q", "c").await;
    insert_event(client, "q", "a", "x").await;
    let t = tick(client, "q").await;

    let first = next_batch(client, "q", "c")
        .await
        .expect("a batch after a tick");
    assert_eq!(first.cur_tick_id, t);
    for _ in 0..2 {
        let again = next_batch(client, "q", "c").await.expect("the open batch");
        assert_eq!(
            again, first,
            "next_batch_info must return the open batch until finish_batch"
        );
        let id: Option<i64> = client
            .query_one("select pgq.next_batch('q', 'c')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            id,
            Some(first.batch_id),
            "next_batch must return the open batch id until finish_batch"
        );
    }
    assert_eq!(finish_batch(client, first.batch_id).await, 1);
    while session.messages.try_recv().is_ok() {}
    assert_eq!(
        finish_batch(&session.client, first.batch_id).await,
        0,
        "finishing a finished batch returns 0"
    );
    let warning = next_warning(&mut session.messages).await;
    assert_eq!(
        warning,
        format!("finish_batch: batch {} not found", first.batch_id),
        "second finish_batch must warn with PgQ's text"
    );
    let client = &session.client;
    assert_eq!(
        next_batch(client, "q", "c").await,
        None,
        "no batch without a new tick"
    );
    tick(client, "q").await;
    let next = next_batch(client, "q", "c")
        .await
        .expect("batch after new tick");
    assert!(
        next.batch_id > first.batch_id,
        "a new batch gets a new id ({} after {})",
        next.batch_id,
        first.batch_id
    );
    assert_eq!(next.prev_tick_id, first.cur_tick_id);
}

async fn batch_cursor_returns_the_batch_events(backend: Backend) {
    let (_db, mut client) = queue_db(backend, &["q"]).await;
    register(&client, "q", "c").await;
    for i in 0..10 {
        let ev_type = if i % 3 == 0 { "a" } else { "b" };
        client
            .query_one(
                "select pgq.insert_event('q', $1, $2, 'x1', null, 'x3', $2)",
                &[&ev_type, &format!("d{i}")],
            )
            .await
            .unwrap();
    }
    tick(&client, "q").await;
    let b = next_batch(&client, "q", "c").await.expect("batch").batch_id;
    let all = batch_events(&client, b).await;
    assert_eq!(all.len(), 10, "get_batch_events returns all events");
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "get_batch_events is ordered by ev_id"
    );

    let tx = client.transaction().await.unwrap();
    let mut via_cursor: Vec<Ev> = tx
        .query("select * from pgq.get_batch_cursor($1, 'c3', 3)", &[&b])
        .await
        .unwrap()
        .iter()
        .map(Ev::from_row)
        .collect();
    assert_eq!(via_cursor.len(), 3, "quick_limit rows come back directly");
    via_cursor.extend(
        tx.query("fetch all from c3", &[])
            .await
            .unwrap()
            .iter()
            .map(Ev::from_row),
    );
    assert_eq!(
        via_cursor, all,
        "3-arg cursor rows plus FETCH must equal get_batch_events"
    );
    tx.batch_execute("close c3").await.unwrap();

    let only_a: Vec<Ev> = all
        .iter()
        .filter(|e| e.ev_type.as_deref() == Some("a"))
        .cloned()
        .collect();
    assert_eq!(only_a.len(), 4);
    let mut filtered: Vec<Ev> = tx
        .query(
            "select * from pgq.get_batch_cursor($1, 'c4', 2, 'ev_type = ''a''')",
            &[&b],
        )
        .await
        .unwrap()
        .iter()
        .map(Ev::from_row)
        .collect();
    assert_eq!(filtered.len(), 2, "4-arg cursor returns quick_limit rows");
    filtered.extend(
        tx.query("fetch 100 from c4", &[])
            .await
            .unwrap()
            .iter()
            .map(Ev::from_row),
    );
    assert_eq!(
        filtered, only_a,
        "4-arg cursor with extra_where must return the matching events only"
    );
    tx.commit().await.unwrap();
    assert_eq!(finish_batch(&client, b).await, 1);
}

/// `next_batch_custom(q, 'c', lag, count, interval)`; args are SQL literals.
async fn custom(client: &Client, lag: &str, count: &str, ival: &str) -> Option<BatchInfo> {
    let row = client
        .query_one(
            &format!("select * from pgq.next_batch_custom('q', 'c', {lag}, {count}, {ival})"),
            &[],
        )
        .await
        .unwrap();
    BatchInfo::from_row(&row)
}

/// Inserts `n` events and ticks with plain `ticker()` (ticker_max_count is 1).
async fn events_and_tick(client: &Client, n: usize) -> i64 {
    for i in 0..n {
        insert_event(client, "q", "a", &format!("e{i}")).await;
    }
    ticker(client, "q")
        .await
        .expect("ticker ticks with new events >= ticker_max_count")
}

async fn take(client: &Client, b: Option<BatchInfo>, what: &str) -> (BatchInfo, usize) {
    let b = b.unwrap_or_else(|| panic!("{what}: expected a batch"));
    let n = batch_events(client, b.batch_id).await.len();
    assert_eq!(finish_batch(client, b.batch_id).await, 1);
    (b, n)
}

async fn next_batch_custom_honours_thresholds(backend: Backend) {
    let (_db, client) = queue_db(backend, &["q"]).await;
    set_queue_config(&client, "q", "ticker_max_count", "1").await;
    let tw = events_and_tick(&client, 1).await;
    register(&client, "q", "c").await;
    let t1 = events_and_tick(&client, 2).await;
    let t2 = events_and_tick(&client, 2).await;
    let t3 = events_and_tick(&client, 3).await;
    assert!(tw < t1 && t1 < t2 && t2 < t3);

    // min_count: not reachable → no batch.
    assert_eq!(custom(&client, "null", "100", "null").await, None);
    // Reachable and the newest tick is within 2×min_count: the batch runs to the newest tick.
    let (b, n) = take(
        &client,
        custom(&client, "null", "5", "null").await,
        "min_count 5",
    )
    .await;
    assert_eq!((b.prev_tick_id, b.cur_tick_id), (tw, t3));
    assert_eq!(n, 7, "the min_count batch holds all 7 events");
    assert_eq!(b.cur_tick_event_seq - b.prev_tick_event_seq, 7);

    // The newest tick is far beyond min_count: the batch ends at the first tick reaching it.
    let t4 = events_and_tick(&client, 3).await;
    let t5 = events_and_tick(&client, 3).await;
    let t6 = events_and_tick(&client, 3).await;
    let (b, n) = take(
        &client,
        custom(&client, "null", "2", "null").await,
        "min_count 2",
    )
    .await;
    assert_eq!(
        (b.prev_tick_id, b.cur_tick_id, n),
        (t3, t4, 3),
        "a lagging consumer's min_count batch must stop at the first tick reaching min_count"
    );
    let (b, _) = take(
        &client,
        custom(&client, "null", "2", "null").await,
        "min_count 2",
    )
    .await;
    assert_eq!((b.prev_tick_id, b.cur_tick_id), (t4, t5));
    let (b, _) = take(&client, next_batch(&client, "q", "c").await, "plain").await;
    assert_eq!((b.prev_tick_id, b.cur_tick_id), (t5, t6));

    // min_interval, with tick times moved into the past.
    let t7 = events_and_tick(&client, 1).await;
    let t8 = events_and_tick(&client, 1).await;
    let t9 = events_and_tick(&client, 1).await;
    for (t, age) in [(t6, "10 min"), (t7, "7 min"), (t8, "4 min"), (t9, "1 min")] {
        set_tick_age(&client, "q", t, age).await;
    }
    assert_eq!(
        custom(&client, "null", "null", "'1 hour'").await,
        None,
        "9 minutes of ticks do not make a 1 hour batch"
    );
    let (b, n) = take(
        &client,
        custom(&client, "null", "null", "'2 min'").await,
        "2 min",
    )
    .await;
    assert_eq!(
        (b.prev_tick_id, b.cur_tick_id, n),
        (t6, t7, 1),
        "a lagging consumer's min_interval batch must stop at the first tick reaching it"
    );
    let (b, n) = take(
        &client,
        custom(&client, "null", "null", "'5 min'").await,
        "5 min",
    )
    .await;
    assert_eq!((b.prev_tick_id, b.cur_tick_id, n), (t7, t9, 2));

    // min_lag: a tick younger than the lag is not handed out.
    let t10 = events_and_tick(&client, 1).await;
    assert_eq!(
        custom(&client, "'1 hour'", "null", "null").await,
        None,
        "a tick younger than min_lag must not end a batch"
    );
    assert_eq!(
        next_batch(&client, "q", "c").await.map(|b| b.cur_tick_id),
        Some(t10)
    );
    // The plain call above opened the batch; a custom call returns that open batch too.
    let open = custom(&client, "'1 hour'", "null", "null").await;
    assert_eq!(
        open.map(|b| b.cur_tick_id),
        Some(t10),
        "an open batch is returned as is"
    );
    finish_batch(&client, open.unwrap().batch_id).await;
    let t11 = events_and_tick(&client, 1).await;
    set_tick_age(&client, "q", t11, "2 hours").await;
    let (b, n) = take(
        &client,
        custom(&client, "'1 hour'", "null", "null").await,
        "min_lag",
    )
    .await;
    assert_eq!(
        (b.prev_tick_id, b.cur_tick_id, n),
        (t10, t11, 1),
        "a tick older than min_lag ends the batch"
    );
}

/// A node's look: `pgfan.node_next_batch` for n1, (prev, cur) ticks and the batch's event
/// data, the batch finished; None when there is no batch.
async fn node_look(c: &Client) -> Option<(i64, i64, Vec<String>)> {
    let row = c
        .query_one(
            "select batch_id, prev_tick_id, cur_tick_id
               from pgfan.node_next_batch('n1', null, null, null)",
            &[],
        )
        .await
        .unwrap();
    let batch: i64 = row.get::<_, Option<i64>>(0)?;
    let data = c
        .query(
            "select ev_data from pgfan.node_batch_events('n1', $1) order by ev_id",
            &[&batch],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.query_one("select pgfan.node_finish_batch('n1', $1)", &[&batch])
        .await
        .unwrap();
    Some((row.get(1), row.get(2), data))
}

/// A node that finds a run of idle ticks takes them as one batch (its claim looks rarely,
/// and the ticker does not announce idle ticks), and the longer batch still holds what
/// became visible inside the run: an event whose transaction was open at the run's start.
async fn a_node_takes_a_run_of_idle_ticks_as_one_batch(backend: Backend) {
    let (db, c) = common::master_with_nodes(backend).await;
    let q = "pgfan_node_n1";
    c.query_one("select pgfan.node_register('n1')", &[])
        .await
        .unwrap();
    // Every pgq.ticker call ticks, with new events or not.
    set_queue_config(&c, q, "ticker_idle_period", "0").await;
    while node_look(&c).await.is_some() {}
    let mut producer = db.connect().await;
    let open = producer.transaction().await.unwrap();
    open.query_one("select pgq.insert_event($1, 'sql', 'late')", &[&q])
        .await
        .unwrap();
    let a = ticker(&c, q).await.expect("a tick over the new position");
    let (_, cur, data) = node_look(&c).await.expect("the batch up to tick a");
    assert_eq!((cur, data.len()), (a, 0), "the event is not committed yet");
    let b = ticker(&c, q).await.expect("an idle tick");
    open.commit().await.unwrap();
    let cc = ticker(&c, q).await.expect("another idle tick");
    assert!(a < b && b < cc);
    let (prev, cur, data) = node_look(&c).await.expect("one batch for the idle run");
    assert_eq!(
        (prev, cur, data),
        (a, cc, vec!["late".to_string()]),
        "ticks {b} and {cc} in one batch, with the event committed between them"
    );
    assert_eq!(node_look(&c).await, None);
}

both_backends!(
    a_node_takes_a_run_of_idle_ticks_as_one_batch,
    concurrent_producers_deliver_each_event_once_per_consumer,
    batch_id_is_stable_until_finish_and_second_finish_warns,
    batch_cursor_returns_the_batch_events,
    next_batch_custom_honours_thresholds,
);
