//! The bundled core's generated insert functions (`pgq.insert_event_raw` and the 7-argument
//! `pgq.insert_event`) are replaced only when their text changes: replacing them costs
//! about 40 ms, which every create_queue paid even when the new queue was past the 256
//! the functions cover (issue 14: 1,000 queues took 100 s to make).

mod common;

use common::{insert_event, queue_db, set_queue_config, Backend};
use tokio_postgres::Client;

/// The catalog row versions of both generated functions: a replaced function's row is a
/// new version.
async fn versions(client: &Client) -> Vec<String> {
    client
        .query(
            "select xmin::text from pg_proc
              where oid in ('pgq.insert_event_raw(text, bigint, timestamptz, integer, integer,
                                text, text, text, text, text, text)'::regprocedure,
                            'pgq.insert_event(text, text, text, text, text, text, text)'::regprocedure)
              order by oid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn the_insert_functions_are_replaced_only_when_their_text_changes() {
    let (_db, client) = queue_db(Backend::Bundled, &["a", "b"]).await;
    let built = versions(&client).await;
    assert_eq!(built.len(), 2);
    client
        .query_one("select pgq._pgfan_build_insert_event_raw()", &[])
        .await
        .unwrap();
    assert_eq!(
        versions(&client).await,
        built,
        "same queues: nothing replaced"
    );
    set_queue_config(&client, "a", "ticker_max_count", "10").await;
    assert_eq!(
        versions(&client).await,
        built,
        "a setting the functions do not depend on: nothing replaced"
    );

    set_queue_config(&client, "a", "ticker_max_lag", "0").await;
    let woken = versions(&client).await;
    assert!(
        woken.iter().zip(&built).all(|(w, b)| w != b),
        "a wake-up compiled in: both replaced"
    );
    client
        .query_one("select pgq.create_queue('c')", &[])
        .await
        .unwrap();
    assert!(
        versions(&client)
            .await
            .iter()
            .zip(&woken)
            .all(|(c, w)| c != w),
        "a new covered queue: both replaced"
    );
    for q in ["a", "b", "c"] {
        assert!(insert_event(&client, q, "t", "e").await > 0);
    }
}
