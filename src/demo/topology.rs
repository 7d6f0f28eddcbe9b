//! A whole pgfan installation on throwaway clusters: one master and N node clusters, with
//! the ticker, relay, reducer and one node daemon per node running in this process.
//!
//! The demo runs its workloads on it, and the end-to-end tests use it too, so both see
//! the same wiring an operator sets up with config files and systemd units.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::DemoError;
use crate::cluster::{Cluster, StopMode};
use crate::install::{self, Role};
use crate::node::NodeConfig;
use crate::reducer::ReducerConfig;
use crate::relay::RelayConfig;
use crate::signals::Control;
use crate::ticker::TickerConfig;

/// A daemon running as a task of this process.
struct Daemon {
    name: String,
    control: mpsc::UnboundedSender<Control>,
    handle: JoinHandle<Result<(), String>>,
}

impl Daemon {
    fn spawn<F>(
        name: impl Into<String>,
        run: impl FnOnce(mpsc::UnboundedReceiver<Control>) -> F,
    ) -> Daemon
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (control, rx) = mpsc::unbounded_channel();
        Daemon {
            name: name.into(),
            control,
            handle: tokio::spawn(run(rx)),
        }
    }

    /// Asks for a drain and waits for the daemon to exit.
    async fn stop(self) -> Result<(), DemoError> {
        let _ = self.control.send(Control::Stop);
        match self.handle.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DemoError::Daemon(format!("{}: {e}", self.name))),
            Err(e) => Err(DemoError::Daemon(format!("{}: {e}", self.name))),
        }
    }
}

/// One node: its cluster, its daemon's configuration, and the daemon while it runs.
pub struct NodeHost {
    pub name: String,
    pub cluster: Cluster,
    pub config: NodeConfig,
    daemon: Option<Daemon>,
}

impl NodeHost {
    /// libpq connection string of the node database.
    pub fn conninfo(&self) -> String {
        self.cluster.conninfo("postgres")
    }
}

/// The master, the nodes and the daemons.
pub struct Topology {
    pub master: Cluster,
    pub nodes: Vec<NodeHost>,
    daemons: Vec<Daemon>,
}

impl Topology {
    /// Starts a master and `n` node clusters (node names n1..nN), installs pgfan on all of
    /// them, registers the nodes with a 4×N-partition hash map, lets `configure` adjust
    /// each node's settings, and starts every daemon.
    pub async fn start(
        n: usize,
        configure: impl Fn(&mut NodeConfig),
    ) -> Result<Topology, DemoError> {
        Self::start_with_ticker(n, configure, |_| {}).await
    }

    /// Like [`Topology::start`], and `tune` adjusts the ticker's settings first (a soak test
    /// shortens `maint_period` so that rotation runs within seconds).
    pub async fn start_with_ticker(
        n: usize,
        configure: impl Fn(&mut NodeConfig),
        tune: impl FnOnce(&mut TickerConfig),
    ) -> Result<Topology, DemoError> {
        let starts: Vec<_> = (0..=n)
            .map(|_| tokio::task::spawn_blocking(Cluster::start))
            .collect();
        let mut clusters = Vec::new();
        for s in starts {
            clusters.push(s.await??);
        }
        let master = clusters.remove(0);
        let mut m = crate::db::connect_client(&master.conninfo("postgres")).await?;
        install::install(&mut m, Role::Master).await?;
        let mut nodes = Vec::new();
        for (i, cluster) in clusters.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            install::install(
                &mut crate::db::connect_client(&cluster.conninfo("postgres")).await?,
                Role::Node,
            )
            .await?;
            m.query_one("select pgfan.node_add($1)", &[&name]).await?;
            let mut config = NodeConfig::new(
                &name,
                &master.conninfo("postgres"),
                &cluster.conninfo("postgres"),
            );
            configure(&mut config);
            nodes.push(NodeHost {
                name,
                cluster,
                config,
                daemon: None,
            });
        }
        let parts = (4 * n).next_power_of_two() as i32;
        m.query_one("select pgfan.set_partitions($1)", &[&parts])
            .await?;
        let mut topo = Topology {
            master,
            nodes,
            daemons: Vec::new(),
        };
        topo.start_master_daemons(tune);
        for i in 0..n {
            topo.start_node(i);
        }
        wait_nodes_started(&m).await?;
        Ok(topo)
    }

    /// libpq connection string of the master database.
    pub fn master_conninfo(&self) -> String {
        self.master.conninfo("postgres")
    }

    /// A new session on the master.
    pub async fn master_client(&self) -> Result<Client, DemoError> {
        Ok(crate::db::connect_client(&self.master_conninfo()).await?)
    }

    fn start_master_daemons(&mut self, tune: impl FnOnce(&mut TickerConfig)) {
        let master = self.master_conninfo();
        let mut ticker = TickerConfig {
            base_connstr: format!("host=127.0.0.1 port={} user=postgres", self.master.port()),
            database_list: vec!["postgres".into()],
            ..TickerConfig::default()
        };
        tune(&mut ticker);
        self.daemons.push(Daemon::spawn("ticker", |rx| async move {
            crate::ticker::run(None, ticker, rx)
                .await
                .map_err(|e| e.to_string())
        }));
        let relay = RelayConfig::new(&master);
        self.daemons.push(Daemon::spawn("relay", |rx| async move {
            crate::relay::run(None, relay, rx)
                .await
                .map_err(|e| e.to_string())
        }));
        let mut reducer = ReducerConfig::new(&master);
        reducer.expire_period = Duration::from_millis(200);
        self.daemons.push(Daemon::spawn("reducer", |rx| async move {
            crate::reducer::run(None, reducer, rx)
                .await
                .map_err(|e| e.to_string())
        }));
    }

    /// Starts node `i`'s daemon (if it is not running).
    pub fn start_node(&mut self, i: usize) {
        let host = &mut self.nodes[i];
        if host.daemon.is_some() {
            return;
        }
        let cfg = host.config.clone();
        host.daemon = Some(Daemon::spawn(
            format!("node {}", host.name),
            |rx| async move {
                crate::node::run(None, cfg, rx)
                    .await
                    .map_err(|e| e.to_string())
            },
        ));
    }

    /// Stops node `i`'s daemon with a drain, as SIGTERM would.
    pub async fn stop_node(&mut self, i: usize) -> Result<(), DemoError> {
        match self.nodes[i].daemon.take() {
            Some(d) => d.stop().await,
            None => Ok(()),
        }
    }

    /// Kills node `i`'s daemon at once, as SIGKILL would: nothing is drained or shipped.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(d) = self.nodes[i].daemon.take() {
            d.handle.abort();
        }
    }

    /// Stops node `i`'s PostgreSQL server (the daemon keeps running and reconnecting).
    pub fn stop_node_server(&self, i: usize) -> Result<(), DemoError> {
        Ok(self.nodes[i].cluster.stop(StopMode::Fast)?)
    }

    /// Starts node `i`'s PostgreSQL server again.
    pub fn start_node_server(&self, i: usize) -> Result<(), DemoError> {
        Ok(self.nodes[i].cluster.restart()?)
    }

    /// Stops every daemon (nodes first, then reducer, relay, ticker); the clusters are
    /// removed when the topology is dropped.
    pub async fn shutdown(mut self) -> Result<(), DemoError> {
        let mut result = Ok(());
        for i in 0..self.nodes.len() {
            let r = self.stop_node(i).await;
            result = result.and(r);
        }
        while let Some(d) = self.daemons.pop() {
            let r = d.stop().await;
            result = result.and(r);
        }
        result
    }
}

/// Waits until every node registered on the master `m` has sent its first heartbeat: once
/// one has, a node whose daemon has not started gets no `all`/`any`/`hash` work
/// (pgfan.resolve_target), so a rig that starts daemons and submits at once waits here.
pub async fn wait_nodes_started(m: &Client) -> Result<(), DemoError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let silent: i64 = m
            .query_one(
                "select count(*) from pgfan.node where heartbeat is null",
                &[],
            )
            .await?
            .get(0);
        if silent == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(DemoError::Check(format!(
                "{silent} node daemon(s) sent no heartbeat within a minute"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
