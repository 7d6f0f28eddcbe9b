//! Process-level tests: the built `pgfan` binary with config files in a temporary
//! directory, against real PostgreSQL, driven by real signals. SIGTERM drains (a running
//! node task up to `stop_timeout`, left re-runnable) and exits 0; SIGHUP applies a changed
//! valid file and keeps the running configuration when the file is bad; config errors name
//! the file and the line. Each daemon's stderr goes to a file the tests wait on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{eventually, TestDb, PATIENCE};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_postgres::Client;

/// The node daemons' drain cap in these tests.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an exit may take beyond the drain cap (shipping, closing sessions).
const EXIT_SLACK: Duration = Duration::from_secs(5);
/// Whether a node worker is in `pg_sleep(30)`.
const LONG_TASK_RUNS: &str = "select exists (select from pg_stat_activity
    where query like '%pg_sleep(30)%' and state = 'active' and pid <> pg_backend_pid())";

/// A spawned daemon, killed when dropped (a failing test leaves no process behind).
struct Daemon {
    role: &'static str,
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `pgfan <role> -c <dir>/<role>.toml` with `config` as the file.
    fn spawn(dir: &Path, role: &'static str, config: &str, env: &[(&str, &str)]) -> Daemon {
        let path = dir.join(format!("{role}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{role}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_pgfan"))
            .args([role, "-c"])
            .arg(&path)
            .env("PGFAN_LOG", "info")
            .env_remove("PGFAN_LOG_FORMAT")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn pgfan");
        Daemon {
            role,
            child,
            config: path,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `count` lines containing `needle` (case-insensitive).
    async fn wait_log(&self, needle: &str, count: usize) {
        let needle = needle.to_lowercase();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log().to_lowercase();
            if log.lines().filter(|l| l.contains(&needle)).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?} ({count}×):\n{log}",
                self.role
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the daemon logged that it runs (its signal handlers are in place then).
    async fn started(&self) {
        self.wait_log("started", 1).await;
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid of our own child process and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit, at most `within`; panics with the log if it takes longer.
    async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}:\n{}",
                self.role,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then an exit with code 0 within `within`.
    async fn terminate(&mut self, within: Duration) {
        self.signal(libc::SIGTERM);
        let status = self.exit_within(within).await;
        assert_eq!(status.code(), Some(0), "{}:\n{}", self.role, self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TOML string literal (JSON's escapes are valid TOML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A master with node `n1` registered, n1's database, and a directory for files.
struct Env {
    dir: TempDir,
    master: TestDb,
    node: TestDb,
}

impl Env {
    async fn new() -> Env {
        let master = TestDb::master(common::Backend::Bundled).await;
        let node = TestDb::empty().await;
        pgfan::install::install(&mut node.connect().await, pgfan::install::Role::Node)
            .await
            .expect("install the node schema");
        master
            .connect()
            .await
            .batch_execute("select pgfan.node_add('n1')")
            .await
            .unwrap();
        Env {
            dir: tempfile::tempdir().unwrap(),
            master,
            node,
        }
    }

    fn ticker_config(&self) -> String {
        let cfg = common::ticker_config(&self.master);
        format!(
            "[ticker]\nbase_connstr = {}\ndatabase_list = [{}]\n",
            quote(&cfg.base_connstr),
            quote(&cfg.database_list[0])
        )
    }

    fn relay_config(&self) -> String {
        let master = quote(&self.master.conninfo);
        format!("[relay]\nmaster = {master}\npoll_period = \"200ms\"\n")
    }

    fn reducer_config(&self) -> String {
        let master = quote(&self.master.conninfo);
        format!(
            "[reducer]\nmaster = {master}\npoll_period = \"200ms\"\nexpire_period = \"200ms\"\n"
        )
    }

    fn node_config(&self, allow_sql: bool) -> String {
        format!(
            "[node]\nname = \"n1\"\nmaster = {}\ndb = {}\nallow_sql = {allow_sql}\n\
             poll_period = \"200ms\"\nheartbeat_period = \"200ms\"\nstop_timeout = \"{}s\"\n",
            quote(&self.master.conninfo),
            quote(&self.node.conninfo),
            STOP_TIMEOUT.as_secs()
        )
    }

    /// Ticker, relay and reducer, started.
    async fn master_daemons(&self) -> Vec<Daemon> {
        let d = [
            Daemon::spawn(self.dir.path(), "ticker", &self.ticker_config(), &[]),
            Daemon::spawn(self.dir.path(), "relay", &self.relay_config(), &[]),
            Daemon::spawn(self.dir.path(), "reducer", &self.reducer_config(), &[]),
        ];
        for daemon in &d {
            daemon.started().await;
        }
        d.into()
    }

    async fn node_daemon(&self, allow_sql: bool) -> Daemon {
        let d = Daemon::spawn(self.dir.path(), "node", &self.node_config(allow_sql), &[]);
        d.started().await;
        d
    }
}

async fn submit(m: &Client, sql: &str) -> i64 {
    m.query_one("select pgfan.submit('n1', $1::text)", &[&sql])
        .await
        .unwrap()
        .get(0)
}

/// The job's final state ('done', 'failed', ...) and its error.
async fn finished(m: &Client, job: i64) -> (String, String) {
    let state: String = m
        .query_one("select pgfan.wait($1, '20 s')", &[&job])
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

async fn stop_all(daemons: Vec<Daemon>) {
    for mut d in daemons.into_iter().rev() {
        d.terminate(EXIT_SLACK).await;
    }
}

#[tokio::test]
async fn sigterm_during_a_long_task_drains_within_the_cap_and_leaves_it_rerunnable() {
    let env = Env::new().await;
    let master_daemons = env.master_daemons().await;
    let mut node = env.node_daemon(true).await;
    let m = env.master.connect().await;
    let long = submit(&m, "select pg_sleep(30)").await;
    eventually(&env.node, LONG_TASK_RUNS).await;

    let asked = Instant::now();
    node.terminate(STOP_TIMEOUT + EXIT_SLACK).await;
    assert!(
        asked.elapsed() >= STOP_TIMEOUT - Duration::from_millis(500),
        "the node waited for the running task until stop_timeout:\n{}",
        node.log()
    );
    let n = env.node.connect().await;
    let (state, finished_at): (String, bool) = n
        .query_one(
            "select state, finished_at is not null from pgfan_node.task",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((state.as_str(), finished_at), ("claimed", false));
    let job_state: String = m
        .query_one("select state from pgfan.job where job_id = $1", &[&long])
        .await
        .unwrap()
        .get(0);
    assert_eq!(job_state, "running", "the job waits for the re-run");

    // Started again, the node re-runs the long task and still runs a short one beside it.
    let mut node = env.node_daemon(true).await;
    let short = submit(&m, "select 41 + 1 as answer").await;
    assert_eq!(finished(&m, short).await, ("done".into(), String::new()));
    eventually(&env.node, LONG_TASK_RUNS).await;
    // A second SIGTERM quits at once instead of waiting for the drain.
    node.signal(libc::SIGTERM);
    node.wait_log("Node stopping", 1).await;
    let asked = Instant::now();
    node.terminate(STOP_TIMEOUT).await;
    assert!(asked.elapsed() < STOP_TIMEOUT, "{}", node.log());
    stop_all(master_daemons).await;
}

#[tokio::test]
async fn sigterm_while_idle_exits_0_promptly_and_logs_are_json_or_journald_style() {
    let env = Env::new().await;
    let dir = env.dir.path();
    let mut daemons = [
        Daemon::spawn(
            dir,
            "ticker",
            &env.ticker_config(),
            &[("PGFAN_LOG_FORMAT", "json")],
        ),
        Daemon::spawn(
            dir,
            "relay",
            &env.relay_config(),
            &[("JOURNAL_STREAM", "8:12345")],
        ),
        Daemon::spawn(dir, "reducer", &env.reducer_config(), &[]),
        Daemon::spawn(dir, "node", &env.node_config(true), &[]),
    ];
    for d in &daemons {
        d.started().await;
    }
    // Each daemon's sessions on the master say which daemon (and node) they are.
    common::eventually(
        &env.master,
        "select count(distinct application_name) = 4 from pg_stat_activity
          where datname = current_database()
            and application_name in ('pgfan ticker', 'pgfan relay', 'pgfan reducer',
                                     'pgfan node n1')",
    )
    .await;
    for d in &daemons {
        d.signal(libc::SIGTERM);
    }
    for d in &mut daemons {
        let status = d.exit_within(EXIT_SLACK).await;
        assert_eq!(status.code(), Some(0), "{}:\n{}", d.role, d.log());
    }
    for line in daemons[0].log().lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
    for line in daemons[1].log().lines() {
        assert!(
            !line.starts_with(|c: char| c.is_ascii_digit()),
            "no timestamp: {line}"
        );
    }
    let reducer = daemons[2].log();
    let first = reducer.lines().next().unwrap_or_default();
    assert!(first.starts_with("20"), "a timestamp first: {first}");
}

#[tokio::test]
async fn sighup_applies_a_valid_file_and_keeps_the_old_config_on_a_bad_one() {
    let env = Env::new().await;
    let master_daemons = env.master_daemons().await;
    let mut node = env.node_daemon(true).await;
    let m = env.master.connect().await;
    let before = submit(&m, "select 1 as one").await;
    assert_eq!(finished(&m, before).await.0, "done");

    std::fs::write(&node.config, env.node_config(false)).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("Configuration reloaded", 1).await;
    let refused = submit(&m, "select 1 as one").await;
    let (state, error) = finished(&m, refused).await;
    assert_eq!(state, "failed");
    assert!(error.contains("does not accept raw SQL"), "{error}");

    let broken = env.node_config(true) + "allow_sqll = true\n";
    let line = broken.lines().count();
    std::fs::write(&node.config, broken).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_log("Configuration reload failed", 1).await;
    let log = node.log();
    let failed = log
        .lines()
        .find(|l| l.contains("Configuration reload failed"))
        .unwrap();
    assert!(failed.contains("ERROR"), "{failed}");
    assert!(failed.contains(&format!("line {line}")), "{failed}");
    assert!(failed.contains("allow_sqll"), "{failed}");
    // Still running, on the configuration before the bad file: raw SQL stays refused.
    assert!(node.running(), "{log}");
    let still_refused = submit(&m, "select 2 as two").await;
    let (state, error) = finished(&m, still_refused).await;
    assert_eq!(state, "failed");
    assert!(error.contains("does not accept raw SQL"), "{error}");

    node.terminate(STOP_TIMEOUT + EXIT_SLACK).await;
    stop_all(master_daemons).await;
}

/// Runs `pgfan <role> -c <file> --check-config`; (exit code, stderr).
fn check_config(role: &str, file: &Path) -> (Option<i32>, String) {
    check_config_with(role, file, &[])
}

fn check_config_with(role: &str, file: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args([role, "-c"])
        .arg(file)
        .arg("--check-config")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run pgfan");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn config_errors_name_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // (role, file name, text, the line the error must name)
        (
            "relay",
            "unknown.toml",
            "[relay]\nmaster = \"\"\n\nqueues = \"q\"\n",
            4,
        ),
        ("relay", "unknown.ini", "[relay]\nmaster =\nbogus = 1\n", 3),
        ("relay", "syntax.toml", "[relay]\nmaster = \"\n", 2),
        (
            "node",
            "unknown.toml",
            "[node]\nname = \"n1\"\nworkerz = 2\n",
            3,
        ),
        (
            "node",
            "type.toml",
            "[node]\nname = \"n1\"\n\nworkers = \"many\"\n",
            4,
        ),
        (
            "node",
            "syntax.toml",
            "[node]\nname = \"n1\"\nworkers = = 2\n",
            3,
        ),
    ];
    for (role, name, text, line) in cases {
        let path = dir.path().join(format!("{role}-{name}"));
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = check_config(role, &path);
        assert_ne!(code, Some(0), "{role} {name}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{role} {name} names the file: {stderr}"
        );
        assert!(
            stderr.contains(&format!("line {line}")),
            "{role} {name} names line {line}: {stderr}"
        );
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[node]\nname = \"n1\"\n").unwrap();
    let (code, stderr) = check_config("node", &good);
    assert_eq!(code, Some(0), "{stderr}");

    // One environment for several daemons: a node's override is not the ticker's business.
    let ticker = dir.path().join("ticker.toml");
    std::fs::write(&ticker, "[ticker]\n").unwrap();
    let shared = [("PGFAN_NODE__ALLOW_SQL", "false")];
    let (code, stderr) = check_config_with("ticker", &ticker, &shared);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check_config_with("node", &good, &shared);
    assert_eq!(code, Some(0), "{stderr}");
    // A typo in an override names the variable, not a line of the file; said once, on one
    // line, without a backtrace even when RUST_BACKTRACE asks for one.
    let (code, stderr) = check_config_with("node", &good, &[("PGFAN_NODE__WORKRS", "3")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("environment variable PGFAN_NODE__WORKRS"),
        "{stderr}"
    );
    assert!(!stderr.contains("line "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("unknown field").count(), 1, "{stderr}");
}

#[tokio::test]
async fn check_config_connect_names_each_connection_and_where_it_failed() {
    let env = Env::new().await;
    let run = |text: String, name: &str| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgfan"))
            .args(["node", "-c"])
            .arg(&path)
            .args(["--check-config", "--connect"])
            .output()
            .expect("run pgfan");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = run(env.node_config(true), "good.toml");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches(": connected").count(), 2, "{out}");
    let bad = format!(
        "[node]\nname = \"n1\"\nmaster = \"host=127.0.0.1 port=1 dbname=app connect_timeout=5\"\n\
         db = {}\n",
        quote(&env.node.conninfo)
    );
    let (code, out, err) = run(bad, "bad.toml");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("master database (host=127.0.0.1 port=1 dbname=app"),
        "{out}"
    );
    assert!(
        out.contains("node database (") && out.contains(": connected"),
        "{out}"
    );
    assert!(
        err.contains("cannot connect to master (host=127.0.0.1 port=1"),
        "{err}"
    );
}
