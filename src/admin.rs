//! Operator commands over the master's SQL API: `pgfan submit`, `pgfan job`, `pgfan node`,
//! `pgfan dead-letter`.
//!
//! Each is a thin client of the `pgfan.*` functions, so what the CLI does is exactly what a
//! SQL user can do, with the same checks and errors.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use thiserror::Error;
use tokio_postgres::Client;

/// Errors of the operator commands.
#[derive(Debug, Error)]
pub enum AdminError {
    #[error("{}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// `detail` is the job's summary, which starts with its state ("failed: 1 of 3 ...").
    #[error("job {job} {detail}")]
    JobNotDone {
        job: i64,
        state: String,
        detail: String,
    },
    #[error("progress display: {0}")]
    Progress(String),
}

/// `pgfan submit`: what to run, where, and how to combine it.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Run on this node (or a comma-separated list).
    #[arg(long, group = "target")]
    pub node: Option<String>,
    /// Run on every active node.
    #[arg(long, group = "target")]
    pub all: bool,
    /// Run on the node owning this key (hash routing).
    #[arg(long, group = "target")]
    pub hash: Option<String>,
    /// Run on one live node.
    #[arg(long, group = "target")]
    pub any: bool,
    /// SQL statement to run.
    #[arg(long, group = "work")]
    pub sql: Option<String>,
    /// Function to call (must be on the node's allow-list).
    #[arg(long, group = "work")]
    pub call: Option<String>,
    /// Argument of --call (repeat for more, in order).
    #[arg(long = "arg")]
    pub args: Vec<String>,
    /// Reduce: sum, count, min, max, avg, concat, or SQL over `partials`.
    #[arg(long)]
    pub reduce: Option<String>,
    /// Lane: tasks of one lane run in submit order on a node.
    #[arg(long)]
    pub lane: Option<String>,
    /// Statement timeout per task and job deadline, e.g. 30s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Run outside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM); at-least-once.
    #[arg(long)]
    pub no_tx: bool,
    /// Wait for the job, showing progress per node, then print its result.
    #[arg(long)]
    pub wait: bool,
    /// Print the result as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl SubmitArgs {
    fn target(&self) -> String {
        match (&self.node, &self.hash) {
            (Some(n), _) => n.clone(),
            (None, Some(k)) => format!("hash:{k}"),
            _ if self.all => "all".into(),
            _ => "any".into(),
        }
    }
}

/// Submits the job; with --wait follows it to the end and prints its result.
pub async fn submit(c: &Client, a: &SubmitArgs) -> Result<(), AdminError> {
    let timeout = a
        .timeout
        .as_deref()
        .map(|t| match crate::config::parse_duration(t) {
            Ok(d) => format!("{} milliseconds", d.as_millis()),
            Err(_) => t.to_string(),
        });
    let args: Option<Vec<String>> = a.call.as_ref().map(|_| a.args.clone());
    let job: i64 = c
        .query_one(
            "select pgfan.submit($1, sql => $2, reduce => $3, lane => $4,
                                 timeout => $5::text::interval, tx => $6, call => $7, args => $8)",
            &[
                &a.target(),
                &a.sql,
                &a.reduce,
                &a.lane,
                &timeout,
                &!a.no_tx,
                &a.call,
                &args,
            ],
        )
        .await?
        .get(0);
    if !a.wait {
        println!("{job}");
        return Ok(());
    }
    follow(c, job).await?;
    print_result(c, job, a.json).await
}

/// Shows a progress bar per target node until the job ends.
async fn follow(c: &Client, job: i64) -> Result<(), AdminError> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
        .map_err(|e| AdminError::Progress(e.to_string()))?
        .progress_chars("=> ");
    let mut by_node: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        for r in c
            .query("select node_name, tasks, done, failed, cancelled, progress from pgfan.job_status($1)", &[&job])
            .await?
        {
            let node: String = r.get(0);
            let bar = by_node.entry(node.clone()).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(0).with_style(style.clone()));
                b.set_prefix(node);
                b
            });
            let (tasks, done, failed, cancelled): (i32, i32, i32, i32) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            bar.set_length(tasks as u64);
            bar.set_position((done + failed + cancelled) as u64);
            bar.set_message(r.get::<_, String>(5));
        }
        // Through pgfan.wait (no wait at all), not the table: a producer may read its job's
        // state, not pgfan.job.
        let state: String = c
            .query_one("select pgfan.wait($1, interval '0')", &[&job])
            .await?
            .get(0);
        if matches!(state.as_str(), "done" | "failed" | "cancelled") {
            by_node.values().for_each(ProgressBar::finish);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints a done job's rows (a table, or JSON lines); a failed job is an error.
async fn print_result(c: &Client, job: i64, json: bool) -> Result<(), AdminError> {
    let row = c
        .query_one(
            "select pgfan.wait($1, interval '0'), pgfan.job_summary($1)",
            &[&job],
        )
        .await?;
    let (state, summary): (String, Option<String>) = (row.get(0), row.get(1));
    if state != "done" {
        return Err(AdminError::JobNotDone {
            job,
            detail: summary.unwrap_or_else(|| state.clone()),
            state,
        });
    }
    let rows: Vec<serde_json::Value> = c
        .query("select * from pgfan.result($1)", &[&job])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if json {
        rows.iter().for_each(|r| println!("{r}"));
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// Rows of jsonb objects as an aligned text table (columns in the first row's order).
fn table(rows: &[serde_json::Value]) -> String {
    let Some(first) = rows.first().and_then(|r| r.as_object()) else {
        return "(no rows)\n".into();
    };
    let cols: Vec<&String> = first.keys().collect();
    let cell = |r: &serde_json::Value, c: &str| match &r[c] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |vals: Vec<String>| {
        let cells: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("{}\n", cells.join(" | ").trim_end())
    };
    let mut out = line(cols.iter().map(|c| c.to_string()).collect());
    out.push_str(&format!(
        "{}\n",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    ));
    for r in rows {
        out.push_str(&line(cols.iter().map(|c| cell(r, c)).collect()));
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

/// `pgfan job ...`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// The job's state, its tasks per node, and its result or error.
    Show { job: i64 },
    /// Cancel the job; running tasks are stopped on their nodes.
    Cancel { job: i64 },
    /// Run the failed tasks of a failed job again.
    RetryFailed { job: i64 },
}

pub async fn job(c: &Client, cmd: &JobCmd) -> Result<(), AdminError> {
    match cmd {
        JobCmd::Show { job } => {
            let r = c
                .query_one(
                    "select kind, coalesce(target, ''), state, pgfan.job_summary(job_id), submitted_at::text
                       from pgfan.job where job_id = $1",
                    &[job],
                )
                .await?;
            let (kind, target, state): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            println!(
                "job {job}: {kind} on {target}, submitted {}",
                r.get::<_, String>(4)
            );
            println!("{}", r.get::<_, Option<String>>(3).unwrap_or(state.clone()));
            for s in c
                .query(
                    "select node_name, progress from pgfan.job_status($1)",
                    &[job],
                )
                .await?
            {
                println!("  {:<16} {}", s.get::<_, String>(0), s.get::<_, String>(1));
            }
            if state == "done" {
                print_result(c, *job, false).await?;
            }
        }
        JobCmd::Cancel { job } => {
            let open: bool = c.query_one("select pgfan.cancel($1)", &[job]).await?.get(0);
            println!(
                "{}",
                if open {
                    "cancelled"
                } else {
                    "the job had already ended"
                }
            );
        }
        JobCmd::RetryFailed { job } => {
            let n: i32 = c
                .query_one("select pgfan.retry_failed($1)", &[job])
                .await?
                .get(0);
            println!("{n} task(s) queued again");
        }
    }
    Ok(())
}

/// `pgfan node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Register a node (and create its pull queue).
    Add { name: String },
    /// No new work from all/any/hash routing; it finishes what it has.
    Drain { name: String },
    /// No new work at all.
    Disable { name: String },
    /// Back to active.
    Activate { name: String },
    /// Take a node out for good: refused while it has open tasks (drain it first); its
    /// queue is dropped, its login unbound, its history kept. `node add` brings it back.
    Remove { name: String },
    /// Every node with its state and heartbeat.
    List,
    /// Bind the login role the node's daemon uses on the master; it may then act as this
    /// node and no other (the role also needs `grant pgfan_node to <role>`).
    Login { name: String, role: String },
}

pub async fn node(c: &Client, cmd: &NodeCmd) -> Result<(), AdminError> {
    let (sql, name) = match cmd {
        NodeCmd::Add { name } => ("select pgfan.node_add($1)", name),
        NodeCmd::Drain { name } => ("select pgfan.node_drain($1)", name),
        NodeCmd::Disable { name } => ("select pgfan.node_disable($1)", name),
        NodeCmd::Activate { name } => ("select pgfan.node_activate($1)", name),
        NodeCmd::Remove { name } => (
            "select format('removed (%s tasks kept as history)', pgfan.node_remove($1))",
            name,
        ),
        NodeCmd::Login { name, role } => {
            c.query_one("select pgfan.node_set_login($1, $2)", &[name, role])
                .await?;
            println!("{name}: login role {role}");
            return Ok(());
        }
        NodeCmd::List => {
            for r in c
                .query(
                    "select node_name, state, coalesce(workers::text, '-'),
                            coalesce(round(extract(epoch from now() - heartbeat))::text || 's ago', 'never')
                       from pgfan.node order by node_name",
                    &[],
                )
                .await?
            {
                let (n, s, w, h): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
                println!("{n:<16} {s:<9} workers {w:<4} heartbeat {h}");
            }
            return Ok(());
        }
    };
    let out: String = c.query_one(sql, &[name]).await?.get(0);
    println!("{name}: {out}");
    Ok(())
}

/// `pgfan dead-letter ...`
#[derive(Debug, Subcommand)]
pub enum DeadLetterCmd {
    /// The newest dead letters.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Try one again once its cause is fixed.
    Replay { id: i64 },
}

pub async fn dead_letter(c: &Client, cmd: &DeadLetterCmd) -> Result<(), AdminError> {
    match cmd {
        DeadLetterCmd::List { limit } => {
            for r in c
                .query(
                    "select dl_id, created_at::text, source, coalesce(job_id::text, '-'), error,
                            replayed_at is not null
                       from pgfan.dead_letter order by dl_id desc limit $1",
                    &[limit],
                )
                .await?
            {
                let replayed = if r.get::<_, bool>(5) {
                    " (replayed)"
                } else {
                    ""
                };
                println!(
                    "{:>6} {} {:<7} job {:<6} {}{replayed}",
                    r.get::<_, i64>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                    r.get::<_, String>(4)
                );
            }
        }
        DeadLetterCmd::Replay { id } => {
            let done: String = c
                .query_one("select pgfan.replay_dead_letter($1)", &[id])
                .await?
                .get(0);
            println!("{done}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::table;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_in_row_order() {
        let t = table(&[json!({"n": 1, "name": "a"}), json!({"n": 20, "name": null})]);
        assert_eq!(t, "n  | name\n---+-----\n1  | a\n20 |\n(2 rows)\n");
        assert_eq!(table(&[]), "(no rows)\n");
    }
}
