//! What batching the master side adds (issue 12): pull events that carry many tasks
//! (`pgfan.route_batch`), result events that carry many results
//! (`pgfan.node_ship_batch`), raw jobs written once at routing, and the readers of both
//! event formats (docs/pipeline.md).

mod common;

use std::time::Duration;

use common::{master_with_nodes as master, Backend, TestDb};
use pgfan::reducer::ReducerConfig;
use pgfan::signals::Control;
use serde_json::{json, Value};
use tokio_postgres::Client;

both_backends!(
    route_batch_makes_what_route_event_makes_in_fewer_writes,
    route_batch_declines_what_it_cannot_route_in_a_set,
    the_reducer_reads_both_result_formats,
    node_ship_batch_is_a_node_door,
);

/// Raw events of one routed batch: (kind, target, payloads, lane, parallel, options).
type Raw = (
    &'static str,
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
    Option<i32>,
    &'static str,
);

const RAW: [Raw; 5] = [
    ("copy", "n1", &["action=ins&id=1"], None, None, ""),
    (
        "sql",
        "n1,n2",
        &["sql=select+2"],
        None,
        None,
        "timeout_ms=500",
    ),
    ("sql", "all", &["sql=select+3"], Some("L"), None, "tx=0"),
    (
        "sql",
        "n2",
        &["sql=select+4", "sql=select+5", "sql=select+6"],
        None,
        Some(2),
        "",
    ),
    ("sql", "hash:abc", &["sql=select+7"], None, None, ""),
];

/// Routes RAW plus one submitted job from `source`, set-based or event by event; the job
/// ids in event order.
async fn route(c: &impl tokio_postgres::GenericClient, source: &str, set_based: bool) -> Vec<i64> {
    let submitted: i64 = c
        .query_one("select pgfan.submit('n3', 'select 8', lane => 'M')", &[])
        .await
        .unwrap()
        .get(0);
    let n = RAW.len() + 1;
    let ev_ids: Vec<i64> = (1..=n as i64).collect();
    let mut jobs: Vec<Option<i64>> = vec![None; RAW.len()];
    jobs.push(Some(submitted));
    let col = |f: fn(&Raw) -> Option<String>, last: Option<String>| {
        RAW.iter().map(f).chain([last]).collect::<Vec<_>>()
    };
    let kinds = col(|r| Some(r.0.into()), Some("sql".into()));
    let targets = col(|r| Some(r.1.into()), Some("n3".into()));
    let lanes = col(|r| r.3.map(Into::into), Some("M".into()));
    let options: Vec<String> = col(|r| Some(r.5.into()), Some(String::new()))
        .into_iter()
        .flatten()
        .collect();
    let mut payloads: Vec<Vec<String>> = RAW
        .iter()
        .map(|r| r.2.iter().map(|p| p.to_string()).collect())
        .collect();
    payloads.push(vec!["sql=select+8".into()]);
    let parallels: Vec<Option<i32>> = RAW.iter().map(|r| r.4).chain([None]).collect();
    let params: Vec<Option<Value>> = (0..n)
        .map(|i| (i < RAW.len()).then(|| json!({"sql": [format!("event {i}")]})))
        .collect();
    let none: Vec<Option<String>> = vec![None; n];
    if set_based {
        let payloads: Vec<Value> = payloads.iter().map(|p| json!(p)).collect();
        return c
            .query_one(
                "select pgfan.route_batch($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::interval[],
                                          $10, $11, $12, $13)",
                &[
                    &source, &ev_ids, &jobs, &kinds, &targets, &params, &none, &none, &none,
                    &payloads, &lanes, &parallels, &options,
                ],
            )
            .await
            .unwrap()
            .get(0);
    }
    let mut routed = Vec::new();
    for i in 0..n {
        routed.push(
            c.query_one(
                "select pgfan.route_event($1, $2, $3, $4, $5, $6, null, null, null, $7, $8, $9, $10)",
                &[
                    &source,
                    &ev_ids[i],
                    &jobs[i],
                    &kinds[i],
                    &targets[i],
                    &params[i],
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
    routed
}

/// Every task the pull queues hold for `jobs`, whatever the event format, as text with
/// ids made relative (T<n>: n-th task in id order, J<n>: job of the n-th event), in queue
/// and task order; and the number of pull events that carried them.
async fn pulled(c: &Client, jobs: &[i64]) -> (Vec<String>, i64) {
    const TASKS: &str = "
        with ev as (
            select q.queue_name, e.ev_id, e.ev_type, e.ev_data, e.ev_extra1, e.ev_extra2,
                   e.ev_extra3, e.ev_extra4
              from pgq.event_template e
              join pgq.queue q on e.tableoid::regclass::text like q.queue_data_pfx || '\\_%'
             where q.queue_name like 'pgfan\\_node\\_%'),
        pulled as (
            select ev.queue_name, ev.ev_id, (x ->> 'task')::bigint as task_id,
                   (x ->> 'job')::bigint as job_id, x ->> 'kind' as kind, x ->> 'data' as data,
                   x ->> 'lane' as lane, x ->> 'options' as options
              from ev, json_array_elements(ev.ev_data::json) x where ev.ev_type = 'tasks'
            union all
            select ev.queue_name, ev.ev_id, ev.ev_extra1::bigint, ev.ev_extra2::bigint,
                   ev.ev_type, ev.ev_data, ev.ev_extra3, ev.ev_extra4
              from ev where ev.ev_type <> 'tasks'),
        t as (select task_id, row_number() over (order by task_id) - 1 as n
                from pgfan.task where job_id = any($1))
        select format('%s T%s J%s %s %s %L %L', p.queue_name, t.n,
                      array_position($1, p.job_id) - 1, p.kind, p.data,
                      regexp_replace(p.lane, '^' || p.job_id || ':',
                                     'J' || array_position($1, p.job_id) - 1 || ':'),
                      p.options),
               (select count(distinct (p2.queue_name, p2.ev_id)) from pulled p2 join t t2 using (task_id))
          from pulled p join t using (task_id)
         order by p.queue_name, p.task_id";
    let rows = c.query(TASKS, &[&jobs]).await.unwrap();
    let events = rows.first().map_or(0, |r| r.get(1));
    (rows.iter().map(|r| r.get(0)).collect(), events)
}

/// Jobs and tasks as text with relative ids.
async fn made(c: &Client, jobs: &[i64]) -> Vec<String> {
    c.query(
        "select format('J%s %s %L %s %s %s %L', array_position($1, job_id) - 1, kind, target,
                       params, state, n_tasks, routed_at is not null)
           from pgfan.job where job_id = any($1)
         union all
         select format('T%s J%s %s %s %s %s %L %L %s',
                       row_number() over (order by task_id) - 1,
                       array_position($1, job_id) - 1, node_name, part_no, kind, payload,
                       regexp_replace(lane, '^' || job_id || ':',
                                      'J' || array_position($1, job_id) - 1 || ':'),
                       options, state)
           from pgfan.task where job_id = any($1)",
        &[&jobs],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The same jobs, tasks and pulled tasks as event-by-event routing; one pull event per
/// node instead of one per task; raw jobs inserted once and never updated.
async fn route_batch_makes_what_route_event_makes_in_fewer_writes(backend: Backend) {
    let (db, _) = master(backend).await;
    let mut seen = Vec::new();
    for (source, set_based) in [("test_a", true), ("test_b", false)] {
        // A fresh session per way, so that each reads its own transaction's counters.
        let mut c = db.connect().await;
        let tx = c.transaction().await.unwrap();
        let jobs = route(&tx, source, set_based).await;
        let writes: (i64, i64) = tx
            .query_one(
                "select n_tup_ins, n_tup_upd from pg_stat_xact_user_tables
                  where relid = 'pgfan.job'::regclass",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        tx.commit().await.unwrap();
        let (tasks, events) = pulled(&c, &jobs).await;
        seen.push((made(&c, &jobs).await, tasks, events, writes));
    }
    let ((jobs_a, pulled_a, events_a, writes_a), (jobs_b, pulled_b, events_b, writes_b)) =
        (&seen[0], &seen[1]);
    assert_eq!(jobs_a, jobs_b, "jobs and tasks");
    assert_eq!(pulled_a, pulled_b, "pulled tasks");
    // 1 + 2 + 3 (all) + 3 + 1 + 1 tasks
    assert_eq!(pulled_a.len(), 11, "{pulled_a:#?}");
    assert_eq!(*events_b, 11, "event by event: one pull event per task");
    assert_eq!(*events_a, 3, "set-based: one pull event per node");
    // Raw jobs: 5 inserts, no update; the submitted job (pgfan.submit in the same
    // transaction) one insert and one update.
    assert_eq!(*writes_a, (6, 1), "set-based job writes");
    assert_eq!(writes_b.0, 6);
    assert!(
        writes_b.1 > 1,
        "event by event updates raw jobs too: {writes_b:?}"
    );
}

/// A raw event whose job exists already (a replayed event) makes route_batch raise, so
/// that the relay routes event by event, where it is told apart; nothing is half made.
async fn route_batch_declines_what_it_cannot_route_in_a_set(backend: Backend) {
    let (_db, c) = master(backend).await;
    let call = "select pgfan.route_batch('q', array[1::bigint], array[null::bigint],
                    array['sql'], array[$1::text], array['{}'::jsonb], array[null::text],
                    array[null::text], array[null::interval], array['[\"sql=select+1\"]'::jsonb],
                    array[null::text], array[null::integer], array[''])";
    c.query_one(call, &[&"n1"]).await.unwrap();
    let err = c.query_one(call, &[&"n1"]).await.unwrap_err();
    assert!(
        common::db_message(&err).contains("has a job already"),
        "{err:?}"
    );
    for target in ["any", "nosuchnode"] {
        let call = call.replace("array[1::bigint]", "array[2::bigint]");
        assert!(c.query_one(&call, &[&target]).await.is_err(), "{target}");
    }
    let counts: (i64, i64) = c
        .query_one(
            "select (select count(*) from pgfan.job), (select count(*) from pgfan.task)",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(counts, (1, 1));
}

fn reducer(
    db: &TestDb,
) -> Vec<(
    tokio::sync::mpsc::UnboundedSender<Control>,
    tokio::task::JoinHandle<()>,
)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cfg = ReducerConfig::new(&db.conninfo);
    cfg.expire_period = Duration::from_millis(100);
    let handle = tokio::spawn(async move {
        pgfan::reducer::run(None, cfg, rx)
            .await
            .expect("reducer runs");
    });
    vec![
        (tx, handle),
        common::start_ticker(common::ticker_config(db)),
    ]
}

/// A submitted job of `n` statements on `node`, routed event by event; its task ids.
async fn job_with_tasks(c: &Client, node: &str, n: usize) -> (i64, Vec<i64>) {
    let sqls: Vec<String> = (0..n).map(|i| format!("select {i} as v")).collect();
    let job: i64 = c
        .query_one("select pgfan.run_parallel($1, 2, $2)", &[&sqls, &node])
        .await
        .unwrap()
        .get(0);
    let payloads: Vec<String> = sqls
        .iter()
        .map(|s| format!("sql={}", s.replace(' ', "+")))
        .collect();
    let lanes: Vec<Option<String>> = vec![None; n];
    c.query_one(
        "select pgfan.route_job($1, $2, $3, null)",
        &[&job, &payloads, &lanes],
    )
    .await
    .unwrap();
    let tasks = c
        .query(
            "select task_id from pgfan.task where job_id = $1 order by task_id",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (job, tasks)
}

fn done(v: i64) -> String {
    json!({"state": "done", "error": null, "columns": ["v"], "types": ["integer"],
           "rows": [[v.to_string()]]})
    .to_string()
}

/// A `results` event records all its results; an old `result` event still records its
/// one; a malformed element is a dead letter of its own and the rest of its event counts.
async fn the_reducer_reads_both_result_formats(backend: Backend) {
    let (db, c) = master(backend).await;
    let (many, many_tasks) = job_with_tasks(&c, "n1", 3).await;
    let (old, old_tasks) = job_with_tasks(&c, "n2", 1).await;
    let (bad, bad_tasks) = job_with_tasks(&c, "n1", 1).await;
    let ids: Vec<String> = many_tasks.iter().map(|_| many.to_string()).collect();
    let results: Vec<String> = (0..3).map(done).collect();
    let shipped: i32 = c
        .query_one(
            "select pgfan.node_ship_batch('n1', $1, $2, $3)",
            &[&many_tasks, &ids, &results],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipped, 3);
    c.query_one(
        "select pgq.insert_event('pgfan_results', 'result', $1, $2, $3, 'n2', null)",
        &[&done(7), &old_tasks[0].to_string(), &old.to_string()],
    )
    .await
    .unwrap();
    // One element without a result object beside a good one, and an event that is no array.
    let mixed = format!(
        r#"[{{"task": {}, "job": "{bad}", "result": "nope"}}, {{"task": {}, "job": "{many}", "result": {}}}]"#,
        bad_tasks[0],
        many_tasks[0],
        done(9)
    );
    c.query_one(
        "select pgq.insert_event('pgfan_results', 'results', $1, null, null, 'n1', null)",
        &[&mixed],
    )
    .await
    .unwrap();
    c.query_one(
        "select pgq.insert_event('pgfan_results', 'results', '{\"task\": 1}', null, null, 'n1', null)",
        &[],
    )
    .await
    .unwrap();
    let running = reducer(&db);
    for job in [many, old] {
        assert_eq!(
            common::wait_job(&c, job).await,
            ("done".into(), String::new())
        );
    }
    let rows: Vec<Value> = c
        .query("select * from pgfan.result($1)", &[&many])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The duplicate of the first task (in the mixed event) is not recorded twice.
    assert_eq!(
        rows,
        vec![json!({"v": 0}), json!({"v": 1}), json!({"v": 2})]
    );
    common::eventually(
        &db,
        "select count(*) = 2 from pgfan.dead_letter
          where error = 'pgfan: malformed result event' and ev_type = 'results'",
    )
    .await;
    let letters: Vec<String> = c
        .query(
            "select ev_data from pgfan.dead_letter where ev_type = 'results' order by dl_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        letters
            .iter()
            .any(|d| d.contains("nope") && !d.contains(&format!("\"task\":{}", many_tasks[0]))),
        "{letters:?}"
    );
    let bad_state: String = c
        .query_one("select state from pgfan.job where job_id = $1", &[&bad])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad_state, "running", "its result was a dead letter");
    for (ctl, handle) in running {
        ctl.send(Control::Stop).unwrap();
        handle.await.unwrap();
    }
}

/// Only a login that may act as the node ships, and only the node's own tasks.
async fn node_ship_batch_is_a_node_door(backend: Backend) {
    let (db, c) = master(backend).await;
    let role = format!("{}_n1", db.name);
    c.batch_execute(&format!(
        "create role {role} login; grant pgfan_node to {role};
         select pgfan.node_set_login('n1', '{role}');"
    ))
    .await
    .unwrap();
    let (job1, t1) = job_with_tasks(&c, "n1", 1).await;
    let (job2, t2) = job_with_tasks(&c, "n2", 1).await;
    let n1 = db.connect_as(&role).await;
    let ship = "select pgfan.node_ship_batch($1, $2, array[$3], array[$4])";
    for (node, task, job) in [("n2", t2[0], job2), ("n1", t2[0], job2)] {
        let err = n1
            .query_one(ship, &[&node, &vec![task], &job.to_string(), &done(1)])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err:?}"
        );
    }
    let n: i32 = n1
        .query_one(ship, &[&"n1", &t1, &job1.to_string(), &done(1)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let events: Vec<(String, Option<String>, Value)> = c
        .query(
            "select ev_type, ev_extra3, ev_data::json from pgq.event_template
              where ev_type in ('result', 'results')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        events,
        vec![(
            "results".to_string(),
            Some("n1".to_string()),
            json!([{"task": t1[0], "job": job1.to_string(), "result": serde_json::from_str::<Value>(&done(1)).unwrap()}])
        )]
    );
}

/// A job of 200 statements for one node travels as one pull event, and its results come
/// back in result events that each carry many; the job is done with every row.
#[tokio::test]
async fn two_hundred_statements_travel_as_one_pull_event() {
    let topo = pgfan::demo::Topology::start(1, |_| {})
        .await
        .expect("topology starts");
    let m = topo.master_client().await.unwrap();
    let data: Vec<String> = (0..200).map(|i| format!("sql=select+{i}+as+v")).collect();
    let job = common::raw_job(&m, "sql", &format!("{}&parallel=4", data.join("&")), "n1").await;
    assert_eq!(
        common::wait_job(&m, job).await,
        ("done".into(), String::new())
    );
    let rows: Vec<Value> = m
        .query("select * from pgfan.result($1)", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, (0..200).map(|v| json!({"v": v})).collect::<Vec<_>>());
    let (pulled, events) = pulled(&m, &[job]).await;
    assert_eq!(
        (pulled.len(), events),
        (200, 1),
        "one pull event for 200 tasks"
    );
    let shipped: Vec<(String, i64)> = m
        .query(
            "select ev_type, json_array_length(ev_data::json)::int8 from pgq.event_template e
               join pgq.queue q on e.tableoid::regclass::text like q.queue_data_pfx || '\\_%'
              where q.queue_name = 'pgfan_results'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(shipped.iter().all(|(t, _)| t == "results"), "{shipped:?}");
    let carried: i64 = shipped.iter().map(|(_, n)| n).sum();
    assert!(carried >= 200, "every result shipped: {shipped:?}");
    topo.shutdown().await.expect("daemons stop");
}
