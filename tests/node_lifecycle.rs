//! A node's life on the master: added, drained, disabled, activated, removed, and what hash
//! routing does meanwhile. What an operator relies on: a node that is not active gets no
//! `all`/`any`/`hash` work, a membership change moves only the hash keys that must move
//! (about 1/N of them for a node joining N - 1), and a node with open work cannot be
//! removed, while a removed one keeps its history and can come back.

mod common;

use std::collections::HashMap;

use common::{Backend, TestDb};
use tokio_postgres::Client;

const KEYS: i32 = 2000;

/// Where each of KEYS hash keys routes now.
async fn owners(m: &Client) -> HashMap<i32, String> {
    m.query(
        "select k, pgfan.resolve_target('hash:key' || k) from generate_series(1, $1) k",
        &[&KEYS],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Keys that changed node from `before` to `after`, and where they went.
fn moved(before: &HashMap<i32, String>, after: &HashMap<i32, String>) -> Vec<(String, String)> {
    before
        .iter()
        .filter(|(k, n)| after[k] != **n)
        .map(|(k, n)| (n.clone(), after[k].clone()))
        .collect()
}

async fn exec(m: &Client, sql: &str) {
    m.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", common::db_message(&e)));
}

async fn err(m: &Client, sql: &str) -> String {
    common::db_message(&m.batch_execute(sql).await.expect_err(sql))
}

async fn all(m: &Client) -> Vec<String> {
    m.query("select pgfan.resolve_target('all')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn membership_changes_move_only_the_keys_that_must_move() {
    let db = TestDb::master(Backend::Bundled).await;
    let m = db.connect().await;
    exec(
        &m,
        "select pgfan.node_add('n1'); select pgfan.node_add('n2');",
    )
    .await;
    exec(&m, "select pgfan.set_partitions(64)").await;
    let two = owners(&m).await;

    // A third node takes about a third of the keys, from both others, and only those move.
    exec(&m, "select pgfan.node_add('n3')").await;
    let three = owners(&m).await;
    let joined = moved(&two, &three);
    assert!(joined.iter().all(|(_, to)| to == "n3"), "{joined:?}");
    let share = joined.len() as f64 / KEYS as f64;
    assert!((0.25..0.42).contains(&share), "{share} of the keys moved");

    // Draining n3 gives its keys back; no other key moves, and n3 gets no new work.
    exec(&m, "select pgfan.node_drain('n3')").await;
    let drained = owners(&m).await;
    let left = moved(&three, &drained);
    assert!(left.iter().all(|(from, _)| from == "n3"), "{left:?}");
    assert!(drained.values().all(|n| n != "n3"));
    assert_eq!(all(&m).await, ["n1", "n2"]);
    let any: String = m
        .query_one("select pgfan.resolve_target('any')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(any, "n3");
    // By name it still takes work while draining.
    exec(&m, "select pgfan.resolve_target('n3')").await;

    // Back to active: it takes a share again.
    exec(&m, "select pgfan.node_activate('n3')").await;
    let back = owners(&m).await;
    assert!(moved(&drained, &back).iter().all(|(_, to)| to == "n3"));
    assert!(back.values().any(|n| n == "n3"));

    // Growing the map splits partitions in place: no key changes node.
    exec(&m, "select pgfan.set_partitions(128)").await;
    assert!(moved(&back, &owners(&m).await).is_empty());
    // Shrinking it moves only keys of the partitions that went.
    exec(&m, "select pgfan.set_partitions(32)").await;
    let shrunk = moved(&back, &owners(&m).await).len() as f64 / KEYS as f64;
    assert!(shrunk < 0.5, "{shrunk} of the keys moved");

    // With no active node left, hash routing says why instead of using a draining one.
    exec(
        &m,
        "select pgfan.node_drain('n1'); select pgfan.node_drain('n2'); select pgfan.node_drain('n3')",
    )
    .await;
    let e = err(&m, "select pgfan.resolve_target('hash:key1')").await;
    assert!(e.contains("is draining"), "{e}");
}

#[tokio::test]
async fn a_node_with_open_work_cannot_be_removed_and_a_removed_one_keeps_its_history() {
    let db = TestDb::master(Backend::Bundled).await;
    let m = db.connect().await;
    exec(
        &m,
        "select pgfan.node_add('n1'); select pgfan.node_add('n2'); select pgfan.set_partitions(8)",
    )
    .await;
    let job: i64 = m
        .query_one("select pgfan.submit('n2', 'select 1')", &[])
        .await
        .unwrap()
        .get(0);
    exec(
        &m,
        &format!(
            "insert into pgfan.task (job_id, node_name, kind, payload) values ({job}, 'n2', 'sql', 'select 1')"
        ),
    )
    .await;
    let e = err(&m, "select pgfan.node_remove('n2')").await;
    assert!(e.contains("still has 1 open task(s)"), "{e}");

    exec(
        &m,
        &format!("update pgfan.task set state = 'done', finished_at = now() where job_id = {job}"),
    )
    .await;
    let history: i64 = m
        .query_one("select pgfan.node_remove('n2')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 1);
    let (state, queue_left): (String, bool) = {
        let r = m
            .query_one(
                "select n.state, exists (select 1 from pgq.queue q where q.queue_name = n.queue_name)
                   from pgfan.node n where node_name = 'n2'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((state.as_str(), queue_left), ("removed", false));
    assert_eq!(all(&m).await, ["n1"]);
    assert!(owners(&m).await.values().all(|n| n == "n1"));
    let e = err(&m, "select pgfan.resolve_target('n2')").await;
    assert!(e.contains("node n2 is removed"), "{e}");
    let e = err(&m, "select pgfan.node_activate('n2')").await;
    assert!(e.contains("was removed"), "{e}");
    // Its tasks are still there to read.
    let kept: i64 = m
        .query_one(
            "select count(*) from pgfan.task where node_name = 'n2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);

    // node_add brings it back, queue and all.
    exec(&m, "select pgfan.node_add('n2')").await;
    assert_eq!(all(&m).await, ["n1", "n2"]);
    assert!(owners(&m).await.values().any(|n| n == "n2"));
}

#[tokio::test]
async fn a_node_whose_daemon_never_ran_takes_no_shared_work_until_it_starts() {
    let db = TestDb::master(Backend::Bundled).await;
    let m = db.connect().await;
    exec(
        &m,
        "select pgfan.node_add('n1'); select pgfan.node_add('n2'); select pgfan.set_partitions(32);
         select pgfan.node_heartbeat('n1', 4, 'test'); select pgfan.node_heartbeat('n2', 4, 'test');",
    )
    .await;
    let before = owners(&m).await;
    // Added, but its daemon not started: it would hold every all/any/hash job open.
    exec(&m, "select pgfan.node_add('n7')").await;
    assert_eq!(all(&m).await, ["n1", "n2"]);
    for _ in 0..20 {
        let any: String = m
            .query_one("select pgfan.resolve_target('any')", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(any, "n7");
    }
    assert!(moved(&before, &owners(&m).await).is_empty());
    // Named work may wait for it in its queue.
    exec(&m, "select pgfan.resolve_target('n7')").await;
    // Its daemon's first heartbeat: it takes its share, from the others only.
    exec(&m, "select pgfan.node_heartbeat('n7', 4, 'test')").await;
    assert_eq!(all(&m).await, ["n1", "n2", "n7"]);
    let joined = moved(&before, &owners(&m).await);
    assert!(
        !joined.is_empty() && joined.iter().all(|(_, to)| to == "n7"),
        "{joined:?}"
    );
}
