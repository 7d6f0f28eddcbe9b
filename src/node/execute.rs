//! Running a planned task's statement and reading its result.
//!
//! The result is what a task ships: its rows as text, typed by the plan's shape. Rows are
//! read as a stream and written into the result's JSON one by one; reading stops when the
//! JSON passes the cap. The stream's channel is bounded, so the server waits while the
//! daemon reads: a task's result holds at most the cap in the daemon, however many rows the
//! statement would return.

use std::pin::pin;

use futures_util::TryStreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow, SimpleQueryStream, Statement};

use super::plan::Plan;
use super::result::{Budget, Rows, TaskResult};

/// Name of the cursor through which `call` results are read as text.
const CURSOR: &str = "pgfan_task_rows";

/// Rows per FETCH from the cursor: few round trips, while a FETCH abandoned at the cap
/// leaves little for the server to send in vain.
const FETCH_ROWS: u64 = 1000;

/// How a task's statement ended.
pub enum Ran {
    /// It completed; its result fits the cap.
    Done(TaskResult),
    /// Its result passed the cap: reading stopped. The statement may still be running and
    /// sending, so the caller must drop the connection (that ends the backend and rolls
    /// back its transaction) and record this text as the failure. Dropping alone ends the
    /// backend only once the statement has ended (the connection reads and discards the
    /// rest first), so the caller cancels it too (`db::cancel`); else an endless statement
    /// runs on, holding its locks.
    TooLarge(String),
}

/// Runs the planned work; inside a transaction when `c` has one open.
pub async fn execute(c: &Client, plan: &Plan) -> Result<Ran, tokio_postgres::Error> {
    execute_within(c, plan, None).await
}

/// [`execute`], its rows also counted against a batch's `budget`.
pub async fn execute_within(
    c: &Client,
    plan: &Plan,
    budget: Option<&Budget>,
) -> Result<Ran, tokio_postgres::Error> {
    match plan {
        Plan::Raw { sql, types } => {
            let mut rows = Rows::within(types.as_ref(), budget);
            let fits = read(c.simple_query_raw(sql).await?, &mut rows, true).await?;
            Ok(ran(rows, fits))
        }
        Plan::Query { sql, params, shape } => {
            // A cursor gets the values bound as parameters and still returns them as text.
            c.execute(
                &format!("declare {CURSOR} no scroll cursor for {sql}"),
                &refs(params),
            )
            .await?;
            let mut rows = Rows::within(Some(shape), budget);
            let fetch = format!("fetch forward {FETCH_ROWS} from {CURSOR}");
            loop {
                let before = rows.count();
                // Only the first FETCH starts the result; the later ones add to it.
                let fits = read(c.simple_query_raw(&fetch).await?, &mut rows, before == 0).await?;
                if !fits {
                    return Ok(ran(rows, false));
                }
                if rows.count() - before < FETCH_ROWS {
                    break;
                }
            }
            c.batch_execute(&format!("close {CURSOR}")).await?;
            Ok(ran(rows, true))
        }
        Plan::Modify { sql, params } => {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
                .collect();
            Ok(Ran::Done(TaskResult::count(
                c.execute_typed(sql, &typed).await?,
            )))
        }
    }
}

/// A copy action through its statement prepared beforehand (a batch prepares each of its
/// copy statements once, instead of the server parsing and planning it for every task).
pub async fn execute_prepared(
    c: &Client,
    statement: &Statement,
    params: &[String],
) -> Result<Ran, tokio_postgres::Error> {
    Ok(Ran::Done(TaskResult::count(
        c.execute(statement, &refs(params)).await?,
    )))
}

fn ran(rows: Rows<'_>, fits: bool) -> Ran {
    match fits {
        true => Ran::Done(rows.finish()),
        false => Ran::TooLarge(rows.too_large()),
    }
}

/// Reads a simple query's messages into `rows`; false when the result passed the cap (the
/// rest of the stream is left unread). `describe`: a statement's columns start the result
/// over (several statements: the last one's rows count); else they add to it (fetches).
async fn read(
    stream: SimpleQueryStream,
    rows: &mut Rows<'_>,
    describe: bool,
) -> Result<bool, tokio_postgres::Error> {
    let mut stream = pin!(stream);
    while let Some(msg) = stream.try_next().await? {
        match msg {
            SimpleQueryMessage::RowDescription(cols) if describe => {
                rows.describe(cols.iter().map(|c| c.name().to_string()).collect());
            }
            SimpleQueryMessage::Row(row) if !rows.push(values(&row))? => return Ok(false),
            SimpleQueryMessage::CommandComplete(_) if describe => rows.complete(),
            _ => {}
        }
    }
    Ok(true)
}

/// A row's values as text; an error instead of a panic for one that is not UTF-8 (a task
/// that changed `client_encoding`).
fn values(
    row: &SimpleQueryRow,
) -> impl Iterator<Item = Result<Option<&str>, tokio_postgres::Error>> {
    (0..row.len()).map(|i| row.try_get(i))
}

fn refs(params: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}
