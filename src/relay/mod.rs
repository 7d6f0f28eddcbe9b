//! `pgfan relay`: routes push events to the pull queues of their target nodes.
//!
//! A consumer of `push_queue` on the master. For each event it finds or creates the job,
//! resolves the target to nodes, and writes one task row and one pull event per (node,
//! payload) through `pgfan.route_job`, all in the batch's transaction, which also
//! finishes the batch: a job is routed exactly once whatever is killed when.
//!
//! An event that cannot be routed (malformed data, unknown type or node, ...) is rolled
//! back to a savepoint and recorded with `pgfan.reject_event`: its job fails with the
//! reason and a dead letter keeps the event. The rest of the batch goes on.

mod producer;
pub mod request;
mod route;
mod settings;

use std::path::Path;

use tokio_postgres::Transaction;

use crate::consumer::{BatchHandler, BatchRef, HandlerError, RetryEvent};
use crate::pgq::Event;
use producer::Remote;
use route::{is_request_error, job_hint, Routing};
pub use settings::{ProducerConfig, RelayConfig};

/// Runs the relay until Stop/Quit; `path` is re-read on Reload.
pub async fn run(
    path: Option<&Path>,
    cfg: RelayConfig,
    control: tokio::sync::mpsc::UnboundedReceiver<crate::signals::Control>,
) -> Result<(), crate::consumer::ConsumerError> {
    let load = path.map(|p| move || RelayConfig::load(p).map_err(|e| e.to_string()));
    crate::service::run("relay", cfg, load, consumers, control).await
}

/// One consumer for the master's push queue and one per producer database.
fn consumers(cfg: &RelayConfig) -> Vec<(crate::consumer::ConsumerOptions, Relay)> {
    let mut all = vec![(cfg.consumer_options(), Relay::new(cfg))];
    for p in &cfg.producers {
        all.push((cfg.producer_options(p), Relay::producer(cfg, p)));
    }
    all
}

/// The relay's batch handler, for the master's push queue or a producer database's.
pub struct Relay {
    /// What jobs record as their source queue: the queue's name on the master,
    /// `<producer>/<queue>` for a producer database.
    source: String,
    /// Whether the queue is the master's own (where `job=` names a submitted job).
    on_master: bool,
    /// For a producer database: the master, where its batches are routed at batch end.
    remote: Option<Remote>,
}

impl Relay {
    /// The handler of the master's own push queue.
    pub fn new(cfg: &RelayConfig) -> Relay {
        Relay {
            source: cfg.queue.clone(),
            on_master: true,
            remote: None,
        }
    }

    /// The handler of a producer database's push queue.
    pub fn producer(cfg: &RelayConfig, p: &ProducerConfig) -> Relay {
        Relay {
            source: format!("{}/{}", p.name, p.queue),
            on_master: false,
            remote: Some(Remote::new(
                &cfg.master,
                format!("{}@{}", cfg.consumer, p.name),
            )),
        }
    }

    async fn route(&self, tx: &Transaction<'_>, e: &Event) -> Result<(), HandlerError> {
        tx.batch_execute("savepoint pgfan_route").await?;
        let on_master = self.on_master;
        let error = match route::one(tx, &self.source, on_master, e).await {
            Ok(job) => {
                tx.batch_execute("release savepoint pgfan_route").await?;
                tracing::debug!(source = %self.source, ev_id = e.id, job, "Routed");
                metrics::counter!("pgfan_relay_jobs_routed_total", "queue" => self.source.clone())
                    .increment(1);
                return Ok(());
            }
            Err(Routing::Bad { job, error }) => (job, error),
            Err(Routing::Db(err)) if is_request_error(&err) => {
                let text = err
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| err.to_string());
                (job_hint(e).filter(|_| on_master), text)
            }
            Err(Routing::Db(err)) => return Err(err.into()),
        };
        tx.batch_execute("rollback to savepoint pgfan_route")
            .await?;
        self.reject(tx, e, error.0, &error.1).await
    }

    async fn reject(
        &self,
        tx: &Transaction<'_>,
        e: &Event,
        job: Option<i64>,
        error: &str,
    ) -> Result<(), HandlerError> {
        tracing::warn!(source = %self.source, ev_id = e.id, job, error, "Event rejected");
        metrics::counter!("pgfan_relay_events_rejected_total", "queue" => self.source.clone())
            .increment(1);
        tx.query_one(
            "select pgfan.reject_event($1, $2, $3, $4, $5, $6, $7)",
            &[
                &self.source,
                &e.id,
                &e.ev_type,
                &e.data,
                &e.extra[0],
                &job,
                &error,
            ],
        )
        .await?;
        Ok(())
    }

    /// Routes `events` in `tx`: the whole batch at once, or when something in it is bad,
    /// one savepoint each.
    async fn route_all(&self, tx: &Transaction<'_>, events: &[Event]) -> Result<(), HandlerError> {
        if route::batch(tx, &self.source, self.on_master, events).await? {
            tracing::debug!(source = %self.source, events = events.len(), "Routed batch");
            metrics::counter!("pgfan_relay_jobs_routed_total", "queue" => self.source.clone())
                .increment(events.len() as u64);
            return Ok(());
        }
        for e in events {
            self.route(tx, e).await?;
        }
        Ok(())
    }
}

impl BatchHandler for Relay {
    async fn events<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
        _batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        match &mut self.remote {
            None => self.route_all(tx, events).await?,
            Some(remote) => remote.buffer(events),
        }
        Ok(Vec::new())
    }

    async fn batch_end<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        batch: BatchRef,
    ) -> Result<(), HandlerError> {
        let Some(mut remote) = self.remote.take() else {
            return Ok(());
        };
        let routed = remote.route_batch(self, batch.batch_id).await;
        self.remote = Some(remote);
        routed
    }
}
