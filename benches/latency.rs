//! End-to-end latency at low load: insert → consumer sees the event.
//!
//! `cargo bench --bench latency [-- --events N --rate R]`
//!
//! One throwaway cluster, one database with the bundled core. Each case produces N single-event
//! transactions at R events/s and measures, per event, the time from just before the INSERT
//! to the moment the consumer (pgfan's consumer framework) hands it to its handler. Cases
//! differ only in who ticks (pgfan ticker or the C pgqd, both with their default settings),
//! how the consumer waits (NOTIFY wake-up or polling), and the queue's ticker_max_lag.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfan::cluster::Cluster;
use pgfan::consumer::{self, BatchHandler, BatchRef, ConsumerOptions, HandlerError, RetryEvent};
use pgfan::pgq::Event;
use pgfan::signals::Control;
use pgfan::ticker::{self, TickerConfig};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Transaction;

#[derive(Clone, Copy)]
enum Ticker {
    Pgfan,
    Pgqd,
}

struct Case {
    name: &'static str,
    ticker: Ticker,
    /// Consumer's polling fallback.
    consumer_poll: Duration,
    /// The queue's ticker_max_lag; None = PgQ's default (3 s).
    max_lag: Option<&'static str>,
}

struct Stamp {
    seen: mpsc::UnboundedSender<(usize, Instant)>,
}

impl BatchHandler for Stamp {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        let now = Instant::now();
        for e in events {
            if let Some(n) = e.data.as_deref().and_then(|d| d.parse().ok()) {
                let _ = self.seen.send((n, now));
            }
        }
        Ok(Vec::new())
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let events = arg("--events", 200);
    let rate = arg("--rate", 10);
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let conninfo = cluster.conninfo("postgres");
    let mut client = pgfan::db::connect_client(&conninfo).await.unwrap();
    pgfan::install::install(&mut client, pgfan::install::Role::Master)
        .await
        .unwrap();
    let cases = [
        Case {
            name: "pgfan ticker, NOTIFY consumer, max_lag 0",
            ticker: Ticker::Pgfan,
            consumer_poll: Duration::from_secs(1),
            max_lag: Some("0"),
        },
        Case {
            name: "pgqd, consumer polls 1 s, max_lag 0",
            ticker: Ticker::Pgqd,
            consumer_poll: Duration::from_secs(1),
            max_lag: Some("0"),
        },
        Case {
            name: "pgqd, consumer polls 10 ms, max_lag 0",
            ticker: Ticker::Pgqd,
            consumer_poll: Duration::from_millis(10),
            max_lag: Some("0"),
        },
        Case {
            name: "pgfan ticker, NOTIFY consumer, default queue",
            ticker: Ticker::Pgfan,
            consumer_poll: Duration::from_secs(1),
            max_lag: None,
        },
        Case {
            name: "pgqd, consumer polls 1 s, default queue",
            ticker: Ticker::Pgqd,
            consumer_poll: Duration::from_secs(1),
            max_lag: None,
        },
    ];
    println!(
        "latency insert -> consumer sees it; {events} events at {rate}/s per case; PostgreSQL {}",
        server_version(&client).await
    );
    println!(
        "{:<48} {:>9} {:>9} {:>9} {:>9}",
        "case", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    let mut p50s = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let lat = run_case(&cluster, &client, i, case, events, rate).await;
        println!(
            "{:<48} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            case.name,
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.95)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap())
        );
        p50s.push(percentile(&lat, 0.50));
    }
    println!(
        "ratio p50 pgqd(poll 1 s)/pgfan at max_lag 0: {:.1}x",
        ms(p50s[1]) / ms(p50s[0])
    );
}

async fn server_version(c: &tokio_postgres::Client) -> String {
    c.query_one("show server_version", &[])
        .await
        .unwrap()
        .get(0)
}

async fn run_case(
    cluster: &Cluster,
    client: &tokio_postgres::Client,
    i: usize,
    case: &Case,
    events: usize,
    rate: usize,
) -> Vec<Duration> {
    let queue = format!("lat{i}");
    client
        .query_one("select pgq.create_queue($1)", &[&queue])
        .await
        .unwrap();
    if let Some(lag) = case.max_lag {
        client
            .query_one(
                "select pgq.set_queue_config($1, 'ticker_max_lag', $2)",
                &[&queue, &lag],
            )
            .await
            .unwrap();
    }
    client
        .query_one("select pgq.register_consumer($1, 'bench')", &[&queue])
        .await
        .unwrap();
    let base = format!("host=127.0.0.1 port={} user=postgres", cluster.port());
    let (ctl, ticker_task, _pgqd) = match case.ticker {
        Ticker::Pgfan => {
            let cfg = TickerConfig {
                base_connstr: base.clone(),
                database_list: vec!["postgres".into()],
                ..TickerConfig::default()
            };
            let (tx, rx) = mpsc::unbounded_channel();
            (
                Some(tx),
                Some(tokio::spawn(ticker::run(None, cfg, rx))),
                None,
            )
        }
        Ticker::Pgqd => (None, None, Some(start_pgqd(cluster, &base))),
    };
    let mut opts = ConsumerOptions::new(cluster.conninfo("postgres"), &queue, "bench");
    opts.poll_period = case.consumer_poll;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let consumer = tokio::spawn(async move {
        let mut h = Stamp { seen: seen_tx };
        consumer::run(&opts, &mut h, stop).await
    });
    // Let the first (empty) batches pass so the measurement starts from a steady state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sent = Vec::with_capacity(events);
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for n in 0..events {
        tokio::time::sleep_until((start + gap * n as u32).into()).await;
        sent.push(Instant::now());
        client
            .query_one(
                "select pgq.insert_event($1, 'lat', $2)",
                &[&queue, &n.to_string()],
            )
            .await
            .unwrap();
    }
    let mut lat = vec![Duration::MAX; events];
    let mut left = events;
    while left > 0 {
        let (n, at) = tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await
            .expect("events arrive")
            .unwrap();
        if lat[n] == Duration::MAX {
            lat[n] = at - sent[n];
            left -= 1;
        }
    }
    stop_tx.send(true).unwrap();
    consumer.await.unwrap().unwrap();
    if let (Some(ctl), Some(task)) = (ctl, ticker_task) {
        ctl.send(Control::Stop).unwrap();
        task.await.unwrap().unwrap();
    }
    lat.sort();
    lat
}

fn start_pgqd(cluster: &Cluster, base: &str) -> KillOnDrop {
    let ini = cluster.dir().join("pgqd.ini");
    std::fs::write(
        &ini,
        format!(
            "[pgqd]\nbase_connstr = {base}\ndatabase_list = postgres\nlogfile = {}\n",
            cluster.dir().join("pgqd.log").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("pgqd");
    cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
    KillOnDrop(
        cmd.spawn()
            .expect("pgqd is installed (Debian package pgqd)"),
    )
}
