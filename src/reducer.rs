//! `pgfan reducer`: records task results and finishes jobs.
//!
//! A consumer of `pgfan_results` on the master. A `results` event carries the results of
//! one ship round of a node, a `result` event (the previous format, still accepted) one.
//! The results of a chunk of events are recorded with one `pgfan.record_results_finish`
//! (the first result of a task counts; a re-shipped duplicate is ignored), which also
//! finishes the jobs of a single task without a reduce; at the end of the batch every other
//! job that got a result is offered to `pgfan.complete_jobs`, which applies each job's
//! policy, runs the reduce and notifies waiters. All of it commits with `finish_batch`: each result is recorded exactly once.
//! Beside the consumer, a timer calls `pgfan.expire_jobs()` to end jobs whose deadline
//! passed while results were still missing.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Transaction;

use crate::config::{self, ConfigError};
use crate::consumer::{
    BatchHandler, BatchRef, ConsumerError, ConsumerOptions, HandlerError, RetryEvent,
};
use crate::outage::{sleep_or_stop, Outage};
use crate::pgq::Event;
use crate::signals::Control;

/// Settings of `pgfan reducer` (section `[reducer]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReducerConfig {
    /// libpq connection string of the master database.
    pub master: String,
    /// The results queue. Default `pgfan_results`.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Consumer name on that queue. Default `pgfan_reducer`.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Polling fallback when no tick notification arrives. Default 1 s.
    #[serde(default = "default_second", deserialize_with = "config::duration")]
    pub poll_period: Duration,
    /// How often jobs past their deadline are ended. Default 1 s.
    #[serde(default = "default_second", deserialize_with = "config::duration")]
    pub expire_period: Duration,
    /// At a stop, how long the batch in progress may take before it is abandoned (and
    /// redone after the restart). Default 30 s.
    #[serde(
        default = "default_stop_timeout",
        deserialize_with = "config::duration"
    )]
    pub stop_timeout: Duration,
    /// Serve Prometheus metrics at `http://<this address>/metrics`, e.g. `127.0.0.1:9187`.
    /// Default: none (no endpoint). Read at start only.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

fn default_queue() -> String {
    "pgfan_results".into()
}

fn default_consumer() -> String {
    "pgfan_reducer".into()
}

fn default_second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Deserialize)]
struct ReducerFile {
    reducer: ReducerConfig,
}

impl ReducerConfig {
    /// What `--check-config --connect` opens: the master.
    pub fn connections(&self) -> Vec<crate::db::Planned> {
        vec![crate::db::Planned {
            role: "master",
            conninfo: self.master.clone(),
            user: None,
        }]
    }

    /// Defaults for the master at `master`.
    pub fn new(master: impl Into<String>) -> ReducerConfig {
        ReducerConfig {
            master: master.into(),
            queue: default_queue(),
            consumer: default_consumer(),
            poll_period: default_second(),
            stop_timeout: default_stop_timeout(),
            expire_period: default_second(),
            metrics_listen: None,
        }
    }

    /// Reads the `[reducer]` section of a TOML or INI file.
    pub fn load(path: &Path) -> Result<ReducerConfig, ConfigError> {
        config::checked(
            path,
            config::load::<ReducerFile>(path, "reducer")?.reducer,
            Self::check,
        )
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        if self.expire_period.is_zero() || self.poll_period.is_zero() {
            return Err("poll_period and expire_period must be greater than zero".into());
        }
        crate::metrics::listen_addr(self.metrics_listen.as_deref()).map(|_| ())
    }

    fn consumer_options(&self) -> ConsumerOptions {
        let mut opts = ConsumerOptions::new(&self.master, &self.queue, &self.consumer);
        opts.poll_period = self.poll_period;
        opts
    }
}

/// The reducer's batch handler.
#[derive(Default)]
pub struct Reducer {
    touched: BTreeSet<i64>,
}

impl BatchHandler for Reducer {
    async fn events<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
        _batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        let mut results = Vec::with_capacity(events.len());
        for e in events {
            if e.ev_type.as_deref() == Some(RESULTS_EVENT) {
                self.unpack(tx, e, &mut results).await?;
                continue;
            }
            match parse(e) {
                Some(r) => results.push(r),
                None => dead_letter(tx, e).await?,
            }
        }
        // The whole chunk in one statement (pgfan.record_results_finish, set-based); the
        // jobs of one task it finished on the way need no complete_jobs.
        let (mut ids, mut nodes, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (task, node, result) in results {
            ids.push(task);
            nodes.push(node);
            values.push(result);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = tx
            .query(
                "select recorded_job, finished from pgfan.record_results_finish($1, $2, $3)",
                &[&ids, &nodes, &values],
            )
            .await?;
        for row in rows {
            let Some(job) = row.get::<_, Option<i64>>(0) else {
                continue;
            };
            metrics::counter!("pgfan_reducer_results_recorded_total").increment(1);
            if row.get::<_, bool>(1) {
                tracing::debug!(job, state = "done", "Job finished");
                metrics::counter!("pgfan_reducer_jobs_finished_total", "state" => "done")
                    .increment(1);
            } else {
                self.touched.insert(job);
            }
        }
        Ok(Vec::new())
    }

    async fn batch_end<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
        _batch: BatchRef,
    ) -> Result<(), HandlerError> {
        let jobs: Vec<i64> = std::mem::take(&mut self.touched).into_iter().collect();
        if jobs.is_empty() {
            return Ok(());
        }
        for row in tx
            .query("select * from pgfan.complete_jobs($1)", &[&jobs])
            .await?
        {
            let (job, state): (i64, String) = (row.get(0), row.get(1));
            match state.as_str() {
                // The job's author must look: its error is in the job (`pgfan job show`).
                "failed" => tracing::warn!(job, "Job failed; `pgfan job show {job}` says why"),
                _ => tracing::debug!(job, state, "Job finished"),
            }
            metrics::counter!("pgfan_reducer_jobs_finished_total", "state" => state).increment(1);
        }
        Ok(())
    }
}

/// The `ev_type` of a result event that carries many results.
const RESULTS_EVENT: &str = "results";

/// One task's result: task id, node, result object.
type TaskResult = (i64, Option<String>, serde_json::Value);

impl Reducer {
    /// Adds the results of a `results` event; a malformed element is a dead letter of its
    /// own, an event that is not a JSON array one for the whole event.
    async fn unpack(
        &mut self,
        tx: &Transaction<'_>,
        e: &Event,
        into: &mut Vec<TaskResult>,
    ) -> Result<(), HandlerError> {
        let Some(items) = e
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Vec<serde_json::Value>>(d).ok())
        else {
            return dead_letter(tx, e).await;
        };
        for item in items {
            match parse_item(&item) {
                Some((task, result)) => into.push((task, e.extra[2].clone(), result)),
                None => {
                    let one = Event {
                        data: Some(item.to_string()),
                        ..e.clone()
                    };
                    dead_letter(tx, &one).await?;
                }
            }
        }
        Ok(())
    }
}

/// An element of a `results` event: `{"task": <id>, "job": .., "result": {..}}`.
fn parse_item(item: &serde_json::Value) -> Option<(i64, serde_json::Value)> {
    let task = item.get("task")?.as_i64()?;
    let result = item.get("result")?;
    well_formed(result).then(|| (task, result.clone()))
}

/// A result event's task id, node and result object; None when malformed.
fn parse(e: &Event) -> Option<(i64, Option<String>, serde_json::Value)> {
    let task: i64 = e.extra[0].as_deref().and_then(|t| t.trim().parse().ok())?;
    let result = e
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(well_formed)?;
    Some((task, e.extra[2].clone(), result))
}

/// Whether `pgfan.record_result` can store the result (docs/pipeline.md): an object whose
/// `columns` and `types` are lists of strings and `rows` a list of lists of strings or
/// nulls, each optional, with no NUL character anywhere, which jsonb cannot hold. Anything
/// else would make the statement fail, and the batch with it, again at every retry: the
/// reducer would stop, stuck on one bad event, instead of dead-lettering it.
fn well_formed(result: &serde_json::Value) -> bool {
    use serde_json::Value;
    let strings = |v: &Value, nulls: bool| {
        v.as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string() || (nulls && x.is_null())))
    };
    let rows = |v: &Value| {
        v.as_array()
            .is_some_and(|r| r.iter().all(|r| strings(r, true)))
    };
    let optional = |key: &str, ok: &dyn Fn(&Value) -> bool| result.get(key).is_none_or(ok);
    result.is_object()
        && !has_nul(result)
        && optional("columns", &|v| strings(v, false))
        && optional("types", &|v| strings(v, false))
        && optional("rows", &rows)
}

fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

async fn dead_letter(tx: &Transaction<'_>, e: &Event) -> Result<(), HandlerError> {
    tracing::warn!(ev_id = e.id, "Malformed result event");
    tx.execute(
        "insert into pgfan.dead_letter (source, queue_name, ev_id, ev_type, ev_data, ev_target, error)
         values ('reducer', 'pgfan_results', $1, $2, $3, $4, 'pgfan: malformed result event')",
        &[&e.id, &e.ev_type, &e.data, &e.extra[2]],
    )
    .await?;
    Ok(())
}

/// Runs the reducer until Stop/Quit; `path` is re-read on Reload.
pub async fn run(
    path: Option<&Path>,
    cfg: ReducerConfig,
    control: mpsc::UnboundedReceiver<Control>,
) -> Result<(), ConsumerError> {
    let (stop_expiry, stop) = watch::channel(false);
    let expiry = tokio::spawn(expire_loop(cfg.master.clone(), cfg.expire_period, stop));
    let load = path.map(|p| move || ReducerConfig::load(p).map_err(|e| e.to_string()));
    let result = crate::service::run(
        "reducer",
        cfg,
        load,
        |c: &ReducerConfig| vec![(c.consumer_options(), Reducer::default())],
        control,
    )
    .await;
    let _ = stop_expiry.send(true);
    let _ = expiry.await;
    result
}

async fn expire_loop(master: String, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut outage = Outage::new("expiry", "pgfan.expire_jobs".to_string());
    loop {
        let pause = match expire_session(&master, period, &mut stop, &mut outage).await {
            Ok(()) => return,
            Err(err) => outage.failed(&err),
        };
        if sleep_or_stop(pause, &mut stop).await {
            return;
        }
    }
}

async fn expire_session(
    master: &str,
    period: Duration,
    stop: &mut watch::Receiver<bool>,
    outage: &mut Outage,
) -> Result<(), tokio_postgres::Error> {
    let client = crate::db::connect_client_to("master", master).await?;
    outage.recovered();
    loop {
        let n: i32 = client
            .query_one("select pgfan.expire_jobs()", &[])
            .await?
            .get(0);
        if n > 0 {
            tracing::info!(jobs = n, "Jobs past their deadline ended");
            metrics::counter!("pgfan_reducer_jobs_expired_total").increment(n as u64);
        }
        if sleep_or_stop(period, stop).await {
            return Ok(());
        }
    }
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

impl crate::service::StopCap for ReducerConfig {
    fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }
}
