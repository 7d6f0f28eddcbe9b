//! Ship: finished tasks go to the master's `pgfan_results` queue.
//!
//! Each round ships up to [`CHUNK`] unshipped tasks as ONE `results` event (docs/pipeline.md)
//! in one master transaction, commits it, and only then sets `shipped_at` on the node. A crash between the
//! two commits ships those results again; the reducer records each task once. The shipper
//! runs when the executor finished a task, every `poll_period`, and once more on stop.
//!
//! A round also stops at about [`ROUND_BYTES`] of result text (taking at least one result),
//! so that the daemon never holds 200 results of up to 16 MiB at once.

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::result::{map_large_blocks, release_free_memory, MAX_RESULT_BYTES, TRIM_ABOVE};
use super::NodeConfig;
use crate::db::SharedSession;
use crate::outage::{sleep_or_stop, Outage};

/// Results shipped per master transaction, at most.
const CHUNK: i64 = 200;

/// Result text one round reads, about: one result at the cap fits.
const ROUND_BYTES: i64 = MAX_RESULT_BYTES as i64;

/// The unshipped tasks of one round, with their result text and how many were candidates.
/// Sizes come cheap first (what a result takes on disk), so that only the candidates that
/// may fit are measured; a compressed result is measured as text, as it may be far larger
/// than it is on disk.
const ROUND: &str = "
with candidate as (
    select task_id, result
      from pgfan_node.task
     where shipped_at is null and state in ('done', 'failed', 'cancelled')
     order by task_id
     limit $1
), stored as (
    select task_id, result, count(*) over () as candidates,
           row_number() over w as k,
           sum(coalesce(pg_column_size(result), 0)) over w as stored_upto
      from candidate
    window w as (order by task_id)
), sized as (
    select task_id, candidates, row_number() over w as n,
           sum(case when pg_column_compression(result) is null
                    then coalesce(pg_column_size(result), 0)
                    else octet_length(result::text) end) over w as upto
      from stored
     where k = 1 or stored_upto <= $2
    window w as (order by task_id)
)
select t.task_id, t.job_id::text,
       coalesce(t.result, pgfan_node.empty_result(t.state, t.error))::text, s.candidates
  from sized s join pgfan_node.task t using (task_id)
 where s.n = 1 or s.upto <= $2
 order by t.task_id";

/// The master session is the daemon's one (shared with the claim and the heartbeat); the
/// node session is the shipper's own.
struct Sessions<'a> {
    master: &'a SharedSession,
    master_conninfo: String,
    /// The node's key for the doors (empty: the login decides).
    key: String,
    node: Client,
}

/// Ships until `stop` turns true, then makes a last attempt and returns.
pub async fn run(
    cfg: watch::Receiver<Arc<NodeConfig>>,
    master: Arc<SharedSession>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    map_large_blocks();
    let name = cfg.borrow().name.clone();
    let mut outage = Outage::new("node shipper", name.clone());
    let mut node: Option<Client> = None;
    loop {
        let mut pause = cfg.borrow().poll_period;
        match sweep(&cfg, &master, &mut node).await {
            Ok(n) => {
                outage.recovered();
                if n > 0 {
                    tracing::debug!(results = n, "Results shipped");
                    metrics::counter!("pgfan_node_results_shipped_total", "node" => name.clone())
                        .increment(n as u64);
                }
            }
            Err(err) => {
                node = None;
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

/// Ships every finished, unshipped task; returns how many.
async fn sweep(
    cfg: &watch::Receiver<Arc<NodeConfig>>,
    master: &SharedSession,
    node: &mut Option<Client>,
) -> Result<usize, tokio_postgres::Error> {
    let cfg = cfg.borrow().clone();
    let mut shipped = 0;
    loop {
        let client = match node.take() {
            Some(c) if !c.is_closed() => c,
            _ => crate::db::connect_client_to("node", &cfg.db).await?,
        };
        let mut s = Sessions {
            master,
            master_conninfo: cfg.master.clone(),
            key: super::door::key(&cfg).to_string(),
            node: client,
        };
        let round = ship_round(&mut s, &cfg.name).await?;
        *node = Some(s.node);
        shipped += round.shipped;
        if round.bytes > TRIM_ABOVE {
            // A session keeps buffers as large as the largest message it carried, for as
            // long as it lives: after large results, new ones are opened (the master's too,
            // which the claim then opens again).
            *node = None;
            master.reset().await;
            release_free_memory();
        }
        if !round.more {
            return Ok(shipped);
        }
    }
}

/// What a round did.
struct Round {
    shipped: usize,
    /// Result text it carried.
    bytes: usize,
    /// Whether unshipped results were left for another round.
    more: bool,
}

async fn ship_round(s: &mut Sessions<'_>, node_name: &str) -> Result<Round, tokio_postgres::Error> {
    let rows = s
        .node
        .query_typed(ROUND, &[(&CHUNK, Type::INT8), (&ROUND_BYTES, Type::INT8)])
        .await?;
    let Some(first) = rows.first() else {
        return Ok(Round {
            shipped: 0,
            bytes: 0,
            more: false,
        });
    };
    let candidates: i64 = first.get(3);
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let job_ids: Vec<Option<&str>> = rows.iter().map(|r| r.get(1)).collect();
    // Borrowed from the rows: the text is held once (and once more in the request).
    let results: Vec<&str> = rows.iter().map(|r| r.get(2)).collect();
    let bytes: usize = results.iter().map(|r| r.len()).sum();
    // One statement and one event for the chunk, through the node door that checks the
    // login may act as this node and ships only its own tasks, in task order.
    s.master
        .lock(&s.master_conninfo)
        .await?
        .query_typed_one(
            &super::door::keyed("pgfan.node_ship_batch($1, $2, $3, $4)", 5),
            &[
                (&node_name, Type::TEXT),
                (&ids, Type::INT8_ARRAY),
                (&job_ids, Type::TEXT_ARRAY),
                (&results, Type::TEXT_ARRAY),
                (&s.key, Type::TEXT),
            ],
        )
        .await?;
    drop(results);
    drop(job_ids);
    drop(rows);
    s.node
        .execute_typed(
            "update pgfan_node.task set shipped_at = now() where task_id = any($1)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await?;
    let shipped = ids.len();
    let more = (shipped as i64) < candidates || candidates == CHUNK;
    Ok(Round {
        shipped,
        bytes,
        more,
    })
}
