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
    let mut beats = Beats {
        next: Instant::now(),
        reported: None,
    };
    loop {
        let current = cfg.borrow().clone();
        let mut pause = current.poll_period;
        match round(&current, &master, &mut node, &mut beats, &executor).await {
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
    beats: &mut Beats,
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
    if beats.due(cfg) {
        beat(&*master.lock(&cfg.master).await?, cfg).await?;
        beats.next = Instant::now() + cfg.heartbeat_period;
        beats.reported = Some(cfg.workers);
    }
    Ok(())
}

/// When a heartbeat is due.
struct Beats {
    next: Instant,
    /// The workers the last beat reported.
    reported: Option<usize>,
}

impl Beats {
    /// Every `heartbeat_period`; but a pooled daemon whose claim looks at least as often
    /// beats only at start and when what it reports changed: each look refreshes the
    /// heartbeat, and a beat more would cost every idle node a second transaction.
    fn due(&self, cfg: &NodeConfig) -> bool {
        if cfg.pooled && cfg.claim_poll_period <= cfg.heartbeat_period {
            return self.reported != Some(cfg.workers);
        }
        Instant::now() >= self.next
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_pooled_daemon_beats_at_start_and_when_its_report_changes() {
        let mut cfg = NodeConfig::new("n1", "", "");
        let later = Instant::now() + Duration::from_secs(3600);
        let fresh = Beats {
            next: later,
            reported: None,
        };
        let beaten = Beats {
            next: Instant::now(),
            reported: Some(cfg.workers),
        };
        // Direct: by the period alone.
        assert!(!fresh.due(&cfg));
        assert!(beaten.due(&cfg));
        cfg.pooled = true;
        cfg.claim_poll_period = Duration::from_secs(20);
        assert!(fresh.due(&cfg), "the first beat");
        assert!(!beaten.due(&cfg), "the looks refresh it");
        cfg.workers += 1;
        assert!(beaten.due(&cfg), "a reload changed the workers");
        // Looks rarer than beats: the period again.
        cfg.workers -= 1;
        cfg.claim_poll_period = cfg.heartbeat_period * 2;
        assert!(beaten.due(&cfg));
    }
}
