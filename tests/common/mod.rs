//! Test harness: one throwaway cluster per test binary, a fresh database per test.
//!
//! Each test binary starts its cluster on first use; the cluster's reaper stops and deletes
//! it when the binary exits, however it exits. Tests isolate themselves by database, so they
//! can run in parallel on the shared cluster. Tests that restart servers or need several
//! clusters start their own with `Cluster::start()` (dropped = removed, also on panic).
#![allow(dead_code)]

pub mod node_env;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgfan::cluster::Cluster;
use pgfan::db::Session;
use pgfan::install::{self, Role};
use tokio_postgres::Client;

/// Which PgQ implementation a test database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// pgfan's bundled PL/pgSQL core (`sql/pgq`).
    Bundled,
    /// The real C/PL/pgSQL PgQ extension from Debian's postgresql-15-pgq3.
    Extension,
}

/// Creates the cluster-wide pgq roles unless they exist; a concurrent creator is not an error.
const PRECREATE_PGQ_ROLES: &str = "
do $$
declare r text;
begin
    foreach r in array array['pgq_reader', 'pgq_writer', 'pgq_admin'] loop
        begin
            execute format('create role %I nologin', r);
        exception when unique_violation or duplicate_object then
            null;
        end;
    end loop;
end
$$";

/// The cluster shared by all tests of this binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().expect("start the test cluster"))
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub conninfo: String,
    pub backend: Backend,
}

impl TestDb {
    /// A new empty database on the shared cluster.
    pub async fn empty() -> TestDb {
        Self::empty_on(cluster()).await
    }

    /// A new empty database on `cluster`.
    pub async fn empty_on(cluster: &Cluster) -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = pgfan::db::connect_client(&cluster.conninfo("postgres"))
            .await
            .expect("connect admin");
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        TestDb {
            conninfo: cluster.conninfo(&name),
            name,
            backend: Backend::Bundled,
        }
    }

    /// A new database with the queue core of `backend` (and pgq_ext) only.
    pub async fn new(backend: Backend) -> TestDb {
        Self::with_role(backend, Role::Queue).await
    }

    /// A new pgfan master on the queue core of `backend`.
    pub async fn master(backend: Backend) -> TestDb {
        Self::with_role(backend, Role::Master).await
    }

    async fn with_role(backend: Backend, role: Role) -> TestDb {
        let mut db = Self::empty().await;
        db.backend = backend;
        let mut client = db.connect().await;
        if backend == Backend::Extension {
            // The extension creates the cluster-wide pgq roles without guarding against a
            // concurrent creation (by another test's extension or bundled install), so the
            // roles are made first, tolerating a concurrent creator, as a DBA would.
            static CREATE_EXTENSION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
            let _turn = CREATE_EXTENSION.lock().await;
            client
                .batch_execute(PRECREATE_PGQ_ROLES)
                .await
                .expect("create the pgq roles");
            client
                .batch_execute("create extension pgq")
                .await
                .expect("create extension pgq");
        }
        install::install(&mut client, role)
            .await
            .expect("pgfan install");
        db
    }

    /// A superuser client.
    pub async fn connect(&self) -> Client {
        pgfan::db::connect_client(&self.conninfo)
            .await
            .expect("connect")
    }

    /// A superuser session that also yields notices and notifications.
    pub async fn session(&self) -> Session {
        pgfan::db::connect(&self.conninfo).await.expect("connect")
    }

    /// A client logged in as `user` (trust authentication).
    pub async fn connect_as(&self, user: &str) -> Client {
        let conninfo = self
            .conninfo
            .replace("user=postgres", &format!("user={user}"));
        pgfan::db::connect_client(&conninfo)
            .await
            .expect("connect as user")
    }
}

/// Defines `mod bundled` and `mod extension`, each with one `#[tokio::test]` per named
/// `async fn name(backend: Backend)` of the enclosing file.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod bundled {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Bundled).await
                }
            )*
        }
        mod extension {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Extension).await
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------
// PgQ SQL helpers shared by the queue-core test files. They call the SQL API directly, so
// the same statements run against both backends.
// ---------------------------------------------------------------------------------------

/// One event as `get_batch_events` / `get_batch_cursor` return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub id: i64,
    pub time: std::time::SystemTime,
    pub txid: Option<i64>,
    pub retry: Option<i32>,
    pub ev_type: Option<String>,
    pub data: Option<String>,
    pub extra: [Option<String>; 4],
}

impl Ev {
    pub fn from_row(row: &tokio_postgres::Row) -> Ev {
        Ev {
            id: row.get("ev_id"),
            time: row.get("ev_time"),
            txid: row.get("ev_txid"),
            retry: row.get("ev_retry"),
            ev_type: row.get("ev_type"),
            data: row.get("ev_data"),
            extra: [
                row.get("ev_extra1"),
                row.get("ev_extra2"),
                row.get("ev_extra3"),
                row.get("ev_extra4"),
            ],
        }
    }

    /// `ev_data`, which every test sets.
    pub fn data(&self) -> &str {
        self.data.as_deref().expect("ev_data is set")
    }
}

/// The columns of `next_batch_info` / `next_batch_custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub batch_id: i64,
    pub cur_tick_id: i64,
    pub prev_tick_id: i64,
    pub cur_tick_event_seq: i64,
    pub prev_tick_event_seq: i64,
}

impl BatchInfo {
    /// None when the row says there is no batch (all columns NULL).
    pub fn from_row(row: &tokio_postgres::Row) -> Option<BatchInfo> {
        let batch_id: Option<i64> = row.get("batch_id");
        let batch_id = batch_id?;
        Some(BatchInfo {
            batch_id,
            cur_tick_id: row.get("cur_tick_id"),
            prev_tick_id: row.get("prev_tick_id"),
            cur_tick_event_seq: row.get("cur_tick_event_seq"),
            prev_tick_event_seq: row.get("prev_tick_event_seq"),
        })
    }
}

/// The server's message text of a failed statement (panics on a non-database error).
pub fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {err:?}"))
        .message()
        .to_string()
}

/// A database with `backend`'s core, a superuser client and the queues `queues` created.
pub async fn queue_db(backend: Backend, queues: &[&str]) -> (TestDb, Client) {
    let db = TestDb::new(backend).await;
    let client = db.connect().await;
    for q in queues {
        let created: i32 = client
            .query_one("select pgq.create_queue($1)", &[q])
            .await
            .unwrap_or_else(|e| panic!("create_queue({q}) failed: {e:?}"))
            .get(0);
        assert_eq!(created, 1, "create_queue({q}) must report a new queue");
    }
    (db, client)
}

pub async fn set_queue_config(client: &Client, q: &str, param: &str, value: &str) {
    client
        .query_one(
            "select pgq.set_queue_config($1, $2, $3)",
            &[&q, &param, &value],
        )
        .await
        .unwrap_or_else(|e| panic!("set_queue_config({q}, {param}, {value}) failed: {e:?}"));
}

pub async fn register(client: &Client, q: &str, consumer: &str) {
    let r: i32 = client
        .query_one("select pgq.register_consumer($1, $2)", &[&q, &consumer])
        .await
        .unwrap_or_else(|e| panic!("register_consumer({q}, {consumer}) failed: {e:?}"))
        .get(0);
    assert_eq!(
        r, 1,
        "register_consumer({q}, {consumer}) must register anew"
    );
}

pub async fn insert_event(client: &Client, q: &str, ev_type: &str, data: &str) -> i64 {
    client
        .query_one(
            "select pgq.insert_event($1, $2, $3)",
            &[&q, &ev_type, &data],
        )
        .await
        .unwrap_or_else(|e| panic!("insert_event({q}, {ev_type}, {data}) failed: {e:?}"))
        .get(0)
}

/// The id of the newest tick of `q`.
pub async fn last_tick(client: &Client, q: &str) -> i64 {
    client
        .query_one(
            "select max(t.tick_id) from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue
              where q.queue_name = $1",
            &[&q],
        )
        .await
        .unwrap()
        .get(0)
}

/// Makes `q` tick now (`force_tick` then `ticker`, each its own transaction) and returns the
/// new tick id.
pub async fn tick(client: &Client, q: &str) -> i64 {
    let before: i64 = client
        .query_one("select pgq.force_tick($1)", &[&q])
        .await
        .unwrap_or_else(|e| panic!("force_tick({q}) failed: {e:?}"))
        .get(0);
    let id: Option<i64> = client
        .query_one("select pgq.ticker($1)", &[&q])
        .await
        .unwrap_or_else(|e| panic!("ticker({q}) failed: {e:?}"))
        .get(0);
    let id = id.unwrap_or_else(|| panic!("ticker({q}) did not tick after force_tick"));
    assert!(
        id > before,
        "the new tick {id} of {q} must be newer than {before}"
    );
    id
}

/// `next_batch_info(q, c)`: the open or next batch, None when there is none.
pub async fn next_batch(client: &Client, q: &str, consumer: &str) -> Option<BatchInfo> {
    let row = client
        .query_one(
            "select * from pgq.next_batch_info($1, $2)",
            &[&q, &consumer],
        )
        .await
        .unwrap_or_else(|e| panic!("next_batch_info({q}, {consumer}) failed: {e:?}"));
    BatchInfo::from_row(&row)
}

pub async fn batch_events(client: &Client, batch_id: i64) -> Vec<Ev> {
    client
        .query("select * from pgq.get_batch_events($1)", &[&batch_id])
        .await
        .unwrap_or_else(|e| panic!("get_batch_events({batch_id}) failed: {e:?}"))
        .iter()
        .map(Ev::from_row)
        .collect()
}

pub async fn finish_batch(client: &Client, batch_id: i64) -> i32 {
    client
        .query_one("select pgq.finish_batch($1)", &[&batch_id])
        .await
        .unwrap_or_else(|e| panic!("finish_batch({batch_id}) failed: {e:?}"))
        .get(0)
}

/// Consumes every batch `consumer` can get now: next batch, its events, finish; until none.
pub async fn consume_all(client: &Client, q: &str, consumer: &str) -> Vec<(BatchInfo, Vec<Ev>)> {
    let mut out = Vec::new();
    while let Some(b) = next_batch(client, q, consumer).await {
        let events = batch_events(client, b.batch_id).await;
        assert_eq!(
            finish_batch(client, b.batch_id).await,
            1,
            "finish_batch of the open batch {} of {consumer} must return 1",
            b.batch_id
        );
        out.push((b, events));
    }
    out
}

/// The sorted `ev_data` of all events of `batches`.
pub fn all_data(batches: &[(BatchInfo, Vec<Ev>)]) -> Vec<String> {
    let mut v: Vec<String> = batches
        .iter()
        .flat_map(|(_, evs)| evs.iter().map(|e| e.data().to_string()))
        .collect();
    v.sort();
    v
}

/// `queue_id` of `q`.
pub async fn queue_id(client: &Client, q: &str) -> i32 {
    client
        .query_one(
            "select queue_id from pgq.queue where queue_name = $1",
            &[&q],
        )
        .await
        .unwrap()
        .get(0)
}

/// `ticker(q)`: the new tick id, or None when the ticker decided not to tick.
pub async fn ticker(client: &Client, q: &str) -> Option<i64> {
    client
        .query_one("select pgq.ticker($1)", &[&q])
        .await
        .unwrap_or_else(|e| panic!("ticker({q}) failed: {e:?}"))
        .get(0)
}

/// Moves tick `tick_id` of `q` `age` (an interval literal) into the past.
pub async fn set_tick_age(client: &Client, q: &str, tick_id: i64, age: &str) {
    let n = client
        .execute(
            &format!(
                "update pgq.tick set tick_time = now() - interval '{age}'
                  where tick_id = $1
                    and tick_queue = (select queue_id from pgq.queue where queue_name = $2)"
            ),
            &[&tick_id, &q],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "tick {tick_id} of {q} exists");
}

// ---------------------------------------------------------------------------------------
// Daemon helpers: waiting for database conditions, the in-process pgfan ticker.
// ---------------------------------------------------------------------------------------

/// Upper bound for anything a test waits for; reaching it means the behaviour is broken.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Polls `sql` (returning one boolean) until it is true; for states no signal announces.
pub async fn eventually(db: &TestDb, sql: &str) {
    eventually_or(db, sql, String::new).await
}

/// Like [`eventually`]; a timeout's panic message ends with `context()` (e.g. a daemon's log).
pub async fn eventually_or(db: &TestDb, sql: &str, context: impl Fn() -> String) {
    let c = db.connect().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !c.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never became true: {sql}\n{}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A pgfan ticker configuration for `db` alone, with the defaults otherwise.
pub fn ticker_config(db: &TestDb) -> pgfan::ticker::TickerConfig {
    let (base, name) = db
        .conninfo
        .rsplit_once(" dbname=")
        .expect("conninfo ends with dbname");
    pgfan::ticker::TickerConfig {
        base_connstr: base.to_string(),
        database_list: vec![name.to_string()],
        ..pgfan::ticker::TickerConfig::default()
    }
}

/// Runs the pgfan ticker in this process until `Control::Stop` is sent.
pub fn start_ticker(
    cfg: pgfan::ticker::TickerConfig,
) -> (
    tokio::sync::mpsc::UnboundedSender<pgfan::signals::Control>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        pgfan::ticker::run(None, cfg, rx)
            .await
            .expect("ticker runs")
    });
    (tx, handle)
}

/// Waits (up to a minute) for job `job` to end; its state and error ('' when none).
pub async fn wait_job(m: &Client, job: i64) -> (String, String) {
    // Two statements: one statement's snapshot would predate the end the wait saw.
    let state: String = m
        .query_one("select pgfan.wait($1, '60 s')", &[&job])
        .await
        .unwrap()
        .get(0);
    let error: String = m
        .query_one(
            "select coalesce(error, '') from pgfan.job where job_id = $1",
            &[&job],
        )
        .await
        .unwrap()
        .get(0);
    (state, error)
}

/// Queues a raw push event and returns the job the relay made of it. Nothing announces
/// that the relay routed an event, so the job row is looked for, up to a minute.
pub async fn raw_job(m: &Client, kind: &str, data: &str, target: &str) -> i64 {
    let ev: i64 = m
        .query_one(
            "select pgq.insert_event('push_queue', $1, $2, $3, null, null, null)",
            &[&kind, &data, &target],
        )
        .await
        .unwrap()
        .get(0);
    job_of_event(m, ev).await
}

/// The job the relay made of push event `ev` (up to a minute).
pub async fn job_of_event(m: &Client, ev: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let row = m
            .query_opt(
                "select job_id from pgfan.job where source_queue = 'push_queue' and source_ev_id = $1",
                &[&ev],
            )
            .await
            .unwrap();
        if let Some(r) = row {
            return r.get(0);
        }
        if tokio::time::Instant::now() >= deadline {
            let jobs: Option<String> = m
                .query_one(
                    "select string_agg(format('%s %s %s %s', job_id, source_queue, source_ev_id, error), E'\\n') from pgfan.job",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            panic!("no job for event {ev}; jobs:\n{}", jobs.unwrap_or_default());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A master with nodes n1..n3 and a 4-partition hash map.
pub async fn master_with_nodes(backend: Backend) -> (TestDb, Client) {
    let db = TestDb::master(backend).await;
    let c = db.connect().await;
    c.batch_execute(
        "select pgfan.node_add('n1'), pgfan.node_add('n2'), pgfan.node_add('n3');
         select pgfan.set_partitions(4);",
    )
    .await
    .unwrap();
    (db, c)
}
