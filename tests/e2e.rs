//! The whole pipeline end to end: a master and node clusters, with the ticker, relay,
//! reducer and node daemons running (pgfan::demo::Topology), driven through the SQL API
//! and the raw pgq.insert_event form.

mod common;

use std::time::Duration;

use pgfan::demo::Topology;
use pgfan::node::NodeConfig;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// Upper bound for one job; reaching it means the pipeline is broken.
const PATIENCE: &str = "60 s";

fn configure(cfg: &mut NodeConfig) {
    cfg.copy_tables = vec!["public.items".into()];
    cfg.allow_call = vec!["public.add".into()];
    cfg.poll_period = Duration::from_millis(200);
    cfg.heartbeat_period = Duration::from_millis(200);
}

/// A master and two nodes, each node with `items` and `public.add(int, int)`.
async fn topology() -> (Topology, Client) {
    let topo = Topology::start(2, configure)
        .await
        .expect("topology starts");
    for node in &topo.nodes {
        let c = pgfan::db::connect_client(&node.conninfo()).await.unwrap();
        c.batch_execute(
            "create table items (id integer primary key, name text);
             create table effects (k text);
             create function add(a integer, b integer) returns integer language sql
                 as 'select a + b';",
        )
        .await
        .unwrap();
    }
    let master = topo.master_client().await.unwrap();
    (topo, master)
}

async fn wait(master: &Client, job: i64) -> String {
    master
        .query_one(
            "select pgfan.wait($1, $2::text::interval)",
            &[&job, &PATIENCE],
        )
        .await
        .unwrap()
        .get(0)
}

async fn job_error(master: &Client, job: i64) -> String {
    master
        .query_one(
            "select coalesce(error, '') from pgfan.job where job_id = $1",
            &[&job],
        )
        .await
        .unwrap()
        .get(0)
}

async fn result(master: &Client, job: i64) -> Vec<Value> {
    assert_eq!(
        wait(master, job).await,
        "done",
        "job {job}: {}",
        job_error(master, job).await
    );
    master
        .query("select * from pgfan.result($1)", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn submit(master: &Client, sql: &str) -> i64 {
    master.query_one(sql, &[]).await.unwrap().get(0)
}

async fn node_count(topo: &Topology, i: usize, sql: &str) -> i64 {
    let c = pgfan::db::connect_client(&topo.nodes[i].conninfo())
        .await
        .unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn every_target_and_kind_end_to_end() {
    let (topo, m) = topology().await;
    // sql on all, reduced; the raw form gives the same answer as pgfan.submit.
    let sql = "select count(*) as n, sum(length(current_database())) as l from pg_class where relname = 'items'";
    let submitted = submit(
        &m,
        &format!("select pgfan.submit('all', $${sql}$$, reduce => 'sum')"),
    )
    .await;
    let data = pgfan::urlenc::encode([("sql", sql), ("reduce", "sum")]);
    let raw = common::raw_job(&m, "sql", &data, "all").await;
    let a = result(&m, submitted).await;
    assert_eq!(a, [json!({"n": 2, "l": 16})]);
    assert_eq!(result(&m, raw).await, a, "raw form = submit form");
    // one node by name, a list, any, hash
    let by_name = submit(&m, "select pgfan.submit('n2', 'select 7 as x')").await;
    assert_eq!(result(&m, by_name).await, [json!({"x": 7})]);
    let list = submit(
        &m,
        "select pgfan.submit('n2,n1', 'select 1 as x', reduce => 'count')",
    )
    .await;
    assert_eq!(result(&m, list).await, [json!({"count": 2})]);
    let any = submit(&m, "select pgfan.submit('any', 'select 1 as x')").await;
    assert_eq!(result(&m, any).await, [json!({"x": 1})]);
    let hash = common::raw_job(&m, "copy", "action=ins&id=42&name=h", "hash:customer-42").await;
    assert_eq!(wait(&m, hash).await, "done");
    let owner: String = m
        .query_one(
            "select node_name from pgfan.task where job_id = $1",
            &[&hash],
        )
        .await
        .unwrap()
        .get(0);
    let i = if owner == "n1" { 0 } else { 1 };
    assert_eq!(
        node_count(&topo, i, "select count(*) from items where id = 42").await,
        1
    );
    assert_eq!(
        node_count(&topo, 1 - i, "select count(*) from items where id = 42").await,
        0
    );
    // call, with arguments in order and their types from the function
    let call = submit(
        &m,
        "select pgfan.submit('n1', call => 'public.add', args => array['40', '2'])",
    )
    .await;
    assert_eq!(result(&m, call).await, [json!({"add": 42})]);
    // copy upd and del through the raw form, ordered by a lane
    for data in [
        "action=upd&id=42&name=changed&lane=l",
        "action=del&id=42&lane=l",
    ] {
        let job = common::raw_job(&m, "copy", data, &owner).await;
        assert_eq!(
            wait(&m, job).await,
            "done",
            "{data}: {}",
            job_error(&m, job).await
        );
    }
    assert_eq!(node_count(&topo, i, "select count(*) from items").await, 0);
    topo.shutdown().await.unwrap();
}

#[tokio::test]
async fn node_side_errors_fail_their_job_and_others_complete() {
    let (topo, m) = topology().await;
    let cases = [
        ("select pgfan.submit('n1', 'select 1/0')", "division by zero"),
        (
            "select pgfan.submit('n1', 'select pg_sleep(5)', timeout => '100 ms')",
            "timeout",
        ),
        (
            "select pgfan.submit('n1', call => 'pg_catalog.pg_terminate_backend', args => array['1'])",
            "allow-list",
        ),
        ("select pgfan.submit('n1', call => 'public.add', args => array['1'])", "argument"),
        ("select pgfan.submit('n1', 'select from no_such_table')", "no_such_table"),
        ("select pgfan.submit('all', 'select 1', reduce => 'select nonsense from partials')", "reduce failed"),
    ];
    let mut jobs = Vec::new();
    for (sql, _) in cases {
        jobs.push(submit(&m, sql).await);
    }
    let bad_copy = common::raw_job(&m, "copy", "action=ins&id=1&no_such_column=x", "n2").await;
    let good = submit(
        &m,
        "select pgfan.submit('all', 'select 1 as one', reduce => 'sum')",
    )
    .await;
    for ((sql, want), job) in cases.iter().zip(&jobs) {
        assert_eq!(wait(&m, *job).await, "failed", "{sql}");
        let error = job_error(&m, *job).await;
        assert!(error.contains(want), "{sql}: {error}");
    }
    assert_eq!(wait(&m, bad_copy).await, "failed");
    assert!(job_error(&m, bad_copy).await.contains("no_such_column"));
    assert_eq!(result(&m, good).await, [json!({"one": 2})]);
    let dead: i64 = m
        .query_one("select count(distinct job_id) from pgfan.dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dead,
        cases.len() as i64 + 1,
        "every failure is a dead letter"
    );
    topo.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_that_refuses_raw_sql_fails_only_those_tasks() {
    let topo = Topology::start(1, |cfg| {
        configure(cfg);
        cfg.allow_sql = false;
    })
    .await
    .unwrap();
    let m = topo.master_client().await.unwrap();
    pgfan::db::connect_client(&topo.nodes[0].conninfo())
        .await
        .unwrap()
        .batch_execute("create function add(a integer, b integer) returns integer language sql as 'select a + b'")
        .await
        .unwrap();
    let sql = submit(&m, "select pgfan.submit('n1', 'select 1')").await;
    let call = submit(
        &m,
        "select pgfan.submit('n1', call => 'public.add', args => array['1', '2'])",
    )
    .await;
    assert_eq!(wait(&m, sql).await, "failed");
    assert!(job_error(&m, sql).await.contains("does not accept raw SQL"));
    assert_eq!(result(&m, call).await, [json!({"add": 3})]);
    topo.shutdown().await.unwrap();
}

#[tokio::test]
async fn tasks_wait_for_a_stopped_node_and_complete_when_it_returns() {
    let (mut topo, m) = topology().await;
    topo.stop_node(1).await.unwrap();
    let job = submit(&m, "select pgfan.run_on_all('select 1 as one', 'sum')").await;
    let ins = common::raw_job(&m, "copy", "action=ins&id=5&name=later", "n2").await;
    // n1 answers while n2's task waits in its queue.
    let mut status = Vec::new();
    for _ in 0..3000 {
        status = m
            .query("select node_name, done from pgfan.job_status($1)", &[&job])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
            .collect();
        if status.first().is_some_and(|s| s.1 == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, [("n1".to_string(), 1), ("n2".to_string(), 0)]);
    let state: String = m
        .query_one("select state from pgfan.job where job_id = $1", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "running");
    topo.start_node(1);
    assert_eq!(result(&m, job).await, [json!({"one": 2})]);
    assert_eq!(wait(&m, ins).await, "done");
    assert_eq!(
        node_count(&topo, 1, "select count(*) from items where id = 5").await,
        1
    );
    topo.shutdown().await.unwrap();
}

/// A tiny deterministic generator for kill times, so a failure can be replayed.
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[tokio::test]
async fn killed_node_daemons_apply_each_task_exactly_once() {
    let (mut topo, m) = topology().await;
    let tasks = 120;
    let mut seed = 7;
    let mut jobs = Vec::new();
    let mut kills = 0;
    for i in 0..tasks {
        // Transactional effects without a key (a duplicate would show as a second row) and
        // keyed copies (a duplicate would fail on the primary key).
        let job = if i % 2 == 0 {
            let sql = format!("insert into effects values ('k{i}')");
            submit(&m, &format!("select pgfan.submit('all', $${sql}$$)")).await
        } else {
            let data = format!("action=ins&id={i}&name=r{i}");
            let ev: i64 = m
                .query_one(
                    "select pgq.insert_event('push_queue', 'copy', $1, 'all', null, null, null)",
                    &[&data],
                )
                .await
                .unwrap()
                .get(0);
            -ev
        };
        jobs.push(job);
        if next(&mut seed) % 6 == 0 {
            let victim = (next(&mut seed) % 2) as usize;
            tokio::time::sleep(Duration::from_millis(next(&mut seed) % 60)).await;
            topo.kill_node(victim);
            kills += 1;
            topo.start_node(victim);
        }
    }
    for job in jobs {
        let job = if job < 0 {
            common::job_of_event(&m, -job).await
        } else {
            job
        };
        assert_eq!(
            wait(&m, job).await,
            "done",
            "job {job}: {}",
            job_error(&m, job).await
        );
    }
    for i in 0..2 {
        let dup = node_count(
            &topo,
            i,
            "select count(*) from (select k from effects group by k having count(*) > 1) d",
        )
        .await;
        let effects = node_count(&topo, i, "select count(*) from effects").await;
        let rows = node_count(&topo, i, "select count(*) from items").await;
        assert_eq!(
            (dup, effects, rows),
            (0, tasks / 2, tasks / 2),
            "node {i} after {kills} kills"
        );
    }
    assert!(kills > 0);
    topo.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_cannot_claim_another_nodes_tasks() {
    let (mut topo, m) = topology().await;
    topo.stop_node(0).await.unwrap();
    let job = submit(&m, "select pgfan.submit('n1', 'select 1 as one')").await;
    let ids: Vec<i64> = m
        .query("select task_id from pgfan.task where job_id = $1", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // n2's identity cannot move n1's task, and n2's daemon never sees it.
    let moved: i32 = m
        .query_one("select pgfan.tasks_claimed('n2', $1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 0);
    let other = submit(&m, "select pgfan.submit('n2', 'select 2 as two')").await;
    assert_eq!(result(&m, other).await, [json!({"two": 2})]);
    assert_eq!(
        node_count(
            &topo,
            1,
            &format!("select count(*) from pgfan_node.task where job_id = {job}")
        )
        .await,
        0
    );
    topo.start_node(0);
    assert_eq!(result(&m, job).await, [json!({"one": 1})]);
    topo.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_failed_reruns_only_the_failed_target() {
    let (topo, m) = topology().await;
    let n2 = pgfan::db::connect_client(&topo.nodes[1].conninfo())
        .await
        .unwrap();
    n2.batch_execute("create table only_n2 (v integer); insert into only_n2 values (5)")
        .await
        .unwrap();
    let job = submit(
        &m,
        "select pgfan.submit('all', 'with e as (insert into effects select ''once'') select count(*) as n from only_n2', reduce => 'sum')",
    )
    .await;
    assert_eq!(wait(&m, job).await, "failed");
    assert!(
        job_error(&m, job).await.contains("n1: "),
        "{}",
        job_error(&m, job).await
    );
    let n1 = pgfan::db::connect_client(&topo.nodes[0].conninfo())
        .await
        .unwrap();
    n1.batch_execute("create table only_n2 (v integer); insert into only_n2 values (1), (2)")
        .await
        .unwrap();
    let requeued: i32 = m
        .query_one("select pgfan.retry_failed($1)", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requeued, 1, "only n1's task runs again");
    let (letters, waiting): (i64, i64) = {
        let r = m
            .query_one(
                "select count(*), count(*) filter (where replayed_at is null)
                   from pgfan.dead_letter where job_id = $1",
                &[&job],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(letters >= 1, "the failure left a dead letter");
    assert_eq!(waiting, 0, "the retry counts as its replay");
    assert_eq!(result(&m, job).await, [json!({"n": 3})]);
    for i in 0..2 {
        assert_eq!(
            node_count(&topo, i, "select count(*) from effects").await,
            1,
            "node {i}: the failed attempt left no effect, the retry one, n2 none extra"
        );
    }
    topo.shutdown().await.unwrap();
}

/// `pgfan status --json` as an operator's health check runs it.
async fn status(topo: &Topology, extra: &[&str]) -> (bool, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(["status", "--json", "--db", &topo.master_conninfo()])
        .args(extra)
        .output()
        .await
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), json)
}

#[tokio::test]
async fn status_reports_a_stopped_node_and_fails_the_health_check() {
    let (mut topo, m) = topology().await;
    let job = submit(&m, "select pgfan.run_on_all('select 1 as one', 'sum')").await;
    assert_eq!(result(&m, job).await, [json!({"one": 2})]);
    let (healthy, s) = status(&topo, &["--heartbeat-timeout", "60s"]).await;
    assert!(healthy, "{s:#}");
    assert_eq!(s["jobs"][0]["job_id"], json!(job));
    assert_eq!(s["jobs"][0]["progress"], json!("done: 2 of 2 done"));
    assert!(s["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["queue"] == "push_queue"));

    topo.stop_node(1).await.unwrap();
    // The heartbeat of the stopped node ages; n1's keeps being renewed.
    let mut last = Value::Null;
    for _ in 0..300 {
        let (ok, s) = status(&topo, &["--heartbeat-timeout", "1s"]).await;
        let n2 = &s["nodes"][1];
        if !ok && n2["attention"] == json!(true) {
            assert_eq!(n2["node"], json!("n2"));
            assert!(
                s["attention"][0]
                    .as_str()
                    .unwrap()
                    .contains("node n2 is silent"),
                "{s:#}"
            );
            assert!(
                !s.to_string().contains("password"),
                "no connection details in the output"
            );
            topo.shutdown().await.unwrap();
            return;
        }
        last = s;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status never reported the stopped node: {last:#}");
}
