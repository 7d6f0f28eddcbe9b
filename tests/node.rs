//! The node daemon (`pgfan node`) against real PostgreSQL: a master and a node database on
//! the shared test cluster, the daemon and the ticker in-process. Pull events are put into
//! the node's queue by the tests (the relay is tested elsewhere); results are read from the
//! master's `pgfan_results` event tables and from `pgfan_node.task`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::node_env::{master_tasks, put, sql_task, start_node, stop_node, urlencode, Env, Pull};
use common::{eventually, TestDb};
use pgfan::cluster::{Cluster, StopMode};
use pgfan::consumer::{BatchHandler, BatchRef};
use pgfan::node::NodeConfig;
use pgfan::signals::Control;
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::test]
async fn sql_tasks_report_typed_rows_errors_and_timeouts() {
    let env = Env::new("n_sql").await;
    let node = start_node(env.config());
    put(
        &env,
        &[
            sql_task(
                1,
                "select 1::int as a, 'x'::text as b, 2.5::numeric as c, null::varchar(3) as d",
            ),
            sql_task(2, "select 1/0"),
            sql_task(
                3,
                "create table m (x int); insert into m values (7); select x from m",
            ),
            Pull {
                options: Some("timeout_ms=100"),
                ..sql_task(4, "select pg_sleep(10)")
            },
            sql_task(5, "create index concurrently m_x on m (x)"),
            Pull {
                kind: "shell",
                ..sql_task(6, "rm -rf")
            },
        ],
    )
    .await;
    env.wait_shipped(&[1, 2, 3, 4, 5, 6]).await;
    let results = env.results().await;
    let (job, node_name, first) = &results[&1];
    assert_eq!(
        (job.as_deref(), node_name.as_deref()),
        (Some("1"), Some("n_sql"))
    );
    assert_eq!(
        *first,
        json!({"state": "done", "error": null, "columns": ["a", "b", "c", "d"],
               "types": ["integer", "text", "numeric", "character varying(3)"],
               "rows": [["1", "x", "2.5", null]]})
    );
    let failed = &results[&2].2;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"], "22012: division by zero");
    assert_eq!(
        results[&3].2,
        json!({"state": "done", "error": null, "columns": ["x"], "types": ["text"], "rows": [["7"]]}),
        "several statements: the last one's rows, as text"
    );
    let timeout = &results[&4].2;
    assert_eq!(timeout["state"], "failed");
    let msg = timeout["error"].as_str().unwrap();
    assert!(
        msg.starts_with("57014:") && msg.contains("statement timeout"),
        "{msg}"
    );
    // tasks run in their own transaction: concurrently is refused there
    let cic = results[&5].2["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(cic.contains("transaction block"), "{cic}");
    let unknown = results[&6].2["error"].as_str().unwrap().to_string();
    assert!(unknown.contains("unknown task kind"), "{unknown}");
    // the node's own record
    let row = env
        .node
        .connect()
        .await
        .query_one(
            "select state, result = $1::text::jsonb, attempts from pgfan_node.task where task_id = 1",
            &[&first.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1), row.get(2)),
        ("done".into(), true, 1i32)
    );
    let failed_attempts = env
        .node_count("select attempts::int8 from pgfan_node.task where task_id = 2")
        .await;
    assert_eq!(failed_attempts, 1, "a rolled-back run is still counted");
    eventually(
        &env.master,
        "select heartbeat is not null and workers = 4 from pgfan.node where node_name = 'n_sql'",
    )
    .await;
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn tx0_tasks_run_outside_a_transaction_block() {
    let env = Env::new("n_tx0").await;
    env.node_sql("create table t (x int); insert into t select generate_series(1, 100)")
        .await;
    // One worker: the three tasks run one after the other on the same session.
    let node = start_node(NodeConfig {
        workers: 1,
        ..env.config()
    });
    put(
        &env,
        &[
            Pull {
                options: Some("tx=0"),
                ..sql_task(1, "create index concurrently t_x on t (x)")
            },
            Pull {
                options: Some("tx=0&timeout_ms=100"),
                ..sql_task(2, "select pg_sleep(10)")
            },
            Pull {
                options: Some("tx=0"),
                ..sql_task(3, "show statement_timeout")
            },
        ],
    )
    .await;
    env.wait_shipped(&[1, 2, 3]).await;
    assert_eq!(env.result(1).await["state"], "done");
    assert_eq!(
        env.node_count("select count(*) from pg_indexes where indexname = 't_x'")
            .await,
        1
    );
    assert_eq!(env.result(2).await["state"], "failed");
    assert_eq!(
        env.result(3).await["rows"],
        json!([["0"]]),
        "a task's session timeout does not leak into the next task"
    );
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn lanes_run_in_order_and_in_parallel() {
    let env = Env::new("n_lanes").await;
    env.node_sql("create table log (seq bigserial, lane text, n int)")
        .await;
    let node = start_node(env.config());
    let mut events = Vec::new();
    for i in 1..=5i64 {
        for (k, lane) in [(0, "a"), (1, "b")] {
            let sql = format!("insert into log (lane, n) select '{lane}', {i} from pg_sleep(0.05)");
            events.push(Pull {
                lane: Some(lane),
                ..sql_task(i * 10 + k, &sql)
            });
        }
    }
    put(&env, &events).await;
    let ids: Vec<i64> = events.iter().map(|e| e.task).collect();
    env.wait_shipped(&ids).await;
    let c = env.node.connect().await;
    for lane in ["a", "b"] {
        let order: Vec<i32> = c
            .query("select n from log where lane = $1 order by seq", &[&lane])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(order, vec![1, 2, 3, 4, 5], "lane {lane} in task order");
    }
    let interleaved: bool = c
        .query_one(
            "select (select min(seq) from log where lane = 'b') < (select max(seq) from log where lane = 'a')
                and (select min(seq) from log where lane = 'a') < (select max(seq) from log where lane = 'b')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(interleaved, "both lanes progress at the same time");
    stop_node(node).await;
    env.stop_ticker().await;
}

/// The claim hands its new tasks to the executor, so they start without the executor
/// reading the task table for them; lane tasks and tasks past the handoff's bound, which
/// the executor must read, start too.
/// The executor's fallback poll is an hour here: a task that waited for it would not run.
#[tokio::test]
async fn claimed_tasks_start_without_the_executors_poll() {
    let env = Env::new("n_handoff").await;
    env.node_sql("create table log (lane text, n int)").await;
    let node = start_node(NodeConfig {
        poll_period: Duration::from_secs(3600),
        ..env.config()
    });
    for round in 0..3i64 {
        let loose: Vec<Pull> = (1..=5i64)
            .map(|i| {
                sql_task(
                    round * 100 + i,
                    &format!("insert into log values (null, {i})"),
                )
            })
            .collect();
        put(&env, &loose).await;
        env.wait_shipped(&loose.iter().map(|e| e.task).collect::<Vec<_>>())
            .await;
        let laned: Vec<Pull> = (1..=4i64)
            .map(|i| Pull {
                lane: Some("a"),
                ..sql_task(
                    round * 100 + 10 + i,
                    &format!("insert into log values ('a', {i})"),
                )
            })
            .collect();
        put(&env, &laned).await;
        env.wait_shipped(&laned.iter().map(|e| e.task).collect::<Vec<_>>())
            .await;
    }
    // Past the handoff's bound on payload bytes (8 MiB) the tasks stay in the table
    // alone: they run through a read.
    let padding = "-".repeat(3 << 20);
    let big: Vec<Pull> = (1..=3i64)
        .map(|i| {
            sql_task(
                900 + i,
                &format!("insert into log values ('big', {i}) --{padding}"),
            )
        })
        .collect();
    put(&env, &big).await;
    env.wait_shipped(&big.iter().map(|e| e.task).collect::<Vec<_>>())
        .await;
    assert_eq!(
        env.node_count("select count(*) from pgfan_node.task where state = 'done'")
            .await,
        30
    );
    assert_eq!(env.node_count("select count(*) from log").await, 30);
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn call_and_copy_follow_the_allow_lists() {
    let env = Env::new("n_call").await;
    env.node_sql(
        "create table items (id int primary key, name text, note text);
         create table other (id int primary key);
         create function add_num(a int, b int) returns int language sql as 'select a + b';
         create function greet(who text, out greeting text, out len int)
             language sql as $$ select 'hello ' || who, length(who) $$;
         create function secret() returns text language sql as $$ select 'no' $$;",
    )
    .await;
    let cfg = NodeConfig {
        allow_sql: false,
        allow_call: vec!["add_num".into(), "public.greet".into()],
        copy_tables: vec!["items".into()],
        ..env.config()
    };
    let node = start_node(cfg);
    let awkward = "O'Reilly \"q\" '; drop table items; -- ü&=+%";
    let call = |task, data: String| Pull {
        task,
        kind: "call",
        data,
        lane: None,
        options: None,
    };
    let copy = |task, data: String| Pull {
        task,
        kind: "copy",
        data,
        lane: Some("items"),
        options: None,
    };
    put(
        &env,
        &[
            call(1, "fn=add_num&arg=2&arg=40".into()),
            call(2, format!("fn=public.greet&arg={}", urlencode(awkward))),
            call(3, "fn=secret".into()),
            call(4, "fn=add_num&arg=1".into()),
            sql_task(5, "select 1"),
            copy(6, format!("action=ins&id=1&name={}", urlencode(awkward))),
            copy(7, "action=ins&table=items&id=2&name=two&note=n".into()),
            copy(8, "action=upd&id=2&note=updated".into()),
            copy(9, "action=ins&id=3&name=x".into()),
            copy(10, "action=del&id=3".into()),
            copy(11, "action=ins&id=4&nope=1".into()),
            copy(12, "action=ins&table=other&id=5".into()),
            copy(13, "action=upd&name=nokey".into()),
        ],
    )
    .await;
    env.wait_shipped(&(1..=13).collect::<Vec<_>>()).await;
    let r = env.results().await;
    let res = |id: i64| r[&id].2.clone();
    let err = |id: i64| res(id)["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        res(1),
        json!({"state": "done", "error": null, "columns": ["add_num"], "types": ["integer"], "rows": [["42"]]})
    );
    assert_eq!(res(2)["columns"], json!(["greeting", "len"]));
    assert_eq!(res(2)["types"], json!(["text", "integer"]));
    assert_eq!(
        res(2)["rows"],
        json!([[
            format!("hello {awkward}"),
            awkward.chars().count().to_string()
        ]])
    );
    assert_eq!(err(3), "function secret is not on node n_call's allow-list");
    assert!(err(4).contains("takes 2 arguments"), "{}", err(4));
    assert_eq!(err(5), "node n_call does not accept raw SQL");
    for ok in [6, 7, 8, 9, 10] {
        assert_eq!(res(ok)["state"], "done", "task {ok}: {}", res(ok));
    }
    assert_eq!(res(8)["rows"], json!([["1"]]), "one row updated");
    assert!(err(11).contains("\"nope\" does not exist"), "{}", err(11));
    assert!(
        err(12).contains("not in node n_call's copy_tables"),
        "{}",
        err(12)
    );
    assert!(err(13).contains("without the key column id"), "{}", err(13));
    let rows: Vec<(i32, Option<String>, Option<String>)> = env
        .node
        .connect()
        .await
        .query("select id, name, note from items order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, Some(awkward.to_string()), None),
            (2, Some("two".into()), Some("updated".into()))
        ]
    );
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn cancel_on_the_master_stops_running_and_waiting_tasks() {
    let env = Env::new("n_cancel").await;
    let node = start_node(env.config());
    let (job, ids) = master_tasks(&env, Some("l"), &["select pg_sleep(30)", "select 2"]).await;
    put(
        &env,
        &[
            Pull {
                lane: Some("l"),
                ..sql_task(ids[0], "select pg_sleep(30)")
            },
            Pull {
                lane: Some("l"),
                ..sql_task(ids[1], "select 2")
            },
        ],
    )
    .await;
    eventually(
        &env.node,
        "select exists (select 1 from pg_stat_activity
                         where datname = current_database() and state = 'active'
                           and query = 'select pg_sleep(30)')",
    )
    .await;
    eventually(
        &env.master,
        &format!("select count(*) = 2 from pgfan.task where job_id = {job} and state = 'claimed'"),
    )
    .await;
    let started = std::time::Instant::now();
    assert!(env.cancel(job).await);
    env.wait_shipped(&ids).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    for id in &ids {
        let r = env.result(*id).await;
        assert_eq!(r["state"], "cancelled", "task {id}: {r}");
        assert_eq!(r["rows"], json!([]));
    }
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn a_claim_redone_after_the_node_commit_does_not_duplicate_tasks() {
    let env = Env::new("n_claim").await;
    env.node_sql("create table effects (n int)").await;
    let m = env.master.connect().await;
    m.query_one("select pgq.register_consumer($1, $1)", &[&env.queue()])
        .await
        .unwrap();
    let events: Vec<Pull> = (1..=3)
        .map(|i| sql_task(i, &format!("insert into effects values ({i})")))
        .collect();
    put(&env, &events).await;
    // The claim handler's work up to the master commit, then the master rolls back, as if
    // the daemon died between the node commit and finish_batch.
    let cfg = env.config();
    let handoff = Arc::new(pgfan::node::executor::Handoff::default());
    let mut handler = pgfan::node::claim::ClaimHandler::new(&cfg, handoff);
    let mut mc = env.master.connect().await;
    // The running ticker ticks the queue (it may make empty batches first; skip them).
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let (tx, batch, evs) = loop {
        let tx = mc.transaction().await.unwrap();
        let next = pgfan::pgq::next_batch(&tx, &env.queue(), &env.queue())
            .await
            .unwrap();
        let Some(batch) = next else {
            tx.commit().await.unwrap();
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ticker never ticked"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let evs = pgfan::pgq::batch_events(&tx, batch.id).await.unwrap();
        if !evs.is_empty() {
            break (tx, batch, evs);
        }
        pgfan::pgq::finish_batch(&tx, batch.id).await.unwrap();
        tx.commit().await.unwrap();
    };
    assert_eq!(evs.len(), 3);
    let bref = BatchRef {
        batch_id: batch.id,
        cur_tick_id: batch.cur_tick_id,
        prev_tick_id: batch.prev_tick_id,
    };
    handler.events(&tx, bref, &evs).await.unwrap();
    handler.batch_end(&tx, bref).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        env.node_count("select count(*) from pgfan_node.task").await,
        3
    );
    // The daemon gets the same batch again: the ledger says it is done.
    let node = start_node(cfg);
    env.wait_shipped(&[1, 2, 3]).await;
    eventually(
        &env.master,
        &format!(
            "select current_batch is null and last_tick >= {}
               from pgq.get_consumer_info('{q}', '{q}')",
            batch.cur_tick_id,
            q = env.queue()
        ),
    )
    .await;
    assert_eq!(
        env.node_count("select count(*) from pgfan_node.task").await,
        3
    );
    assert_eq!(env.node_count("select count(*) from effects").await, 3);
    assert_eq!(env.results().await.len(), 3);
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn a_task_interrupted_by_a_killed_daemon_takes_effect_once() {
    let env = Env::new("n_kill").await;
    env.node_sql("create table effects (note text)").await;
    let first = start_node(env.config());
    let sql = "insert into effects values ('once'); select pg_sleep(1)";
    put(&env, &[sql_task(1, sql)]).await;
    eventually(
        &env.node,
        &format!(
            "select exists (select 1 from pg_stat_activity
                             where datname = current_database() and state = 'active'
                               and query = '{}')",
            sql.replace('\'', "''")
        ),
    )
    .await;
    // Killed mid-task: its transaction never commits.
    first.1.abort();
    assert!(first.1.await.unwrap_err().is_cancelled());
    let second = start_node(env.config());
    env.wait_shipped(&[1]).await;
    assert_eq!(env.result(1).await["state"], "done");
    assert_eq!(env.node_count("select count(*) from effects").await, 1);
    stop_node(second).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn stop_lets_running_tasks_finish_until_the_stop_timeout() {
    let env = Env::new("n_stop").await;
    // Long tasks sleep while `hang` has a row.
    env.node_sql("create table hang (x int); insert into hang values (1)")
        .await;
    let long = "select pg_sleep(case when exists (select 1 from hang) then 30 else 0 end)";
    let cfg = NodeConfig {
        stop_timeout: Duration::from_millis(1500),
        ..env.config()
    };
    let node = start_node(cfg.clone());
    put(
        &env,
        &[
            sql_task(1, "select pg_sleep(0.5) as short"),
            sql_task(2, long),
            Pull {
                options: Some("tx=0"),
                ..sql_task(3, long)
            },
        ],
    )
    .await;
    eventually(
        &env.node,
        "select count(*) = 3 from pg_stat_activity
          where datname = current_database() and state = 'active' and query like 'select pg_sleep%'",
    )
    .await;
    let started = std::time::Instant::now();
    stop_node(node).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let states = "select array_agg(format('%s %s %s %s', task_id, state, attempts,
                                          shipped_at is not null) order by task_id)::text
                    from pgfan_node.task";
    let c = env.node.connect().await;
    let after_stop: String = c.query_one(states, &[]).await.unwrap().get(0);
    assert_eq!(
        after_stop, r#"{"1 done 1 t","2 claimed 1 f","3 running 1 f"}"#,
        "the short task finished and was shipped; the long ones were cancelled: the \
         transactional one rolled back, the tx=0 one is left running"
    );
    // After the restart both long tasks run again; the tx=0 one for the second time.
    c.batch_execute("delete from hang").await.unwrap();
    let node = start_node(cfg);
    env.wait_shipped(&[2, 3]).await;
    let after_restart: String = c.query_one(states, &[]).await.unwrap().get(0);
    assert_eq!(after_restart, r#"{"1 done 1 t","2 done 2 t","3 done 2 t"}"#);
    stop_node(node).await;
    env.stop_ticker().await;
}

fn write_config(path: &std::path::Path, env: &Env, extra: &str) {
    std::fs::write(
        path,
        format!(
            "[node]\nname = \"{}\"\nmaster = \"{}\"\ndb = \"{}\"\npoll_period = \"100ms\"\n\
             heartbeat_period = \"100ms\"\n{extra}",
            env.name, env.master.conninfo, env.node.conninfo
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn reload_swaps_the_allow_lists_and_keeps_the_old_config_on_a_bad_file() {
    let env = Env::new("n_reload").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    write_config(&path, &env, "allow_sql = false\nworkers = 2\n");
    let cfg = NodeConfig::load(&path).unwrap();
    let (ctl, rx) = mpsc::unbounded_channel();
    let node = (
        ctl.clone(),
        tokio::spawn(pgfan::node::run(Some(path.clone()), cfg, rx)),
    );
    put(&env, &[sql_task(1, "select 1")]).await;
    env.wait_shipped(&[1]).await;
    assert_eq!(env.result(1).await["state"], "failed");
    write_config(&path, &env, "allow_sql = true\nworkers = 3\n");
    ctl.send(Control::Reload).unwrap();
    // The heartbeat reports the new pool size once the new configuration is in force.
    eventually(
        &env.master,
        "select workers = 3 from pgfan.node where node_name = 'n_reload'",
    )
    .await;
    write_config(&path, &env, "allow_sql = false\nworkerz = 1\n");
    ctl.send(Control::Reload).unwrap();
    put(&env, &[sql_task(2, "select 2")]).await;
    env.wait_shipped(&[2]).await;
    assert_eq!(env.result(2).await["rows"], json!([["2"]]));
    stop_node(node).await;
    env.stop_ticker().await;
}

#[test]
fn example_node_configs_load() {
    for file in ["etc/node.toml", "etc/node.ini"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let expected = NodeConfig::new("node1", &cfg.master, &cfg.db);
        assert_eq!(cfg, expected, "{file} shows the defaults");
        assert!(cfg.master.contains("dbname=master"), "{file}");
    }
}

#[tokio::test]
async fn the_node_reconnects_after_its_database_restarts() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let env = Env::with_node("n_restart", TestDb::empty_on(&cluster).await).await;
    let node = start_node(env.config());
    put(&env, &[sql_task(1, "select 1")]).await;
    env.wait_shipped(&[1]).await;
    // Every connection of the daemon to the node breaks; tasks wait in the master queue.
    cluster.stop(StopMode::Fast).unwrap();
    put(&env, &[sql_task(2, "select 2")]).await;
    cluster.restart().unwrap();
    env.wait_shipped(&[2]).await;
    assert_eq!(env.result(2).await["rows"], json!([["2"]]));
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn a_second_daemon_for_the_same_node_waits_as_a_standby() {
    let env = Env::new("n_standby").await;
    let first = start_node(env.config());
    put(&env, &[sql_task(1, "select 1")]).await;
    env.wait_shipped(&[1]).await;
    let second = start_node(env.config());
    let held = "select count(*) from pg_locks l join pg_database d on d.oid = l.database
                 where l.locktype = 'advisory' and l.granted and l.classid = 1885824622
                   and d.datname = current_database()";
    // The first daemon holds the name; the standby holds nothing and keeps waiting.
    assert_eq!(env.node_count(held).await, 1);
    assert!(
        !second.1.is_finished(),
        "the standby waits rather than exiting"
    );
    stop_node(first).await;
    // The standby takes over: the next task runs.
    put(&env, &[sql_task(2, "select 2")]).await;
    env.wait_shipped(&[2]).await;
    assert_eq!(env.node_count(held).await, 1);
    stop_node(second).await;
    env.stop_ticker().await;
}

/// A node daemon needs one master connection: its claim, its shipper and its heartbeat
/// take turns on it (issue 14's connection budget). Terminated, it is opened again, and
/// still only one remains.
/// The part of a daemon that LISTENs adopts the shared session another part opened
/// first, with its notifications, instead of opening a second one beside it.
#[tokio::test]
async fn a_listening_part_adopts_the_shared_session_another_part_opened() {
    let db = TestDb::new(common::Backend::Bundled).await;
    let app = format!("pgfan_test_adopt_{}", db.name);
    let conninfo = format!("{} application_name={app}", db.conninfo);
    let shared = pgfan::db::SharedSession::new("master");
    // The heartbeat, say, comes first and opens it.
    shared
        .lock(&conninfo)
        .await
        .unwrap()
        .batch_execute("listen adopt_test")
        .await
        .unwrap();
    let mut messages = shared
        .adopt(&conninfo)
        .await
        .expect("the open session's notifications");
    assert!(shared.adopt(&conninfo).await.is_none(), "adopted once");
    let m = db.connect().await;
    m.batch_execute("notify adopt_test, 'hello'").await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .expect("a notification in time")
        .expect("the channel is open");
    match msg {
        tokio_postgres::AsyncMessage::Notification(n) => assert_eq!(n.payload(), "hello"),
        other => panic!("not a notification: {other:?}"),
    }
    let count = format!("select count(*) from pg_stat_activity where application_name = '{app}'");
    let n: i64 = m.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn the_daemon_holds_one_master_session_and_reopens_it() {
    let env = Env::new("n_one").await;
    let app = "pgfan_test_n_one";
    let mut cfg = env.config();
    cfg.master = format!("{} application_name={app}", env.master.conninfo);
    let node = start_node(cfg);
    let m = env.master.connect().await;
    let sessions =
        format!("select count(*) = 1 from pg_stat_activity where application_name = '{app}'");
    for round in [1, 2] {
        let task = round;
        put(&env, &[sql_task(task, "select 1")]).await;
        env.wait_shipped(&[task]).await;
        // Claimed and shipped; and a heartbeat after that, so every part has used the master.
        let shipped: String = m.query_one("select now()::text", &[]).await.unwrap().get(0);
        eventually(
            &env.master,
            &format!(
                "select heartbeat > '{shipped}'::timestamptz from pgfan.node
                  where node_name = 'n_one'"
            ),
        )
        .await;
        // One session (a replaced one may take a moment to end after a reconnect).
        eventually(&env.master, &sessions).await;
        if round == 1 {
            m.execute(
                &format!(
                    "select pg_terminate_backend(pid) from pg_stat_activity
                      where application_name = '{app}'"
                ),
                &[],
            )
            .await
            .unwrap();
        }
    }
    stop_node(node).await;
    env.stop_ticker().await;
}

/// A node's liveness is its daemon's master session (pgfan.connected_nodes, read by `any`
/// routing and `pgfan status`), so the heartbeat can be rare: connected while the daemon
/// runs, not once it has stopped.
#[tokio::test]
async fn a_running_daemon_is_connected_and_a_stopped_one_is_not() {
    let env = Env::new("n_live").await;
    let mut cfg = env.config();
    // Connected, not beating: the daemon names its master session for its node.
    cfg.heartbeat_period = Duration::from_secs(3600);
    let node = start_node(cfg);
    let connected = "select 'n_live' in (select pgfan.connected_nodes())";
    eventually(&env.master, connected).await;
    stop_node(node).await;
    eventually(&env.master, &format!("select not ({connected})")).await;
    env.stop_ticker().await;
}
