//! Running a batch of transactional copy tasks in one node transaction.
//!
//! A copy task is one statement the node builds from the catalog, so most of its cost in
//! a transaction of its own is fixed: the catalog lookup, taking the task, recording it,
//! the commit, and a round trip for each. Here those are paid once per batch: the copy
//! table is read once, the tasks are taken together (`task_begin_many`), each runs inside a
//! savepoint of its own so that a failing one rolls back alone, all statements go out
//! pipelined (one round trip, plus one per failure), and the results are recorded together
//! (`task_finish_many`) in the same transaction as the effects, before one COMMIT: each
//! effect still commits exactly once with its record.
//!
//! Only copy tasks are batched: their statements are the node's own, so nothing a task
//! does can change the session the next task in the transaction sees, and each is short,
//! so a cancel from the master can let a running batch finish (its late result is handled
//! on the master like any late one). Tasks with a timeout, `tx=0` tasks and `sql`/`call`
//! tasks run one by one ([`super::worker`]): their statements may run long and be
//! cancelled, and their SQL may change the session.
//!
//! A batch whose connection broke or whose transaction failed outside the tasks'
//! statements is not charged to all of its tasks: they run again one by one
//! ([`Outcome::Split`]), so only a task at fault fails.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::join_all;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::execute::{execute, Ran};
use super::payload::Work;
use super::plan::{plan_with, Plan, PlanError, Tables};
use super::result::{error_text, Json, TaskResult};
use super::worker::{lost, reset, Finished, Intent, Outcome, SharedIntent, Task};
use super::NodeConfig;

/// Most tasks in one batch: enough that fixed costs vanish, few enough that a batch stays
/// a short transaction.
pub const MAX_TASKS: usize = 200;

/// Whether `task` can run in a batch.
pub fn batchable(task: &Task) -> bool {
    task.tx && task.kind == "copy" && task.timeout_ms.is_none()
}

/// One task of a batch and how far it got.
struct Item {
    task: Task,
    plan: Result<Plan, String>,
    result: Option<TaskResult>,
}

/// Runs `tasks` (all [`batchable`]) in one transaction on `client`, resets the session,
/// and hands the connection back.
pub async fn run(
    client: Client,
    tasks: Vec<Task>,
    cfg: Arc<NodeConfig>,
    intent: SharedIntent,
) -> Finished {
    let ids: Vec<i64> = tasks.iter().map(|t| t.task_id).collect();
    match run_batch(&client, tasks, &cfg, &intent).await {
        Ok(outcomes) => {
            let client = reset(client, ids.first().copied().unwrap_or_default()).await;
            Finished { client, outcomes }
        }
        Err(_) if intent.get() == Intent::Abandon => Finished {
            client: None,
            outcomes: ids.into_iter().map(|id| (id, Outcome::Left)).collect(),
        },
        Err(err) => {
            tracing::warn!(tasks = ids.len(), error = %err, "A batch failed outside its tasks' statements; its tasks run again one by one");
            Finished {
                client: None,
                outcomes: ids.into_iter().map(|id| (id, Outcome::Split)).collect(),
            }
        }
    }
}

async fn run_batch(
    c: &Client,
    tasks: Vec<Task>,
    cfg: &NodeConfig,
    intent: &SharedIntent,
) -> Result<Vec<(i64, Outcome)>, tokio_postgres::Error> {
    let mut items = Vec::with_capacity(tasks.len());
    let mut tables = Tables::default();
    for task in tasks {
        let plan = match Work::parse(&task.kind, &task.data) {
            Err(e) => Err(e.to_string()),
            Ok(work) => match plan_with(c, cfg, &work, true, &mut tables).await {
                Ok(p) => Ok(p),
                Err(PlanError::Refused(msg)) => Err(msg),
                Err(PlanError::Db(e)) if lost(&e) => return Err(e),
                Err(PlanError::Db(e)) => Err(error_text(&e)),
            },
        };
        items.push(Item {
            task,
            plan,
            result: None,
        });
    }
    let taken = begin(c, &items).await?;
    if intent.get() != Intent::Run {
        // Abandoned on stop: nothing ran; the tasks run again after the restart.
        c.batch_execute("rollback").await?;
        return Ok(items
            .iter()
            .map(|i| (i.task.task_id, Outcome::Left))
            .collect());
    }
    let mut outcomes: Vec<(i64, Outcome)> = items
        .iter()
        .filter(|i| !taken.contains(&i.task.task_id))
        .map(|i| (i.task.task_id, Outcome::Skipped))
        .collect();
    items.retain(|i| taken.contains(&i.task.task_id));
    if items.is_empty() {
        c.batch_execute("rollback").await?;
        return Ok(outcomes);
    }
    execute_all(c, &mut items).await?;
    if intent.get() == Intent::Abandon {
        // Stopping: the drain's cancel may have failed a statement; nothing is recorded,
        // the whole batch rolls back and runs again after the restart.
        c.batch_execute("rollback").await?;
        let left = items.iter().map(|i| (i.task.task_id, Outcome::Left));
        outcomes.extend(left);
        return Ok(outcomes);
    }
    finish(c, &items).await?;
    outcomes.extend(items.iter().map(|i| {
        let state = i.result.as_ref().map_or("failed", |r| r.state);
        (i.task.task_id, Outcome::Recorded(state))
    }));
    Ok(outcomes)
}

/// Opens the batch's transaction and takes its tasks (one round trip); the ids taken.
async fn begin(c: &Client, items: &[Item]) -> Result<HashSet<i64>, tokio_postgres::Error> {
    let ids: Vec<i64> = items.iter().map(|i| i.task.task_id).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.task.run_key.as_str()).collect();
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&ids, Type::INT8_ARRAY), (&keys, Type::TEXT_ARRAY)];
    let (opened, taken) = tokio::join!(
        c.batch_execute("start transaction read write"),
        c.query_typed("select pgfan_node.task_begin_many($1, $2)", &params),
    );
    opened?;
    Ok(taken?.iter().map(|r| r.get(0)).collect())
}

/// Runs every planned task in a savepoint of its own, all pipelined; after a failure the
/// transaction is brought back to that task's savepoint and the rest go out again.
async fn execute_all(c: &Client, items: &mut [Item]) -> Result<(), tokio_postgres::Error> {
    for item in items.iter_mut() {
        if let Err(msg) = &item.plan {
            item.result = Some(TaskResult::failed(msg.clone()));
        }
    }
    let mut from = 0;
    while let Some(start) = (from..items.len()).find(|&i| items[i].result.is_none()) {
        let pending: Vec<usize> = (start..items.len())
            .filter(|&i| items[i].result.is_none())
            .collect();
        let runs = pending.iter().map(|&i| run_in_savepoint(c, &items[i].plan));
        let answers = join_all(runs).await;
        let mut failed_at = None;
        for (&i, answer) in pending.iter().zip(answers) {
            match answer {
                Ok(res) => items[i].result = Some(res),
                Err(e) if lost(&e) => return Err(e),
                Err(e) => {
                    // The first failure is this task's own; the rest only saw the
                    // aborted transaction and go out again.
                    items[i].result = Some(TaskResult::failed(error_text(&e)));
                    failed_at = Some(i);
                    break;
                }
            }
        }
        let Some(i) = failed_at else {
            break;
        };
        c.batch_execute("rollback to savepoint pgfan_task; release savepoint pgfan_task")
            .await?;
        from = i + 1;
    }
    Ok(())
}

/// Savepoint, the task's statement, release: sent together.
async fn run_in_savepoint(
    c: &Client,
    plan: &Result<Plan, String>,
) -> Result<TaskResult, tokio_postgres::Error> {
    let Ok(plan) = plan else {
        // Unplanned tasks are recorded as failed before anything runs.
        return Ok(TaskResult::failed("not planned"));
    };
    let (sp, ran, rel) = tokio::join!(
        c.batch_execute("savepoint pgfan_task"),
        execute(c, plan),
        c.batch_execute("release savepoint pgfan_task"),
    );
    sp?;
    let ran = ran?;
    rel?;
    Ok(match ran {
        Ran::Done(res) => res,
        // A copy returns one row with its count: never near the cap.
        Ran::TooLarge(msg) => TaskResult::failed(msg),
    })
}

/// Records every task's result with task_finish_many and commits (one round trip).
async fn finish(c: &Client, items: &[Item]) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<i64> = items.iter().map(|i| i.task.task_id).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.task.run_key.as_str()).collect();
    let empty = TaskResult::failed("the batch did not run this task");
    let results: Vec<&TaskResult> = items
        .iter()
        .map(|i| i.result.as_ref().unwrap_or(&empty))
        .collect();
    let states: Vec<&str> = results.iter().map(|r| r.state).collect();
    let errors: Vec<Option<&str>> = results.iter().map(|r| r.error.as_deref()).collect();
    let docs: Vec<Json> = results.iter().map(|r| r.json()).collect();
    let docs: Vec<&str> = docs.iter().map(|d| &**d).collect();
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&ids, Type::INT8_ARRAY),
        (&keys, Type::TEXT_ARRAY),
        (&states, Type::TEXT_ARRAY),
        (&errors, Type::TEXT_ARRAY),
        (&docs, Type::TEXT_ARRAY),
    ];
    let (finished, committed) = tokio::join!(
        c.query_typed_one(
            "select pgfan_node.task_finish_many($1, $2, $3, $4, $5)",
            &params
        ),
        c.batch_execute("commit"),
    );
    finished?;
    committed
}
