//! Task isolation: whatever SQL a task runs, it keeps to its login's rights, its own
//! transaction and its own session, and the node's bookkeeping stays the daemon's.
//!
//! Each test plays a hostile task author against a node daemon whose tasks run on a login
//! of their own (`task_role`), then checks the containment: the task fails with a clear
//! error, no effect of it remains, the bookkeeping is untouched, and the ordinary tasks
//! after it on the same connection (one worker) all succeed.

mod common;

use std::time::Duration;

use common::eventually;
use common::node_env::{put, sql_task, start_node, stop_node, Env, Pull};
use pgfan::node::{NodeConfig, NodeError};
use serde_json::Value;

/// Ordinary tasks run after the hostile ones.
const ORDINARY: i64 = 20;

/// A node whose tasks run as the login `<node db>_task`, which may read and insert into
/// `open_t` and nothing else; `secret` and `effects` are the daemon's.
async fn isolated_env(name: &str) -> (Env, String) {
    let env = Env::new(name).await;
    let login = format!("{}_task", env.node.name);
    env.node_sql(&format!(
        "create role {login} login;
         create table secret (v text);
         create table effects (v int);
         create table open_t (v text);
         grant select, insert on open_t to {login};
         grant select, insert on effects to {login};"
    ))
    .await;
    (env, login)
}

fn config(env: &Env, login: &str) -> NodeConfig {
    NodeConfig {
        // One connection: every task runs on the session the previous one left.
        workers: 1,
        task_role: Some(login.to_string()),
        ..env.config()
    }
}

fn tx0(task: i64, sql: &str) -> Pull<'static> {
    Pull {
        options: Some("tx=0"),
        ..sql_task(task, sql)
    }
}

/// `count` ordinary tasks from `first` on; each inserts a row and reports what its session
/// looks like.
fn probes(first: i64, count: i64) -> Vec<Pull<'static>> {
    (first..first + count)
        .map(|id| {
            sql_task(
                id,
                "insert into open_t values ('probe');
                 select current_user::text as u,
                        current_setting('default_transaction_read_only') as ro,
                        current_setting('statement_timeout') as st,
                        (select count(*) from pg_prepared_statements) as prepared,
                        (select count(*) from pg_cursors) as cursors,
                        (select count(*) from pg_listening_channels()) as listening,
                        (select count(*) from pg_locks
                          where locktype = 'advisory' and pid = pg_backend_pid()) as locks,
                        to_regclass('pg_temp.tmp_x') is null as no_temp",
            )
        })
        .collect()
}

/// State, error and result of a task, from the node's table.
async fn outcome(env: &Env, id: i64) -> (String, String, Value) {
    let row = env
        .node
        .connect()
        .await
        .query_one(
            "select state, coalesce(error, ''), result::text from pgfan_node.task where task_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let result: String = row.get(2);
    (
        row.get(0),
        row.get(1),
        serde_json::from_str(&result).unwrap(),
    )
}

async fn assert_failed_with(env: &Env, id: i64, needle: &str) {
    let (state, error, _) = outcome(env, id).await;
    assert_eq!(state, "failed", "task {id}: {error}");
    assert!(error.contains(needle), "task {id}: {error}");
}

/// Every probe is done, ran as `login`, and saw a fresh session.
async fn assert_probes_clean(env: &Env, login: &str, first: i64) {
    for id in first..first + ORDINARY {
        let (state, error, result) = outcome(env, id).await;
        assert_eq!(state, "done", "probe {id}: {error}");
        assert_eq!(
            result["rows"][0],
            serde_json::json!([login, "off", "0", "0", "0", "0", "0", "t"]),
            "probe {id} saw a session left behind by an earlier task"
        );
    }
}

/// Each task ran once: the bookkeeping was not rewound or forged by task SQL.
async fn assert_bookkeeping_untouched(env: &Env, total: i64) {
    let bad = env
        .node_count(
            "select count(*) from pgfan_node.task
              where state not in ('done', 'failed') or attempts <> 1 or shipped_at is null",
        )
        .await;
    assert_eq!(bad, 0, "every task finished once and was shipped");
    assert_eq!(
        env.node_count("select count(*) from pgfan_node.task").await,
        total
    );
}

async fn count(env: &Env, sql: &str) -> i64 {
    env.node_count(sql).await
}

#[tokio::test]
async fn a_task_keeps_its_logins_rights_whatever_it_runs() {
    let (env, login) = isolated_env("iso_role").await;
    let node = start_node(config(&env, &login));
    let hostile = vec![
        sql_task(
            1,
            "reset role; insert into secret values ('reset'); select 1",
        ),
        sql_task(
            2,
            "set role postgres; insert into secret values ('set'); select 1",
        ),
        sql_task(3, "set session authorization postgres; select 1"),
        sql_task(
            4,
            "update pgfan_node.task set state = 'claimed', attempts = 0",
        ),
        sql_task(5, "select run_key from pgfan_node.task"),
        // A door without the key moves nothing.
        sql_task(
            6,
            "select pgfan_node.task_finish(7, 'guessed', 'done', null, '{}'::jsonb) as moved,
                    pgfan_node.task_begin(7, 'guessed') as taken",
        ),
        sql_task(
            7,
            "insert into open_t values ('seven'); select current_user::text as u",
        ),
        tx0(8, "reset role; insert into secret values ('tx0'); select 1"),
        tx0(9, "select pgfan_node.finish_task(10, 'done', null)"),
        sql_task(10, "select 10 as ten"),
    ];
    put(&env, &hostile).await;
    put(&env, &probes(11, ORDINARY)).await;
    env.wait_shipped(&(1..11 + ORDINARY).collect::<Vec<_>>())
        .await;

    assert_failed_with(&env, 1, "permission denied for table secret").await;
    assert_failed_with(&env, 2, "permission denied to set role").await;
    assert_failed_with(&env, 3, "permission denied to set session authorization").await;
    assert_failed_with(&env, 4, "permission denied for table task").await;
    assert_failed_with(&env, 5, "permission denied for table task").await;
    let (state, _, result) = outcome(&env, 6).await;
    assert_eq!(state, "done");
    assert_eq!(result["rows"][0], serde_json::json!(["f", "f"]));
    let (state, _, result) = outcome(&env, 7).await;
    assert_eq!(
        state, "done",
        "task 7 ran although task 6 tried to finish it"
    );
    assert_eq!(result["rows"][0][0], login.as_str());
    assert_failed_with(&env, 8, "permission denied for table secret").await;
    assert_failed_with(&env, 9, "permission denied for function finish_task").await;
    assert_eq!(outcome(&env, 10).await.0, "done");
    assert_eq!(count(&env, "select count(*) from secret").await, 0);
    assert_probes_clean(&env, &login, 11).await;
    assert_bookkeeping_untouched(&env, 10 + ORDINARY).await;
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn a_daemon_refuses_a_task_login_that_could_reach_its_rights() {
    let env = Env::new("iso_unsafe").await;
    let member = format!("{}_member", env.node.name);
    env.node_sql(&format!(
        "create role {member} login; grant postgres to {member}"
    ))
    .await;
    for (role, why) in [
        ("postgres", "is a superuser"),
        (member.as_str(), "a member of it"),
    ] {
        let node = start_node(NodeConfig {
            task_role: Some(role.to_string()),
            ..env.config()
        });
        put(&env, &[sql_task(1, "select 1")]).await;
        let ended = tokio::time::timeout(Duration::from_secs(30), node.1)
            .await
            .expect("the daemon ends")
            .unwrap();
        match ended {
            Err(NodeError::Unsafe(msg)) => {
                assert!(msg.contains(why), "{role}: {msg}");
                assert!(msg.contains(&format!("task_role {role}")), "{msg}");
            }
            other => panic!("{role}: expected a refusal, got {other:?}"),
        }
        assert_eq!(
            count(
                &env,
                "select count(*) from pgfan_node.task where state <> 'claimed'"
            )
            .await,
            0,
            "no task ran"
        );
    }
    env.stop_ticker().await;
}

#[tokio::test]
async fn session_changes_do_not_reach_the_next_task() {
    let (env, login) = isolated_env("iso_session").await;
    let helper = format!("{}_helper", env.node.name);
    env.node_sql(&format!(
        "create role {helper} nologin; grant {helper} to {login}"
    ))
    .await;
    let node = start_node(config(&env, &login));
    let lock_key = 4242;
    let hostile = vec![
        sql_task(1, "set default_transaction_read_only = on; select 1"),
        sql_task(2, &format!("set role {helper}; select 1")),
        sql_task(3, "create temp table tmp_x (i int); select 1"),
        sql_task(4, "prepare p1 as select 1; select 1"),
        sql_task(5, &format!("select pg_advisory_lock({lock_key})")),
        sql_task(6, "listen pgfan_x; select 1"),
        sql_task(7, "declare c1 cursor with hold for select 1; select 1"),
        sql_task(8, "set statement_timeout = 1; select 1"),
        tx0(9, "set default_transaction_read_only = on"),
        tx0(10, "set statement_timeout = 1"),
        // An open transaction left behind is rolled back, not kept.
        tx0(11, "begin; insert into open_t values ('left open')"),
        tx0(12, "begin; select 1/0"),
    ];
    put(&env, &hostile).await;
    put(&env, &probes(13, ORDINARY)).await;
    env.wait_shipped(&(1..13 + ORDINARY).collect::<Vec<_>>())
        .await;
    for id in 1..=11 {
        let (state, error, _) = outcome(&env, id).await;
        assert_eq!(state, "done", "task {id}: {error}");
    }
    assert_failed_with(&env, 12, "22012").await;
    assert_probes_clean(&env, &login, 13).await;
    assert_eq!(
        count(&env, "select count(*) from open_t where v = 'left open'").await,
        0
    );
    // The advisory lock went with the session reset.
    let free: bool = env
        .node
        .connect()
        .await
        .query_one("select pg_try_advisory_lock($1)", &[&(lock_key as i64)])
        .await
        .unwrap()
        .get(0);
    assert!(free, "the task's advisory lock was released");
    assert_bookkeeping_untouched(&env, 12 + ORDINARY).await;
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn failures_are_reported_as_what_they_are() {
    let (env, login) = isolated_env("iso_blame").await;
    let node = start_node(config(&env, &login));
    put(
        &env,
        &[
            sql_task(
                1,
                "select pg_cancel_backend(pg_backend_pid()); select pg_sleep(1)",
            ),
            sql_task(2, "select pg_terminate_backend(pg_backend_pid())"),
        ],
    )
    .await;
    put(&env, &probes(3, ORDINARY)).await;
    env.wait_shipped(&(1..3 + ORDINARY).collect::<Vec<_>>())
        .await;
    let (state, error, _) = outcome(&env, 1).await;
    assert_eq!(state, "failed");
    assert!(
        error.contains("57014"),
        "a cancel is reported as one: {error}"
    );
    assert!(!error.contains("lost"), "{error}");
    // A task that ends its own backend does lose its connection, each time it runs.
    assert_failed_with(&env, 2, "the node connection was lost 3 times").await;
    assert_probes_clean(&env, &login, 3).await;
    stop_node(node).await;
    env.stop_ticker().await;
}

#[tokio::test]
async fn transaction_control_is_refused_before_the_task_runs() {
    let (env, login) = isolated_env("iso_txctl").await;
    let node = start_node(config(&env, &login));
    let hostile = vec![
        (
            1,
            "insert into effects values (1); commit; insert into effects values (2)",
            "COMMIT (statement 2)",
        ),
        (
            2,
            "insert into effects values (3); rollback",
            "ROLLBACK (statement 2)",
        ),
        (
            3,
            "savepoint s; insert into effects values (4); release s",
            "SAVEPOINT (statement 1)",
        ),
        (
            4,
            "do $$ begin insert into effects values (5); commit; end $$",
            "COMMIT (in the DO block of statement 1)",
        ),
        (5, "prepare transaction 'pgfan_x'", "PREPARE TRANSACTION"),
        (
            6,
            "begin; insert into effects values (6)",
            "BEGIN (statement 1)",
        ),
        (
            7,
            "end; insert into effects values (7)",
            "COMMIT (statement 1)",
        ),
    ];
    let mut events: Vec<Pull> = hostile
        .iter()
        .map(|(id, sql, _)| sql_task(*id, sql))
        .collect();
    // COPY from the client would take over the connection's protocol: no task may.
    events.push(sql_task(8, "copy effects from stdin"));
    // Outside a transaction block a task controls its transactions itself.
    events.push(tx0(9, "begin; insert into effects values (9); commit"));
    put(&env, &events).await;
    put(&env, &probes(10, ORDINARY)).await;
    env.wait_shipped(&(1..10 + ORDINARY).collect::<Vec<_>>())
        .await;
    for (id, _, statement) in &hostile {
        assert_failed_with(&env, *id, statement).await;
        assert_failed_with(&env, *id, "tx => false").await;
    }
    assert_failed_with(&env, 8, "cannot run COPY FROM STDIN (statement 1)").await;
    let effects: Vec<i32> = env
        .node
        .connect()
        .await
        .query("select v from effects order by v", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(effects, vec![9], "nothing of a refused task ran");
    assert_probes_clean(&env, &login, 10).await;
    assert_bookkeeping_untouched(&env, 9 + ORDINARY).await;
    stop_node(node).await;
    env.stop_ticker().await;
}

/// The second line of defence, at the door itself: a run whose transaction ended (as SQL
/// that got past the parser would end it) cannot record itself, so nothing claims a
/// rollback that did not happen.
#[tokio::test]
async fn the_finish_door_notices_a_transaction_the_task_ended() {
    let (env, login) = isolated_env("iso_door").await;
    env.node_sql(
        "insert into pgfan_node.task (task_id, job_id, kind, data)
         values (1, 1, 'sql', 'sql=select+1'), (2, 1, 'sql', 'sql=select+2')",
    )
    .await;
    let owner = env.node.connect().await;
    let key = |id: i64| {
        let owner = &owner;
        async move {
            owner
                .query_one(
                    "select run_key from pgfan_node.task where task_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let task = env.node.connect_as(&login).await;
    for (id, end) in [(1, "commit"), (2, "rollback")] {
        let k = key(id).await;
        task.batch_execute("start transaction").await.unwrap();
        let taken: bool = task
            .query_one("select pgfan_node.task_begin($1, $2)", &[&id, &k])
            .await
            .unwrap()
            .get(0);
        assert!(taken);
        task.batch_execute(end).await.unwrap();
        let err = task
            .query_one(
                "select pgfan_node.task_finish($1, $2, 'done', null, '{}'::jsonb)",
                &[&id, &k],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "PF001", "{end}: {err:?}");
        assert_eq!(
            count(
                &env,
                &format!("select count(*) from pgfan_node.task where task_id = {id} and state = 'claimed'")
            )
            .await,
            1,
            "after {end} the task is still unfinished"
        );
    }
    env.stop_ticker().await;
}

/// A node daemon killed while a task that tries to leave its role runs: after the restart
/// the task runs again, fails as it should, and nothing of either run remains.
#[tokio::test]
async fn a_killed_daemon_keeps_a_hostile_task_contained() {
    let (env, login) = isolated_env("iso_kill").await;
    let sql = "insert into open_t values ('k'); select pg_sleep(2); \
               reset role; insert into secret values ('k'); select 1";
    let first = start_node(config(&env, &login));
    put(&env, &[sql_task(1, sql)]).await;
    eventually(
        &env.node,
        "select exists (select 1 from pg_stat_activity
                         where datname = current_database() and state = 'active'
                           and query like 'insert into open_t values (''k'')%')",
    )
    .await;
    first.1.abort();
    assert!(first.1.await.unwrap_err().is_cancelled());
    drop(first.0);
    let second = start_node(config(&env, &login));
    put(&env, &probes(2, ORDINARY)).await;
    env.wait_shipped(&(1..2 + ORDINARY).collect::<Vec<_>>())
        .await;
    assert_failed_with(&env, 1, "permission denied for table secret").await;
    assert_eq!(count(&env, "select count(*) from secret").await, 0);
    assert_eq!(
        count(&env, "select count(*) from open_t where v = 'k'").await,
        0
    );
    assert_probes_clean(&env, &login, 2).await;
    stop_node(second).await;
    env.stop_ticker().await;
}
