//! The pgq_ext exactly-once ledger remote consumers rely on: `set_batch_done` records a
//! batch once (a second call says false), `is_batch_done` reports it, per consumer and
//! subconsumer; the event and tick variants likewise. Together with stable batch ids this
//! makes processing into another database exactly-once across a crash between the remote
//! commit and `finish_batch`.

mod common;

use common::{batch_events, finish_batch, insert_event, next_batch, queue_db, register, tick};
use common::{Backend, TestDb};
use pgfan::install::{self, Role};
use tokio_postgres::Client;

async fn flag(client: &Client, sql: &str) -> bool {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql} failed: {e:?}"))
        .get(0)
}

async fn last_tick(client: &Client, sql: &str) -> Option<i64> {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn batch_ledger(backend: Backend) {
    let db = TestDb::new(backend).await;
    let c = db.connect().await;
    assert!(!flag(&c, "select pgq_ext.is_batch_done('c', 10)").await);
    assert!(flag(&c, "select pgq_ext.set_batch_done('c', 10)").await);
    assert!(
        !flag(&c, "select pgq_ext.set_batch_done('c', 10)").await,
        "set_batch_done of a recorded batch returns false"
    );
    assert!(flag(&c, "select pgq_ext.is_batch_done('c', 10)").await);
    assert!(!flag(&c, "select pgq_ext.is_batch_done('c', 11)").await);
    assert!(!flag(&c, "select pgq_ext.is_batch_done('other', 10)").await);
    assert!(flag(&c, "select pgq_ext.set_batch_done('c', 11)").await);
    assert!(flag(&c, "select pgq_ext.is_batch_done('c', 11)").await);

    // Subconsumers keep their own position, apart from the main consumer ('').
    assert!(
        !flag(&c, "select pgq_ext.is_batch_done('c', 's1', 10)").await,
        "a subconsumer does not share the main consumer's batches"
    );
    assert!(flag(&c, "select pgq_ext.set_batch_done('c', 's1', 10)").await);
    assert!(!flag(&c, "select pgq_ext.set_batch_done('c', 's1', 10)").await);
    assert!(flag(&c, "select pgq_ext.is_batch_done('c', 's1', 10)").await);
    assert!(!flag(&c, "select pgq_ext.is_batch_done('c', 's2', 10)").await);
    assert!(
        flag(&c, "select pgq_ext.is_batch_done('c', '', 11)").await,
        "the 2-argument form is subconsumer ''"
    );
}

async fn event_and_tick_ledger(backend: Backend) {
    let db = TestDb::new(backend).await;
    let c = db.connect().await;
    assert!(!flag(&c, "select pgq_ext.is_event_done('c', 20, 1)").await);
    assert!(flag(&c, "select pgq_ext.set_event_done('c', 20, 1)").await);
    assert!(
        !flag(&c, "select pgq_ext.set_event_done('c', 20, 1)").await,
        "set_event_done of a recorded event returns false"
    );
    assert!(flag(&c, "select pgq_ext.is_event_done('c', 20, 1)").await);
    assert!(!flag(&c, "select pgq_ext.is_event_done('c', 20, 2)").await);
    assert!(flag(&c, "select pgq_ext.set_event_done('c', 20, 2)").await);
    assert!(flag(&c, "select pgq_ext.is_event_done('c', 20, 2)").await);

    assert!(!flag(&c, "select pgq_ext.is_event_done('c', 's1', 20, 1)").await);
    assert!(flag(&c, "select pgq_ext.set_event_done('c', 's1', 20, 1)").await);
    assert!(flag(&c, "select pgq_ext.is_event_done('c', 's1', 20, 1)").await);

    // A new batch replaces the previous batch's event rows.
    assert!(flag(&c, "select pgq_ext.set_event_done('c', 21, 5)").await);
    assert!(flag(&c, "select pgq_ext.is_event_done('c', 21, 5)").await);
    let old: i64 = c
        .query_one(
            "select count(*) from pgq_ext.completed_event
              where consumer_id = 'c' and subconsumer_id = '' and batch_id = 20",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0, "moving to batch 21 clears batch 20's event rows");
    assert!(
        flag(&c, "select pgq_ext.is_event_done('c', 's1', 20, 1)").await,
        "the subconsumer's events are not touched by the main consumer's batch change"
    );

    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c')").await,
        None
    );
    c.query_one("select pgq_ext.set_last_tick('c', 5)", &[])
        .await
        .unwrap();
    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c')").await,
        Some(5)
    );
    c.query_one("select pgq_ext.set_last_tick('c', 7)", &[])
        .await
        .unwrap();
    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c')").await,
        Some(7)
    );
    c.query_one("select pgq_ext.set_last_tick('c', 's1', 9)", &[])
        .await
        .unwrap();
    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c', 's1')").await,
        Some(9)
    );
    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c')").await,
        Some(7),
        "the subconsumer's tick is separate"
    );
    c.query_one("select pgq_ext.set_last_tick('c', null)", &[])
        .await
        .unwrap();
    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c')").await,
        None,
        "set_last_tick(NULL) forgets the position"
    );
    assert_eq!(
        last_tick(&c, "select pgq_ext.get_last_tick('c', 's1')").await,
        Some(9)
    );
}

/// The remote side of one RemoteConsumer step: applies `batch`'s events unless the ledger
/// says it is done. Returns whether it applied them. The transaction is left open when
/// `commit` is false (the caller then "crashes" by dropping the connection).
async fn apply_remote(remote: &Client, batch: i64, events: &[common::Ev], commit: bool) -> bool {
    remote.batch_execute("begin").await.unwrap();
    let done = flag_param(remote, "select pgq_ext.is_batch_done('rc', $1)", batch).await;
    if !done {
        for e in events {
            remote
                .execute(
                    "insert into applied (ev_id, data) values ($1, $2)",
                    &[&e.id, &e.data],
                )
                .await
                .unwrap();
        }
        assert!(
            flag_param(remote, "select pgq_ext.set_batch_done('rc', $1)", batch).await,
            "set_batch_done of a new batch returns true"
        );
    }
    if commit {
        remote.batch_execute("commit").await.unwrap();
    }
    !done
}

async fn flag_param(client: &Client, sql: &str, batch: i64) -> bool {
    client.query_one(sql, &[&batch]).await.unwrap().get(0)
}

async fn remote_node() -> TestDb {
    let remote = TestDb::empty().await;
    let mut rc = remote.connect().await;
    install::install(&mut rc, Role::Node)
        .await
        .expect("install the ledger on the node");
    rc.batch_execute("create table applied (ev_id bigint not null, data text)")
        .await
        .unwrap();
    remote
}

async fn applied(remote: &TestDb) -> Vec<(i64, String)> {
    remote
        .connect()
        .await
        .query("select ev_id, data from applied order by ev_id, data", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn crash_after_remote_commit_is_exactly_once(backend: Backend) {
    let (db, setup) = queue_db(backend, &["q"]).await;
    register(&setup, "q", "rc").await;
    let mut ids = Vec::new();
    for d in ["one", "two", "three"] {
        ids.push((insert_event(&setup, "q", "t", d).await, d.to_string()));
    }
    tick(&setup, "q").await;
    let remote = remote_node().await;

    // Attempt 1 crashes before the remote commit: nothing is applied.
    let queue = db.connect().await;
    let b = next_batch(&queue, "q", "rc").await.expect("batch").batch_id;
    let evs = batch_events(&queue, b).await;
    let rconn = remote.connect().await;
    assert!(apply_remote(&rconn, b, &evs, false).await);
    drop(rconn);
    drop(queue);

    // Attempt 2: same batch, applied and committed remotely, crash before finish_batch.
    let queue = db.connect().await;
    let again = next_batch(&queue, "q", "rc").await.expect("the open batch");
    assert_eq!(
        again.batch_id, b,
        "after a crash next_batch returns the same batch id"
    );
    let evs = batch_events(&queue, b).await;
    let rconn = remote.connect().await;
    assert!(
        apply_remote(&rconn, b, &evs, true).await,
        "a batch whose remote transaction rolled back is not marked done"
    );
    drop(rconn);
    drop(queue);
    assert_eq!(applied(&remote).await, ids);

    // Attempt 3: same batch again, the ledger says done: skip and finish.
    let queue = db.connect().await;
    let again = next_batch(&queue, "q", "rc").await.expect("the open batch");
    assert_eq!(again.batch_id, b, "the unfinished batch keeps its id");
    let evs = batch_events(&queue, b).await;
    let rconn = remote.connect().await;
    assert!(
        !apply_remote(&rconn, b, &evs, true).await,
        "the ledger must report the batch done, so its work is skipped"
    );
    assert_eq!(finish_batch(&queue, b).await, 1);
    assert_eq!(
        applied(&remote).await,
        ids,
        "each event's effect exists exactly once on the node"
    );

    // Processing continues normally with the next batch.
    ids.push((
        insert_event(&setup, "q", "t", "four").await,
        "four".to_string(),
    ));
    tick(&setup, "q").await;
    let next = next_batch(&queue, "q", "rc")
        .await
        .expect("next batch")
        .batch_id;
    assert_ne!(next, b);
    let evs = batch_events(&queue, next).await;
    assert!(apply_remote(&rconn, next, &evs, true).await);
    assert_eq!(finish_batch(&queue, next).await, 1);
    assert_eq!(applied(&remote).await, ids);
    assert_eq!(next_batch(&queue, "q", "rc").await, None);
}

both_backends!(
    batch_ledger,
    event_and_tick_ledger,
    crash_after_remote_commit_is_exactly_once,
);
