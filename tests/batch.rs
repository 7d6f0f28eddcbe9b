//! The node's batch executor: copy and sql tasks of a claim run together in one node
//! transaction, a savepoint each. What batching must not change: a failing task fails
//! alone, every other effect commits exactly once with its record, lanes keep their order,
//! a cancel stops only its own task, what a task's SQL does to its session does not reach
//! the next task, and tasks that cannot be batched (`tx=0`, `call`, timeouts) run beside
//! the batches as before.

mod common;

use std::time::{Duration, Instant};

use common::eventually;
use common::node_env::{master_tasks, put, sql_task, start_node, stop_node, Env, Pull};
use pgfan::node::NodeConfig;

fn copy(task: i64, data: String, lane: Option<&'static str>) -> Pull<'static> {
    Pull {
        task,
        kind: "copy",
        data,
        lane,
        options: None,
    }
}

async fn states(env: &Env) -> Vec<(i64, String, i32)> {
    env.node
        .connect()
        .await
        .query(
            "select task_id, state, attempts from pgfan_node.task order by task_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// One worker and every task claimed at once: the node runs them as one batch.
fn one_batch(env: &Env) -> NodeConfig {
    NodeConfig {
        workers: 1,
        ..env.config()
    }
}

/// [`one_batch`], copies going to the table `items`.
fn one_batch_of_items(env: &Env) -> NodeConfig {
    NodeConfig {
        copy_tables: vec!["items".into()],
        ..one_batch(env)
    }
}

#[tokio::test]
async fn a_failing_task_in_the_middle_of_a_batch_fails_alone() {
    let env = Env::new("b_fail").await;
    env.node_sql("create table items (id int primary key, name text)")
        .await;
    // One connection: all 60 copies go to as few batches as possible.
    let node = start_node(one_batch_of_items(&env));
    // 20 and 40 fail when their statements run (a value that is no integer, a key
    // taken by 1), 30 when it is planned (no such column).
    let tasks: Vec<Pull> = (1..=60)
        .map(|i| {
            let data = match i {
                20 => "action=ins&id=abc&name=bad".to_string(),
                30 => "action=ins&id=30&nope=1".to_string(),
                40 => "action=ins&id=1&name=again".to_string(),
                _ => format!("action=ins&id={i}&name=n{i}"),
            };
            copy(i, data, None)
        })
        .collect();
    put(&env, &tasks).await;
    env.wait_shipped(&(1..=60).collect::<Vec<_>>()).await;
    for (id, state, attempts) in states(&env).await {
        let want = if [20, 30, 40].contains(&id) {
            "failed"
        } else {
            "done"
        };
        assert_eq!((state.as_str(), attempts), (want, 1), "task {id}");
    }
    let r = env.results().await;
    let err = |id: i64| r[&id].2["error"].as_str().unwrap_or_default().to_string();
    assert!(err(20).contains("22P02"), "{}", err(20));
    assert!(err(30).contains("\"nope\" does not exist"), "{}", err(30));
    assert!(err(40).contains("23505"), "{}", err(40));
    assert_eq!(r[&1].2["rows"], serde_json::json!([["1"]]));
    let rows = env
        .node_count("select count(*) from items where name = 'n' || id")
        .await;
    assert_eq!(rows, 57, "every other row exactly once");
    stop_node(node).await;
    env.stop_ticker().await;
}

/// A batch prepares its copy statements once; a copy table's trigger that drops every
/// prepared statement of the session (DEALLOCATE ALL) fails no task: the batch goes on
/// without them.
#[tokio::test]
async fn copies_survive_a_trigger_that_deallocates_the_batchs_statements() {
    let env = Env::new("b_dealloc").await;
    env.node_sql(
        "create table items (id int primary key, name text);
         create function forget() returns trigger language plpgsql as
           $$ begin if new.id = 5 then execute 'deallocate all'; end if; return new; end $$;
         create trigger forget before insert on items for each row execute function forget();",
    )
    .await;
    let node = start_node(one_batch_of_items(&env));
    let tasks: Vec<Pull> = (1..=20)
        .map(|i| copy(i, format!("action=ins&id={i}&name=n{i}"), None))
        .collect();
    put(&env, &tasks).await;
    env.wait_shipped(&(1..=20).collect::<Vec<_>>()).await;
    for (id, state, attempts) in states(&env).await {
        assert_eq!((state.as_str(), attempts), ("done", 1), "task {id}");
    }
    let rows = env
        .node_count("select count(*) from items where name = 'n' || id")
        .await;
    assert_eq!(rows, 20, "every row exactly once");
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn batches_mix_with_lanes_and_tasks_that_run_alone() {
    let env = Env::new("b_mix").await;
    env.node_sql(
        "create table items (id int primary key, name text);
         create table log (seq int);
         create table plog (n serial, lane text, seq int);",
    )
    .await;
    let node = start_node(NodeConfig {
        copy_tables: vec!["items".into()],
        ..env.config()
    });
    let mut tasks = Vec::new();
    // Lane L: insert, update, delete, insert again: only in order does id 1 end as 'd'.
    for (i, data) in [
        "action=ins&id=1&name=a",
        "action=upd&id=1&name=b",
        "action=del&id=1",
        "action=ins&id=1&name=d",
    ]
    .iter()
    .enumerate()
    {
        tasks.push(copy(1 + i as i64, data.to_string(), Some("L")));
    }
    for i in 5..=40 {
        tasks.push(copy(i, format!("action=ins&id={i}&name=n{i}"), None));
    }
    tasks.push(Pull {
        options: Some("tx=0"),
        ..sql_task(41, "insert into log values (41)")
    });
    tasks.push(sql_task(
        42,
        "insert into log values (42); select count(*) as n from log",
    ));
    tasks.push(Pull {
        options: Some("timeout_ms=5000"),
        ..copy(43, "action=ins&id=43&name=n43".into(), None)
    });
    // A job of many statements at parallel 2, as run_parallel routes it: two lanes.
    for i in 44..=63 {
        let lane = if i % 2 == 0 { "7:0" } else { "7:1" };
        let sql = format!("insert into plog (lane, seq) values ('{lane}', {i}); select {i}");
        tasks.push(Pull {
            lane: Some(lane),
            ..sql_task(i, &sql)
        });
    }
    put(&env, &tasks).await;
    env.wait_shipped(&(1..=63).collect::<Vec<_>>()).await;
    for (id, state, attempts) in states(&env).await {
        assert_eq!((state.as_str(), attempts), ("done", 1), "task {id}");
    }
    let out_of_order = env
        .node_count(
            "select count(*) from (select seq < lag(seq) over (partition by lane order by n) as back
                                     from plog) s where back",
        )
        .await;
    assert_eq!(out_of_order, 0, "each lane's statements ran in order");
    assert_eq!(env.node_count("select count(*) from plog").await, 20);
    let name: String = env
        .node
        .connect()
        .await
        .query_one("select name from items where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "d", "the lane's copies ran in order");
    assert_eq!(env.node_count("select count(*) from items").await, 38);
    assert_eq!(env.node_count("select count(*) from log").await, 2);
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn sql_tasks_share_a_transaction_but_not_their_failures_or_sessions() {
    let env = Env::new("b_sql").await;
    env.node_sql("create table log (seq int, tx bigint default pg_catalog.txid_current())")
        .await;
    let tasks: Vec<Pull> = (1..=30)
        .map(|i| match i {
            10 => sql_task(i, "select 1/0"),
            // Session changes that would capture or break the tasks after it, if kept: a
            // temporary table shadowing `log`, a search_path without it, a 1 ms timeout.
            15 => sql_task(
                i,
                "create temp table log (seq int); set search_path = nowhere; \
                 select pg_catalog.set_config('statement_timeout', '1', false)",
            ),
            // Session state a task could leave for the next one to use or trip over.
            16 => sql_task(
                i,
                "declare c cursor with hold for select 1; prepare p as select 1; \
                 listen pgfan_batch_test; select pg_catalog.pg_advisory_lock(16); \
                 create temp sequence s; select pg_catalog.nextval('s'); set role pg_monitor",
            ),
            17 => sql_task(
                i,
                "select (select count(*) from pg_catalog.pg_cursors where name = 'c') \
                      + (select count(*) from pg_catalog.pg_prepared_statements where name = 'p') \
                      + (select count(*) from pg_catalog.pg_listening_channels() l) \
                      + (select count(*) from pg_catalog.pg_locks \
                          where locktype = 'advisory' and pid = pg_catalog.pg_backend_pid()) \
                      + (select count(*) from pg_catalog.pg_class \
                          where relname = 's' and relpersistence = 't') as left_over, \
                        current_user = session_user as own_role",
            ),
            20 => sql_task(
                i,
                "insert into log values (20); set role none; select pg_catalog.pg_sleep(0.01)",
            ),
            21 => sql_task(i, "select current_user = session_user as own_role"),
            _ => sql_task(i, &format!("insert into log values ({i}); select {i} as n")),
        })
        .collect();
    put(&env, &tasks).await;
    let node = start_node(one_batch(&env));
    env.wait_shipped(&(1..=30).collect::<Vec<_>>()).await;
    for (id, state, attempts) in states(&env).await {
        let want = if id == 10 { "failed" } else { "done" };
        assert_eq!((state.as_str(), attempts), (want, 1), "task {id}");
    }
    assert_eq!(
        env.result(10).await["error"]
            .as_str()
            .map(|e| e.contains("22012")),
        Some(true)
    );
    assert_eq!(env.result(29).await["rows"], serde_json::json!([["29"]]));
    assert_eq!(
        env.result(17).await["rows"],
        serde_json::json!([["0", "t"]])
    );
    assert_eq!(env.result(21).await["rows"], serde_json::json!([["t"]]));
    // Every insert but those of 10, 15, 16, 17 and 21 reached the real table, in one node
    // transaction.
    assert_eq!(env.node_count("select count(*) from public.log").await, 25);
    assert_eq!(
        env.node_count("select count(distinct tx) from public.log")
            .await,
        1,
        "the tasks ran as one batch"
    );
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn a_cancel_mid_batch_stops_only_its_own_tasks() {
    let env = Env::new("b_cancel").await;
    env.node_sql("create table log (seq int)").await;
    let (first, last) = ("insert into log values (1)", "insert into log values (4)");
    let sleep = "select pg_catalog.pg_sleep(30)";
    // The batch runs them in task order: the first insert, the first sleep (running when
    // the cancel comes), the second sleep (reached after it), the last insert.
    let (_, before) = master_tasks(&env, None, &[first]).await;
    let (job, doomed) = master_tasks(&env, None, &[sleep, sleep]).await;
    let (_, after) = master_tasks(&env, None, &[last]).await;
    let keep = [before[0], after[0]];
    let order = [keep[0], doomed[0], doomed[1], keep[1]];
    let sqls = [first, sleep, sleep, last];
    let tasks: Vec<Pull> = order
        .iter()
        .zip(sqls)
        .map(|(&id, sql)| sql_task(id, sql))
        .collect();
    put(&env, &tasks).await;
    let node = start_node(one_batch(&env));
    eventually(
        &env.node,
        "select exists (select 1 from pg_stat_activity
                         where datname = current_database() and state = 'active'
                           and query = 'select pg_catalog.pg_sleep(30)')",
    )
    .await;
    let started = Instant::now();
    assert!(env.cancel(job).await);
    env.wait_shipped(&order).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the sleeping tasks were stopped, not waited for"
    );
    for id in doomed {
        assert_eq!(env.result(id).await["state"], "cancelled", "task {id}");
    }
    for id in keep {
        assert_eq!(env.result(id).await["state"], "done", "task {id}");
    }
    assert_eq!(env.node_count("select count(*) from log").await, 2);
    for (id, _, attempts) in states(&env).await {
        assert!(attempts <= 1, "task {id} ran {attempts} times");
    }
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn results_past_the_cap_end_the_batch_and_only_their_task_fails() {
    let env = Env::new("b_cap").await;
    env.node_sql("create table log (seq int)").await;
    // 20 MB of result in task 3: more than one task's cap, so more than the batch's.
    let big = "select repeat('x', 1000) as x from generate_series(1, 20000)";
    let tasks: Vec<Pull> = (1..=6)
        .map(|i| match i {
            3 => sql_task(i, big),
            _ => sql_task(i, &format!("insert into log values ({i}); select {i} as n")),
        })
        .collect();
    put(&env, &tasks).await;
    let node = start_node(one_batch(&env));
    env.wait_shipped(&(1..=6).collect::<Vec<_>>()).await;
    for (id, state, _) in states(&env).await {
        let want = if id == 3 { "failed" } else { "done" };
        assert_eq!(state, want, "task {id}");
    }
    let error = env.result(3).await["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("result too large"), "{error}");
    // Each other insert committed exactly once, after the batch gave way to solo runs.
    assert_eq!(env.node_count("select count(*) from log").await, 5);
    assert_eq!(
        env.node_count("select count(distinct seq) from log").await,
        5
    );
    stop_node(node).await;
    env.stop_ticker().await;
}
