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
mod settings;

use std::path::Path;

use tokio_postgres::Transaction;

use crate::consumer::{BatchHandler, BatchRef, HandlerError, RetryEvent};
use crate::pgq::Event;
use producer::Remote;
use request::{Kind, Request, RequestError};
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
        let error = match route_event(tx, &self.source, on_master, e).await {
            Ok(tasks) => {
                tx.batch_execute("release savepoint pgfan_route").await?;
                tracing::debug!(source = %self.source, ev_id = e.id, tasks, "Routed");
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

    /// Routes `events` in `tx`, one savepoint each.
    async fn route_all(&self, tx: &Transaction<'_>, events: &[Event]) -> Result<(), HandlerError> {
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

/// How routing one event went wrong.
enum Routing {
    /// The event itself is bad.
    Bad { job: Option<i64>, error: String },
    /// The database said no: bad input (a raised pgfan error) or trouble.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Routing {
    fn from(e: tokio_postgres::Error) -> Self {
        Routing::Db(e)
    }
}

fn bad(job: Option<i64>, err: RequestError) -> Routing {
    Routing::Bad {
        job,
        error: err.to_string(),
    }
}

/// Errors raised by pgfan's SQL about the request (P0001 raise_exception) or its data
/// (class 22, e.g. an invalid value) are the event's fault, not the database's.
fn is_request_error(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|c| {
        let c = c.code();
        c == "P0001" || c.starts_with("22")
    })
}

/// The job id a raw event names, for failing it when the event is otherwise unreadable.
fn job_hint(e: &Event) -> Option<i64> {
    let data = e.data.as_deref()?;
    crate::urlenc::decode(data)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "job")
        .and_then(|(_, v)| v.parse().ok())
}

async fn route_event(
    tx: &Transaction<'_>,
    source: &str,
    on_master: bool,
    e: &Event,
) -> Result<i32, Routing> {
    let job_hint = job_hint(e);
    let ev_type = e.ev_type.as_deref().unwrap_or("");
    let kind = Kind::parse(ev_type).map_err(|err| bad(job_hint, err))?;
    let pairs = crate::urlenc::decode(e.data.as_deref().unwrap_or(""))
        .map_err(|err| bad(job_hint, err.into()))?;
    // pgfan.submit's events carry only job=<id>; the request is in the job row.
    let (job_id, req) = match request::job_of(&pairs).map_err(|err| bad(None, err))? {
        Some(job_id) if on_master => (job_id, submitted_request(tx, job_id, kind).await?),
        Some(_) => {
            let error = "pgfan: job= names a job of the master; producer databases send the \
                         raw form"
                .to_string();
            return Err(Routing::Bad { job: None, error });
        }
        None => {
            let req = Request::from_pairs(kind, pairs).map_err(|err| bad(None, err))?;
            (create_job(tx, source, e, &req).await?, req)
        }
    };
    let lanes = req.lanes(job_id);
    let row = tx
        .query_one(
            "select pgfan.route_job($1, $2, $3, $4)",
            &[&job_id, &req.payloads, &lanes, &req.options()],
        )
        .await?;
    Ok(row.get(0))
}

/// The request stored by `pgfan.submit` for `job_id`.
async fn submitted_request(
    tx: &Transaction<'_>,
    job_id: i64,
    kind: Kind,
) -> Result<Request, Routing> {
    let row = tx
        .query_opt(
            "select kind, params from pgfan.job where job_id = $1",
            &[&job_id],
        )
        .await?;
    let Some(row) = row else {
        return Err(Routing::Bad {
            job: None,
            error: format!("pgfan: the event names job {job_id}, which does not exist"),
        });
    };
    let stored: String = row.get(0);
    if stored != kind.name() {
        let error = format!(
            "pgfan: job {job_id} is a {stored} job but its event says {}",
            kind.name()
        );
        return Err(Routing::Bad {
            job: Some(job_id),
            error,
        });
    }
    let params: serde_json::Value = row.get(1);
    Request::from_params(kind, &params).map_err(|err| bad(Some(job_id), err))
}

async fn create_job(
    tx: &Transaction<'_>,
    queue: &str,
    e: &Event,
    req: &Request,
) -> Result<i64, Routing> {
    let timeout = req
        .timeout
        .map(|t| format!("{} milliseconds", t.as_millis()));
    let row = tx
        .query_one(
            "select pgfan.job_from_event($1, $2, $3, $4, $5, $6, $7, $8::text::interval)",
            &[
                &queue,
                &e.id,
                &req.kind.name(),
                &e.extra[0],
                &req.params_json(),
                &req.reduce,
                &req.policy,
                &timeout,
            ],
        )
        .await?;
    Ok(row.get(0))
}
