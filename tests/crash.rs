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

#[path = "crash/load.rs"]
mod load;
#[path = "crash/verify.rs"]
mod verify;

use load::{produce, Outcome, Submission};
use tokio::time::Instant;
use tokio_postgres::Client;
use verify::{non_tx_reruns, states, verify, wait_drained};

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
        pgfan::demo::wait_nodes_started(&connect(&master).await)
            .await
            .expect("every node daemon starts");
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
    println!("  producer errors: {:?}", produced.errors);
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
        produced.faults.is_empty(),
        "submit or cancel failed other than by a lost master: {:#?}",
        produced.faults
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

/// Found by the crash test: the reducer locked a task's row (`record_result`) and then its
/// job's (`complete_job`), while `pgfan.cancel` locks the job and then its tasks, so a
/// cancel racing the result of one of the job's tasks deadlocked.
#[tokio::test]
async fn a_cancel_racing_a_result_of_its_job_does_not_deadlock() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start a cluster");
    let mut reducer = connect(&cluster).await;
    pgfan::install::install(&mut reducer, pgfan::install::Role::Master)
        .await
        .expect("install the master");
    let (job, task): (i64, i64) = reducer
        .query_one(
            "with n as (select pgfan.node_add('n1')),
                  j as (insert into pgfan.job (kind, target, state)
                        select 'sql', 'n1', 'running' from n returning job_id)
             insert into pgfan.task (job_id, node_name, kind, payload, state)
             select job_id, 'n1', 'sql', 'sql=select+1', 'running' from j
             returning job_id, task_id",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let tx = reducer.transaction().await.unwrap();
    tx.query_one(
        "select pgfan.record_result($1, 'n1', '{\"state\": \"done\"}')",
        &[&task],
    )
    .await
    .unwrap();
    let canceller = connect(&cluster).await;
    let pid: i32 = canceller
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let cancel = tokio::spawn(async move {
        canceller
            .query_one("select pgfan.cancel($1)", &[&job])
            .await
            .map(|r| r.get::<_, bool>(0))
    });
    let watcher = connect(&cluster).await;
    while !watcher
        .query_one(
            // NULL while the backend waits for nothing (or has not started the call yet).
            "select coalesce(bool_or(wait_event_type = 'Lock'), false)
               from pg_stat_activity where pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let completed = tx
        .query_one("select pgfan.complete_job($1)", &[&job])
        .await
        .map(|r| r.get::<_, Option<String>>(0));
    assert_eq!(completed.unwrap(), Some("done".to_string()));
    tx.commit().await.unwrap();
    assert!(!cancel.await.unwrap().unwrap(), "the job was already done");
}
