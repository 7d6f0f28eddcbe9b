//! A node database beside a master, the node daemon and the ticker in-process: the rig
//! of the node daemon's tests. Pull events are put into the node's queue by the tests (the
//! relay is tested elsewhere); results are read from the master's `pgfan_results` event
//! tables and from `pgfan_node.task`.

use std::collections::HashMap;
use std::time::Duration;

use super::{eventually, start_ticker, ticker_config, Backend, TestDb};
use pgfan::install::{self, Role};
use pgfan::node::{NodeConfig, NodeError};
use pgfan::signals::Control;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A master with the node registered, a node database, and a ticker on the master.
pub struct Env {
    pub master: TestDb,
    pub node: TestDb,
    pub name: String,
    pub ticker: (mpsc::UnboundedSender<Control>, JoinHandle<()>),
}

impl Env {
    pub async fn new(name: &str) -> Env {
        Env::with_node(name, TestDb::empty().await).await
    }

    /// Like [`Env::new`] with the node database `node` (e.g. on a cluster of its own).
    pub async fn with_node(name: &str, node: TestDb) -> Env {
        let master = TestDb::master(Backend::Bundled).await;
        register_node(&master, name, &node).await;
        let ticker = start_ticker(ticker_config(&master));
        Env {
            master,
            node,
            name: name.into(),
            ticker,
        }
    }

    /// Another node of this master, `name` on a new node database (returned).
    pub async fn add_node(&self, name: &str) -> TestDb {
        let node = TestDb::empty().await;
        register_node(&self.master, name, &node).await;
        node
    }

    pub fn queue(&self) -> String {
        format!("pgfan_node_{}", self.name)
    }

    /// A fast-polling configuration for this node.
    pub fn config(&self) -> NodeConfig {
        NodeConfig {
            poll_period: Duration::from_millis(100),
            heartbeat_period: Duration::from_millis(200),
            stop_timeout: Duration::from_secs(5),
            ..NodeConfig::new(&self.name, &self.master.conninfo, &self.node.conninfo)
        }
    }

    /// Runs SQL on the node database.
    pub async fn node_sql(&self, sql: &str) {
        self.node.connect().await.batch_execute(sql).await.unwrap();
    }

    pub async fn node_count(&self, sql: &str) -> i64 {
        self.node
            .connect()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until the given tasks are finished on the node and shipped.
    pub async fn wait_shipped(&self, ids: &[i64]) {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        eventually(
            &self.node,
            &format!(
                "select count(*) = {} from pgfan_node.task
                  where task_id in ({list}) and shipped_at is not null",
                ids.len()
            ),
        )
        .await;
    }

    /// Result events on the master by task id: (job id, node name, result JSON).
    pub async fn results(&self) -> HashMap<i64, (Option<String>, Option<String>, Value)> {
        let m = self.master.connect().await;
        let table: String = m
            .query_one(
                "select queue_data_pfx from pgq.queue where queue_name = 'pgfan_results'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let rows = m
            .query(
                &format!("select ev_extra1, ev_extra2, ev_extra3, ev_data, ev_type from {table}"),
                &[],
            )
            .await
            .unwrap();
        // A `results` event carries one ship round's results (docs/pipeline.md).
        let mut all = HashMap::new();
        for r in &rows {
            let data: Value = serde_json::from_str(r.get::<_, &str>(3)).unwrap();
            if r.get::<_, String>(4) == "results" {
                for item in data.as_array().unwrap() {
                    let job = item["job"].as_str().map(String::from);
                    all.insert(
                        item["task"].as_i64().unwrap(),
                        (job, r.get(2), item["result"].clone()),
                    );
                }
                continue;
            }
            assert_eq!(r.get::<_, String>(4), "result");
            let id: String = r.get(0);
            all.insert(id.parse().unwrap(), (r.get(1), r.get(2), data));
        }
        all
    }

    pub async fn result(&self, task_id: i64) -> Value {
        self.results()
            .await
            .remove(&task_id)
            .unwrap_or_else(|| panic!("no result for task {task_id}"))
            .2
    }

    /// Cancels `job` on the master, as an operator would; whether it was open.
    pub async fn cancel(&self, job: i64) -> bool {
        self.master
            .connect()
            .await
            .query_one("select pgfan.cancel($1)", &[&job])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn stop_ticker(self) {
        self.ticker.0.send(Control::Stop).unwrap();
        self.ticker.1.await.unwrap();
    }
}

/// A job with one task per SQL text on the master (in `lane`), as the relay would create
/// them; the job's id and its tasks' ids.
pub async fn master_tasks(env: &Env, lane: Option<&str>, sqls: &[&str]) -> (i64, Vec<i64>) {
    let m = env.master.connect().await;
    let job: i64 = m
        .query_one(
            "insert into pgfan.job (kind) values ('sql') returning job_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut ids = Vec::new();
    for sql in sqls {
        let id: i64 = m
            .query_one(
                "insert into pgfan.task (job_id, node_name, kind, payload, lane)
                 values ($1, $2, 'sql', $3, $4) returning task_id",
                &[&job, &env.name, sql, &lane],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    (job, ids)
}

/// One pull event as the relay writes it.
pub struct Pull<'a> {
    pub task: i64,
    pub kind: &'a str,
    pub data: String,
    pub lane: Option<&'a str>,
    pub options: Option<&'a str>,
}

pub fn sql_task(task: i64, sql: &str) -> Pull<'static> {
    Pull {
        task,
        kind: "sql",
        data: format!("sql={}", urlencode(sql)),
        lane: None,
        options: None,
    }
}

/// Puts the events into the node's queue in one master transaction (so one batch).
pub async fn put(env: &Env, events: &[Pull<'_>]) {
    put_in(env, &env.queue(), events).await
}

/// [`put`] into `queue`, another node's pull queue on the same master.
pub async fn put_in(env: &Env, queue: &str, events: &[Pull<'_>]) {
    let mut m = env.master.connect().await;
    let tx = m.transaction().await.unwrap();
    for e in events {
        tx.query_one(
            "select pgq.insert_event($1, $2, $3, $4, '1', $5, $6)",
            &[
                &queue,
                &e.kind,
                &e.data,
                &e.task.to_string(),
                &e.lane,
                &e.options,
            ],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub type Node = (
    mpsc::UnboundedSender<Control>,
    JoinHandle<Result<(), NodeError>>,
);

pub fn start_node(cfg: NodeConfig) -> Node {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio::spawn(pgfan::node::run(None, cfg, rx)))
}

pub async fn stop_node(node: Node) {
    node.0.send(Control::Stop).unwrap();
    tokio::time::timeout(Duration::from_secs(15), node.1)
        .await
        .expect("the node stops in time")
        .unwrap()
        .expect("the node ends cleanly");
}

/// Installs the node schema into `node` and registers `name` on `master`, its pull queue
/// ticking as soon as it has events.
async fn register_node(master: &TestDb, name: &str, node: &TestDb) {
    install::install(&mut node.connect().await, Role::Node)
        .await
        .expect("install the node schema");
    let m = master.connect().await;
    m.query_one("select pgfan.node_add($1)", &[&name])
        .await
        .expect("pgfan.node_add");
    m.query_one(
        "select pgq.set_queue_config($1, 'ticker_max_lag', '0')",
        &[&format!("pgfan_node_{name}")],
    )
    .await
    .unwrap();
}
