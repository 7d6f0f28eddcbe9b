//! The classic Skytools push/pull setup, as the baseline of cases `delivery` and `latency`.
//!
//! A master cluster with the real PgQ extension and pgqd, and node clusters; on the master a
//! python3-pgq relay (`push_queue` → `pull_<node>` plus a job row, python/pushpull_relay.py)
//! and reducer (`results` → job done, python/pushpull_reducer.py); per node a
//! `pgq.RemoteConsumer` on its pull queue that applies the row in the node database with
//! pgq_ext's batch ledger and answers with a result event (python/pushpull_node.py).
//! Producers use the same call as for pgfan: `pgq.insert_event('push_queue', 'copy', data,
//! '<node>', ...)`. A trigger on the job table sends `NOTIFY job_done, '<job id>'` when the
//! reducer marks a job done, as pgfan's reducer sends `NOTIFY pgfan_job`, so both pipelines
//! are observed the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use pgfan::cluster::Cluster;
use pgfan::install::{self, Role};

use crate::rig::{self, KillOnDrop};

/// Database of the master cluster that holds the queues and the job table.
pub const MASTER_DB: &str = "master";
/// Database of each node cluster.
pub const NODE_DB: &str = "node";
/// Channel the job table's trigger notifies with the job id.
pub const DONE_CHANNEL: &str = "job_done";

/// Table the copy events fill on every node, pgfan's and the baseline's alike. `applied_at`
/// is stamped by the inserting transaction itself, so latency is read from the row instead
/// of from a poller's period.
pub const NODE_TABLE: &str = "create table t (
    id integer primary key,
    name text not null,
    applied_at timestamptz not null default clock_timestamp())";

const MASTER_SCHEMA: &str = "
create table job (
    job_id bigint primary key,
    node text not null,
    state text not null,
    done_by text,
    created_at timestamptz not null default clock_timestamp(),
    done_at timestamptz);
create function job_done_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('job_done', new.job_id::text);
    return null;
end $$;
create trigger job_done after update of state on job
    for each row when (new.state = 'done' and old.state <> 'done')
    execute function job_done_notify();
select pgq.create_queue('push_queue');
select pgq.register_consumer('push_queue', 'relay');
select pgq.create_queue('results');
select pgq.register_consumer('results', 'reducer');
";

/// A running baseline. Field order matters: the processes are killed before the clusters
/// they use are stopped and removed.
pub struct Baseline {
    procs: Vec<KillOnDrop>,
    logs: Vec<PathBuf>,
    pub master: Cluster,
    pub nodes: Vec<Cluster>,
}

impl Baseline {
    /// Starts a master and `n` node clusters (nodes n1..nN), pgqd with its defaults plus
    /// `pgqd_extra` ini lines, and the python consumers.
    pub async fn start(n: usize, pgqd_extra: &str) -> Result<Baseline> {
        let mut clusters = futures_util::future::try_join_all((0..=n).map(|_| rig::cluster()))
            .await
            .context("start the baseline's clusters")?;
        let master = clusters.remove(0);
        let m = rig::extension_db(&master, MASTER_DB).await?;
        m.batch_execute(MASTER_SCHEMA)
            .await
            .context("baseline master schema")?;
        for i in 1..=n {
            m.execute("select pgq.create_queue($1)", &[&format!("pull_n{i}")])
                .await?;
            m.execute(
                "select pgq.register_consumer($1, $2)",
                &[&format!("pull_n{i}"), &format!("node_n{i}")],
            )
            .await?;
        }
        for node in &clusters {
            let mut c = rig::create_db(node, NODE_DB).await?;
            // pgq_ext's batch ledger for RemoteConsumer; pgfan bundles it in PL/pgSQL (the
            // node role also adds pgfan_node's table, which the baseline leaves unused).
            install::install(&mut c, Role::Node)
                .await
                .context("install pgq_ext on a baseline node")?;
            c.batch_execute(NODE_TABLE).await?;
        }
        let mut b = Baseline {
            procs: Vec::new(),
            logs: Vec::new(),
            master,
            nodes: clusters,
        };
        b.procs
            .push(rig::start_pgqd(&b.master, &[MASTER_DB], pgqd_extra)?);
        b.logs.push(b.master.dir().join("pgqd.log"));
        let master_db = b.master_conninfo();
        b.spawn(
            "pushpull_relay",
            "relay",
            &[
                ("master_db", master_db.clone()),
                ("queue_name", "push_queue".into()),
                ("consumer_name", "relay".into()),
            ],
        )?;
        b.spawn(
            "pushpull_reducer",
            "reducer",
            &[
                ("master_db", master_db.clone()),
                ("queue_name", "results".into()),
                ("consumer_name", "reducer".into()),
            ],
        )?;
        for i in 1..=n {
            let node_db = b.node_conninfo(i - 1);
            b.spawn(
                "pushpull_node",
                &format!("node_n{i}"),
                &[
                    ("master_db", master_db.clone()),
                    ("node_db", node_db),
                    ("queue_name", format!("pull_n{i}")),
                    ("consumer_name", format!("node_n{i}")),
                    ("node_name", format!("n{i}")),
                ],
            )?;
        }
        Ok(b)
    }

    /// Writes `<job>.ini` (section = the script's service name) and starts the script on it.
    fn spawn(&mut self, script: &str, job: &str, keys: &[(&str, String)]) -> Result<()> {
        let dir = self.master.dir();
        let mut ini = format!("[{script}]\njob_name = {job}\n");
        for (k, v) in keys {
            ini.push_str(&format!("{k} = {v}\n"));
        }
        let path = dir.join(format!("{job}.ini"));
        std::fs::write(&path, ini)?;
        let log = dir.join(format!("{job}.log"));
        let path_arg = path.to_string_lossy().into_owned();
        self.procs.push(rig::spawn_python(
            &format!("{script}.py"),
            &[&path_arg],
            &log,
        )?);
        self.logs.push(log);
        Ok(())
    }

    /// libpq connection string of the master database.
    pub fn master_conninfo(&self) -> String {
        self.master.conninfo(MASTER_DB)
    }

    /// libpq connection string of node `i`'s database (0-based; node name n{i+1}).
    pub fn node_conninfo(&self, i: usize) -> String {
        self.nodes[i].conninfo(NODE_DB)
    }

    /// The last lines of every process's log, for an error message when the baseline stalls.
    pub fn log_tails(&self) -> String {
        self.logs
            .iter()
            .map(|p| format!("--- {}\n{}", p.display(), tail(p, 8)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
