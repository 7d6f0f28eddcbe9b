//! `pgfan install`: idempotent, concurrent-safe, non-superuser, and extension-aware.

mod common;

use common::{cluster, Backend, TestDb};
use pgfan::install::{self, Outcome, Role};

/// Objects of the pgq/pgq_ext schemas, to check that a second install adds none.
async fn object_counts(client: &tokio_postgres::Client) -> (i64, i64) {
    let row = client
        .query_one(
            "select (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                      where n.nspname in ('pgq', 'pgq_ext')),
                    (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                      where n.nspname in ('pgq', 'pgq_ext'))",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn install_twice_is_a_no_op_the_second_time() {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    let first = install::install(&mut client, Role::Master).await.unwrap();
    assert_eq!(first.outcome("pgq"), Some(&Outcome::Installed));
    assert_eq!(first.outcome("pgq_ext"), Some(&Outcome::Installed));
    let before = object_counts(&client).await;
    let second = install::install(&mut client, Role::Master).await.unwrap();
    assert_eq!(second.outcome("pgq"), Some(&Outcome::UpToDate));
    assert_eq!(second.outcome("pgq_ext"), Some(&Outcome::UpToDate));
    assert_eq!(object_counts(&client).await, before);
}

#[tokio::test]
async fn changed_sql_is_reapplied_as_an_upgrade() {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    install::install(&mut client, Role::Master).await.unwrap();
    // An older pgfan recorded a different checksum: the bundled SQL is re-applied over it.
    client
        .batch_execute("update pgfan_meta.component set version = '0.0.1', checksum = 'old' where name = 'pgq'")
        .await
        .unwrap();
    client
        .batch_execute("select pgq.create_queue('kept')")
        .await
        .unwrap();
    let before = object_counts(&client).await;
    let report = install::install(&mut client, Role::Master).await.unwrap();
    assert_eq!(
        report.outcome("pgq"),
        Some(&Outcome::Upgraded {
            from: "0.0.1".into()
        })
    );
    assert_eq!(object_counts(&client).await, before);
    let kept: i64 = client
        .query_one(
            "select count(*) from pgq.queue where queue_name = 'kept'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "an upgrade keeps existing queues");
}

#[tokio::test]
async fn concurrent_installs_do_not_conflict() {
    let db = TestDb::empty().await;
    let runs = (0..4).map(|_| {
        let conninfo = db.conninfo.clone();
        tokio::spawn(async move {
            let mut client = pgfan::db::connect_client(&conninfo).await.unwrap();
            install::install(&mut client, Role::Master)
                .await
                .map(|r| r.outcome("pgq").cloned())
        })
    });
    let mut installed = 0;
    for run in runs.collect::<Vec<_>>() {
        match run
            .await
            .unwrap()
            .expect("install must not fail when run concurrently")
        {
            Some(Outcome::Installed) => installed += 1,
            Some(Outcome::UpToDate) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        installed, 1,
        "exactly one run installs, the others find it up to date"
    );
    let client = db.connect().await;
    let queues: i64 = client
        .query_one("select pgq.create_queue('q')::int8", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queues, 1);
}

#[tokio::test]
async fn two_install_processes_at_once_both_succeed() {
    let db = TestDb::empty().await;
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
            .args(["install", "--db", &db.conninfo])
            .output()
    };
    let (a, b) = tokio::join!(spawn(), spawn());
    let mut said = Vec::new();
    for out in [a.unwrap(), b.unwrap()] {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pgfan install failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        said.push(stdout);
    }
    said.sort();
    assert!(
        said[0].contains("pgq: installed (bundled") && said[1].contains("pgq: up to date (bundled"),
        "one process installs, the other finds it up to date: {said:?}"
    );
    let (functions, relations) = object_counts(&db.connect().await).await;
    let again = install::install(&mut db.connect().await, Role::Master)
        .await
        .unwrap();
    assert_eq!(again.outcome("pgq"), Some(&Outcome::UpToDate));
    assert_eq!(
        object_counts(&db.connect().await).await,
        (functions, relations)
    );
}

#[tokio::test]
async fn database_owner_without_superuser_can_install() {
    let admin = pgfan::db::connect_client(&cluster().conninfo("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(
            "do $$ begin
                if not exists (select 1 from pg_roles where rolname = 'app_owner') then
                    create role app_owner login createrole;
                end if;
             end $$",
        )
        .await
        .unwrap();
    admin
        .batch_execute("create database owned_by_app owner app_owner")
        .await
        .unwrap();
    let conninfo = cluster()
        .conninfo("owned_by_app")
        .replace("user=postgres", "user=app_owner");
    let mut client = pgfan::db::connect_client(&conninfo).await.unwrap();
    let report = install::install(&mut client, Role::Master).await.unwrap();
    assert_eq!(report.outcome("pgq"), Some(&Outcome::Installed));
    let q: i32 = client
        .query_one("select pgq.create_queue('owned')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(q, 1);
    let id: i64 = client
        .query_one("select pgq.insert_event('owned', 't', 'd')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(id > 0);
}

#[tokio::test]
async fn real_extension_is_used_when_present() {
    let db = TestDb::new(Backend::Extension).await;
    let mut client = db.connect().await;
    let report = install::install(&mut client, Role::Master).await.unwrap();
    assert!(
        matches!(report.outcome("pgq"), Some(Outcome::Extension { version }) if version == "3.5")
    );
    assert_eq!(report.outcome("pgq_ext"), Some(&Outcome::UpToDate));
    let bundled: i64 = client
        .query_one(
            "select count(*) from pgfan_meta.component where name = 'pgq'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bundled, 0,
        "the bundled core was not installed over the extension"
    );
}

#[tokio::test]
async fn node_role_installs_only_the_ledger() {
    let db = TestDb::empty().await;
    let mut client = db.connect().await;
    let report = install::install(&mut client, Role::Node).await.unwrap();
    assert_eq!(report.outcome("pgq_ext"), Some(&Outcome::Installed));
    assert_eq!(report.outcome("pgq"), None);
    let pgq: bool = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = 'pgq')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!pgq);
}

#[tokio::test]
async fn owner_without_createrole_installs_without_the_roles() {
    // A cluster of its own: the pgq roles must not exist yet.
    let cluster = tokio::task::spawn_blocking(pgfan::cluster::Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let admin = pgfan::db::connect_client(&cluster.conninfo("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute("create role plain_owner login")
        .await
        .unwrap();
    admin
        .batch_execute("create database plain owner plain_owner")
        .await
        .unwrap();
    let conninfo = cluster
        .conninfo("plain")
        .replace("user=postgres", "user=plain_owner");
    let mut client = pgfan::db::connect_client(&conninfo).await.unwrap();
    let report = install::install(&mut client, Role::Master).await.unwrap();
    assert_eq!(report.outcome("pgq"), Some(&Outcome::Installed));
    assert!(
        !report.roles_granted,
        "the report says the role grants were skipped"
    );
    assert!(
        !report.pgfan_roles_granted,
        "the report says pgfan's role grants were skipped"
    );
    assert!(
        report.to_string().contains("could not be created"),
        "{report}"
    );
    client
        .query_one("select pgq.create_queue('q')", &[])
        .await
        .unwrap();
    client
        .query_one("select pgq.register_consumer('q', 'c')", &[])
        .await
        .unwrap();
    let id: i64 = client
        .query_one("select pgq.insert_event('q', 't', 'd')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(id > 0);
}
