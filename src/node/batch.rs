//! Running a batch of transactional tasks in one node transaction.
//!
//! A small task in a transaction of its own is mostly fixed cost: taking the task,
//! recording it, the commit, a round trip for each, and for a copy the catalog lookup.
//! Here those are paid once per batch: copy tables are read once, `sql` tasks are
//! described together, the tasks are taken together (`task_begin_many`), each runs inside
//! a savepoint of its own so that a failing one rolls back alone, all statements go out
//! pipelined (one round trip, plus one per failure), and the results are recorded together
//! (`task_finish_many`) in the same transaction as the effects, before one COMMIT: each
//! effect still commits exactly once with its record.
//!
//! Batched: transactional `copy` and `sql` tasks without a timeout. `tx=0` tasks (no
//! transaction to share), `call` tasks (their cursor reads take several round trips) and
//! tasks with a timeout run one by one ([`super::worker`]).
//!
//! What a task's SQL can do to the tasks after it in the same transaction is undone after
//! each one: the guard refuses transaction control in it (as for any transactional task),
//! and a reset after each `sql` task's savepoint puts back settings, role, cursors,
//! prepared statements, LISTEN, advisory locks, temporary tables and sequence state.
//!
//! A cancel from the master reaches the task it is meant for: the batch knows which task's
//! statement the server is running (its savepoint has answered, its statement has not) and
//! sends the cancel only then, or when the batch reaches that task. A cancel that hits a
//! neighbour instead (it raced the end of its target) gives that neighbour back unrun, to
//! run alone; so does a deadlock or lock timeout, which the batch's longer-held locks may
//! have caused. A lane's later tasks in the batch go back with it, keeping the lane's order.
//!
//! A batch whose connection broke, whose transaction failed outside the tasks' statements,
//! or whose results together passed one task's cap is not charged to its tasks: they run
//! again one by one ([`Outcome::Split`]), so only a task at fault fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::join_all;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Client, Statement};

use super::execute::{execute_prepared, execute_within, Ran};
use super::payload::Work;
use super::plan::{plan_with, Plan, PlanError, Tables};
use super::result::{error_text, Budget, Json, TaskResult};
use super::worker::{lost, reset, Finished, Intent, Outcome, SharedIntent, Task};
use super::NodeConfig;

/// Most tasks in one batch: enough that fixed costs vanish, few enough that a batch stays
/// a short transaction.
pub const MAX_TASKS: usize = 200;

/// After each `sql` task: what its SQL may have changed in the session, put back inside the
/// transaction (DISCARD ALL cannot run in one). RESET ALL first and on its own, so that a
/// timeout or search_path the task set is gone before the rest runs; the rest is one call
/// (sql/pgfan_node/functions/pgfan_node.reset_session.sql says why), schema-qualified.
macro_rules! session_reset {
    () => {
        "reset all; select pgfan_node.reset_session()"
    };
}
const RELEASE: &str = "release savepoint pgfan_task";
const RELEASE_AND_RESET: &str = concat!("release savepoint pgfan_task; ", session_reset!());
const ROLLBACK: &str = "rollback to savepoint pgfan_task; release savepoint pgfan_task";
const ROLLBACK_AND_RESET: &str = concat!(
    "rollback to savepoint pgfan_task; release savepoint pgfan_task; ",
    session_reset!()
);

/// Whether `task` can run in a batch.
pub fn batchable(task: &Task) -> bool {
    task.tx && matches!(task.kind.as_str(), "copy" | "sql") && task.timeout_ms.is_none()
}

/// Cancels meant for a batch's tasks, sent while the server runs the task they are for.
pub struct Control {
    state: Mutex<ControlState>,
    token: CancelToken,
    conninfo: String,
}

#[derive(Default)]
struct ControlState {
    /// The task whose statement the server is running.
    running: Option<i64>,
    /// Tasks cancelled on the master.
    wanted: HashSet<i64>,
    /// A cancel request was sent: it may still arrive, so the connection is not reused.
    fired: bool,
}

impl Control {
    pub fn new(token: CancelToken, conninfo: String) -> Self {
        Control {
            state: Mutex::default(),
            token,
            conninfo,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `task_id` was cancelled on the master: its statement is cancelled if it runs now,
    /// or as soon as the batch reaches it. One that already ran keeps its result (late).
    pub fn cancel(&self, task_id: i64) {
        let mut s = self.lock();
        s.wanted.insert(task_id);
        if s.running == Some(task_id) {
            self.fire(&mut s);
        }
    }

    /// The server has started `task_id`'s statement.
    fn reached(&self, task_id: i64) {
        let mut s = self.lock();
        s.running = Some(task_id);
        if s.wanted.contains(&task_id) {
            self.fire(&mut s);
        }
    }

    /// `task_id`'s statement has answered.
    fn passed(&self, task_id: i64) {
        let mut s = self.lock();
        if s.running == Some(task_id) {
            s.running = None;
        }
    }

    fn wanted(&self, task_id: i64) -> bool {
        self.lock().wanted.contains(&task_id)
    }

    fn fired(&self) -> bool {
        self.lock().fired
    }

    /// Stops whatever statement runs now (a result over the budget).
    fn stop(&self) {
        let mut s = self.lock();
        self.fire(&mut s);
    }

    fn fire(&self, s: &mut ControlState) {
        s.fired = true;
        super::executor::send_cancel(&self.conninfo, self.token.clone());
    }
}

/// What became of one task of a batch.
enum Fate {
    /// Not run yet (or to be sent again after a neighbour's failure).
    Pending,
    /// Ran; recorded with the batch.
    Ran(TaskResult),
    /// Given back unrun, to run again alone.
    Alone,
    /// Given back unrun because a task before it in its lane was: runs again in order.
    Again,
}

/// One task of a batch and how far it got.
struct Item {
    task: Task,
    plan: Result<Plan, String>,
    fate: Fate,
}

/// Why a batch stopped before recording its tasks.
enum Stop {
    Db(tokio_postgres::Error),
    /// The tasks' results together passed the cap; a statement may still be sending.
    TooLarge,
}

impl From<tokio_postgres::Error> for Stop {
    fn from(err: tokio_postgres::Error) -> Self {
        Stop::Db(err)
    }
}

/// Runs `tasks` (all [`batchable`], in task_id order) in one transaction on `client`,
/// resets the session, and hands the connection back.
pub async fn run(
    client: Client,
    tasks: Vec<Task>,
    cfg: Arc<NodeConfig>,
    intent: SharedIntent,
    ctl: Arc<Control>,
) -> Finished {
    let ids: Vec<i64> = tasks.iter().map(|t| t.task_id).collect();
    let ran = run_batch(&client, tasks, &cfg, &intent, &ctl).await;
    let unsettled = |outcome: fn() -> Outcome| -> Vec<(i64, Outcome)> {
        let fate = |id| match ctl.wanted(id) {
            true => Outcome::Cancelled,
            false => outcome(),
        };
        ids.iter().map(|&id| (id, fate(id))).collect()
    };
    match ran {
        Ok(outcomes) if !ctl.fired() => {
            let client = reset(client, ids.first().copied().unwrap_or_default()).await;
            Finished { client, outcomes }
        }
        Ok(outcomes) => Finished {
            client: None,
            outcomes,
        },
        Err(_) if intent.get() == Intent::Abandon => Finished {
            client: None,
            outcomes: unsettled(|| Outcome::Left),
        },
        Err(stop) => {
            match stop {
                Stop::Db(err) => {
                    tracing::warn!(tasks = ids.len(), error = %err, "A batch failed outside its tasks' statements; its tasks run again one by one")
                }
                Stop::TooLarge => {
                    tracing::info!(tasks = ids.len(), "A batch's results passed the result cap together; its tasks run again one by one")
                }
            }
            Finished {
                client: None,
                outcomes: unsettled(|| Outcome::Split),
            }
        }
    }
}

async fn run_batch(
    c: &Client,
    tasks: Vec<Task>,
    cfg: &NodeConfig,
    intent: &SharedIntent,
    ctl: &Control,
) -> Result<Vec<(i64, Outcome)>, Stop> {
    let mut items = plan_all(c, tasks, cfg).await?;
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
    let mut prepared = prepare_copies(c, &items).await?;
    execute_all(c, &mut items, &mut prepared, intent, ctl).await?;
    if intent.get() == Intent::Abandon {
        // Stopping: the drain's cancel may have failed a statement; nothing is recorded,
        // the whole batch rolls back and runs again after the restart.
        c.batch_execute("rollback").await?;
        let left = items.iter().map(|i| (i.task.task_id, Outcome::Left));
        outcomes.extend(left);
        return Ok(outcomes);
    }
    if items.iter().any(|i| matches!(i.fate, Fate::Ran(_))) {
        finish(c, &items).await?;
        for item in &items {
            if let Fate::Ran(res) = &item.fate {
                super::worker::log_failure(item.task.task_id, res);
            }
        }
    } else {
        c.batch_execute("rollback").await?;
    }
    outcomes.extend(items.iter().map(|i| {
        let outcome = match &i.fate {
            Fate::Ran(r) => Outcome::Recorded(r.state),
            Fate::Alone => Outcome::Split,
            Fate::Again | Fate::Pending => Outcome::Left,
        };
        (i.task.task_id, outcome)
    }));
    Ok(outcomes)
}

/// Plans every task: copies one by one (they share the catalog reads of their tables),
/// the others described together, pipelined, each distinct statement once (nothing has run
/// yet, so the same text has the same shape for every task that carries it).
async fn plan_all(
    c: &Client,
    tasks: Vec<Task>,
    cfg: &NodeConfig,
) -> Result<Vec<Item>, tokio_postgres::Error> {
    let mut tables = Tables::default();
    let mut plans = Vec::with_capacity(tasks.len());
    for task in &tasks {
        plans.push(match Work::parse(&task.kind, &task.data) {
            Err(e) => Some(Err(e.to_string())),
            Ok(work @ Work::Copy { .. }) => Some(plan_one(c, cfg, &work, &mut tables).await?),
            Ok(_) => None,
        });
    }
    // The distinct statements, in first-seen order, and each task's place among them.
    let mut distinct: Vec<(&str, &str)> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let slots: Vec<Option<usize>> = tasks
        .iter()
        .zip(&plans)
        .map(|(task, p)| {
            p.is_none().then(|| {
                *seen.entry((&task.kind, &task.data)).or_insert_with(|| {
                    distinct.push((&task.kind, &task.data));
                    distinct.len() - 1
                })
            })
        })
        .collect();
    let described = join_all(distinct.iter().map(|&(kind, data)| async move {
        let mut none = Tables::default();
        match Work::parse(kind, data) {
            Ok(work) => plan_one(c, cfg, &work, &mut none).await,
            Err(e) => Ok(Err(e.to_string())),
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut items = Vec::with_capacity(tasks.len());
    for ((task, plan), slot) in tasks.into_iter().zip(plans).zip(slots) {
        let plan = match (plan, slot) {
            (Some(p), _) => p,
            (None, Some(i)) => described[i].clone(),
            (None, None) => Err("not planned".into()),
        };
        let fate = match &plan {
            Ok(_) => Fate::Pending,
            Err(msg) => Fate::Ran(TaskResult::failed(msg.clone())),
        };
        items.push(Item { task, plan, fate });
    }
    Ok(items)
}

/// Plans one task of a batch: Ok(Err(text)) is a failure to record.
async fn plan_one(
    c: &Client,
    cfg: &NodeConfig,
    work: &Work,
    tables: &mut Tables,
) -> Result<Result<Plan, String>, tokio_postgres::Error> {
    match plan_with(c, cfg, work, true, tables).await {
        Ok(p) => Ok(Ok(p)),
        Err(PlanError::Refused(msg)) => Ok(Err(msg)),
        Err(PlanError::Db(e)) if lost(&e) => Err(e),
        Err(PlanError::Db(e)) => Ok(Err(error_text(&e))),
    }
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

/// Copy statements of the batch, prepared once each (all at once, one round trip): as an
/// unnamed statement per task, the server parsed and planned the same copy statement for
/// every task, most of a copy's cost on the node (pg_stat_statements, delivery benchmark).
/// Not in a batch with `sql` tasks: the reset after each of those (DEALLOCATE ALL) drops
/// prepared statements. A statement that fails to prepare is left to its tasks, whose own
/// run then reports the error.
async fn prepare_copies(
    c: &Client,
    items: &[Item],
) -> Result<HashMap<String, Statement>, tokio_postgres::Error> {
    if items.iter().any(|i| i.task.kind == "sql") {
        return Ok(HashMap::new());
    }
    let mut wanted: HashMap<&str, usize> = HashMap::new();
    for item in items {
        if let Ok(Plan::Modify { sql, params }) = &item.plan {
            wanted.insert(sql, params.len());
        }
    }
    let prepared =
        join_all(wanted.iter().map(|(&sql, &n)| async move {
            (sql, c.prepare_typed(sql, &vec![Type::TEXT; n]).await)
        }))
        .await;
    let mut statements = HashMap::with_capacity(prepared.len());
    for (sql, statement) in prepared {
        match statement {
            Ok(s) => {
                statements.insert(sql.to_string(), s);
            }
            Err(e) if lost(&e) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(statements)
}

/// Runs every pending task in a savepoint of its own, all pipelined; after a failure the
/// transaction is brought back to that task's savepoint and the rest go out again.
async fn execute_all(
    c: &Client,
    items: &mut [Item],
    prepared: &mut HashMap<String, Statement>,
    intent: &SharedIntent,
    ctl: &Control,
) -> Result<(), Stop> {
    let budget = Budget::default();
    loop {
        let pending: Vec<usize> = (0..items.len())
            .filter(|&i| matches!(items[i].fate, Fate::Pending))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let runs = pending
            .iter()
            .map(|&i| run_in_savepoint(c, &items[i], &*prepared, ctl, &budget));
        let answers = join_all(runs).await;
        let mut failed = None;
        for (&i, answer) in pending.iter().zip(answers) {
            match answer {
                Ok(Ran::Done(res)) => items[i].fate = Fate::Ran(res),
                Ok(Ran::TooLarge(_)) => return Err(Stop::TooLarge),
                Err(e) if lost(&e) => return Err(Stop::Db(e)),
                Err(e) => {
                    // The first failure is this task's own; the rest only saw the
                    // aborted transaction and go out again.
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let Some((i, err)) = failed else {
            return Ok(());
        };
        if intent.get() == Intent::Abandon {
            return Err(Stop::Db(err));
        }
        // The batch's prepared statements are gone (a copy table's trigger ran DEALLOCATE
        // ALL): not the task's failure; it and the rest go out again unprepared.
        let gone =
            err.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) && !prepared.is_empty();
        if !gone {
            blame(items, i, &err, ctl);
        }
        let sql = items[i].task.kind == "sql";
        c.batch_execute(if sql { ROLLBACK_AND_RESET } else { ROLLBACK })
            .await?;
        if gone {
            prepared.clear();
        }
    }
}

/// Settles the task whose statement failed: its own failure, its cancel, or (a neighbour's
/// cancel, a lock conflict the batch may have caused) given back to run alone, with the
/// rest of its lane in this batch.
fn blame(items: &mut [Item], i: usize, err: &tokio_postgres::Error, ctl: &Control) {
    let code = err.code();
    let id = items[i].task.task_id;
    items[i].fate = if code == Some(&SqlState::QUERY_CANCELED) && ctl.wanted(id) {
        Fate::Ran(TaskResult::cancelled())
    } else if [
        &SqlState::QUERY_CANCELED,
        &SqlState::T_R_DEADLOCK_DETECTED,
        &SqlState::T_R_SERIALIZATION_FAILURE,
        &SqlState::LOCK_NOT_AVAILABLE,
    ]
    .iter()
    .any(|s| code == Some(s))
    {
        Fate::Alone
    } else {
        Fate::Ran(TaskResult::failed(error_text(err)))
    };
    if !matches!(items[i].fate, Fate::Alone) {
        return;
    }
    let Some(lane) = items[i].task.lane.clone() else {
        return;
    };
    for item in items[i + 1..].iter_mut() {
        if item.task.lane.as_ref() == Some(&lane) && matches!(item.fate, Fate::Pending) {
            item.fate = Fate::Again;
        }
    }
}

/// Savepoint, the task's statement, release (and for `sql`, the reset): sent together.
async fn run_in_savepoint(
    c: &Client,
    item: &Item,
    prepared: &HashMap<String, Statement>,
    ctl: &Control,
    budget: &Budget,
) -> Result<Ran, tokio_postgres::Error> {
    let id = item.task.task_id;
    let Ok(plan) = &item.plan else {
        // Unplanned tasks are recorded as failed before anything runs.
        return Ok(Ran::Done(TaskResult::failed("not planned")));
    };
    let savepoint = async {
        c.batch_execute("savepoint pgfan_task").await?;
        ctl.reached(id);
        Ok::<_, tokio_postgres::Error>(())
    };
    let statement = async {
        let ran = match plan {
            Plan::Modify { sql, params } if prepared.contains_key(sql) => {
                execute_prepared(c, &prepared[sql], params).await
            }
            _ => execute_within(c, plan, Some(budget)).await,
        };
        ctl.passed(id);
        if let Ok(Ran::TooLarge(_)) = ran {
            // Reading stopped: the statement may go on sending; stop it, so that the
            // statements after it answer (with errors) and the batch can end.
            ctl.stop();
        }
        ran
    };
    let release = c.batch_execute(if item.task.kind == "sql" {
        RELEASE_AND_RESET
    } else {
        RELEASE
    });
    let (sp, ran, rel) = tokio::join!(savepoint, statement, release);
    sp?;
    match ran? {
        // The statement was stopped, so the release failed: the batch must end, not go on
        // as if this task's own statement had failed.
        too_large @ Ran::TooLarge(_) => Ok(too_large),
        done => rel.map(|()| done),
    }
}

/// Records every task's result with task_finish_many, gives back the ones to run again,
/// and commits (one round trip).
async fn finish(c: &Client, items: &[Item]) -> Result<(), tokio_postgres::Error> {
    let back = TaskResult::failed("");
    let entries: Vec<(&Task, &str, &TaskResult)> = items
        .iter()
        .map(|i| match &i.fate {
            Fate::Ran(r) => (&i.task, r.state, r),
            _ => (&i.task, "claimed", &back),
        })
        .collect();
    let ids: Vec<i64> = entries.iter().map(|e| e.0.task_id).collect();
    let keys: Vec<&str> = entries.iter().map(|e| e.0.run_key.as_str()).collect();
    let states: Vec<&str> = entries.iter().map(|e| e.1).collect();
    let errors: Vec<Option<&str>> = entries
        .iter()
        .map(|e| match e.1 {
            "claimed" => None,
            _ => e.2.error.as_deref(),
        })
        .collect();
    let docs: Vec<Option<Json>> = entries
        .iter()
        .map(|e| (e.1 != "claimed").then(|| e.2.json()))
        .collect();
    let docs: Vec<Option<&str>> = docs.iter().map(|d| d.as_deref()).collect();
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
