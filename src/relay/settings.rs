//! Settings of `pgfan relay`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, ConfigError};
use crate::consumer::ConsumerOptions;

/// Settings of `pgfan relay` (section `[relay]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// libpq connection string of the master database.
    pub master: String,
    /// The queue producers write to. Default `push_queue`.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Consumer name on that queue. Default `pgfan_relay`.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Polling fallback when no tick notification arrives. Default 1 s.
    #[serde(default = "default_poll", deserialize_with = "config::duration")]
    pub poll_period: Duration,
    /// At a stop, how long the batch in progress may take before it is abandoned (and
    /// redone after the restart). Default 30 s.
    #[serde(
        default = "default_stop_timeout",
        deserialize_with = "config::duration"
    )]
    pub stop_timeout: Duration,
    /// Other databases whose push queues are routed to this master too (TOML
    /// `[[relay.producers]]` tables). Default: none.
    #[serde(default)]
    pub producers: Vec<ProducerConfig>,
    /// Serve Prometheus metrics at `http://<this address>/metrics`, e.g. `127.0.0.1:9187`.
    /// Default: none (no endpoint). Read at start only.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// A producer database: its push queue is consumed there, its jobs are routed on the
/// master, exactly once through the pgq_ext ledger on the master.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// A short unique name; jobs record `<name>/<queue>` as their source.
    pub name: String,
    /// libpq connection string of the producer database.
    pub db: String,
    /// Its push queue. Default `push_queue`.
    #[serde(default = "default_queue")]
    pub queue: String,
}

fn default_queue() -> String {
    "push_queue".into()
}

fn default_consumer() -> String {
    "pgfan_relay".into()
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Deserialize)]
struct RelayFile {
    relay: RelayConfig,
}

impl RelayConfig {
    /// Defaults for the master at `master`.
    pub fn new(master: impl Into<String>) -> RelayConfig {
        RelayConfig {
            master: master.into(),
            queue: default_queue(),
            consumer: default_consumer(),
            stop_timeout: default_stop_timeout(),
            poll_period: default_poll(),
            producers: Vec::new(),
            metrics_listen: None,
        }
    }

    /// Reads the `[relay]` section of a TOML or INI file.
    pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
        config::checked(
            path,
            config::load::<RelayFile>(path, "relay")?.relay,
            RelayConfig::check,
        )
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        if self.poll_period.is_zero() {
            return Err("poll_period must be greater than zero".into());
        }
        let mut names: Vec<&str> = self.producers.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("producer name {:?} is used twice", w[0]));
        }
        if names.iter().any(|n| n.is_empty() || n.contains('/')) {
            return Err("producer names must be non-empty and contain no '/'".into());
        }
        crate::metrics::listen_addr(self.metrics_listen.as_deref())?;
        Ok(())
    }

    /// What `--check-config --connect` opens: the master and every producer database.
    pub fn connections(&self) -> Vec<crate::db::Planned> {
        let producers = self.producers.iter().map(|p| ("producer", p.db.clone()));
        std::iter::once(("master", self.master.clone()))
            .chain(producers)
            .map(|(role, conninfo)| crate::db::Planned {
                role,
                conninfo,
                user: None,
            })
            .collect()
    }

    /// The consumer framework's options for the master's push queue.
    pub fn consumer_options(&self) -> ConsumerOptions {
        self.options(&self.master, &self.queue)
    }

    /// The consumer framework's options for a producer database's push queue.
    pub fn producer_options(&self, p: &ProducerConfig) -> ConsumerOptions {
        let mut opts = self.options(&p.db, &p.queue);
        opts.role = "producer";
        opts
    }

    fn options(&self, db: &str, queue: &str) -> ConsumerOptions {
        let mut opts = ConsumerOptions::new(db, queue, &self.consumer);
        opts.poll_period = self.poll_period;
        // Producer batches are routed at their end, so a batch is read in one piece.
        opts.lazy_fetch = 0;
        opts
    }
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

impl crate::service::StopCap for RelayConfig {
    fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }
}
