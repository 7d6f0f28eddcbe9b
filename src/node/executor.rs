//! Execute: a pool of node connections running the claimed tasks.
//!
//! One loop picks runnable tasks (`pgfan_node.runnable_tasks`: same lane = strictly in
//! task_id order, other lanes and lane-less tasks in parallel), up to `workers` at a time,
//! and hands each to a worker with a connection of the pool: one task alone, or under a
//! backlog a batch of them in one node transaction ([`batch`]). It reads runnable tasks
//! ahead, lanes' later tasks included, so that most starts cost no query; a lane's later
//! task starts only after its predecessor, in the same batch or once that has finished.
//! The claim handler hands over the lane-less tasks it has just claimed ([`Handoff`]), so
//! the table is read only when something happened that the executor did not see (tasks
//! with lanes, tasks given back to run again, a lane whose head finished, an error, and
//! every `poll_period` as a fallback). It wakes when the claim handler claimed a batch,
//! when a worker finishes, and every `poll_period`.
//! Cancellations from the master arrive as commands: a running task gets its statement
//! cancelled (CancelToken), a waiting one is recorded as cancelled. On stop it drains:
//! no new tasks, running ones may finish until the deadline, then they are cancelled and
//! left to run again after the restart (their transactions roll back).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client};

use super::batch;
use super::worker::{self, Finished, Intent, Outcome, SharedIntent, Task};
use super::NodeConfig;
use crate::outage::Outage;

/// How long cancelled workers get to return after the drain deadline before they are dropped.
const ABANDON_GRACE: Duration = Duration::from_secs(5);

/// Runnable tasks read ahead per worker, so that most task starts need no query.
const READ_AHEAD: usize = 4;

/// A task whose node connection broke this many times is recorded as failed.
const MAX_LOST: u32 = 3;

/// Most tasks the executor holds in memory ahead of their start through the handoff...
const HANDOFF_MAX_TASKS: usize = 2000;
/// ...and most bytes of their payloads.
const HANDOFF_MAX_BYTES: usize = 8 << 20;

/// Whether these tasks may be held in memory ahead of their start.
fn within_bound<'a>(tasks: impl Iterator<Item = &'a Task>) -> bool {
    let (mut n, mut bytes) = (0, 0);
    for t in tasks {
        n += 1;
        bytes += t.data.len();
    }
    n <= HANDOFF_MAX_TASKS && bytes <= HANDOFF_MAX_BYTES
}

/// What the claim handler passes to the executor after each claimed batch: the tasks it
/// has just committed, so that the executor need not read them back. Reading them back
/// (`pgfan_node.runnable_tasks`, once or more per batch under a backlog) was a quarter of a
/// node's statement time on the delivery benchmark. Only lane-less tasks are handed over:
/// a lane's task may wait behind an earlier one the executor does not hold, which only
/// the query knows about, so a batch with lanes asks for a read instead.
#[derive(Default)]
pub struct Handoff {
    state: std::sync::Mutex<Handed>,
    wake: Notify,
}

#[derive(Default)]
struct Handed {
    tasks: Vec<Task>,
    /// Runnable tasks may exist that the executor holds nowhere: it must read them.
    reread: bool,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tasks just committed as claimed on the node. Past [`HANDOFF_MAX_TASKS`] or
    /// [`HANDOFF_MAX_BYTES`] of payload waiting, they stay in the table alone, to be read
    /// when the executor has room: the daemon's memory does not grow with a backlog.
    pub fn claimed(&self, tasks: Vec<Task>) {
        {
            let mut h = self.lock();
            if within_bound(h.tasks.iter().chain(&tasks)) && tasks.iter().all(|t| t.lane.is_none())
            {
                h.tasks.extend(tasks);
            } else {
                h.tasks.clear();
                h.reread = true;
            }
        }
        self.wake.notify_one();
    }

    /// Something changed that only a read of the task table shows.
    pub fn reread(&self) {
        self.lock().reread = true;
        self.wake.notify_one();
    }

    fn take(&self) -> Handed {
        std::mem::take(&mut *self.lock())
    }
}

/// Requests to the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// These tasks were cancelled on the master.
    Cancel(Vec<i64>),
    /// Stop starting tasks; cancel (and leave) those still running at the deadline; return.
    Drain(Instant),
}

/// A running worker: one task, or a batch of tasks in one transaction.
struct Busy {
    tasks: Vec<i64>,
    /// The lanes of its tasks: their later tasks wait until it has finished.
    lanes: Vec<String>,
    intent: SharedIntent,
    cancel: CancelToken,
    /// A batch's cancels, sent while the server runs the task they are for.
    batch: Option<Arc<batch::Control>>,
}

/// The executor of one node.
pub struct Executor {
    cfg: watch::Receiver<Arc<NodeConfig>>,
    control: Option<Client>,
    idle: Vec<Client>,
    /// Runnable tasks read ahead, in task_id order. Starting one later is safe: the worker
    /// takes a task only while it is still claimed (cancelled or done meanwhile: skipped),
    /// and a lane's next task is not in here until its predecessor has finished.
    ready: VecDeque<Task>,
    /// `ready` holds every runnable task that no worker runs: no need to read the table
    /// until something changes that the executor does not see (see [`Handoff`]).
    known: bool,
    busy: HashMap<tokio::task::Id, Busy>,
    running: JoinSet<Finished>,
    /// The worker running each busy task.
    worker_of: HashMap<i64, tokio::task::Id>,
    lost: HashMap<i64, u32>,
    /// Tasks of a batch that failed as a whole: each runs alone from now on.
    solo: HashSet<i64>,
    /// Fed and woken by the claim handler.
    handoff: Arc<Handoff>,
    /// Wakes the shipper when a task finished.
    ship: Arc<Notify>,
    outage: Outage,
}

impl Executor {
    pub fn new(
        cfg: watch::Receiver<Arc<NodeConfig>>,
        handoff: Arc<Handoff>,
        ship: Arc<Notify>,
    ) -> Self {
        let target = cfg.borrow().name.clone();
        Executor {
            cfg,
            control: None,
            idle: Vec::new(),
            ready: VecDeque::new(),
            known: false,
            busy: HashMap::new(),
            running: JoinSet::new(),
            worker_of: HashMap::new(),
            lost: HashMap::new(),
            solo: HashSet::new(),
            handoff,
            ship,
            outage: Outage::new("node executor", target),
        }
    }

    /// Runs until drained (see [`Command::Drain`]) or until the command channel closes;
    /// Err when tasks must not run at all (a `task_role` that could reach the daemon's rights).
    pub async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) -> Result<(), String> {
        let mut drain: Option<Instant> = None;
        let mut abandoned: Option<Instant> = None;
        let mut retry_at = Instant::now();
        let mut closed = false;
        loop {
            if drain.is_none() && Instant::now() >= retry_at {
                retry_at = self.fill_or_back_off().await?;
            }
            if drain.is_some() && self.busy.is_empty() {
                return Ok(());
            }
            let node = self.cfg.borrow().name.clone();
            metrics::gauge!("pgfan_node_tasks_running", "node" => node)
                .set(self.worker_of.len() as f64);
            let poll = Instant::now() + self.cfg.borrow().poll_period;
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = self.handoff.wake.notified(), if drain.is_none() => self.take_handoff(),
                // The fallback: whatever the executor was not told about.
                _ = tokio::time::sleep_until(poll.max(retry_at)), if drain.is_none() => {
                    self.known = false;
                }
                Some(done) = self.running.join_next_with_id() => self.finished(done).await,
                cmd = cmds.recv(), if !closed => match cmd {
                    Some(Command::Cancel(ids)) => self.cancel(&ids).await,
                    Some(Command::Drain(deadline)) => drain = drain.or(Some(deadline)),
                    None => {
                        closed = true;
                        drain = drain.or(Some(Instant::now()));
                    }
                },
                _ = tokio::time::sleep_until(drain.unwrap_or(far)), if drain.is_some() && abandoned.is_none() => {
                    self.abandon_all();
                    abandoned = Some(Instant::now() + ABANDON_GRACE);
                }
                _ = tokio::time::sleep_until(abandoned.unwrap_or(far)), if abandoned.is_some() => {
                    tracing::warn!(tasks = self.worker_of.len(), "Workers did not return after their cancel; dropping them");
                    self.running.abort_all();
                    return Ok(());
                }
            }
        }
    }

    /// Starts what can run; after a database error returns when to try again.
    async fn fill_or_back_off(&mut self) -> Result<Instant, String> {
        match self.fill().await {
            Ok(()) => {
                self.outage.recovered();
                Ok(Instant::now())
            }
            Err(FillError::Db(err)) => {
                self.control = None;
                self.known = false;
                Ok(Instant::now() + self.outage.failed(&err))
            }
            Err(FillError::Unsafe(msg)) => Err(msg),
        }
    }

    async fn control(&mut self) -> Result<&Client, tokio_postgres::Error> {
        let conninfo = self.cfg.borrow().db.clone();
        let client = match self.control.take() {
            Some(c) if !c.is_closed() => c,
            _ => crate::db::connect_client_to("node", &conninfo).await?,
        };
        Ok(self.control.insert(client))
    }

    /// A pooled task connection, or a new one (logged in as `task_role`, when set).
    async fn connection(&mut self) -> Result<Client, FillError> {
        while let Some(c) = self.idle.pop() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let cfg = self.cfg.borrow().clone();
        let client = crate::db::connect_as(&cfg.db, cfg.task_role.as_deref())
            .await?
            .client;
        if let Some(role) = &cfg.task_role {
            check_task_login(&client, role).await?;
        }
        Ok(client)
    }

    async fn fill(&mut self) -> Result<(), FillError> {
        let cfg = self.cfg.borrow().clone();
        let free = cfg.workers.saturating_sub(self.busy.len());
        if free == 0 {
            return Ok(());
        }
        if self.startable() < free && !self.known {
            let busy: Vec<i64> = self.worker_of.keys().copied().collect();
            let limit = (cfg.workers * READ_AHEAD).max(batch::MAX_TASKS) as i32;
            let rows = self
                .control()
                .await?
                .query_typed(
                    "select * from pgfan_node.runnable_tasks($1, $2)",
                    &[(&busy, Type::INT8_ARRAY), (&limit, Type::INT4)],
                )
                .await?;
            self.ready = rows.iter().map(Task::from_row).collect();
            // Fewer than asked for: nothing runnable was left out.
            self.known = rows.len() < limit as usize;
        }
        for left in (1..=free).rev() {
            let tasks = self.next_work(left);
            if tasks.is_empty() {
                break;
            }
            let client = match self.connection().await {
                Ok(c) => c,
                Err(err) => {
                    // Not started: back at the front, in order.
                    for t in tasks.into_iter().rev() {
                        self.ready.push_front(t);
                    }
                    return Err(err);
                }
            };
            self.start(client, tasks, cfg.clone());
        }
        Ok(())
    }

    /// Adds the tasks the claim handler committed to the ready ones, in task_id order,
    /// leaving out any the executor holds already (read back meanwhile).
    fn take_handoff(&mut self) {
        let handed = self.handoff.take();
        if handed.reread {
            self.known = false;
        }
        if handed.tasks.is_empty() {
            return;
        }
        if !within_bound(self.ready.iter().chain(&handed.tasks)) {
            // The table keeps them until there is room.
            self.known = false;
            return;
        }
        let held: HashSet<i64> = self.ready.iter().map(|t| t.task_id).collect();
        let fresh = handed
            .tasks
            .into_iter()
            .filter(|t| !held.contains(&t.task_id) && !self.worker_of.contains_key(&t.task_id));
        self.ready.extend(fresh);
        self.ready.make_contiguous().sort_by_key(|t| t.task_id);
    }

    /// Lanes with a task running: their later tasks wait.
    fn busy_lanes(&self) -> HashSet<String> {
        self.busy
            .values()
            .flat_map(|b| b.lanes.iter().cloned())
            .collect()
    }

    /// Ready tasks that could start now: the first of each lane that is not running.
    fn startable(&self) -> usize {
        let mut blocked = self.busy_lanes();
        self.ready
            .iter()
            .filter(|t| match &t.lane {
                Some(l) => blocked.insert(l.clone()),
                None => true,
            })
            .count()
    }

    /// What the next free worker runs: the first ready task whose lane is not running, and
    /// if it can run in a batch, other batchable ready tasks too, shared fairly among the
    /// `free` workers (so a burst keeps every connection busy) up to a batch's size. A lane
    /// stays in one batch: its tasks follow their predecessor there, in order, or wait for
    /// that batch to finish. Lanes, and lane-less tasks, are spread over the batches like
    /// the tasks, so that `parallel`'s lanes run side by side.
    fn next_work(&mut self, free: usize) -> Vec<Task> {
        let mut blocked = self.busy_lanes();
        let Some(pos) = self
            .ready
            .iter()
            .position(|t| t.lane.as_ref().is_none_or(|l| !blocked.contains(l)))
        else {
            return Vec::new();
        };
        let Some(first) = self.ready.remove(pos) else {
            return Vec::new();
        };
        let batchable = |t: &Task| batch::batchable(t) && !self.solo.contains(&t.task_id);
        if !batchable(&first) {
            return vec![first];
        }
        let (n, groups) = self.batch_candidates(&first, &blocked, &batchable);
        let size = n.div_ceil(free).min(batch::MAX_TASKS);
        let per_batch = groups.div_ceil(free);
        let mut lanes: HashSet<String> = first.lane.iter().cloned().collect();
        let mut taken_groups = 1;
        let mut tasks = vec![first];
        let mut rest = VecDeque::with_capacity(self.ready.len());
        while let Some(t) = self.ready.pop_front() {
            let take = tasks.len() < size
                && batchable(&t)
                && match &t.lane {
                    Some(l) if blocked.contains(l) => false,
                    Some(l) if lanes.contains(l) => true,
                    _ => taken_groups < per_batch,
                };
            if take {
                // A lane-less task is a group of its own; a lane, one group for all its tasks.
                let new_group = t.lane.as_ref().is_none_or(|l| lanes.insert(l.clone()));
                taken_groups += usize::from(new_group);
                tasks.push(t);
            } else {
                // Its lane's later tasks must not overtake it.
                if let Some(l) = &t.lane {
                    blocked.insert(l.clone());
                }
                rest.push_back(t);
            }
        }
        self.ready = rest;
        tasks
    }

    /// How many ready tasks could join a batch beginning with `first`, and in how many
    /// groups (a lane's tasks are one group; a lane-less task is one).
    fn batch_candidates(
        &self,
        first: &Task,
        blocked: &HashSet<String>,
        batchable: &impl Fn(&Task) -> bool,
    ) -> (usize, usize) {
        let mut blocked = blocked.clone();
        let mut lanes: HashSet<&String> = first.lane.iter().collect();
        let (mut n, mut groups) = (1, 1);
        for t in &self.ready {
            if let Some(l) = &t.lane {
                if blocked.contains(l) {
                    continue;
                }
                if !batchable(t) {
                    blocked.insert(l.clone());
                    continue;
                }
            } else if !batchable(t) {
                continue;
            }
            n += 1;
            if t.lane.as_ref().is_none_or(|l| lanes.insert(l)) {
                groups += 1;
            }
        }
        (n, groups)
    }

    fn start(&mut self, client: Client, tasks: Vec<Task>, cfg: Arc<NodeConfig>) {
        let intent = SharedIntent::default();
        let cancel = client.cancel_token();
        let ids: Vec<i64> = tasks.iter().map(|t| t.task_id).collect();
        let lanes: Vec<String> = tasks.iter().filter_map(|t| t.lane.clone()).collect();
        // One task runs alone, where a cancel can stop its statement; several in a batch.
        let (handle, ctl) = match <[Task; 1]>::try_from(tasks) {
            Ok([task]) => {
                tracing::debug!(task_id = task.task_id, lane = ?task.lane, tx = task.tx, "Task started");
                let run = worker::run(client, task, cfg, intent.clone());
                (self.running.spawn(run), None)
            }
            Err(tasks) => {
                tracing::debug!(tasks = ids.len(), first = ?ids.first(), "Batch started");
                let ctl = Arc::new(batch::Control::new(cancel.clone(), cfg.db.clone()));
                let run = batch::run(client, tasks, cfg, intent.clone(), ctl.clone());
                (self.running.spawn(run), Some(ctl))
            }
        };
        for id in &ids {
            self.worker_of.insert(*id, handle.id());
        }
        let busy = Busy {
            tasks: ids,
            lanes,
            intent,
            cancel,
            batch: ctl,
        };
        self.busy.insert(handle.id(), busy);
    }

    async fn finished(&mut self, done: Result<(tokio::task::Id, Finished), JoinError>) {
        let (id, f) = match done {
            Ok(done) => done,
            Err(err) => {
                self.known = false;
                let tasks = self.forget(err.id()).map(|b| b.tasks);
                tracing::error!(tasks = ?tasks, error = %err, "Task worker ended abnormally");
                return;
            }
        };
        // A cancel request names the connection, not the task, and is sent asynchronously:
        // arriving after this task ended, it would cancel the next task the connection runs
        // (which would then fail). So a connection that may have one in flight is closed.
        let busy = self.forget(id);
        // A lane's next task became its head: only the query returns it.
        if busy.as_ref().is_some_and(|b| !b.lanes.is_empty()) {
            self.known = false;
        }
        let cancel_sent = busy.is_some_and(|b| b.intent.get() != Intent::Run);
        if let Some(c) = f.client.filter(|_| !cancel_sent) {
            if self.idle.len() + self.busy.len() < self.cfg.borrow().workers {
                self.idle.push(c);
            }
        }
        for (task_id, outcome) in f.outcomes {
            self.settle(task_id, outcome).await;
        }
    }

    /// The worker `id` ended: its entry, and its tasks are no longer busy.
    fn forget(&mut self, id: tokio::task::Id) -> Option<Busy> {
        let busy = self.busy.remove(&id)?;
        for t in &busy.tasks {
            self.worker_of.remove(t);
        }
        Some(busy)
    }

    async fn settle(&mut self, task_id: i64, outcome: Outcome) {
        if !matches!(outcome, Outcome::Split | Outcome::Lost | Outcome::Left) {
            self.solo.remove(&task_id);
        } else {
            // It runs again: tasks read ahead behind it in its lane must wait for it, so
            // the ready list is read afresh (with it at its lane's head).
            self.ready.clear();
            self.known = false;
        }
        match outcome {
            Outcome::Cancelled => {
                self.lost.remove(&task_id);
                self.record(&[task_id], "cancelled", "cancelled on the master")
                    .await;
            }
            Outcome::Broken(msg) => {
                self.lost.remove(&task_id);
                tracing::warn!(task_id, error = %msg, "Task failed; its connection was closed");
                self.record(&[task_id], "failed", &msg).await;
            }
            Outcome::Recorded(state) => {
                self.lost.remove(&task_id);
                tracing::debug!(task_id, state, "Task finished");
                self.count_final(state, 1);
                self.ship.notify_one();
            }
            Outcome::Lost => self.count_lost(task_id).await,
            Outcome::Split => {
                self.solo.insert(task_id);
            }
            Outcome::Skipped | Outcome::Left => {}
        }
    }

    /// A task that keeps losing its connection (e.g. it terminates its own backend) fails.
    async fn count_lost(&mut self, task_id: i64) {
        let n = self.lost.entry(task_id).or_insert(0);
        *n += 1;
        if *n < MAX_LOST {
            return;
        }
        let msg = format!("the node connection was lost {MAX_LOST} times while running this task");
        if self.record(&[task_id], "failed", &msg).await {
            self.lost.remove(&task_id);
        }
    }

    /// Records unfinished tasks as `state`; false (logged) when the database is unavailable.
    async fn record(&mut self, ids: &[i64], state: &str, error: &str) -> bool {
        let ids = ids.to_vec();
        let done = match self.control().await {
            Ok(c) => c
                .execute(
                    "select pgfan_node.finish_task(id, $2, $3) from unnest($1::bigint[]) id",
                    &[&ids, &state, &error],
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                self.count_final(state, ids.len());
                self.ship.notify_one();
                true
            }
            Err(err) => {
                tracing::warn!(tasks = ?ids, state, error = %err, "Could not record tasks");
                self.known = false;
                false
            }
        }
    }

    /// Cancels running tasks through their connection; records waiting ones as cancelled.
    /// In a batch only the task's own statement is cancelled (see [`batch::Control`]).
    async fn cancel(&mut self, ids: &[i64]) {
        let mut waiting = Vec::new();
        for id in ids {
            match self.worker_of.get(id).and_then(|w| self.busy.get(w)) {
                Some(Busy {
                    batch: Some(ctl), ..
                }) => {
                    tracing::info!(task_id = id, "Cancelling a task of a running batch");
                    ctl.cancel(*id);
                }
                Some(b) => {
                    tracing::info!(task_id = id, "Cancelling a running task");
                    b.intent.set(Intent::Cancel);
                    send_cancel(&self.cfg.borrow().db, b.cancel.clone());
                }
                None => {
                    self.ready.retain(|t| t.task_id != *id);
                    waiting.push(*id)
                }
            }
        }
        if !waiting.is_empty() {
            tracing::info!(tasks = ?waiting, "Tasks cancelled before they started");
            self.record(&waiting, "cancelled", "cancelled on the master")
                .await;
        }
    }

    /// Counts tasks that reached a final state.
    fn count_final(&self, state: &str, n: usize) {
        let (node, state) = (self.cfg.borrow().name.clone(), state.to_string());
        metrics::counter!("pgfan_node_tasks_total", "node" => node, "state" => state)
            .increment(n as u64);
    }

    fn abandon_all(&mut self) {
        if self.busy.is_empty() {
            return;
        }
        tracing::warn!(
            tasks = ?self.worker_of.keys().collect::<Vec<_>>(),
            "Stop timeout reached; cancelling running tasks, they run again after the restart"
        );
        let conninfo = self.cfg.borrow().db.clone();
        for b in self.busy.values() {
            if b.intent.get() == Intent::Run {
                b.intent.set(Intent::Abandon);
            }
            send_cancel(&conninfo, b.cancel.clone());
        }
    }
}

/// Why the executor could not start tasks.
enum FillError {
    Db(tokio_postgres::Error),
    /// Tasks must not run: the task login could reach the daemon's rights.
    Unsafe(String),
}

impl From<tokio_postgres::Error> for FillError {
    fn from(err: tokio_postgres::Error) -> Self {
        FillError::Db(err)
    }
}

/// Refuses a task login that could reach what task SQL must not: a superuser, a role that
/// bypasses row security, or a member of the role owning `pgfan_node` (it could SET ROLE
/// to it, then read run keys and rewrite the bookkeeping).
async fn check_task_login(c: &Client, role: &str) -> Result<(), FillError> {
    let row = c
        .query_typed_one(
            "select r.rolsuper, r.rolbypassrls,
                    pg_catalog.pg_has_role(session_user, t.relowner, 'MEMBER'),
                    t.relowner::regrole::text
               from pg_catalog.pg_roles r, pg_catalog.pg_class t
              where r.rolname = session_user and t.oid = 'pgfan_node.task'::regclass",
            &[],
        )
        .await?;
    let (superuser, bypass, member, owner): (bool, bool, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let why = if superuser {
        "is a superuser".to_string()
    } else if bypass {
        "has BYPASSRLS".to_string()
    } else if member {
        format!("is {owner}, the owner of pgfan_node, or a member of it")
    } else {
        return Ok(());
    };
    Err(FillError::Unsafe(format!(
        "task_role {role} {why}: task SQL could reach the daemon's rights and bookkeeping; \
         give tasks a login of their own with only the rights they need"
    )))
}

/// Asks the server to cancel the statement running on a worker's connection (over TLS when
/// the node's connection string asks for it).
pub(super) fn send_cancel(conninfo: &str, token: CancelToken) {
    let conninfo = conninfo.to_string();
    tokio::spawn(async move {
        if let Err(err) = crate::db::cancel(&conninfo, &token).await {
            tracing::warn!(error = %err, "Cancel request failed");
        }
    });
}
