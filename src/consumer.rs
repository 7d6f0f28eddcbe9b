//! The consumer framework shared by the relay, node and reducer daemons.
//!
//! One loop per consumer: open (or re-open) a batch with `next_batch_custom`, read its events
//! (all at once, or lazily through `get_batch_cursor` for large batches), hand them to the
//! [`BatchHandler`] inside the queue database's transaction, schedule the retries it asks
//! for, `finish_batch`, commit. Work done in the queue database therefore commits together
//! with `finish_batch` (exactly once); work in another database uses the pgq_ext ledger
//! (see [`crate::ledger`]).
//!
//! Waiting: the loop LISTENs on the ticker's channel and wakes when its queue ticks, with a
//! polling fallback for tickers that do not notify (pgqd). A stop request is honoured only
//! between batches; a lost connection is reconnected with back-off and the open batch is
//! redone (PgQ returns the same batch id until it is finished).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Transaction};

use crate::db::{self, ErrorClass, Session, SharedSession};
use crate::outage::{sleep_or_stop, Outage};
use crate::pgq::{Event, PgqError};
use crate::ticker::TICK_CHANNEL;

/// Name of the cursor used for lazy fetching.
const CURSOR: &str = "pgfan_batch_walker";

/// A batch whose end tick was older than this (seconds) when it was opened means the
/// consumer is behind its queue.
const CATCH_UP_LAG: f64 = 0.1;

/// Events per batch a consumer that is behind asks for.
const CATCH_UP_COUNT: i32 = 1000;

/// How one consumer reads its queue.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// libpq connection string of the queue database.
    pub conninfo: String,
    pub queue: String,
    pub consumer: String,
    /// Register the consumer on start if it is not registered yet.
    pub register: bool,
    /// Events fetched per round trip through a cursor; 0 reads each batch in one query.
    pub lazy_fetch: i32,
    /// Passed to `next_batch_custom`: wait for this many events per batch ...
    pub min_count: Option<i32>,
    /// ... or this much time between its ticks ...
    pub min_interval: Option<Duration>,
    /// ... and never take ticks younger than this.
    pub min_lag: Option<Duration>,
    /// Poll this often when no tick notification arrives.
    pub poll_period: Duration,
    /// First retry delay of an event; doubles with every retry of that event.
    pub retry_base: Duration,
    /// Upper bound of the retry delay.
    pub retry_max: Duration,
    /// The queue is this node's pull queue, read through pgfan's node doors
    /// (`pgfan.node_next_batch` and friends) instead of the PgQ API, so that a node's
    /// login needs no `pgq_reader` (which would open every queue to it).
    pub node: Option<String>,
    /// The node's key for those doors (`pgfan.node_set_pool_key`), set in every transaction
    /// when the login alone does not name the node (pooled daemons share one).
    pub node_key: Option<String>,
    /// What the queue's database is to the daemon, for connection errors ("master").
    pub role: &'static str,
    /// A session the consumer shares with other parts of its daemon (a node daemon's one
    /// master connection): it holds it only while it works on a batch. None: its own.
    pub shared: Option<Arc<SharedSession>>,
    /// LISTEN for the ticker's notifications. Off behind a pooler in transaction mode
    /// (PgBouncer), where a LISTEN would stay on whichever server connection ran it: the
    /// consumer then looks for batches every `poll_period`.
    pub listen: bool,
}

impl ConsumerOptions {
    /// Options with pgfan's defaults for `queue`/`consumer` at `conninfo`.
    pub fn new(
        conninfo: impl Into<String>,
        queue: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        ConsumerOptions {
            conninfo: conninfo.into(),
            queue: queue.into(),
            consumer: consumer.into(),
            register: true,
            lazy_fetch: 300,
            min_count: None,
            min_interval: None,
            min_lag: None,
            poll_period: Duration::from_secs(1),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            node: None,
            node_key: None,
            role: "master",
            shared: None,
            listen: true,
        }
    }

    /// Delay before the next attempt of an event that has been retried `retries` times.
    pub fn retry_delay(&self, retries: i32) -> Duration {
        let factor = 2u32.saturating_pow(retries.clamp(0, 30) as u32);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// The batch a handler is working on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRef {
    pub batch_id: i64,
    pub cur_tick_id: i64,
    pub prev_tick_id: i64,
}

/// What a handler decides for one event it cannot process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryEvent {
    pub ev_id: i64,
    /// Times it was retried before (`ev_retry`), which sets the back-off.
    pub retries: i32,
}

/// A handler failure; the batch is rolled back and redone.
#[derive(Debug, Error)]
pub enum HandlerError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Pgq(#[from] PgqError),
    #[error("{0}")]
    Other(String),
    /// The consumer cannot start (e.g. its queue does not exist); ends the consumer.
    #[error("{0}")]
    Setup(String),
}

/// Processes events; everything it does through `tx` commits together with `finish_batch`.
pub trait BatchHandler: Send {
    /// Handles one chunk of the batch's events (in ev_id order); returns the events to retry.
    fn events<'a>(
        &'a mut self,
        tx: &'a Transaction<'_>,
        batch: BatchRef,
        events: &'a [Event],
    ) -> impl Future<Output = Result<Vec<RetryEvent>, HandlerError>> + Send + 'a;

    /// Called after the last chunk, before `finish_batch`, in the same transaction.
    fn batch_end<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        async { Ok(()) }
    }
}

/// Errors that end a consumer.
#[derive(Debug, Error)]
pub enum ConsumerError {
    #[error("consumer {consumer} on {queue}: {source}")]
    Fatal {
        queue: String,
        consumer: String,
        #[source]
        source: HandlerError,
    },
}

/// Runs the consumer until `stop` becomes true; returns the number of batches finished.
pub async fn run<H: BatchHandler>(
    opts: &ConsumerOptions,
    handler: &mut H,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, ConsumerError> {
    let mut outage = Outage::new("consumer", format!("{}/{}", opts.queue, opts.consumer));
    let mut finished = 0;
    loop {
        let session = opts
            .shared
            .clone()
            .unwrap_or_else(|| SharedSession::new(opts.role));
        let err = match open(opts, &session).await {
            Ok(mut messages) => {
                let progress = Progress {
                    finished: &mut finished,
                    outage: &mut outage,
                };
                let ended =
                    session_loop(opts, handler, &session, &mut messages, &mut stop, progress);
                match ended.await {
                    Ok(Ended::Stopped) => return Ok(finished),
                    Ok(Ended::Deaf) => continue,
                    Err(e) => e,
                }
            }
            Err(e) => HandlerError::Db(e),
        };
        metrics::counter!("pgfan_consumer_errors_total", &labels(opts)).increment(1);
        if breaks_setup(&err) {
            return Err(ConsumerError::Fatal {
                queue: opts.queue.clone(),
                consumer: opts.consumer.clone(),
                source: err,
            });
        }
        if !is_connection_loss(&err) {
            tracing::error!(queue = %opts.queue, consumer = %opts.consumer, error = %err,
                "Batch failed; it is redone after a back-off");
        }
        let pause = outage.failed(&err);
        if sleep_or_stop(pause, &mut stop).await {
            return Ok(finished);
        }
    }
}

/// The consumer's session with its notifications: the shared one if another part of the
/// daemon opened it and nobody listens on it yet, else a new one, installed for all.
async fn open(
    opts: &ConsumerOptions,
    session: &SharedSession,
) -> Result<mpsc::UnboundedReceiver<AsyncMessage>, tokio_postgres::Error> {
    if let Some(messages) = session.adopt(&opts.conninfo).await {
        return Ok(messages);
    }
    let Session { client, messages } =
        db::connect_named(opts.role, &opts.conninfo, session.application_name()).await?;
    session.install(&opts.conninfo, client).await;
    Ok(messages)
}

/// The database error behind a handler error, if any.
fn db_error(err: &HandlerError) -> Option<&tokio_postgres::Error> {
    match err {
        HandlerError::Db(e) => Some(e),
        HandlerError::Pgq(e) => Some(e.db_error()),
        HandlerError::Other(_) | HandlerError::Setup(_) => None,
    }
}

fn is_connection_loss(err: &HandlerError) -> bool {
    db_error(err).is_some_and(|e| db::classify(e) == ErrorClass::Reconnect)
}

/// Errors that no redo can fix, because the consumer's setup is wrong: PgQ or the
/// handler's objects missing, no privilege, bad credentials, a database that does not
/// exist. They end the consumer (and its daemon, which the supervisor reports). Any other
/// failure of a batch is logged and the batch redone after a back-off, since PgQ hands
/// out the same batch again: a lost race must not take a daemon down.
fn breaks_setup(err: &HandlerError) -> bool {
    if matches!(err, HandlerError::Setup(_)) {
        return true;
    }
    db_error(err).and_then(|e| e.code()).is_some_and(|c| {
        ["42", "28", "3D", "3F", "0A"]
            .iter()
            .any(|class| c.code().starts_with(class))
    })
}

/// What a session's loop reports back: batches finished, and the end of an outage.
struct Progress<'a> {
    finished: &'a mut u64,
    /// Over once a round (a batch, or the look for one) succeeds, not when the master
    /// connection opens: a batch that keeps failing on the handler's own database (a node
    /// that is down) is one outage, backed off and logged once, not one per attempt.
    outage: &'a mut Outage,
}

/// Why a session's loop ended without an error.
enum Ended {
    Stopped,
    /// The connection that LISTENs is gone (another part of the daemon may have opened a
    /// new shared session, which does not): connect again.
    Deaf,
}

async fn session_loop<H: BatchHandler>(
    opts: &ConsumerOptions,
    handler: &mut H,
    session: &SharedSession,
    messages: &mut mpsc::UnboundedReceiver<AsyncMessage>,
    stop: &mut watch::Receiver<bool>,
    progress: Progress<'_>,
) -> Result<Ended, HandlerError> {
    let client = session.lock(&opts.conninfo).await?;
    if opts.listen {
        client
            .batch_execute(&format!("listen {TICK_CHANNEL}"))
            .await?;
    }
    if opts.register {
        let registered = match &opts.node {
            // Unnamed (one round trip): outside a transaction a pooler may run a named
            // statement's parse and execution on different server connections.
            Some(node) => client
                .query_typed_one(
                    &crate::node::door::keyed("pgfan.node_register($1)", 2),
                    &[
                        (node, Type::TEXT),
                        (&opts.node_key.as_deref().unwrap_or(""), Type::TEXT),
                    ],
                )
                .await
                .map(|_| true)
                .map_err(|source| PgqError::Db {
                    call: "node_register",
                    source,
                }),
            None => crate::pgq::register_consumer(&*client, &opts.queue, &opts.consumer).await,
        };
        if let Err(e) = registered {
            if db::classify(e.db_error()) == ErrorClass::Reconnect {
                return Err(e.into());
            }
            return Err(HandlerError::Setup(e.to_string()));
        }
    }
    drop(client);
    let mut behind = false;
    let mut wait = first_poll(opts);
    loop {
        if *stop.borrow() {
            return Ok(Ended::Stopped);
        }
        let (finished, round) = {
            let mut client = session.lock(&opts.conninfo).await?;
            process_one(opts, handler, &mut client, behind).await?
        };
        progress.outage.recovered();
        *progress.finished += finished;
        if let Some(lag) = round {
            behind = lag > CATCH_UP_LAG;
            continue;
        }
        behind = false;
        let period = std::mem::replace(&mut wait, opts.poll_period);
        match wait_for_tick(opts, period, messages, stop).await {
            Wait::Tick => {}
            Wait::Stop => return Ok(Ended::Stopped),
            Wait::Deaf => return Ok(Ended::Deaf),
        }
    }
}

/// Opens (or re-opens) the next batch: batch_id (NULL when none), cur_tick_id,
/// prev_tick_id, lag in seconds.
async fn open_batch(
    tx: &Transaction<'_>,
    opts: &ConsumerOptions,
    min_count: Option<i32>,
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let (min_lag, min_interval) = (
        opts.min_lag.map(interval_text),
        opts.min_interval.map(interval_text),
    );
    match &opts.node {
        Some(node) => {
            tx.query_one(
                "select batch_id, cur_tick_id, prev_tick_id,
                    extract(epoch from now() - cur_tick_time)::float8
               from pgfan.node_next_batch($1, $2::text::interval, $3, $4::text::interval)",
                &[node, &min_lag, &min_count, &min_interval],
            )
            .await
        }
        None => {
            tx.query_one(
                "select batch_id, cur_tick_id, prev_tick_id,
                    extract(epoch from now() - cur_tick_time)::float8
               from pgq.next_batch_custom($1, $2, $3::text::interval, $4, $5::text::interval)",
                &[
                    &opts.queue,
                    &opts.consumer,
                    &min_lag,
                    &min_count,
                    &min_interval,
                ],
            )
            .await
        }
    }
}

/// Empty batches one transaction may finish before it looks no further: an idle consumer
/// that finds its queue's idle ticks needs one transaction a look, not one per tick; the
/// bound keeps a consumer far behind a long run of idle ticks from holding one open.
const EMPTY_BATCHES_PER_TX: u64 = 100;

/// Processes the next batch: the batches finished, and the lag in seconds of the last one,
/// None when the look found no batch with events.
///
/// Empty batches (a queue's idle ticks) are finished in the same transaction as whatever
/// comes after them, so an idle consumer's look costs the queue database one transaction,
/// and a look that only found empty batches reports None (caught up: wait for a tick).
async fn process_one<H: BatchHandler>(
    opts: &ConsumerOptions,
    handler: &mut H,
    client: &mut tokio_postgres::Client,
    behind: bool,
) -> Result<(u64, Option<f64>), HandlerError> {
    let tx = client.transaction().await?;
    if let (Some(_), Some(key)) = (&opts.node, &opts.node_key) {
        tx.execute(crate::node::door::SET_KEY, &[key]).await?;
    }
    let mut empty = 0;
    let lag = loop {
        match one_batch(opts, handler, &tx, behind).await? {
            None => break None,
            Some((_, 0)) if empty + 1 < EMPTY_BATCHES_PER_TX => empty += 1,
            Some((lag, _)) => break Some(lag),
        }
    };
    tx.commit().await?;
    Ok((empty + u64::from(lag.is_some()), lag))
}

/// Opens, handles and finishes one batch in `tx`; returns its lag in seconds and its
/// number of events, None when there was no batch.
///
/// A consumer that is `behind` asks for at least [`CATCH_UP_COUNT`] events (PgQ then ends
/// the batch at the first tick that has them), and for the next tick only when fewer are
/// waiting: with the ticker ticking every few milliseconds under load, one batch per tick
/// would spend more on batch overhead than on events and never catch up.
async fn one_batch<H: BatchHandler>(
    opts: &ConsumerOptions,
    handler: &mut H,
    tx: &Transaction<'_>,
    behind: bool,
) -> Result<Option<(f64, u64)>, HandlerError> {
    let started = Instant::now();
    let catch_up = (behind && opts.min_count.is_none()).then_some(CATCH_UP_COUNT);
    let mut row = open_batch(tx, opts, catch_up.or(opts.min_count)).await?;
    if catch_up.is_some() && row.get::<_, Option<i64>>(0).is_none() {
        row = open_batch(tx, opts, None).await?;
    }
    let Some(batch_id) = row.get::<_, Option<i64>>(0) else {
        return Ok(None);
    };
    let batch = BatchRef {
        batch_id,
        cur_tick_id: row.get(1),
        prev_tick_id: row.get(2),
    };
    let (retries, events) = if opts.lazy_fetch > 0 {
        handle_lazily(opts, handler, tx, batch).await?
    } else {
        let events = match &opts.node {
            Some(node) => tx
                .query(
                    "select * from pgfan.node_batch_events($1, $2)",
                    &[node, &batch_id],
                )
                .await?
                .iter()
                .map(Event::from_row)
                .collect(),
            None => crate::pgq::batch_events(tx, batch_id).await?,
        };
        let n = events.len() as u64;
        (handler.events(tx, batch, &events).await?, n)
    };
    handler.batch_end(tx, batch).await?;
    for r in retries {
        let secs = opts
            .retry_delay(r.retries)
            .as_secs()
            .clamp(0, i32::MAX as u64) as i32;
        match &opts.node {
            Some(node) => {
                tx.query_one(
                    "select pgfan.node_event_retry($1, $2, $3, $4::int4)",
                    &[node, &batch_id, &r.ev_id, &secs],
                )
                .await?
            }
            None => {
                tx.query_one(
                    "select pgq.event_retry($1, $2, $3::int4)",
                    &[&batch_id, &r.ev_id, &secs],
                )
                .await?
            }
        };
    }
    match &opts.node {
        Some(node) => {
            tx.query_one("select pgfan.node_finish_batch($1, $2)", &[node, &batch_id])
                .await?;
        }
        None => {
            crate::pgq::finish_batch(tx, batch_id).await?;
        }
    }
    let labels = labels(opts);
    metrics::counter!("pgfan_consumer_batches_total", &labels).increment(1);
    metrics::counter!("pgfan_consumer_events_total", &labels).increment(events);
    let lag = row.get::<_, f64>(3);
    metrics::gauge!("pgfan_consumer_lag_seconds", &labels).set(lag);
    metrics::histogram!("pgfan_consumer_batch_duration_seconds", &labels).record(started.elapsed());
    Ok(Some((lag, events)))
}

/// The labels of a consumer's metrics.
fn labels(opts: &ConsumerOptions) -> [(&'static str, String); 2] {
    [
        ("queue", opts.queue.clone()),
        ("consumer", opts.consumer.clone()),
    ]
}

async fn handle_lazily<H: BatchHandler>(
    opts: &ConsumerOptions,
    handler: &mut H,
    tx: &Transaction<'_>,
    batch: BatchRef,
) -> Result<(Vec<RetryEvent>, u64), HandlerError> {
    let mut retries = Vec::new();
    let mut count = 0;
    let first = match &opts.node {
        Some(node) => {
            tx.query(
                "select * from pgfan.node_batch_cursor($1, $2, $3, $4)",
                &[node, &batch.batch_id, &CURSOR, &opts.lazy_fetch],
            )
            .await?
        }
        None => {
            tx.query(
                "select * from pgq.get_batch_cursor($1, $2, $3)",
                &[&batch.batch_id, &CURSOR, &opts.lazy_fetch],
            )
            .await?
        }
    };
    let mut chunk: Vec<Event> = first.iter().map(Event::from_row).collect();
    let fetch = format!("fetch {} from {CURSOR}", opts.lazy_fetch);
    loop {
        let full = chunk.len() as i32 >= opts.lazy_fetch;
        count += chunk.len() as u64;
        if !chunk.is_empty() {
            retries.extend(handler.events(tx, batch, &chunk).await?);
        }
        if !full {
            break;
        }
        chunk = tx
            .query(&fetch, &[])
            .await?
            .iter()
            .map(Event::from_row)
            .collect();
    }
    tx.batch_execute(&format!("close {CURSOR}")).await?;
    Ok((retries, count))
}

/// What ended a wait for a tick.
enum Wait {
    /// Our queue ticked, or the poll period passed: look for a batch.
    Tick,
    Stop,
    /// The connection that LISTENs ended.
    Deaf,
}

/// How long a session's first wait lasts at most: a point of the poll period fixed by the
/// consumer's name, so that consumers that connected together (a fleet whose master
/// restarted) spread their fallback looks over the period instead of looking in step for
/// ever after.
fn first_poll(opts: &ConsumerOptions) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (&opts.queue, &opts.consumer).hash(&mut h);
    let point = (h.finish() % 1_000_000) as f64 / 1_000_000.0;
    opts.poll_period.mul_f64(point)
}

/// Waits for a tick notification of our queue, `period`, or a stop.
async fn wait_for_tick(
    opts: &ConsumerOptions,
    period: Duration,
    messages: &mut mpsc::UnboundedReceiver<AsyncMessage>,
    stop: &mut watch::Receiver<bool>,
) -> Wait {
    let deadline = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return if *stop.borrow() { Wait::Stop } else { Wait::Tick };
            }
            r = stop.changed() => if r.is_err() || *stop.borrow() { return Wait::Stop },
            msg = messages.recv() => match msg {
                Some(AsyncMessage::Notification(n)) if n.payload() == opts.queue => return Wait::Tick,
                Some(_) => {}
                None => return Wait::Deaf,
            },
        }
    }
}

fn interval_text(d: Duration) -> String {
    format!("{} microseconds", d.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_polls_of_a_fleet_spread_over_the_period() {
        let period = Duration::from_secs(600);
        let mut points: Vec<Duration> = (0..1000)
            .map(|i| {
                let mut o = ConsumerOptions::new("", format!("pgfan_node_n{i}"), "c");
                o.poll_period = period;
                first_poll(&o)
            })
            .collect();
        assert!(points.iter().all(|p| *p < period));
        points.sort();
        // Every tenth of the period has about a tenth of the fleet (binomial: 100 ± 30).
        for k in 0..10 {
            let (lo, hi) = (period * k / 10, period * (k + 1) / 10);
            let n = points.iter().filter(|p| **p >= lo && **p < hi).count();
            assert!((70..=130).contains(&n), "{n} first polls in tenth {k}");
        }
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let mut o = ConsumerOptions::new("", "q", "c");
        o.retry_base = Duration::from_secs(5);
        o.retry_max = Duration::from_secs(60);
        assert_eq!(o.retry_delay(0), Duration::from_secs(5));
        assert_eq!(o.retry_delay(2), Duration::from_secs(20));
        assert_eq!(o.retry_delay(10), Duration::from_secs(60));
    }
}
