//! The master daemons on roles of their own (README, "Security"; issue 11): the ticker, the
//! relay and the reducer run on logins made exactly as the README and etc/ say
//! (`create role ... login; grant pgfan_<daemon> to ...`), neither superuser nor owner,
//! and a job goes end to end; each login is refused what its daemon does not need, and
//! a relay login cannot hand a job reduce SQL of its own (which runs as the owner).

mod common;

use std::time::Duration;

use common::{eventually, start_ticker, ticker_config, wait_job, Backend, TestDb};
use pgfan::node::NodeConfig;
use pgfan::reducer::ReducerConfig;
use pgfan::relay::RelayConfig;
use pgfan::signals::Control;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The statements etc/<daemon>.toml gives for making its login (`create role ... login;`,
/// `grant pgfan_<daemon> to ...;`), and the login named in its connection string; the INI
/// form must name the same login.
fn example_login(daemon: &str) -> (Vec<String>, String) {
    let read = |ext: &str| {
        let path = format!("{}/etc/{daemon}.{ext}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let toml = read("toml");
    let statements: Vec<String> = toml
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter(|l| l.starts_with("create role ") || l.starts_with("grant pgfan_"))
        .map(|l| l.split("--").next().unwrap().trim().to_string())
        .collect();
    let user = toml
        .split("user=")
        .nth(1)
        .and_then(|rest| rest.split(['"', ' ']).next())
        .unwrap_or_else(|| panic!("etc/{daemon}.toml names a user"))
        .to_string();
    assert_eq!(
        statements,
        [
            format!("create role {user} login;"),
            format!("grant pgfan_{daemon} to {user};")
        ],
        "etc/{daemon}.toml"
    );
    let ini = read("ini");
    for statement in &statements {
        assert!(
            ini.contains(&format!(";   {statement}")),
            "etc/{daemon}.ini: {statement}"
        );
    }
    assert!(
        ini.contains(&format!("user={user}")),
        "etc/{daemon}.ini uses {user}"
    );
    (statements, user)
}

/// The login of `daemon` made with the statements of its example config, under a name of
/// this test database's own (roles are cluster-wide).
async fn daemon_login(db: &TestDb, daemon: &str) -> String {
    let (statements, user) = example_login(daemon);
    let role = format!("{}_{user}", db.name);
    let sql = statements.join(" ").replace(&user, &role);
    db.connect().await.batch_execute(&sql).await.unwrap();
    role
}

/// A login of this test database's own that is a member of `group`.
async fn login(db: &TestDb, suffix: &str, group: &str) -> String {
    let role = format!("{}_{suffix}", db.name);
    db.connect()
        .await
        .batch_execute(&format!(
            "create role {role} login; grant {group} to {role};"
        ))
        .await
        .unwrap();
    role
}

fn as_login(conninfo: &str, role: &str) -> String {
    conninfo.replace("user=postgres", &format!("user={role}"))
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

/// The rows of job `job`'s result, after it is done.
async fn result(m: &Client, job: i64) -> Vec<Value> {
    let (state, error) = wait_job(m, job).await;
    assert_eq!(state, "done", "job {job}: {error}");
    m.query("select * from pgfan.result($1)", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Neither superuser nor a member of the role that owns pgfan.
async fn assert_plain_login(m: &Client, role: &str) {
    let row = m
        .query_one(
            "select r.rolsuper,
                    pg_has_role(r.oid, (select nspowner from pg_namespace where nspname = 'pgfan'), 'member')
               from pg_roles r where r.rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let (superuser, owner): (bool, bool) = (row.get(0), row.get(1));
    assert!(
        !superuser && !owner,
        "{role} is neither superuser nor owner"
    );
}

async fn daemons_run_on_their_own_roles(backend: Backend) {
    let master = TestDb::master(backend).await;
    let node_db = TestDb::empty().await;
    pgfan::install::install(&mut node_db.connect().await, pgfan::install::Role::Node)
        .await
        .unwrap();
    let m = master.connect().await;
    let ticker_login = daemon_login(&master, "ticker").await;
    let relay_login = daemon_login(&master, "relay").await;
    let reducer_login = daemon_login(&master, "reducer").await;
    let n1_login = login(&master, "n1", "pgfan_node").await;
    for role in [&ticker_login, &relay_login, &reducer_login] {
        assert_plain_login(&m, role).await;
    }
    m.query_one("select pgfan.node_add('n1')", &[])
        .await
        .unwrap();
    m.query_one("select pgfan.node_set_login('n1', $1)", &[&n1_login])
        .await
        .unwrap();

    let mut ticker_cfg = ticker_config(&master);
    ticker_cfg.base_connstr = as_login(&ticker_cfg.base_connstr, &ticker_login);
    // Retry moves and maintenance often, so that the ticker's PgQ rights are exercised.
    ticker_cfg.retry_period = Duration::from_millis(200);
    ticker_cfg.maint_period = Duration::from_millis(500);
    let ticker = start_ticker(ticker_cfg);
    let mut relay_cfg = RelayConfig::new(as_login(&master.conninfo, &relay_login));
    relay_cfg.poll_period = Duration::from_millis(200);
    let (relay_stop, rx) = mpsc::unbounded_channel();
    let relay = tokio::spawn(pgfan::relay::run(None, relay_cfg, rx));
    let mut reducer_cfg = ReducerConfig::new(as_login(&master.conninfo, &reducer_login));
    reducer_cfg.poll_period = Duration::from_millis(200);
    let (reducer_stop, rx) = mpsc::unbounded_channel();
    let reducer = tokio::spawn(pgfan::reducer::run(None, reducer_cfg, rx));
    let node_cfg = NodeConfig {
        poll_period: Duration::from_millis(200),
        heartbeat_period: Duration::from_millis(200),
        stop_timeout: Duration::from_secs(5),
        ..NodeConfig::new(
            "n1",
            &as_login(&master.conninfo, &n1_login),
            &node_db.conninfo,
        )
    };
    let (node_stop, rx) = mpsc::unbounded_channel();
    let node = tokio::spawn(pgfan::node::run(None, node_cfg, rx));

    // Submitted, with a shorthand reduce.
    let job: i64 = m
        .query_one(
            "select pgfan.submit('n1', 'select 2 as x union all select 3', reduce => 'sum')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(result(&m, job).await, [json!({"x": 5})]);
    // The raw form from a trusted producer (pgq_writer; here the owner) with reduce SQL: the
    // relay login carries it because it is the event's own, and it runs as the owner.
    let data = pgfan::urlenc::encode([
        ("sql", "select 4 as v"),
        ("reduce", "select sum(v) * 10 as w from partials"),
    ]);
    let raw = common::raw_job(&m, "sql", &data, "n1").await;
    assert_eq!(result(&m, raw).await, [json!({"w": 40})]);
    // A malformed result event: the reducer login records its dead letter.
    let bad: i64 = m
        .query_one(
            "select pgq.insert_event('pgfan_results', 'result', 'not json', '0', null, 'n1', null)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eventually(
        &master,
        &format!("select exists (select 1 from pgfan.dead_letter where source = 'reducer' and ev_id = {bad})"),
    )
    .await;
    // The ticker login ran maintenance: rotation moved on when the rotation period passed.
    m.batch_execute("select pgq.set_queue_config('push_queue', 'rotation_period', '0')")
        .await
        .unwrap();
    eventually(
        &master,
        "select queue_cur_table <> 0 from pgq.queue where queue_name = 'push_queue'",
    )
    .await;
    let after_rotation: i64 = m
        .query_one("select pgfan.submit('n1', 'select 6 as x')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(result(&m, after_rotation).await, [json!({"x": 6})]);

    for stop in [&relay_stop, &reducer_stop, &node_stop] {
        stop.send(Control::Stop).unwrap();
    }
    relay.await.unwrap().expect("the relay ends cleanly");
    reducer.await.unwrap().expect("the reducer ends cleanly");
    node.await.unwrap().expect("the node daemon ends cleanly");
    ticker.0.send(Control::Stop).unwrap();
    ticker.1.await.unwrap();

    refusals(&master, &ticker_login, &relay_login, &reducer_login).await;
}

/// What each daemon's login may not do.
async fn refusals(master: &TestDb, ticker: &str, relay: &str, reducer: &str) {
    let job_insert = "insert into pgfan.job (kind, target) values ('sql', 'n1')";
    let pull_insert = "select pgq.insert_event('pgfan_node_n1', 'sql', 'sql=select+1')";

    let c = master.connect_as(relay).await;
    denied(&c, job_insert).await;
    denied(&c, "update pgfan.task set state = 'done'").await;
    denied(&c, "select error, submitted_by from pgfan.job").await;
    denied(&c, "select login_role from pgfan.node").await;
    denied(&c, "select * from pgfan.job_result").await;
    denied(&c, pull_insert).await;
    denied(&c, "select pgfan.complete_jobs(array[1::bigint])").await;
    // Its own reduce SQL, which would run as the owner, is refused by the routing door.
    let err = c
        .query_one(
            "select pgfan.route_event('push_queue', 987654321, null, 'sql', 'n1', '{}'::jsonb,
                                      'select current_user as u', null, null,
                                      array['sql=select+1'], null, null, null)",
            &[],
        )
        .await
        .expect_err("a relay login cannot give a job reduce SQL of its own");
    assert!(
        common::db_message(&err).contains("may route only the reduce shorthands"),
        "{}",
        common::db_message(&err)
    );
    let err = c
        .query_one(
            "select pgfan.route_events('push_queue', array[987654322::bigint], array[null::bigint],
                                       array['sql'], array['n1'], array['{}'::jsonb],
                                       array['select 1 as one'], array[null::text],
                                       array[null::interval], array['[\"sql=select+1\"]'::jsonb],
                                       array[null::text], array[null::integer], array[null::text])",
            &[],
        )
        .await
        .expect_err("nor through the set-based door");
    assert!(
        common::db_message(&err).contains("may route only the reduce shorthands"),
        "{}",
        common::db_message(&err)
    );

    let c = master.connect_as(reducer).await;
    denied(&c, job_insert).await;
    denied(&c, "select * from pgfan.task_row").await;
    denied(&c, "select ev_data from pgfan.dead_letter").await;
    denied(
        &c,
        "insert into pgfan.job_result (job_id, row_no, row_data) values (1, 1, '{}')",
    )
    .await;
    denied(&c, pull_insert).await;
    denied(
        &c,
        "select pgq.insert_event('push_queue', 'sql', 'sql=select+1')",
    )
    .await;
    denied(&c, "select pgfan.reduce_job(1)").await;
    denied(
        &c,
        "select pgfan.route_event('push_queue', 1, null, 'sql', 'n1', '{}'::jsonb, null, null,
                                  null, array['sql=select+1'], null, null, null)",
    )
    .await;

    let c = master.connect_as(ticker).await;
    denied(&c, "select * from pgfan.job").await;
    denied(&c, "select login_role from pgfan.node").await;
    denied(&c, "select pgfan.submit('n1', 'select 1')").await;
    denied(&c, "select pgfan.record_results('{}', '{}', '{}')").await;
}

both_backends!(daemons_run_on_their_own_roles);

/// The roles exist with exactly the memberships the README lists, and a second install
/// changes nothing.
#[tokio::test]
async fn install_makes_the_daemon_roles_with_their_pgq_roles() {
    let master = TestDb::master(Backend::Bundled).await;
    let m = master.connect().await;
    let members: Vec<String> = m
        .query(
            "select r.rolname || ' in ' || g.rolname
               from pg_auth_members a
               join pg_roles r on r.oid = a.member
               join pg_roles g on g.oid = a.roleid
              where r.rolname in ('pgfan_ticker', 'pgfan_relay', 'pgfan_reducer')
              order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        members,
        [
            "pgfan_reducer in pgq_reader",
            "pgfan_relay in pgq_reader",
            "pgfan_ticker in pgq_admin"
        ]
    );
    let logins: i64 = m
        .query_one(
            "select count(*) from pg_roles
              where rolname in ('pgfan_ticker', 'pgfan_relay', 'pgfan_reducer')
                and not rolcanlogin and not rolsuper and not rolcreaterole",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logins, 3, "three NOLOGIN group roles");
    let report = pgfan::install::install(&mut master.connect().await, pgfan::install::Role::Master)
        .await
        .unwrap();
    assert!(report.pgfan_roles_granted, "{report}");
}
