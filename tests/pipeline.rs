//! The master side of the pipeline: the relay's routing and the reducer's bookkeeping,
//! against real PostgreSQL with the in-process ticker. Node daemons are exercised end to
//! end in tests/e2e.rs; here result events are produced in the documented result format
//! (docs/pipeline.md) so that each reducer rule can be checked on its own.

mod common;

use std::collections::BTreeMap;

use common::{
    eventually, master_with_nodes as master, start_ticker, ticker_config, Backend, TestDb,
};
use pgfan::reducer::ReducerConfig;
use pgfan::relay::RelayConfig;
use pgfan::signals::Control;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// The ticker plus one master daemon, stopped with `stop()`.
struct Running {
    ticker: (mpsc::UnboundedSender<Control>, JoinHandle<()>),
    daemon: (mpsc::UnboundedSender<Control>, JoinHandle<()>),
}

impl Running {
    async fn stop(self) {
        for (ctl, handle) in [self.daemon, self.ticker] {
            ctl.send(Control::Stop).unwrap();
            handle.await.unwrap();
        }
    }
}

fn relay(db: &TestDb) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let cfg = RelayConfig::new(&db.conninfo);
    let handle = tokio::spawn(async move {
        pgfan::relay::run(None, cfg, rx).await.expect("relay runs");
    });
    Running {
        ticker: start_ticker(ticker_config(db)),
        daemon: (tx, handle),
    }
}

fn reducer(db: &TestDb) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut cfg = ReducerConfig::new(&db.conninfo);
    cfg.expire_period = std::time::Duration::from_millis(100);
    let handle = tokio::spawn(async move {
        pgfan::reducer::run(None, cfg, rx)
            .await
            .expect("reducer runs");
    });
    Running {
        ticker: start_ticker(ticker_config(db)),
        daemon: (tx, handle),
    }
}

async fn raw(
    c: &impl tokio_postgres::GenericClient,
    kind: &str,
    data: &str,
    target: Option<&str>,
) -> i64 {
    c.query_one(
        "select pgq.insert_event('push_queue', $1, $2, $3, null, null, null)",
        &[&kind, &data, &target],
    )
    .await
    .unwrap()
    .get(0)
}

/// The job a raw event became, as a producer finds it (pgfan.job_of_event).
async fn job_of_event(c: &Client, ev_id: i64) -> i64 {
    let job: Option<i64> = c
        .query_one("select pgfan.job_of_event($1)", &[&ev_id])
        .await
        .unwrap()
        .get(0);
    job.unwrap_or_else(|| panic!("event {ev_id} made no job"))
}

/// (node, lane, payload, options) of each task of `job`, in task order.
async fn tasks(c: &Client, job: i64) -> Vec<(String, Option<String>, String, Option<String>)> {
    c.query(
        "select node_name, lane, payload, options from pgfan.task where job_id = $1 order by task_id",
        &[&job],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Pull events queued for `node`: task id -> (ev_type, ev_data, job, lane, options).
async fn pull_events(
    c: &Client,
    node: &str,
) -> BTreeMap<i64, (String, String, String, Option<String>, Option<String>)> {
    let table: String = c
        .query_one(
            "select queue_data_pfx from pgq.queue where queue_name = 'pgfan_node_' || $1",
            &[&node],
        )
        .await
        .unwrap()
        .get(0);
    c.query(
        &format!(
            "select ev_extra1, ev_type, ev_data, ev_extra2, ev_extra3, ev_extra4 from {table}"
        ),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let task: String = r.get(0);
        (
            task.parse().unwrap(),
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
        )
    })
    .collect()
}

async fn routing_resolves_every_target_kind(backend: Backend) {
    let (db, c) = master(backend).await;
    let one = raw(&c, "sql", "sql=select+1", Some("n2")).await;
    let list = raw(&c, "sql", "sql=select+2", Some("n3, n1")).await;
    let all = raw(&c, "call", "fn=f&arg=b&arg=a&lane=L", Some("all")).await;
    let any = raw(
        &c,
        "copy",
        "action=ins&id=1&name=x&timeout=2s&tx=0",
        Some("any"),
    )
    .await;
    let hash = raw(&c, "sql", "sql=select+3", Some("hash:customer-42")).await;
    let submitted: i64 = c
        .query_one(
            "select pgfan.run_parallel(array['select 1', 'select 2', 'select 3'], 2, 'n1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let running = relay(&db);
    eventually(
        &db,
        "select count(*) = 6 from pgfan.job where state <> 'submitted'",
    )
    .await;
    let failed: Vec<String> = c
        .query("select error from pgfan.job where state <> 'running'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    running.stop().await;

    let nodes = |t: &[(String, Option<String>, String, Option<String>)]| -> Vec<String> {
        t.iter().map(|x| x.0.clone()).collect()
    };
    assert_eq!(nodes(&tasks(&c, job_of_event(&c, one).await).await), ["n2"]);
    assert_eq!(
        nodes(&tasks(&c, job_of_event(&c, list).await).await),
        ["n3", "n1"]
    );
    let all_tasks = tasks(&c, job_of_event(&c, all).await).await;
    assert_eq!(nodes(&all_tasks), ["n1", "n2", "n3"]);
    assert!(all_tasks
        .iter()
        .all(|t| t.1.as_deref() == Some("L") && t.2 == "fn=f&arg=b&arg=a"));
    let any_tasks = tasks(&c, job_of_event(&c, any).await).await;
    assert_eq!(any_tasks.len(), 1);
    assert_eq!(
        any_tasks[0].2, "action=ins&id=1&name=x",
        "options are not columns"
    );
    assert_eq!(any_tasks[0].3.as_deref(), Some("timeout_ms=2000&tx=0"));
    let owner: String = c
        .query_one(
            "select node_name from pgfan.partition
              where part_no = hashtext('customer-42') & 3",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        nodes(&tasks(&c, job_of_event(&c, hash).await).await),
        [owner]
    );
    let par = tasks(&c, submitted).await;
    let lanes: Vec<Option<String>> = par.iter().map(|t| t.1.clone()).collect();
    let lane = |i| Some(format!("{submitted}:{i}"));
    assert_eq!(lanes, [lane(0), lane(1), lane(0)], "parallel 2 = two lanes");

    // Every task is exactly one pull event in its node's queue, carrying the task.
    let mut total = 0;
    for node in ["n1", "n2", "n3"] {
        let events = pull_events(&c, node).await;
        let rows = c
            .query(
                "select task_id, kind, payload, job_id::text, lane, options from pgfan.task
                  where node_name = $1",
                &[&node],
            )
            .await
            .unwrap();
        assert_eq!(events.len(), rows.len(), "{node}");
        for r in rows {
            let ev = &events[&r.get::<_, i64>(0)];
            assert_eq!((&ev.0, &ev.1, &ev.2), (&r.get(1), &r.get(2), &r.get(3)));
            assert_eq!((&ev.3, &ev.4), (&r.get(4), &r.get(5)));
        }
        total += events.len();
    }
    assert_eq!(total, 1 + 2 + 3 + 1 + 1 + 3);
}

async fn bad_events_fail_their_job_and_the_rest_goes_on(backend: Backend) {
    let (db, c) = master(backend).await;
    c.batch_execute("select pgfan.node_disable('n3')")
        .await
        .unwrap();
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "shell",
            "cmd=ls",
            Some("n1"),
            "unknown event type \"shell\"",
        ),
        ("sql", "sql=%zz", Some("n1"), "malformed percent-encoding"),
        ("sql", "sql=%ff", Some("n1"), "invalid UTF-8"),
        ("sql", "sql=a%00b", Some("n1"), "NUL byte"),
        ("sql", "sql=select+1", Some("n9"), "unknown node n9"),
        ("sql", "sql=select+1", None, "has no target"),
        ("sql", "sql=select+1", Some("n3"), "node n3 is disabled"),
        ("sql", "lane=x", Some("n1"), "sql event without sql="),
        ("call", "arg=1", Some("n1"), "call event without fn="),
        ("copy", "id=1", Some("n1"), "copy event without action="),
        (
            "copy",
            "action=ins",
            Some("n1"),
            "copy event without column values",
        ),
        (
            "sql",
            "sql=select+1&policy=most",
            Some("n1"),
            "invalid policy",
        ),
        (
            "sql",
            "sql=select+1&timeout=soon",
            Some("n1"),
            "invalid timeout",
        ),
        (
            "sql",
            "sql=select+1&job=999999",
            Some("n1"),
            "job 999999, which does not exist",
        ),
    ];
    let mut tx_client = db.connect().await;
    let tx = tx_client.transaction().await.unwrap();
    let mut evs = Vec::new();
    for (kind, data, target, _) in cases {
        evs.push(raw(&tx, kind, data, *target).await);
    }
    let good = raw(&tx, "sql", "sql=select+1", Some("n1")).await;
    tx.commit().await.unwrap();

    let running = relay(&db);
    // The whole producer transaction is one batch: once the good event is routed, all are.
    eventually(
        &db,
        &format!("select exists (select 1 from pgfan.job where source_ev_id = {good})"),
    )
    .await;
    let good_job: (i64, String) = c
        .query_one(
            "select job_id, state from pgfan.job where source_ev_id = $1",
            &[&good],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    running.stop().await;
    assert_eq!(
        good_job.1, "running",
        "the good event in the same batch is routed"
    );

    for ((kind, data, _, want), ev) in cases.iter().zip(&evs) {
        let row = c
            .query_one(
                "select d.error, d.ev_data, d.ev_type from pgfan.dead_letter d
                  where d.source = 'relay' and d.ev_id = $1",
                &[ev],
            )
            .await
            .unwrap_or_else(|e| panic!("no dead letter for {kind} {data}: {e}"));
        let error: String = row.get(0);
        assert!(error.contains(want), "{kind} {data}: {error}");
        assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some(*data));
        if !data.contains("job=") {
            let (state, job_error): (String, String) = c
                .query_one(
                    "select state, error from pgfan.job where source_ev_id = $1",
                    &[ev],
                )
                .await
                .map(|r| (r.get(0), r.get(1)))
                .unwrap();
            assert_eq!(
                (state.as_str(), job_error.as_str()),
                ("failed", error.as_str())
            );
        }
    }
    let routed: i64 = c
        .query_one("select count(*) from pgfan.task", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(routed, 1, "only the good event made a task");
}

async fn submit_checks_what_it_can_at_once(backend: Backend) {
    let (_db, c) = master(backend).await;
    for (sql, want) in [
        ("select pgfan.submit('n9', 'select 1')", "unknown node n9"),
        ("select pgfan.submit('n1')", "nothing to run"),
        (
            "select pgfan.submit('n1', 'select 1', policy => 'some')",
            "policy must be",
        ),
        (
            "select pgfan.submit('n1', 'select 1', call => 'f')",
            "not both",
        ),
    ] {
        let err = c.query_one(sql, &[]).await.unwrap_err();
        assert!(common::db_message(&err).contains(want), "{sql}: {err}");
    }
    // A job submitted in a rolled-back transaction never existed.
    let mut c2 = _db.connect().await;
    let tx = c2.transaction().await.unwrap();
    tx.query_one("select pgfan.submit('n1', 'select 1')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let jobs: i64 = c
        .query_one("select count(*) from pgfan.job", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 0);
}

/// Ships a result event for `task` as node daemons do.
async fn ship(c: &Client, task: i64, node: &str, result: serde_json::Value) {
    let job: i64 = c
        .query_one("select job_id from pgfan.task where task_id = $1", &[&task])
        .await
        .unwrap()
        .get(0);
    c.query_one(
        "select pgq.insert_event('pgfan_results', 'result', $1, $2, $3, $4, null)",
        &[
            &result.to_string(),
            &task.to_string(),
            &job.to_string(),
            &node,
        ],
    )
    .await
    .unwrap();
}

/// Submits and routes (through pgfan.route_job, as the relay does) a job; its task ids.
async fn routed_job(c: &Client, target: &str, sql: &str, extra: &str) -> (i64, Vec<(i64, String)>) {
    let job: i64 = c
        .query_one(
            &format!("select pgfan.submit($1, $2 {extra})"),
            &[&target, &sql],
        )
        .await
        .unwrap()
        .get(0);
    let payload = format!("sql={}", sql.replace(' ', "+"));
    c.query_one(
        "select pgfan.route_job($1, array[$2], array[null::text], null)",
        &[&job, &payload],
    )
    .await
    .unwrap();
    let ids = c
        .query(
            "select task_id, node_name from pgfan.task where job_id = $1 order by node_name",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (job, ids)
}

fn done(columns: &[&str], types: &[&str], rows: serde_json::Value) -> serde_json::Value {
    json!({"state": "done", "error": null, "columns": columns, "types": types, "rows": rows})
}

async fn job_state(c: &Client, job: i64) -> (String, Option<String>) {
    let r = c
        .query_one(
            "select state, error from pgfan.job where job_id = $1",
            &[&job],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn reducer_records_once_and_applies_policies(backend: Backend) {
    let (db, c) = master(backend).await;
    // avg from per-node (sum, count): (10+20+60)/(1+1+4) = 15, not the mean of means.
    let (avg, t) = routed_job(
        &c,
        "all",
        "select sum(v) s, count(*) c from t",
        ", reduce => 'avg'",
    )
    .await;
    let partial = |s: &str, n: &str| done(&["s", "c"], &["numeric", "bigint"], json!([[s, n]]));
    ship(&c, t[0].0, &t[0].1, partial("10", "1")).await;
    ship(&c, t[1].0, &t[1].1, partial("20", "1")).await;
    ship(&c, t[1].0, &t[1].1, partial("999", "1")).await; // re-shipped: must not count
    ship(&c, t[2].0, &t[2].1, partial("60", "4")).await;
    ship(&c, t[2].0, "n1", partial("1", "1")).await; // wrong node: dead letter
                                                     // all: once every task finished, one failed task fails the job with the node's error.
    let (failing, f) = routed_job(&c, "all", "select 1/0", "").await;
    ship(
        &c,
        f[0].0,
        &f[0].1,
        done(&["x"], &["integer"], json!([["1"]])),
    )
    .await;
    let failed = json!({"state": "failed", "error": "22012: division by zero", "columns": [], "types": [], "rows": []});
    ship(&c, f[1].0, &f[1].1, failed).await;
    ship(
        &c,
        f[2].0,
        &f[2].1,
        done(&["x"], &["integer"], json!([["1"]])),
    )
    .await;
    // failfast: the first failure ends the job at once and cancels the open tasks.
    let (fast, ff) = routed_job(&c, "all", "select 1/0", ", policy => 'failfast'").await;
    let failed_fast = json!({"state": "failed", "error": "22012: division by zero", "columns": [], "types": [], "rows": []});
    ship(&c, ff[0].0, &ff[0].1, failed_fast).await;
    // k:2 is done after two results; concat keeps every partial row, typed.
    let (k2, k) = routed_job(&c, "all", "select id, name from t", ", policy => 'k:2'").await;
    let rows = |id: &str, name: Option<&str>| {
        done(&["id", "name"], &["integer", "text"], json!([[id, name]]))
    };
    ship(&c, k[0].0, &k[0].1, rows("1", Some("a b"))).await;
    ship(&c, k[2].0, &k[2].1, rows("3", None)).await;
    // a deadline that passes with nothing shipped
    let (late, _) = routed_job(&c, "n1", "select pg_sleep(60)", ", timeout => '200 ms'").await;

    // Statements with different columns: concat keeps every row, each under its own
    // task's columns; a reduce of its own cannot take them, and their rows stay readable.
    let (mixed, mx) = routed_job(&c, "all", "select 1", "").await;
    let (mixed_sum, ms) = routed_job(&c, "all", "select 1", ", reduce => 'sum'").await;
    for t in [&mx, &ms] {
        ship(
            &c,
            t[0].0,
            &t[0].1,
            done(&["a"], &["integer"], json!([["1"]])),
        )
        .await;
        let other = done(&["b", "c"], &["text", "boolean"], json!([["x", "t"]]));
        ship(&c, t[1].0, &t[1].1, other).await;
        ship(&c, t[2].0, &t[2].1, done(&["a"], &["integer"], json!([]))).await;
    }

    let running = reducer(&db);
    for job in [avg, failing, fast, k2, late, mixed, mixed_sum] {
        eventually(
            &db,
            &format!("select state in ('done', 'failed') from pgfan.job where job_id = {job}"),
        )
        .await;
    }
    running.stop().await;

    assert_eq!(job_state(&c, avg).await, ("done".into(), None));
    let result: Vec<serde_json::Value> = c
        .query("select * from pgfan.result($1)", &[&avg])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(result.len(), 1);
    assert_eq!(result[0]["avg"].as_f64(), Some(15.0), "{result:?}");
    let s: Vec<String> = c
        .query("select vals[1] from pgfan.task_row r join pgfan.task using (task_id) where job_id = $1 order by 1", &[&avg])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(s, ["10", "20", "60"], "each task recorded once");
    let wrong_node: i64 = c
        .query_one(
            "select count(*) from pgfan.dead_letter where source = 'reducer' and error like '%came from node n1%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong_node, 1);

    let (state, error) = job_state(&c, failing).await;
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("division by zero"));
    let err = c
        .query("select * from pgfan.result($1)", &[&failing])
        .await
        .unwrap_err();
    assert!(common::db_message(&err).contains("is failed"));

    assert_eq!(job_state(&c, fast).await.0, "failed");
    let open: i64 = c
        .query_one(
            "select count(*) from pgfan.task where job_id = $1 and state = 'cancelled'",
            &[&fast],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 2, "failfast cancels the tasks still open");
    assert_eq!(job_state(&c, k2).await.0, "done");
    let rows: Vec<serde_json::Value> = c
        .query("select * from pgfan.result($1)", &[&k2])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        [
            json!({"id": 1, "name": "a b"}),
            json!({"id": 3, "name": null})
        ]
    );
    let cancelled: i64 = c
        .query_one(
            "select count(*) from pgfan.task where job_id = $1 and state = 'cancelled'",
            &[&k2],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cancelled, 1, "the task no longer needed is cancelled");

    let (state, error) = job_state(&c, late).await;
    assert_eq!(
        (state.as_str(), error.as_deref()),
        ("failed", Some("timeout: 0 of 1 tasks done"))
    );
    let listed: i64 = c
        .query_one("select count(*) from pgfan.job_deadline", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        listed, 0,
        "an expired job leaves the list of jobs that can expire"
    );

    let rows_of = |sql: &'static str, job: i64| {
        let c = &c;
        async move {
            c.query(sql, &[&job])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect::<Vec<serde_json::Value>>()
        }
    };
    let want = [
        json!({"task": mx[0].0, "node": "n1", "row": {"a": 1}}),
        json!({"task": mx[1].0, "node": "n2", "row": {"b": "x", "c": true}}),
    ];
    assert_eq!(job_state(&c, mixed).await.0, "done");
    assert_eq!(rows_of("select * from pgfan.result($1)", mixed).await, want);
    let (state, error) = job_state(&c, mixed_sum).await;
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("different columns"));
    let partials = rows_of("select * from pgfan.partials($1)", mixed_sum).await;
    assert_eq!(partials.len(), 2, "{partials:?}");
    assert_eq!(partials[1]["row"], json!({"b": "x", "c": true}));
}

async fn wait_and_cancel(backend: Backend) {
    let (db, c) = master(backend).await;
    let (job, t) = routed_job(&c, "n1", "select 1 as one", "").await;
    let waiter = {
        let c = db.connect().await;
        tokio::spawn(async move {
            c.query_one("select pgfan.wait($1, '20 s')", &[&job])
                .await
                .unwrap()
                .get::<_, String>(0)
        })
    };
    ship(
        &c,
        t[0].0,
        "n1",
        done(&["one"], &["integer"], json!([["1"]])),
    )
    .await;
    let running = reducer(&db);
    assert_eq!(waiter.await.unwrap(), "done");
    running.stop().await;
    let summary: String = c
        .query_one("select pgfan.job_summary($1)", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(summary, "done: 1 of 1 done");

    let (job, _) = routed_job(&c, "all", "select pg_sleep(10)", "").await;
    let cancelled: bool = c
        .query_one("select pgfan.cancel($1)", &[&job])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let ids: Vec<i64> = c
        .query("select task_id from pgfan.task where job_id = $1", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let seen: Vec<i64> = c
        .query("select * from pgfan.cancelled_tasks('n2', $1)", &[&ids])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen.len(), 1, "n2 learns that its task was cancelled");
    let status: Vec<(String, i32)> = c
        .query(
            "select node_name, cancelled from pgfan.job_status($1)",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        status,
        [("n1".into(), 1), ("n2".into(), 1), ("n3".into(), 1)]
    );
    let err = c
        .query_one("select pgfan.wait(pgfan.submit('n1', 'select 1'))", &[])
        .await
        .unwrap_err();
    assert!(common::db_message(&err).contains("commit first"));
}

both_backends!(
    routing_resolves_every_target_kind,
    bad_events_fail_their_job_and_the_rest_goes_on,
    submit_checks_what_it_can_at_once,
    reducer_records_once_and_applies_policies,
    wait_and_cancel,
    producer_databases_are_routed_exactly_once,
);

#[test]
fn example_relay_and_reducer_configs_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc");
    for ext in ["toml", "ini"] {
        let relay = RelayConfig::load(&root.join(format!("relay.{ext}"))).unwrap();
        assert_eq!(relay.queue, "push_queue", "relay.{ext}");
        assert!(relay.master.contains("dbname=app"), "relay.{ext}");
        let reducer = ReducerConfig::load(&root.join(format!("reducer.{ext}"))).unwrap();
        assert_eq!(
            reducer.expire_period,
            std::time::Duration::from_secs(1),
            "reducer.{ext}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("relay.toml");
    std::fs::write(&bad, "[relay]\nmaster = \"x\"\nqueue_name = \"q\"\n").unwrap();
    let err = RelayConfig::load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("queue_name") && err.contains("relay.toml"),
        "{err}"
    );
}

/// Runs the relay with `cfg` and a ticker over `dbs` (all on the shared cluster).
fn relay_with(cfg: RelayConfig, dbs: &[&TestDb]) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        pgfan::relay::run(None, cfg, rx).await.expect("relay runs");
    });
    let mut ticker = ticker_config(dbs[0]);
    ticker.database_list = dbs.iter().map(|d| d.name.clone()).collect();
    Running {
        ticker: start_ticker(ticker),
        daemon: (tx, handle),
    }
}

async fn producer_databases_are_routed_exactly_once(backend: Backend) {
    let (db, c) = master(backend).await;
    let shop = TestDb::new(backend).await;
    let p = shop.connect().await;
    p.batch_execute(
        "select pgq.create_queue('push_queue');
         select pgq.set_queue_config('push_queue', 'ticker_max_lag', '0');
         select pgq.register_consumer('push_queue', 'pgfan_relay');",
    )
    .await
    .unwrap();
    // A batch that a previous relay routed before dying ahead of finish_batch: the ledger
    // on the master has it, the producer hands it out again.
    raw(&p, "sql", "sql=select+'routed before'", Some("n1")).await;
    common::tick(&p, "push_queue").await;
    let open = common::next_batch(&p, "push_queue", "pgfan_relay")
        .await
        .unwrap();
    c.query_one(
        "select pgq_ext.set_batch_done('pgfan_relay@shop', $1)",
        &[&open.batch_id],
    )
    .await
    .unwrap();
    let mut cfg = RelayConfig::new(&db.conninfo);
    cfg.producers = vec![pgfan::relay::ProducerConfig {
        name: "shop".into(),
        db: shop.conninfo.clone(),
        queue: "push_queue".into(),
    }];
    let running = relay_with(cfg, &[&db, &shop]);
    let good = raw(&p, "sql", "sql=select+2", Some("n2")).await;
    let bad = raw(&p, "sql", "sql=select+3&job=1", Some("n2")).await;
    eventually(
        &db,
        "select count(*) = 2 from pgfan.job where source_queue = 'shop/push_queue'",
    )
    .await;
    running.stop().await;
    let jobs: Vec<(i64, String, Option<String>)> = c
        .query(
            "select source_ev_id, state, error from pgfan.job
              where source_queue = 'shop/push_queue' order by source_ev_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        jobs.len(),
        2,
        "the batch routed before is not routed again: {jobs:?}"
    );
    assert_eq!((jobs[0].0, jobs[0].1.as_str()), (good, "running"));
    assert_eq!((jobs[1].0, jobs[1].1.as_str()), (bad, "failed"));
    assert!(jobs[1].2.as_deref().unwrap().contains("raw form"));
    let finished = common::next_batch(&p, "push_queue", "pgfan_relay").await;
    assert!(
        finished.is_none_or(|b| b.batch_id != open.batch_id),
        "the redone batch was finished on the producer"
    );
}

/// The plain concatenation of common scalar columns is built by a static statement; it must
/// give exactly the jsonb of the general path (the same rows through a reduce of the
/// caller's own SQL): numbers as numbers, booleans, NULLs, quotes and a repeated name.
#[tokio::test]
async fn the_static_concat_reduce_matches_the_general_one() {
    let (_db, c) = master(Backend::Bundled).await;
    let rows: Vec<Vec<serde_json::Value>> = {
        let mut out = Vec::new();
        for reduce in [None, Some("concat"), Some("select * from partials")] {
            let job: i64 = c
                .query_one(
                    "insert into pgfan.job (kind, target, state, reduce)
                     values ('sql', 'n1', 'running', $1) returning job_id",
                    &[&reduce],
                )
                .await
                .unwrap()
                .get(0);
            c.execute(
                "with t as (
                     insert into pgfan.task (job_id, node_name, kind, payload, state,
                                             result_columns, result_types)
                     select $1, n, 'sql', 'x', 'done',
                            array['a', 'b', 'c', 'd', 'e', 'a', 'f'],
                            array['bigint', 'text', 'boolean', 'numeric', 'integer',
                                  'smallint', 'character varying']
                       from unnest(array['n1', 'n2']) n
                     returning task_id)
                 insert into pgfan.task_row (task_id, row_no, vals)
                 select t.task_id, g, array[(g * 7)::text, 'x\"y''\\' || g,
                                            case when g % 2 = 0 then 't' else 'f' end,
                                            '1.50', null, '-3', 'v']
                   from t, generate_series(1, 3) g",
                &[&job],
            )
            .await
            .unwrap();
            let n: i32 = c
                .query_one("select pgfan.reduce_job($1)", &[&job])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 6, "reduce {reduce:?}");
            out.push(
                c.query(
                    "select row_data from pgfan.job_result where job_id = $1 order by row_no",
                    &[&job],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            );
        }
        out
    };
    assert_eq!(rows[0], rows[2], "concat by default");
    assert_eq!(rows[1], rows[2], "concat named");
    assert_eq!(
        rows[0][0],
        json!({"a": -3, "b": "x\"y'\\1", "c": false, "d": 1.50, "e": null, "f": "v"})
    );
}

/// `record_results` and `complete_jobs` (the reducer's set-based calls) must leave exactly
/// what `record_result` and `complete_job` one by one leave: the same chunk of results is
/// applied to two copies of the same jobs, one copy each way, and everything is compared
/// (task states and rows, job states, errors and results, dead letters).
#[tokio::test]
async fn set_based_recording_matches_one_by_one() {
    let (_db, c) = master(Backend::Bundled).await;
    // (policy, reduce, nodes); a task state other than queued is set after.
    let jobs: [(&str, Option<&str>, &[&str]); 7] = [
        ("all", None, &["n1", "n2"]),
        ("failfast", None, &["n1", "n2"]),
        ("k:1", None, &["n1", "n2"]),
        ("all", Some("sum"), &["n1"]),
        ("all", None, &["n1"]),
        ("all", Some("concat"), &["n1", "n2", "n3"]),
        // one task, no reduce: finished as its result is recorded (record_results_finish)
        ("all", None, &["n2"]),
    ];
    let done = |cols: &[&str], types: &[&str], rows: serde_json::Value| json!({"state": "done", "error": null, "columns": cols, "types": types, "rows": rows});
    // (job, task index in the job or None for an unknown task, node, result)
    let chunk: Vec<(usize, Option<usize>, &str, serde_json::Value)> = vec![
        (0, Some(0), "n1", done(&["c"], &["bigint"], json!([["1"]]))),
        (
            0,
            Some(1),
            "n2",
            done(&["c"], &["bigint"], json!([["2"], [null]])),
        ),
        (
            1,
            Some(0),
            "n1",
            json!({"state": "failed", "error": "boom"}),
        ),
        (1, Some(1), "n3", done(&["c"], &["bigint"], json!([["9"]]))),
        (
            2,
            Some(0),
            "n1",
            done(&["t", "b"], &["text", "boolean"], json!([["x", "t"]])),
        ),
        (2, Some(1), "n2", json!({"state": "weird"})),
        (
            3,
            Some(0),
            "n1",
            done(&["s"], &["numeric"], json!([["5.5"]])),
        ),
        (
            4,
            Some(0),
            "n1",
            done(&["d"], &["date"], json!([["2026-11-30"]])),
        ),
        (5, Some(0), "n1", done(&["c"], &["integer"], json!([["1"]]))),
        (
            5,
            Some(1),
            "n2",
            done(&["c", "x"], &["integer", "text"], json!([["1", "y"]])),
        ),
        (5, Some(2), "n3", done(&["c"], &["integer"], json!([]))),
        (
            6,
            Some(0),
            "n2",
            done(&["c", "t"], &["integer", "text"], json!([["7", "z"]])),
        ),
        (0, None, "n1", done(&[], &[], json!([]))),
    ];
    let mut outcome = Vec::new();
    for set_based in [true, false] {
        let mut task_ids: Vec<Vec<i64>> = Vec::new();
        for (policy, reduce, nodes) in &jobs {
            let job: i64 = c
                .query_one(
                    "insert into pgfan.job (kind, target, state, policy, reduce)
                     values ('sql', 'n1', 'running', $1, $2) returning job_id",
                    &[policy, reduce],
                )
                .await
                .unwrap()
                .get(0);
            let mut ids = Vec::new();
            for node in *nodes {
                ids.push(
                    c.query_one(
                        "insert into pgfan.task (job_id, node_name, kind, payload, state)
                         values ($1, $2, 'sql', 'x', 'claimed') returning task_id",
                        &[&job, node],
                    )
                    .await
                    .unwrap()
                    .get(0),
                );
            }
            task_ids.push(ids);
        }
        // The fifth job's task was cancelled on the master; the node's report replaces that.
        c.execute(
            "update pgfan.task set state = 'cancelled' where task_id = $1",
            &[&task_ids[4][0]],
        )
        .await
        .unwrap();
        let first_job: i64 = c
            .query_one(
                "select job_id from pgfan.task where task_id = $1",
                &[&task_ids[0][0]],
            )
            .await
            .unwrap()
            .get(0);
        let ids: Vec<i64> = chunk
            .iter()
            .map(|(j, t, _, _)| t.map_or(i64::MAX - 1, |t| task_ids[*j][t]))
            .collect();
        let nodes: Vec<&str> = chunk.iter().map(|(_, _, n, _)| *n).collect();
        let results: Vec<serde_json::Value> = chunk.iter().map(|(_, _, _, r)| r.clone()).collect();
        // Set-based: the jobs record_results_finish finished are not offered to complete_jobs.
        let mut finished_early: Vec<(i64, String)> = Vec::new();
        let recorded: Vec<Option<i64>> = if set_based {
            let mut v = Vec::new();
            for r in c
                .query(
                    "select recorded_job, finished from pgfan.record_results_finish($1, $2, $3)",
                    &[&ids, &nodes, &results],
                )
                .await
                .unwrap()
            {
                let (job, fin): (Option<i64>, bool) = (r.get(0), r.get(1));
                if fin {
                    finished_early.extend(job.map(|j| (j, "done".to_string())));
                }
                v.push(job);
            }
            v
        } else {
            let mut v = Vec::new();
            for i in 0..ids.len() {
                v.push(
                    c.query_one(
                        "select pgfan.record_result($1, $2, $3)",
                        &[&ids[i], &nodes[i], &results[i]],
                    )
                    .await
                    .unwrap()
                    .get(0),
                );
            }
            v
        };
        let mut touched: Vec<i64> = recorded
            .iter()
            .flatten()
            .copied()
            .filter(|j| !finished_early.iter().any(|(f, _)| f == j))
            .collect();
        touched.sort();
        touched.dedup();
        let mut finished: Vec<(i64, String)> = if set_based {
            c.query("select * from pgfan.complete_jobs($1)", &[&touched])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        } else {
            let mut v = Vec::new();
            for job in &touched {
                let state: Option<String> = c
                    .query_one("select pgfan.complete_job($1)", &[job])
                    .await
                    .unwrap()
                    .get(0);
                v.extend(state.map(|s| (*job, s)));
            }
            v
        };
        finished.extend(finished_early);
        finished.sort();
        // Everything as seen from the jobs, with ids made relative to this copy (a row of
        // tasks with different columns names its task: left out, its node and row stay).
        let rel = |id: i64| id - first_job;
        let jobs_seen: Vec<String> = c
            .query(
                "select format('%s %s %s %s', j.job_id - $1, j.state,
                               regexp_replace(j.error, 'job \\d+', 'job <job>'),
                               (select jsonb_agg(r.row_data - 'task' order by r.row_no)
                                  from pgfan.job_result r where r.job_id = j.job_id))
                   from pgfan.job j where j.job_id >= $1 and j.job_id < $1 + 7 order by j.job_id",
                &[&first_job],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let tasks_seen: Vec<String> = c
            .query(
                "select format('%s %s %s %s %s %s %s', t.job_id - $1, t.node_name, t.state, t.error,
                               t.result_columns, t.result_types,
                               (select array_agg(r.vals order by r.row_no)
                                  from pgfan.task_row r where r.task_id = t.task_id))
                   from pgfan.task t where t.job_id >= $1 and t.job_id < $1 + 7
                  order by t.job_id, t.task_id",
                &[&first_job],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let task_no = |id: i64| -> String {
            task_ids
                .iter()
                .enumerate()
                .find_map(|(j, ts)| ts.iter().position(|t| *t == id).map(|k| format!("{j}.{k}")))
                .unwrap_or_else(|| "unknown".into())
        };
        let mut dead: Vec<String> = c
            .query(
                "select source, job_id - $1, task_id, ev_target,
                        regexp_replace(error, 'job \\d+', 'job <job>') from pgfan.dead_letter
                  where (job_id >= $1 and job_id < $1 + 7) or task_id = any($2)",
                &[&first_job, &ids],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let task: Option<i64> = r.get(2);
                let error: String = r.get(4);
                let error = task.map_or(error.clone(), |t| error.replace(&t.to_string(), "<task>"));
                format!(
                    "{} {:?} {} {:?} {error}",
                    r.get::<_, String>(0),
                    r.get::<_, Option<i64>>(1),
                    task.map_or("-".into(), task_no),
                    r.get::<_, Option<String>>(3)
                )
            })
            .collect();
        dead.sort();
        c.execute(
            "delete from pgfan.dead_letter where task_id = any($1)",
            &[&ids],
        )
        .await
        .unwrap();
        let recorded: Vec<Option<i64>> = recorded.iter().map(|j| j.map(rel)).collect();
        let finished: Vec<(i64, String)> = finished.into_iter().map(|(j, s)| (rel(j), s)).collect();
        outcome.push((recorded, finished, jobs_seen, tasks_seen, dead));
    }
    let (set, one) = (&outcome[0], &outcome[1]);
    assert_eq!(set.0, one.0, "recorded");
    assert_eq!(set.1, one.1, "finished");
    assert_eq!(set.2, one.2, "jobs");
    assert_eq!(set.3, one.3, "tasks");
    assert_eq!(set.4, one.4, "dead letters");
    // The chunk did reach every rule: done, failed (failfast), k:1, a reduce, a replaced
    // cancel, a concat of mixed shapes (done: each row under its own columns, with its
    // node), a foreign node, an invalid state, an unknown task, a job of one task finished
    // as its result was recorded.
    let states: Vec<&str> = set.1.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        states,
        ["done", "failed", "done", "done", "done", "done", "done"],
        "{set:?}"
    );
    assert_eq!(set.4.len(), 4, "{:?}", set.4);
}

/// `route_events` (the relay's set-based call for a whole batch) must make exactly what
/// `route_event` makes event by event: the same jobs, tasks in the same order, the same
/// pull events. One batch goes each way; everything is compared with ids made relative.
#[tokio::test]
async fn set_based_routing_matches_one_by_one() {
    let (_db, c) = master(Backend::Bundled).await;
    type Ev = (
        &'static str,         // kind
        &'static str,         // target
        Option<&'static str>, // reduce
        Option<&'static str>, // policy
        Option<&'static str>, // timeout
        &'static [&'static str],
        Option<&'static str>, // lane
        Option<i32>,          // parallel
        &'static str,         // options
    );
    let raw: [Ev; 6] = [
        (
            "sql",
            "n1",
            None,
            None,
            None,
            &["sql=select+1"],
            None,
            None,
            "",
        ),
        (
            "sql",
            "n1,n2",
            Some("sum"),
            Some("failfast"),
            Some("5000 milliseconds"),
            &["sql=select+2"],
            None,
            None,
            "timeout_ms=5000",
        ),
        (
            "copy",
            "all",
            None,
            None,
            None,
            &["action=ins&id=1"],
            Some("L"),
            None,
            "tx=0",
        ),
        (
            "sql",
            "n2",
            None,
            Some("k:2"),
            None,
            &["sql=select+3", "sql=select+4", "sql=select+5"],
            None,
            Some(2),
            "",
        ),
        (
            "sql",
            "hash:abc",
            None,
            None,
            None,
            &["sql=select+6"],
            None,
            None,
            "",
        ),
        (
            "sql",
            " n3 , n3,n1",
            None,
            None,
            None,
            &["sql=select+7"],
            None,
            None,
            "",
        ),
    ];
    let mut seen = Vec::new();
    for (copy, set_based) in [("a", true), ("b", false)] {
        let source = format!("test_{copy}");
        // Two submitted jobs as well: one to route, one cancelled before routing.
        let submitted: i64 = c
            .query_one("select pgfan.submit('n3', 'select 8', lane => 'M')", &[])
            .await
            .unwrap()
            .get(0);
        let cancelled: i64 = c
            .query_one("select pgfan.submit('n1', 'select 9')", &[])
            .await
            .unwrap()
            .get(0);
        c.query_one("select pgfan.cancel($1)", &[&cancelled])
            .await
            .unwrap();
        let n = raw.len() + 2;
        let ev_ids: Vec<i64> = (1..=n as i64).collect();
        let mut jobs: Vec<Option<i64>> = vec![None; raw.len()];
        jobs.extend([Some(submitted), Some(cancelled)]);
        let pick = |f: &dyn Fn(&Ev) -> Option<String>, rest: [Option<String>; 2]| {
            raw.iter()
                .map(f)
                .chain(rest)
                .collect::<Vec<Option<String>>>()
        };
        let kinds = pick(
            &|e| Some(e.0.into()),
            [Some("sql".into()), Some("sql".into())],
        );
        let targets = pick(
            &|e| Some(e.1.into()),
            [Some("n3".into()), Some("n1".into())],
        );
        let reduces = pick(&|e| e.2.map(Into::into), [None, None]);
        let policies = pick(&|e| e.3.map(Into::into), [None, None]);
        let timeouts = pick(&|e| e.4.map(Into::into), [None, None]);
        let lanes = pick(&|e| e.6.map(Into::into), [Some("M".into()), None]);
        let options: Vec<String> = pick(&|e| Some(e.8.into()), [Some("".into()), Some("".into())])
            .into_iter()
            .flatten()
            .collect();
        let mut payloads: Vec<Vec<String>> = raw
            .iter()
            .map(|e| e.5.iter().map(|p| p.to_string()).collect())
            .collect();
        payloads.extend([vec!["sql=select+8".into()], vec!["sql=select+9".into()]]);
        let mut parallels: Vec<Option<i32>> = raw.iter().map(|e| e.7).collect();
        parallels.extend([None, None]);
        let params: Vec<Option<serde_json::Value>> = (0..n)
            .map(|i| (i < raw.len()).then(|| json!({"sql": [format!("event {i}")]})))
            .collect();
        let routed: Vec<i64> = if set_based {
            let payloads: Vec<serde_json::Value> = payloads.iter().map(|p| json!(p)).collect();
            c.query_one(
                "select pgfan.route_events($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::interval[],
                                           $10, $11, $12, $13)",
                &[
                    &source, &ev_ids, &jobs, &kinds, &targets, &params, &reduces, &policies,
                    &timeouts, &payloads, &lanes, &parallels, &options,
                ],
            )
            .await
            .unwrap()
            .get(0)
        } else {
            let mut v = Vec::new();
            for i in 0..n {
                v.push(
                    c.query_one(
                        "select pgfan.route_event($1, $2, $3, $4, $5, $6, $7, $8,
                                                  $9::text::interval, $10, $11, $12, $13)",
                        &[
                            &source,
                            &ev_ids[i],
                            &jobs[i],
                            &kinds[i],
                            &targets[i],
                            &params[i],
                            &reduces[i],
                            &policies[i],
                            &timeouts[i],
                            &payloads[i],
                            &lanes[i],
                            &parallels[i],
                            &options[i],
                        ],
                    )
                    .await
                    .unwrap()
                    .get(0),
                );
            }
            v
        };
        // Everything as text with ids relative to this copy: job J<n> is the n-th routed
        // event's, task T<n> the n-th task in id order; a '<job>:<n>' lane names its job so.
        let rows = |sql: &'static str| {
            let c = &c;
            let routed = &routed;
            async move {
                c.query(sql, &[routed])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<String>>()
            }
        };
        let jobs_seen = rows(
            "select format('J%s %s %L %s %L %s %L %s %L %s %L', array_position($1, job_id) - 1,
                           kind, target, params, reduce, policy, deadline - submitted_at, state,
                           n_tasks, routed_at is not null, source_ev_id)
               from pgfan.job where job_id = any($1) order by array_position($1, job_id)",
        )
        .await;
        let tasks_seen = rows(
            "select format('T%s J%s %s %s %s %s %L %L %s', row_number() over (order by task_id) - 1,
                           array_position($1, job_id) - 1, node_name, part_no, kind, payload,
                           regexp_replace(lane, '^' || job_id || ':',
                                          'J' || array_position($1, job_id) - 1 || ':'),
                           options, state)
               from pgfan.task where job_id = any($1) order by task_id",
        )
        .await;
        let events_seen = rows(
            "with t as (select task_id, job_id, row_number() over (order by task_id) - 1 as n
                          from pgfan.task where job_id = any($1))
             select format('%s %s %s T%s J%s %L %L', q.queue_name, e.ev_type, e.ev_data, t.n,
                           array_position($1, e.ev_extra2::bigint) - 1,
                           regexp_replace(e.ev_extra3, '^' || t.job_id || ':',
                                          'J' || array_position($1, t.job_id) - 1 || ':'),
                           e.ev_extra4)
               from pgq.event_template e
               join t on e.ev_extra1 = t.task_id::text
               join pgq.queue q on e.tableoid::regclass::text like q.queue_data_pfx || '\\_%'
              order by q.queue_name, e.ev_id",
        )
        .await;
        assert_eq!(
            events_seen.len(),
            tasks_seen.len(),
            "one pull event per task"
        );
        seen.push((jobs_seen, tasks_seen, events_seen));
    }
    assert_eq!(seen[0].0, seen[1].0, "jobs");
    assert_eq!(seen[0].1, seen[1].1, "tasks");
    assert_eq!(seen[0].2, seen[1].2, "pull events");
    // 1 + 2 + 3 (all) + 3 + 1 + 2 + 1 tasks, none for the cancelled job.
    assert_eq!(seen[0].1.len(), 13, "{:#?}", seen[0].1);
    assert!(
        seen[0].1.iter().any(|t| t.contains("'J3:1'")),
        "parallel lanes name their job: {:#?}",
        seen[0].1
    );
}
