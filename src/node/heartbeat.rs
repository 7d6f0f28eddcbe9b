//! The node's line to the master besides its queue: heartbeats and cancellations.
//!
//! Every `heartbeat_period` it calls `pgfan.node_heartbeat(name, workers, version)`. Every
//! `poll_period` it asks `pgfan.cancelled_tasks(name, ids)` about the node's unfinished
//! tasks (claimed or running) and passes the cancelled ones to the executor.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::executor::Command;
use super::NodeConfig;
use crate::db::SharedSession;
use crate::outage::{sleep_or_stop, Outage};

/// Runs until `stop` turns true. The master session is the daemon's one, shared with the
/// claim and the shipper; the node session is its own.
pub async fn run(
    cfg: watch::Receiver<Arc<NodeConfig>>,
    master: Arc<SharedSession>,
    executor: mpsc::UnboundedSender<Command>,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.borrow().name.clone();
    let mut outage = Outage::new("node heartbeat", name);
    let mut node: Option<Client> = None;
    let mut next_beat = Instant::now();
    loop {
        let current = cfg.borrow().clone();
        let mut pause = current.poll_period;
        match round(&current, &master, &mut node, &mut next_beat, &executor).await {
            Ok(()) => outage.recovered(),
            Err(err) => {
                node = None;
                pause = outage.failed(&err);
            }
        }
        if sleep_or_stop(pause, &mut stop).await {
            return;
        }
    }
}

async fn round(
    cfg: &NodeConfig,
    master: &SharedSession,
    node: &mut Option<Client>,
    next_beat: &mut Instant,
    executor: &mpsc::UnboundedSender<Command>,
) -> Result<(), tokio_postgres::Error> {
    let client = match node.take() {
        Some(c) if !c.is_closed() => c,
        _ => crate::db::connect_client_to("node", &cfg.db).await?,
    };
    let client = node.insert(client);
    let cancelled = cancelled_tasks(cfg, master, client).await?;
    if !cancelled.is_empty() {
        // The executor is gone only when the daemon is stopping.
        let _ = executor.send(Command::Cancel(cancelled));
    }
    if Instant::now() >= *next_beat {
        beat(&*master.lock(&cfg.master).await?, cfg).await?;
        *next_beat = Instant::now() + cfg.heartbeat_period;
    }
    Ok(())
}

async fn beat(master: &Client, cfg: &NodeConfig) -> Result<(), tokio_postgres::Error> {
    let workers = i32::try_from(cfg.workers).unwrap_or(i32::MAX);
    // Unnamed statements (one round trip each) here: outside a transaction a pooler in
    // transaction mode may run a named statement's parse and execution on different
    // server connections.
    master
        .query_typed(
            &super::door::keyed("pgfan.node_heartbeat($1, $2, $3)", 4),
            &[
                (&cfg.name, Type::TEXT),
                (&workers, Type::INT4),
                (&crate::VERSION, Type::TEXT),
                (&super::door::key(cfg), Type::TEXT),
            ],
        )
        .await?;
    Ok(())
}

/// The node's unfinished tasks that were cancelled on the master.
async fn cancelled_tasks(
    cfg: &NodeConfig,
    master: &SharedSession,
    node: &Client,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let open: Vec<i64> = node
        .query(
            "select task_id from pgfan_node.task where state in ('claimed', 'running')",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if open.is_empty() {
        return Ok(open);
    }
    let rows = master
        .lock(&cfg.master)
        .await?
        .query_typed(
            &super::door::keyed("pgfan.cancelled_tasks($1, $2)", 3),
            &[
                (&cfg.name, Type::TEXT),
                (&open, Type::INT8_ARRAY),
                (&super::door::key(cfg), Type::TEXT),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
