//! pgfan's benchmark suite: each case against the baseline a user would pick instead,
//! measured in the same run on throwaway clusters, reported as medians and ratios.
//!
//! ```sh
//! cargo bench --bench suite                     # every case
//! cargo bench --bench suite -- latency parallel # cases by name
//! cargo bench --bench suite -- --quick          # small sizes, a smoke run
//! cargo bench --bench suite -- --list
//! ```
//!
//! Options: `--runs N` (repetitions per measurement, default 3; rows show the median),
//! `--out DIR` (default `target/bench`; results.json and results.md are written there),
//! `--profile` (clusters preload pg_stat_statements; the delivery case prints where the
//! master's and a node's server time went).
//! Timings are only ever reported here, never asserted in tests.

mod consume;
mod delivery;
mod fanout;
mod fleet;
mod footprint;
mod insert;
mod latency;
mod mapreduce;
mod parallel;
mod report;
mod rig;
mod skytools;
mod triggers;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use report::Row;
use rig::Ctx;

/// Case names in the order of the issue's list, with a one-line description.
const CASES: &[(&str, &str)] = &[
    (
        "insert",
        "1. insert_event throughput (pgbench): bundled core vs C extension vs plain INSERT",
    ),
    (
        "bulk",
        "2. bulk producing (COPY into the current event table, bulk API) vs case 1",
    ),
    (
        "consume",
        "3. consumer read rate over a 1M-event backlog vs a python3-pgq Consumer",
    ),
    (
        "delivery",
        "4. end-to-end targeted copy tasks, master + 3 nodes, vs pgqd + python3-pgq push/pull",
    ),
    (
        "latency",
        "5. latency at 10 events/s: insert -> applied on node, insert -> job result",
    ),
    (
        "parallel",
        "6. parallel statements on one node vs a dblink-async runner",
    ),
    (
        "mapreduce",
        "7. map-reduce average over 3M rows on 3 nodes vs the slowest local partial",
    ),
    (
        "footprint",
        "8. RSS and idle CPU of each daemon, ticker WAL per idle minute",
    ),
    ("fanout", "9. relay fan-out of run_on_all to 100 nodes"),
    (
        "fleet",
        "10. idle fleet of 1,000 node daemons: master backends, CPU, transactions/s",
    ),
    (
        "triggers",
        "11. bundled change-capture triggers vs PgQ's C triggers: cost per row, memory per trigger",
    ),
];

async fn run_case(name: &str, ctx: &Ctx) -> Result<Vec<Row>> {
    match name {
        "insert" => insert::run_insert(ctx).await,
        "bulk" => insert::run_bulk(ctx).await,
        "consume" => consume::run(ctx).await,
        "delivery" => delivery::run(ctx).await,
        "latency" => latency::run(ctx).await,
        "parallel" => parallel::run(ctx).await,
        "mapreduce" => mapreduce::run(ctx).await,
        "footprint" => footprint::run(ctx).await,
        "fanout" => fanout::run(ctx).await,
        "fleet" => fleet::run(ctx).await,
        "triggers" => triggers::run(ctx).await,
        other => bail!("unknown case {other:?}; --list shows the cases"),
    }
}

struct Args {
    cases: Vec<String>,
    quick: bool,
    runs: usize,
    out: PathBuf,
    list: bool,
    profile: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        cases: Vec::new(),
        quick: false,
        runs: 3,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
        list: false,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // cargo bench passes --bench to harness=false benches.
            "--bench" => {}
            "--quick" => args.quick = true,
            "--list" => args.list = true,
            "--profile" => args.profile = true,
            "--runs" => {
                args.runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a positive number"))?
            }
            "--out" => {
                args.out = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| anyhow::anyhow!("--out needs a directory"))?
            }
            s if s.starts_with('-') => bail!("unknown option {s}"),
            s => {
                if !CASES.iter().any(|(n, _)| *n == s) {
                    bail!("unknown case {s:?}; --list shows the cases");
                }
                args.cases.push(s.to_string());
            }
        }
    }
    if args.cases.is_empty() {
        args.cases = CASES.iter().map(|(n, _)| n.to_string()).collect();
    }
    Ok(args)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores {cpu}, {mem_gib:.0} GiB")
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M UTC")
        .env("TZ", "UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn postgres_version() -> String {
    std::process::Command::new(
        pgfan::cluster::server_bindir()
            .map(|d| d.join("postgres"))
            .unwrap_or_else(|_| PathBuf::from("postgres")),
    )
    .arg("--version")
    .output()
    .ok()
    .map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches("postgres (PostgreSQL) ")
            .to_string()
    })
    .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    // The in-process daemons' logs, for looking into a case: `PGFAN_LOG=pgfan=debug`.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("PGFAN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = parse_args()?;
    if args.list {
        for (name, what) in CASES {
            println!("{name:<10} {what}");
        }
        return Ok(());
    }
    if args.profile {
        // Read by pgfan::cluster when it writes postgresql.conf; set before any cluster starts.
        std::env::set_var(
            "PGFAN_PG_SETTINGS",
            "shared_preload_libraries = 'pg_stat_statements';pg_stat_statements.track = 'all'",
        );
    }
    let ctx = Ctx::new(args.quick, args.runs, args.profile);
    let env = report::Environment {
        date: today(),
        machine: machine(),
        postgres: postgres_version().await,
        settings: rig::reported_settings(),
        runs: args.runs,
        quick: args.quick,
    };
    println!("{}", env.describe());
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for name in &args.cases {
        let what = CASES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| *w)
            .unwrap_or("");
        println!("\n== {what}");
        let t = Instant::now();
        match run_case(name, &ctx).await {
            Ok(r) => {
                print!("{}", report::text_table(&r));
                rows.extend(r);
            }
            Err(e) => {
                println!("case {name} FAILED: {e:#}");
                failed.push(name.clone());
            }
        }
        println!("({name}: {:.1} s)", t.elapsed().as_secs_f64());
    }
    println!("\n== all results");
    print!("{}", report::text_table(&rows));
    report::write(&args.out, &env, &rows, &ctx.notes())?;
    println!("written: {}/results.json, results.md", args.out.display());
    if !failed.is_empty() {
        bail!("cases failed: {}", failed.join(", "));
    }
    Ok(())
}
