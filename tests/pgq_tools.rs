//! The reference PgQ tools from Debian against pgfan's bundled core, with the real extension
//! as the control: the C ticker daemon `pgqd`, and unmodified python3-pgq consumers and
//! producer helpers (driven by the scripts in tests/python/).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{
    batch_events, eventually_or, finish_batch, insert_event, next_batch, queue_db, register,
    set_queue_config, start_ticker, tick, ticker_config, Backend, BatchInfo, Ev, TestDb, PATIENCE,
};
use pgfan::signals::Control;
use tokio_postgres::Client;

/// pgqd from the Debian package `pgqd`.
const PGQD: &str = "/usr/bin/pgqd";
/// The interpreter python3-pgq is installed for (the first python3 on PATH is another build).
const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------
// pgqd
// ---------------------------------------------------------------------------------------

/// A running pgqd serving one test database; killed when dropped, also on panic.
struct Pgqd {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Pgqd {
    /// Starts pgqd for `db` alone: ticker every second, retry mover and maintenance every
    /// second, logging verbosely into its temp dir.
    fn start(db: &TestDb) -> Pgqd {
        let (base, dbname) = db
            .conninfo
            .rsplit_once(" dbname=")
            .expect("conninfo ends with dbname");
        let dir = tempfile::tempdir().expect("temp dir");
        let ini = dir.path().join("pgqd.ini");
        std::fs::write(
            &ini,
            format!(
                "[pgqd]\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n\
                 base_connstr = {base}\n\
                 database_list = {dbname}\n\
                 syslog = 0\n\
                 ticker_period = 1\n\
                 maint_period = 1\n\
                 retry_period = 1\n\
                 check_period = 60\n\
                 stats_period = 60\n",
                log = dir.path().join("pgqd.log").display(),
                pid = dir.path().join("pgqd.pid").display(),
            ),
        )
        .expect("write pgqd.ini");
        let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = std::process::Command::new(PGQD)
            .arg("-v")
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PGQD}: {e}"));
        Pgqd { child, dir }
    }

    /// pgqd's log file and stderr, for assertion messages.
    fn log(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.path().join(name))
                .unwrap_or_else(|e| format!("<{name}: {e}>"))
        };
        format!(
            "--- pgqd log ---\n{}--- pgqd stderr ---\n{}",
            read("pgqd.log"),
            read("stderr")
        )
    }
}

impl Drop for Pgqd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A queue on which every `pgq.ticker()` call ticks: pgqd's 1 s period sets the pace.
async fn tick_every_call(client: &Client, q: &str) {
    set_queue_config(client, q, "ticker_max_lag", "0").await;
    set_queue_config(client, q, "ticker_idle_period", "0").await;
}

/// Waits until `consumer` gets a batch (left open) and returns it with its events.
async fn wait_batch(client: &Client, q: &str, consumer: &str, pgqd: &Pgqd) -> (BatchInfo, Vec<Ev>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(b) = next_batch(client, q, consumer).await {
            return (b, batch_events(client, b.batch_id).await);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch for {consumer} on {q} within {PATIENCE:?}\n{}",
            pgqd.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queue_cur_table(client: &Client, q: &str) -> i32 {
    client
        .query_one(
            "select queue_cur_table from pgq.queue where queue_name = $1",
            &[&q],
        )
        .await
        .unwrap()
        .get(0)
}

async fn pgqd_ticks(backend: Backend) {
    let q = "pgqd_tick_q";
    let c = "pgqd_tick_c";
    let (db, client) = queue_db(backend, &[q]).await;
    tick_every_call(&client, q).await;
    register(&client, q, c).await;
    let id = insert_event(&client, q, "t", "ticked").await;
    let ticks = format!(
        "select count(*) from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue
          where q.queue_name = '{q}'"
    );
    let before: i64 = client.query_one(&ticks, &[]).await.unwrap().get(0);
    let pgqd = Pgqd::start(&db);
    eventually_or(&db, &format!("select ({ticks}) >= {}", before + 2), || {
        pgqd.log()
    })
    .await;
    // pgqd's ticks are real ticks: they cut a batch holding the event.
    let mut got = Vec::new();
    while let Some(b) = next_batch(&client, q, c).await {
        got.extend(
            batch_events(&client, b.batch_id)
                .await
                .into_iter()
                .map(|e| (e.id, e.data().to_string())),
        );
        assert_eq!(finish_batch(&client, b.batch_id).await, 1);
    }
    assert_eq!(
        got,
        vec![(id, "ticked".to_string())],
        "the batches cut by pgqd's ticks hold the event once\n{}",
        pgqd.log()
    );
}

async fn pgqd_rotates_tables(backend: Backend) {
    let q = "pgqd_rot_q";
    let c = "pgqd_rot_c";
    let (db, client) = queue_db(backend, &[q]).await;
    tick_every_call(&client, q).await;
    set_queue_config(&client, q, "rotation_period", "0").await;
    register(&client, q, c).await;
    assert_eq!(queue_cur_table(&client, q).await, 0);
    let pgqd = Pgqd::start(&db);
    // Rotation waits until the consumer is past the previous switch: keep finishing batches.
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while queue_cur_table(&client, q).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pgqd never rotated {q}'s event tables\n{}",
            pgqd.log()
        );
        let data = format!("r{}", sent.len());
        insert_event(&client, q, "r", &data).await;
        sent.push(data);
        let (b, evs) = wait_batch(&client, q, c, &pgqd).await;
        got.extend(evs.iter().map(|e| e.data().to_string()));
        assert_eq!(finish_batch(&client, b.batch_id).await, 1);
    }
    // Nothing was lost by the truncation of the next table: drain what is still queued.
    while got.len() < sent.len() {
        let (b, evs) = wait_batch(&client, q, c, &pgqd).await;
        got.extend(evs.iter().map(|e| e.data().to_string()));
        assert_eq!(finish_batch(&client, b.batch_id).await, 1);
    }
    got.sort();
    sent.sort();
    assert_eq!(
        got,
        sent,
        "every event exactly once across the rotation\n{}",
        pgqd.log()
    );
}

async fn pgqd_moves_retry_events(backend: Backend) {
    let q = "pgqd_retry_q";
    let (c1, c2) = ("pgqd_retry_c1", "pgqd_retry_c2");
    let (db, client) = queue_db(backend, &[q]).await;
    tick_every_call(&client, q).await;
    register(&client, q, c1).await;
    register(&client, q, c2).await;
    let id = insert_event(&client, q, "r", "retry me").await;
    let pgqd = Pgqd::start(&db);
    let (b, evs) = wait_batch(&client, q, c1, &pgqd).await;
    assert_eq!(
        evs.iter().map(|e| (e.id, e.retry)).collect::<Vec<_>>(),
        vec![(id, None)],
        "{}",
        pgqd.log()
    );
    let r: i32 = client
        .query_one(
            "select pgq.event_retry($1, $2, $3::int4)",
            &[&b.batch_id, &id, &0i32],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, 1);
    assert_eq!(finish_batch(&client, b.batch_id).await, 1);
    // pgqd's retry loop moves it back; its ticker cuts a batch with it for c1.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (last, again) = loop {
        let (b, evs) = wait_batch(&client, q, c1, &pgqd).await;
        assert_eq!(finish_batch(&client, b.batch_id).await, 1);
        if !evs.is_empty() {
            break (b, evs);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried event never came back\n{}",
            pgqd.log()
        );
    };
    assert_eq!(
        again
            .iter()
            .map(|e| (e.id, e.retry, e.data().to_string()))
            .collect::<Vec<_>>(),
        vec![(id, Some(1), "retry me".to_string())],
        "the retried event is re-delivered once, counted\n{}",
        pgqd.log()
    );
    let left: i64 = client
        .query_one("select count(*) from pgq.retry_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the retry queue is empty\n{}", pgqd.log());
    // The other consumer sees the event once, never its retried copy.
    let mut c2_got = Vec::new();
    loop {
        let (b, evs) = wait_batch(&client, q, c2, &pgqd).await;
        assert_eq!(finish_batch(&client, b.batch_id).await, 1);
        c2_got.extend(evs.iter().map(|e| (e.id, e.retry)));
        if b.cur_tick_id >= last.cur_tick_id {
            break;
        }
    }
    assert_eq!(c2_got, vec![(id, None)], "{}", pgqd.log());
}

// ---------------------------------------------------------------------------------------
// python3-pgq
// ---------------------------------------------------------------------------------------

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs a tests/python script under python3-pgq's interpreter; a run longer than PATIENCE
/// is killed and fails the test with `log`'s contents.
async fn run_python(name: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(PYTHON);
    cmd.arg(script(name))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(PATIENCE, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {PYTHON} {name}: {e}")),
        Err(_) => panic!(
            "{name} {args:?} did not finish within {PATIENCE:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

fn describe(name: &str, out: &Output) -> String {
    format!(
        "{name}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a script and requires exit status 0.
async fn run_python_ok(name: &str, args: &[&str], log: &Path) {
    let out = run_python(name, args, &[], log).await;
    assert!(out.status.success(), "{}", describe(name, &out));
}

/// Produces `events` (`single:TYPE:DATA` / `bulk:TYPE:DATA`) with python-pgq's helpers.
async fn produce(db: &TestDb, q: &str, events: &[&str]) {
    let mut args = vec![db.conninfo.as_str(), q];
    args.extend_from_slice(events);
    run_python_ok("pgq_produce.py", &args, Path::new("/dev/null")).await;
}

/// One line of the collecting consumer's output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    id: i64,
    ev_type: String,
    data: String,
    retry: Option<i32>,
}

async fn consumer_state(client: &Client, q: &str, c: &str) -> (Option<i64>, i64) {
    let row = client
        .query_one(
            "select current_batch, last_tick from pgq.get_consumer_info($1, $2)",
            &[&q, &c],
        )
        .await
        .unwrap_or_else(|e| panic!("get_consumer_info({q}, {c}): {e:?}"));
    (row.get(0), row.get(1))
}

async fn python_consumer_gets_every_event_once(backend: Backend) {
    let q = "py_collect_q";
    let c = "py_collect_c";
    let (db, client) = queue_db(backend, &[q]).await;
    set_queue_config(&client, q, "ticker_max_lag", "0").await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("events.jsonl");
    let log = dir.path().join("consumer.log");
    let ini = dir.path().join("collect.ini");
    let single = ["s1", "s2", "retry-s"];
    let bulk = ["b1", "retry-b", "b2"];
    std::fs::write(
        &ini,
        format!(
            "[pgq_collect_consumer]\n\
             job_name = py_collect\n\
             db = {conn}\n\
             queue_name = {q}\n\
             consumer_name = {c}\n\
             loop_delay = 0.05\n\
             pgq_lazy_fetch = 2\n\
             logfile = {log}\n\
             out_file = {out}\n\
             expect_lines = {n}\n",
            conn = db.conninfo,
            log = log.display(),
            out = out_file.display(),
            n = single.len() + bulk.len() + 2,
        ),
    )
    .unwrap();
    let ini = ini.to_str().unwrap();
    run_python_ok("pgq_collect_consumer.py", &[ini, "--register"], &log).await;
    assert_eq!(consumer_state(&client, q, c).await.0, None, "registered");

    let mut cfg = ticker_config(&db);
    cfg.retry_period = Duration::from_millis(50);
    let (ctl, ticker) = start_ticker(cfg);
    let mut events: Vec<String> = single.iter().map(|d| format!("single:ts:{d}")).collect();
    events.extend(bulk.iter().map(|d| format!("bulk:tb:{d}")));
    produce(
        &db,
        q,
        &events.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let out = run_python("pgq_collect_consumer.py", &[ini], &[], &log).await;
    let context = format!(
        "{}\n--- log ---\n{}",
        describe("pgq_collect_consumer.py", &out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(out.status.success(), "{context}");
    ctl.send(Control::Stop).unwrap();
    ticker.await.unwrap();

    let seen: Vec<Seen> = std::fs::read_to_string(&out_file)
        .unwrap_or_else(|e| panic!("no output ({e})\n{context}"))
        .lines()
        .map(|l| {
            let (id, ev_type, data, retry): (i64, String, String, Option<i32>) =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"));
            Seen {
                id,
                ev_type,
                data,
                retry,
            }
        })
        .collect();
    // First deliveries: every produced event exactly once, with its type.
    let first: BTreeMap<String, (i64, String)> = seen
        .iter()
        .filter(|s| s.retry.is_none())
        .map(|s| (s.data.clone(), (s.id, s.ev_type.clone())))
        .collect();
    let first_count = seen.iter().filter(|s| s.retry.is_none()).count();
    let mut expected: Vec<(String, String)> = single
        .iter()
        .map(|d| (d.to_string(), "ts".to_string()))
        .chain(bulk.iter().map(|d| (d.to_string(), "tb".to_string())))
        .collect();
    expected.sort();
    assert_eq!(
        first
            .iter()
            .map(|(d, (_, t))| (d.clone(), t.clone()))
            .collect::<Vec<_>>(),
        expected,
        "every event delivered: {seen:?}\n{context}"
    );
    assert_eq!(first_count, expected.len(), "no duplicates: {seen:?}");
    let ids: std::collections::BTreeSet<i64> = first.values().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), first.len(), "distinct ev_ids: {seen:?}");
    // Re-deliveries: exactly the two retried events, same ev_id, ev_retry = 1.
    let mut again: Vec<Seen> = seen.iter().filter(|s| s.retry.is_some()).cloned().collect();
    again.sort();
    let mut want: Vec<Seen> = [("retry-s", "ts"), ("retry-b", "tb")]
        .iter()
        .map(|(d, t)| Seen {
            id: first[*d].0,
            ev_type: t.to_string(),
            data: d.to_string(),
            retry: Some(1),
        })
        .collect();
    want.sort();
    assert_eq!(again, want, "the retried events came back once: {seen:?}");
    assert_eq!(
        consumer_state(&client, q, c).await.0,
        None,
        "the consumer left no batch open"
    );
    let left: i64 = client
        .query_one("select count(*) from pgq.retry_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing left in the retry queue");
}

async fn python_remote_consumer_survives_a_crash(backend: Backend) {
    let q = "py_remote_q";
    let c = "py_remote_c";
    let (db, client) = queue_db(backend, &[q]).await;
    let remote = TestDb::empty().await;
    let mut rc = remote.connect().await;
    pgfan::install::install(&mut rc, pgfan::install::Role::Node)
        .await
        .expect("install pgq_ext on the remote database");
    rc.batch_execute("create table remote_events (ev_id bigint not null, ev_data text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let log = dir.path().join("consumer.log");
    let ini = dir.path().join("remote.ini");
    std::fs::write(
        &ini,
        format!(
            "[pgq_remote_consumer]\n\
             job_name = py_remote\n\
             src_db = {src}\n\
             dst_db = {dst}\n\
             queue_name = {q}\n\
             consumer_name = {c}\n\
             loop_delay = 0.05\n\
             logfile = {log}\n\
             trace_file = {trace}\n\
             expect_rows = 5\n",
            src = db.conninfo,
            dst = remote.conninfo,
            log = log.display(),
            trace = trace.display(),
        ),
    )
    .unwrap();
    let ini = ini.to_str().unwrap();
    let context = || {
        format!(
            "--- trace ---\n{}--- log ---\n{}",
            std::fs::read_to_string(&trace).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    run_python_ok("pgq_remote_consumer.py", &[ini, "--register"], &log).await;

    // First batch: applied and committed remotely, then the process dies before finish_batch.
    produce(&db, q, &["single:r:r1", "single:r:r2", "single:r:r3"]).await;
    tick(&client, q).await;
    let out = run_python(
        "pgq_remote_consumer.py",
        &[ini],
        &[("PGQ_TEST_CRASH_AFTER_REMOTE_COMMIT", "1")],
        &log,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(17),
        "the consumer must die right after its remote commit\n{}\n{}",
        describe("pgq_remote_consumer.py", &out),
        context()
    );
    let (open, _) = consumer_state(&client, q, c).await;
    let crashed_batch = open.unwrap_or_else(|| {
        panic!(
            "the crashed consumer's batch must still be open\n{}",
            context()
        )
    });
    let done: i64 = rc
        .query_one(
            "select last_batch_id from pgq_ext.completed_batch where consumer_id = $1",
            &[&c],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, crashed_batch, "pgq_ext recorded the crashed batch");

    // Second batch, then a normal run: the open batch is skipped, the new one applied.
    produce(&db, q, &["bulk:r:r4", "bulk:r:r5"]).await;
    let last = tick(&client, q).await;
    let out = run_python("pgq_remote_consumer.py", &[ini], &[], &log).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        describe("pgq_remote_consumer.py", &out),
        context()
    );
    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 3, "{}", context());
    assert_eq!(lines[0], format!("batch {crashed_batch} applied 3"));
    assert_eq!(
        lines[1],
        format!("batch {crashed_batch} skipped"),
        "next_batch after the crash returns the same batch, which pgq_ext says is done\n{}",
        context()
    );
    let second: i64 = lines[2]
        .strip_prefix("batch ")
        .and_then(|l| l.strip_suffix(" applied 2"))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("unexpected trace line {:?}\n{}", lines[2], context()));
    assert!(second > crashed_batch);

    let rows: Vec<(i64, String)> = rc
        .query(
            "select ev_id, ev_data from remote_events order by ev_data",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        ["r1", "r2", "r3", "r4", "r5"],
        "every event exactly once in the remote database\n{}",
        context()
    );
    let ids: std::collections::BTreeSet<i64> = rows.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 5, "distinct ev_ids: {rows:?}");
    assert_eq!(
        consumer_state(&client, q, c).await,
        (None, last),
        "the consumer finished every batch"
    );
}

both_backends!(
    pgqd_ticks,
    pgqd_rotates_tables,
    pgqd_moves_retry_events,
    python_consumer_gets_every_event_once,
    python_remote_consumer_survives_a_crash,
);
