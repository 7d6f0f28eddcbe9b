//! A pgfan installation for cases 6, 7 and 9: a master cluster with the ticker, relay and
//! reducer running in this process, node daemons added one by one, and a session that
//! submits jobs and waits for their `NOTIFY pgfan_job`.
//!
//! Like `pgfan::demo::Topology`, but the clusters get the benchmark settings
//! ([`rig::SETTINGS`], plus any extra ones a case needs) so the report's settings line holds
//! for these cases too, and node databases need not each have a cluster of their own (case 9
//! puts 100 of them on 3 clusters).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pgfan::cluster::Cluster;
use pgfan::install::{self, Role};
use pgfan::node::NodeConfig;
use pgfan::reducer::ReducerConfig;
use pgfan::relay::RelayConfig;
use pgfan::signals::Control;
use pgfan::ticker::TickerConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::AsyncMessage;

use crate::rig;

/// A daemon running as a task of this process; aborted if dropped without [`Daemon::stop`],
/// so a failing case leaves no daemon behind talking to removed clusters.
struct Daemon {
    name: String,
    control: mpsc::UnboundedSender<Control>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Daemon {
    fn spawn<F>(name: &str, run: impl FnOnce(mpsc::UnboundedReceiver<Control>) -> F) -> Daemon
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (control, rx) = mpsc::unbounded_channel();
        Daemon {
            name: name.to_string(),
            control,
            handle: Some(tokio::spawn(run(rx))),
        }
    }

    /// Asks for a drain (as SIGTERM does) and waits for the daemon to exit.
    async fn stop(mut self) -> Result<()> {
        let _ = self.control.send(Control::Stop);
        match self.handle.take() {
            Some(h) => match h.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => bail!("daemon {}: {e}", self.name),
                Err(e) => bail!("daemon {}: {e}", self.name),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// The master with its three daemons, and the node daemons started on it.
pub struct Pipeline {
    // Declared before `master`: dropped (aborted) before the cluster goes away.
    nodes: Vec<Daemon>,
    daemons: Vec<Daemon>,
    pub master: Cluster,
}

/// A cluster with the benchmark settings plus `extra`.
pub async fn cluster_with(extra: &[(&'static str, &'static str)]) -> Result<Cluster> {
    let mut settings = rig::SETTINGS.to_vec();
    settings.extend_from_slice(extra);
    Ok(tokio::task::spawn_blocking(move || Cluster::start_with(&settings)).await??)
}

/// Installs pgfan's node schema into database `db` of `cluster` (`pgfan install --role node`).
pub async fn install_node(cluster: &Cluster, db: &str) -> Result<()> {
    let mut c = rig::connect(&cluster.conninfo(db)).await?;
    install::install(&mut c, Role::Node)
        .await
        .with_context(|| format!("install --role node on {db}"))?;
    Ok(())
}

impl Pipeline {
    /// Starts a master cluster (benchmark settings plus `extra`), installs pgfan and starts
    /// the ticker, relay and reducer with their default settings.
    pub async fn start(extra: &[(&'static str, &'static str)]) -> Result<Pipeline> {
        let master = cluster_with(extra).await?;
        let mut c = rig::connect(&master.conninfo("postgres")).await?;
        install::install(&mut c, Role::Master).await?;
        let conninfo = master.conninfo("postgres");
        let ticker = TickerConfig {
            base_connstr: format!("host=127.0.0.1 port={} user=postgres", master.port()),
            database_list: vec!["postgres".into()],
            ..TickerConfig::default()
        };
        let relay = RelayConfig::new(&conninfo);
        let reducer = ReducerConfig::new(&conninfo);
        let daemons = vec![
            Daemon::spawn("ticker", |rx| async move {
                pgfan::ticker::run(None, ticker, rx)
                    .await
                    .map_err(|e| e.to_string())
            }),
            Daemon::spawn("relay", |rx| async move {
                pgfan::relay::run(None, relay, rx)
                    .await
                    .map_err(|e| e.to_string())
            }),
            Daemon::spawn("reducer", |rx| async move {
                pgfan::reducer::run(None, reducer, rx)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ];
        Ok(Pipeline {
            nodes: Vec::new(),
            daemons,
            master,
        })
    }

    /// libpq connection string of the master database.
    pub fn master_conninfo(&self) -> String {
        self.master.conninfo("postgres")
    }

    /// A node daemon's default configuration for node `name` in database `db`.
    pub fn node_config(&self, name: &str, node_conninfo: &str) -> NodeConfig {
        NodeConfig::new(name, &self.master_conninfo(), node_conninfo)
    }

    /// Starts a node daemon in this process.
    pub fn start_node(&mut self, cfg: NodeConfig) {
        let name = format!("node {}", cfg.name);
        self.nodes.push(Daemon::spawn(&name, |rx| async move {
            pgfan::node::run(None, cfg, rx)
                .await
                .map_err(|e| e.to_string())
        }));
    }

    /// Waits until every registered node has sent a heartbeat (see
    /// `pgfan::demo::wait_nodes_started`).
    pub async fn wait_started(&self) -> Result<()> {
        let m = pgfan::db::connect_client(&self.master_conninfo()).await?;
        Ok(pgfan::demo::wait_nodes_started(&m).await?)
    }

    /// Stops every daemon with a drain: nodes first, then reducer, relay, ticker.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut result = Ok(());
        for d in self.nodes.drain(..).chain(self.daemons.drain(..).rev()) {
            let r = d.stop().await;
            result = result.and(r);
        }
        result
    }
}

/// A master session that submits jobs and waits for their completion notice.
pub struct Jobs {
    session: pgfan::db::Session,
}

impl Jobs {
    /// Opens a session on the master listening on `pgfan_job`.
    pub async fn connect(master: &str) -> Result<Jobs> {
        let session = pgfan::db::connect(master).await?;
        session.client.batch_execute("listen pgfan_job").await?;
        Ok(Jobs { session })
    }

    /// The session, for plain queries.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.session.client
    }

    /// Runs `submit` (a single statement returning the job id, committed on its own) and
    /// waits for the reducer's `NOTIFY pgfan_job, '<job>'`, sent in the transaction that
    /// finishes the job, so its result is readable when the notice arrives. Returns the job
    /// id and the time from sending the submit to the notice. Fails unless the job is done.
    pub async fn run(
        &mut self,
        submit: &str,
        params: &[&(dyn ToSql + Sync)],
        limit: Duration,
    ) -> Result<(i64, Duration)> {
        // Notices of earlier jobs must not end this wait.
        while self.session.messages.try_recv().is_ok() {}
        let start = Instant::now();
        let job: i64 = self.session.client.query_one(submit, params).await?.get(0);
        let payload = job.to_string();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.session.messages.recv()).await {
                Ok(Some(AsyncMessage::Notification(n))) if n.payload() == payload => break,
                Ok(Some(_)) => {}
                Ok(None) => bail!("master session closed while waiting for job {job}"),
                Err(_) => bail!(
                    "job {job} not finished after {limit:?}: {}",
                    self.summary(job).await?
                ),
            }
        }
        let elapsed = start.elapsed();
        let state: String = self
            .session
            .client
            .query_one("select state from pgfan.job where job_id = $1", &[&job])
            .await?
            .get(0);
        if state != "done" {
            bail!("job {job} is {state}: {}", self.summary(job).await?);
        }
        Ok((job, elapsed))
    }

    async fn summary(&self, job: i64) -> Result<String> {
        let row = self
            .session
            .client
            .query_one(
                "select pgfan.job_summary($1), (select string_agg(distinct error, '; ')
                                                  from pgfan.task where job_id = $1)",
                &[&job],
            )
            .await?;
        let (summary, errors): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        Ok(format!(
            "{}{}",
            summary.unwrap_or_default(),
            errors.map(|e| format!(" ({e})")).unwrap_or_default()
        ))
    }
}

/// Where a finished job's time went, from the timestamps the pipeline records (each is the
/// start of the transaction that wrote it, so the steps are approximate): submit → routed
/// (ticker + relay pickup), routed → last task claimed, → last task finished on the node,
/// → last result recorded, → job finished.
pub async fn breakdown(master: &tokio_postgres::Client, job: i64) -> Result<String> {
    let r = master
        .query_one(
            "select array[extract(epoch from j.routed_at - j.submitted_at),
                          extract(epoch from max(t.claimed_at) - j.routed_at),
                          extract(epoch from max(t.finished_at) - max(t.claimed_at)),
                          extract(epoch from j.finished_at - max(t.finished_at)),
                          extract(epoch from j.finished_at - j.submitted_at)]::float8[]
               from pgfan.job j join pgfan.task t using (job_id)
              where j.job_id = $1
              group by j.job_id",
            &[&job],
        )
        .await?;
    let v: Vec<f64> = r
        .get::<_, Vec<Option<f64>>>(0)
        .into_iter()
        .map(|x| x.map_or(f64::NAN, |s| s * 1000.0))
        .collect();
    if v.len() != 5 {
        bail!("breakdown of job {job}: {v:?}");
    }
    Ok(format!(
        "submit→routed {:.0} ms, routed→last claimed {:.0} ms, last claimed→last result recorded {:.0} ms, →job finished {:.0} ms (server total {:.0} ms)",
        v[0], v[1], v[2], v[3], v[4]
    ))
}
