//! The demo's seed workloads, each submitted through pgfan's SQL API on the master and
//! checked against an answer computed independently.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{check, result, step, wait_done, DemoError, DemoOptions, Topology};
use crate::node::NodeConfig;

/// How long any one demo job may take before the demo gives up.
const LIMIT: Duration = Duration::from_secs(300);

/// Node settings of the demo: row copies go into `public.items`.
pub fn configure_node(cfg: &mut NodeConfig) {
    cfg.copy_tables = vec!["public.items".into()];
    cfg.poll_period = Duration::from_millis(500);
}

pub async fn run_all(topo: &mut Topology, opts: DemoOptions) -> Result<(), DemoError> {
    let master = topo.master_client().await?;
    setup(&master).await?;
    map_reduce(topo, &master, opts.rows).await?;
    parallel_statements(topo, &master, opts).await?;
    let copied = copies(topo, &master, opts.copies).await?;
    lanes(topo, &master).await?;
    node_down(topo, &master, copied).await
}

async fn submit(
    master: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<i64, DemoError> {
    Ok(master.query_one(sql, params).await?.get(0))
}

async fn setup(master: &Client) -> Result<(), DemoError> {
    let t = Instant::now();
    let job = submit(
        master,
        "select pgfan.run_on_all('create table items (id integer primary key, name text not null)')",
        &[],
    )
    .await?;
    wait_done(master, job, LIMIT).await?;
    step(t, "pgfan.run_on_all: created table items on every node");
    Ok(())
}

/// (a) Rows split across the nodes; the average comes from per-node sum and count.
async fn map_reduce(topo: &Topology, master: &Client, rows: i64) -> Result<(), DemoError> {
    let t = Instant::now();
    let n = topo.nodes.len() as i64;
    let mut jobs = Vec::new();
    for (i, node) in topo.nodes.iter().enumerate() {
        let (lo, hi) = (i as i64 * rows / n + 1, (i as i64 + 1) * rows / n);
        let sql =
            format!("create table big as select g::bigint as v from generate_series({lo}, {hi}) g");
        jobs.push(submit(master, "select pgfan.submit($1, $2)", &[&node.name, &sql]).await?);
    }
    for job in jobs {
        wait_done(master, job, LIMIT).await?;
    }
    step(t, &format!("(a) loaded {rows} rows split over {n} nodes"));

    let t = Instant::now();
    let job = submit(
        master,
        "select pgfan.submit('all', 'select sum(v)::numeric as s, count(*) as c from big', reduce => 'avg')",
        &[],
    )
    .await?;
    wait_done(master, job, LIMIT).await?;
    let elapsed = t.elapsed();
    let avg = result(master, job).await?;
    let row = avg.first().cloned().unwrap_or_default();
    let exact: bool = master
        .query_one(
            "select ($1::jsonb ->> 'avg')::numeric = (select avg(g) from generate_series(1, $2::bigint) g)",
            &[&row, &rows],
        )
        .await?
        .get(0);
    check(exact, || {
        format!("the average {row} differs from the single-table answer")
    })?;
    let node = crate::db::connect_client(&topo.nodes[0].conninfo()).await?;
    let local = Instant::now();
    node.query_one("select sum(v)::numeric, count(*) from big", &[])
        .await?;
    step(
        t,
        &format!(
            "(a) map-reduce avg over {n} nodes = {} (equals avg over one {rows}-row table); \
             total {:.0} ms, one node's local partial {:.0} ms",
            row["avg"],
            elapsed.as_secs_f64() * 1000.0,
            local.elapsed().as_secs_f64() * 1000.0
        ),
    );
    Ok(())
}

/// (b) Many small statements at a parallel degree, then index builds outside a transaction.
async fn parallel_statements(
    topo: &Topology,
    master: &Client,
    opts: DemoOptions,
) -> Result<(), DemoError> {
    let t = Instant::now();
    let sqls: Vec<String> = (1..=opts.statements)
        .map(|i| format!("select {i} as n"))
        .collect();
    let job = submit(
        master,
        "select pgfan.submit('n1', sqls => $1, parallel => $2, reduce => 'sum')",
        &[&sqls, &opts.parallel],
    )
    .await?;
    wait_done(master, job, LIMIT).await?;
    let sum = result(master, job).await?;
    let want = (opts.statements * (opts.statements + 1) / 2) as i64;
    check(
        sum.first().and_then(|r| r["n"].as_i64()) == Some(want),
        || {
            format!(
                "the sum of {} statements' results is {sum:?}, not {want}",
                opts.statements
            )
        },
    )?;
    step(
        t,
        &format!(
            "(b) {} small statements on n1 at parallel degree {}; reduced sum = {want}",
            opts.statements, opts.parallel
        ),
    );

    let t = Instant::now();
    let tables: Vec<String> = (1..=4)
        .map(|k| format!("create table ci_{k} as select g from generate_series(1, 200000) g"))
        .collect();
    let job = submit(
        master,
        "select pgfan.submit('n1', sqls => $1, parallel => 4)",
        &[&tables],
    )
    .await?;
    wait_done(master, job, LIMIT).await?;
    let indexes: Vec<String> = (1..=4)
        .map(|k| format!("create index concurrently ci_{k}_g on ci_{k} (g)"))
        .collect();
    let job = submit(
        master,
        "select pgfan.submit('n1', sqls => $1, parallel => 2, tx => false)",
        &[&indexes],
    )
    .await?;
    wait_done(master, job, LIMIT).await?;
    let node = crate::db::connect_client(&topo.nodes[0].conninfo()).await?;
    let built: i64 = node
        .query_one(
            "select count(*) from pg_index i join pg_class c on c.oid = i.indexrelid
              where c.relname like 'ci\\__\\_g' and i.indisvalid",
            &[],
        )
        .await?
        .get(0);
    check(built == 4, || {
        format!("{built} of 4 concurrent indexes are valid")
    })?;
    step(
        t,
        "(b) 4 CREATE INDEX CONCURRENTLY on n1 at degree 2 (outside a transaction), all valid",
    );
    Ok(())
}

/// The node a copied row goes to.
fn owner(id: usize, nodes: usize) -> usize {
    id % nodes
}

/// (c) Row actions as raw events, targeted per row; counts checked on every node.
/// Returns how many rows each node holds.
async fn copies(topo: &Topology, master: &Client, n: usize) -> Result<Vec<i64>, DemoError> {
    let t = Instant::now();
    let nodes = topo.nodes.len();
    let mut master_tx = crate::db::connect_client(&topo.master_conninfo()).await?;
    let tx = master_tx.transaction().await?;
    let mut evs = Vec::new();
    let actions = (1..=n)
        .map(|id| {
            (
                id,
                crate::urlenc::encode([
                    ("action", "ins"),
                    ("id", &id.to_string()),
                    ("name", &format!("row {id}")),
                    ("lane", "items"),
                ]),
            )
        })
        .chain((1..=n / 10).map(|id| (id, format!("action=upd&id={id}&name=updated&lane=items"))))
        .chain((n / 10 + 1..=n / 5).map(|id| (id, format!("action=del&id={id}&lane=items"))));
    for (id, data) in actions {
        let node = &topo.nodes[owner(id, nodes)].name;
        let ev: i64 = tx
            .query_one(
                "select pgq.insert_event('push_queue', 'copy', $1, $2, null, null, null)",
                &[&data, &node],
            )
            .await?
            .get(0);
        evs.push(ev);
    }
    tx.commit().await?;
    wait_events(master, &evs).await?;
    let mut held = Vec::new();
    for (i, host) in topo.nodes.iter().enumerate() {
        let want_rows = (n / 5 + 1..=n).filter(|id| owner(*id, nodes) == i).count()
            + (1..=n / 10).filter(|id| owner(*id, nodes) == i).count();
        let want_updated = (1..=n / 10).filter(|id| owner(*id, nodes) == i).count();
        let c = crate::db::connect_client(&host.conninfo()).await?;
        let r = c
            .query_one(
                "select count(*), count(*) filter (where name = 'updated') from items",
                &[],
            )
            .await?;
        let (rows, updated): (i64, i64) = (r.get(0), r.get(1));
        check(
            rows == want_rows as i64 && updated == want_updated as i64,
            || {
                format!(
                    "{}: {rows} rows ({updated} updated), expected {want_rows} ({want_updated})",
                    host.name
                )
            },
        )?;
        held.push(rows);
    }
    step(
        t,
        &format!(
            "(c) {} row actions (ins/upd/del) as raw copy events to chosen nodes; rows per node {held:?}, as expected",
            evs.len()
        ),
    );
    Ok(held)
}

/// Waits until the jobs of raw events `evs` are all done.
async fn wait_events(master: &Client, evs: &[i64]) -> Result<(), DemoError> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = master
            .query_one(
                "select count(*) filter (where state = 'done'),
                        string_agg(format('job %s: %s', job_id, error), '; ') filter (where state in ('failed', 'cancelled'))
                   from pgfan.job where source_queue = 'push_queue' and source_ev_id = any($1)",
                &[&evs],
            )
            .await?;
        let (done, failed): (i64, Option<String>) = (r.get(0), r.get(1));
        if let Some(failed) = failed {
            return Err(DemoError::Check(failed));
        }
        if done == evs.len() as i64 {
            return Ok(());
        }
        check(Instant::now() < deadline, || {
            format!("{done} of {} jobs done in time", evs.len())
        })?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (d) Two named lanes on one node: each keeps its order, both run at the same time.
async fn lanes(topo: &Topology, master: &Client) -> Result<(), DemoError> {
    let t = Instant::now();
    let job = submit(
        master,
        "select pgfan.submit('n2', 'create table lane_log (lane text, seq int, at timestamptz default clock_timestamp())')",
        &[],
    )
    .await?;
    wait_done(master, job, LIMIT).await?;
    let mut c = crate::db::connect_client(&topo.master_conninfo()).await?;
    let tx = c.transaction().await?;
    let mut jobs = Vec::new();
    for seq in 1..=10 {
        for lane in ["A", "B"] {
            let sql = format!(
                "insert into lane_log (lane, seq) select '{lane}', {seq} from pg_sleep(0.05)"
            );
            jobs.push(
                submit(
                    &tx,
                    "select pgfan.submit('n2', $1, lane => $2)",
                    &[&sql, &lane],
                )
                .await?,
            );
        }
    }
    tx.commit().await?;
    for job in jobs {
        wait_done(master, job, LIMIT).await?;
    }
    let node = crate::db::connect_client(&topo.nodes[1].conninfo()).await?;
    let r = node
        .query_one(
            "select bool_and(ordered), (select max(at) filter (where lane = 'A') > min(at) filter (where lane = 'B')
                                               and max(at) filter (where lane = 'B') > min(at) filter (where lane = 'A')
                                          from lane_log)
               from (select seq = row_number() over (partition by lane order by at) as ordered from lane_log) o",
            &[],
        )
        .await?;
    let (ordered, overlapped): (Option<bool>, Option<bool>) = (r.get(0), r.get(1));
    check(ordered == Some(true), || "a lane ran out of order".into())?;
    check(overlapped == Some(true), || {
        "the two lanes did not run side by side".into()
    })?;
    step(
        t,
        "(d) lanes A and B, 10 ordered statements each on n2: each in order, both side by side",
    );
    Ok(())
}

/// (e) A node's server stops mid-run: its tasks wait, the others finish; it comes back and
/// its tasks complete.
async fn node_down(topo: &mut Topology, master: &Client, held: Vec<i64>) -> Result<(), DemoError> {
    let t = Instant::now();
    topo.stop_node_server(2)?;
    let job = submit(
        master,
        "select pgfan.run_on_all('select count(*) as n from items', 'sum')",
        &[],
    )
    .await?;
    let deadline = Instant::now() + LIMIT;
    let summary: String = loop {
        let done: i64 = master
            .query_one(
                "select count(*) from pgfan.task where job_id = $1 and state = 'done'",
                &[&job],
            )
            .await?
            .get(0);
        if done == 2 {
            break master
                .query_one("select pgfan.job_summary($1)", &[&job])
                .await?
                .get(0);
        }
        check(Instant::now() < deadline, || {
            format!("job {job}: only {done} of 3 done with n3 down")
        })?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    step(
        t,
        &format!("(e) n3's PostgreSQL stopped; run_on_all job {job} is at \"{summary}\""),
    );
    let t = Instant::now();
    topo.start_node_server(2)?;
    wait_done(master, job, LIMIT).await?;
    let total = result(master, job).await?;
    let want: i64 = held.iter().sum();
    check(
        total.first().and_then(|r| r["n"].as_i64()) == Some(want),
        || format!("sum of rows over the nodes is {total:?}, expected {want}"),
    )?;
    step(
        t,
        &format!("(e) n3 back: its task ran and the job finished; rows over all nodes = {want}"),
    );
    Ok(())
}
