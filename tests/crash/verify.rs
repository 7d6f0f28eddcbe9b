//! The crash test's verdict: waiting until the pipeline has nothing left to do, then
//! comparing what the committed submissions must have caused with what exists.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::load::{At, Expect, Submission};
use super::{connect, Rig, DRAIN_PATIENCE, NODES};

/// Whether the master and the nodes have nothing left to do for the committed jobs.
async fn drained(rig: &Rig, raw_events: &[i64]) -> Result<bool, tokio_postgres::Error> {
    let m = pgfan::db::connect_client(&rig.master.conninfo("postgres")).await?;
    let open: i64 = m
        .query_one(
            "select (select count(*) from unnest($1::bigint[]) e(id)
                      where not exists (select from pgfan.job j where j.source_ev_id = e.id))
                  + (select count(*) from pgfan.job where state in ('submitted', 'running'))
                  + (select count(*) from pgfan.task where state in ('queued', 'claimed', 'running'))",
            &[&raw_events],
        )
        .await?
        .get(0);
    if open > 0 {
        return Ok(false);
    }
    for node in &rig.nodes {
        let n = pgfan::db::connect_client(&node.conninfo("postgres")).await?;
        let open: i64 = n
            .query_one(
                "select count(*) from pgfan_node.task
                  where state in ('claimed', 'running') or shipped_at is null",
                &[],
            )
            .await?
            .get(0);
        if open > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn wait_drained(rig: &Rig, raw_events: &[i64]) {
    let deadline = Instant::now() + DRAIN_PATIENCE;
    loop {
        if drained(rig, raw_events).await.unwrap_or(false) {
            return;
        }
        if Instant::now() > deadline {
            let states = states(&connect(&rig.master).await).await;
            panic!(
                "the pipeline did not drain within {DRAIN_PATIENCE:?}: {states:?}\n{}",
                rig.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many `tx=0` effects exist more than once (allowed: they are at-least-once).
pub async fn non_tx_reruns(rig: &Rig) -> usize {
    counts(rig, "select k, count(*) from effects_nt group by k")
        .await
        .values()
        .filter(|n| **n > 1)
        .count()
}

/// How many jobs and tasks ended in which state.
pub async fn states(m: &Client) -> Vec<String> {
    m.query(
        "select format('jobs %s: %s', state, count(*)) from pgfan.job group by state
         union all
         select format('tasks %s: %s', state, count(*)) from pgfan.task group by state",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Rows of `sql` (key text, count bigint) on every node, keyed by (node, key).
async fn counts(rig: &Rig, sql: &str) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    for (name, node) in NODES.iter().zip(&rig.nodes) {
        for r in connect(node).await.query(sql, &[]).await.unwrap() {
            out.insert((name.to_string(), r.get(0)), r.get(1));
        }
    }
    out
}

/// Everything the committed submissions must have caused, compared with what exists.
#[derive(Default, Debug)]
pub struct Verdict {
    pub jobs: usize,
    pub tasks: i64,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub unexpected: Vec<String>,
}

/// The job ids of a committed submission (raw events resolved through their job).
async fn job_ids(m: &Client, sub: &Submission) -> Vec<i64> {
    let mut out = Vec::new();
    for (raw, id) in &sub.ids {
        out.push(if *raw {
            m.query_one(
                "select job_id from pgfan.job where source_queue = 'push_queue' and source_ev_id = $1",
                &[id],
            )
            .await
            .unwrap()
            .get(0)
        } else {
            *id
        });
    }
    out
}

async fn nodes_of(m: &Client, at: &At, jobs: &[i64]) -> Vec<String> {
    match at {
        At::Node(n) => vec![n.to_string()],
        At::All => NODES.iter().map(|n| n.to_string()).collect(),
        At::TaskOf(i) => m
            .query(
                "select node_name from pgfan.task where job_id = $1",
                &[&jobs[*i]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
    }
}

pub async fn verify(rig: &Rig, committed: &[&Submission]) -> Verdict {
    let m = connect(&rig.master).await;
    let mut v = Verdict::default();
    let mut effects: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut non_tx: BTreeSet<(String, String)> = BTreeSet::new();
    let mut items: BTreeMap<(String, i32), &str> = BTreeMap::new();
    let mut lanes: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    let mut refused = Vec::new();
    for sub in committed {
        let jobs = job_ids(&m, sub).await;
        if sub.plan.fails.is_some() {
            refused.extend(&jobs);
        }
        v.jobs += jobs.len();
        for job in &jobs {
            let row = m
                .query_one(
                    "select state, coalesce(error, '') from pgfan.job where job_id = $1",
                    &[job],
                )
                .await
                .unwrap();
            let (state, error): (String, String) = (row.get(0), row.get(1));
            if let Some(needle) = sub.plan.fails {
                if state != "failed" || !error.contains(needle) {
                    v.unexpected.push(format!(
                        "job {job} ({}) is {state} ({error}), not failed with {needle:?}",
                        sub.plan.label
                    ));
                }
            } else if state != "done" && !(sub.plan.cancel && state == "cancelled") {
                v.lost
                    .push(format!("job {job} ({}) is {state}", sub.plan.label));
            }
        }
        for e in &sub.plan.expect {
            match e {
                Expect::Effect(at, k) => {
                    for n in nodes_of(&m, at, &jobs).await {
                        *effects.entry((n, k.clone())).or_default() += 1;
                    }
                }
                Expect::NonTx(at, k) => {
                    for n in nodes_of(&m, at, &jobs).await {
                        non_tx.insert((n, k.clone()));
                    }
                }
                Expect::Item(n, id, Some(name)) => {
                    items.insert((n.to_string(), *id), name);
                }
                Expect::Item(..) => {}
                Expect::Lane(n, lane, seq) => {
                    lanes
                        .entry((n.to_string(), lane.clone()))
                        .or_default()
                        .push(*seq);
                }
                Expect::Reduced(i, field, want) => {
                    let rows: Vec<Option<i64>> = m
                        .query(
                            "select (row_data ->> $2)::bigint from pgfan.job_result
                              where job_id = $1",
                            &[&jobs[*i], field],
                        )
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let what = format!(
                        "job {} ({}) reduced to {rows:?}, not {field} = {want}",
                        jobs[*i], sub.plan.label
                    );
                    match rows.as_slice() {
                        [Some(n)] if n == want => {}
                        [Some(n)] if n > want => v.duplicated.push(what),
                        [] | [Some(_)] => v.lost.push(what),
                        _ => v.unexpected.push(what),
                    }
                }
                Expect::IfDone(i, k) => {
                    for r in m
                        .query(
                            "select node_name from pgfan.task where job_id = $1 and state = 'done'",
                            &[&jobs[*i]],
                        )
                        .await
                        .unwrap()
                    {
                        *effects.entry((r.get(0), k.clone())).or_default() += 1;
                    }
                }
            }
        }
    }
    compare_effects(rig, &effects, &mut v).await;
    compare_non_tx(rig, &non_tx, &mut v).await;
    compare_items(rig, &items, &mut v).await;
    compare_lanes(rig, &lanes, &mut v).await;
    check_master(&m, &refused, &mut v).await;
    v
}

async fn compare_effects(rig: &Rig, want: &BTreeMap<(String, String), i64>, v: &mut Verdict) {
    let have = counts(rig, "select k, count(*) from effects group by k").await;
    for (key, n) in want {
        match have.get(key).copied().unwrap_or(0) {
            0 => v.lost.push(format!("effect {key:?} missing")),
            h if h > *n => v.duplicated.push(format!("effect {key:?} {h} times")),
            _ => {}
        }
    }
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        v.unexpected.push(format!(
            "effect {key:?} of no committed job, or of a task recorded as not done"
        ));
    }
}

async fn compare_non_tx(rig: &Rig, want: &BTreeSet<(String, String)>, v: &mut Verdict) {
    let have = counts(rig, "select k, count(*) from effects_nt group by k").await;
    for key in want.iter().filter(|k| !have.contains_key(*k)) {
        v.lost.push(format!("tx=0 effect {key:?} missing"));
    }
    for key in have.keys().filter(|k| !want.contains(*k)) {
        v.unexpected
            .push(format!("tx=0 effect {key:?} of no committed job"));
    }
}

async fn compare_items(rig: &Rig, want: &BTreeMap<(String, i32), &str>, v: &mut Verdict) {
    let mut have = BTreeMap::new();
    for (name, node) in NODES.iter().zip(&rig.nodes) {
        for r in connect(node)
            .await
            .query("select id, name from items", &[])
            .await
            .unwrap()
        {
            have.insert(
                (name.to_string(), r.get::<_, i32>(0)),
                r.get::<_, String>(1),
            );
        }
    }
    for (key, name) in want {
        match have.get(key) {
            Some(h) if h == name => {}
            other => v
                .lost
                .push(format!("item {key:?}: {other:?}, want {name:?}")),
        }
    }
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        v.unexpected.push(format!("item {key:?} should not exist"));
    }
}

/// Lane rows: each exactly once, and per lane in submit order.
async fn compare_lanes(rig: &Rig, want: &BTreeMap<(String, String), Vec<i64>>, v: &mut Verdict) {
    let mut have: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for (name, node) in NODES.iter().zip(&rig.nodes) {
        for r in connect(node)
            .await
            .query("select lane, seq from lane_log order by at", &[])
            .await
            .unwrap()
        {
            have.entry((name.to_string(), r.get(0)))
                .or_default()
                .push(r.get(1));
        }
    }
    for (key, seqs) in want {
        let got = have.remove(key).unwrap_or_default();
        if &got == seqs {
            continue;
        }
        let got_set: BTreeSet<_> = got.iter().collect();
        let missing = seqs.iter().filter(|s| !got_set.contains(s)).count();
        if missing > 0 {
            v.lost.push(format!("lane {key:?}: {missing} rows missing"));
        }
        if got_set.len() < got.len() {
            v.duplicated.push(format!(
                "lane {key:?}: {} rows twice",
                got.len() - got_set.len()
            ));
        }
        if missing == 0 && got_set.len() == got.len() && got.len() == seqs.len() {
            v.unexpected
                .push(format!("lane {key:?} out of order: {got:?}"));
        }
    }
    for key in have.keys() {
        v.unexpected
            .push(format!("lane {key:?} of no committed job"));
    }
}

/// Master-side bookkeeping: tasks all done, each done task's rows recorded once, no dead
/// letters (nothing in this load is bad input).
/// Everything on the master is finished as it should be; `refused`: jobs that must fail
/// (their failed tasks and dead letters are expected).
async fn check_master(m: &Client, refused: &[i64], v: &mut Verdict) {
    v.tasks = m
        .query_one("select count(*) from pgfan.task", &[])
        .await
        .unwrap()
        .get(0);
    let bad: Vec<String> = m
        .query(
            "select format('task %s of job %s is %s', task_id, job_id, state) from pgfan.task t
              where state <> 'done'
                and not (state = 'failed' and job_id = any($1))
                and not (state = 'cancelled'
                         and exists (select from pgfan.job j
                                      where j.job_id = t.job_id
                                        and (j.state = 'cancelled' or j.policy like 'k:%')))
             union all
             select format('task %s has %s result rows, %s recorded', t.task_id, t.result_rows,
                           (select count(*) from pgfan.task_row r where r.task_id = t.task_id))
               from pgfan.task t
              where t.result_rows <> (select count(*) from pgfan.task_row r where r.task_id = t.task_id)
             union all
             select format('dead letter %s: %s', dl_id, error) from pgfan.dead_letter
              where not coalesce(job_id = any($1), false)",
            &[&refused],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.unexpected.extend(bad);
}
