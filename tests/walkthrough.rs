//! The README's walkthrough ("a master and two nodes by hand"), run exactly as written: the
//! shell block between its markers, with the environment it names, against three fresh
//! databases of this binary's throwaway cluster. What a new operator relies on: every
//! command there works as printed, with the least-privilege logins, and the job at its end
//! gives the right answer.

mod common;

use std::time::Duration;

use common::TestDb;

/// The shell block of the README between the walkthrough markers, without its fence.
fn walkthrough() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("<!-- walkthrough:begin -->")
        .expect("README has the walkthrough");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("the walkthrough ends");
    let block = &readme[start..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .expect("the walkthrough is one sh block")
        .0;
    body.to_string()
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written() {
    let [master, n1, n2] = [
        TestDb::empty().await,
        TestDb::empty().await,
        TestDb::empty().await,
    ];
    let cluster = common::cluster();
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_pgfan"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        cluster.bindir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walkthrough()])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port().to_string())
        .env("PGUSER", "postgres")
        .env("MASTER_DB", &master.name)
        .env("NODE1_DB", &n1.name)
        .env("NODE2_DB", &n2.name)
        .env_remove("PGFAN_DB")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the walkthrough finishes")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let logs: String = ["ticker", "relay", "reducer", "node-n1", "node-n2"]
        .iter()
        .map(|d| {
            let text = std::fs::read_to_string(dir.path().join(format!("{d}.log")));
            format!("--- {d}.log\n{}", text.unwrap_or_default())
        })
        .collect();
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}\n{logs}"
    );
    // The last job's answer: the four rows, counted over both nodes.
    assert!(
        stdout.lines().any(|l| l.trim() == "4"),
        "count over all nodes:\n{stdout}"
    );
    let mut total = 0;
    let mut on_each = Vec::new();
    for node in [&n1, &n2] {
        let n: i64 = node
            .connect()
            .await
            .query_one("select count(*) from items", &[])
            .await
            .unwrap()
            .get(0);
        on_each.push(n);
        total += n;
    }
    assert_eq!(total, 4, "each row once, on its hash's node: {on_each:?}");
    // Each node acts on the master through its own login.
    let roles: i64 = master
        .connect()
        .await
        .query_one(
            "select count(*) from pgfan.node where login_role in ('n1_login', 'n2_login')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 2);
}
