//! Case 8 (`footprint`): what each daemon costs while nothing happens: resident memory and
//! CPU with 1,000 idle queues and 3 nodes, and the WAL the ticker writes per idle minute,
//! against pgqd ticking the same queues (issue 14 asks for the ticker at 1,000 queues).
//!
//! The daemons run as real processes of the release binary that `cargo bench` builds with
//! the suite (`CARGO_BIN_EXE_pgfan`, the bench profile = release), each from its own TOML
//! file with pgfan's defaults: ticker, relay, reducer on a master cluster and one node
//! daemon per node database (n1..n3, three databases of one node cluster). The master also
//! holds 1,000 extra queues without consumers (`idle_0001`..`idle_1000`), which the ticker
//! must keep ticking. Their first tick is backdated by two minutes right after they are made,
//! so they are idle queues at once (one idle tick a minute, `ticker_idle_period`) instead of
//! new ones whose idle ticks back off over the first two minutes.
//!
//! After start, one `pgfan.run_on_all('select 1')` job goes through the pipeline (every
//! daemon's code paths and connections touched) and is waited for. Then three idle windows:
//! 1. every pgfan daemon running: each daemon's VmRSS (and VmHWM) from /proc/<pid>/status,
//!    its CPU over the window in % of one core (the scheduler's run time of its threads, in
//!    ns: /proc/<pid>/task/*/schedstat), the same for its server sessions on the master
//!    (found by `application_name`), and the master's
//!    WAL over the window (`pg_current_wal_insert_lsn` difference) per minute;
//! 2. pgfan's ticker stopped (SIGTERM), the rest running, for half as long: the WAL nobody
//!    ticks (node heartbeats and the like), subtracted from windows 1 and 3 to get a
//!    ticker's share;
//! 3. pgqd (Debian package, defaults) ticking the same databases, the rest still running.
//!
//! After the warm-up job every database of the master (template1 too: autovacuum's first
//! analyze of its catalogs wrote 54 kB into whichever window it fell in) is analyzed and
//! vacuumed (freeze), so that autovacuum catching up with the setup does not land in a
//! window, and the pipeline queues' ticks are backdated like the idle queues' ones: the
//! job's events would otherwise restart their idle back-off (ticks 1, 2, 4, ... s apart),
//! which would put extra ticks and empty batches into the first window only.
//! Windows 1 and 3 start 5 s after a round of idle ticks (quick: 3 s), so a 60 s window
//! holds exactly one round of the 1,000 idle ticks; a quick 10 s window holds none, so its
//! WAL is the ticker's floor only. One window each: `--runs` does not apply here.
//! `--profile` also prints each measured window's top statements by time and by WAL.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use pgfan::cluster::Cluster;
use pgfan::install::{self, Role};
use tokio_postgres::Client;

use crate::parallel::pipeline;
use crate::report::{Better, Row};
use crate::rig::{self, cpu_ticks, pgfan_exe, Ctx, Proc};

const CASE: &str = "footprint";
const IDLE_QUEUES: usize = 1000;
/// Queues made per statement (each create_queue takes a dozen locks; one transaction for
/// all would exhaust the lock table).
const QUEUES_PER_STATEMENT: usize = 50;
const NODES: usize = 3;
/// PgQ's default `ticker_idle_period`: an idle queue ticks once a minute.
const IDLE_PERIOD: Duration = Duration::from_secs(60);
const RSS_GOAL_MB: f64 = 20.0;
const CPU_GOAL_PCT: f64 = 1.0;
/// Issue 14: an idle ticker over the same 1,000 queues costs at most this many times
/// pgqd's CPU (the process, and its master sessions) and WAL.
const PGQD_FACTOR_GOAL: f64 = 1.5;
const PGQD_APP: &str = "pgqd";

/// VmRSS and VmHWM of a process in kB, from /proc/<pid>/status.
fn memory_kb(pid: i32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |key: &str| -> Result<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of a process in nanoseconds: the scheduler's run time of each of its threads
/// (/proc/<pid>/task/*/schedstat), which counts in nanoseconds where utime + stime counts
/// in clock ticks (10 ms): an idle daemon uses one or two ticks a minute, too coarse to
/// compare. Falls back to the clock ticks where schedstat is missing. (A thread that ends
/// within a window takes its time with it; idle daemons do not start threads.)
fn cpu_ns(pid: i32) -> Result<u64> {
    let sched = std::fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| {
        tasks
            .filter_map(|t| t.ok())
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>()
    });
    match sched {
        Ok(ns) if ns > 0 => Ok(ns),
        _ => Ok((cpu_ticks(pid)? as f64 / clock_ticks_per_sec() * 1e9) as u64),
    }
}

/// CPU time of processes in ns, for the pids that exist (server sessions may come and go).
fn cpu_of(pids: &[i32]) -> HashMap<i32, u64> {
    pids.iter()
        .filter_map(|&p| cpu_ns(p).ok().map(|t| (p, t)))
        .collect()
}

/// What one idle window measured.
struct Window {
    /// Per daemon process: CPU % of one core, VmRSS MB, VmHWM MB.
    procs: HashMap<String, (f64, f64, f64)>,
    /// Per `application_name` on the master: CPU % of one core of its server sessions.
    sessions: HashMap<String, f64>,
    wal_per_min: f64,
    /// The window's WAL, start and end LSN, for a breakdown once the WAL has been flushed.
    lsn: (String, String),
    idle_ticks: i64,
    other_ticks: i64,
    secs: f64,
}

/// Ticks made so far on the idle queues and on the others (sums of last tick ids).
async fn tick_counts(master: &Client) -> Result<(i64, i64)> {
    let r = master
        .query_one(
            "select coalesce(sum(last_tick_id) filter (where queue_name like 'idle\\_%'), 0)::int8,
                    coalesce(sum(last_tick_id) filter (where queue_name not like 'idle\\_%'), 0)::int8
               from pgq.get_queue_info()",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Server session pids on the master per application name.
async fn sessions(master: &Client, apps: &[String]) -> Result<Vec<(String, i32)>> {
    Ok(master
        .query(
            "select application_name, pid from pg_stat_activity where application_name = any($1)",
            &[&apps],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn wal_lsn(master: &Client) -> Result<String> {
    Ok(master
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0))
}

/// With `--profile`: forgets the statistics so far, so that [`profile`] shows one window.
async fn profile_reset(ctx: &Ctx, master: &Client) -> Result<()> {
    if ctx.profile {
        master
            .batch_execute(
                "create extension if not exists pg_stat_statements;
                 select pg_stat_statements_reset()",
            )
            .await?;
    }
    Ok(())
}

/// With `--profile`: the statements of the window just measured that took the most server
/// time and that wrote the most WAL (nested ones included), printed under `label`.
async fn profile(ctx: &Ctx, master: &Client, label: &str) -> Result<()> {
    if !ctx.profile {
        return Ok(());
    }
    for order in ["total_exec_time", "wal_bytes"] {
        let rows = master
            .query(
                &format!(
                    "select total_exec_time::float8, calls, wal_bytes::float8,
                            regexp_replace(left(query, 100), '\\s+', ' ', 'g')
                       from pg_stat_statements
                      where query not like '%pg_stat_statements%'
                      order by {order} desc limit 8"
                ),
                &[],
            )
            .await?;
        println!("  {label}, top statements by {order} (ms, calls, WAL bytes, query):");
        for r in rows {
            let (ms, calls, wal, q): (f64, i64, f64, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            println!("  {ms:>9.1} {calls:>7} {wal:>9.0}  {q}");
        }
    }
    Ok(())
}

/// Measures an idle window of `len`: the processes' CPU and memory, their master sessions'
/// CPU, the master's WAL and the ticks made.
async fn window(
    master: &Client,
    procs: &mut [Proc],
    apps: &[String],
    len: Duration,
) -> Result<Window> {
    let sess = sessions(master, apps).await?;
    let sess_pids: Vec<i32> = sess.iter().map(|(_, p)| *p).collect();
    let (idle0, other0) = tick_counts(master).await?;
    let lsn0 = wal_lsn(master).await?;
    let t0 = Instant::now();
    let proc0: Vec<u64> = procs
        .iter()
        .map(|p| cpu_ns(p.pid()))
        .collect::<Result<_>>()?;
    let sess0 = cpu_of(&sess_pids);
    tokio::time::sleep(len).await;
    let proc1: Vec<u64> = procs
        .iter()
        .map(|p| cpu_ns(p.pid()))
        .collect::<Result<_>>()?;
    let sess1 = cpu_of(&sess_pids);
    let secs = t0.elapsed().as_secs_f64();
    let lsn1 = wal_lsn(master).await?;
    let (idle1, other1) = tick_counts(master).await?;
    let wal: f64 = master
        .query_one(
            "select pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn)::float8",
            &[&lsn0, &lsn1],
        )
        .await?
        .get(0);
    let pct = |ns: u64| ns as f64 / 1e9 / secs * 100.0;
    let mut out = HashMap::new();
    for (i, p) in procs.iter_mut().enumerate() {
        p.alive()?;
        let (rss, hwm) = memory_kb(p.pid())?;
        out.insert(
            p.name.clone(),
            (
                pct(proc1[i].saturating_sub(proc0[i])),
                rss / 1024.0,
                hwm / 1024.0,
            ),
        );
    }
    let mut by_app: HashMap<String, f64> = HashMap::new();
    for (app, pid) in &sess {
        if let (Some(a), Some(b)) = (sess0.get(pid), sess1.get(pid)) {
            *by_app.entry(app.clone()).or_default() += pct(b.saturating_sub(*a));
        }
    }
    Ok(Window {
        procs: out,
        sessions: by_app,
        wal_per_min: wal / secs * 60.0,
        lsn: (lsn0, lsn1),
        idle_ticks: idle1 - idle0,
        other_ticks: other1 - other0,
        secs,
    })
}

/// The window's WAL per minute by record type and first relation written (pg_walinspect),
/// the largest eight: which table a record type's bytes went to says whose work it was.
async fn wal_breakdown(master: &Client, w: &Window) -> String {
    let rows = master
        .query(
            "with r as (
                 select resource_manager || '/' || record_type as kind, record_length,
                        regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)') as m
                   from pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn))
             select kind || coalesce(' ' || case
                        when m[1]::oid = (select oid from pg_database where datname = current_database())
                        then coalesce(pg_filenode_relation(0, m[2]::oid)::text, m[2])
                        else 'db ' || m[1] || ' ' || m[2] end, ''),
                    sum(record_length)::float8 as size
               from r group by 1 order by size desc limit 8",
            &[&w.lsn.0, &w.lsn.1],
        )
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                let (what, size): (String, f64) = (r.get(0), r.get(1));
                format!("{what} {:.0}", size / w.secs * 60.0)
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("no breakdown ({})", pgfan::db::describe(&e)),
    }
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits until every idle queue has ticked at or after `since` (epoch seconds), then until
/// `offset` after the latest of those ticks: the window that follows holds the next round
/// only if it is longer than `IDLE_PERIOD - offset`.
async fn align_to_round(master: &Client, since: f64, offset: Duration) -> Result<()> {
    let limit = Instant::now() + IDLE_PERIOD + Duration::from_secs(30);
    let round = loop {
        let r = master
            .query_one(
                "select count(*) filter (where last >= to_timestamp($1)), max(last)
                   from (select max(t.tick_time) as last
                           from pgq.queue q join pgq.tick t on t.tick_queue = q.queue_id
                          where q.queue_name like 'idle\\_%'
                          group by q.queue_id) x",
                &[&since],
            )
            .await?;
        let (n, last): (i64, Option<SystemTime>) = (r.get(0), r.get(1));
        if n == IDLE_QUEUES as i64 {
            break last.context("no idle ticks")?;
        }
        if Instant::now() > limit {
            bail!("{n} of {IDLE_QUEUES} idle queues ticked since the ticker started");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let start = round + offset;
    if let Ok(wait) = start.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

/// The master and the node cluster with pgfan installed, the pipeline's nodes registered
/// and the idle queues made.
async fn install(master: &Cluster, nodes: &Cluster) -> Result<Client> {
    let mut m = rig::connect(&master.conninfo("postgres")).await?;
    install::install(&mut m, Role::Master).await?;
    for i in 1..=NODES {
        let db = format!("n{i}");
        rig::create_db(nodes, &db).await?;
        pipeline::install_node(nodes, &db).await?;
        m.query_one("select pgfan.node_add($1)", &[&db]).await?;
    }
    // For the WAL breakdown in the notes; the daemons do not use it.
    m.batch_execute("create extension pg_walinspect").await?;
    let parts = (4 * NODES).next_power_of_two() as i32;
    m.query_one("select pgfan.set_partitions($1)", &[&parts])
        .await?;
    for first in (1..=IDLE_QUEUES).step_by(QUEUES_PER_STATEMENT) {
        let last = (first + QUEUES_PER_STATEMENT - 1).min(IDLE_QUEUES) as i32;
        m.query(
            "select pgq.create_queue('idle_' || lpad(g::text, 4, '0'))
               from generate_series($1::int, $2::int) g",
            &[&(first as i32), &last],
        )
        .await
        .context("create the idle queues")?;
    }
    backdate_ticks(&m, true).await?;
    Ok(m)
}

/// Moves the ticks of the idle queues (or of the others) two minutes back, so that each
/// queue is in PgQ's steady idle state: its next tick is due at once, and the one after a
/// `ticker_idle_period` later.
async fn backdate_ticks(m: &Client, idle: bool) -> Result<()> {
    m.execute(
        "update pgq.tick set tick_time = tick_time - interval '2 min'
          where tick_queue in (select queue_id from pgq.queue
                                where (queue_name like 'idle\\_%') = $1)",
        &[&idle],
    )
    .await
    .context("backdate ticks")?;
    Ok(())
}

/// The daemons' configuration files: pgfan's defaults, every session tagged with an
/// `application_name` of its daemon.
fn configs(master: &Cluster, nodes: &Cluster) -> Vec<(String, &'static str, String)> {
    let m = master.conninfo("postgres");
    let mut v = vec![
        (
            "ticker".to_string(),
            "ticker",
            format!(
                "[ticker]\nbase_connstr = \"host=127.0.0.1 port={} user=postgres application_name=ticker\"\ndatabase_list = [\"postgres\"]\n",
                master.port()
            ),
        ),
        (
            "relay".into(),
            "relay",
            format!("[relay]\nmaster = \"{m} application_name=relay\"\n"),
        ),
        (
            "reducer".into(),
            "reducer",
            format!("[reducer]\nmaster = \"{m} application_name=reducer\"\n"),
        ),
    ];
    for i in 1..=NODES {
        let name = format!("node_n{i}");
        v.push((
            name.clone(),
            "node",
            format!(
                "[node]\nname = \"n{i}\"\nmaster = \"{m} application_name={name}\"\ndb = \"{} application_name={name}\"\n",
                nodes.conninfo(&format!("n{i}"))
            ),
        ));
    }
    v
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let exe = pgfan_exe()?;
    let (master, nodes) = tokio::try_join!(rig::cluster(), rig::cluster())?;
    let outcome = measure(ctx, &exe, &master, &nodes).await;
    drop((master, nodes));
    outcome
}

async fn measure(ctx: &Ctx, exe: &Path, master: &Cluster, nodes: &Cluster) -> Result<Vec<Row>> {
    let len = Duration::from_secs(ctx.size(60, 10) as u64);
    // The no-ticker window only gives the WAL the other daemons write (heartbeats every few
    // seconds), per minute: half a minute measures it as well and keeps the case under
    // four minutes.
    let base_len = Duration::from_secs(ctx.size(30, 10) as u64);
    let offset = if ctx.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(5)
    };
    let m = install(master, nodes).await?;
    let dir = master.dir().join("footprint");
    std::fs::create_dir_all(&dir)?;
    let started = epoch_now();
    let mut procs = Vec::new();
    let mut apps = Vec::new();
    for (name, role, cfg) in configs(master, nodes) {
        procs.push(Proc::spawn(exe, &dir, &name, role, &cfg)?);
        apps.push(name);
    }
    let outcome = async {
        // One job through the whole pipeline before anything is measured.
        let job: i64 = m
            .query_one("select pgfan.run_on_all('select 1')", &[])
            .await?
            .get(0);
        let state: String = m
            .query_one("select pgfan.wait($1, '60 s')", &[&job])
            .await?
            .get(0);
        if state != "done" {
            bail!("warm-up job {job} is {state}");
        }
        // The setup's churn (the queues, the job) vacuumed and analyzed now, so that
        // autovacuum catching up does not write its WAL into a window.
        for db in ["postgres", "template1"] {
            let c = rig::connect(&master.conninfo(db)).await?;
            // Analyze first: it leaves dead pg_statistic rows, which the vacuum then
            // removes, and the freeze leaves autovacuum no pages to freeze in a window.
            c.batch_execute("analyze").await?;
            c.batch_execute("vacuum freeze").await?;
        }
        backdate_ticks(&m, false).await?;
        align_to_round(&m, started, offset).await?;
        profile_reset(ctx, &m).await?;
        let a = window(&m, &mut procs, &apps, len).await?;
        profile(ctx, &m, "pgfan window").await?;
        let ticker = procs.remove(0);
        ticker.stop().await?;
        let b = window(&m, &mut procs, &apps, base_len).await?;
        let pgqd_started = epoch_now();
        let pgqd = rig::start_pgqd_conn(
            master,
            &["postgres"],
            &format!("application_name={PGQD_APP}"),
            "",
        )?;
        let mut pgqd = vec![Proc {
            name: PGQD_APP.into(),
            child: pgqd,
            log: master.dir().join("pgqd.log"),
        }];
        align_to_round(&m, pgqd_started, offset).await?;
        profile_reset(ctx, &m).await?;
        let c = window(&m, &mut pgqd, &[PGQD_APP.to_string()], len).await?;
        profile(ctx, &m, "pgqd window").await?;
        for p in pgqd.into_iter().chain(procs.drain(..)) {
            p.stop().await?;
        }
        Ok::<_, anyhow::Error>((a, b, c))
    }
    .await;
    let (a, b, c) = match outcome {
        Ok(w) => w,
        Err(e) => {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("{}: {}", p.name, p.log_tail()))
                .collect();
            return Err(e.context(logs.join("\n")));
        }
    };
    let wal = [
        wal_breakdown(&m, &a).await,
        wal_breakdown(&m, &b).await,
        wal_breakdown(&m, &c).await,
    ];
    notes(ctx, &a, &b, &c, &wal);
    Ok(rows(&a, &b, &c))
}

fn notes(ctx: &Ctx, a: &Window, b: &Window, c: &Window, wal: &[String; 3]) {
    ctx.note(
        CASE,
        format!(
            "daemons as processes of the release binary ({}), pgfan defaults, logs at info; \
             {IDLE_QUEUES} idle queues and the pipeline's queues (ticks backdated), master \
             analyzed and vacuumed before the windows; 3 node \
             databases on one cluster; pgqd {} with defaults; windows {:.1} s / {:.1} s / \
             {:.1} s (pgfan / no ticker / pgqd), one each; MB = MiB of VmRSS",
            env!("CARGO_BIN_EXE_pgfan"),
            pgqd_version(),
            a.secs,
            b.secs,
            c.secs
        ),
    );
    let sessions = |w: &Window| {
        let mut v: Vec<String> = w
            .sessions
            .iter()
            .map(|(k, x)| format!("{k} {x:.2}%"))
            .collect();
        v.sort();
        v.join(", ")
    };
    ctx.note(
        CASE,
        format!(
            "master WAL per minute: pgfan's ticker + the rest {:.0} B, no ticker {:.0} B, pgqd + \
             the rest {:.0} B; ticks in the windows (idle queues / pipeline queues): pgfan {}/{}, \
             none {}/{}, pgqd {}/{}; master session CPU: pgfan window {}; pgqd window {}",
            a.wal_per_min,
            b.wal_per_min,
            c.wal_per_min,
            a.idle_ticks,
            a.other_ticks,
            b.idle_ticks,
            b.other_ticks,
            c.idle_ticks,
            c.other_ticks,
            sessions(a),
            sessions(c)
        ),
    );
    ctx.note(
        CASE,
        format!(
            "master WAL bytes per minute by record type and relation: pgfan window {}; no-ticker \
             window {}; pgqd window {}",
            wal[0], wal[1], wal[2]
        ),
    );
    let mut hwm: Vec<String> = a
        .procs
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", v.2))
        .collect();
    hwm.sort();
    ctx.note(
        CASE,
        format!(
            "peak RSS (VmHWM) MB: {}, pgqd {:.1}",
            hwm.join(", "),
            c.procs.get(PGQD_APP).map_or(f64::NAN, |v| v.2)
        ),
    );
}

fn pgqd_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "pgqd"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn rows(a: &Window, b: &Window, c: &Window) -> Vec<Row> {
    let pgqd = c
        .procs
        .get(PGQD_APP)
        .copied()
        .unwrap_or((f64::NAN, 0.0, 0.0));
    let base = format!("pgqd, same {IDLE_QUEUES} queues");
    let mut rows = Vec::new();
    let mut names: Vec<&String> = a.procs.keys().collect();
    names.sort_by_key(|n| {
        (
            ["ticker", "relay", "reducer"]
                .iter()
                .position(|x| x == n)
                .unwrap_or(3),
            n.to_string(),
        )
    });
    for name in &names {
        let (_, rss, _) = a.procs[*name];
        let metric = format!("{name} RSS, idle");
        let row = if *name == "ticker" {
            Row::versus(
                CASE,
                metric,
                "MB",
                Better::Lower,
                vec![rss],
                base.as_str(),
                &[pgqd.1],
            )
        } else {
            Row::single(CASE, metric, "MB", Better::Lower, vec![rss])
        };
        rows.push(row.goal(format!("<= {RSS_GOAL_MB} MB"), rss <= RSS_GOAL_MB));
    }
    for name in &names {
        let (cpu, _, _) = a.procs[*name];
        let metric = format!("{name} CPU, idle");
        let row = if *name == "ticker" {
            Row::versus(
                CASE,
                metric,
                "% core",
                Better::Lower,
                vec![cpu],
                base.as_str(),
                &[pgqd.0],
            )
        } else {
            Row::single(CASE, metric, "% core", Better::Lower, vec![cpu])
        };
        rows.push(if *name == "ticker" {
            let met = cpu <= CPU_GOAL_PCT && cpu <= PGQD_FACTOR_GOAL * pgqd.0;
            row.goal(
                format!("<= {CPU_GOAL_PCT} % and <= {PGQD_FACTOR_GOAL}x pgqd"),
                met,
            )
        } else {
            row.goal(format!("<= {CPU_GOAL_PCT} %"), cpu <= CPU_GOAL_PCT)
        });
    }
    let (ours, theirs) = (
        a.sessions.get("ticker").copied().unwrap_or(f64::NAN),
        c.sessions.get(PGQD_APP).copied().unwrap_or(f64::NAN),
    );
    rows.push(
        Row::versus(
            CASE,
            "ticker's master sessions CPU, idle",
            "% core",
            Better::Lower,
            vec![ours],
            "pgqd's sessions",
            &[theirs],
        )
        .goal(
            format!("<= {PGQD_FACTOR_GOAL}x pgqd"),
            ours <= PGQD_FACTOR_GOAL * theirs,
        ),
    );
    let (ours, theirs) = (a.wal_per_min - b.wal_per_min, c.wal_per_min - b.wal_per_min);
    rows.push(
        Row::versus(
            CASE,
            "ticker's WAL per idle minute (window - no-ticker window)",
            "B/min",
            Better::Lower,
            vec![ours],
            "pgqd's (same difference)",
            &[theirs],
        )
        .goal(
            format!("<= {PGQD_FACTOR_GOAL}x pgqd"),
            ours <= PGQD_FACTOR_GOAL * theirs,
        ),
    );
    rows
}
