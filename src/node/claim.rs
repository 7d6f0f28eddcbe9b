//! Claim: the node's pull batches become rows of `pgfan_node.task`, exactly once.
//!
//! A [`BatchHandler`] on the master's queue `pgfan_node_<node>`. It collects the batch's
//! events and, at the end of the batch, opens a transaction on the NODE database: if the
//! pgq_ext ledger already has the batch it skips the inserts, otherwise it inserts one task
//! row per task of the events (a `tasks` event carries many, an event of the previous
//! format one; `on conflict (task_id) do nothing`) and records the batch; commit. Then,
//! still in the master transaction the framework commits together with `finish_batch`, it
//! calls `pgfan.tasks_claimed`. A crash before the node commit leaves nothing; a crash after
//! it redoes the batch, which the ledger skips: the tasks exist once either way.

use std::sync::Arc;

use tokio_postgres::{Client, Transaction};

use super::executor::Handoff;
use super::payload::{claim_rows_of, ClaimRow};
use super::worker::Task;
use super::NodeConfig;
use crate::consumer::{BatchHandler, BatchRef, HandlerError, RetryEvent};
use crate::pgq::Event;

/// The claim handler of one node.
pub struct ClaimHandler {
    node_name: String,
    consumer: String,
    node_conninfo: String,
    node: Option<Client>,
    /// Events of the batch in progress (the framework may deliver them in chunks).
    pending: Vec<Event>,
    pending_batch: Option<i64>,
    /// Told after every batch that was claimed: the executor starts its new tasks.
    handoff: Arc<Handoff>,
}

impl ClaimHandler {
    pub fn new(cfg: &NodeConfig, handoff: Arc<Handoff>) -> ClaimHandler {
        ClaimHandler {
            node_name: cfg.name.clone(),
            consumer: cfg.queue(),
            node_conninfo: cfg.db.clone(),
            node: None,
            pending: Vec::new(),
            pending_batch: None,
            handoff,
        }
    }

    async fn node(&mut self) -> Result<&mut Client, tokio_postgres::Error> {
        let client = match self.node.take() {
            Some(c) if !c.is_closed() => c,
            _ => crate::db::connect_client_to("node", &self.node_conninfo).await?,
        };
        Ok(self.node.insert(client))
    }

    /// The batch's events, or none when they belong to another (failed) attempt.
    fn take_batch(&mut self, batch: BatchRef) -> Vec<Event> {
        let events = std::mem::take(&mut self.pending);
        match self.pending_batch.take() {
            Some(id) if id == batch.batch_id => events,
            _ => Vec::new(),
        }
    }

    /// Inserts the tasks unless the ledger has the batch; returns the runnable tasks it
    /// inserted, None when the ledger had the batch.
    async fn claim_on_node(
        &mut self,
        batch_id: i64,
        rows: &[ClaimRow],
    ) -> Result<Option<Vec<Task>>, tokio_postgres::Error> {
        let consumer = self.consumer.clone();
        let node = self.node().await?;
        let tx = node.transaction().await?;
        if crate::ledger::batch_done(&tx, &consumer, batch_id).await? {
            tx.commit().await?;
            return Ok(None);
        }
        let claimed = insert_tasks(&tx, rows).await?;
        crate::ledger::mark_batch_done(&tx, &consumer, batch_id).await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }
}

impl BatchHandler for ClaimHandler {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        // A new batch, or the same batch redone after a failure, starts from scratch.
        let restarted = match (self.pending.last(), events.first()) {
            (Some(last), Some(first)) => first.id <= last.id,
            _ => false,
        };
        if self.pending_batch != Some(batch.batch_id) || restarted {
            self.pending.clear();
            self.pending_batch = Some(batch.batch_id);
        }
        self.pending.extend_from_slice(events);
        Ok(Vec::new())
    }

    async fn batch_end<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
        batch: BatchRef,
    ) -> Result<(), HandlerError> {
        let events = self.take_batch(batch);
        let rows = claim_rows(&events);
        if rows.is_empty() {
            // An idle tick's batch (or one of unreadable events only): redoing it inserts
            // nothing, so it needs neither the ledger nor a node transaction.
            return Ok(());
        }
        let claimed = self.claim_on_node(batch.batch_id, &rows).await?;
        let fresh = claimed.is_some();
        // The tasks are committed on the node: they may run while the master side of the
        // claim finishes. A result may even be recorded on the master first: the reducer
        // takes results of queued tasks, and tasks_claimed moves only tasks still queued.
        match claimed {
            Some(tasks) => self.handoff.claimed(tasks),
            None => self.handoff.reread(),
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.task_id).collect();
        tx.query_one(
            "select pgfan.tasks_claimed($1, $2)",
            &[&self.node_name, &ids],
        )
        .await?;
        tracing::debug!(
            node = %self.node_name,
            batch_id = batch.batch_id,
            tasks = ids.len(),
            redone = !fresh,
            "Batch claimed"
        );
        Ok(())
    }
}

/// The task rows of a batch's events; events (or tasks of an event) without a task id
/// are logged and skipped: there is no task to report on.
fn claim_rows(events: &[Event]) -> Vec<ClaimRow> {
    let mut rows = Vec::with_capacity(events.len());
    for ev in events {
        match claim_rows_of(ev) {
            Ok(found) if found.is_empty() => tracing::error!(
                ev_id = ev.id,
                ev_extra1 = ?ev.extra[0],
                "Pull event without a valid task id; skipped"
            ),
            Ok(found) => rows.extend(found),
            Err(err) => tracing::error!(error = %err, "Unreadable pull event; skipped"),
        }
    }
    rows
}

/// Inserts the rows; events that cannot run are stored as failed tasks, to be shipped.
/// Returns the runnable tasks inserted (a task the table had already is not returned).
async fn insert_tasks(
    tx: &Transaction<'_>,
    rows: &[ClaimRow],
) -> Result<Vec<Task>, tokio_postgres::Error> {
    let col = |f: &dyn Fn(&ClaimRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<i64> = rows.iter().map(|r| r.task_id).collect();
    let jobs: Vec<Option<i64>> = rows.iter().map(|r| r.job_id).collect();
    let timeouts: Vec<Option<i32>> = rows.iter().map(|r| r.options.timeout_ms).collect();
    let txs: Vec<bool> = rows.iter().map(|r| r.options.tx).collect();
    let kinds = col(&|r| Some(r.kind.clone()));
    let data = col(&|r| Some(r.data.clone()));
    let lanes = col(&|r| r.lane.clone());
    let errors = col(&|r| r.error.clone());
    let inserted = tx
        .query(
        "insert into pgfan_node.task
                (task_id, job_id, kind, data, lane, timeout_ms, tx, state, error, result, finished_at)
         select t.id, t.job, t.kind, t.data, t.lane, t.timeout_ms, t.tx,
                case when t.error is null then 'claimed' else 'failed' end, t.error,
                case when t.error is not null then pgfan_node.empty_result('failed', t.error) end,
                case when t.error is not null then now() end
           from unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                       $6::int4[], $7::bool[], $8::text[])
                as t(id, job, kind, data, lane, timeout_ms, tx, error)
         on conflict (task_id) do nothing
         returning task_id, kind, data, lane, timeout_ms, tx, run_key, state",
        &[&ids, &jobs, &kinds, &data, &lanes, &timeouts, &txs, &errors],
    )
    .await?;
    Ok(inserted
        .iter()
        .filter(|r| r.get::<_, &str>("state") == "claimed")
        .map(Task::from_row)
        .collect())
}
