//! Running one task on one node connection.
//!
//! A transactional task (tx=1) runs in ONE node transaction: lock the task row and re-check
//! that it is still claimed, set its statement timeout locally, run the work, and write the
//! done+result row before COMMIT, so the effect and the record of it commit together
//! (exactly once). A failure rolls everything back and is recorded in a new transaction.
//!
//! The bookkeeping statements and the copy statement are sent with their parameter types
//! (`*_typed`): one round trip each instead of a prepare and an execute.
//!
//! A task with tx=0 runs outside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM):
//! it is marked running (committed), run with a session statement timeout, then marked
//! done or failed. A crash in between leaves it running, and it runs again: at-least-once.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::execute::execute;
use super::payload::Work;
use super::plan::{plan, Plan, PlanError};
use super::result::{error_text, TaskResult};
use super::NodeConfig;
use crate::db::{self, ErrorClass};

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
        }
    }
}

/// How a task run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded as done, failed or cancelled.
    Recorded(&'static str),
    /// Someone else finished it already (another daemon on the same node database).
    Skipped,
    /// Left unfinished, to run again after the restart: abandoned on stop.
    Left,
    /// The node connection failed; the task is left unfinished, to run again.
    Lost,
}

/// A worker's report to the executor; `client` is None when the connection is unusable.
pub struct Finished {
    pub task_id: i64,
    pub client: Option<Client>,
    pub outcome: Outcome,
}

/// Runs `task` on `client` and hands the connection back.
pub async fn run(
    mut client: Client,
    task: Task,
    cfg: Arc<NodeConfig>,
    intent: SharedIntent,
) -> Finished {
    let task_id = task.task_id;
    let started = std::time::Instant::now();
    let ran = if task.tx {
        run_in_tx(&mut client, &task, &cfg, &intent).await
    } else {
        run_autocommit(&mut client, &task, &cfg, &intent).await
    };
    let outcome = ran.unwrap_or_else(|err| {
        tracing::warn!(task_id, error = %err, "Task left to run again: node connection failed");
        Outcome::Lost
    });
    if let Outcome::Recorded(state) = outcome {
        let labels = [("node", cfg.name.clone()), ("state", state.to_string())];
        metrics::histogram!("pgfan_node_task_duration_seconds", &labels).record(started.elapsed());
    }
    Finished {
        task_id,
        client: (!client.is_closed()).then_some(client),
        outcome,
    }
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
    match plan(client, cfg, &work).await {
        Ok(p) => Ok(Ok(p)),
        Err(PlanError::Refused(msg)) => Ok(Err(msg)),
        Err(PlanError::Db(e)) if lost(&e) => Err(e),
        Err(PlanError::Db(e)) => Ok(Err(error_text(&e))),
    }
}

fn lost(err: &tokio_postgres::Error) -> bool {
    db::classify(err) == ErrorClass::Reconnect
}

async fn run_in_tx(
    client: &mut Client,
    task: &Task,
    cfg: &NodeConfig,
    intent: &SharedIntent,
) -> Result<Outcome, tokio_postgres::Error> {
    let planned = prepare(client, task, cfg).await?;
    let tx = client.transaction().await?;
    // The update waits for the row lock of a session that still runs this task (a killed
    // daemon's backend) and re-checks the state after the wait: one statement to take the
    // task and count the attempt.
    let taken = tx
        .execute_typed(
            "update pgfan_node.task set started_at = now(), attempts = attempts + 1
              where task_id = $1 and state = 'claimed'",
            &[(&task.task_id, Type::INT8)],
        )
        .await?;
    if taken == 0 {
        tx.commit().await?;
        return Ok(Outcome::Skipped);
    }
    if intent.get() != Intent::Run {
        tx.rollback().await?;
        return stop_unstarted(client, task, intent.get()).await;
    }
    let plan = match planned {
        Ok(p) => p,
        Err(msg) => {
            record(tx.client(), task.task_id, &TaskResult::failed(msg)).await?;
            tx.commit().await?;
            return Ok(Outcome::Recorded("failed"));
        }
    };
    if let Some(ms) = task.timeout_ms {
        set_timeout(tx.client(), ms, true).await?;
    }
    let ran = execute_as_task_role(tx.client(), cfg, &plan, true)
        .await
        .map(|r| r.and_then(|res| res.encode().map(|json| (res, json))));
    match ran {
        Ok(_) if intent.get() == Intent::Cancel => {
            tx.rollback().await?;
            stop_unstarted(client, task, Intent::Cancel).await
        }
        Ok(Ok((res, json))) => {
            record_json(tx.client(), task.task_id, &res, &json).await?;
            tx.commit().await?;
            Ok(Outcome::Recorded("done"))
        }
        Ok(Err(msg)) => {
            tx.rollback().await?;
            count_attempt(client, task.task_id).await?;
            record(client, task.task_id, &TaskResult::failed(msg)).await?;
            Ok(Outcome::Recorded("failed"))
        }
        Err(e) if lost(&e) => Err(e),
        Err(e) => {
            tx.rollback().await?;
            count_attempt(client, task.task_id).await?;
            after_error(client, task, intent.get(), &e).await
        }
    }
}

/// Counts a run whose transaction was rolled back (its own count went with it).
async fn count_attempt(client: &Client, task_id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute_typed(
            "update pgfan_node.task set attempts = attempts + 1, started_at = now()
              where task_id = $1 and state = 'claimed'",
            &[(&task_id, Type::INT8)],
        )
        .await?;
    Ok(())
}

/// A task stopped before it ran: cancelled ones are recorded, abandoned ones left.
async fn stop_unstarted(
    client: &Client,
    task: &Task,
    intent: Intent,
) -> Result<Outcome, tokio_postgres::Error> {
    match intent {
        Intent::Cancel => {
            record(client, task.task_id, &TaskResult::cancelled()).await?;
            Ok(Outcome::Recorded("cancelled"))
        }
        _ => Ok(Outcome::Left),
    }
}

/// Records the failure of the work (already rolled back), or its cancellation.
async fn after_error(
    client: &Client,
    task: &Task,
    intent: Intent,
    err: &tokio_postgres::Error,
) -> Result<Outcome, tokio_postgres::Error> {
    let result = match intent {
        Intent::Cancel => TaskResult::cancelled(),
        Intent::Abandon => return Ok(Outcome::Left),
        Intent::Run => TaskResult::failed(error_text(err)),
    };
    record(client, task.task_id, &result).await?;
    Ok(Outcome::Recorded(result.state))
}

async fn run_autocommit(
    client: &mut Client,
    task: &Task,
    cfg: &NodeConfig,
    intent: &SharedIntent,
) -> Result<Outcome, tokio_postgres::Error> {
    let planned = prepare(client, task, cfg).await?;
    let started = client
        .execute_typed(
            "update pgfan_node.task
                set state = 'running', started_at = now(), attempts = attempts + 1
              where task_id = $1 and (state = 'claimed' or (state = 'running' and not tx))",
            &[(&task.task_id, Type::INT8)],
        )
        .await?;
    if started == 0 {
        return Ok(Outcome::Skipped);
    }
    if intent.get() != Intent::Run {
        return stop_unstarted(client, task, intent.get()).await;
    }
    let plan = match planned {
        Ok(p) => p,
        Err(msg) => {
            record(client, task.task_id, &TaskResult::failed(msg)).await?;
            return Ok(Outcome::Recorded("failed"));
        }
    };
    if let Some(ms) = task.timeout_ms {
        set_timeout(client, ms, false).await?;
    }
    let ran = match assume_task_role(client, cfg, false).await {
        Ok(()) => execute_outside_tx(client, &plan).await,
        Err(e) => Err(e),
    };
    let kept_role = leave_task_role(client, cfg, false).await?;
    if task.timeout_ms.is_some() {
        client.batch_execute("reset statement_timeout").await?;
    }
    match ran {
        // Outside a transaction its effect stays; the run is reported as failed.
        Ok(_) if !kept_role => {
            record(client, task.task_id, &TaskResult::failed(ROLE_CHANGED)).await?;
            Ok(Outcome::Recorded("failed"))
        }
        Ok(res) => {
            record(client, task.task_id, &res).await?;
            Ok(Outcome::Recorded("done"))
        }
        Err(e) if lost(&e) => Err(e),
        Err(e) => after_error(client, task, intent.get(), &e).await,
    }
}

/// Raw SQL runs as sent; statements built from the catalog still get a transaction of their
/// own (a cursor needs one), which never includes the task's bookkeeping.
async fn execute_outside_tx(
    client: &mut Client,
    plan: &Plan,
) -> Result<TaskResult, tokio_postgres::Error> {
    if let Plan::Raw { .. } = plan {
        return execute(client, plan).await;
    }
    let tx = client.transaction().await?;
    let res = execute(tx.client(), plan).await?;
    tx.commit().await?;
    Ok(res)
}

/// The failure of a task that changed its role itself (RESET ROLE, SET ROLE).
const ROLE_CHANGED: &str =
    "the task changed its role (task_role is set on this node); its work was rolled back";

/// Runs the planned work as the node's `task_role` and goes back to the daemon's login for
/// the bookkeeping. Ok(Err(text)): the task changed its role itself, so its work must not
/// commit. SET ROLE is undone by a later RESET ROLE in the same session, so this check,
/// with the rollback of a transactional task, is what keeps sql tasks to the role.
async fn execute_as_task_role(
    c: &Client,
    cfg: &NodeConfig,
    plan: &Plan,
    local: bool,
) -> Result<Result<TaskResult, String>, tokio_postgres::Error> {
    assume_task_role(c, cfg, local).await?;
    let res = execute(c, plan).await?;
    Ok(match leave_task_role(c, cfg, local).await? {
        true => Ok(res),
        false => Err(ROLE_CHANGED.into()),
    })
}

/// Takes on `task_role` (`local`: until the transaction ends). The name is bound as a
/// parameter of set_config, the function form of SET ROLE, so it is never spliced into SQL.
async fn assume_task_role(
    c: &Client,
    cfg: &NodeConfig,
    local: bool,
) -> Result<(), tokio_postgres::Error> {
    if let Some(role) = &cfg.task_role {
        c.query_typed_one(
            "select pg_catalog.set_config('role', $1, $2)",
            &[(role, Type::TEXT), (&local, Type::BOOL)],
        )
        .await?;
    }
    Ok(())
}

/// Back to the daemon's login; false when the task was no longer running as `task_role`.
async fn leave_task_role(
    c: &Client,
    cfg: &NodeConfig,
    local: bool,
) -> Result<bool, tokio_postgres::Error> {
    let Some(role) = &cfg.task_role else {
        return Ok(true);
    };
    let row = c
        .query_typed_one(
            "select current_user::text = $1, pg_catalog.set_config('role', 'none', $2)",
            &[(role, Type::TEXT), (&local, Type::BOOL)],
        )
        .await?;
    Ok(row.get(0))
}

async fn set_timeout(c: &Client, ms: i32, local: bool) -> Result<(), tokio_postgres::Error> {
    c.query_typed_one(
        "select pg_catalog.set_config('statement_timeout', $1, $2)",
        &[(&ms.to_string(), Type::TEXT), (&local, Type::BOOL)],
    )
    .await?;
    Ok(())
}

/// Records the task's outcome (and result) if it is still unfinished; an oversized result
/// is recorded as a failure (the effect of a task outside a transaction stays).
async fn record(c: &Client, task_id: i64, res: &TaskResult) -> Result<(), tokio_postgres::Error> {
    match res.encode() {
        Ok(json) => record_json(c, task_id, res, &json).await,
        Err(msg) => {
            let failed = TaskResult::failed(msg);
            record_json(c, task_id, &failed, &failed.json()).await
        }
    }
}

async fn record_json(
    c: &Client,
    task_id: i64,
    res: &TaskResult,
    json: &str,
) -> Result<(), tokio_postgres::Error> {
    c.query_typed_one(
        "select pgfan_node.finish_task($1, $2, $3, $4::text::jsonb)",
        &[
            (&task_id, Type::INT8),
            (&res.state, Type::TEXT),
            (&res.error, Type::TEXT),
            (&json, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}
