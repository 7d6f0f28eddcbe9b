//! Security (DESIGN.md, invariants 3 and 4): the roles `pgfan install` makes and what each
//! can and cannot do, a node's login reaching only its own queue and tasks, tasks running as
//! the node's `task_role`, injection payloads in every field of a job, TLS with
//! `sslmode=verify-full` against a self-signed CA, and no password in logs or `pgfan status`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, start_ticker, ticker_config, Backend, TestDb};
use pgfan::cluster::Cluster;
use pgfan::demo::Topology;
use pgfan::node::NodeConfig;
use pgfan::signals::Control;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// A login role unique to this test database (roles are cluster-wide).
async fn login(db: &TestDb, suffix: &str, member_of: &str) -> String {
    let role = format!("{}_{suffix}", db.name);
    db.connect()
        .await
        .batch_execute(&format!(
            "create role {role} login; grant {member_of} to {role}"
        ))
        .await
        .unwrap();
    role
}

/// Asserts that `sql` fails with insufficient_privilege.
async fn denied(c: &Client, sql: &str) {
    match c.query(sql, &[]).await {
        Ok(_) => panic!("{sql} must be refused"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {}",
            common::db_message(&e)
        ),
    }
}

async fn allowed(c: &Client, sql: &str) -> Vec<tokio_postgres::Row> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", common::db_message(&e)))
}

/// A master with nodes n1 and n2, each bound to a login of its own; returns the logins.
async fn master_with_two_nodes() -> (TestDb, String, String) {
    master_with_two_nodes_on(Backend::Bundled).await
}

async fn master_with_two_nodes_on(backend: Backend) -> (TestDb, String, String) {
    let master = TestDb::master(backend).await;
    let n1 = login(&master, "n1", "pgfan_node").await;
    let n2 = login(&master, "n2", "pgfan_node").await;
    let m = master.connect().await;
    for (node, role) in [("n1", &n1), ("n2", &n2)] {
        m.query_one("select pgfan.node_add($1)", &[&node])
            .await
            .unwrap();
        m.query_one("select pgfan.node_set_login($1, $2)", &[&node, role])
            .await
            .unwrap();
    }
    (master, n1, n2)
}

/// A task of `node` on the master (what the relay would make), with its pull event ticked.
async fn task_for(m: &Client, node: &str) -> i64 {
    let task = queued_task_for(m, node).await;
    common::tick(m, &format!("pgfan_node_{node}")).await;
    task
}

/// A task of `node` with its pull event inserted but not ticked: for tests where a ticker
/// daemon runs, since a tick of our own would race it.
async fn queued_task_for(m: &Client, node: &str) -> i64 {
    let job: i64 = m
        .query_one(
            "insert into pgfan.job (kind, target, state) values ('sql', $1, 'running') returning job_id",
            &[&node],
        )
        .await
        .unwrap()
        .get(0);
    let task: i64 = m
        .query_one(
            "insert into pgfan.task (job_id, node_name, kind, payload)
             values ($1, $2, 'sql', 'sql=select+1+as+one') returning task_id",
            &[&job, &node],
        )
        .await
        .unwrap()
        .get(0);
    m.query_one(
        "select pgq.insert_event('pgfan_node_' || $1, 'sql', 'sql=select+1+as+one', $2, $3, null, null)",
        &[&node, &task.to_string(), &job.to_string()],
    )
    .await
    .unwrap();
    task
}

both_backends!(a_node_login_cannot_read_or_claim_another_nodes_events);

/// On the bundled core and on the PgQ extension (whose grants are the same).
async fn a_node_login_cannot_read_or_claim_another_nodes_events(backend: Backend) {
    let (master, n1, _n2) = master_with_two_nodes_on(backend).await;
    let m = master.connect().await;
    let t1 = task_for(&m, "n1").await;
    let t2 = task_for(&m, "n2").await;
    let b2 = common::next_batch(&m, "pgfan_node_n2", "pgfan_node_n2")
        .await
        .expect("n2 has a batch")
        .batch_id;
    let mut c = master.connect_as(&n1).await;

    // Through the doors, as n2: refused before anything is read or changed.
    for sql in [
        "select * from pgfan.node_next_batch('n2', null, null, null)".to_string(),
        "select pgfan.node_register('n2')".into(),
        format!("select pgfan.tasks_claimed('n2', array[{t2}])"),
        "select pgfan.node_heartbeat('n2', 1, 'x')".into(),
        format!("select pgfan.cancelled_tasks('n2', array[{t2}])"),
        format!("select pgfan.node_ship_results('n2', array[{t2}], array['1'], array['{{}}'])"),
        // As itself, but with n2's batch or n2's task.
        format!("select * from pgfan.node_batch_events('n1', {b2})"),
        format!("select * from pgfan.node_batch_cursor('n1', {b2}, 'c', 10)"),
        format!("select pgfan.node_finish_batch('n1', {b2})"),
        format!("select pgfan.node_event_retry('n1', {b2}, 1, 0)"),
        format!("select pgfan.node_ship_results('n1', array[{t2}], array['1'], array['{{}}'])"),
        // Around the doors: PgQ's API, the event tables, pgfan's tables and the rest.
        "select * from pgq.next_batch('pgfan_node_n2', 'pgfan_node_n2')".into(),
        format!("select * from pgq.get_batch_events({b2})"),
        format!("select pgq.finish_batch({b2})"),
        "select count(*) from pgq.event_template".into(),
        "select pgq.insert_event('pgfan_results', 'result', '{}')".into(),
        "select * from pgfan.task".into(),
        "select * from pgfan.job".into(),
        "update pgfan.node set login_role = null".into(),
        "select pgfan.submit('n2', 'select 1')".into(),
        "select pgfan.node_set_login('n2', current_user)".into(),
    ] {
        denied(&c, &sql).await;
    }
    let still_open = common::next_batch(&m, "pgfan_node_n2", "pgfan_node_n2")
        .await
        .expect("n2's batch is still open");
    assert_eq!(still_open.batch_id, b2, "n2's batch was not finished");
    let state: String = m
        .query_one("select state from pgfan.task where task_id = $1", &[&t2])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "queued", "n2's task was not claimed");

    // Its own queue, through the same doors: the whole claim cycle works.
    let tx = c.transaction().await.unwrap();
    let b1: i64 = tx
        .query_one(
            "select batch_id from pgfan.node_next_batch('n1', null, null, null)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows = tx
        .query(
            "select * from pgfan.node_batch_cursor('n1', $1, 'walker', 0)",
            &[&b1],
        )
        .await
        .unwrap();
    assert!(rows.is_empty(), "quick limit 0 returns nothing at once");
    let rows = tx.query("fetch all from walker", &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "the cursor opened by the door is readable");
    assert_eq!(
        rows[0].get::<_, Option<String>>("ev_extra1"),
        Some(t1.to_string())
    );
    tx.batch_execute("close walker").await.unwrap();
    let claimed: i32 = tx
        .query_one("select pgfan.tasks_claimed('n1', $1)", &[&vec![t1]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed, 1);
    let finished: i32 = tx
        .query_one("select pgfan.node_finish_batch('n1', $1)", &[&b1])
        .await
        .unwrap()
        .get(0);
    assert_eq!(finished, 1);
    tx.commit().await.unwrap();
    allowed(&c, "select pgfan.node_heartbeat('n1', 2, 'test')").await;
    allowed(
        &c,
        &format!("select pgfan.node_ship_results('n1', array[{t1}], array['1'], array['{{\"state\": \"done\"}}'])"),
    )
    .await;
    let shipped: (Option<String>, Option<String>) = m
        .query_one(
            "select ev_extra1, ev_extra3 from pgq.event_template where ev_type = 'result'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(shipped, (Some(t1.to_string()), Some("n1".into())));
}

/// The node daemon itself with nothing but n1's login on the master: it claims, heartbeats
/// and ships through the doors; configured as n2 with the same login it stops at once.
/// Pooled daemons share one login, bound to no node: a transaction acts as a node only
/// with that node's key, set for the transaction; the key neither reaches another node
/// nor outlives its transaction (PgBouncer lends the server connection to the next
/// client), and only the owner sets keys.
#[tokio::test]
async fn a_pooled_login_acts_as_a_node_only_with_its_key_in_the_transaction() {
    let (master, _, _) = master_with_two_nodes().await;
    let pool = login(&master, "pool", "pgfan_node").await;
    let m = master.connect().await;
    let (k1, k2) = ("n1-".repeat(11), "n2-".repeat(11));
    for (node, key) in [("n1", &k1), ("n2", &k2)] {
        m.query_one("select pgfan.node_set_pool_key($1, $2)", &[&node, key])
            .await
            .unwrap();
    }
    let short = m
        .query_one("select pgfan.node_set_pool_key('n1', 'short')", &[])
        .await
        .expect_err("a short key is refused");
    assert!(common::db_message(&short).contains("at least 32 characters"));
    let p = master.connect_as(&pool).await;
    let beat = |node: &str| format!("select pgfan.node_heartbeat('{node}', 1, 'test')");
    denied(&p, &beat("n1")).await;
    denied(
        &p,
        &format!("select pgfan.node_set_pool_key('n1', '{}')", "x".repeat(40)),
    )
    .await;
    // n2's key: n2 yes, n1 no; within one transaction.
    p.batch_execute("begin").await.unwrap();
    allowed(
        &p,
        &format!("select set_config('pgfan.node_key', '{k2}', true)"),
    )
    .await;
    allowed(&p, &beat("n2")).await;
    allowed(
        &p,
        "select * from pgfan.node_next_batch('n2', null, null, null)",
    )
    .await;
    p.batch_execute("savepoint s").await.unwrap();
    denied(&p, &beat("n1")).await;
    p.batch_execute("rollback to savepoint s; commit")
        .await
        .unwrap();
    // The next transaction on the same connection has no key.
    denied(&p, &beat("n2")).await;
    // The daemon's single-statement form (pgfan::node::door::keyed).
    let keyed = pgfan::node::door::keyed("pgfan.node_heartbeat($1, 1, 'test')", 2);
    p.query(&keyed, &[&"n1", &k1]).await.unwrap();
    let wrong = p
        .query(&keyed, &[&"n1", &k2])
        .await
        .expect_err("n2's key for n1");
    assert_eq!(wrong.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    denied(&p, &beat("n1")).await;
    // A removed node's key is gone with it.
    m.query_one("select pgfan.node_remove('n2')", &[])
        .await
        .unwrap();
    let digest: Option<Vec<u8>> = m
        .query_one(
            "select pool_key_digest from pgfan.node where node_name = 'n2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(digest, None);
}

#[tokio::test]
async fn the_node_daemon_runs_on_its_node_login_alone() {
    let (master, n1, _) = master_with_two_nodes().await;
    let node_db = TestDb::empty().await;
    pgfan::install::install(&mut node_db.connect().await, pgfan::install::Role::Node)
        .await
        .unwrap();
    let m = master.connect().await;
    m.batch_execute("select pgq.set_queue_config('pgfan_node_n1', 'ticker_max_lag', '0')")
        .await
        .unwrap();
    let ticker = start_ticker(ticker_config(&master));
    let master_as_n1 = master
        .conninfo
        .replace("user=postgres", &format!("user={n1}"));
    let cfg = |name: &str| NodeConfig {
        poll_period: Duration::from_millis(100),
        heartbeat_period: Duration::from_millis(100),
        stop_timeout: Duration::from_secs(5),
        ..NodeConfig::new(name, &master_as_n1, &node_db.conninfo)
    };

    let (stop, rx) = mpsc::unbounded_channel();
    let daemon = tokio::spawn(pgfan::node::run(None, cfg("n1"), rx));
    // ticker_max_lag=0: the running ticker ticks the event by itself.
    let task = queued_task_for(&m, "n1").await;
    eventually(
        &node_db,
        &format!("select exists (select 1 from pgfan_node.task where task_id = {task} and shipped_at is not null)"),
    )
    .await;
    eventually(
        &master,
        &format!(
            "select (select state from pgfan.task where task_id = {task}) = 'claimed'
                and (select heartbeat is not null from pgfan.node where node_name = 'n1')
                and exists (select 1 from pgq.event_template
                             where ev_type = 'results' and ev_extra3 = 'n1'
                               and ev_data::jsonb @> jsonb_build_array(jsonb_build_object('task', {task}::bigint)))"
        ),
    )
    .await;
    stop.send(Control::Stop).unwrap();
    daemon.await.unwrap().expect("the node daemon ends cleanly");

    let (_keep, rx) = mpsc::unbounded_channel();
    let err = tokio::time::timeout(common::PATIENCE, pgfan::node::run(None, cfg("n2"), rx))
        .await
        .expect("a node that may not act as n2 stops by itself")
        .expect_err("n1's login cannot run as n2");
    assert!(err.to_string().contains("may not act as node n2"), "{err}");
    ticker.0.send(Control::Stop).unwrap();
    ticker.1.await.unwrap();
}

#[tokio::test]
async fn a_producer_submits_and_follows_its_own_jobs_only() {
    let (master, _, _) = master_with_two_nodes().await;
    let producer = login(&master, "producer", "pgfan_producer").await;
    let m = master.connect().await;
    let foreign: i64 = m
        .query_one("select pgfan.submit('n1', 'select 1')", &[])
        .await
        .unwrap()
        .get(0);
    let c = master.connect_as(&producer).await;
    let job: i64 = allowed(
        &c,
        "select pgfan.submit('n1', 'select 1 as one', reduce => 'sum')",
    )
    .await[0]
        .get(0);
    allowed(&c, "select pgfan.run_on_all('select 1')").await;
    allowed(
        &c,
        "select pgfan.run_parallel(array['select 1', 'select 2'], 2, 'n2')",
    )
    .await;
    allowed(
        &c,
        "select pgfan.push_event('sql', 'sql=select+1&reduce=%73um&lane=l', 'n1')",
    )
    .await;
    allowed(&c, &format!("select * from pgfan.job_status({job})")).await;
    allowed(&c, &format!("select pgfan.job_summary({foreign})")).await;
    allowed(&c, &format!("select pgfan.wait({job}, '0')")).await;
    let cancelled: bool = allowed(&c, &format!("select pgfan.cancel({job})")).await[0].get(0);
    assert!(cancelled);
    let by: String = m
        .query_one(
            "select submitted_by from pgfan.job where job_id = $1",
            &[&job],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by, producer, "the job records the login that submitted it");
    for sql in [
        format!("select pgfan.cancel({foreign})"),
        format!("select * from pgfan.result({foreign})"),
        // Reduce SQL runs with the reducer's rights: shorthands only for producers.
        "select pgfan.submit('n1', 'select 1', reduce => 'select count(*) from pg_authid')".into(),
        "select pgfan.push_event('sql', 'sql=select+1&reduce=select+1', 'n1')".into(),
        "select pgfan.push_event('sql', 'sql=select+1&r%65duce=select+1', 'n1')".into(),
        format!("select pgfan.push_event('sql', 'job={foreign}', 'n1')"),
        "select * from pgfan.job".into(),
        "select * from pgfan.task".into(),
        "select * from pgfan.dead_letter".into(),
        "insert into pgfan.job (kind) values ('sql')".into(),
        "select pgq.insert_event('pgfan_node_n1', 'sql', 'sql=drop+table+x', '1', '1', null, null)"
            .into(),
        "select pgq.insert_event('push_queue', 'sql', 'sql=select+1', 'n1', null, null, null)"
            .into(),
        "select pgfan.node_heartbeat('n1', 1, 'x')".into(),
        "select pgfan.node_add('n9')".into(),
        "select pgfan.retry_failed(1)".into(),
        "select pgfan.replay_dead_letter(1)".into(),
    ] {
        denied(&c, &sql).await;
    }
}

#[tokio::test]
async fn an_operator_reads_the_status_and_changes_nothing() {
    let (master, _, _) = master_with_two_nodes().await;
    let operator = login(&master, "operator", "pgfan_operator").await;
    master
        .connect()
        .await
        .batch_execute("select pgfan.submit('n1', 'select 1')")
        .await
        .unwrap();
    let conninfo = master
        .conninfo
        .replace("user=postgres", &format!("user={operator}"));
    let out = pgfan_cli(&["status", "--db", &conninfo], &[]).await;
    // Exit 1: the nodes never sent a heartbeat, which the status reports, as it should.
    assert!(out.code == Some(0) || out.code == Some(1), "{out:?}");
    assert!(
        out.stdout.contains("NODES") && out.stdout.contains("n2"),
        "{out:?}"
    );
    assert!(out.stdout.contains("RECENT JOBS"), "{out:?}");
    let c = master.connect_as(&operator).await;
    for sql in [
        "select pgfan.submit('n1', 'select 1')",
        "delete from pgfan.job",
        "update pgfan.node set state = 'disabled'",
        "select pgfan.cancel(1)",
        "select pgfan.node_drain('n1')",
        "select pgq.insert_event('push_queue', 'sql', 'sql=select+1', 'n1', null, null, null)",
    ] {
        denied(&c, sql).await;
    }
}

/// What the pgfan binary printed and how it ended.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn pgfan_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Tasks run as the node's task_role.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tasks_run_as_the_task_role_and_cannot_leave_it() {
    let master = TestDb::master(Backend::Bundled).await;
    let node_db = TestDb::empty().await;
    pgfan::install::install(&mut node_db.connect().await, pgfan::install::Role::Node)
        .await
        .unwrap();
    let task_role = format!("{}_tasks", node_db.name);
    node_db
        .connect()
        .await
        .batch_execute(&format!(
            "create role {task_role} login;
             create table secret (v text);
             create table open_t (v text);
             grant select, insert on open_t to {task_role};
             create function read_secret() returns bigint language sql as 'select count(*) from secret';"
        ))
        .await
        .unwrap();
    let m = master.connect().await;
    m.batch_execute(
        "select pgfan.node_add('tr');
         select pgq.set_queue_config('pgfan_node_tr', 'ticker_max_lag', '0')",
    )
    .await
    .unwrap();
    let ticker = start_ticker(ticker_config(&master));
    let mut cfg = NodeConfig {
        poll_period: Duration::from_millis(100),
        heartbeat_period: Duration::from_millis(200),
        stop_timeout: Duration::from_secs(5),
        allow_call: vec!["read_secret".into()],
        ..NodeConfig::new("tr", &master.conninfo, &node_db.conninfo)
    };
    cfg.task_role = Some(task_role.clone());
    let (stop, rx) = mpsc::unbounded_channel();
    let daemon = tokio::spawn(pgfan::node::run(None, cfg, rx));

    let sql = |s: &str| pgfan::urlenc::encode([("sql", s)]);
    // Task 4 switches to the daemon's own login role (the test cluster's superuser).
    let tasks: Vec<(i64, &str, String, Option<&str>)> = vec![
        (1, "sql", sql("select count(*) as n from secret"), None),
        (
            2,
            "sql",
            sql("insert into open_t values ('ok'); select current_user::text as u"),
            None,
        ),
        (
            3,
            "sql",
            sql("reset role; insert into secret values ('stolen'); select 1"),
            None,
        ),
        (
            4,
            "sql",
            sql("set role postgres; insert into secret values ('stolen'); select 1"),
            None,
        ),
        (5, "call", "fn=read_secret".into(), None),
        (
            6,
            "sql",
            sql("select count(*) as n from secret"),
            Some("tx=0"),
        ),
        (
            7,
            "sql",
            sql("select current_user::text as u"),
            Some("tx=0"),
        ),
    ];
    let mt = master.connect().await;
    for (id, kind, data, opts) in &tasks {
        mt.query_one(
            "select pgq.insert_event('pgfan_node_tr', $1, $2, $3::text, '1', null, $4)",
            &[kind, data, &id.to_string(), opts],
        )
        .await
        .unwrap();
    }
    eventually(
        &node_db,
        "select count(*) = 7 from pgfan_node.task where state in ('done', 'failed')",
    )
    .await;
    let n = node_db.connect().await;
    let outcome = |id: i64| {
        let n = &n;
        async move {
            let r = n
                .query_one(
                    "select state, coalesce(error, ''), result::text from pgfan_node.task where task_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
            )
        }
    };
    for id in [1, 5, 6] {
        let (state, error, _) = outcome(id).await;
        assert_eq!(state, "failed", "task {id}");
        assert!(
            error.contains("permission denied for table secret"),
            "task {id}: {error}"
        );
    }
    for id in [2, 7] {
        let (state, _, result) = outcome(id).await;
        assert_eq!(state, "done", "task {id}");
        assert!(result.contains(&task_role), "task {id} ran as {result}");
    }
    // The task connection is logged in as the task role: RESET ROLE stays there, and SET
    // ROLE is checked against that login, so neither reaches the daemon's rights.
    for (id, why) in [
        (3, "permission denied for table secret"),
        (4, "permission denied to set role"),
    ] {
        let (state, error, _) = outcome(id).await;
        assert_eq!(state, "failed", "task {id}");
        assert!(error.contains(why), "task {id}: {error}");
    }
    let stolen: i64 = n
        .query_one("select count(*) from secret", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stolen, 0,
        "nothing written by a task that left its role was kept"
    );
    let user: String = n
        .query_one("select count(*)::text from open_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "1");
    stop.send(Control::Stop).unwrap();
    daemon.await.unwrap().unwrap();
    ticker.0.send(Control::Stop).unwrap();
    ticker.1.await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Injection payloads in every field.
// ---------------------------------------------------------------------------------------

/// Text that would do harm if it were ever spliced into SQL, with quoting characters of
/// every kind.
const PAYLOADS: &[&str] = &[
    "'; drop table victim; --",
    "\"; drop table victim; --",
    "$$; drop table victim; $$",
    "$x$ drop table victim $x$",
    "\\'; drop table victim; --",
    "x') ; drop table victim; --",
    "E'\\\\' || (select 1) || '",
    "%27; drop table victim; --",
    "a&b=c&sql=drop table victim",
];

async fn victim_intact(c: &Client, where_: &str) {
    let n: i64 = c
        .query_one("select count(*) from victim", &[])
        .await
        .unwrap_or_else(|e| panic!("victim on {where_}: {}", common::db_message(&e)))
        .get(0);
    assert_eq!(n, 1, "victim on {where_} was changed");
}

#[tokio::test]
async fn injection_payloads_in_every_field_execute_nothing() {
    let topo = Topology::start(2, |cfg| {
        cfg.copy_tables = vec!["public.items".into()];
        cfg.allow_call = vec!["public.echo".into()];
        cfg.poll_period = Duration::from_millis(200);
        cfg.heartbeat_period = Duration::from_millis(200);
    })
    .await
    .unwrap();
    let m = topo.master_client().await.unwrap();
    m.batch_execute("create table victim (v int); insert into victim values (1)")
        .await
        .unwrap();
    for node in &topo.nodes {
        pgfan::db::connect_client(&node.conninfo())
            .await
            .unwrap()
            .batch_execute(
                "create table victim (v int); insert into victim values (1);
                 create table items (id text primary key, name text, note text);
                 create function echo(a text, b text default '') returns text language sql
                     as 'select a || b';",
            )
            .await
            .unwrap();
    }
    let n1 = pgfan::db::connect_client(&topo.nodes[0].conninfo())
        .await
        .unwrap();

    for (i, p) in PAYLOADS.iter().enumerate() {
        // Target: an unknown node, refused at once by submit and as a failed raw job.
        let err = m
            .query_one("select pgfan.submit($1, 'select 1')", &[p])
            .await
            .expect_err("no such node");
        assert!(common::db_message(&err).contains("unknown node"), "{err:?}");
        let job = common::raw_job(&m, "sql", "sql=select+1", p).await;
        let (state, error) = common::wait_job(&m, job).await;
        assert_eq!(state, "failed", "target {p:?}");
        assert!(error.contains("unknown node"), "{error}");

        // Lane and reduce shorthand names, through submit: the lane is only a label; a
        // reduce that is not a shorthand is the owner's SQL and fails to parse here.
        let job: i64 = m
            .query_one(
                "select pgfan.submit('n1', 'select 1 as one', lane => $1)",
                &[p],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(common::wait_job(&m, job).await.0, "done", "lane {p:?}");
        let job: i64 = m
            .query_one(
                "select pgfan.submit('n1', 'select 1 as one', reduce => 'sum' || $1)",
                &[p],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(common::wait_job(&m, job).await.0, "failed", "reduce {p:?}");

        // A result column named like the payload, reduced by a shorthand: quoted, so it
        // only names the column.
        let named = format!("select 2 as \"{}\"", p.replace('"', "\"\""));
        let job: i64 = m
            .query_one("select pgfan.submit('all', $1, reduce => 'sum')", &[&named])
            .await
            .unwrap()
            .get(0);
        let (state, error) = common::wait_job(&m, job).await;
        assert_eq!(
            (state.as_str(), error.as_str()),
            ("done", ""),
            "column {p:?}"
        );
        let sum: serde_json::Value = m
            .query_one("select * from pgfan.result($1)", &[&job])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sum[*p], serde_json::json!(4), "column {p:?}: {sum}");

        // Copy: the payload as table name, as column name and as values of every column.
        let id = format!("{i}-{p}");
        let data = pgfan::urlenc::encode([
            ("action", "ins"),
            ("id", id.as_str()),
            ("name", p),
            ("note", "\\ \" ' $$ %00"),
        ]);
        let job = common::raw_job(&m, "copy", &data, "n1").await;
        let (state, error) = common::wait_job(&m, job).await;
        assert_eq!(
            (state.as_str(), error.as_str()),
            ("done", ""),
            "copy values {p:?}"
        );
        let stored: (String, String) = n1
            .query_one("select name, note from items where id = $1", &[&id])
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!(stored, (p.to_string(), "\\ \" ' $$ %00".to_string()));
        let data = pgfan::urlenc::encode([("action", "ins"), ("table", p), ("id", "t")]);
        let (state, error) =
            common::wait_job(&m, common::raw_job(&m, "copy", &data, "n1").await).await;
        assert_eq!(state, "failed", "copy table {p:?}");
        assert!(error.contains("is not in node n1's copy_tables"), "{error}");
        let data = pgfan::urlenc::encode([("action", "ins"), ("id", "c"), (p, "x")]);
        let (state, error) =
            common::wait_job(&m, common::raw_job(&m, "copy", &data, "n1").await).await;
        assert_eq!(state, "failed", "copy column {p:?}");
        assert!(error.contains("does not exist"), "{error}");

        // Call: the payload as function name and as arguments.
        let job: i64 = m
            .query_one("select pgfan.submit('n1', call => $1)", &[p])
            .await
            .unwrap()
            .get(0);
        let (state, error) = common::wait_job(&m, job).await;
        assert_eq!(state, "failed", "call {p:?}");
        assert!(error.contains("allow-list"), "{error}");
        let job: i64 = m
            .query_one(
                "select pgfan.submit('n1', call => 'public.echo', args => array[$1, $1])",
                &[p],
            )
            .await
            .unwrap()
            .get(0);
        let (state, error) = common::wait_job(&m, job).await;
        assert_eq!(
            (state.as_str(), error.as_str()),
            ("done", ""),
            "call args {p:?}"
        );
        let echoed: serde_json::Value = m
            .query_one("select * from pgfan.result($1)", &[&job])
            .await
            .unwrap()
            .get(0);
        assert_eq!(echoed["echo"], serde_json::json!(format!("{p}{p}")));

        // Job options in the raw form: refused with an error, never run.
        for key in ["policy", "timeout", "parallel", "tx"] {
            let data = pgfan::urlenc::encode([("sql", "select 1"), (key, p)]);
            let (state, _) =
                common::wait_job(&m, common::raw_job(&m, "sql", &data, "n1").await).await;
            assert_eq!(state, "failed", "option {key}={p:?}");
        }
        let data = pgfan::urlenc::encode([("sql", "select 1 as one"), ("lane", p)]);
        let (state, _) = common::wait_job(&m, common::raw_job(&m, "sql", &data, "n1").await).await;
        assert_eq!(state, "done", "lane {p:?} in the raw form");
    }

    // NUL cannot be stored in PostgreSQL text: the task fails cleanly, nothing else.
    let data = "action=ins&id=nul&name=a%00b";
    let (state, error) = common::wait_job(&m, common::raw_job(&m, "copy", data, "n1").await).await;
    assert_eq!(state, "failed", "{error}");
    let data = "sql=select+%27a%00b%27";
    let (state, _) = common::wait_job(&m, common::raw_job(&m, "sql", data, "n1").await).await;
    assert_eq!(state, "failed");

    victim_intact(&m, "the master").await;
    for node in &topo.nodes {
        let c = pgfan::db::connect_client(&node.conninfo()).await.unwrap();
        victim_intact(&c, &node.name).await;
    }
    let job: i64 = m
        .query_one("select pgfan.run_on_all('select 1 as one', 'sum')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        common::wait_job(&m, job).await.0,
        "done",
        "the pipeline goes on"
    );
    topo.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// TLS with sslmode=verify-full.
// ---------------------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run /usr/bin/openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (name.crt, name.key) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN=pgfan test {name}"),
        ],
    );
}

/// server.crt/server.key for 127.0.0.1 and localhost, signed by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
}

/// A cluster with TLS on, serving `certs`/server.crt. The server refuses a key that others
/// can read, so when the tests run as root (and the server as `postgres`) the files are
/// handed to the server's user.
fn start_with_tls(certs: &Path) -> Cluster {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } == 0 {
        let user = std::env::var("PGFAN_PG_USER").unwrap_or_else(|_| "postgres".into());
        let name = std::ffi::CString::new(user).unwrap();
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!pw.is_null(), "the server's user exists");
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        for file in ["server.crt", "server.key"] {
            std::os::unix::fs::chown(certs.join(file), Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::set_permissions(certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (file, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
        std::fs::set_permissions(certs.join(file), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let literal = |file: &str| format!("'{}'", certs.join(file).display());
    let (cert, key) = (literal("server.crt"), literal("server.key"));
    Cluster::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert),
        ("ssl_key_file", &key),
    ])
    .expect("a cluster with TLS starts")
}

async fn uses_tls(conninfo: &str) -> Result<bool, tokio_postgres::Error> {
    let c = pgfan::db::connect_client(conninfo).await?;
    Ok(c.query_one(
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        &[],
    )
    .await?
    .get(0))
}

#[tokio::test]
async fn tls_verify_full_against_a_self_signed_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_ca(certs.path(), "other_ca");
    make_server_cert(certs.path(), "ca");
    let dir = certs.path().to_path_buf();
    let cluster = tokio::task::spawn_blocking(move || start_with_tls(&dir))
        .await
        .unwrap();
    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("other_ca.crt");
    let port = cluster.port();
    let conninfo = |host: &str, mode: &str, root: &Path| {
        format!(
            "host={host} port={port} user=postgres dbname=postgres sslmode={mode} sslrootcert='{}'",
            root.display()
        )
    };

    for host in ["127.0.0.1", "localhost"] {
        assert!(
            uses_tls(&conninfo(host, "verify-full", &ca))
                .await
                .unwrap_or_else(|e| panic!("verify-full to {host}: {e:?}")),
            "verify-full to {host}"
        );
    }
    let wrong_ca = uses_tls(&conninfo("127.0.0.1", "verify-full", &other))
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(
        format!("{wrong_ca:?}").contains("certificate verify failed"),
        "{wrong_ca:?}"
    );
    // The certificate does not name this host: verify-ca accepts it, verify-full does not.
    let renamed = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={mode} sslrootcert='{}'",
            ca.display()
        )
    };
    assert!(uses_tls(&renamed("verify-ca")).await.unwrap());
    assert!(uses_tls(&renamed("verify-full")).await.is_err());
    let missing = uses_tls(&conninfo(
        "127.0.0.1",
        "verify-full",
        Path::new("/nonexistent/ca.crt"),
    ))
    .await
    .expect_err("no root certificate, no connection");
    let cause = std::error::Error::source(&missing).map(|c| c.to_string());
    assert!(
        cause.is_some_and(|c| c.contains("root certificate file")),
        "{missing:?}"
    );
    assert!(!uses_tls(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
    ))
    .await
    .unwrap());

    // The binary too: install and status over verify-full.
    let db = conninfo("127.0.0.1", "verify-full", &ca);
    let out = pgfan_cli(&["install", "--db", &db, "--role", "master"], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = pgfan_cli(&["status", "--db", &db], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("push_queue"), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// No password in logs or status output.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn passwords_never_appear_in_logs_or_status() {
    const FILE_PASSWORD: &str = "FilePw-7c1e9b";
    const INLINE_PASSWORD: &str = "InlinePw-3f8a2d";
    const WRONG_PASSWORD: &str = "WrongPw-55d0c4";
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let admin = pgfan::db::connect_client(&cluster.conninfo("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "create role pw_file login superuser password '{FILE_PASSWORD}';
             create role pw_inline login superuser password '{INLINE_PASSWORD}';"
        ))
        .await
        .unwrap();
    for db in ["master", "node"] {
        admin
            .batch_execute(&format!("create database {db}"))
            .await
            .unwrap();
    }
    let hba = cluster.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pw_file,pw_inline 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    admin
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:*:pw_file:{FILE_PASSWORD}\n", cluster.port()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passfile = passfile.to_str().unwrap().to_string();
    let port = cluster.port();
    let from_file = |db: &str| format!("host=127.0.0.1 port={port} user=pw_file dbname={db}");
    let inline = |db: &str, pw: &str| {
        format!("host=127.0.0.1 port={port} user=pw_inline password={pw} dbname={db}")
    };
    let env = [("PGPASSFILE", passfile.as_str()), ("PGFAN_LOG", "debug")];
    let mut seen = String::new();

    let out = pgfan_cli(
        &["install", "--db", &from_file("master"), "--role", "master"],
        &env,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    seen += &format!("{out:?}");
    let out = pgfan_cli(
        &[
            "install",
            "--db",
            &inline("node", INLINE_PASSWORD),
            "--role",
            "node",
        ],
        &env,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    seen += &format!("{out:?}");
    let m = pgfan::db::connect_client(&cluster.conninfo("master"))
        .await
        .unwrap();
    m.query_one("select pgfan.node_add('pw')", &[])
        .await
        .unwrap();
    for db in [from_file("master"), inline("master", INLINE_PASSWORD)] {
        for extra in [&[][..], &["--json"][..]] {
            let mut args = vec!["status", "--db", &db];
            args.extend_from_slice(extra);
            let out = pgfan_cli(&args, &env).await;
            assert!(out.stdout.contains("pgfan_node_pw"), "{out:?}");
            seen += &format!("{out:?}");
        }
    }
    let out = pgfan_cli(&["status", "--db", &inline("master", WRONG_PASSWORD)], &env).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out:?}"
    );
    seen += &format!("{out:?}");

    // The node daemon with its master password from the file and a wrong inline password
    // for its node database: it heartbeats (master) and logs the node outage, at debug.
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"pw\"\nmaster = \"{}\"\ndb = \"{}\"\npoll_period = \"100ms\"\nheartbeat_period = \"100ms\"\n",
            from_file("master"),
            inline("node", WRONG_PASSWORD)
        ),
    )
    .unwrap();
    let out = pgfan_cli(
        &["node", "-c", config.to_str().unwrap(), "--check-config"],
        &env,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    seen += &format!("{out:?}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(["node", "-c", config.to_str().unwrap()])
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let mut log = String::new();
    while !log.contains("password authentication failed") {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no outage logged:\n{log}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the daemon ended:\n{log}"));
        log.push_str(&line);
        log.push('\n');
    }
    let pid = child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    while let Some(line) = lines.next_line().await.unwrap() {
        log.push_str(&line);
        log.push('\n');
    }
    child.wait().await.unwrap();
    seen += &log;

    for pw in [FILE_PASSWORD, INLINE_PASSWORD, WRONG_PASSWORD] {
        assert!(!seen.contains(pw), "password {pw} was printed:\n{seen}");
    }
}
