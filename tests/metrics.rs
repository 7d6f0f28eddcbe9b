//! The Prometheus endpoint: a daemon started with `metrics_listen` serves its metrics over
//! HTTP, and a bad `metrics_listen` is a configuration error that names the key.

mod common;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{start_ticker, ticker_config, Backend, TestDb, PATIENCE};
use pgfan::signals::Control;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("its address").port()
}

/// `GET /metrics` over plain HTTP/1.0; None while nothing answers.
async fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The value of the sample of `metric` whose labels contain every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn spawn_relay(config: &Path, stderr: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .arg("relay")
        .arg("-c")
        .arg(config)
        .env("PGFAN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).expect("creating the log"))
        .kill_on_drop(true)
        .spawn()
        .expect("starting pgfan relay")
}

async fn stop(mut relay: Child) -> std::io::Result<ExitStatus> {
    let pid = relay.id().expect("the relay is running") as libc::pid_t;
    // SAFETY: kill(2) on the pid of our child, which is not reaped while we hold it.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "sending SIGTERM"
    );
    tokio::time::timeout(PATIENCE, relay.wait())
        .await
        .expect("the relay exits in time after SIGTERM")
}

#[tokio::test]
async fn relay_serves_its_metrics_over_http() {
    let db = TestDb::master(Backend::Bundled).await;
    let c = db.connect().await;
    c.batch_execute(
        "select pgfan.node_add('nodex');
         select pgq.insert_event('push_queue', 'sql', 'sql=select+1', 'nodex', null, null, null);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nmaster = \"{}\"\npoll_period = \"100ms\"\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            db.conninfo
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let relay = spawn_relay(&config, &log);
    let (ticker, ticker_task) = start_ticker(ticker_config(&db));

    let routed = &["daemon=\"relay\"", "queue=\"push_queue\""];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = scrape(port).await.unwrap_or_default();
        if sample(&text, "pgfan_relay_jobs_routed_total", routed) == Some(1.0) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no routed job in the metrics within {PATIENCE:?}; last scrape:\n{text}\nrelay log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.starts_with("HTTP/1."), "{text}");
    let consumer = &["queue=\"push_queue\"", "consumer=\"pgfan_relay\""];
    assert!(sample(&text, "pgfan_consumer_batches_total", consumer) >= Some(1.0));
    assert!(sample(&text, "pgfan_consumer_events_total", consumer) >= Some(1.0));
    assert!(
        text.contains("pgfan_consumer_batch_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(sample(&text, "pgfan_consumer_lag_seconds", consumer).is_some());

    let status = stop(relay).await.expect("waiting for the relay");
    ticker.send(Control::Stop).unwrap();
    ticker_task.await.unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "relay log:\n{log}");
    assert!(
        log.contains("Serving Prometheus metrics") && log.contains(&format!(":{port}")),
        "the relay logs the endpoint at start:\n{log}"
    );
}

#[test]
fn a_bad_metrics_listen_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let bad = "metrics_listen = \"localhost\"\n";
    let errors = [
        pgfan::ticker::TickerConfig::load(&write("ticker.toml", &format!("[ticker]\n{bad}")))
            .map(drop)
            .unwrap_err(),
        pgfan::relay::RelayConfig::load(&write(
            "relay.toml",
            &format!("[relay]\nmaster = \"x\"\n{bad}"),
        ))
        .map(drop)
        .unwrap_err(),
        pgfan::reducer::ReducerConfig::load(&write(
            "reducer.toml",
            &format!("[reducer]\nmaster = \"x\"\n{bad}"),
        ))
        .map(drop)
        .unwrap_err(),
        pgfan::node::NodeConfig::load(&write(
            "node.ini",
            "[node]\nname = n1\nmetrics_listen = :x\n",
        ))
        .map(drop)
        .unwrap_err(),
    ];
    for err in errors {
        let err = err.to_string();
        assert!(err.contains("metrics_listen"), "{err}");
    }
    let good = write(
        "relay.ini",
        "[relay]\nmaster = x\nmetrics_listen = 127.0.0.1:9187\n",
    );
    let cfg = pgfan::relay::RelayConfig::load(&good).unwrap();
    assert_eq!(cfg.metrics_listen.as_deref(), Some("127.0.0.1:9187"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgfan"))
        .args(["relay", "--check-config", "-c"])
        .arg(dir.path().join("relay.toml"))
        .output()
        .expect("running pgfan relay --check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("metrics_listen") && stderr.contains("relay.toml"),
        "{stderr}"
    );
}
