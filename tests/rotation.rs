//! Table rotation and the info functions operators rely on: once every consumer has moved
//! past the previous table, `maint_rotate_tables_step1` + `step2` (separate transactions)
//! switch the active event table and TRUNCATE the one being reused, so queues do not bloat;
//! a consumer that has not advanced blocks rotation and loses nothing; `maint_operations`
//! lists the rotation steps when due; `get_queue_info`/`get_consumer_info` report the state.

mod common;

use common::{
    all_data, consume_all, finish_batch, insert_event, last_tick, next_batch, queue_db, queue_id,
    register, set_queue_config, set_tick_age, tick, ticker, Backend,
};
use tokio_postgres::Client;

/// Rotation decisions compare tick snapshots with txids, which any concurrent transaction on
/// the cluster (another test's install, say) would shift; the tests of this file take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cur_table(client: &Client) -> i32 {
    client
        .query_one(
            "select queue_cur_table from pgq.queue where queue_name = 'q'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn rows_in(client: &Client, qid: i32, n: i32) -> i64 {
    client
        .query_one(&format!("select count(*) from pgq.event_{qid}_{n}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// `maint_rotate_tables_step1('q')`, in a transaction of its own.
async fn step1(client: &Client) {
    let r: i32 = client
        .query_one("select pgq.maint_rotate_tables_step1('q')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, 0, "maint_rotate_tables_step1 returns 0");
}

/// `maint_rotate_tables_step2()`, in a transaction of its own.
async fn step2(client: &Client) {
    let r: i32 = client
        .query_one("select pgq.maint_rotate_tables_step2()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, 0, "maint_rotate_tables_step2 returns 0");
}

/// The rotation entries of `maint_operations()`.
async fn rotate_ops(client: &Client) -> Vec<(String, Option<String>)> {
    client
        .query(
            "select func_name, func_arg from pgq.maint_operations()
              where func_name like 'pgq.maint_rotate_tables%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn op(name: &str, arg: Option<&str>) -> (String, Option<String>) {
    (name.to_string(), arg.map(str::to_string))
}

async fn insert_n(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..n {
        let d = format!("{prefix}{i}");
        insert_event(client, "q", "t", &d).await;
        v.push(d);
    }
    v
}

async fn rotation_truncates_the_reused_table(backend: Backend) {
    let _turn = SERIAL.lock().await;
    let (db, client) = queue_db(backend, &["q"]).await;
    let qid = queue_id(&client, "q").await;
    register(&client, "q", "c").await;
    assert!(
        rotate_ops(&client).await.is_empty(),
        "with the default 2 hour period no rotation is due after create_queue"
    );
    set_queue_config(&client, "q", "rotation_period", "0").await;
    let mut expected = Vec::new();
    let mut got = Vec::new();

    expected.extend(insert_n(&client, "old", 5).await);
    tick(&client, "q").await;
    got.extend(consume_all(&client, "q", "c").await);
    assert_eq!(cur_table(&client).await, 0);
    assert_eq!(rows_in(&client, qid, 0).await, 5);
    assert_eq!(
        rotate_ops(&client).await,
        vec![
            op("pgq.maint_rotate_tables_step1", Some("q")),
            op("pgq.maint_rotate_tables_step2", None)
        ],
        "a due rotation lists step1 for the queue, then step2"
    );

    step1(&client).await;
    assert_eq!(
        cur_table(&client).await,
        1,
        "step1 switches to the next table"
    );
    assert_eq!(
        rotate_ops(&client).await,
        vec![op("pgq.maint_rotate_tables_step2", None)],
        "after step1 only step2 is listed"
    );
    step1(&client).await;
    assert_eq!(
        cur_table(&client).await,
        1,
        "step1 must not rotate again before step2"
    );
    step2(&client).await;

    expected.extend(insert_n(&client, "mid", 3).await);
    assert_eq!(
        rows_in(&client, qid, 1).await,
        3,
        "new events go to table 1"
    );
    tick(&client, "q").await;
    got.extend(consume_all(&client, "q", "c").await);
    // Not yet ticked when the table switches: one committed before the rotation, one from
    // a transaction open across it. Both stay in table 1 but belong to the next batch.
    expected.extend(insert_n(&client, "span", 2).await);
    let open_tx = db.connect().await;
    open_tx.batch_execute("begin").await.unwrap();
    insert_event(&open_tx, "q", "t", "straddle").await;
    expected.push("straddle".to_string());
    step1(&client).await;
    assert_eq!(cur_table(&client).await, 2);
    step2(&client).await;
    open_tx.batch_execute("commit").await.unwrap();
    assert_eq!(
        rows_in(&client, qid, 1).await,
        6,
        "span and straddle are in table 1"
    );

    expected.extend(insert_n(&client, "new", 2).await);
    tick(&client, "q").await;
    let spanning = consume_all(&client, "q", "c").await;
    assert_eq!(
        all_data(&spanning),
        vec!["new0", "new1", "span0", "span1", "straddle"],
        "a batch spanning a rotation returns the events of both tables"
    );
    got.extend(spanning);
    assert_eq!(
        rows_in(&client, qid, 0).await,
        5,
        "table 0 is untouched so far"
    );
    step1(&client).await;
    assert_eq!(
        cur_table(&client).await,
        0,
        "rotation wraps around to table 0"
    );
    assert_eq!(
        rows_in(&client, qid, 0).await,
        0,
        "the reused table 0 must be truncated"
    );
    assert_eq!(rows_in(&client, qid, 1).await, 6, "table 1 keeps its rows");
    assert_eq!(rows_in(&client, qid, 2).await, 2, "table 2 keeps its rows");
    step2(&client).await;

    expected.extend(insert_n(&client, "more", 1).await);
    assert_eq!(rows_in(&client, qid, 0).await, 1);
    tick(&client, "q").await;
    got.extend(consume_all(&client, "q", "c").await);
    expected.sort();
    assert_eq!(
        all_data(&got),
        expected,
        "the consumer gets every event exactly once across rotations"
    );

    set_queue_config(&client, "q", "rotation_period", "1 hour").await;
    assert!(
        rotate_ops(&client).await.is_empty(),
        "a just-rotated queue with a 1 hour period has no rotation due"
    );
}

async fn lagging_consumer_blocks_rotation(backend: Backend) {
    let _turn = SERIAL.lock().await;
    let (_db, client) = queue_db(backend, &["q"]).await;
    let qid = queue_id(&client, "q").await;
    register(&client, "q", "fast").await;
    register(&client, "q", "slow").await;
    set_queue_config(&client, "q", "rotation_period", "0").await;

    let first = insert_n(&client, "a", 3).await;
    tick(&client, "q").await;
    let fast_a = consume_all(&client, "q", "fast").await;
    let slow_a = consume_all(&client, "q", "slow").await;
    assert_eq!(all_data(&fast_a), first);
    assert_eq!(all_data(&slow_a), first);
    step1(&client).await;
    step2(&client).await;
    assert_eq!(
        cur_table(&client).await,
        1,
        "both consumers passed: rotation runs"
    );

    let second = insert_n(&client, "b", 4).await;
    tick(&client, "q").await;
    let fast_b = consume_all(&client, "q", "fast").await;
    assert_eq!(all_data(&fast_b), second);
    // "slow" stays at its tick from before the rotation: nothing it needs may go away.
    for round in 0..3 {
        step1(&client).await;
        step2(&client).await;
        assert_eq!(
            cur_table(&client).await,
            1,
            "round {round}: rotation must wait for the consumer still behind"
        );
        assert_eq!(rows_in(&client, qid, 1).await, 4, "its events stay");
        tick(&client, "q").await;
        consume_all(&client, "q", "fast").await;
    }
    // "slow" opens a batch but does not finish it: still blocking.
    let open = next_batch(&client, "q", "slow")
        .await
        .expect("slow has a batch");
    step1(&client).await;
    step2(&client).await;
    assert_eq!(
        cur_table(&client).await,
        1,
        "an unfinished batch still blocks"
    );
    let open_events = common::batch_events(&client, open.batch_id).await;
    assert_eq!(finish_batch(&client, open.batch_id).await, 1);
    let mut slow = slow_a;
    slow.push((open, open_events));
    slow.extend(consume_all(&client, "q", "slow").await);
    let mut want = [first, second].concat();
    want.sort();
    assert_eq!(
        all_data(&slow),
        want,
        "the lagging consumer still gets all its events, each once"
    );

    step1(&client).await;
    step2(&client).await;
    assert_eq!(
        cur_table(&client).await,
        2,
        "once the lagging consumer caught up, rotation proceeds"
    );
}

async fn info_functions_report_the_state(backend: Backend) {
    let _turn = SERIAL.lock().await;
    let (_db, client) = queue_db(backend, &["q"]).await;
    // Plain ticks (ticker_max_count 1), so event sequence deltas are exact event counts.
    set_queue_config(&client, "q", "ticker_max_count", "1").await;
    insert_n(&client, "warm", 1).await;
    let tw = ticker(&client, "q").await.expect("tick");
    register(&client, "q", "c").await;
    let one = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap() }
    };
    let qi = "select ev_new, last_tick_id, queue_ntables, queue_cur_table,
                     extract(epoch from ticker_lag)::float8 as lag
                from pgq.get_queue_info('q')";
    let row = one(qi).await;
    assert_eq!(
        row.get::<_, i64>("ev_new"),
        0,
        "no events since the last tick"
    );
    assert_eq!(row.get::<_, i64>("last_tick_id"), tw);
    assert_eq!(row.get::<_, i32>("queue_ntables"), 3);
    assert_eq!(row.get::<_, i32>("queue_cur_table"), 0);

    insert_n(&client, "a", 2).await;
    assert_eq!(
        one(qi).await.get::<_, i64>("ev_new"),
        2,
        "ev_new counts events since the last tick"
    );
    let ta = ticker(&client, "q").await.expect("tick");
    insert_n(&client, "b", 3).await;
    let tb = ticker(&client, "q").await.expect("tick");
    insert_n(&client, "c", 4).await;
    set_tick_age(&client, "q", tb, "30 min").await;
    let row = one(qi).await;
    assert_eq!(row.get::<_, i64>("ev_new"), 4);
    assert_eq!(row.get::<_, i64>("last_tick_id"), tb);
    let lag: f64 = row.get("lag");
    assert!(
        (1800.0..1860.0).contains(&lag),
        "ticker_lag is the age of the last tick (30 min), got {lag} s"
    );
    let all_queues: i64 = client
        .query_one(
            "select count(*) from pgq.get_queue_info() where queue_name = 'q' and last_tick_id = $1",
            &[&tb],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(all_queues, 1, "get_queue_info() lists the queue too");

    set_tick_age(&client, "q", tw, "1 hour").await;
    let ci = "select last_tick, current_batch, next_tick, pending_events,
                     extract(epoch from lag)::float8 as lag
                from pgq.get_consumer_info('q', 'c')";
    let row = one(ci).await;
    assert_eq!(row.get::<_, Option<i64>>("last_tick"), Some(tw));
    assert_eq!(row.get::<_, Option<i64>>("current_batch"), None);
    assert_eq!(row.get::<_, Option<i64>>("next_tick"), None);
    assert_eq!(
        row.get::<_, Option<i64>>("pending_events"),
        Some(5),
        "pending_events counts the events up to the last tick the consumer has not consumed"
    );
    let lag: f64 = row.get("lag");
    assert!(
        (3600.0..3660.0).contains(&lag),
        "consumer lag is the age of its last tick (1 hour), got {lag} s"
    );

    let b = next_batch(&client, "q", "c").await.expect("batch");
    let row = one(ci).await;
    assert_eq!(row.get::<_, Option<i64>>("last_tick"), Some(tw));
    assert_eq!(row.get::<_, Option<i64>>("current_batch"), Some(b.batch_id));
    assert_eq!(row.get::<_, Option<i64>>("next_tick"), Some(ta));
    assert_eq!(finish_batch(&client, b.batch_id).await, 1);
    let row = one(ci).await;
    assert_eq!(row.get::<_, Option<i64>>("last_tick"), Some(ta));
    assert_eq!(row.get::<_, Option<i64>>("current_batch"), None);
    assert_eq!(row.get::<_, Option<i64>>("next_tick"), None);
    assert_eq!(row.get::<_, Option<i64>>("pending_events"), Some(3));
    let listed: i64 = client
        .query_one(
            "select (select count(*) from pgq.get_consumer_info() where consumer_name = 'c')
                  + (select count(*) from pgq.get_consumer_info('q') where consumer_name = 'c')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listed, 2, "the 0- and 1-argument forms list the consumer");
    assert_eq!(last_tick(&client, "q").await, tb);
}

both_backends!(
    rotation_truncates_the_reused_table,
    lagging_consumer_blocks_rotation,
    info_functions_report_the_state,
);
