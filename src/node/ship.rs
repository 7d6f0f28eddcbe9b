//! Ship: finished tasks go to the master's `pgfan_results` queue.
//!
//! Each round inserts result events for up to [`CHUNK`] unshipped tasks in one master
//! transaction, commits it, and only then sets `shipped_at` on the node. A crash between the
//! two commits ships those results again; the reducer records each task once. The shipper
//! runs when the executor finished a task, every `poll_period`, and once more on stop.

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::NodeConfig;
use crate::outage::{sleep_or_stop, Outage};

/// Results shipped per master transaction.
const CHUNK: i64 = 200;

struct Sessions {
    master: Client,
    node: Client,
}

/// Ships until `stop` turns true, then makes a last attempt and returns.
pub async fn run(
    cfg: watch::Receiver<Arc<NodeConfig>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.borrow().name.clone();
    let mut outage = Outage::new("node shipper", name.clone());
    let mut sessions: Option<Sessions> = None;
    loop {
        let mut pause = cfg.borrow().poll_period;
        match sweep(&cfg, &mut sessions).await {
            Ok(n) => {
                outage.recovered();
                if n > 0 {
                    tracing::debug!(results = n, "Results shipped");
                    metrics::counter!("pgfan_node_results_shipped_total", "node" => name.clone())
                        .increment(n as u64);
                }
            }
            Err(err) => {
                sessions = None;
                pause = outage.failed(&err);
            }
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = wake.notified() => {}
            // On stop: one more sweep, for what the drain finished.
            _ = sleep_or_stop(pause, &mut stop) => {}
        }
    }
}

async fn connect(cfg: &NodeConfig) -> Result<Sessions, tokio_postgres::Error> {
    Ok(Sessions {
        master: crate::db::connect_client(&cfg.master).await?,
        node: crate::db::connect_client(&cfg.db).await?,
    })
}

/// Ships every finished, unshipped task; returns how many.
async fn sweep(
    cfg: &watch::Receiver<Arc<NodeConfig>>,
    sessions: &mut Option<Sessions>,
) -> Result<usize, tokio_postgres::Error> {
    let cfg = cfg.borrow().clone();
    let s = match sessions.take() {
        Some(s) if !s.master.is_closed() && !s.node.is_closed() => s,
        _ => connect(&cfg).await?,
    };
    let s = sessions.insert(s);
    let mut shipped = 0;
    loop {
        let n = ship_chunk(s, &cfg.name).await?;
        shipped += n;
        if (n as i64) < CHUNK {
            return Ok(shipped);
        }
    }
}

async fn ship_chunk(s: &mut Sessions, node_name: &str) -> Result<usize, tokio_postgres::Error> {
    let rows = s
        .node
        .query_typed(
            "select task_id, job_id::text,
                    coalesce(result, pgfan_node.empty_result(state, error))::text
               from pgfan_node.task
              where shipped_at is null and state in ('done', 'failed', 'cancelled')
              order by task_id
              limit $1",
            &[(&CHUNK, Type::INT8)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let job_ids: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    let results: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    // One statement for the chunk, through the node door that checks the login may act
    // as this node and ships only its own tasks; the events get ids in task order.
    s.master
        .query_typed_one(
            "select pgfan.node_ship_results($1, $2, $3, $4)",
            &[
                (&node_name, Type::TEXT),
                (&ids, Type::INT8_ARRAY),
                (&job_ids, Type::TEXT_ARRAY),
                (&results, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    s.node
        .execute_typed(
            "update pgfan_node.task set shipped_at = now() where task_id = any($1)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await?;
    Ok(ids.len())
}
