//! `pgfan node`: the daemon next to each node database.
//!
//! Four parts, each in its own task, all ended when [`run`] returns or is dropped:
//! - claim ([`claim`]): consumer of the master queue `pgfan_node_<name>`; copies each batch
//!   into `pgfan_node.task` exactly once (pgq_ext ledger) and wakes the executor;
//! - execute ([`executor`], `worker`): a pool of `workers` node connections running the
//!   tasks, lanes in order, each transactional task in one node transaction with its result;
//! - ship (`ship`): finished results to the master queue `pgfan_results`;
//! - heartbeat (`heartbeat`): `pgfan.node_heartbeat` and cancellations from the master.
//!
//! Claim, ship and heartbeat take turns on ONE master session ([`SharedSession`]), each
//! holding it for a transaction or a statement: a fleet of N nodes costs the master N
//! backends, not 3N.
//!
//! Before any of them start, the daemon takes the node's name ([`name_lock`]): a second
//! daemon for the same node waits as a standby instead of sharing the work.
//!
//! Control: Stop = stop claiming (between batches), let running tasks finish until
//! `stop_timeout`, cancel the rest (they run again after the restart), ship, exit. Quit =
//! exit at once (open transactions roll back). Reload = re-read and check the file, then
//! swap allow-lists, periods and the pool size; on a bad file keep the running one.

mod batch;
pub mod claim;
pub mod door;
mod execute;
pub mod executor;
mod guard;
mod heartbeat;
mod name_lock;
pub mod payload;
mod plan;
mod result;
mod settings;
mod ship;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ConfigError;
use crate::consumer::{self, ConsumerError, ConsumerOptions};
use crate::db::SharedSession;
use crate::signals::Control;
use executor::{Command, Executor, Handoff};

pub use result::TaskResult;
pub use settings::{NodeConfig, PoolKey};

/// How long the shipper and heartbeat get to finish after the executor drained.
const SHIP_GRACE: Duration = Duration::from_secs(10);

/// Errors that end the node daemon.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("claiming tasks failed: {0}")]
    Claim(#[from] ConsumerError),
    #[error("the node {0} ended unexpectedly")]
    Ended(&'static str),
    #[error("refusing to run tasks: {0}")]
    Unsafe(String),
    #[error("{0}")]
    NameTaken(String),
}

/// The claim consumer, restartable on reload.
struct Claim {
    stop: watch::Sender<bool>,
    set: JoinSet<Result<u64, ConsumerError>>,
}

impl Claim {
    fn start(cfg: &NodeConfig, master: Arc<SharedSession>, handoff: Arc<Handoff>) -> Claim {
        let mut opts = ConsumerOptions::new(cfg.master.clone(), cfg.queue(), cfg.queue());
        opts.poll_period = cfg.claim_poll_period;
        opts.shared = Some(master);
        opts.listen = !cfg.pooled;
        opts.node_key = cfg.pool_key.as_ref().map(|k| k.expose().to_string());
        // Through the node doors: the node's master login may read only its own queue.
        opts.node = Some(cfg.name.clone());
        let mut handler = claim::ClaimHandler::new(cfg, handoff);
        let (stop, stop_rx) = watch::channel(false);
        let mut set = JoinSet::new();
        set.spawn(async move { consumer::run(&opts, &mut handler, stop_rx).await });
        Claim { stop, set }
    }

    /// Stops after the batch in progress; gives up on it at `deadline` (it is redone later).
    async fn stop(&mut self, deadline: Instant) -> Result<(), ConsumerError> {
        let _ = self.stop.send(true);
        match tokio::time::timeout_at(deadline, self.set.join_next()).await {
            Ok(Some(Ok(Err(e)))) => Err(e),
            Ok(_) => Ok(()),
            Err(_) => {
                tracing::warn!(
                    "The claim of a batch did not finish in time; it is redone after the restart"
                );
                self.set.abort_all();
                Ok(())
            }
        }
    }
}

/// The parts of a running node daemon.
struct Daemon {
    cfg: watch::Sender<Arc<NodeConfig>>,
    handoff: Arc<Handoff>,
    master: Arc<SharedSession>,
    claim: Claim,
    commands: mpsc::UnboundedSender<Command>,
    executor: JoinSet<Result<(), String>>,
    background_stop: watch::Sender<bool>,
    background: JoinSet<()>,
}

impl Daemon {
    fn start(cfg: NodeConfig) -> Daemon {
        let handoff = Arc::new(Handoff::default());
        let ship_wake = Arc::new(Notify::new());
        // The daemon's one master session: the claim, the shipper and the heartbeat take
        // turns on it.
        // Named for the node, which is how the master sees the daemon is alive
        // (pgfan.connected_nodes). Pooled daemons all share one name: PgBouncer sets a
        // client's application_name on the server connection it lends whenever it differs
        // (a statement, a transaction), and their liveness is their heartbeat anyway.
        let session_name = match cfg.pooled {
            true => "pgfan pooled node".to_string(),
            false => format!("pgfan node {}", cfg.name),
        };
        let master = SharedSession::named("master", Some(session_name));
        let claim = Claim::start(&cfg, master.clone(), handoff.clone());
        let (cfg, cfg_rx) = watch::channel(Arc::new(cfg));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let mut executor = JoinSet::new();
        let exec = Executor::new(cfg_rx.clone(), handoff.clone(), ship_wake.clone());
        executor.spawn(exec.run(commands_rx));
        let (background_stop, stop_rx) = watch::channel(false);
        let mut background = JoinSet::new();
        background.spawn(ship::run(
            cfg_rx.clone(),
            master.clone(),
            ship_wake,
            stop_rx.clone(),
        ));
        background.spawn(heartbeat::run(
            cfg_rx,
            master.clone(),
            commands.clone(),
            stop_rx,
        ));
        Daemon {
            cfg,
            handoff,
            master,
            claim,
            commands,
            executor,
            background_stop,
            background,
        }
    }

    /// Stop: claim no more, drain the executor until `stop_timeout`, ship, end.
    async fn drain(mut self) -> Result<(), ConsumerError> {
        let deadline = Instant::now() + self.cfg.borrow().stop_timeout;
        tracing::info!("Node stopping: finishing running tasks");
        let claimed = self.claim.stop(deadline).await;
        let _ = self.commands.send(Command::Drain(deadline));
        self.executor.join_next().await;
        let _ = self.background_stop.send(true);
        let rest = async { while self.background.join_next().await.is_some() {} };
        if tokio::time::timeout(SHIP_GRACE, rest).await.is_err() {
            tracing::warn!("Results not shipped yet are shipped after the restart");
        }
        claimed
    }

    async fn reload(&mut self, path: Option<&Path>) {
        let Some(path) = path else {
            tracing::info!("No configuration file to reload");
            return;
        };
        let old = self.cfg.borrow().clone();
        let mut new = match NodeConfig::load(path) {
            Ok(new) => new,
            Err(err) => {
                tracing::error!(error = %err, "Configuration reload failed; keeping the running configuration");
                return;
            }
        };
        let fixed = new.restart_keys_changed(&old);
        if !fixed.is_empty() {
            tracing::warn!(keys = ?fixed, "These settings take effect only after a restart");
            (new.name, new.master, new.db) = (old.name.clone(), old.master.clone(), old.db.clone());
            (new.logfile, new.pidfile) = (old.logfile.clone(), old.pidfile.clone());
            new.metrics_listen = old.metrics_listen.clone();
        }
        if new == *old {
            tracing::info!(path = %path.display(), "Configuration unchanged");
            return;
        }
        // A new master address too: the claim's session is the one the shipper and the
        // heartbeat share, which follow the configuration's address.
        let restart_claim = new.claim_poll_period != old.claim_poll_period
            || new.master != old.master
            || new.pooled != old.pooled
            || new.pool_key != old.pool_key;
        self.cfg.send_replace(Arc::new(new.clone()));
        if restart_claim {
            if let Err(err) = self.claim.stop(Instant::now() + new.stop_timeout).await {
                tracing::warn!(error = %err, "The claim consumer had failed; starting it again");
            }
            self.claim = Claim::start(&new, self.master.clone(), self.handoff.clone());
        }
        tracing::info!(path = %path.display(), "Configuration reloaded");
    }
}

/// Runs the node daemon until Stop or Quit; `path` is re-read on reload.
pub async fn run(
    path: Option<PathBuf>,
    cfg: NodeConfig,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<(), NodeError> {
    cfg.check().map_err(NodeError::Invalid)?;
    tracing::info!(
        node = %cfg.name,
        workers = cfg.workers,
        allow_sql = cfg.allow_sql,
        task_login = cfg.task_role.as_deref().unwrap_or("the daemon's own (tasks are trusted)"),
        "Node started"
    );
    let Some(lock) = name_lock::take(&cfg, &mut control).await else {
        tracing::info!("Node stopped while waiting as a standby");
        return Ok(());
    };
    let mut daemon = Daemon::start(cfg);
    let mut keeper = JoinSet::new();
    keeper.spawn(lock.keep(daemon.cfg.subscribe()));
    loop {
        tokio::select! {
            Some(lost) = keeper.join_next() => {
                let err = NodeError::NameTaken(lost.unwrap_or_else(|e| e.to_string()));
                tracing::error!(error = %err, "Another daemon took this node's name; draining");
                let _ = daemon.drain().await;
                return Err(err);
            }
            msg = control.recv() => match msg {
                Some(Control::Reload) => daemon.reload(path.as_deref()).await,
                Some(Control::Quit) => {
                    tracing::info!("Node quit");
                    return Ok(());
                }
                Some(Control::Stop) | None => {
                    // A second signal during the drain quits at once.
                    tokio::select! {
                        drained = daemon.drain() => {
                            drained?;
                            tracing::info!("Node stopped");
                        }
                        () = quit_requested(&mut control) => tracing::info!("Node quit"),
                    }
                    return Ok(());
                }
            },
            Some(ended) = daemon.claim.set.join_next() => {
                let err = match ended {
                    Ok(Err(e)) => NodeError::Claim(e),
                    _ => NodeError::Ended("claim consumer"),
                };
                tracing::error!(error = %err, "Claiming stopped; draining the node");
                // Already ended; the drain only waits for the executor and the shipper.
                let _ = daemon.drain().await;
                return Err(err);
            }
            Some(ended) = daemon.executor.join_next() => {
                let err = match ended {
                    Ok(Err(msg)) => NodeError::Unsafe(msg),
                    _ => NodeError::Ended("executor"),
                };
                tracing::error!(error = %err, "Executing tasks stopped; draining the node");
                let _ = daemon.drain().await;
                return Err(err);
            }
            Some(_) = daemon.background.join_next() => return Err(NodeError::Ended("shipper or heartbeat")),
        }
    }
}

/// Resolves on Quit; never when the control channel closed (no more signals can come).
async fn quit_requested(control: &mut mpsc::UnboundedReceiver<Control>) {
    loop {
        match control.recv().await {
            Some(Control::Quit) => return,
            Some(_) => {}
            None => std::future::pending().await,
        }
    }
}
