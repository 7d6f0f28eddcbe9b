//! The bad-input corpus (issue 7): every kind of bad input ends as a clear error, on its
//! job and in `pgfan.dead_letter`, or at startup naming the file and the key, while the
//! rest of the work goes on and nothing is lost.
//!
//! `PIPELINE` runs through a live installation (pgfan::demo::Topology: a master, two nodes,
//! every daemon) in one test: every bad input first, then control jobs, which must complete
//! with the right answers behind them. `CONFIGS` runs `pgfan <daemon> --check-config` on the
//! built binary. The seed corpus of the event-data fuzz target (fuzz/) is checked here too,
//! so CI exercises the parsers' invariants without a fuzzer.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use pgfan::demo::Topology;
use pgfan::node::NodeConfig;
use serde_json::{json, Value};
use tokio_postgres::Client;

#[path = "../fuzz/invariants.rs"]
mod invariants;

/// Upper bound for one job; reaching it means the pipeline is stuck.
const PATIENCE: &str = "60 s";

/// How a bad input enters the pipeline.
enum Input {
    /// A raw push event: `pgq.insert_event('push_queue', ev_type, data, target)`.
    Raw(Option<&'static str>, &'static str, Option<&'static str>),
    /// A raw sql event whose data is larger than the relay accepts.
    Huge,
    /// `pgfan.submit(...)` or another statement returning a job id.
    Submit(&'static str),
    /// A result event into `pgfan_results` from node n1: (task id, data); no task id = the
    /// task of the job that is running (the open task a forged result could harm).
    Result(Option<&'static str>, &'static str),
    /// The submit event of the running job, sent again.
    Replay,
}

/// Where the clear error shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shows {
    /// The job fails with it, and a dead letter (from this source, if named) has it.
    Job(Option<&'static str>),
    /// A dead letter from this source has it; no job fails.
    DeadLetter(&'static str),
}

/// One kind of bad input and the error text it must end with.
struct Case {
    kind: &'static str,
    input: Input,
    want: &'static str,
    shows: Shows,
}

const fn case(kind: &'static str, input: Input, want: &'static str, shows: Shows) -> Case {
    Case {
        kind,
        input,
        want,
        shows,
    }
}

use Input::{Raw, Result as ResultEv, Submit};
use Shows::{DeadLetter, Job};

const RELAY: Shows = Job(Some("relay"));
const NODE: Shows = Job(Some("node"));
const REDUCER: Shows = Job(Some("reducer"));
const N1: Option<&str> = Some("n1");
const SQL: Option<&str> = Some("sql");

#[rustfmt::skip]
const PIPELINE: &[Case] = &[
    // Event type and urlencoding, checked by the relay.
    case("unknown event type", Raw(Some("shell"), "cmd=ls", N1), "unknown event type \"shell\"", RELAY),
    case("no event type", Raw(None, "sql=select+1", N1), "unknown event type \"\"", RELAY),
    case("malformed percent-escape", Raw(SQL, "sql=select+%zz", N1), "malformed percent-encoding in \"sql\"", RELAY),
    case("truncated percent-escape", Raw(SQL, "sql=select+1%2", N1), "malformed percent-encoding in \"sql\"", RELAY),
    case("invalid UTF-8", Raw(SQL, "sql=select+%ff", N1), "invalid UTF-8 in \"sql\"", RELAY),
    case("UTF-16 surrogate as UTF-8", Raw(SQL, "sql=select+%ed%a0%80", N1), "invalid UTF-8 in \"sql\"", RELAY),
    case("NUL byte in a value", Raw(SQL, "sql=a%00b", N1), "NUL byte in \"sql\"", RELAY),
    case("NUL byte in a key", Raw(SQL, "s%00l=1&sql=select+1", N1), "NUL byte in \"s%00l\"", RELAY),
    case("empty key", Raw(SQL, "=1&sql=select+1", N1), "empty key in event data", RELAY),
    case("huge payload", Input::Huge, "event data too large", RELAY),
    // Targets.
    case("missing target", Raw(SQL, "sql=select+1", None), "the event has no target", RELAY),
    case("blank target", Raw(SQL, "sql=select+1", Some("  ")), "the event has no target", RELAY),
    case("unknown node", Raw(SQL, "sql=select+1", Some("n9")), "pgfan: unknown node n9", RELAY),
    case("unknown node in a list", Raw(SQL, "sql=select+1", Some("n1,n9")), "pgfan: unknown node n9", RELAY),
    case("disabled node", Raw(SQL, "sql=select+1", Some("n3")), "node n3 is disabled", RELAY),
    // What to run, per kind.
    case("sql event without sql=", Raw(SQL, "lane=x", N1), "sql event without sql=", RELAY),
    case("only blank statements", Raw(SQL, "sql=+++&sql=", N1), "sql event without sql=", RELAY),
    case("call event without fn=", Raw(Some("call"), "arg=1", N1), "call event without fn=", RELAY),
    case("copy event without action=", Raw(Some("copy"), "id=1", N1), "copy event without action=", RELAY),
    case("unknown copy action", Raw(Some("copy"), "action=merge&id=1", N1), "invalid action=\"merge\": must be ins, upd or del", RELAY),
    case("copy without column values", Raw(Some("copy"), "action=ins&lane=x", N1), "copy event without column values", RELAY),
    case("copy column given twice", Raw(Some("copy"), "action=ins&id=1&id=2", Some("n2")), "copy column \"id\" given twice", RELAY),
    // Options.
    case("invalid policy", Raw(SQL, "sql=select+1&policy=most", N1), "invalid policy=\"most\"", RELAY),
    case("invalid timeout", Raw(SQL, "sql=select+1&timeout=soon", N1), "invalid timeout=\"soon\"", RELAY),
    case("timeout beyond a task's range", Raw(SQL, "sql=select+1&timeout=30d", N1), "invalid timeout=\"30d\": longer than", RELAY),
    case("invalid tx", Raw(SQL, "sql=select+1&tx=maybe", N1), "invalid tx=\"maybe\": must be 0 or 1", RELAY),
    case("invalid parallel", Raw(SQL, "sql=select+1&sql=select+2&parallel=0", N1), "invalid parallel=\"0\": not a positive integer", RELAY),
    case("repeated option", Raw(SQL, "sql=select+1&lane=a&lane=b", N1), "lane= given more than once", RELAY),
    case("job= naming no job", Raw(SQL, "sql=select+1&job=999999", N1), "names job 999999, which does not exist", RELAY),
    case("job= not a number", Raw(SQL, "sql=select+1&job=abc", N1), "invalid job=\"abc\": not a job id", RELAY),
    case("submit event replayed for a running job", Input::Replay, "was already routed (state running)", DeadLetter("relay")),
    // Running the task on the node.
    case("failing SQL", Submit("select pgfan.submit('n1', 'select 1/0')"), "22012: division by zero", NODE),
    case("SQL syntax error", Submit("select pgfan.submit('n1', 'selec 1')"), "42601: syntax error at or near \"selec\"", NODE),
    case("missing table", Submit("select pgfan.submit('n2', 'select * from no_such_table')"), "42P01: relation \"no_such_table\" does not exist", NODE),
    // The node's statement timeout or the job's deadline, whichever comes first.
    case("SQL that times out", Submit("select pgfan.submit('n1', 'select pg_sleep(30)', timeout => '100 ms')"), "timeout", Job(None)),
    case("statement refused in a transaction", Submit("select pgfan.submit('n1', 'create index concurrently on items (name)')"), "cannot run inside a transaction block", NODE),
    case("failing statement outside a transaction", Submit("select pgfan.submit('n2', 'vacuum no_such_table', tx => false)"), "relation \"no_such_table\" does not exist", NODE),
    case("result over the size cap", Submit("select pgfan.submit('n1', 'select repeat(''x'', 17 << 20) as big')"), "result too large", NODE),
    case("call of a function not on the allow-list", Submit("select pgfan.submit('n1', call => 'pg_catalog.pg_terminate_backend', args => array['1'])"), "function pg_catalog.pg_terminate_backend is not on node n1's allow-list", NODE),
    case("call with too few arguments", Submit("select pgfan.submit('n1', call => 'public.add', args => array['1'])"), "takes 2 arguments", NODE),
    case("call with an argument of the wrong type", Submit("select pgfan.submit('n1', call => 'public.add', args => array['x', '1'])"), "invalid input syntax for type integer: \"x\"", NODE),
    case("copy with a bad column", Raw(Some("copy"), "action=ins&id=1&no_such_column=x", Some("n2")), "column \"no_such_column\"", NODE),
    case("copy into a table not allowed", Raw(Some("copy"), "action=ins&table=secrets&id=1", Some("n2")), "not in node n2's copy_tables", NODE),
    case("copy update without the key", Raw(Some("copy"), "action=upd&name=nokey", Some("n2")), "without the key column id", NODE),
    case("copy insert of a duplicate key", Raw(Some("copy"), "action=ins&id=7&name=again", Some("n2")), "duplicate key value violates unique constraint", NODE),
    // Reducing on the master.
    case("reduce SQL that fails", Submit("select pgfan.submit('all', 'select 1 as one', reduce => 'select nonsense from partials')"), "reduce failed: column \"nonsense\" does not exist", REDUCER),
    case("reduce SQL that fails while running", Submit("select pgfan.submit('all', 'select 0 as z', reduce => 'select 1 / z from partials')"), "reduce failed: division by zero", REDUCER),
    case("reduce avg over one column", Submit("select pgfan.submit('all', 'select 1 as one', reduce => 'avg')"), "reduce avg needs partials with two columns (sum, count), got one", REDUCER),
    // Result events a node (or anyone with its rights) ships.
    case("result event that is not JSON", ResultEv(Some("900000001"), "not json"), "pgfan: malformed result event", DeadLetter("reducer")),
    case("result event without a task id", ResultEv(Some("x"), r#"{"state":"done"}"#), "pgfan: malformed result event", DeadLetter("reducer")),
    case("result for an unknown task", ResultEv(Some("900000002"), r#"{"state":"done","rows":[]}"#), "pgfan: result for unknown task 900000002", DeadLetter("reducer")),
    case("result with an unknown state", ResultEv(None, r#"{"state":"maybe"}"#), "pgfan: result with invalid state 'maybe'", DeadLetter("reducer")),
    case("result whose rows are not a list", ResultEv(None, r#"{"state":"done","error":null,"columns":["x"],"types":["text"],"rows":5}"#), "pgfan: malformed result event", DeadLetter("reducer")),
    case("result with a NUL character", ResultEv(None, r#"{"state":"failed","error":"a\u0000b","columns":[],"types":[],"rows":[]}"#), "pgfan: malformed result event", DeadLetter("reducer")),
];

/// A configuration file that must keep its daemon from starting.
struct ConfigCase {
    kind: &'static str,
    daemon: &'static str,
    /// File name; the extension picks the format.
    file: &'static str,
    /// File text; None = the file does not exist.
    text: Option<&'static str>,
    /// Each must appear in the error, beside the file's path.
    want: &'static [&'static str],
}

const fn cfg(
    kind: &'static str,
    daemon: &'static str,
    file: &'static str,
    text: Option<&'static str>,
    want: &'static [&'static str],
) -> ConfigCase {
    ConfigCase {
        kind,
        daemon,
        file,
        text,
        want,
    }
}

#[rustfmt::skip]
const CONFIGS: &[ConfigCase] = &[
    cfg("string for an integer", "node", "node.toml", Some("[node]\nname = \"n1\"\nworkers = \"many\"\n"), &["line 3", "node.workers", "expected an integer"]),
    cfg("string for an integer (INI)", "node", "node.ini", Some("[node]\nname = n1\nworkers = lots\n"), &["line 3", "node.workers", "expected an integer"]),
    cfg("negative count", "node", "node.toml", Some("[node]\nname = \"n1\"\nworkers = -1\n"), &["line 3", "node.workers", "expected an unsigned"]),
    cfg("string for a boolean", "node", "node.toml", Some("[node]\nname = \"n1\"\nallow_sql = \"sometimes\"\n"), &["line 3", "node.allow_sql", "expected a boolean"]),
    cfg("number for a list", "node", "node.toml", Some("[node]\nname = \"n1\"\ncopy_tables = 5\n"), &["line 3", "node.copy_tables", "expected a list of names"]),
    cfg("bad duration", "node", "node.toml", Some("[node]\nname = \"n1\"\npoll_period = \"fast\"\n"), &["line 3", "node.poll_period", "invalid duration \"fast\""]),
    cfg("negative duration", "node", "node.toml", Some("[node]\nname = \"n1\"\nstop_timeout = -5\n"), &["line 3", "node.stop_timeout", "negative duration -5"]),
    cfg("unknown key", "node", "node.toml", Some("[node]\nname = \"n1\"\nworkerz = 2\n"), &["line 3", "unknown field `workerz`"]),
    cfg("missing required key", "node", "node.toml", Some("[node]\nworkers = 2\n"), &["missing configuration field \"node.name\""]),
    cfg("invalid node name", "node", "node.toml", Some("[node]\nname = \"Bad-Name\"\n"), &["name \"Bad-Name\" must be 1-48 characters"]),
    cfg("bad listen address", "node", "node.toml", Some("[node]\nname = \"n1\"\nmetrics_listen = \"nowhere\"\n"), &["metrics_listen \"nowhere\" is not an address"]),
    cfg("TOML syntax error", "node", "node.toml", Some("[node]\nname = \"n1\"\nworkers = = 2\n"), &["TOML parse error at line 3"]),
    cfg("unsupported file type", "node", "node.yaml", Some("node:\n  name: n1\n"), &["unsupported file type (use .toml or .ini)"]),
    cfg("missing file", "node", "absent.toml", None, &["not found"]),
    cfg("string for a list of tables", "relay", "relay.toml", Some("[relay]\nmaster = \"x\"\nproducers = \"shop\"\n"), &["line 3", "relay.producers", "expected a sequence"]),
    cfg("list for a duration", "relay", "relay.toml", Some("[relay]\nmaster = \"x\"\nstop_timeout = [1, 2]\n"), &["line 3", "relay.stop_timeout", "invalid type: sequence, expected a duration"]),
    cfg("boolean for a duration", "reducer", "reducer.toml", Some("[reducer]\nmaster = \"x\"\nexpire_period = true\n"), &["line 3", "reducer.expire_period", "invalid type: boolean"]),
    cfg("number for a database list", "ticker", "ticker.toml", Some("[ticker]\ndatabase_list = 7\n"), &["line 2", "ticker.database_list", "expected a list of names"]),
    cfg("unknown duration unit", "ticker", "ticker.toml", Some("[ticker]\nmaint_period = \"3 fortnights\"\n"), &["line 2", "ticker.maint_period", "invalid duration unit \"fortnights\""]),
    cfg("bad duration in pgqd.ini", "ticker", "pgqd.ini", Some("[pgqd]\nticker_period = soon\n"), &["line 2", "pgqd.ticker_period", "invalid duration \"soon\""]),
];

#[test]
fn the_corpus_has_at_least_30_distinct_kinds() {
    let kinds: Vec<&str> = PIPELINE
        .iter()
        .map(|c| c.kind)
        .chain(CONFIGS.iter().map(|c| c.kind))
        .collect();
    let distinct: HashSet<&str> = kinds.iter().copied().collect();
    assert_eq!(distinct.len(), kinds.len(), "each kind is listed once");
    assert!(kinds.len() >= 30, "{} kinds", kinds.len());
}

#[test]
fn bad_config_files_fail_the_check_and_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for c in CONFIGS {
        let path = dir.path().join(c.file);
        match c.text {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => assert!(!path.exists()),
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
            .args([c.daemon, "-c"])
            .arg(&path)
            .arg("--check-config")
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted: {stderr}", c.kind);
        assert!(out.stdout.is_empty(), "{}: {:?}", c.kind, out.stdout);
        assert!(
            stderr.contains(&path.display().to_string()),
            "{}: the error names the file: {stderr}",
            c.kind
        );
        for want in c.want {
            assert!(stderr.contains(want), "{}: {want:?} in {stderr}", c.kind);
        }
    }
}

#[test]
fn event_data_invariants_hold_on_the_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/event_data");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        seeds.len() >= 30,
        "{} seeds in {}",
        seeds.len(),
        dir.display()
    );
    seeds.sort();
    for seed in &seeds {
        // Every prefix too: truncation is what a fuzzer tries first, and it cuts escapes
        // and UTF-8 sequences in half.
        for end in 0..=seed.len() {
            invariants::check(&seed[..end]);
        }
    }
    for pair in seeds.windows(2) {
        invariants::check(&[&pair[0][..], b"&", &pair[1][..]].concat());
    }
}

fn configure(cfg: &mut NodeConfig) {
    cfg.copy_tables = vec!["public.items".into()];
    cfg.allow_call = vec!["public.add".into()];
    cfg.poll_period = Duration::from_millis(200);
    cfg.heartbeat_period = Duration::from_millis(200);
}

/// Nodes n1 and n2 with `items` (n2 already has row 7) and `public.add(int, int)`; n3 is
/// registered and disabled.
async fn topology() -> (Topology, Client) {
    let topo = Topology::start(2, configure)
        .await
        .expect("topology starts");
    for node in &topo.nodes {
        let c = pgfan::db::connect_client(&node.conninfo()).await.unwrap();
        c.batch_execute(
            "create table items (id integer primary key, name text);
             create table secrets (id integer primary key);
             create function add(a integer, b integer) returns integer language sql
                 as 'select a + b';",
        )
        .await
        .unwrap();
    }
    let n2 = pgfan::db::connect_client(&topo.nodes[1].conninfo())
        .await
        .unwrap();
    n2.batch_execute("insert into items values (7, 'seven')")
        .await
        .unwrap();
    let m = topo.master_client().await.unwrap();
    m.batch_execute("select pgfan.node_add('n3'); select pgfan.node_disable('n3');")
        .await
        .unwrap();
    (topo, m)
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> T {
    c.query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn push(m: &Client, ev_type: Option<&str>, data: &str, target: Option<&str>) -> i64 {
    one(
        m,
        "select pgq.insert_event('push_queue', $1, $2, $3, null, null, null)",
        &[&ev_type, &data, &target],
    )
    .await
}

async fn wait(m: &Client, job: i64) -> String {
    one(
        m,
        "select pgfan.wait($1, $2::text::interval)",
        &[&job, &PATIENCE],
    )
    .await
}

async fn result(m: &Client, job: i64) -> Vec<Value> {
    let state = wait(m, job).await;
    let error: Option<String> =
        one(m, "select error from pgfan.job where job_id = $1", &[&job]).await;
    assert_eq!(state, "done", "control job {job}: {error:?}");
    m.query("select * from pgfan.result($1)", &[&job])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What a case left behind: its push event (if it made one), its job, its result event.
#[derive(Default)]
struct Sent {
    ev: Option<i64>,
    job: Option<i64>,
    result_ev: Option<(i64, String)>,
}

/// The job that stays running while the bad inputs go by: its task waits on n1 for an
/// advisory lock that `lock` holds.
async fn running_job(topo: &Topology, m: &Client) -> (Client, i64, i64) {
    let lock = pgfan::db::connect_client(&topo.nodes[0].conninfo())
        .await
        .unwrap();
    lock.batch_execute("select pg_advisory_lock(4242)")
        .await
        .unwrap();
    let job: i64 = one(
        m,
        "select pgfan.submit('n1', 'select 42 as answer from pg_advisory_xact_lock(4242)')",
        &[],
    )
    .await;
    // Claimed on the master, waiting on the node: open at both ends.
    let waiting = "select exists (select 1 from pg_stat_activity
                    where wait_event_type = 'Lock' and query like '%advisory_xact_lock(4242)%')";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !one::<bool>(&lock, waiting, &[]).await {
        assert!(tokio::time::Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let task: i64 = one(
        m,
        "select task_id from pgfan.task where job_id = $1",
        &[&job],
    )
    .await;
    (lock, job, task)
}

async fn send(m: &Client, c: &Case, running: (i64, i64)) -> Sent {
    let mut sent = Sent::default();
    match c.input {
        Raw(ev_type, data, target) => sent.ev = Some(push(m, ev_type, data, target).await),
        Input::Huge => {
            let data = format!("sql=select+1+--+{}", "x".repeat(17 << 20));
            sent.ev = Some(push(m, SQL, &data, N1).await);
        }
        Submit(sql) => sent.job = Some(one(m, sql, &[]).await),
        Input::Replay => {
            let data = format!("job={}", running.0);
            sent.ev = Some(push(m, SQL, &data, None).await);
        }
        ResultEv(task, data) => {
            let task = task.map_or(running.1.to_string(), str::to_string);
            let ev = one(
                m,
                "select pgq.insert_event('pgfan_results', 'result', $1, $2, null, 'n1', null)",
                &[&data, &task],
            )
            .await;
            sent.result_ev = Some((ev, task));
        }
    }
    sent
}

/// Checks that case `c` ended with its error where it must show.
async fn check(m: &Client, c: &Case, sent: &Sent) {
    let job = match (sent.job, sent.ev, c.shows) {
        (Some(job), _, _) => Some(job),
        (None, Some(ev), Job(_)) => Some(
            one(
                m,
                "select job_id from pgfan.job where source_queue = 'push_queue' and source_ev_id = $1",
                &[&ev],
            )
            .await,
        ),
        _ => None,
    };
    let (source, dead) = match (c.shows, job) {
        (Job(source), Some(job)) => {
            assert_eq!(wait(m, job).await, "failed", "{}", c.kind);
            let error: String =
                one(m, "select error from pgfan.job where job_id = $1", &[&job]).await;
            assert!(error.contains(c.want), "{}: job error {error:?}", c.kind);
            let dead = "select source, error from pgfan.dead_letter where job_id = $1";
            (source, m.query(dead, &[&job]).await.unwrap())
        }
        (DeadLetter(source), _) => {
            let (ev, task) = match &sent.result_ev {
                Some((ev, task)) => (*ev, task.parse::<i64>().ok()),
                None => (sent.ev.unwrap(), None),
            };
            let dead = "select source, error from pgfan.dead_letter
                         where source = $1 and (ev_id = $2 or task_id = $3)";
            (
                Some(source),
                m.query(dead, &[&source, &ev, &task]).await.unwrap(),
            )
        }
        (Job(_), None) => unreachable!(),
    };
    let errors: Vec<(String, String)> = dead.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        errors
            .iter()
            .any(|(s, e)| source.is_none_or(|want| s == want) && e.contains(c.want)),
        "{}: want {:?} from {source:?} in the dead letters {errors:?}",
        c.kind,
        c.want
    );
}

#[tokio::test]
async fn every_bad_input_ends_as_a_clear_error_and_the_pipeline_keeps_moving() {
    let (topo, m) = topology().await;
    let (lock, running, running_task) = running_job(&topo, &m).await;
    let mut sent = Vec::new();
    for c in PIPELINE {
        sent.push(send(&m, c, (running, running_task)).await);
    }
    // Behind every bad input: work that must still be done, and done right.
    let all = one(&m, "select pgfan.run_on_all('select 1 as one', 'sum')", &[]).await;
    let call: i64 = one(
        &m,
        "select pgfan.submit('n2', call => 'public.add', args => array['40', '2'])",
        &[],
    )
    .await;
    let copy_ev = push(&m, Some("copy"), "action=ins&id=8&name=eight", Some("n2")).await;
    assert_eq!(result(&m, all).await, [json!({"one": 2})]);
    assert_eq!(result(&m, call).await, [json!({"add": 42})]);
    let copy = one(
        &m,
        "select job_id from pgfan.job where source_queue = 'push_queue' and source_ev_id = $1",
        &[&copy_ev],
    )
    .await;
    assert_eq!(wait(&m, copy).await, "done");
    // The job that ran all along was neither failed by its replayed event nor finished by
    // the forged results; released, it finishes with its own.
    let state: String = one(
        &m,
        "select state from pgfan.job where job_id = $1",
        &[&running],
    )
    .await;
    assert_eq!(
        state, "running",
        "its replayed submit event must not fail it"
    );
    lock.batch_execute("select pg_advisory_unlock(4242)")
        .await
        .unwrap();
    assert_eq!(result(&m, running).await, [json!({"answer": 42})]);

    for (c, s) in PIPELINE.iter().zip(&sent) {
        check(&m, c, s).await;
    }
    // Nothing lost: every push event became a job or, when it names no job of its own, a
    // dead letter; no job is left open.
    let mut evs: Vec<i64> = sent.iter().filter_map(|s| s.ev).collect();
    evs.push(copy_ev);
    let lost: Vec<i64> = m
        .query(
            "select ev from unnest($1::bigint[]) ev
              where not exists (select 1 from pgfan.job
                                 where source_queue = 'push_queue' and source_ev_id = ev)
                and not exists (select 1 from pgfan.dead_letter
                                 where source = 'relay' and ev_id = ev)",
            &[&evs],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lost, Vec::<i64>::new(), "push events with no trace");
    let open: i64 = one(
        &m,
        "select count(*) from pgfan.job where state in ('submitted', 'running')",
        &[],
    )
    .await;
    assert_eq!(open, 0, "no job is left open");
    let n2 = pgfan::db::connect_client(&topo.nodes[1].conninfo())
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = n2
        .query("select id, name from items order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(7, "seven".into()), (8, "eight".into())]);
    topo.shutdown().await.unwrap();
}
