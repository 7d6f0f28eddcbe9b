//! One database's ticker and maintenance sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::{ticking, TickerConfig};
use crate::db::Session;
use crate::outage::{sleep_or_stop, Outage};

/// Session advisory lock held by the active ticker of a database ("pgq.tick").
const TICKER_LOCK_KEY: i64 = 0x7067_712e_7469_636b;

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
    Ok(if ticking::run(session, db, cfg, stop).await? {
        End::Stop
    } else {
        End::Recycle
    })
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
