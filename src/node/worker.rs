//! Running one task on one task connection.
//!
//! The task connection is logged in as the node's `task_role` (or the daemon's login when
//! none is set): the task's SQL has that login's rights for its whole run, whatever it
//! executes, because RESET ROLE and SET ROLE can only reach roles the login is a member of.
//! That login has no rights on `pgfan_node`'s tables; it starts and finishes its task through
//! two doors, `task_begin` and `task_finish`, which want the task's run key (read by the
//! daemon as the owner, never visible to task SQL).
//!
//! A transactional task (tx=1) runs in ONE node transaction: take the task (task_begin waits
//! for the row lock of a session that still runs it, then re-checks its state), set its
//! statement timeout locally, run the work, and record done+result (task_finish) before
//! COMMIT, so the effect and the record of it commit together (exactly once). The guard
//! refuses SQL that would end that transaction; task_finish catches what got past it (the
//! transaction id changed). A failure rolls everything back and is recorded in a new
//! transaction. Statements that do not depend on each other's answers are pipelined.
//!
//! A task with tx=0 runs outside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM):
//! it is marked running (committed), run with a session statement timeout, then marked
//! done or failed. A crash in between leaves it running, and it runs again: at-least-once.
//!
//! After every task the session is reset (`DISCARD ALL`: settings, role, temporary tables,
//! prepared statements, cursors, advisory locks, LISTEN), so the next task on the
//! connection starts clean; a session that cannot be reset is closed.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::execute::{execute, Ran};
use super::payload::Work;
use super::plan::{plan, Plan, PlanError};
use super::result::{error_text, TaskResult};
use super::NodeConfig;
use crate::db::{self, ErrorClass};

/// SQLSTATE that `pgfan_node.task_finish` raises when the task ended its own transaction.
const ESCAPED: &str = "PF001";

/// What the executor wants of a task that is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Intent {
    /// Run it to the end.
    Run = 0,
    /// It was cancelled on the master: stop it and record it as cancelled.
    Cancel = 1,
    /// The daemon is stopping: stop it and leave it to run again after the restart.
    Abandon = 2,
}

/// An [`Intent`] shared between the executor and the task's worker.
#[derive(Debug, Clone, Default)]
pub struct SharedIntent(Arc<AtomicU8>);

impl SharedIntent {
    pub fn get(&self) -> Intent {
        match self.0.load(Ordering::SeqCst) {
            1 => Intent::Cancel,
            2 => Intent::Abandon,
            _ => Intent::Run,
        }
    }

    pub fn set(&self, intent: Intent) {
        self.0.store(intent as u8, Ordering::SeqCst);
    }
}

/// A row of `pgfan_node.task` as the executor picks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub task_id: i64,
    pub kind: String,
    pub data: String,
    pub lane: Option<String>,
    pub timeout_ms: Option<i32>,
    pub tx: bool,
    /// The secret the doors want; see the module comment.
    pub run_key: String,
}

impl Task {
    pub fn from_row(row: &Row) -> Task {
        Task {
            task_id: row.get("task_id"),
            kind: row.get("kind"),
            data: row.get("data"),
            lane: row.get("lane"),
            timeout_ms: row.get("timeout_ms"),
            tx: row.get("tx"),
            run_key: row.get("run_key"),
        }
    }
}

/// How a task run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded as done, failed or cancelled.
    Recorded(&'static str),
    /// Someone else finished it already (another daemon on the same node database).
    Skipped,
    /// Left unfinished, to run again after the restart: abandoned on stop.
    Left,
    /// The node connection failed; the task is left unfinished, to run again.
    Lost,
    /// Cancelled on the master while the node's own statements ran on its connection: the
    /// connection is closed and the executor records the cancellation.
    Cancelled,
    /// Its batch failed outside the tasks' statements (a lost connection, a session a task
    /// broke): left unfinished, to run again alone, so that only the task at fault fails.
    Split,
    /// The task failed in a way that left its session unusable (a result over the cap, a
    /// session its SQL broke): the connection is closed and the executor records this
    /// failure through its own login.
    Broken(String),
}

/// A worker's report to the executor: how each of its tasks ended; `client` is None when
/// the connection is unusable.
pub struct Finished {
    pub client: Option<Client>,
    pub outcomes: Vec<(i64, Outcome)>,
}

/// Runs `task` on `client`, resets the session, and hands the connection back.
pub async fn run(
    client: Client,
    task: Task,
    cfg: Arc<NodeConfig>,
    intent: SharedIntent,
) -> Finished {
    let task_id = task.task_id;
    let started = std::time::Instant::now();
    let ran = if task.tx {
        run_in_tx(&client, &task, &cfg, &intent).await
    } else {
        run_autocommit(&client, &task, &cfg, &intent).await
    };
    let (outcome, usable) = match ran {
        Ok(outcome) => {
            let usable = !matches!(outcome, Outcome::Broken(_) | Outcome::Lost);
            (outcome, usable)
        }
        Err(err) if lost(&err) => {
            tracing::warn!(task_id, error = %err, "Task left to run again: node connection failed");
            (Outcome::Lost, false)
        }
        // A cancel sent for this task (by the master, or by a stopping daemon) may reach
        // one of the node's own statements instead of the task's: that is the cancel, not
        // a failure of the task.
        Err(_) if intent.get() == Intent::Cancel => (Outcome::Cancelled, false),
        Err(_) if intent.get() == Intent::Abandon => (Outcome::Left, false),
        Err(err) => (
            Outcome::Broken(format!(
                "the task's session failed outside its SQL, so it was closed: {}",
                error_text(&err)
            )),
            false,
        ),
    };
    if let Outcome::Recorded(state) = outcome {
        let labels = [("node", cfg.name.clone()), ("state", state.to_string())];
        metrics::histogram!("pgfan_node_task_duration_seconds", &labels).record(started.elapsed());
    }
    let client = match usable {
        true => reset(client, task_id).await,
        false => None,
    };
    Finished {
        client,
        outcomes: vec![(task_id, outcome)],
    }
}

/// The session as a new connection has it, or None (closed) when it cannot be reset.
pub(super) async fn reset(client: Client, task_id: i64) -> Option<Client> {
    if client.is_closed() {
        return None;
    }
    match client.batch_execute("discard all").await {
        Ok(()) => Some(client),
        Err(err) => {
            tracing::warn!(task_id, error = %err, "Closing a task connection that could not be reset");
            None
        }
    }
}

pub(super) fn lost(err: &tokio_postgres::Error) -> bool {
    db::classify(err) == ErrorClass::Reconnect
}

/// Plans the task; Err(text) is a failure to record, Ok(Err(e)) a lost connection.
async fn prepare(
    client: &Client,
    task: &Task,
    cfg: &NodeConfig,
) -> Result<Result<Plan, String>, tokio_postgres::Error> {
    let work = match Work::parse(&task.kind, &task.data) {
        Ok(w) => w,
        Err(e) => return Ok(Err(e.to_string())),
    };
    match plan(client, cfg, &work, task.tx).await {
        Ok(p) => Ok(Ok(p)),
        Err(PlanError::Refused(msg)) => Ok(Err(msg)),
        Err(PlanError::Db(e)) if lost(&e) => Err(e),
        Err(PlanError::Db(e)) => Ok(Err(error_text(&e))),
    }
}

/// Opens the task's transaction and takes the task in it (one round trip).
async fn begin(c: &Client, task: &Task) -> Result<bool, tokio_postgres::Error> {
    let (opened, taken) = tokio::join!(
        // Explicitly read-write: a task may have set default_transaction_read_only for its
        // login, which must not stop the bookkeeping of the next one.
        c.batch_execute("start transaction read write"),
        take(c, task),
    );
    opened?;
    taken
}

async fn take(c: &Client, task: &Task) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_typed_one(
        "select pgfan_node.task_begin($1, $2)",
        &[(&task.task_id, Type::INT8), (&task.run_key, Type::TEXT)],
    )
    .await?
    .get(0))
}

async fn run_in_tx(
    c: &Client,
    task: &Task,
    cfg: &NodeConfig,
    intent: &SharedIntent,
) -> Result<Outcome, tokio_postgres::Error> {
    let planned = prepare(c, task, cfg).await?;
    if !begin(c, task).await? {
        c.batch_execute("rollback").await?;
        return Ok(Outcome::Skipped);
    }
    if intent.get() != Intent::Run {
        c.batch_execute("rollback").await?;
        return stop_unstarted(c, task, intent.get()).await;
    }
    let plan = match planned {
        Ok(p) => p,
        Err(msg) => return finish_and_commit(c, task, &TaskResult::failed(msg)).await,
    };
    if let Some(ms) = task.timeout_ms {
        set_timeout(c, ms, true).await?;
    }
    match execute(c, &plan).await {
        // The statement may still be sending: nothing more goes on this connection, which
        // is closed, and that rolls the transaction back.
        Ok(Ran::TooLarge(msg)) => {
            cancel_statement(c, cfg).await;
            Ok(Outcome::Broken(format!("{msg}; its work was rolled back")))
        }
        Ok(_) if intent.get() == Intent::Cancel => {
            c.batch_execute("rollback").await?;
            stop_unstarted(c, task, Intent::Cancel).await
        }
        Ok(Ran::Done(res)) => finish_and_commit(c, task, &res).await,
        Err(e) if lost(&e) => Err(e),
        Err(e) => {
            c.batch_execute("rollback").await?;
            after_error(c, task, intent.get(), &e).await
        }
    }
}

/// Records the result in the task's transaction and commits both (one round trip). When
/// the task's SQL had ended that transaction, nothing is recorded there: the escape is
/// recorded as the task's failure instead.
async fn finish_and_commit(
    c: &Client,
    task: &Task,
    res: &TaskResult,
) -> Result<Outcome, tokio_postgres::Error> {
    match commit_record(c, task, res).await? {
        Some(outcome) => Ok(outcome),
        None => {
            tracing::warn!(
                task_id = task.task_id,
                "A task ended the node transaction it ran in"
            );
            record(c, task, &TaskResult::failed(ESCAPE_TEXT)).await
        }
    }
}

/// task_finish and COMMIT pipelined; None when task_finish found the task's transaction
/// ended by its SQL (the COMMIT after its error then rolls back).
async fn commit_record(
    c: &Client,
    task: &Task,
    res: &TaskResult,
) -> Result<Option<Outcome>, tokio_postgres::Error> {
    let oversized;
    let res = match res.encode() {
        Ok(_) => res,
        Err(msg) => {
            oversized = TaskResult::failed(msg);
            &oversized
        }
    };
    let (finished, committed) = tokio::join!(finish(c, task, res), c.batch_execute("commit"));
    match finished {
        Ok(_) => {
            committed?;
            log_failure(task.task_id, res);
            Ok(Some(Outcome::Recorded(res.state)))
        }
        Err(e) if e.code().is_some_and(|s| s.code() == ESCAPED) => {
            committed?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A task that failed is said in the log (its error also travels with its result).
pub(super) fn log_failure(task_id: i64, res: &TaskResult) {
    if res.state == "failed" {
        tracing::info!(
            task_id,
            error = res.error.as_deref().unwrap_or(""),
            "Task failed"
        );
    }
}

/// The failure of a task whose SQL ended its own transaction (it got past the guard).
const ESCAPE_TEXT: &str = "the task ended the transaction it ran in (COMMIT, ROLLBACK or the \
     like): what it did before that may have been committed, and what came after ran outside \
     the task's transaction; submit SQL that controls transactions with tx => false";

/// task_finish with the result's JSON; Err for a failed or escaped recording.
async fn finish(c: &Client, task: &Task, res: &TaskResult) -> Result<bool, tokio_postgres::Error> {
    let json = res.json();
    let json: &str = &json;
    Ok(c.query_typed_one(
        "select pgfan_node.task_finish($1, $2, $3, $4, $5::text::jsonb)",
        &[
            (&task.task_id, Type::INT8),
            (&task.run_key, Type::TEXT),
            (&res.state, Type::TEXT),
            (&res.error, Type::TEXT),
            (&json, Type::TEXT),
        ],
    )
    .await?
    .get(0))
}

/// Records an outcome outside the task's run, in a read-write transaction of its own
/// (whatever the task did to its session's defaults); for a transactional task that
/// transaction takes the task again, which also counts the attempt.
async fn record(
    c: &Client,
    task: &Task,
    res: &TaskResult,
) -> Result<Outcome, tokio_postgres::Error> {
    let taken = if task.tx {
        begin(c, task).await?
    } else {
        c.batch_execute("start transaction read write").await?;
        true
    };
    if !taken {
        c.batch_execute("rollback").await?;
        return Ok(Outcome::Skipped);
    }
    Ok(commit_record(c, task, res).await?.unwrap_or_else(|| {
        Outcome::Broken("the node's transaction ended while recording the task".into())
    }))
}

/// Counts a transactional run that was rolled back (its own count went with it): a
/// transaction that only takes the task through the door.
async fn count_attempt(c: &Client, task: &Task) -> Result<(), tokio_postgres::Error> {
    begin(c, task).await?;
    c.batch_execute("commit").await
}

/// A task stopped before it ran: cancelled ones are recorded, abandoned ones left.
async fn stop_unstarted(
    c: &Client,
    task: &Task,
    intent: Intent,
) -> Result<Outcome, tokio_postgres::Error> {
    match intent {
        Intent::Cancel => record(c, task, &TaskResult::cancelled()).await,
        _ => Ok(Outcome::Left),
    }
}

/// Records the failure of the work (already rolled back), or its cancellation.
async fn after_error(
    c: &Client,
    task: &Task,
    intent: Intent,
    err: &tokio_postgres::Error,
) -> Result<Outcome, tokio_postgres::Error> {
    let result = match intent {
        Intent::Cancel => TaskResult::cancelled(),
        Intent::Abandon => {
            if task.tx {
                count_attempt(c, task).await?;
            }
            return Ok(Outcome::Left);
        }
        Intent::Run => TaskResult::failed(error_text(err)),
    };
    record(c, task, &result).await
}

async fn run_autocommit(
    c: &Client,
    task: &Task,
    cfg: &NodeConfig,
    intent: &SharedIntent,
) -> Result<Outcome, tokio_postgres::Error> {
    let planned = prepare(c, task, cfg).await?;
    if !take(c, task).await? {
        return Ok(Outcome::Skipped);
    }
    if intent.get() != Intent::Run {
        return stop_unstarted(c, task, intent.get()).await;
    }
    let plan = match planned {
        Ok(p) => p,
        Err(msg) => return record(c, task, &TaskResult::failed(msg)).await,
    };
    if let Some(ms) = task.timeout_ms {
        set_timeout(c, ms, false).await?;
    }
    let ran = match execute_outside_tx(c, &plan).await {
        // The statement may still be sending: nothing more goes on this connection.
        Ok(Ran::TooLarge(msg)) => {
            cancel_statement(c, cfg).await;
            return Ok(Outcome::Broken(msg));
        }
        Ok(Ran::Done(res)) => Ok(res),
        Err(e) if lost(&e) => return Err(e),
        Err(e) => Err(e),
    };
    // SQL run as sent may have left a transaction block open (BEGIN without COMMIT, or
    // one that failed): what it did not commit is not kept, and the record needs its own.
    c.batch_execute("rollback").await?;
    match ran {
        Ok(res) => record(c, task, &res).await,
        Err(e) => after_error(c, task, intent.get(), &e).await,
    }
}

/// Raw SQL runs as sent; statements built from the catalog still get a transaction of their
/// own (a cursor needs one), which never includes the task's bookkeeping.
async fn execute_outside_tx(c: &Client, plan: &Plan) -> Result<Ran, tokio_postgres::Error> {
    if let Plan::Raw { .. } = plan {
        return execute(c, plan).await;
    }
    c.batch_execute("start transaction read write").await?;
    let ran = execute(c, plan).await?;
    if let Ran::Done(_) = ran {
        c.batch_execute("commit").await?;
    }
    Ok(ran)
}

/// Stops the statement of a refused result: a dropped connection would still read (and
/// discard) its rows until it ends, and an endless one never does.
async fn cancel_statement(c: &Client, cfg: &NodeConfig) {
    if let Err(err) = db::cancel(&cfg.db, &c.cancel_token()).await {
        tracing::warn!(error = %err, "Could not cancel the statement of a refused result");
    }
}

async fn set_timeout(c: &Client, ms: i32, local: bool) -> Result<(), tokio_postgres::Error> {
    c.query_typed_one(
        "select pg_catalog.set_config('statement_timeout', $1, $2)",
        &[(&ms.to_string(), Type::TEXT), (&local, Type::BOOL)],
    )
    .await?;
    Ok(())
}
