//! The crash test (issue 7): under a steady load of every kind of job, a random daemon is
//! killed with SIGKILL every 1–3 s and started again, and one node's PostgreSQL and the
//! master's are each stopped once with `pg_ctl -m immediate` and started again. Afterwards
//! every committed job is complete, every transactional effect exists exactly once, every
//! reduced result counts each task once, and nothing is left claimed, running or unshipped.
//!
//! The daemons are the built binary run as child processes, so a kill is a real SIGKILL at
//! an arbitrary instruction. The clusters run with `synchronous_commit = on`: with it off,
//! an immediate stop loses the last acknowledged commits by PostgreSQL's own design, and a
//! producer could not tell which of its jobs exist.
//!
//! Event tables rotate every 3 s and retried events come back after 1 s, so the chaos also
//! hits the queue core's maintenance, not only the daemons' hand-offs.
//!
//! `PGFAN_CRASH_SEED=<n>` replays a run's choices (the interleaving still varies);
//! `PGFAN_CRASH_SECS=<n>` sets the length of the chaos (default 45 s);
//! `PGFAN_CRASH_BACKEND=extension` runs the master on the real PgQ extension.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgfan::cluster::{Cluster, StopMode};
use tokio::time::Instant;
use tokio_postgres::Client;

const NODES: [&str; 2] = ["n1", "n2"];
/// Upper bound for the pipeline to finish the backlog once the chaos ends.
const DRAIN_PATIENCE: Duration = Duration::from_secs(90);
/// Durable commits (see the module comment); everything else stays the harness's default.
const DURABLE: &[(&str, &str)] = &[("synchronous_commit", "on")];

const NODE_SCHEMA: &str = "
    create table effects (k text not null);
    create table effects_nt (k text not null);
    create table items (id integer primary key, name text not null);
    create table lane_log (at bigserial primary key, lane text not null, seq bigint not null);
    create function bump(k text) returns bigint language sql as
        'insert into effects values (k); select count(*) from effects e where e.k = bump.k';";

/// splitmix64: small, seedable, good enough to pick victims and job kinds.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// A daemon run as a child process of the test; its stderr is appended to one log across
/// restarts.
struct Daemon {
    name: String,
    role: &'static str,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(dir: &Path, name: &str, role: &'static str, config: &str) -> Daemon {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        Daemon {
            name: name.into(),
            role,
            config: path,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgfan"))
            .args([self.role, "-c"])
            .arg(&self.config)
            .env("PGFAN_LOG", "info")
            .env_remove("PGFAN_LOG_FORMAT")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgfan");
        self.child = Some(child);
    }

    /// SIGKILL, and reaped so the pid is not reused under us.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status if the daemon ended on its own.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    fn tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where an effect is expected: a named node, every node, or the node the job's only task
/// was routed to (`hash:` and `any`).
#[derive(Clone, Debug)]
enum At {
    Node(&'static str),
    All,
    TaskOf(usize),
}

/// What one committed submission must have caused.
#[derive(Clone, Debug)]
enum Expect {
    /// A row `k` in `effects`, exactly once (transactional).
    Effect(At, String),
    /// A row `k` in `effects_nt`, at least once (`tx => false`).
    NonTx(At, String),
    /// `items` row `id` with `name`, or no row (None) after a delete.
    Item(&'static str, i32, Option<&'static str>),
    /// A `lane_log` row, exactly once and after the lane's earlier rows.
    Lane(&'static str, String, i64),
    /// The job of statement `usize` reduced to one row whose `field` is `value`.
    Reduced(usize, &'static str, i64),
    /// A row `k` in `effects` exactly on the nodes where the task of statement `usize` is
    /// done, and nowhere else: a cancelled task may still have run, but then its result
    /// must say so.
    IfDone(usize, String),
}

/// One producer transaction: its statements (each returns a job id, or an event id for
/// the raw form) and what it must cause once committed.
struct Plan {
    label: &'static str,
    stmts: Vec<(String, bool)>,
    expect: Vec<Expect>,
    /// Cancel the first job right after the commit; it may end cancelled instead of done.
    cancel: bool,
}

impl Plan {
    fn new(label: &'static str, stmts: Vec<(String, bool)>, expect: Vec<Expect>) -> Plan {
        Plan {
            label,
            stmts,
            expect,
            cancel: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Failed,
    /// The commit was sent and its answer lost: the ledger says what happened.
    Unknown,
}

struct Submission {
    seq: i64,
    plan: Plan,
    /// Per statement: (is raw event, id returned).
    ids: Vec<(bool, i64)>,
    outcome: Outcome,
}

fn plan(seq: i64, rng: &mut Rng) -> Plan {
    let node = NODES[rng.below(2) as usize];
    let sql = |s: String| vec![(s, false)];
    match rng.below(10) {
        0 => Plan::new(
            "sql all, reduced",
            sql(format!(
                "select pgfan.submit('all', $$with e as (insert into effects values ('s{seq}') \
                 returning 1) select count(*) as n from e$$, reduce => 'sum')"
            )),
            vec![
                Expect::Effect(At::All, format!("s{seq}")),
                Expect::Reduced(0, "n", 2),
            ],
        ),
        1 => Plan::new(
            "sql on a node",
            sql(format!(
                "select pgfan.submit('{node}', $$insert into effects values ('s{seq}')$$)"
            )),
            vec![Expect::Effect(At::Node(node), format!("s{seq}"))],
        ),
        2 => {
            let target = if seq % 2 == 0 {
                "any".to_string()
            } else {
                format!("hash:c{seq}")
            };
            Plan::new(
                "call, hash or any",
                sql(format!(
                    "select pgfan.submit('{target}', call => 'public.bump', \
                     args => array['c{seq}'])"
                )),
                vec![
                    Expect::Effect(At::TaskOf(0), format!("c{seq}")),
                    Expect::Reduced(0, "bump", 1),
                ],
            )
        }
        3 => Plan::new(
            "sql hash",
            sql(format!(
                "select pgfan.submit('hash:h{seq}', $$insert into effects values ('h{seq}')$$)"
            )),
            vec![Expect::Effect(At::TaskOf(0), format!("h{seq}"))],
        ),
        4 => copy_plan(seq, node, rng),
        5 => Plan::new(
            "sql all, tx=0",
            sql(format!(
                "select pgfan.submit('all', $$insert into effects_nt \
                 select 't{seq}' from pg_sleep(0.1)$$, tx => false)"
            )),
            vec![Expect::NonTx(At::All, format!("t{seq}"))],
        ),
        6 => {
            let lane = format!("L{node}{}", rng.below(3));
            Plan::new(
                "sql in a lane",
                sql(format!(
                    "select pgfan.submit('{node}', $$insert into lane_log (lane, seq) \
                     values ('{lane}', {seq})$$, lane => '{lane}')"
                )),
                vec![Expect::Lane(node, lane, seq)],
            )
        }
        7 => {
            let parts: Vec<String> = (0..3)
                .map(|i| {
                    format!(
                        "$$with e as (insert into effects values ('p{seq}_{i}') returning 1) \
                         select count(*) as n from e$$"
                    )
                })
                .collect();
            let mut expect: Vec<Expect> = (0..3)
                .map(|i| Expect::Effect(At::Node(node), format!("p{seq}_{i}")))
                .collect();
            expect.push(Expect::Reduced(0, "n", 3));
            Plan::new(
                "sql parallel",
                sql(format!(
                    "select pgfan.submit('{node}', sqls => array[{}], parallel => 2, \
                     reduce => 'sum')",
                    parts.join(", ")
                )),
                expect,
            )
        }
        // Done after one node's task: the other's is cancelled, or ran first.
        8 => Plan::new(
            "sql all, policy k:1",
            sql(format!(
                "select pgfan.submit('all', $$insert into effects values ('k{seq}')$$, \
                 policy => 'k:1')"
            )),
            vec![Expect::IfDone(0, format!("k{seq}"))],
        ),
        _ => Plan {
            cancel: true,
            ..Plan::new(
                "sql all, cancelled",
                sql(format!(
                    "select pgfan.submit('all', $$insert into effects \
                     select 'x{seq}' from pg_sleep(0.2)$$)"
                )),
                vec![Expect::IfDone(0, format!("x{seq}"))],
            )
        },
    }
}

/// Raw copy events in one lane: insert, update, and sometimes delete the row again; only
/// the order of the lane gives the expected end state.
fn copy_plan(seq: i64, node: &'static str, rng: &mut Rng) -> Plan {
    let lane = format!("c{}", seq % 3);
    let raw = |data: String| {
        (
            format!(
                "select pgq.insert_event('push_queue', 'copy', '{data}', '{node}', \
                 null, null, null)"
            ),
            true,
        )
    };
    let mut stmts = vec![
        raw(format!("action=ins&id={seq}&name=a&lane={lane}")),
        raw(format!("action=upd&id={seq}&name=b&lane={lane}")),
    ];
    let id = i32::try_from(seq).unwrap();
    let mut end = Some("b");
    if rng.below(4) == 0 {
        stmts.push(raw(format!("action=del&id={seq}&lane={lane}")));
        end = None;
    }
    Plan::new(
        "copy (raw events)",
        stmts,
        vec![Expect::Item(node, id, end)],
    )
}

/// What the producer did.
#[derive(Default)]
struct Produced {
    subs: Vec<Submission>,
    connect_failures: usize,
    errors: BTreeMap<String, usize>,
}

/// Submits one plan per transaction, each with a ledger row in the same transaction, until
/// `stop`; reconnects whenever the master went away.
async fn produce(master: String, seed: u64, stop: Arc<AtomicBool>) -> Produced {
    let mut rng = Rng(seed);
    let mut out = Produced::default();
    let mut client: Option<Client> = None;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut client {
            Some(c) if !c.is_closed() => c,
            _ => match pgfan::db::connect_client(&master).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    out.connect_failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        seq += 1;
        let plan = plan(seq, &mut rng);
        let (ids, outcome) = match submit(c, seq, &plan).await {
            Ok(ids) if plan.cancel => {
                // At a random stage of the job: before routing, queued, claimed or running
                // (its tasks take 200 ms).
                tokio::time::sleep(rng.millis(0, 400)).await;
                if let Err(e) = c.query_one("select pgfan.cancel($1)", &[&ids[0].1]).await {
                    *out.errors
                        .entry(format!("cancel: {}", short_error(&e)))
                        .or_default() += 1;
                }
                (ids, Outcome::Acked)
            }
            Ok(ids) => (ids, Outcome::Acked),
            Err((ids, at_commit, e)) => {
                *out.errors.entry(short_error(&e)).or_default() += 1;
                let outcome = if at_commit {
                    Outcome::Unknown
                } else {
                    Outcome::Failed
                };
                (ids, outcome)
            }
        };
        out.subs.push(Submission {
            seq,
            plan,
            ids,
            outcome,
        });
        tokio::time::sleep(rng.millis(5, 30)).await;
    }
    out
}

type SubmitError = (Vec<(bool, i64)>, bool, tokio_postgres::Error);

async fn submit(c: &mut Client, seq: i64, plan: &Plan) -> Result<Vec<(bool, i64)>, SubmitError> {
    let mut ids = Vec::new();
    let tx = c.transaction().await.map_err(|e| (Vec::new(), false, e))?;
    let ledger = tx
        .execute("insert into crash_ledger (seq) values ($1)", &[&seq])
        .await;
    if let Err(e) = ledger {
        return Err((ids, false, e));
    }
    for (stmt, raw) in &plan.stmts {
        match tx.query_one(stmt.as_str(), &[]).await {
            Ok(row) => ids.push((*raw, row.get(0))),
            Err(e) => return Err((ids, false, e)),
        }
    }
    match tx.commit().await {
        Ok(()) => Ok(ids),
        Err(e) => Err((ids, true, e)),
    }
}

fn short_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// The clusters, the daemons and their configuration directory.
struct Rig {
    master: Arc<Cluster>,
    nodes: Vec<Arc<Cluster>>,
    daemons: Vec<Daemon>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let starts: Vec<_> = (0..=NODES.len())
            .map(|_| tokio::task::spawn_blocking(|| Cluster::start_with(DURABLE)))
            .collect();
        let mut clusters = Vec::new();
        for s in starts {
            clusters.push(Arc::new(s.await.unwrap().expect("start a cluster")));
        }
        let master = clusters.remove(0);
        let mut m = connect(&master).await;
        if std::env::var("PGFAN_CRASH_BACKEND").as_deref() == Ok("extension") {
            m.batch_execute("create extension pgq").await.unwrap();
        }
        pgfan::install::install(&mut m, pgfan::install::Role::Master)
            .await
            .expect("install the master");
        m.batch_execute("create table crash_ledger (seq bigint primary key)")
            .await
            .unwrap();
        for (name, cluster) in NODES.iter().zip(&clusters) {
            let mut n = connect(cluster).await;
            pgfan::install::install(&mut n, pgfan::install::Role::Node)
                .await
                .expect("install a node");
            n.batch_execute(NODE_SCHEMA).await.unwrap();
            m.query_one("select pgfan.node_add($1)", &[name])
                .await
                .unwrap();
        }
        m.query_one("select pgfan.set_partitions(8)", &[])
            .await
            .unwrap();
        m.batch_execute(
            "select pgq.set_queue_config(queue_name, 'rotation_period', '3 seconds')
               from pgq.queue",
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut daemons = master_daemons(dir.path(), &master);
        for (name, cluster) in NODES.iter().zip(&clusters) {
            daemons.push(Daemon::new(
                dir.path(),
                &format!("node-{name}"),
                "node",
                &node_config(name, &master, cluster),
            ));
        }
        for d in &mut daemons {
            d.start();
        }
        Rig {
            master,
            nodes: clusters,
            daemons,
            _dir: dir,
        }
    }

    /// Kills the daemons, then removes the clusters side by side.
    async fn shutdown(self) {
        let Rig {
            master,
            nodes,
            daemons,
            _dir,
        } = self;
        drop(daemons);
        let drops: Vec<_> = nodes
            .into_iter()
            .chain([master])
            .map(|c| tokio::task::spawn_blocking(move || drop(c)))
            .collect();
        for d in drops {
            d.await.unwrap();
        }
    }

    fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| format!("--- {} (last lines) ---\n{}\n", d.name, d.tail(15)))
            .collect()
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn master_daemons(dir: &Path, master: &Cluster) -> Vec<Daemon> {
    let conninfo = quote(&master.conninfo("postgres"));
    let ticker = format!(
        "[ticker]\nbase_connstr = {}\ndatabase_list = [\"postgres\"]\n\
         maint_period = \"2s\"\nretry_period = \"1s\"\n",
        quote(&format!(
            "host=127.0.0.1 port={} user=postgres",
            master.port()
        ))
    );
    let relay = format!("[relay]\nmaster = {conninfo}\npoll_period = \"200ms\"\n");
    let reducer = format!(
        "[reducer]\nmaster = {conninfo}\npoll_period = \"200ms\"\nexpire_period = \"200ms\"\n"
    );
    vec![
        Daemon::new(dir, "ticker", "ticker", &ticker),
        Daemon::new(dir, "relay", "relay", &relay),
        Daemon::new(dir, "reducer", "reducer", &reducer),
    ]
}

fn node_config(name: &str, master: &Cluster, node: &Cluster) -> String {
    format!(
        "[node]\nname = \"{name}\"\nmaster = {}\ndb = {}\nworkers = 3\n\
         allow_call = [\"public.bump\"]\ncopy_tables = [\"public.items\"]\n\
         poll_period = \"200ms\"\nheartbeat_period = \"200ms\"\nstop_timeout = \"2s\"\n",
        quote(&master.conninfo("postgres")),
        quote(&node.conninfo("postgres")),
    )
}

async fn connect(cluster: &Cluster) -> Client {
    pgfan::db::connect_client(&cluster.conninfo("postgres"))
        .await
        .expect("connect")
}

/// What the chaos did.
#[derive(Default)]
struct Chaos {
    kills: BTreeMap<String, usize>,
    restarts: usize,
    server_stops: Vec<String>,
    own_exits: Vec<String>,
}

/// A PostgreSQL server stopped by the chaos and when to start it again.
struct Down {
    cluster: Arc<Cluster>,
    name: String,
    until: Instant,
}

async fn stop_server(cluster: &Arc<Cluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop(StopMode::Immediate))
        .await
        .unwrap()
        .expect("pg_ctl stop -m immediate");
}

async fn start_server(cluster: &Arc<Cluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .unwrap()
        .expect("pg_ctl start");
}

/// Kills a random daemon every 1–3 s (started again after up to 300 ms), stops one node's
/// server at about a quarter of the time and the master's at about 60 %, each for 2–4 s.
async fn chaos(rig: &mut Rig, secs: u64, rng: &mut Rng) -> Chaos {
    let mut out = Chaos::default();
    let begin = Instant::now();
    let end = begin + Duration::from_secs(secs);
    let victim_node = rng.below(NODES.len() as u64) as usize;
    let mut pending: Vec<(Instant, Arc<Cluster>, String)> = vec![
        (
            begin + Duration::from_secs(secs) / 4,
            rig.nodes[victim_node].clone(),
            format!("node {} server", NODES[victim_node]),
        ),
        (
            begin + Duration::from_secs(secs) * 3 / 5,
            rig.master.clone(),
            "master server".into(),
        ),
    ];
    let mut down: Option<Down> = None;
    while Instant::now() < end {
        tokio::time::sleep(rng.millis(1000, 3000)).await;
        watch_exits(rig, &mut out);
        let i = rng.below(rig.daemons.len() as u64) as usize;
        let d = &mut rig.daemons[i];
        d.kill9();
        *out.kills.entry(d.name.clone()).or_default() += 1;
        tokio::time::sleep(rng.millis(0, 300)).await;
        d.start();
        out.restarts += 1;
        let now = Instant::now();
        if let Some(dn) = down.take_if(|dn| dn.until <= now) {
            start_server(&dn.cluster).await;
            out.server_stops.push(dn.name);
        }
        if down.is_none() && pending.first().is_some_and(|p| p.0 <= now) {
            let (_, cluster, name) = pending.remove(0);
            stop_server(&cluster).await;
            down = Some(Down {
                cluster,
                name,
                until: Instant::now() + rng.millis(2000, 4000),
            });
        }
    }
    if let Some(dn) = down {
        tokio::time::sleep_until(dn.until).await;
        start_server(&dn.cluster).await;
        out.server_stops.push(dn.name);
    }
    // A short chaos may end before a planned stop: it still happens, once each.
    for (_, cluster, name) in pending {
        stop_server(&cluster).await;
        tokio::time::sleep(rng.millis(2000, 4000)).await;
        start_server(&cluster).await;
        out.server_stops.push(name);
    }
    watch_exits(rig, &mut out);
    out
}

/// Restarts a daemon that ended by itself (as systemd's Restart=always would) and notes it.
fn watch_exits(rig: &mut Rig, out: &mut Chaos) {
    for d in &mut rig.daemons {
        if let Some(status) = d.exited() {
            out.own_exits
                .push(format!("{} ({status}):\n{}", d.name, d.tail(10)));
            d.start();
        }
    }
}

/// Whether the master and the nodes have nothing left to do for the committed jobs.
async fn drained(rig: &Rig, raw_events: &[i64]) -> Result<bool, tokio_postgres::Error> {
    let m = pgfan::db::connect_client(&rig.master.conninfo("postgres")).await?;
    let open: i64 = m
        .query_one(
            "select (select count(*) from unnest($1::bigint[]) e(id)
                      where not exists (select from pgfan.job j where j.source_ev_id = e.id))
                  + (select count(*) from pgfan.job where state in ('submitted', 'running'))
                  + (select count(*) from pgfan.task where state in ('queued', 'claimed', 'running'))",
            &[&raw_events],
        )
        .await?
        .get(0);
    if open > 0 {
        return Ok(false);
    }
    for node in &rig.nodes {
        let n = pgfan::db::connect_client(&node.conninfo("postgres")).await?;
        let open: i64 = n
            .query_one(
                "select count(*) from pgfan_node.task
                  where state in ('claimed', 'running') or shipped_at is null",
                &[],
            )
            .await?
            .get(0);
        if open > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn wait_drained(rig: &Rig, raw_events: &[i64]) {
    let deadline = Instant::now() + DRAIN_PATIENCE;
    loop {
        if drained(rig, raw_events).await.unwrap_or(false) {
            return;
        }
        if Instant::now() > deadline {
            let states = states(&connect(&rig.master).await).await;
            panic!(
                "the pipeline did not drain within {DRAIN_PATIENCE:?}: {states:?}\n{}",
                rig.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many `tx=0` effects exist more than once (allowed: they are at-least-once).
async fn non_tx_reruns(rig: &Rig) -> usize {
    counts(rig, "select k, count(*) from effects_nt group by k")
        .await
        .values()
        .filter(|n| **n > 1)
        .count()
}

/// How many jobs and tasks ended in which state.
async fn states(m: &Client) -> Vec<String> {
    m.query(
        "select format('jobs %s: %s', state, count(*)) from pgfan.job group by state
         union all
         select format('tasks %s: %s', state, count(*)) from pgfan.task group by state",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Rows of `sql` (key text, count bigint) on every node, keyed by (node, key).
async fn counts(rig: &Rig, sql: &str) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    for (name, node) in NODES.iter().zip(&rig.nodes) {
        for r in connect(node).await.query(sql, &[]).await.unwrap() {
            out.insert((name.to_string(), r.get(0)), r.get(1));
        }
    }
    out
}

/// Everything the committed submissions must have caused, compared with what exists.
#[derive(Default, Debug)]
struct Verdict {
    jobs: usize,
    tasks: i64,
    lost: Vec<String>,
    duplicated: Vec<String>,
    unexpected: Vec<String>,
}

/// The job ids of a committed submission (raw events resolved through their job).
async fn job_ids(m: &Client, sub: &Submission) -> Vec<i64> {
    let mut out = Vec::new();
    for (raw, id) in &sub.ids {
        out.push(if *raw {
            m.query_one(
                "select job_id from pgfan.job where source_queue = 'push_queue' and source_ev_id = $1",
                &[id],
            )
            .await
            .unwrap()
            .get(0)
        } else {
            *id
        });
    }
    out
}

async fn nodes_of(m: &Client, at: &At, jobs: &[i64]) -> Vec<String> {
    match at {
        At::Node(n) => vec![n.to_string()],
        At::All => NODES.iter().map(|n| n.to_string()).collect(),
        At::TaskOf(i) => m
            .query(
                "select node_name from pgfan.task where job_id = $1",
                &[&jobs[*i]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
    }
}

async fn verify(rig: &Rig, committed: &[&Submission]) -> Verdict {
    let m = connect(&rig.master).await;
    let mut v = Verdict::default();
    let mut effects: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut non_tx: BTreeSet<(String, String)> = BTreeSet::new();
    let mut items: BTreeMap<(String, i32), &str> = BTreeMap::new();
    let mut lanes: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for sub in committed {
        let jobs = job_ids(&m, sub).await;
        v.jobs += jobs.len();
        for job in &jobs {
            let state: String = m
                .query_one("select state from pgfan.job where job_id = $1", &[job])
                .await
                .unwrap()
                .get(0);
            if state != "done" && !(sub.plan.cancel && state == "cancelled") {
                v.lost
                    .push(format!("job {job} ({}) is {state}", sub.plan.label));
            }
        }
        for e in &sub.plan.expect {
            match e {
                Expect::Effect(at, k) => {
                    for n in nodes_of(&m, at, &jobs).await {
                        *effects.entry((n, k.clone())).or_default() += 1;
                    }
                }
                Expect::NonTx(at, k) => {
                    for n in nodes_of(&m, at, &jobs).await {
                        non_tx.insert((n, k.clone()));
                    }
                }
                Expect::Item(n, id, Some(name)) => {
                    items.insert((n.to_string(), *id), name);
                }
                Expect::Item(..) => {}
                Expect::Lane(n, lane, seq) => {
                    lanes
                        .entry((n.to_string(), lane.clone()))
                        .or_default()
                        .push(*seq);
                }
                Expect::Reduced(i, field, want) => {
                    let rows: Vec<Option<i64>> = m
                        .query(
                            "select (row_data ->> $2)::bigint from pgfan.job_result
                              where job_id = $1",
                            &[&jobs[*i], field],
                        )
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let what = format!(
                        "job {} ({}) reduced to {rows:?}, not {field} = {want}",
                        jobs[*i], sub.plan.label
                    );
                    match rows.as_slice() {
                        [Some(n)] if n == want => {}
                        [Some(n)] if n > want => v.duplicated.push(what),
                        [] | [Some(_)] => v.lost.push(what),
                        _ => v.unexpected.push(what),
                    }
                }
                Expect::IfDone(i, k) => {
                    for r in m
                        .query(
                            "select node_name from pgfan.task where job_id = $1 and state = 'done'",
                            &[&jobs[*i]],
                        )
                        .await
                        .unwrap()
                    {
                        *effects.entry((r.get(0), k.clone())).or_default() += 1;
                    }
                }
            }
        }
    }
    compare_effects(rig, &effects, &mut v).await;
    compare_non_tx(rig, &non_tx, &mut v).await;
    compare_items(rig, &items, &mut v).await;
    compare_lanes(rig, &lanes, &mut v).await;
    check_master(&m, &mut v).await;
    v
}

async fn compare_effects(rig: &Rig, want: &BTreeMap<(String, String), i64>, v: &mut Verdict) {
    let have = counts(rig, "select k, count(*) from effects group by k").await;
    for (key, n) in want {
        match have.get(key).copied().unwrap_or(0) {
            0 => v.lost.push(format!("effect {key:?} missing")),
            h if h > *n => v.duplicated.push(format!("effect {key:?} {h} times")),
            _ => {}
        }
    }
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        v.unexpected.push(format!(
            "effect {key:?} of no committed job, or of a task recorded as not done"
        ));
    }
}

async fn compare_non_tx(rig: &Rig, want: &BTreeSet<(String, String)>, v: &mut Verdict) {
    let have = counts(rig, "select k, count(*) from effects_nt group by k").await;
    for key in want.iter().filter(|k| !have.contains_key(*k)) {
        v.lost.push(format!("tx=0 effect {key:?} missing"));
    }
    for key in have.keys().filter(|k| !want.contains(*k)) {
        v.unexpected
            .push(format!("tx=0 effect {key:?} of no committed job"));
    }
}

async fn compare_items(rig: &Rig, want: &BTreeMap<(String, i32), &str>, v: &mut Verdict) {
    let mut have = BTreeMap::new();
    for (name, node) in NODES.iter().zip(&rig.nodes) {
        for r in connect(node)
            .await
            .query("select id, name from items", &[])
            .await
            .unwrap()
        {
            have.insert(
                (name.to_string(), r.get::<_, i32>(0)),
                r.get::<_, String>(1),
            );
        }
    }
    for (key, name) in want {
        match have.get(key) {
            Some(h) if h == name => {}
            other => v
                .lost
                .push(format!("item {key:?}: {other:?}, want {name:?}")),
        }
    }
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        v.unexpected.push(format!("item {key:?} should not exist"));
    }
}

/// Lane rows: each exactly once, and per lane in submit order.
async fn compare_lanes(rig: &Rig, want: &BTreeMap<(String, String), Vec<i64>>, v: &mut Verdict) {
    let mut have: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for (name, node) in NODES.iter().zip(&rig.nodes) {
        for r in connect(node)
            .await
            .query("select lane, seq from lane_log order by at", &[])
            .await
            .unwrap()
        {
            have.entry((name.to_string(), r.get(0)))
                .or_default()
                .push(r.get(1));
        }
    }
    for (key, seqs) in want {
        let got = have.remove(key).unwrap_or_default();
        if &got == seqs {
            continue;
        }
        let got_set: BTreeSet<_> = got.iter().collect();
        let missing = seqs.iter().filter(|s| !got_set.contains(s)).count();
        if missing > 0 {
            v.lost.push(format!("lane {key:?}: {missing} rows missing"));
        }
        if got_set.len() < got.len() {
            v.duplicated.push(format!(
                "lane {key:?}: {} rows twice",
                got.len() - got_set.len()
            ));
        }
        if missing == 0 && got_set.len() == got.len() && got.len() == seqs.len() {
            v.unexpected
                .push(format!("lane {key:?} out of order: {got:?}"));
        }
    }
    for key in have.keys() {
        v.unexpected
            .push(format!("lane {key:?} of no committed job"));
    }
}

/// Master-side bookkeeping: tasks all done, each done task's rows recorded once, no dead
/// letters (nothing in this load is bad input).
async fn check_master(m: &Client, v: &mut Verdict) {
    v.tasks = m
        .query_one("select count(*) from pgfan.task", &[])
        .await
        .unwrap()
        .get(0);
    let bad: Vec<String> = m
        .query(
            "select format('task %s of job %s is %s', task_id, job_id, state) from pgfan.task t
              where state <> 'done'
                and not (state = 'cancelled'
                         and exists (select from pgfan.job j
                                      where j.job_id = t.job_id
                                        and (j.state = 'cancelled' or j.policy like 'k:%')))
             union all
             select format('task %s has %s result rows, %s recorded', t.task_id, t.result_rows,
                           (select count(*) from pgfan.task_row r where r.task_id = t.task_id))
               from pgfan.task t
              where t.result_rows <> (select count(*) from pgfan.task_row r where r.task_id = t.task_id)
             union all
             select format('dead letter %s: %s', dl_id, error) from pgfan.dead_letter",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.unexpected.extend(bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_daemons_and_crashed_servers_lose_nothing_and_apply_nothing_twice() {
    let seed = std::env::var("PGFAN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let secs: u64 = std::env::var("PGFAN_CRASH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    println!("crash test: seed {seed} (PGFAN_CRASH_SEED), {secs} s of chaos (PGFAN_CRASH_SECS)");
    let started = Instant::now();
    let mut rig = Rig::start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce(rig.master.conninfo("postgres"), seed, stop.clone()));
    let mut rng = Rng(seed ^ 0x5eed_c4a0_5000_0001);
    let chaos = chaos(&mut rig, secs, &mut rng).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producer.await.unwrap();

    // The committed set is what the ledger holds; an acknowledged commit must be there.
    let m = connect(&rig.master).await;
    let ledger: BTreeSet<i64> = m
        .query("select seq from crash_ledger", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let committed: Vec<&Submission> = produced
        .subs
        .iter()
        .filter(|s| ledger.contains(&s.seq))
        .collect();
    let acked_missing: Vec<i64> = produced
        .subs
        .iter()
        .filter(|s| s.outcome == Outcome::Acked && !ledger.contains(&s.seq))
        .map(|s| s.seq)
        .collect();
    let failed_present: Vec<i64> = committed
        .iter()
        .filter(|s| s.outcome == Outcome::Failed)
        .map(|s| s.seq)
        .collect();
    let raw_events: Vec<i64> = committed
        .iter()
        .flat_map(|s| s.ids.iter().filter(|(raw, _)| *raw).map(|(_, id)| *id))
        .collect();
    let chaos_done = started.elapsed();
    wait_drained(&rig, &raw_events).await;
    let drain = started.elapsed() - chaos_done;
    let v = verify(&rig, &committed).await;

    let count = |o: Outcome| produced.subs.iter().filter(|s| s.outcome == o).count();
    let unknown_committed = committed
        .iter()
        .filter(|s| s.outcome == Outcome::Unknown)
        .count();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &committed {
        *kinds.entry(s.plan.label).or_default() += 1;
    }
    println!(
        "submissions: {} committed ({} acknowledged, {} of {} with an unknown commit outcome), \
         {} not committed (master down), {} failed connects",
        committed.len(),
        count(Outcome::Acked),
        unknown_committed,
        count(Outcome::Unknown),
        count(Outcome::Failed),
        produced.connect_failures
    );
    println!("  by kind: {kinds:?}");
    println!(
        "  final states: {}; tx=0 effects run more than once: {}",
        states(&m).await.join(", "),
        non_tx_reruns(&rig).await
    );
    println!("  submit errors: {:?}", produced.errors);
    println!(
        "kills: {} ({:?}), restarts: {}, servers stopped -m immediate and restarted: {:?}",
        chaos.kills.values().sum::<usize>(),
        chaos.kills,
        chaos.restarts,
        chaos.server_stops
    );
    println!(
        "jobs: {}, tasks: {}, lost: {}, duplicated: {}, unexpected: {}; chaos {:.1} s, drain {:.1} s, total {:.1} s",
        v.jobs,
        v.tasks,
        v.lost.len() + acked_missing.len(),
        v.duplicated.len(),
        v.unexpected.len() + failed_present.len(),
        chaos_done.as_secs_f64(),
        drain.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked_missing.is_empty(),
        "acknowledged commits missing: {acked_missing:?}"
    );
    assert!(
        failed_present.is_empty(),
        "submissions that failed before commit yet committed: {failed_present:?}"
    );
    assert!(
        v.lost.is_empty() && v.duplicated.is_empty() && v.unexpected.is_empty(),
        "seed {seed}: lost {:#?}\nduplicated {:#?}\nunexpected {:#?}\n{}",
        v.lost,
        v.duplicated,
        v.unexpected,
        rig.logs()
    );
    assert!(
        chaos.own_exits.is_empty(),
        "daemons exited by themselves: {:#?}",
        chaos.own_exits
    );
    assert_eq!(chaos.server_stops.len(), 2, "both server stops happened");
    assert!(committed.len() > 50, "a steady load was submitted");
    rig.shutdown().await;
}
