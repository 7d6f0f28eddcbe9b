//! The crash test's load: one producer submitting every kind of job, one transaction per
//! plan with a ledger row, and what each plan must cause once committed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::{Rng, NODES};

/// Where an effect is expected: a named node, every node, or the node the job's only task
/// was routed to (`hash:` and `any`).
#[derive(Clone, Debug)]
pub enum At {
    Node(&'static str),
    All,
    TaskOf(usize),
}

/// What one committed submission must have caused.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A row `k` in `effects`, exactly once (transactional).
    Effect(At, String),
    /// A row `k` in `effects_nt`, at least once (`tx => false`).
    NonTx(At, String),
    /// `items` row `id` with `name`, or no row (None) after a delete.
    Item(&'static str, i32, Option<&'static str>),
    /// A `lane_log` row, exactly once and after the lane's earlier rows.
    Lane(&'static str, String, i64),
    /// The job of statement `usize` reduced to one row whose `field` is `value`.
    Reduced(usize, &'static str, i64),
    /// A row `k` in `effects` exactly on the nodes where the task of statement `usize` is
    /// done, and nowhere else: a cancelled task may still have run, but then its result
    /// must say so.
    IfDone(usize, String),
}

/// One producer transaction: its statements (each returns a job id, or an event id for
/// the raw form) and what it must cause once committed.
pub struct Plan {
    pub label: &'static str,
    pub stmts: Vec<(String, bool)>,
    pub expect: Vec<Expect>,
    /// Cancel the first job right after the commit; it may end cancelled instead of done.
    pub cancel: bool,
    /// The jobs must fail with an error that says this (and leave no effect behind).
    pub fails: Option<&'static str>,
}

impl Plan {
    fn new(label: &'static str, stmts: Vec<(String, bool)>, expect: Vec<Expect>) -> Plan {
        Plan {
            label,
            stmts,
            expect,
            cancel: false,
            fails: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Failed,
    /// The commit was sent and its answer lost: the ledger says what happened.
    Unknown,
}

pub struct Submission {
    pub seq: i64,
    pub plan: Plan,
    /// Per statement: (is raw event, id returned).
    pub ids: Vec<(bool, i64)>,
    pub outcome: Outcome,
}

fn plan(seq: i64, rng: &mut Rng) -> Plan {
    let node = NODES[rng.below(2) as usize];
    let sql = |s: String| vec![(s, false)];
    match rng.below(11) {
        0 => Plan::new(
            "sql all, reduced",
            sql(format!(
                "select pgfan.submit('all', $$with e as (insert into effects values ('s{seq}') \
                 returning 1) select count(*) as n from e$$, reduce => 'sum')"
            )),
            vec![
                Expect::Effect(At::All, format!("s{seq}")),
                Expect::Reduced(0, "n", 2),
            ],
        ),
        1 => Plan::new(
            "sql on a node",
            sql(format!(
                "select pgfan.submit('{node}', $$insert into effects values ('s{seq}')$$)"
            )),
            vec![Expect::Effect(At::Node(node), format!("s{seq}"))],
        ),
        2 => {
            let target = if seq % 2 == 0 {
                "any".to_string()
            } else {
                format!("hash:c{seq}")
            };
            Plan::new(
                "call, hash or any",
                sql(format!(
                    "select pgfan.submit('{target}', call => 'public.bump', \
                     args => array['c{seq}'])"
                )),
                vec![
                    Expect::Effect(At::TaskOf(0), format!("c{seq}")),
                    Expect::Reduced(0, "bump", 1),
                ],
            )
        }
        3 => Plan::new(
            "sql hash",
            sql(format!(
                "select pgfan.submit('hash:h{seq}', $$insert into effects values ('h{seq}')$$)"
            )),
            vec![Expect::Effect(At::TaskOf(0), format!("h{seq}"))],
        ),
        4 => copy_plan(seq, node, rng),
        5 => Plan::new(
            "sql all, tx=0",
            sql(format!(
                "select pgfan.submit('all', $$insert into effects_nt \
                 select 't{seq}' from pg_sleep(0.1)$$, tx => false)"
            )),
            vec![Expect::NonTx(At::All, format!("t{seq}"))],
        ),
        6 => {
            let lane = format!("L{node}{}", rng.below(3));
            Plan::new(
                "sql in a lane",
                sql(format!(
                    "select pgfan.submit('{node}', $$insert into lane_log (lane, seq) \
                     values ('{lane}', {seq})$$, lane => '{lane}')"
                )),
                vec![Expect::Lane(node, lane, seq)],
            )
        }
        7 => {
            let parts: Vec<String> = (0..3)
                .map(|i| {
                    format!(
                        "$$with e as (insert into effects values ('p{seq}_{i}') returning 1) \
                         select count(*) as n from e$$"
                    )
                })
                .collect();
            let mut expect: Vec<Expect> = (0..3)
                .map(|i| Expect::Effect(At::Node(node), format!("p{seq}_{i}")))
                .collect();
            expect.push(Expect::Reduced(0, "n", 3));
            Plan::new(
                "sql parallel",
                sql(format!(
                    "select pgfan.submit('{node}', sqls => array[{}], parallel => 2, \
                     reduce => 'sum')",
                    parts.join(", ")
                )),
                expect,
            )
        }
        // Done after one node's task: the other's is cancelled, or ran first.
        8 => Plan::new(
            "sql all, policy k:1",
            sql(format!(
                "select pgfan.submit('all', $$insert into effects values ('k{seq}')$$, \
                 policy => 'k:1')"
            )),
            vec![Expect::IfDone(0, format!("k{seq}"))],
        ),
        // Task SQL that would end the node's transaction is refused before it runs: its
        // insert must appear nowhere (an unexpected effect would be reported).
        9 => Plan {
            fails: Some("cannot run COMMIT"),
            ..Plan::new(
                "sql all, transaction control refused",
                sql(format!(
                    "select pgfan.submit('all', $$insert into effects values ('r{seq}'); \
                     commit; insert into effects values ('r{seq}')$$)"
                )),
                vec![],
            )
        },
        _ => Plan {
            cancel: true,
            ..Plan::new(
                "sql all, cancelled",
                sql(format!(
                    "select pgfan.submit('all', $$insert into effects \
                     select 'x{seq}' from pg_sleep(0.2)$$)"
                )),
                vec![Expect::IfDone(0, format!("x{seq}"))],
            )
        },
    }
}

/// Raw copy events in one lane: insert, update, and sometimes delete the row again; only
/// the order of the lane gives the expected end state.
fn copy_plan(seq: i64, node: &'static str, rng: &mut Rng) -> Plan {
    let lane = format!("c{}", seq % 3);
    let raw = |data: String| {
        (
            format!(
                "select pgq.insert_event('push_queue', 'copy', '{data}', '{node}', \
                 null, null, null)"
            ),
            true,
        )
    };
    let mut stmts = vec![
        raw(format!("action=ins&id={seq}&name=a&lane={lane}")),
        raw(format!("action=upd&id={seq}&name=b&lane={lane}")),
    ];
    let id = i32::try_from(seq).unwrap();
    let mut end = Some("b");
    if rng.below(4) == 0 {
        stmts.push(raw(format!("action=del&id={seq}&lane={lane}")));
        end = None;
    }
    Plan::new(
        "copy (raw events)",
        stmts,
        vec![Expect::Item(node, id, end)],
    )
}

/// What the producer did.
#[derive(Default)]
pub struct Produced {
    pub subs: Vec<Submission>,
    pub connect_failures: usize,
    pub errors: BTreeMap<String, usize>,
    /// Errors other than a lost master connection: none is expected.
    pub faults: Vec<String>,
}

impl Produced {
    fn error(&mut self, seq: i64, what: &str, e: &tokio_postgres::Error) {
        *self
            .errors
            .entry(format!("{what}: {}", short_error(e)))
            .or_default() += 1;
        if !lost_master(e) {
            self.faults.push(format!("{what} {seq}: {e:?}"));
        }
    }
}

/// Submits one plan per transaction, each with a ledger row in the same transaction, until
/// `stop`; reconnects whenever the master went away.
pub async fn produce(master: String, seed: u64, stop: Arc<AtomicBool>) -> Produced {
    let mut rng = Rng(seed);
    let mut out = Produced::default();
    let mut client: Option<Client> = None;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut client {
            Some(c) if !c.is_closed() => c,
            _ => match pgfan::db::connect_client(&master).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    out.connect_failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        seq += 1;
        let plan = plan(seq, &mut rng);
        let (ids, outcome) = match submit(c, seq, &plan).await {
            Ok(ids) if plan.cancel => {
                // At a random stage of the job: before routing, queued, claimed or running
                // (its tasks take 200 ms).
                tokio::time::sleep(rng.millis(0, 400)).await;
                if let Err(e) = c.query_one("select pgfan.cancel($1)", &[&ids[0].1]).await {
                    out.error(seq, "cancel", &e);
                }
                (ids, Outcome::Acked)
            }
            Ok(ids) => (ids, Outcome::Acked),
            Err((ids, at_commit, e)) => {
                out.error(seq, "submit", &e);
                let outcome = if at_commit {
                    Outcome::Unknown
                } else {
                    Outcome::Failed
                };
                (ids, outcome)
            }
        };
        out.subs.push(Submission {
            seq,
            plan,
            ids,
            outcome,
        });
        tokio::time::sleep(rng.millis(5, 30)).await;
    }
    out
}

type SubmitError = (Vec<(bool, i64)>, bool, tokio_postgres::Error);

async fn submit(c: &mut Client, seq: i64, plan: &Plan) -> Result<Vec<(bool, i64)>, SubmitError> {
    let mut ids = Vec::new();
    let tx = c.transaction().await.map_err(|e| (Vec::new(), false, e))?;
    let ledger = tx
        .execute("insert into crash_ledger (seq) values ($1)", &[&seq])
        .await;
    if let Err(e) = ledger {
        return Err((ids, false, e));
    }
    for (stmt, raw) in &plan.stmts {
        match tx.query_one(stmt.as_str(), &[]).await {
            Ok(row) => ids.push((*raw, row.get(0))),
            Err(e) => return Err((ids, false, e)),
        }
    }
    match tx.commit().await {
        Ok(()) => Ok(ids),
        Err(e) => Err((ids, true, e)),
    }
}

/// Whether `e` comes from the master going away (closed connection, or a server that is
/// shutting down or restarting) rather than from what was asked.
fn lost_master(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => ["57", "08"].contains(&&code.code()[..2]),
        None => true,
    }
}

fn short_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}
