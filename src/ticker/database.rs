//! One database's ticker and maintenance sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::urgent::{self, Missed};
use super::TickerConfig;
use crate::db::Session;
use crate::outage::{sleep_or_stop, Outage};

/// Session advisory lock held by the active ticker of a database ("pgq.tick").
const TICKER_LOCK_KEY: i64 = 0x7067_712e_7469_636b;

/// Event sequence position of every queue that the ticker drives.
const POLL_SQL: &str =
    "select queue_name, pg_catalog.pg_sequence_last_value(queue_event_seq::regclass)
      from pgq.queue
     where not queue_ticker_paused and not queue_external_ticker";

/// Offers a tick to the given queues (all when NULL) and announces the ones that ticked.
/// Materialized so that `pgq.ticker` runs exactly once per queue.
const TICK_SQL: &str = "with t as materialized (
        select queue_name, pgq.ticker(queue_name) as tick_id
          from pgq.queue
         where not queue_ticker_paused and not queue_external_ticker
           and ($1::text[] is null or queue_name = any($1))
         order by queue_id)
    select queue_name, tick_id, pg_catalog.pg_notify('pgfan_tick', queue_name)::text
      from t where tick_id is not null";

/// Why a session ended without an error.
enum End {
    Stop,
    Recycle,
    /// The database has no usable pgq; look again after `check_period`.
    NoPgq,
}

/// Runs both sessions of `db` until stopped.
pub(super) async fn run(db: String, cfg: Arc<TickerConfig>, stop: watch::Receiver<bool>) {
    let ticker = tokio::spawn(session_loop(
        "ticker",
        db.clone(),
        cfg.clone(),
        stop.clone(),
    ));
    let maint = tokio::spawn(session_loop("maintenance", db, cfg, stop));
    let _ = ticker.await;
    let _ = maint.await;
}

async fn session_loop(
    what: &'static str,
    db: String,
    cfg: Arc<TickerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let mut outage = Outage::new(what, db.clone());
    loop {
        let result = match crate::db::connect_to("master", &cfg.conninfo(&db)).await {
            Ok(mut session) => {
                outage.recovered();
                match what {
                    "ticker" => ticker_session(&mut session, &db, &cfg, &mut stop).await,
                    _ => maint_session(&session.client, &db, &cfg, &mut stop).await,
                }
            }
            Err(err) => Err(err),
        };
        let pause = match result {
            Ok(End::Stop) => return,
            Ok(End::Recycle) => Duration::ZERO,
            Ok(End::NoPgq) => cfg.check_period,
            Err(err) => outage.failed(&err),
        };
        if sleep_or_stop(pause, &mut stop).await {
            return;
        }
    }
}

/// Whether `pgq` is installed in a version this ticker can drive (3.x, like pgqd requires).
async fn pgq_ready(client: &Client, db: &str) -> Result<bool, tokio_postgres::Error> {
    let has_schema: bool = client
        .query_one(
            "select exists (select 1 from pg_catalog.pg_namespace where nspname = 'pgq')",
            &[],
        )
        .await?
        .get(0);
    if !has_schema {
        tracing::debug!(db, "No pgq schema");
        return Ok(false);
    }
    let version: Option<String> = client.query_one("select pgq.version()", &[]).await?.get(0);
    let ok = version.as_deref().is_some_and(|v| v >= "3");
    if !ok {
        tracing::warn!(db, version = ?version, "Unsupported pgq version, not ticking");
    }
    Ok(ok)
}

async fn ticker_session(
    session: &mut Session,
    db: &str,
    cfg: &TickerConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<End, tokio_postgres::Error> {
    let client = &session.client;
    if !pgq_ready(client, db).await? {
        return Ok(End::NoPgq);
    }
    let locked: bool = client
        .query_one("select pg_try_advisory_lock($1)", &[&TICKER_LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        tracing::info!(db, "Another ticker holds this database; standing by");
        return Ok(End::NoPgq);
    }
    tracing::info!(db, "Ticking");
    client
        .batch_execute(&format!("listen {}", urgent::WAKE_CHANNEL))
        .await?;
    let poll = client.prepare(POLL_SQL).await?;
    let tick = client.prepare(TICK_SQL).await?;
    let opened = Instant::now();
    let mut seen: HashMap<String, Option<i64>> = HashMap::new();
    // When each queue's sequence last moved. A queue stays due for a tick offer at every
    // poll for one ticker_period after that (PgQ's own lag rules decide whether it ticks),
    // and during that window it is also checked for events that its last tick missed
    // because their transaction was still open (see urgent.rs).
    let mut moved_at: HashMap<String, Instant> = HashMap::new();
    let mut missed = Missed::default();
    let mut woken: HashSet<String> = HashSet::new();
    let mut next_full = Instant::now();
    loop {
        if !woken.is_empty() {
            // A commit announced these queues: tick them before anything else, so the
            // hand-off costs one statement (two when PgQ's idle back-off declines) rather
            // than waiting behind the sequence poll and the missed-events search below.
            let queues: Vec<String> = std::mem::take(&mut woken).into_iter().collect();
            tick_now(client, &tick, queues, db).await?;
        }
        let now = Instant::now();
        let mut quiet = Vec::new();
        for row in client.query(&poll, &[]).await? {
            let (queue, pos): (String, Option<i64>) = (row.get(0), row.get(1));
            if seen.insert(queue.clone(), pos) != Some(pos) {
                moved_at.insert(queue, now);
            } else if moved_at.contains_key(&queue) {
                quiet.push(queue);
            }
        }
        moved_at.retain(|_, at| now.duration_since(*at) < cfg.ticker_period);
        quiet.retain(|q| moved_at.contains_key(q));
        let mut urgent: HashSet<String> = missed.find(client, &quiet).await?.into_iter().collect();
        let due: Option<Vec<String>> = if now >= next_full {
            next_full = now + cfg.ticker_period;
            None
        } else {
            Some(moved_at.keys().chain(urgent.iter()).cloned().collect())
        };
        if due.as_ref().is_none_or(|q| !q.is_empty()) {
            for queue in offer_ticks(client, &tick, &due, db).await? {
                urgent.remove(&queue);
            }
        }
        if !urgent.is_empty() {
            // pgq.ticker declined them as idle: their events were counted by a tick that
            // could not see them yet.
            force_ticks(client, &tick, urgent.into_iter().collect(), db).await?;
        }
        if opened.elapsed() >= cfg.connection_lifetime {
            return Ok(End::Recycle);
        }
        if urgent::wait(cfg.poll_period, &mut session.messages, stop, &mut woken).await {
            return Ok(End::Stop);
        }
    }
}

/// Ticks `queues` now: offers each a tick and forces one where PgQ declines, because a
/// commit announced new events that an earlier tick may have counted while they were
/// still invisible (PgQ would then call the queue idle and back off).
async fn tick_now(
    client: &Client,
    tick: &tokio_postgres::Statement,
    mut queues: Vec<String>,
    db: &str,
) -> Result<(), tokio_postgres::Error> {
    let ticked = offer_ticks(client, tick, &Some(queues.clone()), db).await?;
    queues.retain(|q| !ticked.contains(q));
    if !queues.is_empty() {
        force_ticks(client, tick, queues, db).await?;
    }
    Ok(())
}

/// `pgq.force_tick` for `queues`, then a tick offer, which PgQ then accepts. Only queues
/// this ticker drives are forced: a wake-up's payload is whatever its sender wrote, and a
/// name that is no queue (or a paused one) must neither fail the session nor move a
/// sequence.
async fn force_ticks(
    client: &Client,
    tick: &tokio_postgres::Statement,
    queues: Vec<String>,
    db: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "select pgq.force_tick(queue_name) from pgq.queue
              where queue_name = any($1)
                and not queue_ticker_paused and not queue_external_ticker",
            &[&queues],
        )
        .await?;
    offer_ticks(client, tick, &Some(queues), db).await?;
    Ok(())
}

/// Runs TICK_SQL for `due` (all queues when None); returns the queues that ticked.
async fn offer_ticks(
    client: &Client,
    tick: &tokio_postgres::Statement,
    due: &Option<Vec<String>>,
    db: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut ticked = Vec::new();
    for row in client.query(tick, &[due]).await? {
        let (queue, tick_id): (String, i64) = (row.get(0), row.get(1));
        tracing::trace!(db, queue, tick_id, "Ticked");
        metrics::counter!("pgfan_ticker_ticks_total", "db" => db.to_string()).increment(1);
        ticked.push(queue);
    }
    Ok(ticked)
}

async fn maint_session(
    client: &Client,
    db: &str,
    cfg: &TickerConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<End, tokio_postgres::Error> {
    if !pgq_ready(client, db).await? {
        return Ok(End::NoPgq);
    }
    let opened = Instant::now();
    let mut next_retry = Instant::now();
    let mut next_maint = Instant::now();
    loop {
        if Instant::now() >= next_retry {
            move_retry_events(client, db).await?;
            next_retry = Instant::now() + cfg.retry_period;
        }
        if Instant::now() >= next_maint {
            run_maint_operations(client, db).await?;
            metrics::counter!("pgfan_ticker_maint_runs_total", "db" => db.to_string()).increment(1);
            next_maint = Instant::now() + cfg.maint_period;
        }
        if opened.elapsed() >= cfg.connection_lifetime {
            return Ok(End::Recycle);
        }
        let wake = next_retry
            .min(next_maint)
            .saturating_duration_since(Instant::now());
        if sleep_or_stop(wake, stop).await {
            return Ok(End::Stop);
        }
    }
}

/// `maint_retry_events` moves a few rows per call; repeat until it reports none.
async fn move_retry_events(client: &Client, db: &str) -> Result<(), tokio_postgres::Error> {
    let mut total = 0i64;
    loop {
        let n: i32 = client
            .query_one("select pgq.maint_retry_events()", &[])
            .await?
            .get(0);
        if n == 0 {
            break;
        }
        total += i64::from(n);
    }
    let moved = "pgfan_ticker_retry_events_moved_total";
    metrics::counter!(moved, "db" => db.to_string()).increment(total as u64);
    if total > 0 {
        tracing::debug!(
            db,
            moved = total,
            "Retry events moved back into their queues"
        );
    }
    Ok(())
}

/// Runs every operation `pgq.maint_operations()` lists, each in its own transaction
/// (rotation step 1 and step 2 must not share one), repeating an operation while it
/// reports more work.
async fn run_maint_operations(client: &Client, db: &str) -> Result<(), tokio_postgres::Error> {
    let ops = client
        .query(
            "select func_name, func_arg from pgq.maint_operations()",
            &[],
        )
        .await?;
    for op in ops {
        let (func, arg): (String, Option<String>) = (op.get(0), op.get(1));
        if let Some(table) = func.strip_prefix("vacuum").map(str::trim) {
            vacuum(
                client,
                db,
                if table.is_empty() {
                    arg.as_deref()
                } else {
                    Some(table)
                },
            )
            .await?;
            continue;
        }
        if !is_function_name(&func) {
            tracing::error!(
                db,
                func,
                "maint_operations returned an invalid function name; skipped"
            );
            continue;
        }
        // The function name comes from pgq.maint_operations (queue_extra_maint is admin-only
        // configuration) and was checked above; the argument is passed as a parameter.
        let sql = match arg {
            Some(_) => format!("select {func}($1)::text"),
            None => format!("select {func}()::text"),
        };
        for _ in 0..1000 {
            let row = match &arg {
                Some(a) => client.query_one(&sql, &[a]).await?,
                None => client.query_one(&sql, &[]).await?,
            };
            let result: Option<String> = row.get(0);
            if matches!(result.as_deref(), None | Some("0") | Some("")) {
                break;
            }
        }
    }
    Ok(())
}

async fn vacuum(
    client: &Client,
    db: &str,
    table: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let Some(table) = table else { return Ok(()) };
    // Resolving through regclass both checks that the table exists and quotes its name.
    let row = client
        .query_opt("select to_regclass($1)::text", &[&table])
        .await?;
    if let Some(name) = row.and_then(|r| r.get::<_, Option<String>>(0)) {
        tracing::debug!(db, table = name, "Vacuum");
        client.batch_execute(&format!("vacuum {name}")).await?;
    }
    Ok(())
}

fn is_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').count() <= 2
        && name.split('.').all(|p| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::is_function_name;

    #[test]
    fn only_plain_function_names_are_accepted() {
        assert!(is_function_name("pgq.maint_rotate_tables_step1"));
        assert!(is_function_name("londiste.periodic_maintenance"));
        assert!(!is_function_name("pgq.f(); drop table x"));
        assert!(!is_function_name("a.b.c"));
        assert!(!is_function_name(""));
    }
}
