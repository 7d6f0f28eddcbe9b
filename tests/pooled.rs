//! A node daemon that reaches the master through PgBouncer in transaction mode (issue 14's
//! pooled mode, `pooled = true`): no LISTEN, no statement that outlives its transaction,
//! and its tasks take effect exactly once, also across a restart of PgBouncer. PgBouncer
//! is Debian's (`pgbouncer`), started by the test.

mod common;

use std::time::Duration;

use common::node_env::{put, put_in, sql_task, start_node, stop_node, Env, Pull};
use common::{cluster, eventually, TestDb};
use pgfan::bouncer::Bouncer;
use pgfan::node::{NodeConfig, PoolKey};

/// Another node of `env`'s master, with its own node database and the same settings.
async fn other_node(env: &Env, name: &str) -> TestDb {
    let db = env.add_node(name).await;
    db.connect()
        .await
        .batch_execute("create table t (id integer)")
        .await
        .unwrap();
    db
}

/// Tasks `from..=to` for the first node, 100 more for the second, 200 more for the third.
async fn round(env: &Env, others: &[&str], from: i64, to: i64) {
    put(env, &inserts(from..=to)).await;
    for (n, name) in others.iter().enumerate() {
        let base = 100 * (n as i64 + 1);
        let queue = format!("pgfan_node_{name}");
        put_in(env, &queue, &inserts(base + from..=base + to)).await;
    }
}

fn inserts(ids: std::ops::RangeInclusive<i64>) -> Vec<Pull<'static>> {
    ids.map(|k| sql_task(k, &format!("insert into t values ({k})")))
        .collect()
}

/// Three node daemons share ONE server connection and one login through PgBouncer, each
/// acting as its node by its key (so their statements meet on it: a named statement left
/// outside a transaction by one would break another, a key left behind would let one act
/// as another),
/// their tasks arrive before, during and after a restart of PgBouncer, and each task's
/// insert lands exactly once on its node.
#[tokio::test]
async fn nodes_through_pgbouncer_run_their_tasks_exactly_once_across_a_restart() {
    let env = Env::new("n_pooled").await;
    env.node_sql("create table t (id integer)").await;
    let others = [
        ("n_pooled2", other_node(&env, "n_pooled2").await),
        ("n_pooled3", other_node(&env, "n_pooled3").await),
    ];
    // The daemons share one login, bound to no node (roles are cluster-wide: named for
    // this test's database); each acts as its node by its key.
    let pool = format!("{}_pool", env.master.name);
    let m = env.master.connect().await;
    m.batch_execute(&format!(
        "create role {pool} login; grant pgfan_node to {pool}"
    ))
    .await
    .unwrap();
    let key = |name: &str| format!("{name}-{}", "k".repeat(32));
    for name in ["n_pooled", "n_pooled2", "n_pooled3"] {
        m.query_one(
            "select pgfan.node_set_pool_key($1, $2)",
            &[&name, &key(name)],
        )
        .await
        .unwrap();
    }
    // One server connection for the three daemons.
    let mut bouncer = Bouncer::start_for(cluster(), 1, &[&pool]).expect("start pgbouncer");
    let master = format!("{} user={pool}", bouncer.conninfo(&env.master.name));
    let pooled = |name: &str, node: &str| NodeConfig {
        pooled: true,
        claim_poll_period: Duration::from_millis(200),
        pool_key: Some(PoolKey::new(key(name))),
        ..NodeConfig {
            master: master.clone(),
            ..NodeConfig::new(name, "", node)
        }
    };
    let mut daemons = vec![start_node(NodeConfig {
        db: env.node.conninfo.clone(),
        ..pooled("n_pooled", &env.node.conninfo)
    })];
    for (name, db) in &others {
        daemons.push(start_node(pooled(name, &db.conninfo)));
    }
    // Task ids k, 100 + k and 200 + k for the three nodes, k in 1..=40.
    let names: Vec<&str> = others.iter().map(|(name, _)| *name).collect();
    round(&env, &names, 1, 10).await;
    env.wait_shipped(&(1..=10).collect::<Vec<_>>()).await;
    round(&env, &names, 11, 30).await;
    bouncer.restart().expect("restart pgbouncer");
    round(&env, &names, 31, 40).await;

    env.wait_shipped(&(1..=40).collect::<Vec<_>>()).await;
    for db in [&env.node, &others[0].1, &others[1].1] {
        eventually(
            db,
            "select count(*) = 40 from pgfan_node.task where shipped_at is not null",
        )
        .await;
        let c = db.connect().await;
        let (rows, ids): (i64, i64) = c
            .query_one("select count(*), count(distinct id) from t", &[])
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!(
            (rows, ids),
            (40, 40),
            "{}: every task's insert, once",
            db.name
        );
    }
    let results = env.results().await;
    for k in (1..=40).chain(101..=140).chain(201..=240) {
        let r = &results
            .get(&k)
            .unwrap_or_else(|| panic!("no result for task {k}"))
            .2;
        assert_eq!(r["state"], "done", "task {k}: {r}");
    }
    // Liveness through the pooler, where pgfan cannot see the daemons' sessions: their
    // claims' polls keep the heartbeats fresh.
    eventually(
        &env.master,
        "select bool_and(heartbeat > now() - interval '15 s' and version is not null)
           from pgfan.node",
    )
    .await;
    for d in daemons {
        stop_node(d).await;
    }
    env.stop_ticker().await;
}
