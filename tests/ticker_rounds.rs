//! The pgfan ticker's rounds and fast poll (issue 14, an idle ticker costs what pgqd costs).
//!
//! Once per `ticker_period` the ticker offers ticks only to the queues whose tick PgQ's
//! rules could allow, read from the queue and tick rows in one statement instead of one
//! `pgq.ticker(queue)` call per queue: this must tick exactly the queues `pgq.ticker()`
//! ticks, on both backends. Between rounds it polls only active queues (woken, or whose
//! sequence moved, within a ticker period): a queue woken by a commit is then also polled
//! for events of producers that do not notify.
//!
//! No test measures time: the tickers here run one round an hour, so a tick can only come
//! from the round awaited at start, a wake-up or the fast poll. Elapsed time is simulated
//! by moving tick times into the past, with margins of at least ten seconds.

mod common;

use std::time::Duration;

use common::{
    insert_event, last_tick, queue_db, set_queue_config, set_tick_age, start_ticker, tick,
    ticker_config, Backend, TestDb, PATIENCE,
};
use pgfan::signals::Control;
use tokio_postgres::{AsyncMessage, Client};

/// Queue states, with whether `pgq.ticker` ticks each (PgQ's defaults unless set here:
/// max_count 500, max_lag 3 s, idle_period 1 min).
const CASES: &[(&str, bool)] = &[
    // Only the tick create_queue made: no previous tick to back off from.
    ("fresh", true),
    // One new event, the last tick just made, max_lag 1 min.
    ("new_young", false),
    // One new event, the last tick 10 s old: past max_lag.
    ("new_lagging", true),
    // Three new events, max_count 3, max_lag 1 hour.
    ("new_many", true),
    // Idle, last tick 30 s old after a 20 s gap: under twice the gap and the idle period.
    ("idle_backoff", false),
    // Idle, last tick 20 s old after a 4 s gap: twice the gap passed.
    ("idle_twice_gap", true),
    // Idle, last tick 75 s old after a 200 s gap: the idle period passed.
    ("idle_period", true),
    // Idle, max_lag 1 hour, last tick 10 min old after a 2 min gap: under max_lag / 2.
    ("idle_half_lag", false),
    // Paused, with an event: never ticked.
    ("paused", false),
];

/// Makes the queues of [`CASES`] in `client`'s database.
async fn make_cases(client: &Client) {
    for (q, _) in CASES {
        client
            .query_one("select pgq.create_queue($1)", &[q])
            .await
            .unwrap();
    }
    // Two ticks with the given ages: the gap between them, and the last one's lag.
    let ticks = |q: &'static str, older: &'static str, newer: &'static str| async move {
        let t1 = last_tick(client, q).await;
        let t2 = tick(client, q).await;
        set_tick_age(client, q, t1, older).await;
        set_tick_age(client, q, t2, newer).await;
    };
    set_queue_config(client, "new_young", "ticker_max_lag", "1 min").await;
    ticks("new_young", "10 s", "0 s").await;
    insert_event(client, "new_young", "t", "e").await;
    ticks("new_lagging", "20 s", "10 s").await;
    insert_event(client, "new_lagging", "t", "e").await;
    set_queue_config(client, "new_many", "ticker_max_count", "3").await;
    set_queue_config(client, "new_many", "ticker_max_lag", "1 hour").await;
    ticks("new_many", "10 s", "0 s").await;
    for _ in 0..3 {
        insert_event(client, "new_many", "t", "e").await;
    }
    ticks("idle_backoff", "50 s", "30 s").await;
    ticks("idle_twice_gap", "24 s", "20 s").await;
    ticks("idle_period", "275 s", "75 s").await;
    set_queue_config(client, "idle_half_lag", "ticker_max_lag", "1 hour").await;
    ticks("idle_half_lag", "12 min", "10 min").await;
    insert_event(client, "paused", "t", "e").await;
    set_queue_config(client, "paused", "ticker_paused", "true").await;
}

/// The newest tick id of every case queue.
async fn newest_ticks(client: &Client) -> Vec<i64> {
    let mut v = Vec::new();
    for (q, _) in CASES {
        v.push(last_tick(client, q).await);
    }
    v
}

/// The case queues whose newest tick changed between `before` and now.
async fn ticked_since(client: &Client, before: &[i64]) -> Vec<&'static str> {
    let now = newest_ticks(client).await;
    CASES
        .iter()
        .zip(before.iter().zip(&now))
        .filter(|(_, (b, n))| b != n)
        .map(|((q, _), _)| *q)
        .collect()
}

/// A pgfan ticker with one round an hour, returned once its first round has run.
async fn start_hourly_ticker(
    db: &TestDb,
) -> (
    tokio::sync::mpsc::UnboundedSender<Control>,
    tokio::task::JoinHandle<()>,
) {
    let mut cfg = ticker_config(db);
    cfg.ticker_period = Duration::from_secs(3600);
    cfg.poll_period = Duration::from_millis(10);
    let started = start_ticker(cfg);
    // The ticker prepares its statement with the text pgq.ticker(queue_name) after its
    // first round, so once that is what its session last ran, the round has ticked what it
    // ticks. With no queue active, nothing but the (read-only) start-up sweep follows it
    // for an hour.
    common::eventually(
        db,
        "select exists (select 1 from pg_stat_activity
                         where datname = current_database() and pid <> pg_backend_pid()
                           and state = 'idle' and query like '%pgq.ticker(queue_name)%')",
    )
    .await;
    started
}

async fn the_round_ticks_what_pgq_ticker_ticks(backend: Backend) {
    let expected: Vec<&str> = CASES.iter().filter(|c| c.1).map(|c| c.0).collect();

    // Reference: PgQ's own ticker() over the same states.
    let (_reference, client) = queue_db(backend, &[]).await;
    make_cases(&client).await;
    let before = newest_ticks(&client).await;
    client.query_one("select pgq.ticker()", &[]).await.unwrap();
    assert_eq!(
        ticked_since(&client, &before).await,
        expected,
        "the cases are what their comments say"
    );

    let (db, client) = queue_db(backend, &[]).await;
    make_cases(&client).await;
    let before = newest_ticks(&client).await;
    let (ctl, ticker) = start_hourly_ticker(&db).await;
    assert_eq!(
        ticked_since(&client, &before).await,
        expected,
        "the round ticks exactly the queues pgq.ticker() ticks"
    );
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

/// The payload of the next notification on `channel`.
async fn next_payload(session: &mut pgfan::db::Session, channel: &str, what: &str) -> String {
    loop {
        let msg = tokio::time::timeout(PATIENCE, session.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no notification on {channel}"))
            .expect("the listening session stays open");
        if let AsyncMessage::Notification(n) = msg {
            if n.channel() == channel {
                return n.payload().to_string();
            }
        }
    }
}

#[tokio::test]
async fn a_woken_queue_is_polled_for_events_that_do_not_notify() {
    let (db, client) = queue_db(Backend::Bundled, &["fast"]).await;
    set_queue_config(&client, "fast", "ticker_max_lag", "0").await;
    // One event first: a fresh sequence's first value does not advance last_value, so
    // PgQ counts no new event for a queue's first insert.
    insert_event(&client, "fast", "t", "warm").await;
    tick(&client, "fast").await;
    let (ctl, ticker) = start_hourly_ticker(&db).await;
    let ticks = db.session().await;
    ticks
        .client
        .batch_execute("listen pgfan_tick")
        .await
        .unwrap();
    let mut ticks = ticks;

    // A notifying insert wakes the ticker, which ticks the queue and keeps it active.
    insert_event(&client, "fast", "t", "notifying").await;
    let woken = last_tick(&client, "fast").await;
    assert_eq!(
        next_payload(&mut ticks, "pgfan_tick", "the wake-up ticks").await,
        "fast"
    );
    // An insert straight into the event table (as COPY producers write) sends nothing;
    // only the fast poll of the active queue can notice it before the hourly round.
    let table: String = client
        .query_one("select pgq.current_event_table('fast')", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            &format!(
                "insert into {table} (ev_time, ev_type, ev_data) values (now(), 't', 'silent')"
            ),
            &[],
        )
        .await
        .unwrap();
    loop {
        assert_eq!(
            next_payload(&mut ticks, "pgfan_tick", "the fast poll ticks").await,
            "fast"
        );
        let events: i64 = client
            .query_one(
                "select count(*) from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue
                  where q.queue_name = 'fast' and t.tick_id > $1
                    and t.tick_event_seq >= pg_sequence_last_value(q.queue_event_seq::regclass)",
                &[&woken],
            )
            .await
            .unwrap()
            .get(0);
        if events > 0 {
            break;
        }
    }
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

/// A queue's first event cannot be told apart by positions from the idle ticks after it
/// (both read position 1), so the round announces it: once, not at every idle tick, which
/// would wake every listener of the database at each one (a fresh fleet's 1,000 node queues
/// after one job each). The announced tick covers the event.
async fn a_first_event_is_announced_once(backend: Backend) {
    let (db, client) = queue_db(backend, &["one"]).await;
    // A round every 20 ms; the queue due at every round whose last tick is 0.5 s old, with
    // or without new events; a lag of 1 s, so an insert sends no wake-up.
    set_queue_config(&client, "one", "ticker_max_lag", "1 second").await;
    set_queue_config(&client, "one", "ticker_idle_period", "0").await;
    common::register(&client, "one", "c").await;
    common::consume_all(&client, "one", "c").await;
    let mut ticks = db.session().await;
    ticks
        .client
        .batch_execute("listen pgfan_tick")
        .await
        .unwrap();
    insert_event(&client, "one", "t", "first").await;
    let before = last_tick(&client, "one").await;
    let mut cfg = ticker_config(&db);
    cfg.ticker_period = Duration::from_millis(20);
    let (ctl, ticker) = start_ticker(cfg);
    assert_eq!(
        next_payload(&mut ticks, "pgfan_tick", "the first event's tick").await,
        "one"
    );
    let covered = common::all_data(&common::consume_all(&client, "one", "c").await);
    assert_eq!(
        covered,
        vec!["first".to_string()],
        "the announced tick covers it"
    );
    // Four idle ticks later, still the one announcement.
    common::eventually(
        &db,
        &format!(
            "select count(*) >= 5 from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue
              where q.queue_name = 'one' and t.tick_id > {before}"
        ),
    )
    .await;
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
    let mut more = 0;
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(200), ticks.messages.recv()).await
    {
        if matches!(msg, AsyncMessage::Notification(n) if n.channel() == "pgfan_tick") {
            more += 1;
        }
    }
    assert_eq!(
        more, 0,
        "idle ticks after the first event are not announced"
    );
}

both_backends!(
    the_round_ticks_what_pgq_ticker_ticks,
    a_first_event_is_announced_once
);
