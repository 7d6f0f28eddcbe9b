//! Network partition: node n1's daemon runs in a network namespace of its own, linked to
//! the master by a veth pair, and the link is cut for 30 s while jobs keep coming.
//!
//! Layout (all names and addresses belong to this run only and are removed on drop):
//! - the master cluster listens on 127.0.0.1 and on the root end of the veth pair
//!   (10.231.a.b+1/30); ticker, relay, reducer and node n2's daemon run in this process and
//!   reach it over 127.0.0.1;
//! - n1's daemon is the built binary started with `ip netns exec <ns>`; it reaches the
//!   master only through the veth pair (10.231.a.b+2/30 inside the namespace) and its own
//!   node database through that cluster's Unix socket (a filesystem path, which network
//!   namespaces do not separate);
//! - the cut is `ip link set <root end> down`: packets are dropped, nothing is refused, so
//!   the open connections hang instead of failing.
//!
//! A hung connection fails only through timeouts, so n1's master connection string sets,
//! and this test relies on:
//! - `keepalives_idle=2 keepalives_interval=1 keepalives_retries=3`: an idle session (the
//!   claim consumer waiting for a NOTIFY) is declared dead after about 5 s;
//! - `tcp_user_timeout=5` (tokio-postgres reads it in seconds, where libpq reads
//!   milliseconds): a statement whose bytes are not acknowledged fails after 5 s;
//! - `connect_timeout=3`: reconnect attempts during the cut fail instead of hanging;
//! - `options='-c tcp_keepalives_idle=2 ...  -c tcp_user_timeout=5000'`: the same on the
//!   master's side, so the master ends n1's stranded sessions within seconds. Without it a
//!   session cut inside a transaction (say, between `next_batch` and `finish_batch`) would
//!   stay "idle in transaction" for the kernel's 2 hour keepalive default, holding its
//!   locks (n1's batch) and the xmin horizon (every queue's rotation) after the link is back.
//!
//! Checked: the daemon notices the cut (it logs the outage), the master drops n1's
//! sessions, n2's jobs complete during the cut (also n2's share of jobs on all nodes),
//! n1's tasks wait, and after the link returns every task completes, each effect once.
//! If network namespaces cannot be created (not root, no `ip`), the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgfan::cluster::Cluster;
use pgfan::install::{self, Role};
use pgfan::node::NodeConfig;
use pgfan::signals::Control;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Client;

/// How long the link stays cut.
const CUT: Duration = Duration::from_secs(30);
/// Upper bound for anything the test waits for; reaching it means the behaviour is broken.
const PATIENCE: Duration = Duration::from_secs(30);
/// Timeouts of n1's master connection (see the module comment).
const LINK_TIMEOUTS: &str = "connect_timeout=3 keepalives_idle=2 keepalives_interval=1 \
    keepalives_retries=3 tcp_user_timeout=5 options='-c tcp_keepalives_idle=2 \
    -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 -c tcp_user_timeout=5000'";

/// Runs `ip <args>`; Err with its output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn must(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A network namespace linked to the root namespace by a veth pair; removed on drop.
struct Netns {
    name: String,
    root_end: String,
    /// The root end's address (the master listens there) and the namespace end's.
    root_addr: String,
    ns_addr: String,
    subnet: String,
}

impl Netns {
    /// Creates the namespace, or says why this machine cannot.
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let name = format!("pgfan-part-{pid}");
        let (a, b) = free_subnet(pid);
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name,
            root_end: format!("pfr{pid}"),
            root_addr: format!("10.231.{a}.{}", b + 1),
            ns_addr: format!("10.231.{a}.{}", b + 2),
            subnet: format!("10.231.{a}.{b}/30"),
        };
        // From here on the namespace exists and a failure is a failure, not a reason to skip.
        let ns_end = format!("pfn{pid}");
        must(ip(&[
            "link",
            "add",
            &ns.root_end,
            "type",
            "veth",
            "peer",
            "name",
            &ns_end,
        ]));
        must(ip(&["link", "set", &ns_end, "netns", &ns.name]));
        must(ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.root_addr),
            "dev",
            &ns.root_end,
        ]));
        must(ip(&["link", "set", &ns.root_end, "up"]));
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            must(ip(&all));
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_addr), "dev", &ns_end]);
        inside(&["link", "set", &ns_end, "up"]);
        inside(&["link", "set", "lo", "up"]);
        Ok(ns)
    }

    fn cut(&self) {
        must(ip(&["link", "set", &self.root_end, "down"]));
    }

    fn restore(&self) {
        must(ip(&["link", "set", &self.root_end, "up"]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.root_end]);
    }
}

/// A /30 in 10.231.0.0/16 that no interface of the root namespace uses, starting from one
/// derived from the process id so that concurrent runs pick different ones.
fn free_subnet(pid: u32) -> (u32, u32) {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (0..16384)
        .map(|i| (pid + i) % 16384)
        .map(|n| (n / 64, (n % 64) * 4))
        .find(|(a, b)| (0..4).all(|k| !used.contains(&format!(" 10.231.{a}.{}/", b + k))))
        .expect("a free /30 in 10.231.0.0/16")
}

/// A daemon running as a task of this process.
struct InProcess {
    control: mpsc::UnboundedSender<Control>,
    handle: JoinHandle<Result<(), String>>,
}

impl InProcess {
    fn spawn<F>(run: impl FnOnce(mpsc::UnboundedReceiver<Control>) -> F) -> InProcess
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (control, rx) = mpsc::unbounded_channel();
        InProcess {
            control,
            handle: tokio::spawn(run(rx)),
        }
    }

    async fn stop(self) {
        let _ = self.control.send(Control::Stop);
        self.handle
            .await
            .unwrap()
            .expect("the daemon stops cleanly");
    }
}

/// n1's daemon: the pgfan binary inside the namespace; killed when dropped.
struct NsDaemon {
    child: Child,
    log: PathBuf,
}

impl NsDaemon {
    fn spawn(ns: &Netns, dir: &Path, config: &str) -> NsDaemon {
        let path = dir.join("n1.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("n1.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                env!("CARGO_BIN_EXE_pgfan"),
                "node",
                "-c",
            ])
            .arg(&path)
            .env("PGFAN_LOG", "info")
            .env_remove("PGFAN_LOG_FORMAT")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn pgfan node in the namespace");
        NsDaemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "n1 never logged {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (`ip netns exec` execs the daemon, so the child is the daemon), exit 0.
    async fn terminate(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "n1:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "n1 did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The clusters, the daemons and n1's namespace.
struct Setup {
    master: Cluster,
    nodes: [Cluster; 2],
    daemons: Vec<InProcess>,
    n1: NsDaemon,
    _dir: tempfile::TempDir,
}

const NODE_TABLES: &str = "create table items (id bigint primary key, name text);
    create table effects (k text)";

async fn start(ns: &Netns) -> Setup {
    let listen = format!("'127.0.0.1,{}'", ns.root_addr);
    let master = tokio::task::spawn_blocking(move || {
        Cluster::start_with(&[("listen_addresses", listen.as_str())])
    });
    let n1 = tokio::task::spawn_blocking(Cluster::start);
    let n2 = tokio::task::spawn_blocking(Cluster::start);
    let master = master.await.unwrap().expect("start the master");
    let nodes = [n1.await.unwrap().unwrap(), n2.await.unwrap().unwrap()];
    // initdb's pg_hba.conf trusts only loopback connections: add the namespace's subnet.
    let hba = master.dir().join("data").join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str(&format!("host all all {} trust\n", ns.subnet));
    std::fs::write(&hba, text).unwrap();
    let conninfo = master.conninfo("postgres");
    let mut m = pgfan::db::connect_client(&conninfo).await.unwrap();
    m.batch_execute("select pg_reload_conf()").await.unwrap();
    install::install(&mut m, Role::Master).await.unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = pgfan::db::connect_client(&node.conninfo("postgres"))
            .await
            .unwrap();
        install::install(&mut c, Role::Node).await.unwrap();
        c.batch_execute(NODE_TABLES).await.unwrap();
        let name = format!("n{}", i + 1);
        m.query_one("select pgfan.node_add($1)", &[&name])
            .await
            .unwrap();
    }
    let mut daemons = master_daemons(&master);
    let mut n2 = NodeConfig::new("n2", &conninfo, &nodes[1].conninfo("postgres"));
    configure(&mut n2);
    daemons.push(InProcess::spawn(|rx| async move {
        pgfan::node::run(None, n2, rx)
            .await
            .map_err(|e| e.to_string())
    }));
    let dir = tempfile::tempdir().unwrap();
    let n1 = NsDaemon::spawn(ns, dir.path(), &n1_config(ns, &master, &nodes[0]));
    Setup {
        master,
        nodes,
        daemons,
        n1,
        _dir: dir,
    }
}

fn configure(cfg: &mut NodeConfig) {
    cfg.copy_tables = vec!["public.items".into()];
    cfg.poll_period = Duration::from_millis(200);
    cfg.heartbeat_period = Duration::from_millis(200);
    cfg.workers = 2;
}

/// n1's file: the master through the veth pair with the timeouts, its database through
/// the Unix socket in the cluster's directory.
fn n1_config(ns: &Netns, master: &Cluster, node: &Cluster) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap();
    let master = format!(
        "host={} port={} user=postgres dbname=postgres {LINK_TIMEOUTS}",
        ns.root_addr,
        master.port()
    );
    let db = format!(
        "host={} port={} user=postgres dbname=postgres",
        node.dir().display(),
        node.port()
    );
    format!(
        "[node]\nname = \"n1\"\nmaster = {}\ndb = {}\nworkers = 2\n\
         copy_tables = [\"public.items\"]\npoll_period = \"200ms\"\n\
         heartbeat_period = \"200ms\"\nstop_timeout = \"5s\"\n",
        quote(&master),
        quote(&db)
    )
}

fn master_daemons(master: &Cluster) -> Vec<InProcess> {
    let conninfo = master.conninfo("postgres");
    let ticker = pgfan::ticker::TickerConfig {
        base_connstr: format!("host=127.0.0.1 port={} user=postgres", master.port()),
        database_list: vec!["postgres".into()],
        ..Default::default()
    };
    let relay = pgfan::relay::RelayConfig::new(&conninfo);
    let reducer = pgfan::reducer::ReducerConfig::new(&conninfo);
    vec![
        InProcess::spawn(|rx| async move {
            pgfan::ticker::run(None, ticker, rx)
                .await
                .map_err(|e| e.to_string())
        }),
        InProcess::spawn(|rx| async move {
            pgfan::relay::run(None, relay, rx)
                .await
                .map_err(|e| e.to_string())
        }),
        InProcess::spawn(|rx| async move {
            pgfan::reducer::run(None, reducer, rx)
                .await
                .map_err(|e| e.to_string())
        }),
    ]
}

async fn submit(m: &Client, target: &str, sql: &str) -> i64 {
    m.query_one("select pgfan.submit($1, $2::text)", &[&target, &sql])
        .await
        .unwrap()
        .get(0)
}

/// A transactional effect without a key: a second run would show as a second row.
async fn effect(m: &Client, target: &str, key: &str) -> i64 {
    let sql = format!("insert into effects values ('{key}')");
    submit(m, target, &sql).await
}

/// A raw copy event inserting row `id` on `target` (a second run fails on the key).
async fn copy_row(m: &Client, target: &str, id: i64) {
    let data = format!("action=ins&id={id}&name=r{id}");
    m.query_one(
        "select pgq.insert_event('push_queue', 'copy', $1, $2, null, null, null)",
        &[&data, &target],
    )
    .await
    .unwrap();
}

async fn wait(m: &Client, job: i64, within: &str) -> String {
    m.query_one(
        "select pgfan.wait($1, $2::text::interval)",
        &[&job, &within],
    )
    .await
    .unwrap()
    .get(0)
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Polls `sql` (one boolean) until true, at most PATIENCE.
async fn eventually(c: &Client, what: &str, sql: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !c.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(Instant::now() < deadline, "never happened: {what}\n{sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What was submitted during the cut.
#[derive(Default)]
struct CutLoad {
    n2_jobs: Vec<i64>,
    n1_jobs: Vec<i64>,
    all_jobs: Vec<i64>,
    n1_rows: i64,
}

/// Submits work for n2, n1 and both until the cut has lasted CUT; every n2 job must
/// complete meanwhile.
async fn load_during_cut(m: &Client, cut_at: Instant) -> CutLoad {
    let mut load = CutLoad::default();
    let mut i = 0;
    while cut_at.elapsed() < CUT {
        let n2 = effect(m, "n2", &format!("cut{i}")).await;
        load.n1_jobs.push(effect(m, "n1", &format!("cut{i}")).await);
        load.all_jobs
            .push(effect(m, "all", &format!("all{i}")).await);
        copy_row(m, "n1", 1000 + i).await;
        load.n1_rows += 1;
        assert_eq!(
            wait(m, n2, "20 s").await,
            "done",
            "n2's job {n2} completes while n1 is cut off"
        );
        load.n2_jobs.push(n2);
        i += 1;
        // Paces the submissions over the cut; the wait above already took its time.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_catches_up_and_the_others_keep_working() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            println!("SKIPPED: network namespaces cannot be created on this machine ({e})");
            return;
        }
    };
    let started = Instant::now();
    let mut setup = start(&ns).await;
    let m = pgfan::db::connect_client(&setup.master.conninfo("postgres"))
        .await
        .unwrap();
    // `all` reaches only nodes whose daemon has started (sent a heartbeat) once one has.
    pgfan::demo::wait_nodes_started(&m)
        .await
        .expect("both node daemons start");
    let warm = effect(&m, "all", "warm").await;
    assert_eq!(wait(&m, warm, "30 s").await, "done", "both nodes work");
    println!(
        "set up and warmed up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Work for n1 still on its way (relayed, claimed, running or shipping) when the link
    // goes down.
    let mut pre = Vec::new();
    for i in 0..10 {
        pre.push(effect(&m, "n1", &format!("pre{i}")).await);
        copy_row(&m, "n1", i).await;
    }
    ns.cut();
    let cut_at = Instant::now();
    let load = load_during_cut(&m, cut_at).await;
    // n2's share of the jobs on all nodes is done too, and none of n1's tasks from the
    // cut can have run: its daemon cannot reach the master.
    let all = &load.all_jobs;
    eventually(
        &m,
        "n2's tasks of the jobs on all nodes are done during the cut",
        &format!(
            "select count(*) = {} from pgfan.task
              where job_id = any('{{{}}}') and node_name = 'n2' and state = 'done'",
            all.len(),
            join(all)
        ),
    )
    .await;
    let n1_cut_tasks: Vec<i64> = load.n1_jobs.iter().chain(all).copied().collect();
    let n1_done = count(
        &m,
        &format!(
            "select count(*) from pgfan.task
              where job_id = any('{{{}}}') and node_name = 'n1' and state = 'done'",
            join(&n1_cut_tasks)
        ),
    )
    .await;
    assert_eq!(n1_done, 0, "none of n1's tasks ran during the cut");
    // The daemon noticed, and so did the master.
    setup.n1.wait_log("Database unavailable").await;
    eventually(
        &m,
        "the master dropped n1's sessions",
        &format!(
            "select not exists (select from pg_stat_activity where client_addr = '{}')",
            ns.ns_addr
        ),
    )
    .await;
    println!(
        "cut for {:.1} s: {} jobs on n2 completed meanwhile, {} jobs for n1 and {} on all nodes waiting",
        cut_at.elapsed().as_secs_f64(),
        load.n2_jobs.len(),
        load.n1_jobs.len(),
        all.len()
    );

    ns.restore();
    let restored = Instant::now();
    for job in pre.iter().chain(&load.n1_jobs).chain(all) {
        assert_eq!(
            wait(&m, *job, "60 s").await,
            "done",
            "job {job} after the cut"
        );
    }
    eventually(
        &m,
        "every job done",
        "select not exists (select from pgfan.job where state <> 'done')",
    )
    .await;
    println!(
        "every job done {:.1} s after the link returned",
        restored.elapsed().as_secs_f64()
    );
    setup.n1.wait_log("Database available again").await;
    for line in setup.n1.log().lines().filter(|l| l.contains("vailable")) {
        println!("n1: {line}");
    }
    check_exactly_once(&setup, &load).await;
    setup.n1.terminate().await;
    while let Some(d) = setup.daemons.pop() {
        d.stop().await;
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// Each effect and each row on n1 and n2 exactly once.
async fn check_exactly_once(setup: &Setup, load: &CutLoad) {
    let rounds = load.n2_jobs.len() as i64;
    let expect = [
        // n1: warm, pre0..9, cut0..; all0..
        (1 + 10 + rounds + rounds, 10 + load.n1_rows),
        // n2: warm, cut0..; all0..
        (1 + rounds + rounds, 0),
    ];
    for (node, (effects, rows)) in setup.nodes.iter().zip(expect) {
        let c = pgfan::db::connect_client(&node.conninfo("postgres"))
            .await
            .unwrap();
        let got = (
            count(&c, "select count(*) from effects").await,
            count(&c, "select count(distinct k) from effects").await,
            count(&c, "select count(*) from items").await,
        );
        assert_eq!(got, (effects, effects, rows), "effects, distinct, rows");
    }
}

fn join(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}
