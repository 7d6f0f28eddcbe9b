//! Ticker decisions operators and consumers rely on: `ticker(q)` ticks when enough events
//! (ticker_max_count) or enough time (ticker_max_lag) accumulated, backs off while the queue
//! is idle (up to ticker_idle_period), never ticks a paused queue, leaves external-ticker
//! queues to the 4-argument form, ticks after `force_tick`, and `ticker()` covers all queues.
//! Elapsed time is simulated by moving tick times into the past.

mod common;

use common::{
    db_message, insert_event, last_tick, next_batch, queue_db, register, set_queue_config,
    set_tick_age, tick, ticker, Backend,
};
use tokio_postgres::Client;

async fn insert_n(client: &Client, q: &str, n: usize) {
    for i in 0..n {
        insert_event(client, q, "t", &format!("e{i}")).await;
    }
}

async fn ticker_all(client: &Client) -> i64 {
    client
        .query_one("select pgq.ticker()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn ticks_at_max_count_or_max_lag(backend: Backend) {
    let (_db, client) = queue_db(backend, &["q"]).await;
    set_queue_config(&client, "q", "ticker_max_count", "5").await;
    set_queue_config(&client, "q", "ticker_max_lag", "1 min").await;
    set_queue_config(&client, "q", "ticker_idle_period", "1 hour").await;
    let t0 = tick(&client, "q").await;

    insert_n(&client, "q", 4).await;
    assert_eq!(
        ticker(&client, "q").await,
        None,
        "4 new events < ticker_max_count 5 and lag < max_lag: no tick"
    );
    insert_n(&client, "q", 1).await;
    let t1 = ticker(&client, "q")
        .await
        .expect("5 new events reach ticker_max_count: tick");
    assert!(t1 > t0);

    insert_n(&client, "q", 1).await;
    assert_eq!(
        ticker(&client, "q").await,
        None,
        "1 new event, fresh tick: no tick"
    );
    set_tick_age(&client, "q", t1, "50 s").await;
    assert_eq!(
        ticker(&client, "q").await,
        None,
        "lag 50 s < max_lag 1 min: no tick"
    );
    set_tick_age(&client, "q", t1, "2 min").await;
    let t2 = ticker(&client, "q")
        .await
        .expect("lag over ticker_max_lag with new events: tick");
    assert!(t2 > t1);
    assert_eq!(last_tick(&client, "q").await, t2);
}

async fn idle_queue_backs_off(backend: Backend) {
    let (_db, client) = queue_db(backend, &["q"]).await;
    set_queue_config(&client, "q", "ticker_max_lag", "1 min").await;
    set_queue_config(&client, "q", "ticker_idle_period", "10 min").await;
    let t0 = last_tick(&client, "q").await;
    let t1 = tick(&client, "q").await;

    // No new events from here on. lag = age of the last tick, gap = time between the last two.
    let idle = |older: i64, newer: i64, older_age: &'static str, newer_age: &'static str| {
        let client = &client;
        async move {
            set_tick_age(client, "q", older, older_age).await;
            set_tick_age(client, "q", newer, newer_age).await;
            ticker(client, "q").await
        }
    };
    assert_eq!(
        idle(t0, t1, "80 s", "20 s").await,
        None,
        "idle, lag 20 s < max_lag/2: no tick"
    );
    assert_eq!(
        idle(t0, t1, "105 s", "45 s").await,
        None,
        "idle, lag 45 s < 2 x gap 60 s: no tick"
    );
    let t2 = idle(t0, t1, "210 s", "150 s")
        .await
        .expect("idle, lag 150 s >= 2 x gap 60 s: tick");
    // Back-off: the gap is now larger, so the next idle tick waits longer.
    assert_eq!(
        idle(t1, t2, "400 s", "200 s").await,
        None,
        "idle, lag 200 s < 2 x gap 200 s: no tick (back-off)"
    );
    let t3 = idle(t1, t2, "650 s", "450 s")
        .await
        .expect("idle, lag 450 s >= 2 x gap 200 s: tick");
    // The back-off is capped by ticker_idle_period.
    assert_eq!(
        idle(t2, t3, "2 hours", "9 min").await,
        None,
        "idle, lag 9 min < idle_period 10 min and < 2 x gap: no tick"
    );
    let t4 = idle(t2, t3, "2 hours", "11 min")
        .await
        .expect("idle, lag 11 min >= ticker_idle_period: tick");
    assert!(t0 < t1 && t1 < t2 && t2 < t3 && t3 < t4);
}

async fn paused_queue_never_ticks(backend: Backend) {
    let (_db, client) = queue_db(backend, &["p"]).await;
    set_queue_config(&client, "p", "ticker_max_count", "1").await;
    set_queue_config(&client, "p", "ticker_paused", "true").await;
    let t0 = last_tick(&client, "p").await;
    insert_n(&client, "p", 3).await;
    assert_eq!(
        ticker_all(&client).await,
        0,
        "ticker() skips a paused queue"
    );
    let err = client
        .query_one("select pgq.ticker('p')", &[])
        .await
        .expect_err("ticker(q) on a paused queue must refuse");
    assert_eq!(db_message(&err), "Ticker has been paused for this queue");
    client
        .query_one("select pgq.force_tick('p')", &[])
        .await
        .unwrap();
    set_tick_age(&client, "p", t0, "1 day").await;
    assert_eq!(ticker_all(&client).await, 0);
    assert_eq!(
        last_tick(&client, "p").await,
        t0,
        "a paused queue gets no tick, whatever force_tick, events or lag say"
    );

    set_queue_config(&client, "p", "ticker_paused", "false").await;
    let t1 = ticker(&client, "p").await.expect("unpaused queue ticks");
    assert!(t1 > t0);
}

async fn seq_value(client: &Client, q: &str, column: &str) -> i64 {
    client
        .query_one(
            &format!("select pgq.seq_getval({column}) from pgq.queue where queue_name = $1"),
            &[&q],
        )
        .await
        .unwrap()
        .get(0)
}

async fn external_ticker_ticks_only_via_the_4_arg_form(backend: Backend) {
    let (_db, client) = queue_db(backend, &["ext", "plain"]).await;
    set_queue_config(&client, "ext", "external_ticker", "true").await;
    register(&client, "ext", "c").await;
    let t0 = last_tick(&client, "ext").await;
    insert_n(&client, "ext", 2).await;

    let err = client
        .query_one("select pgq.ticker('ext')", &[])
        .await
        .expect_err("ticker(q) on an external-ticker queue must refuse");
    assert_eq!(db_message(&err), "This queue has external tick source.");
    client
        .query_one("select pgq.force_tick('ext')", &[])
        .await
        .unwrap();
    ticker_all(&client).await;
    assert_eq!(
        last_tick(&client, "ext").await,
        t0,
        "ticker() and force_tick leave an external-ticker queue alone"
    );

    let seq = seq_value(&client, "ext", "queue_event_seq").await;
    let id: i64 = client
        .query_one(
            "select pgq.ticker('ext', 100, now() - interval '1 min', $1)",
            &[&seq],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 100, "the 4-argument ticker returns the given tick id");
    let row = client
        .query_one(
            "select tick_event_seq, extract(epoch from now() - tick_time)::float8
               from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue
              where q.queue_name = 'ext' and t.tick_id = 100",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        seq,
        "tick_event_seq is the given value"
    );
    let age: f64 = row.get(1);
    assert!(
        (60.0..120.0).contains(&age),
        "tick_time is the given time (1 min ago), is {age} s ago"
    );
    assert_eq!(
        seq_value(&client, "ext", "queue_tick_seq").await,
        100,
        "the tick sequence follows the external tick id"
    );
    let b = next_batch(&client, "ext", "c")
        .await
        .expect("batch up to the external tick");
    assert_eq!((b.prev_tick_id, b.cur_tick_id), (t0, 100));
    let n: i64 = client
        .query_one(
            "select count(*) from pgq.get_batch_events($1)",
            &[&b.batch_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the external tick's batch holds the 2 events");

    client
        .query_one("select pgq.ticker('ext', 101, now(), $1)", &[&(seq + 1000)])
        .await
        .unwrap();
    assert_eq!(
        seq_value(&client, "ext", "queue_event_seq").await,
        seq + 1000
    );
    client
        .query_one("select pgq.ticker('ext', 102, now(), 1)", &[])
        .await
        .unwrap();
    assert_eq!(
        seq_value(&client, "ext", "queue_event_seq").await,
        seq + 1000,
        "the event sequence never goes back"
    );

    let err = client
        .query_one("select pgq.ticker('plain', 5, now(), 1)", &[])
        .await
        .expect_err("the 4-argument ticker on a normal queue must refuse");
    assert_eq!(
        db_message(&err),
        "queue not found or ticker disabled: plain"
    );
}

async fn force_tick_makes_the_next_ticker_tick(backend: Backend) {
    let (_db, client) = queue_db(backend, &["q"]).await;
    set_queue_config(&client, "q", "ticker_max_lag", "1 hour").await;
    set_queue_config(&client, "q", "ticker_idle_period", "1 hour").await;
    let t0 = tick(&client, "q").await;
    insert_n(&client, "q", 1).await;
    assert_eq!(
        ticker(&client, "q").await,
        None,
        "1 event < 500, fresh tick: no tick"
    );
    let last: i64 = client
        .query_one("select pgq.force_tick('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        last, t0,
        "force_tick returns the last tick id, without ticking"
    );
    let t1 = ticker(&client, "q")
        .await
        .expect("ticker ticks after force_tick");
    assert!(t1 > t0);
    assert_eq!(ticker(&client, "q").await, None, "idle and fresh: no tick");
    client
        .query_one("select pgq.force_tick('q')", &[])
        .await
        .unwrap();
    let t2 = ticker(&client, "q")
        .await
        .expect("ticker ticks after force_tick on an idle queue");
    assert!(t2 > t1);
}

async fn ticker_without_arguments_ticks_all_eligible_queues(backend: Backend) {
    let queues = ["q1", "q2", "paused", "ext"];
    let (_db, client) = queue_db(backend, &queues).await;
    for q in queues {
        set_queue_config(&client, q, "ticker_max_count", "1").await;
        set_queue_config(&client, q, "ticker_max_lag", "1 hour").await;
        set_queue_config(&client, q, "ticker_idle_period", "1 hour").await;
    }
    set_queue_config(&client, "paused", "ticker_paused", "true").await;
    set_queue_config(&client, "ext", "external_ticker", "true").await;
    for q in queues {
        insert_n(&client, q, 2).await;
    }
    let before: Vec<i64> = tick_counts(&client, &queues).await;
    assert_eq!(ticker_all(&client).await, 2, "ticker() ticks q1 and q2");
    let after = tick_counts(&client, &queues).await;
    assert_eq!(
        after,
        vec![before[0] + 1, before[1] + 1, before[2], before[3]],
        "one new tick each for q1 and q2, none for the paused and the external queue"
    );
    assert_eq!(
        ticker_all(&client).await,
        0,
        "nothing new and fresh ticks: ticker() ticks nothing"
    );
}

async fn tick_count(client: &Client, q: &str) -> i64 {
    client
        .query_one(
            "select count(*) from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue
              where q.queue_name = $1",
            &[&q],
        )
        .await
        .unwrap()
        .get(0)
}

async fn tick_counts(client: &Client, queues: &[&str]) -> Vec<i64> {
    let mut v = Vec::new();
    for q in queues {
        v.push(tick_count(client, q).await);
    }
    v
}

both_backends!(
    ticks_at_max_count_or_max_lag,
    idle_queue_backs_off,
    paused_queue_never_ticks,
    external_ticker_ticks_only_via_the_4_arg_form,
    force_tick_makes_the_next_ticker_tick,
    ticker_without_arguments_ticks_all_eligible_queues,
);
