//! Retries consumers rely on: `event_retry` (seconds and timestamp forms) and `batch_retry`
//! park events in the retry queue; once due, `maint_retry_events` puts them back so that
//! only the consumer that retried them gets them again, with `ev_retry` counted up and the
//! original `ev_id`/`ev_time`. Retrying twice is a no-op, events not yet due stay parked,
//! and unregistering a consumer drops its parked events.

mod common;

use common::{
    all_data, batch_events, consume_all, db_message, finish_batch, insert_event, next_batch,
    queue_db, register, tick, Backend, Ev,
};
use tokio_postgres::Client;

/// Calls `maint_retry_events()` until it returns 0; the per-call counts (without the 0).
async fn maint_retry(client: &Client) -> Vec<i32> {
    let mut counts = Vec::new();
    loop {
        let n: i32 = client
            .query_one("select pgq.maint_retry_events()", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return counts;
        }
        assert!(counts.len() < 100, "maint_retry_events never returns 0");
        counts.push(n);
    }
}

/// Makes every parked event due, as if its retry time had passed.
async fn make_due(client: &Client) {
    client
        .execute(
            "update pgq.retry_queue set ev_retry_after = now() - interval '1 s'",
            &[],
        )
        .await
        .unwrap();
}

async fn event_retry_secs(client: &Client, batch: i64, ev: i64, secs: i32) -> i32 {
    client
        .query_one(
            "select pgq.event_retry($1, $2, $3::int4)",
            &[&batch, &ev, &secs],
        )
        .await
        .unwrap_or_else(|e| panic!("event_retry({batch}, {ev}, {secs}) failed: {e:?}"))
        .get(0)
}

async fn sub_id(client: &Client, consumer: &str) -> i32 {
    client
        .query_one(
            "select s.sub_id from pgq.subscription s join pgq.consumer c on c.co_id = s.sub_consumer
              where c.co_name = $1",
            &[&consumer],
        )
        .await
        .unwrap()
        .get(0)
}

async fn retry_rows(client: &Client, owner: i32) -> i64 {
    client
        .query_one(
            "select count(*) from pgq.retry_queue where ev_owner = $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0)
}

fn find<'a>(evs: &'a [Ev], data: &str) -> &'a Ev {
    evs.iter()
        .find(|e| e.data() == data)
        .unwrap_or_else(|| panic!("event {data} not in batch {evs:?}"))
}

async fn setup(backend: Backend, events: &[&str]) -> (common::TestDb, Client, i64, Vec<Ev>) {
    let (db, client) = queue_db(backend, &["q"]).await;
    register(&client, "q", "c1").await;
    register(&client, "q", "c2").await;
    for d in events {
        insert_event(&client, "q", "t", d).await;
    }
    tick(&client, "q").await;
    let b = next_batch(&client, "q", "c1").await.expect("c1 batch");
    let evs = batch_events(&client, b.batch_id).await;
    assert_eq!(evs.len(), events.len());
    (db, client, b.batch_id, evs)
}

async fn retried_event_returns_only_to_its_consumer(backend: Backend) {
    let (_db, client, b, evs) = setup(backend, &["e1", "e2", "e3"]).await;
    let e2 = find(&evs, "e2").clone();
    assert_eq!(e2.retry, None, "a fresh event has ev_retry NULL");
    assert_eq!(event_retry_secs(&client, b, e2.id, 3600).await, 1);
    assert_eq!(
        event_retry_secs(&client, b, e2.id, 3600).await,
        0,
        "retrying an event already in the retry queue returns 0"
    );
    let err = client
        .query_one("select pgq.event_retry($1, 999999999::int8, 5)", &[&b])
        .await
        .expect_err("retrying an event not in the batch must fail");
    assert_eq!(db_message(&err), "event not found");
    assert_eq!(finish_batch(&client, b).await, 1);

    assert_eq!(
        maint_retry(&client).await,
        Vec::<i32>::new(),
        "an event due in an hour must not be moved back yet"
    );
    tick(&client, "q").await;
    let early = consume_all(&client, "q", "c1").await;
    assert!(
        all_data(&early).is_empty(),
        "c1 must not see the retried event before it is due: {early:?}"
    );

    make_due(&client).await;
    assert_eq!(maint_retry(&client).await, vec![1], "one due event moved");
    let left: i64 = client
        .query_one("select count(*) from pgq.retry_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "moved events leave the retry queue");
    tick(&client, "q").await;

    let again = consume_all(&client, "q", "c1").await;
    let back: Vec<&Ev> = again.iter().flat_map(|(_, evs)| evs).collect();
    assert_eq!(
        back.len(),
        1,
        "c1 gets exactly the retried event back: {back:?}"
    );
    assert_eq!(back[0].id, e2.id, "the retried event keeps its ev_id");
    assert_eq!(back[0].time, e2.time, "the retried event keeps its ev_time");
    assert_eq!(back[0].data, e2.data);
    assert_eq!(back[0].retry, Some(1), "ev_retry counts the retry");

    let c2 = consume_all(&client, "q", "c2").await;
    assert_eq!(
        all_data(&c2),
        vec!["e1", "e2", "e3"],
        "c2 gets each event once and never c1's retried copy"
    );
    assert!(c2.iter().flat_map(|(_, e)| e).all(|e| e.retry.is_none()));
}

async fn retry_at_timestamp_counts_up(backend: Backend) {
    let (_db, client, b, evs) = setup(backend, &["only"]).await;
    let ev = evs[0].clone();
    let r: i32 = client
        .query_one(
            "select pgq.event_retry($1, $2, now() + interval '1 hour')",
            &[&b, &ev.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, 1);
    let owner = sub_id(&client, "c1").await;
    let row = client
        .query_one(
            "select ev_owner, ev_retry, ev_txid, ev_id,
                    extract(epoch from ev_retry_after - now())::float8 as due_in
               from pgq.retry_queue",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<i32>>("ev_owner"),
        Some(owner),
        "owned by c1's subscription"
    );
    assert_eq!(row.get::<_, Option<i32>>("ev_retry"), Some(1));
    assert_eq!(row.get::<_, Option<i64>>("ev_txid"), None);
    assert_eq!(row.get::<_, i64>("ev_id"), ev.id);
    let due_in: f64 = row.get("due_in");
    assert!(
        (3000.0..=3600.0).contains(&due_in),
        "retry time must be the given timestamp (an hour ahead), is {due_in} s ahead"
    );
    assert_eq!(finish_batch(&client, b).await, 1);
    assert!(maint_retry(&client).await.is_empty(), "not due yet");

    make_due(&client).await;
    assert_eq!(maint_retry(&client).await, vec![1]);
    tick(&client, "q").await;
    let b2 = next_batch(&client, "q", "c1")
        .await
        .expect("batch with the retried event");
    let evs2 = batch_events(&client, b2.batch_id).await;
    assert_eq!(evs2.len(), 1);
    assert_eq!((evs2[0].id, evs2[0].retry), (ev.id, Some(1)));

    // Retry the retried event again, due immediately (0 seconds).
    assert_eq!(event_retry_secs(&client, b2.batch_id, ev.id, 0).await, 1);
    assert_eq!(finish_batch(&client, b2.batch_id).await, 1);
    assert_eq!(
        maint_retry(&client).await,
        vec![1],
        "a 0-second retry is due at once"
    );
    tick(&client, "q").await;
    let third = consume_all(&client, "q", "c1").await;
    let evs3: Vec<&Ev> = third.iter().flat_map(|(_, e)| e).collect();
    assert_eq!(evs3.len(), 1);
    assert_eq!(
        (evs3[0].id, evs3[0].retry),
        (ev.id, Some(2)),
        "second retry counts ev_retry up to 2"
    );
}

async fn batch_retry_parks_the_rest_of_the_batch(backend: Backend) {
    let (_db, client, b, evs) = setup(backend, &["a", "b", "c", "d"]).await;
    assert_eq!(event_retry_secs(&client, b, find(&evs, "b").id, 0).await, 1);
    let n: i32 = client
        .query_one("select pgq.batch_retry($1, 0)", &[&b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "batch_retry parks the events not yet retried");
    let n: i32 = client
        .query_one("select pgq.batch_retry($1, 0)", &[&b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a second batch_retry finds nothing left to park");
    assert_eq!(finish_batch(&client, b).await, 1);
    assert_eq!(maint_retry(&client).await.iter().sum::<i32>(), 4);
    tick(&client, "q").await;
    let c1 = consume_all(&client, "q", "c1").await;
    assert_eq!(all_data(&c1), vec!["a", "b", "c", "d"]);
    assert!(
        c1.iter().flat_map(|(_, e)| e).all(|e| e.retry == Some(1)),
        "every event came back with ev_retry 1: {c1:?}"
    );
    let c2 = consume_all(&client, "q", "c2").await;
    assert_eq!(
        all_data(&c2),
        vec!["a", "b", "c", "d"],
        "c2 only sees the originals"
    );

    // The mover works in small steps.
    for i in 0..25 {
        insert_event(&client, "q", "t", &format!("m{i:02}")).await;
    }
    tick(&client, "q").await;
    let b = next_batch(&client, "q", "c1")
        .await
        .expect("batch")
        .batch_id;
    let n: i32 = client
        .query_one("select pgq.batch_retry($1, 0)", &[&b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 25);
    assert_eq!(finish_batch(&client, b).await, 1);
    let steps = maint_retry(&client).await;
    assert_eq!(
        steps.iter().sum::<i32>(),
        25,
        "all 25 moved back: {steps:?}"
    );
    assert!(
        steps.len() >= 3 && steps.iter().all(|&n| n <= 10),
        "maint_retry_events moves at most 10 per call: {steps:?}"
    );
    tick(&client, "q").await;
    let back = consume_all(&client, "q", "c1").await;
    assert_eq!(all_data(&back).len(), 25);
}

async fn unregister_drops_the_consumers_retry_rows(backend: Backend) {
    let (_db, client, b1, evs) = setup(backend, &["x"]).await;
    let ev = evs[0].id;
    assert_eq!(event_retry_secs(&client, b1, ev, 3600).await, 1);
    assert_eq!(finish_batch(&client, b1).await, 1);
    let b2 = next_batch(&client, "q", "c2")
        .await
        .expect("c2 batch")
        .batch_id;
    assert_eq!(event_retry_secs(&client, b2, ev, 3600).await, 1);
    assert_eq!(finish_batch(&client, b2).await, 1);
    let (s1, s2) = (sub_id(&client, "c1").await, sub_id(&client, "c2").await);
    assert_eq!(
        (retry_rows(&client, s1).await, retry_rows(&client, s2).await),
        (1, 1)
    );

    let n: i32 = client
        .query_one("select pgq.unregister_consumer('q', 'c1')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(retry_rows(&client, s1).await, 0, "c1's retry rows are gone");
    assert_eq!(retry_rows(&client, s2).await, 1, "c2's retry row stays");

    make_due(&client).await;
    assert_eq!(
        maint_retry(&client).await,
        vec![1],
        "only c2's event is moved back"
    );
    tick(&client, "q").await;
    let c2 = consume_all(&client, "q", "c2").await;
    let back: Vec<&Ev> = c2.iter().flat_map(|(_, e)| e).collect();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].id, back[0].retry), (ev, Some(1)));
}

both_backends!(
    retried_event_returns_only_to_its_consumer,
    retry_at_timestamp_counts_up,
    batch_retry_parks_the_rest_of_the_batch,
    unregister_drops_the_consumers_retry_rows,
);
