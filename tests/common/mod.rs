//! Test harness: one throwaway cluster per test binary, a fresh database per test.
//!
//! Each test binary starts its cluster on first use; the cluster's reaper stops and deletes
//! it when the binary exits, however it exits. Tests isolate themselves by database, so they
//! can run in parallel on the shared cluster. Tests that restart servers or need several
//! clusters start their own with `Cluster::start()` (dropped = removed, also on panic).
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgfan::cluster::Cluster;
use pgfan::db::Session;
use pgfan::install::{self, Role};
use tokio_postgres::Client;

/// Which PgQ implementation a test database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// pgfan's bundled PL/pgSQL core (`sql/pgq`).
    Bundled,
    /// The real C/PL/pgSQL PgQ extension from Debian's postgresql-15-pgq3.
    Extension,
}

/// The cluster shared by all tests of this binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().expect("start the test cluster"))
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub conninfo: String,
    pub backend: Backend,
}

impl TestDb {
    /// A new empty database on the shared cluster.
    pub async fn empty() -> TestDb {
        Self::empty_on(cluster()).await
    }

    /// A new empty database on `cluster`.
    pub async fn empty_on(cluster: &Cluster) -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = pgfan::db::connect_client(&cluster.conninfo("postgres"))
            .await
            .expect("connect admin");
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        TestDb {
            conninfo: cluster.conninfo(&name),
            name,
            backend: Backend::Bundled,
        }
    }

    /// A new database with the queue core of `backend` installed as a pgfan master.
    pub async fn new(backend: Backend) -> TestDb {
        let mut db = Self::empty().await;
        db.backend = backend;
        let mut client = db.connect().await;
        if backend == Backend::Extension {
            // The extension creates the cluster-wide pgq roles without guarding against a
            // concurrent creation, so concurrent tests take turns.
            static CREATE_EXTENSION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
            let _turn = CREATE_EXTENSION.lock().await;
            client
                .batch_execute("create extension pgq")
                .await
                .expect("create extension pgq");
        }
        install::install(&mut client, Role::Master)
            .await
            .expect("pgfan install");
        db
    }

    /// A superuser client.
    pub async fn connect(&self) -> Client {
        pgfan::db::connect_client(&self.conninfo)
            .await
            .expect("connect")
    }

    /// A superuser session that also yields notices and notifications.
    pub async fn session(&self) -> Session {
        pgfan::db::connect(&self.conninfo).await.expect("connect")
    }

    /// A client logged in as `user` (trust authentication).
    pub async fn connect_as(&self, user: &str) -> Client {
        let conninfo = self
            .conninfo
            .replace("user=postgres", &format!("user={user}"));
        pgfan::db::connect_client(&conninfo)
            .await
            .expect("connect as user")
    }
}

/// Defines `mod bundled` and `mod extension`, each with one `#[tokio::test]` per named
/// `async fn name(backend: Backend)` of the enclosing file.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod bundled {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Bundled).await
                }
            )*
        }
        mod extension {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Extension).await
                }
            )*
        }
    };
}
