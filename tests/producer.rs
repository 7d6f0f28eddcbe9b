//! Producing events as applications do: `insert_event` in its 3- and 7-argument forms, COPY
//! into `current_event_table`, the per-transaction event limit, disabled inserts (allowed
//! for replication), the pgq_writer/pgq_reader privilege split, and the error texts for an
//! unknown queue — identical on both backends.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{
    all_data, consume_all, db_message, insert_event, queue_db, register, tick, Backend, TestDb,
};
use futures_util::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

async fn insert_event_forms_store_all_fields(backend: Backend) {
    let (_db, client) = queue_db(backend, &["q"]).await;
    register(&client, "q", "c").await;
    let before: SystemTime = client
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    let id3 = insert_event(&client, "q", "t3", "three").await;
    let id7: i64 = client
        .query_one(
            "select pgq.insert_event('q', 't7', 'seven', 'x1', 'x2', null, 'x4')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let after: SystemTime = client
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(id7 > id3, "event ids increase");
    tick(&client, "q").await;
    let batches = consume_all(&client, "q", "c").await;
    assert_eq!(batches.len(), 1);
    let evs = &batches[0].1;
    assert_eq!(evs.len(), 2);
    let (e3, e7) = (&evs[0], &evs[1]);
    assert_eq!(
        e3.id, id3,
        "get_batch_events returns the id insert_event returned"
    );
    assert_eq!(e7.id, id7);
    assert_eq!(
        (e3.ev_type.as_deref(), e3.data.as_deref()),
        (Some("t3"), Some("three"))
    );
    assert_eq!(
        e3.extra,
        [None, None, None, None],
        "3-arg form leaves extras NULL"
    );
    assert_eq!(
        (e7.ev_type.as_deref(), e7.data.as_deref()),
        (Some("t7"), Some("seven"))
    );
    assert_eq!(
        e7.extra,
        [
            Some("x1".into()),
            Some("x2".into()),
            None,
            Some("x4".into())
        ],
        "7-arg form stores ev_extra1..4"
    );
    for e in evs {
        assert!(
            e.time >= before - Duration::from_millis(1) && e.time <= after,
            "ev_time must be the insert time"
        );
        assert_eq!(e.retry, None);
        assert!(e.txid.is_some(), "ev_txid is the inserting transaction");
    }
}

async fn copy_into_current_event_table_is_delivered(backend: Backend) {
    let (_db, mut client) = queue_db(backend, &["q"]).await;
    register(&client, "q", "c").await;
    let tx = client.transaction().await.unwrap();
    let table: String = tx
        .query_one("select pgq.current_event_table('q')", &[])
        .await
        .unwrap()
        .get(0);
    let sink = tx
        .copy_in(&format!(
            "copy {table} (ev_type, ev_data, ev_time) from stdin"
        ))
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let data = "ins\trow one\t2024-01-02 03:04:05+00\nupd\trow two\t2024-01-02 03:04:06+00\ndel\trow three\t2024-01-02 03:04:07+00\n";
    sink.send(Bytes::from(data)).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 3);
    tx.commit().await.unwrap();

    tick(&client, "q").await;
    let batches = consume_all(&client, "q", "c").await;
    assert_eq!(all_data(&batches), vec!["row one", "row three", "row two"]);
    let evs = &batches[0].1;
    assert!(
        evs.windows(2).all(|w| w[0].id < w[1].id),
        "copied rows get increasing ev_ids"
    );
    assert_eq!(evs[0].ev_type.as_deref(), Some("ins"));
    assert_eq!(
        evs[0].time,
        UNIX_EPOCH + Duration::from_secs(1_704_164_645),
        "ev_time is the copied value"
    );
    assert!(evs.iter().all(|e| e.txid.is_some()), "ev_txid defaults");
}

async fn per_transaction_limit_rejects_the_extra_event(backend: Backend) {
    let (_db, mut client) = queue_db(backend, &["q"]).await;
    register(&client, "q", "c").await;
    client
        .execute(
            "update pgq.queue set queue_per_tx_limit = 3 where queue_name = 'q'",
            &[],
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    for i in 0..3 {
        tx.query_one(
            "select pgq.insert_event('q', 't', $1)",
            &[&format!("over{i}")],
        )
        .await
        .unwrap_or_else(|e| panic!("event {i} within the limit failed: {e:?}"));
    }
    let err = tx
        .query_one("select pgq.insert_event('q', 't', 'over3')", &[])
        .await
        .expect_err("the 4th event of a transaction must exceed queue_per_tx_limit 3");
    assert_eq!(
        db_message(&err),
        "Queue 'q' allows max 3 events from one TX"
    );
    drop(tx);

    let tx = client.transaction().await.unwrap();
    for i in 0..3 {
        tx.query_one(
            "select pgq.insert_event('q', 't', $1)",
            &[&format!("ok{i}")],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    tick(&client, "q").await;
    assert_eq!(
        all_data(&consume_all(&client, "q", "c").await),
        vec!["ok0", "ok1", "ok2"],
        "only the transaction within the limit is delivered"
    );
}

async fn disabled_queue_accepts_only_replication(backend: Backend) {
    let (db, client) = queue_db(backend, &["q"]).await;
    register(&client, "q", "c").await;
    client
        .execute(
            "update pgq.queue set queue_disable_insert = true where queue_name = 'q'",
            &[],
        )
        .await
        .unwrap();
    let err = client
        .query_one("select pgq.insert_event('q', 't', 'no')", &[])
        .await
        .expect_err("insert_event into a disabled queue must fail");
    assert_eq!(db_message(&err), "Insert into queue disallowed");
    let err = client
        .query_one("select pgq.current_event_table('q')", &[])
        .await
        .expect_err("current_event_table of a disabled queue must fail");
    assert_eq!(db_message(&err), "Writing to queue disabled");

    let replica = db.connect().await;
    replica
        .batch_execute("set session_replication_role = replica")
        .await
        .unwrap();
    insert_event(&replica, "q", "t", "replicated").await;
    let table: String = replica
        .query_one("select pgq.current_event_table('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(table.starts_with("pgq.event_"), "{table}");
    tick(&client, "q").await;
    assert_eq!(
        all_data(&consume_all(&client, "q", "c").await),
        vec!["replicated"]
    );
}

/// Creates LOGIN role `name` (once per cluster) as a member of `group` only.
async fn login_role(client: &Client, name: &str, group: &str) {
    client
        .batch_execute(&format!(
            "do $$ begin
                if not exists (select 1 from pg_roles where rolname = '{name}') then
                    create role {name} login;
                end if;
             end $$;
             grant {group} to {name};"
        ))
        .await
        .unwrap();
}

fn assert_denied(res: Result<tokio_postgres::Row, tokio_postgres::Error>, what: &str, text: &str) {
    let err = res.expect_err(&format!("{what} must be denied"));
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{what}: {err:?}"
    );
    assert_eq!(db_message(&err), text, "{what}");
}

async fn writer_and_reader_roles_are_separated(backend: Backend) {
    let (db, client) = queue_db(backend, &["q"]).await;
    let suffix = format!("{backend:?}").to_lowercase();
    let (writer, reader) = (format!("w_{suffix}"), format!("r_{suffix}"));
    login_role(&client, &writer, "pgq_writer").await;
    login_role(&client, &reader, "pgq_reader").await;
    register(&client, "q", "c").await;

    let w = db.connect_as(&writer).await;
    let id = insert_event(&w, "q", "t", "from writer").await;
    assert!(id > 0);
    assert_denied(
        w.query_one("select pgq.next_batch('q', 'c')", &[]).await,
        "next_batch by a writer",
        "permission denied for function next_batch",
    );
    assert_denied(
        w.query_one("select pgq.register_consumer('q', 'w')", &[])
            .await,
        "register_consumer by a writer",
        "permission denied for function register_consumer",
    );

    let r = db.connect_as(&reader).await;
    let reg: i32 = r
        .query_one("select pgq.register_consumer('q', 'rc')", &[])
        .await
        .expect("a reader may register")
        .get(0);
    assert_eq!(reg, 1);
    tick(&client, "q").await;
    let got = consume_all(&r, "q", "c").await;
    assert_eq!(
        all_data(&got),
        vec!["from writer"],
        "a reader consumes batches"
    );
    assert_denied(
        r.query_one("select pgq.create_queue('r_queue')", &[]).await,
        "create_queue by a reader",
        "permission denied for function create_queue",
    );
}

async fn unknown_queue_errors_match(backend: Backend) {
    let db = TestDb::new(backend).await;
    let client = db.connect().await;
    let err = client
        .query_one("select pgq.insert_event('nope', 't', 'd')", &[])
        .await
        .expect_err("insert_event into an unknown queue must fail");
    assert_eq!(
        db_message(&err),
        "No such queue",
        "insert_event error text for an unknown queue"
    );
    let err = client
        .query_one("select pgq.register_consumer('nope', 'c')", &[])
        .await
        .expect_err("register_consumer on an unknown queue must fail");
    assert_eq!(
        db_message(&err),
        "Event queue not created yet",
        "register_consumer error text for an unknown queue"
    );
}

/// Many queues, some dropped in between, each rotated a different number of times: every
/// event lands in its own queue (the bundled core's insert path dispatches on queue id over
/// generated per-table INSERTs, rebuilt by create_queue and drop_queue).
async fn events_land_in_their_own_queue_among_many(backend: Backend) {
    let names: Vec<String> = (0..23).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let (_db, client) = queue_db(backend, &refs).await;
    for (i, q) in names.iter().enumerate() {
        if i % 5 == 2 {
            client
                .query_one("select pgq.drop_queue($1)", &[q])
                .await
                .unwrap();
        } else {
            register(&client, q, "c").await;
        }
    }
    let live: Vec<&String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 2)
        .map(|(_, q)| q)
        .collect();
    for (i, q) in live.iter().enumerate() {
        // Moves the queue's current table i % 3 times, so all three tables take inserts.
        for _ in 0..i % 3 {
            client
                .batch_execute(&format!(
                    "update pgq.queue set queue_cur_table = (queue_cur_table + 1) % queue_ntables
                      where queue_name = '{q}'"
                ))
                .await
                .unwrap();
        }
        insert_event(&client, q, "t", &format!("for {q}")).await;
        client
            .query_one(
                "select pgq.insert_event($1, 't', $2, null, null, null, null)",
                &[q, &format!("also for {q}")],
            )
            .await
            .unwrap();
    }
    for q in &live {
        tick(&client, q).await;
        assert_eq!(
            all_data(&consume_all(&client, q, "c").await),
            vec![format!("also for {q}"), format!("for {q}")],
            "queue {q}"
        );
    }
}

both_backends!(
    events_land_in_their_own_queue_among_many,
    insert_event_forms_store_all_fields,
    copy_into_current_event_table_is_delivered,
    per_transaction_limit_rejects_the_extra_event,
    disabled_queue_accepts_only_replication,
    writer_and_reader_roles_are_separated,
    unknown_queue_errors_match,
);
