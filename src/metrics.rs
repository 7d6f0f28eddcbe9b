//! Prometheus metrics: an optional `/metrics` endpoint per daemon (`metrics_listen`).
//!
//! The code records through the `metrics` macros where things happen (batches, ticks, tasks,
//! outages, ...); those are no-ops until [`serve`] installs the recorder, which a daemon does
//! at start when its configuration sets `metrics_listen`. Tests and the demo install none.
//! Every metric carries the label `daemon` (ticker, relay, reducer, node).

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use thiserror::Error;

/// Histogram buckets (seconds) of the `*_seconds` metrics: 1 ms to 1 h.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

/// Errors starting the metrics endpoint.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("{0}")]
    Address(String),
    #[error("starting the metrics endpoint on {addr}: {source}")]
    Install {
        addr: SocketAddr,
        #[source]
        source: BuildError,
    },
}

/// Parses a `metrics_listen` value (None = no endpoint); the error names the key.
pub fn listen_addr(value: Option<&str>) -> Result<Option<SocketAddr>, String> {
    value
        .map(|v| {
            v.trim().parse().map_err(|e| {
                format!("metrics_listen {v:?} is not an address such as \"127.0.0.1:9187\": {e}")
            })
        })
        .transpose()
}

/// Starts the endpoint of `daemon` when `listen` (its `metrics_listen`) is set.
pub fn serve_configured(listen: Option<&str>, daemon: &'static str) -> Result<(), MetricsError> {
    match listen_addr(listen).map_err(MetricsError::Address)? {
        Some(addr) => serve(addr, daemon),
        None => Ok(()),
    }
}

/// Installs the global recorder and serves `http://<addr>/metrics` on the current runtime.
pub fn serve(addr: SocketAddr, daemon: &'static str) -> Result<(), MetricsError> {
    let install = |addr| {
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .add_global_label("daemon", daemon)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
            .install()
    };
    install(addr).map_err(|source| MetricsError::Install { addr, source })?;
    describe();
    tracing::info!(%addr, "Serving Prometheus metrics at /metrics");
    Ok(())
}

/// HELP texts of every metric pgfan records.
fn describe() {
    let c = |name: &'static str, help: &'static str| describe_counter!(name, help);
    c("pgfan_consumer_batches_total", "Batches finished");
    c(
        "pgfan_consumer_events_total",
        "Events read from finished batches",
    );
    c(
        "pgfan_consumer_errors_total",
        "Failed batch attempts (database or handler errors)",
    );
    c("pgfan_outages_total", "Connections that became unavailable");
    c(
        "pgfan_reconnects_total",
        "Connections available again after an outage",
    );
    c("pgfan_ticker_ticks_total", "Ticks issued");
    c(
        "pgfan_ticker_maint_runs_total",
        "maint_operations rounds run",
    );
    c(
        "pgfan_ticker_retry_events_moved_total",
        "Retry events moved back into their queues",
    );
    c(
        "pgfan_relay_jobs_routed_total",
        "Jobs routed to their nodes",
    );
    c(
        "pgfan_relay_events_rejected_total",
        "Push events rejected (job failed, dead letter)",
    );
    c(
        "pgfan_reducer_results_recorded_total",
        "Task results recorded (first of each task)",
    );
    c(
        "pgfan_reducer_jobs_finished_total",
        "Jobs finished, by final state",
    );
    c(
        "pgfan_reducer_jobs_expired_total",
        "Jobs ended because their deadline passed",
    );
    c(
        "pgfan_node_tasks_total",
        "Tasks finished on the node, by final state",
    );
    c(
        "pgfan_node_results_shipped_total",
        "Task results shipped to the master",
    );
    let seconds = "Wall time of ";
    describe_histogram!(
        "pgfan_consumer_batch_duration_seconds",
        Unit::Seconds,
        format!("{seconds}one batch: read, handle, finish, commit")
    );
    describe_histogram!(
        "pgfan_node_task_duration_seconds",
        Unit::Seconds,
        format!("{seconds}one task run that ended in a final state")
    );
    describe_gauge!(
        "pgfan_consumer_lag_seconds",
        Unit::Seconds,
        "Age of the last batch's end tick when the consumer took it"
    );
    describe_gauge!("pgfan_node_tasks_running", "Tasks running on the node");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_bad_ones_name_the_key() {
        assert_eq!(listen_addr(None), Ok(None));
        let addr = listen_addr(Some("127.0.0.1:9187")).unwrap().unwrap();
        assert_eq!(addr.port(), 9187);
        assert!(listen_addr(Some("[::1]:9187")).unwrap().is_some());
        let err = listen_addr(Some("localhost")).unwrap_err();
        assert!(err.contains("metrics_listen"), "{err}");
        assert!(listen_addr(Some("127.0.0.1")).is_err());
    }
}
