//! The bundled core's bulk producer path, `pgq._pgfan_insert_events` (the relay's writes of
//! one pull event into each of many node queues, issue 14): every event must come out as
//! `pgq.insert_event` would have written it, and every queue that insert_event treats
//! specially must be treated the same way.

mod common;

use common::{queue_db, set_queue_config, Backend};
use tokio_postgres::{AsyncMessage, Client, GenericClient};

const CALL: &str = "select pgq._pgfan_insert_events($1, $2, $3, $4, $5, $6, $7)";

type Ev = (i64, String, Option<String>, Option<String>, Option<String>);

/// The events of queue `q`: (id, type, data, extra1, extra4), with the columns that must be
/// the same as insert_event's checked here (time and transaction id when `this_tx`: the
/// events were written by the transaction of `client`).
async fn events(client: &impl GenericClient, q: &str, this_tx: bool) -> Vec<Ev> {
    let bad: i64 = client
        .query_one(
            "select count(*) from pgq.event_template e
              where e.tableoid <> pgq.current_event_table($1)::regclass
                and e.tableoid::regclass::text like (select queue_data_pfx || '%' from pgq.queue
                                                      where queue_name = $1)",
            &[&q],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "{q}: events outside the current event table");
    let odd: i64 = client
        .query_one(
            "select count(*) from pgq.event_template e
              where e.tableoid = pgq.current_event_table($1)::regclass
                and (e.ev_owner is not null or e.ev_retry is not null
                     or $2 and (e.ev_time <> now() or e.ev_txid <> txid_current()))",
            &[&q, &this_tx],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(odd, 0, "{q}: an event unlike insert_event's");
    client
        .query(
            "select e.ev_id, e.ev_type, e.ev_data, e.ev_extra1, e.ev_extra4
               from pgq.event_template e
              where e.tableoid = pgq.current_event_table($1)::regclass
              order by e.ev_id",
            &[&q],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn call(client: &Client, queues: &[&str], data: &[&str]) -> Result<Vec<i64>, String> {
    let types: Vec<String> = queues.iter().map(|q| format!("t_{q}")).collect();
    let extra1: Vec<Option<&str>> = data.iter().map(|_| Some("x1")).collect();
    let none: Option<Vec<String>> = None;
    client
        .query_one(
            CALL,
            &[
                &queues,
                &types,
                &data,
                &extra1,
                &none,
                &none,
                &vec![Some("x4")],
            ],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        })
}

#[tokio::test]
async fn bulk_events_are_insert_events() {
    let (_db, mut client) = queue_db(Backend::Bundled, &["a", "b"]).await;
    let tx = client.transaction().await.unwrap();
    // The bulk path continues the queue's sequence where insert_event left it.
    let first: i64 = tx
        .query_one("select pgq.insert_event('a', 'ref', 'r')", &[])
        .await
        .unwrap()
        .get(0);
    let ids: Vec<i64> = tx
        .query_one(
            CALL,
            &[
                &vec!["a", "b", "a"],
                &vec!["t1", "t2", "t3"],
                &vec!["d1", "d2", "d3"],
                &vec![Some("x1"), None, Some("y1")],
                &None::<Vec<String>>,
                &None::<Vec<String>>,
                &vec![None, Some("x4")],
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ids.len(), 3);
    assert!(
        first < ids[0] && ids[0] < ids[2],
        "a queue's events get ids in input order: {first}, {ids:?}"
    );
    let a = events(&tx, "a", true).await;
    let b = events(&tx, "b", true).await;
    tx.commit().await.unwrap();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        a,
        [
            (first, "ref".into(), s("r"), None, None),
            (ids[0], "t1".into(), s("d1"), s("x1"), None),
            (ids[2], "t3".into(), s("d3"), s("y1"), None),
        ]
    );
    assert_eq!(b, [(ids[1], "t2".into(), s("d2"), None, s("x4"))]);
}

#[tokio::test]
async fn special_queues_take_insert_event() {
    let (_db, client) = queue_db(Backend::Bundled, &["plain", "limited", "off"]).await;
    // Neither setting is set_queue_config's; PgQ's tools write them into the queue row.
    client
        .batch_execute(
            "update pgq.queue set queue_per_tx_limit = 1 where queue_name = 'limited';
             update pgq.queue set queue_disable_insert = true where queue_name = 'off';",
        )
        .await
        .unwrap();

    let err = call(&client, &["plain", "limited", "limited"], &["1", "2", "3"]).await;
    assert!(
        err.as_ref().is_err_and(|e| e.contains("max 1 events")),
        "the per-transaction limit holds: {err:?}"
    );
    let err = call(&client, &["plain", "off"], &["1", "2"]).await;
    assert!(
        err.as_ref().is_err_and(|e| e.contains("disallowed")),
        "a disabled queue refuses: {err:?}"
    );
    let err = call(&client, &["plain", "nosuch"], &["1", "2"]).await;
    assert!(
        err.as_ref().is_err_and(|e| e.contains("No such queue")),
        "an unknown queue raises: {err:?}"
    );
    assert_eq!(
        events(&client, "plain", false).await,
        Vec::<Ev>::new(),
        "nothing of a failed call stays"
    );

    let ids = call(&client, &["limited", "plain"], &["1", "2"])
        .await
        .unwrap();
    assert_eq!(events(&client, "limited", false).await.len(), 1);
    assert_eq!(
        events(&client, "plain", false).await,
        [(
            ids[1],
            "t_plain".into(),
            Some("2".into()),
            Some("x1".into()),
            None
        )]
    );
}

#[tokio::test]
async fn low_latency_queues_wake_the_ticker() {
    let (db, client) = queue_db(Backend::Bundled, &["fast", "slow"]).await;
    set_queue_config(&client, "fast", "ticker_max_lag", "0").await;
    let mut listen = pgfan::db::connect(&db.conninfo).await.unwrap();
    listen
        .client
        .batch_execute("listen pgfan_ticker_wake")
        .await
        .unwrap();
    call(&client, &["slow", "fast", "fast"], &["1", "2", "3"])
        .await
        .unwrap();
    // A later notification on the same channel marks the end of what the call sent.
    client
        .batch_execute("select pg_notify('pgfan_ticker_wake', 'end')")
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), listen.messages.recv())
            .await
            .expect("notifications")
            .expect("session open");
        if let AsyncMessage::Notification(n) = m {
            if n.payload() == "end" {
                break;
            }
            got.push(n.payload().to_string());
        }
    }
    assert_eq!(got, ["fast"]);
}
