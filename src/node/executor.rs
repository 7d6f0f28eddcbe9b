//! Execute: a pool of node connections running the claimed tasks.
//!
//! One loop picks runnable tasks (`pgfan_node.runnable_tasks`: same lane = strictly in
//! task_id order, other lanes and lane-less tasks in parallel), up to `workers` at a time,
//! and hands each to a worker with a connection of the pool. It reads a few runnable tasks
//! ahead, so that most starts cost no query. It wakes when the claim
//! handler claimed a batch, when a worker finishes, and every `poll_period` as a fallback.
//! Cancellations from the master arrive as commands: a running task gets its statement
//! cancelled (CancelToken), a waiting one is recorded as cancelled. On stop it drains:
//! no new tasks, running ones may finish until the deadline, then they are cancelled and
//! left to run again after the restart (their transactions roll back).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::{CancelToken, Client};

use super::worker::{self, Finished, Intent, Outcome, SharedIntent, Task};
use super::NodeConfig;
use crate::outage::Outage;

/// How long cancelled workers get to return after the drain deadline before they are dropped.
const ABANDON_GRACE: Duration = Duration::from_secs(5);

/// Runnable tasks read ahead per worker, so that most task starts need no query.
const READ_AHEAD: usize = 4;

/// A task whose node connection broke this many times is recorded as failed.
const MAX_LOST: u32 = 3;

/// Requests to the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// These tasks were cancelled on the master.
    Cancel(Vec<i64>),
    /// Stop starting tasks; cancel (and leave) those still running at the deadline; return.
    Drain(Instant),
}

struct Busy {
    intent: SharedIntent,
    cancel: CancelToken,
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
    busy: HashMap<i64, Busy>,
    running: JoinSet<Finished>,
    workers_of: HashMap<tokio::task::Id, i64>,
    lost: HashMap<i64, u32>,
    /// Woken by the claim handler.
    wake: Arc<Notify>,
    /// Wakes the shipper when a task finished.
    ship: Arc<Notify>,
    outage: Outage,
}

impl Executor {
    pub fn new(
        cfg: watch::Receiver<Arc<NodeConfig>>,
        wake: Arc<Notify>,
        ship: Arc<Notify>,
    ) -> Self {
        let target = cfg.borrow().name.clone();
        Executor {
            cfg,
            control: None,
            idle: Vec::new(),
            ready: VecDeque::new(),
            busy: HashMap::new(),
            running: JoinSet::new(),
            workers_of: HashMap::new(),
            lost: HashMap::new(),
            wake,
            ship,
            outage: Outage::new("node executor", target),
        }
    }

    /// Runs until drained (see [`Command::Drain`]) or until the command channel closes.
    pub async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) {
        let mut drain: Option<Instant> = None;
        let mut abandoned: Option<Instant> = None;
        let mut retry_at = Instant::now();
        let mut closed = false;
        loop {
            if drain.is_none() && Instant::now() >= retry_at {
                retry_at = self.fill_or_back_off().await;
            }
            if drain.is_some() && self.busy.is_empty() {
                return;
            }
            let node = self.cfg.borrow().name.clone();
            metrics::gauge!("pgfan_node_tasks_running", "node" => node).set(self.busy.len() as f64);
            let poll = Instant::now() + self.cfg.borrow().poll_period;
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = self.wake.notified(), if drain.is_none() => {}
                _ = tokio::time::sleep_until(poll.max(retry_at)), if drain.is_none() => {}
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
                    tracing::warn!(tasks = self.busy.len(), "Workers did not return after their cancel; dropping them");
                    self.running.abort_all();
                    return;
                }
            }
        }
    }

    /// Starts what can run; after a database error returns when to try again.
    async fn fill_or_back_off(&mut self) -> Instant {
        match self.fill().await {
            Ok(()) => {
                self.outage.recovered();
                Instant::now()
            }
            Err(err) => {
                self.control = None;
                Instant::now() + self.outage.failed(&err)
            }
        }
    }

    async fn control(&mut self) -> Result<&Client, tokio_postgres::Error> {
        let conninfo = self.cfg.borrow().db.clone();
        let client = match self.control.take() {
            Some(c) if !c.is_closed() => c,
            _ => crate::db::connect_client(&conninfo).await?,
        };
        Ok(self.control.insert(client))
    }

    /// A pooled connection, or a new one.
    async fn connection(&mut self) -> Result<Client, tokio_postgres::Error> {
        while let Some(c) = self.idle.pop() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let conninfo = self.cfg.borrow().db.clone();
        crate::db::connect_client(&conninfo).await
    }

    async fn fill(&mut self) -> Result<(), tokio_postgres::Error> {
        let cfg = self.cfg.borrow().clone();
        let free = cfg.workers.saturating_sub(self.busy.len());
        if free == 0 {
            return Ok(());
        }
        if self.ready.len() < free {
            let busy: Vec<i64> = self.busy.keys().copied().collect();
            let limit = (cfg.workers * READ_AHEAD).max(free) as i32;
            let rows = self
                .control()
                .await?
                .query_typed(
                    "select * from pgfan_node.runnable_tasks($1, $2)",
                    &[(&busy, Type::INT8_ARRAY), (&limit, Type::INT4)],
                )
                .await?;
            self.ready = rows.iter().map(Task::from_row).collect();
        }
        for _ in 0..free {
            let Some(task) = self.ready.pop_front() else {
                break;
            };
            let client = self.connection().await?;
            self.start(client, task, cfg.clone());
        }
        Ok(())
    }

    fn start(&mut self, client: Client, task: Task, cfg: Arc<NodeConfig>) {
        let task_id = task.task_id;
        tracing::debug!(task_id, lane = ?task.lane, tx = task.tx, "Task started");
        let intent = SharedIntent::default();
        let cancel = client.cancel_token();
        let handle = self
            .running
            .spawn(worker::run(client, task, cfg, intent.clone()));
        self.workers_of.insert(handle.id(), task_id);
        self.busy.insert(task_id, Busy { intent, cancel });
    }

    async fn finished(&mut self, done: Result<(tokio::task::Id, Finished), JoinError>) {
        let f = match done {
            Ok((id, f)) => {
                self.workers_of.remove(&id);
                f
            }
            Err(err) => {
                let task_id = self.workers_of.remove(&err.id());
                if let Some(id) = task_id {
                    self.busy.remove(&id);
                }
                tracing::error!(task_id = ?task_id, error = %err, "Task worker ended abnormally");
                return;
            }
        };
        // A cancel request names the connection, not the task, and is sent asynchronously:
        // arriving after this task ended, it would cancel the next task the connection runs
        // (which would then fail). So a connection that may have one in flight is closed.
        let cancel_sent = self
            .busy
            .remove(&f.task_id)
            .is_some_and(|b| b.intent.get() != Intent::Run);
        if let Some(c) = f.client.filter(|_| !cancel_sent) {
            if self.idle.len() + self.busy.len() < self.cfg.borrow().workers {
                self.idle.push(c);
            }
        }
        match f.outcome {
            Outcome::Recorded(state) => {
                self.lost.remove(&f.task_id);
                tracing::debug!(task_id = f.task_id, state, "Task finished");
                self.count_final(state, 1);
                self.ship.notify_one();
            }
            Outcome::Lost => self.count_lost(f.task_id).await,
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
                false
            }
        }
    }

    /// Cancels running tasks through their connection; records waiting ones as cancelled.
    async fn cancel(&mut self, ids: &[i64]) {
        let mut waiting = Vec::new();
        for id in ids {
            match self.busy.get(id) {
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
            tasks = ?self.busy.keys().collect::<Vec<_>>(),
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

/// Asks the server to cancel the statement running on a worker's connection (over TLS when
/// the node's connection string asks for it).
fn send_cancel(conninfo: &str, token: CancelToken) {
    let conninfo = conninfo.to_string();
    tokio::spawn(async move {
        if let Err(err) = crate::db::cancel(&conninfo, &token).await {
            tracing::warn!(error = %err, "Cancel request failed");
        }
    });
}
