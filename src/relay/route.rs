//! Turning push events into `pgfan.route_event` calls.
//!
//! A batch is first tried whole: every event parsed here, the requests of submitted jobs
//! read in one query, and then all of it routed by one set-based `pgfan.route_batch`
//! under a savepoint (raw jobs written once, one `tasks` pull event per node). When that declines (an `any` target, a job not in the usual state,
//! anything unusual) the savepoint is rolled back and one `route_event` per event is sent
//! pipelined under a new one. If anything in the batch is bad, that is rolled back too and
//! the relay routes event by event, where a bad event gets its own savepoint, dead letter
//! and failed job.

use std::collections::HashMap;

use futures_util::future::join_all;
use tokio_postgres::{Statement, Transaction};

use super::request::{self, Kind, Request, RequestError};
use crate::pgq::Event;

/// Routes one event; the arguments are bound by [`route`].
const ROUTE_SQL: &str = "select pgfan.route_event($1, $2, $3, $4, $5, $6, $7, $8, \
                         $9::text::interval, $10, $11, $12, $13)";

/// Routes a whole batch in one call, its pull events carrying many tasks each; the
/// arguments are bound by [`route_all`].
const ROUTE_ALL_SQL: &str = "select pgfan.route_batch($1, $2, $3, $4, $5, $6, $7, $8, \
                             $9::text[]::interval[], $10, $11, $12, $13)";

/// How routing one event went wrong.
pub(super) enum Routing {
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
pub(super) fn is_request_error(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|c| {
        let c = c.code();
        c == "P0001" || c.starts_with("22")
    })
}

/// The job id a raw event names, for failing it when the event is otherwise unreadable.
pub(super) fn job_hint(e: &Event) -> Option<i64> {
    let data = e.data.as_deref()?;
    crate::urlenc::decode(data)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "job")
        .and_then(|(_, v)| v.parse().ok())
}

/// What an event asks for, read without the database.
enum Parsed {
    /// The raw form: the request is in the event.
    Raw(Request),
    /// `pgfan.submit`'s form: the request is in the job row.
    Submitted(i64, Kind),
}

fn parse(e: &Event, on_master: bool) -> Result<Parsed, Routing> {
    let job_hint = job_hint(e);
    let kind = Kind::parse(e.ev_type.as_deref().unwrap_or("")).map_err(|err| bad(job_hint, err))?;
    let pairs = crate::urlenc::decode(e.data.as_deref().unwrap_or(""))
        .map_err(|err| bad(job_hint, err.into()))?;
    match request::job_of(&pairs).map_err(|err| bad(None, err))? {
        Some(job_id) if on_master => Ok(Parsed::Submitted(job_id, kind)),
        Some(_) => Err(Routing::Bad {
            job: None,
            error: "pgfan: job= names a job of the master; producer databases send the raw form"
                .to_string(),
        }),
        None => Request::from_pairs(kind, pairs)
            .map(Parsed::Raw)
            .map_err(|err| bad(None, err)),
    }
}

/// The request of submitted job `job_id` from its stored kind and params.
fn stored_request(
    job_id: i64,
    kind: Kind,
    row: Option<&(String, serde_json::Value)>,
) -> Result<Request, Routing> {
    let Some((stored, params)) = row else {
        return Err(Routing::Bad {
            job: None,
            error: format!("pgfan: the event names job {job_id}, which does not exist"),
        });
    };
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
    Request::from_params(kind, params).map_err(|err| bad(Some(job_id), err))
}

/// The stored kind and params of the given jobs.
async fn job_rows(
    tx: &Transaction<'_>,
    ids: &[i64],
) -> Result<HashMap<i64, (String, serde_json::Value)>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(tx
        .query(
            "select job_id, kind, params from pgfan.job where job_id = any($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The job (None for the raw form) and request of every event, or the first problem.
async fn plan(
    tx: &Transaction<'_>,
    on_master: bool,
    events: &[Event],
) -> Result<Vec<(Option<i64>, Request)>, Routing> {
    let parsed = events
        .iter()
        .map(|e| parse(e, on_master))
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<i64> = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Submitted(id, _) => Some(*id),
            Parsed::Raw(_) => None,
        })
        .collect();
    let rows = job_rows(tx, &ids).await?;
    parsed
        .into_iter()
        .map(|p| match p {
            Parsed::Raw(req) => Ok((None, req)),
            Parsed::Submitted(id, kind) => Ok((Some(id), stored_request(id, kind, rows.get(&id))?)),
        })
        .collect()
}

/// Sends one `route_event`; resolves to the job id.
async fn route(
    tx: &Transaction<'_>,
    stmt: &Statement,
    source: &str,
    e: &Event,
    job: Option<i64>,
    req: &Request,
) -> Result<i64, tokio_postgres::Error> {
    let timeout = req
        .timeout
        .map(|t| format!("{} milliseconds", t.as_millis()));
    let params = job.is_none().then(|| req.params_json());
    let parallel = req.parallel.map(|p| p as i32);
    tx.query_one(
        stmt,
        &[
            &source,
            &e.id,
            &job,
            &req.kind.name(),
            &e.extra[0],
            &params,
            &req.reduce,
            &req.policy,
            &timeout,
            &req.payloads,
            &req.lane,
            &parallel,
            &req.options(),
        ],
    )
    .await
    .map(|r| r.get(0))
}

/// Routes a whole batch in one pipelined exchange. Ok(false): something in it is bad and
/// nothing was routed; the caller goes event by event.
pub(super) async fn batch(
    tx: &Transaction<'_>,
    source: &str,
    on_master: bool,
    events: &[Event],
) -> Result<bool, tokio_postgres::Error> {
    let planned = match plan(tx, on_master, events).await {
        Ok(p) => p,
        Err(Routing::Db(err)) => return Err(err),
        Err(Routing::Bad { .. }) => return Ok(false),
    };
    tx.batch_execute("savepoint pgfan_batch").await?;
    match route_all(tx, source, events, &planned).await {
        Ok(()) => {
            tx.batch_execute("release savepoint pgfan_batch").await?;
            return Ok(true);
        }
        Err(err) => {
            tracing::debug!(error = %err, "Batch routed event by event");
            tx.batch_execute("rollback to savepoint pgfan_batch")
                .await?;
        }
    }
    let stmt = tx.prepare(ROUTE_SQL).await?;
    let results = join_all(
        events
            .iter()
            .zip(&planned)
            .map(|(e, (job, req))| route(tx, &stmt, source, e, *job, req)),
    )
    .await;
    match results.into_iter().find_map(Result::err) {
        None => {
            tx.batch_execute("release savepoint pgfan_batch").await?;
            Ok(true)
        }
        Some(err) if results_are_the_events_fault(&err) => {
            tx.batch_execute("rollback to savepoint pgfan_batch")
                .await?;
            Ok(false)
        }
        Some(err) => Err(err),
    }
}

/// Routes every planned event with one `pgfan.route_batch`.
async fn route_all(
    tx: &Transaction<'_>,
    source: &str,
    events: &[Event],
    planned: &[(Option<i64>, Request)],
) -> Result<(), tokio_postgres::Error> {
    let ev_ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let targets: Vec<Option<&str>> = events.iter().map(|e| e.extra[0].as_deref()).collect();
    let jobs: Vec<Option<i64>> = planned.iter().map(|(job, _)| *job).collect();
    let reqs = planned.iter().map(|(_, req)| req);
    let kinds: Vec<&str> = reqs.clone().map(|r| r.kind.name()).collect();
    let params: Vec<Option<serde_json::Value>> = planned
        .iter()
        .map(|(job, req)| job.is_none().then(|| req.params_json()))
        .collect();
    let reduces: Vec<Option<&str>> = reqs.clone().map(|r| r.reduce.as_deref()).collect();
    let policies: Vec<Option<&str>> = reqs.clone().map(|r| r.policy.as_deref()).collect();
    let timeouts: Vec<Option<String>> = reqs
        .clone()
        .map(|r| r.timeout.map(|t| format!("{} milliseconds", t.as_millis())))
        .collect();
    let payloads: Vec<serde_json::Value> =
        reqs.clone().map(|r| r.payloads.clone().into()).collect();
    let lanes: Vec<Option<&str>> = reqs.clone().map(|r| r.lane.as_deref()).collect();
    let parallels: Vec<Option<i32>> = reqs.clone().map(|r| r.parallel.map(|p| p as i32)).collect();
    let options: Vec<String> = reqs.map(|r| r.options()).collect();
    tx.query_one(
        ROUTE_ALL_SQL,
        &[
            &source, &ev_ids, &jobs, &kinds, &targets, &params, &reduces, &policies, &timeouts,
            &payloads, &lanes, &parallels, &options,
        ],
    )
    .await?;
    Ok(())
}

/// After the first failing statement of a pipeline the rest fail as "transaction aborted";
/// the first error says whose fault it was.
fn results_are_the_events_fault(first: &tokio_postgres::Error) -> bool {
    is_request_error(first)
}

/// Routes one event (inside the caller's savepoint); resolves to the job id.
pub(super) async fn one(
    tx: &Transaction<'_>,
    source: &str,
    on_master: bool,
    e: &Event,
) -> Result<i64, Routing> {
    let mut planned = plan(tx, on_master, std::slice::from_ref(e)).await?;
    let (job, req) = planned.pop().ok_or_else(|| Routing::Bad {
        job: None,
        error: "pgfan: nothing to route".into(),
    })?;
    let stmt = tx.prepare(ROUTE_SQL).await?;
    Ok(route(tx, &stmt, source, e, job, &req).await?)
}
