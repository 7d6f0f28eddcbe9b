//! Wake-ups on the producer's commit (issue 12, latency): the bundled `pgq.insert_event`
//! and `insert_event_raw` send `NOTIFY pgfan_ticker_wake, '<queue>'` for low-latency queues
//! (ticker_max_lag 0, not paused, not externally ticked), once per transaction however many
//! events it queued, and the pgfan ticker ticks such a queue on that notification instead of
//! at its next sequence poll, also when a tick taken while the transaction was open had
//! already counted its events (PgQ alone would call the queue idle and back off).
//!
//! Bundled core only: the PgQ extension's C insert cannot notify, and with it the ticker's
//! poll alone notices new events (tests/daemons.rs covers that on both backends). No test
//! here measures time: the ticker polls once an hour, so a tick can only come from the
//! notification, and the tests await it.

mod common;

use std::time::Duration;

use common::{
    consume_all, last_tick, queue_db, register, set_queue_config, set_tick_age, start_ticker,
    ticker_config, Backend, TestDb, PATIENCE,
};
use pgfan::db::Session;
use pgfan::signals::Control;
use tokio_postgres::{AsyncMessage, Client};

/// Payloads of the notifications on `channel` that `session` receives before `end`.
async fn payloads_until(session: &mut Session, channel: &str, end: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(PATIENCE, session.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("no {end:?} on {channel}; got {seen:?}"))
            .expect("the listening session stays open");
        if let AsyncMessage::Notification(n) = msg {
            if n.channel() != channel {
                continue;
            }
            if n.payload() == end {
                return seen;
            }
            seen.push(n.payload().to_string());
        }
    }
}

/// A session listening on `channel`.
async fn listener(db: &TestDb, channel: &str) -> Session {
    let s = db.session().await;
    s.client
        .batch_execute(&format!("listen {channel}"))
        .await
        .unwrap();
    s
}

async fn low_latency(client: &Client, q: &str) {
    set_queue_config(client, q, "ticker_max_lag", "0").await;
}

#[tokio::test]
async fn low_latency_queues_notify_the_ticker_once_per_commit() {
    let queues = ["fast", "slow", "paused", "limited", "turned"];
    let (db, client) = queue_db(Backend::Bundled, &queues).await;
    for q in ["fast", "paused", "limited", "turned"] {
        low_latency(&client, q).await;
    }
    // The wake-up is compiled into the insert functions; set_queue_config recompiles them.
    set_queue_config(&client, "turned", "ticker_max_lag", "1 second").await;
    set_queue_config(&client, "paused", "ticker_paused", "true").await;
    // A per-transaction limit sends inserts down the general (dynamic) path.
    client
        .execute(
            "update pgq.queue set queue_per_tx_limit = 1000 where queue_name = 'limited'",
            &[],
        )
        .await
        .unwrap();
    let mut wake = listener(&db, "pgfan_ticker_wake").await;
    let hundred = |q: &str| {
        format!(
            "begin;
             select pgq.insert_event('{q}', 't', 'e' || i) from generate_series(1, 100) i;
             commit;"
        )
    };
    // Commit order is notification order, so the sentinel at the end proves that nothing
    // else was sent in between.
    for sql in [
        hundred("slow"),
        hundred("paused"),
        hundred("turned"),
        hundred("fast"),
        "begin; select pgq.insert_event('fast', 't', 'gone'); rollback;".into(),
        hundred("limited"),
        "select pgq.insert_event_raw('fast', null, null, null, null, 't', 'raw',
                                     null, null, null, null)"
            .into(),
        "select pgq.insert_event('fast', 't', 'x', 'e1', null, null, null)".into(),
        "notify pgfan_ticker_wake, 'end'".into(),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }
    assert_eq!(
        payloads_until(&mut wake, "pgfan_ticker_wake", "end").await,
        ["fast", "limited", "fast", "fast"],
        "one wake-up per committed transaction on a low-latency queue: none for the default \
         lag, a paused queue, a lag set back above 0 or a rollback; the general path and \
         insert_event_raw notify too"
    );
}

/// A ticker that polls once an hour: between its first pass and the next hour, ticks come
/// only from wake-ups. Returns once it is listening, i.e. once its first pass has run.
async fn start_hourly_ticker(
    db: &TestDb,
) -> (
    tokio::sync::mpsc::UnboundedSender<Control>,
    tokio::task::JoinHandle<()>,
) {
    let mut cfg = ticker_config(db);
    cfg.poll_period = Duration::from_secs(3600);
    cfg.ticker_period = Duration::from_secs(3600);
    let started = start_ticker(cfg);
    // The ticker LISTENs before its first tick offer; once that statement has finished on
    // its session, a commit's notification reaches it.
    common::eventually(
        db,
        "select exists (select 1 from pg_stat_activity
                         where datname = current_database() and pid <> pg_backend_pid()
                           and state = 'idle' and query like '%pgq.ticker(queue_name)%')",
    )
    .await;
    started
}

/// The events of every batch `consumer` can read now.
async fn delivered(client: &Client, q: &str, consumer: &str) -> Vec<String> {
    consume_all(client, q, consumer)
        .await
        .iter()
        .flat_map(|(_, evs)| evs.iter().map(|e| e.data().to_string()))
        .collect()
}

/// The payload of the next notification on `channel` (the awaited event of a test).
async fn next_payload(session: &mut Session, channel: &str, what: &str) -> String {
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
async fn a_commit_ticks_its_queue_without_waiting_for_the_poll() {
    let (db, client) = queue_db(Backend::Bundled, &["fast"]).await;
    low_latency(&client, "fast").await;
    register(&client, "fast", "c").await;
    let (ctl, ticker) = start_hourly_ticker(&db).await;
    let mut ticks = listener(&db, "pgfan_tick").await;
    let before = last_tick(&client, "fast").await;

    // A wake-up naming no queue is ignored; the ticker stays up for the real one.
    client
        .batch_execute("notify pgfan_ticker_wake, 'no such queue'")
        .await
        .unwrap();
    client
        .batch_execute("begin; select pgq.insert_event('fast', 't', 'now'); commit")
        .await
        .unwrap();
    assert_eq!(
        next_payload(
            &mut ticks,
            "pgfan_tick",
            "the commit's wake-up ticks the queue"
        )
        .await,
        "fast"
    );
    assert!(last_tick(&client, "fast").await > before);
    assert_eq!(delivered(&client, "fast", "c").await, ["now"]);

    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}

#[tokio::test]
async fn a_commit_after_a_tick_that_counted_its_events_still_ticks() {
    let (db, client) = queue_db(Backend::Bundled, &["fast"]).await;
    low_latency(&client, "fast").await;
    set_queue_config(&client, "fast", "ticker_idle_period", "1 hour").await;
    register(&client, "fast", "c").await;
    // A fresh sequence's first value does not advance last_value (is_called flips instead),
    // so PgQ counts no new event for a queue's first insert: one event goes first.
    client
        .batch_execute("select pgq.insert_event('fast', 't', 'warm')")
        .await
        .unwrap();
    let t0 = common::tick(&client, "fast").await;
    assert_eq!(delivered(&client, "fast", "c").await, ["warm"]);
    let (ctl, ticker) = start_hourly_ticker(&db).await;
    let mut ticks = listener(&db, "pgfan_tick").await;

    let mut producer = db.connect().await;
    let tx = producer.transaction().await.unwrap();
    tx.query_one("select pgq.insert_event('fast', 't', 'late')", &[])
        .await
        .unwrap();
    // A tick while the producer is open counts its event without seeing it (what a poll
    // tick of the running ticker would do; that one is idle until its hourly poll). With
    // the tick before it an hour old, PgQ's idle back-off then declines the next tick for
    // up to two hours.
    let t1: i64 = client
        .query_one("select pgq.ticker('fast')", &[])
        .await
        .unwrap()
        .get(0);
    set_tick_age(&client, "fast", t0, "1 hour").await;
    assert_eq!(
        common::ticker(&client, "fast").await,
        None,
        "no new events since the last tick, idle back-off: PgQ would not tick"
    );
    tx.commit().await.unwrap();

    assert_eq!(
        next_payload(
            &mut ticks,
            "pgfan_tick",
            "the commit's wake-up ticks the queue"
        )
        .await,
        "fast"
    );
    assert!(last_tick(&client, "fast").await > t1);
    assert_eq!(delivered(&client, "fast", "c").await, ["late"]);

    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();
}
