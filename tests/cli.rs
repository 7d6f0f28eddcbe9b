//! The operator CLI (`pgfan submit`, `job`, `node`, `dead-letter`) against a running
//! pipeline, as an operator types it.

use std::time::Duration;

use pgfan::demo::Topology;

async fn pgfan(topo: &Topology, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(args)
        .env("PGFAN_DB", topo.master_conninfo())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(topo: &Topology, args: &[&str]) -> String {
    let (success, out, err) = pgfan(topo, args).await;
    assert!(success, "pgfan {args:?} failed: {out}{err}");
    out
}

#[tokio::test]
async fn operator_commands_drive_the_pipeline() {
    let topo = Topology::start(2, |cfg| {
        cfg.poll_period = Duration::from_millis(200);
    })
    .await
    .unwrap();
    let out = ok(
        &topo,
        &[
            "submit",
            "--all",
            "--sql",
            "select 20 + 1 as n",
            "--reduce",
            "sum",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.trim(), r#"{"n":42}"#);
    let out = ok(
        &topo,
        &[
            "submit",
            "--node",
            "n1",
            "--sql",
            "select 'a b' as s, 1 as n",
            "--wait",
        ],
    )
    .await;
    assert!(out.contains("n | s"), "{out}");
    assert!(out.contains("1 | a b"), "{out}");

    // A failing job: a clear error and exit code, a dead letter, and a replay once fixed.
    let (success, _, err) = pgfan(
        &topo,
        &[
            "submit",
            "--node",
            "n2",
            "--sql",
            "select count(*) as c from later",
            "--wait",
        ],
    )
    .await;
    assert!(!success);
    // One line, the state said once: "error: job 3 failed: 1 of 1 tasks failed: n2: ...".
    assert!(err.starts_with("error: job "), "{err}");
    assert!(err.contains(" failed: 1 of 1 tasks failed: n2: "), "{err}");
    assert!(
        !err.contains("failed: failed") && err.contains("later"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let list = ok(&topo, &["dead-letter", "list"]).await;
    let id = list.split_whitespace().next().unwrap().to_string();
    assert!(list.contains("node") && list.contains("later"), "{list}");
    let n2 = pgfan::db::connect_client(&topo.nodes[1].conninfo())
        .await
        .unwrap();
    n2.batch_execute("create table later (v int)")
        .await
        .unwrap();
    let replayed = ok(&topo, &["dead-letter", "replay", &id]).await;
    assert!(replayed.contains("1 failed task(s) of job"), "{replayed}");
    let job = replayed
        .split("of job ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let m = topo.master_client().await.unwrap();
    let state: String = m
        .query_one(
            "select pgfan.wait($1::bigint, '60 s')",
            &[&job.parse::<i64>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "done");
    let show = ok(&topo, &["job", "show", &job]).await;
    assert!(
        show.contains("done: 1 of 1 done") && show.contains("(1 row)"),
        "{show}"
    );
    let (again, _, err) = pgfan(&topo, &["dead-letter", "replay", &id]).await;
    assert!(!again && err.contains("was replayed"), "{err}");

    // Nodes
    ok(&topo, &["node", "drain", "n2"]).await;
    let nodes = ok(&topo, &["node", "list"]).await;
    assert!(
        nodes.contains("n1")
            && nodes
                .lines()
                .any(|l| l.starts_with("n2") && l.contains("draining")),
        "{nodes}"
    );
    let out = ok(
        &topo,
        &[
            "submit",
            "--all",
            "--sql",
            "select 1 as one",
            "--reduce",
            "count",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(
        out.trim(),
        r#"{"count":1}"#,
        "a draining node gets no `all` work"
    );
    let (success, _, err) = pgfan(&topo, &["node", "disable", "n9"]).await;
    assert!(!success && err.contains("unknown node n9"), "{err}");

    // Cancel
    let job = ok(
        &topo,
        &["submit", "--node", "n1", "--sql", "select pg_sleep(30)"],
    )
    .await;
    let job = job.trim();
    assert_eq!(ok(&topo, &["job", "cancel", job]).await.trim(), "cancelled");
    assert_eq!(
        ok(&topo, &["job", "cancel", job]).await.trim(),
        "the job had already ended"
    );
    topo.shutdown().await.unwrap();
}

/// `pgfan consume --print` until its first event, then SIGTERM; whether its consumer is
/// still registered afterwards.
async fn consume_once(topo: &Topology, extra: &[&str]) -> bool {
    use tokio::io::AsyncBufReadExt;
    let master = topo.master_client().await.unwrap();
    master
        .batch_execute("select pgq.create_queue('cli_q')")
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(["consume", "--print", "--queue", "cli_q"])
        .args(extra)
        .env("PGFAN_DB", topo.master_conninfo())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Events reach a consumer registered before them: insert until one is printed.
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            master
                .batch_execute(
                    "select pgq.insert_event('cli_q', 't', 'd'); select pgq.force_tick('cli_q')",
                )
                .await
                .unwrap();
            tokio::select! {
                line = lines.next_line() => break line.unwrap().unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    })
    .await
    .expect("consume --print printed an event");
    assert!(line.contains("\"ev_type\":\"t\""), "{line}");
    let pid = child.id().unwrap() as i32;
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(child.wait().await.unwrap().success());
    let registered: bool = master
        .query_one(
            "select exists (select 1 from pgq.get_consumer_info('cli_q', 'pgfan_consume'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    master
        .batch_execute("select pgq.drop_queue('cli_q', true)")
        .await
        .unwrap();
    registered
}

#[tokio::test]
async fn consume_print_leaves_nothing_registered_unless_asked() {
    let topo = Topology::start(1, |_| {}).await.unwrap();
    assert!(!consume_once(&topo, &[]).await, "unregistered on exit");
    assert!(
        consume_once(&topo, &["--keep"]).await,
        "--keep stays registered"
    );
    topo.shutdown().await.unwrap();
}
