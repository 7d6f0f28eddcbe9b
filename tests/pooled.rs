//! A node daemon that reaches the master through PgBouncer in transaction mode (issue 14's
//! pooled mode, `pooled = true`): no LISTEN, no statement that outlives its transaction,
//! and its tasks take effect exactly once, also across a restart of PgBouncer. PgBouncer
//! is Debian's (`pgbouncer`), started by the test.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::node_env::{put, put_in, sql_task, start_node, stop_node, Env, Pull};
use common::{cluster, eventually, TestDb};
use pgfan::install::{self, Role};
use pgfan::node::NodeConfig;

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer in transaction mode in front of the test cluster, one server connection per
/// database.
struct Bouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Bouncer {
    fn start() -> Bouncer {
        let dir = tempfile::tempdir().expect("tempdir");
        // PgBouncer refuses to run as root: it runs as the cluster's user, who must read
        // its files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = 1\nmax_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            cluster().port(),
            dir.path().join("users.txt").display()
        );
        write(&dir.path().join("pgbouncer.ini"), &ini);
        write(&dir.path().join("users.txt"), "\"postgres\" \"\"\n");
        let mut b = Bouncer {
            dir,
            port,
            child: None,
        };
        b.run();
        b
    }

    fn run(&mut self) {
        let ini = self.dir.path().join("pgbouncer.ini");
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", PGBOUNCER]);
            c
        } else {
            Command::new(PGBOUNCER)
        };
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        self.child = Some(child);
        // Listening: a TCP connect succeeds (PgBouncer binds before it serves).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills PgBouncer (every client and server connection through it breaks) and starts
    /// it again on the same port.
    fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write a pgbouncer file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Another node of `env`'s master, with its own node database and the same settings.
async fn other_node(env: &Env, name: &str) -> TestDb {
    let db = TestDb::empty().await;
    install::install(&mut db.connect().await, Role::Node)
        .await
        .expect("install the node schema");
    db.connect()
        .await
        .batch_execute("create table t (id integer)")
        .await
        .unwrap();
    let m = env.master.connect().await;
    m.query_one("select pgfan.node_add($1)", &[&name])
        .await
        .unwrap();
    m.query_one(
        "select pgq.set_queue_config($1, 'ticker_max_lag', '0')",
        &[&format!("pgfan_node_{name}")],
    )
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

/// Three node daemons share ONE server connection through PgBouncer (so their statements
/// meet on it: a named statement left outside a transaction by one would break another),
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
    let mut bouncer = Bouncer::start();
    let pooled = |name: &str, node: &str| NodeConfig {
        pooled: true,
        claim_poll_period: Duration::from_millis(200),
        ..NodeConfig {
            master: bouncer.conninfo(&env.master.name),
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
    bouncer.restart();
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
