//! `pgfan status`: one screen for an operator, or JSON for scripts and health checks.
//!
//! Reads the master through PgQ's info functions and pgfan's tables only (no daemon needs
//! to answer), so it also works when daemons are down, which is when it matters. Anything
//! an operator must look at sets `attention` and makes the command exit non-zero: an
//! active node whose heartbeat is older than the limit, or a consumer lagging more than
//! the limit.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

/// Limits beyond which something needs attention.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_lag: Duration,
    pub heartbeat_timeout: Duration,
    /// How many recent jobs to list.
    pub jobs: i64,
}

#[derive(Debug, Serialize)]
pub struct Queue {
    pub queue: String,
    pub events_per_sec: Option<f64>,
    pub ticker_lag_s: f64,
    pub new_events: i64,
}

#[derive(Debug, Serialize)]
pub struct Consumer {
    pub queue: String,
    pub consumer: String,
    pub lag_s: f64,
    pub last_seen_s: f64,
    pub pending_events: i64,
    pub attention: bool,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub node: String,
    pub state: String,
    pub workers: Option<i32>,
    pub heartbeat_age_s: Option<f64>,
    /// Whether the node's daemon has a session on the master now (pgfan.connected_nodes).
    pub connected: bool,
    pub queued: i64,
    pub claimed: i64,
    pub running: i64,
    pub failed_last_hour: i64,
    pub attention: bool,
}

#[derive(Debug, Serialize)]
pub struct Job {
    pub job_id: i64,
    pub kind: String,
    pub target: Option<String>,
    pub state: String,
    pub progress: Option<String>,
    pub age_s: f64,
}

/// Everything `pgfan status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub queues: Vec<Queue>,
    pub consumers: Vec<Consumer>,
    pub nodes: Vec<Node>,
    pub jobs: Vec<Job>,
    pub dead_letters_last_hour: i64,
    pub attention: Vec<String>,
}

/// Reads the status of the master behind `c`.
pub async fn collect(c: &Client, limits: Limits) -> Result<Status, tokio_postgres::Error> {
    let queues = queues(c).await?;
    let consumers = consumers(c, limits).await?;
    let has_pgfan: bool = c
        .query_one("select to_regclass('pgfan.node') is not null", &[])
        .await?
        .get(0);
    let (nodes, jobs, dead) = if has_pgfan {
        let dead: i64 = c
            .query_one(
                "select count(*) from pgfan.dead_letter where created_at > now() - interval '1 hour'",
                &[],
            )
            .await?
            .get(0);
        (nodes(c, limits).await?, jobs(c, limits).await?, dead)
    } else {
        (Vec::new(), Vec::new(), 0)
    };
    let mut attention: Vec<String> = nodes
        .iter()
        .filter(|n| n.attention)
        .map(|n| match n.heartbeat_age_s {
            Some(age) => format!(
                "node {} is silent: its daemon has no master session, last heartbeat {age:.0} s ago",
                n.node
            ),
            None => format!("node {} has never sent a heartbeat", n.node),
        })
        .collect();
    attention.extend(consumers.iter().filter(|c| c.attention).map(|c| {
        format!(
            "consumer {} on {} lags {:.0} s ({} events pending)",
            c.consumer, c.queue, c.lag_s, c.pending_events
        )
    }));
    Ok(Status {
        queues,
        consumers,
        nodes,
        jobs,
        dead_letters_last_hour: dead,
        attention,
    })
}

async fn queues(c: &Client) -> Result<Vec<Queue>, tokio_postgres::Error> {
    let rows = c
        .query(
            "select i.queue_name, a.events_per_sec, extract(epoch from i.ticker_lag)::float8,
                    a.new_events
               from pgq.get_queue_info() i, pgfan.queue_activity(i.queue_name) a
              order by i.queue_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Queue {
            queue: r.get(0),
            events_per_sec: r.get(1),
            ticker_lag_s: r.get::<_, Option<f64>>(2).unwrap_or(0.0),
            new_events: r.get::<_, Option<i64>>(3).unwrap_or(0),
        })
        .collect())
}

async fn consumers(c: &Client, limits: Limits) -> Result<Vec<Consumer>, tokio_postgres::Error> {
    let rows = c
        .query(
            "select queue_name, consumer_name, extract(epoch from lag)::float8,
                    extract(epoch from last_seen)::float8,
                    pgfan.pending_events(queue_name, consumer_name)
               from pgq.get_consumer_info() order by queue_name, consumer_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            // Clock readings a moment apart can make a fresh lag slightly negative.
            let lag_s = r.get::<_, Option<f64>>(2).unwrap_or(0.0).max(0.0);
            let pending: i64 = r.get::<_, Option<i64>>(4).unwrap_or(0);
            Consumer {
                queue: r.get(0),
                consumer: r.get(1),
                lag_s,
                last_seen_s: r.get::<_, Option<f64>>(3).unwrap_or(0.0).max(0.0),
                pending_events: pending,
                // An idle queue's consumer "lags" since the last tick; only pending work counts.
                attention: pending > 0 && lag_s > limits.max_lag.as_secs_f64(),
            }
        })
        .collect())
}

async fn nodes(c: &Client, limits: Limits) -> Result<Vec<Node>, tokio_postgres::Error> {
    let rows = c
        .query(
            "select n.node_name, n.state, n.workers, extract(epoch from now() - n.heartbeat)::float8,
                    count(t.*) filter (where t.state = 'queued'),
                    count(t.*) filter (where t.state = 'claimed'),
                    count(t.*) filter (where t.state = 'running'),
                    count(t.*) filter (where t.state = 'failed' and t.finished_at > now() - interval '1 hour'),
                    n.node_name in (select pgfan.connected_nodes())
               from pgfan.node n left join pgfan.task t on t.node_name = n.node_name
              where n.state <> 'removed'
              group by n.node_name order by n.node_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let state: String = r.get(1);
            let age: Option<f64> = r.get(3);
            let connected: bool = r.get(8);
            // A connected daemon is alive however long ago it last wrote a heartbeat.
            let silent =
                !connected && age.is_none_or(|a| a > limits.heartbeat_timeout.as_secs_f64());
            Node {
                node: r.get(0),
                attention: state != "disabled" && silent,
                state,
                workers: r.get(2),
                heartbeat_age_s: age,
                connected,
                queued: r.get(4),
                claimed: r.get(5),
                running: r.get(6),
                failed_last_hour: r.get(7),
            }
        })
        .collect())
}

async fn jobs(c: &Client, limits: Limits) -> Result<Vec<Job>, tokio_postgres::Error> {
    let rows = c
        .query(
            "select job_id, kind, target, state, pgfan.job_summary(job_id),
                    extract(epoch from now() - submitted_at)::float8
               from pgfan.job order by job_id desc limit $1",
            &[&limits.jobs],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Job {
            job_id: r.get(0),
            kind: r.get(1),
            target: r.get(2),
            state: r.get(3),
            progress: r.get(4),
            age_s: r.get(5),
        })
        .collect())
}

/// The operator's screen.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "QUEUES\n  {:<28} {:>9} {:>12} {:>8}",
        "queue", "ev/s", "ticker lag", "new"
    );
    for q in &s.queues {
        let rate = q.events_per_sec.map_or("-".into(), |r| format!("{r:.1}"));
        let _ = writeln!(
            out,
            "  {:<28} {:>9} {:>11.1}s {:>8}",
            q.queue, rate, q.ticker_lag_s, q.new_events
        );
    }
    let _ = writeln!(
        out,
        "CONSUMERS\n  {:<28} {:<24} {:>9} {:>10} {:>8}",
        "queue", "consumer", "lag", "last seen", "pending"
    );
    for c in &s.consumers {
        let flag = if c.attention { "  <- lagging" } else { "" };
        let _ = writeln!(
            out,
            "  {:<28} {:<24} {:>8.1}s {:>9.1}s {:>8}{flag}",
            c.queue, c.consumer, c.lag_s, c.last_seen_s, c.pending_events
        );
    }
    if !s.nodes.is_empty() {
        let _ = writeln!(
            out,
            "NODES\n  {:<16} {:<9} {:>7} {:>9} {:>10} {:>7} {:>8} {:>8} {:>9}",
            "node",
            "state",
            "workers",
            "daemon",
            "heartbeat",
            "queued",
            "claimed",
            "running",
            "failed/h"
        );
        for n in &s.nodes {
            let hb = n
                .heartbeat_age_s
                .map_or("never".into(), |a| format!("{a:.0}s ago"));
            let workers = n.workers.map_or("-".into(), |w| w.to_string());
            let flag = if n.attention { "  <- silent" } else { "" };
            let daemon = if n.connected { "connected" } else { "-" };
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {:>7} {:>9} {:>10} {:>7} {:>8} {:>8} {:>9}{flag}",
                n.node,
                n.state,
                workers,
                daemon,
                hb,
                n.queued,
                n.claimed,
                n.running,
                n.failed_last_hour
            );
        }
    }
    if !s.jobs.is_empty() {
        let _ = writeln!(
            out,
            "RECENT JOBS\n  {:>7} {:<5} {:<16} {:>8}  progress",
            "job", "kind", "target", "age"
        );
        for j in &s.jobs {
            let target = j.target.as_deref().unwrap_or("-");
            let progress = j.progress.as_deref().unwrap_or(&j.state);
            let _ = writeln!(
                out,
                "  {:>7} {:<5} {:<16} {:>7.0}s  {progress}",
                j.job_id, j.kind, target, j.age_s
            );
        }
        let _ = writeln!(
            out,
            "dead letters in the last hour: {}",
            s.dead_letters_last_hour
        );
    }
    if s.attention.is_empty() {
        out.push_str("OK\n");
    } else {
        for a in &s.attention {
            let _ = writeln!(out, "ATTENTION: {a}");
        }
    }
    out
}
