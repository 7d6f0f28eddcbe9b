//! `pgfan ticker`: pgqd's job for one or more databases, plus low-latency ticking.
//!
//! Per database it runs two sessions: the *ticker* (serialised by a session advisory lock, so
//! a second pgfan ticker is a hot standby rather than a source of inconsistent ticks) and the
//! *maintenance* session (retry mover and `maint_operations`). The supervisor here discovers
//! databases, starts and stops their workers, and handles stop and reload requests.
//!
//! Low latency at pgqd's idle cost: pgqd calls `pgq.ticker()` once a second, which offers
//! every queue a tick. The ticker session here (ticking.rs) does three things instead:
//! - a *round* every `ticker_period`, one read-only statement that reads every queue's
//!   event sequence and last two ticks and calls `pgq.ticker(queue)` only for the queues
//!   PgQ's rules could tick now (new events, or an idle tick due), so idle queues keep
//!   PgQ's idle ticks and exponential back-off while the calls that would decline are not
//!   made at all;
//! - a *wake-up*: on the bundled core, inserts into queues with `ticker_max_lag` 0 (pgfan's
//!   own) send `NOTIFY pgfan_ticker_wake, '<queue>'`, delivered at the producer's commit;
//!   the ticker ticks those queues at once (urgent.rs);
//! - a *fast poll* every `poll_period`, but only of *active* queues (woken, or whose
//!   sequence moved, within the last `ticker_period`), for producers that do not notify
//!   (the PgQ extension's C insert, COPY): their events tick within a poll period while
//!   their queue is active, and within a round when it was idle.
//!
//! After a tick it sends `NOTIFY pgfan_tick, '<queue>'` so consumers wake at once. Whether a
//! queue ticks is still decided by its own thresholds (`ticker_max_count`, `ticker_max_lag`,
//! ...): set `ticker_max_lag` low on queues that need low latency. An idle database costs one
//! read-only statement per round and the idle ticks pgqd would make, with the WAL of those
//! ticks and nothing else; nothing runs between rounds.

mod database;
mod ticking;
mod urgent;

pub use urgent::WAKE_CHANNEL;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError};
use crate::outage::Outage;
use crate::signals::Control;

/// Channel on which the ticker announces ticks; the payload is the queue name.
pub const TICK_CHANNEL: &str = "pgfan_tick";

/// Settings of `pgfan ticker` (section `[ticker]`, or `[pgqd]` for an unmodified pgqd.ini).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickerConfig {
    /// libpq connection string without dbname; each database's name is appended.
    #[serde(default)]
    pub base_connstr: String,
    /// Database used to discover the others when `database_list` is empty.
    #[serde(default = "default_initial_database")]
    pub initial_database: String,
    /// Fixed list of databases; empty = every database with a `pgq` schema.
    #[serde(default, deserialize_with = "config::list")]
    pub database_list: Vec<String>,
    /// How often the database list is re-read (and `pgq` looked for again). Default 60 s.
    #[serde(
        default = "default_check_period",
        deserialize_with = "config::duration"
    )]
    pub check_period: Duration,
    /// How often `maint_operations` (rotation, extra maintenance, vacuum) runs. Default 120 s.
    #[serde(
        default = "default_maint_period",
        deserialize_with = "config::duration"
    )]
    pub maint_period: Duration,
    /// How often due retry events are moved back into their queues. Default 30 s.
    #[serde(
        default = "default_retry_period",
        deserialize_with = "config::duration"
    )]
    pub retry_period: Duration,
    /// How often the round runs: every queue is looked at and offered a tick if PgQ's
    /// rules could allow one (idle and lag ticks, events of producers that do not notify).
    /// Also how long a queue stays active after its last move. Default 1 s.
    #[serde(
        default = "default_ticker_period",
        deserialize_with = "config::duration"
    )]
    pub ticker_period: Duration,
    /// How often active queues' event sequences are checked for new events (pgfan only;
    /// nothing is polled while no queue is active). Default 10 ms.
    #[serde(default = "default_poll_period", deserialize_with = "config::duration")]
    pub poll_period: Duration,
    /// Sessions are reopened after this long. Default 3600 s.
    #[serde(
        default = "default_connection_lifetime",
        deserialize_with = "config::duration"
    )]
    pub connection_lifetime: Duration,
    /// Serve Prometheus metrics at `http://<this address>/metrics`, e.g. `127.0.0.1:9187`.
    /// Default: none (no endpoint). Read at start only.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Append logs to this file instead of stderr.
    #[serde(default)]
    pub logfile: Option<PathBuf>,
    /// Write the process id here while running.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// pgqd keys accepted so a pgqd.ini loads unchanged; logging goes through stderr/journald.
    #[serde(default)]
    pub syslog: Option<IgnoredAny>,
    #[serde(default)]
    pub syslog_ident: Option<IgnoredAny>,
    #[serde(default)]
    pub syslog_facility: Option<IgnoredAny>,
    #[serde(default)]
    pub stats_period: Option<IgnoredAny>,
}

fn default_initial_database() -> String {
    "template1".into()
}
fn default_check_period() -> Duration {
    Duration::from_secs(60)
}
fn default_maint_period() -> Duration {
    Duration::from_secs(120)
}
fn default_retry_period() -> Duration {
    Duration::from_secs(30)
}
fn default_ticker_period() -> Duration {
    Duration::from_secs(1)
}
fn default_poll_period() -> Duration {
    Duration::from_millis(10)
}
fn default_connection_lifetime() -> Duration {
    Duration::from_secs(3600)
}

impl Default for TickerConfig {
    fn default() -> Self {
        TickerConfig {
            base_connstr: String::new(),
            initial_database: default_initial_database(),
            database_list: Vec::new(),
            check_period: default_check_period(),
            maint_period: default_maint_period(),
            retry_period: default_retry_period(),
            ticker_period: default_ticker_period(),
            poll_period: default_poll_period(),
            connection_lifetime: default_connection_lifetime(),
            metrics_listen: None,
            logfile: None,
            pidfile: None,
            syslog: None,
            syslog_ident: None,
            syslog_facility: None,
            stats_period: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TickerFile {
    #[serde(alias = "pgqd")]
    ticker: TickerConfig,
}

impl TickerConfig {
    /// Reads and checks a TOML or INI file.
    pub fn load(path: &Path) -> Result<TickerConfig, ConfigError> {
        config::checked(
            path,
            config::load::<TickerFile>(path, "ticker")?.ticker,
            TickerConfig::check,
        )
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        for (name, d) in [
            ("check_period", self.check_period),
            ("maint_period", self.maint_period),
            ("retry_period", self.retry_period),
            ("ticker_period", self.ticker_period),
            ("poll_period", self.poll_period),
            ("connection_lifetime", self.connection_lifetime),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.poll_period > self.ticker_period {
            return Err("poll_period must not exceed ticker_period".into());
        }
        crate::metrics::listen_addr(self.metrics_listen.as_deref())?;
        Ok(())
    }

    /// Connection string of one database.
    /// What `--check-config --connect` opens: the discovery database and the listed ones.
    pub fn connections(&self) -> Vec<crate::db::Planned> {
        std::iter::once(&self.initial_database)
            .chain(&self.database_list)
            .map(|db| crate::db::Planned {
                role: "master",
                conninfo: self.conninfo(db),
                user: None,
            })
            .collect()
    }

    pub fn conninfo(&self, dbname: &str) -> String {
        let db = dbname.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{} dbname='{db}'", self.base_connstr)
            .trim()
            .to_string()
    }
}

/// Errors that end the ticker.
#[derive(Debug, Error)]
pub enum TickerError {
    #[error("{0}")]
    Config(#[from] ConfigError),
}

struct Worker {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Runs until a stop request; `path` is re-read on reload.
pub async fn run(
    path: Option<PathBuf>,
    cfg: TickerConfig,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<(), TickerError> {
    let mut cfg = Arc::new(cfg);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut discovery = Outage::new("discovery", cfg.initial_database.clone());
    tracing::info!(databases = ?cfg.database_list, poll_ms = cfg.poll_period.as_millis() as u64, "Ticker started");
    loop {
        match discover(&cfg).await {
            Ok(dbs) => {
                discovery.recovered();
                reconcile(&mut workers, &dbs, &cfg);
            }
            Err(err) => {
                discovery.failed(&err);
            }
        }
        let wait = tokio::time::sleep(cfg.check_period);
        tokio::select! {
            _ = wait => {}
            msg = control.recv() => match msg {
                Some(Control::Reload) => {
                    let load = path.as_deref().map(|p| move || TickerConfig::load(p).map_err(|e| e.to_string()));
                    if let Some(new) = crate::service::reloaded("ticker", cfg.as_ref(), load.as_ref()) {
                        cfg = Arc::new(new);
                        stop_all(&mut workers, false).await;
                    }
                }
                Some(Control::Quit) => {
                    stop_all(&mut workers, true).await;
                    tracing::info!("Ticker quit");
                    return Ok(());
                }
                Some(Control::Stop) | None => {
                    stop_all(&mut workers, false).await;
                    tracing::info!("Ticker stopped");
                    return Ok(());
                }
            }
        }
    }
}

async fn discover(cfg: &TickerConfig) -> Result<Vec<String>, tokio_postgres::Error> {
    if !cfg.database_list.is_empty() {
        return Ok(cfg.database_list.clone());
    }
    let client =
        crate::db::connect_client_to("master", &cfg.conninfo(&cfg.initial_database)).await?;
    let rows = client
        .query(
            "select datname from pg_catalog.pg_database where datallowconn and not datistemplate order by 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn reconcile(workers: &mut HashMap<String, Worker>, dbs: &[String], cfg: &Arc<TickerConfig>) {
    workers.retain(|db, w| {
        let keep = dbs.contains(db) && !w.handle.is_finished();
        if !keep {
            let _ = w.stop.send(true);
        }
        keep
    });
    for db in dbs {
        if !workers.contains_key(db) {
            let (stop, stop_rx) = watch::channel(false);
            let handle = tokio::spawn(database::run(db.clone(), cfg.clone(), stop_rx));
            workers.insert(db.clone(), Worker { stop, handle });
        }
    }
}

async fn stop_all(workers: &mut HashMap<String, Worker>, abort: bool) {
    for (_, w) in workers.drain() {
        let _ = w.stop.send(true);
        if abort {
            w.handle.abort();
        }
        let _ = w.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_from(text: &str) -> TickerFile {
        ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn conninfo_appends_a_quoted_dbname() {
        let mut cfg = toml_from("[ticker]\n").ticker;
        cfg.base_connstr = "host=/tmp port=5432".into();
        assert_eq!(cfg.conninfo("it's"), "host=/tmp port=5432 dbname='it\\'s'");
    }

    #[test]
    fn defaults_are_pgqd_defaults_plus_fast_polling() {
        let cfg = toml_from("[ticker]\n").ticker;
        assert_eq!(cfg, TickerConfig::default());
        assert_eq!(cfg.check_period, Duration::from_secs(60));
        assert_eq!(cfg.maint_period, Duration::from_secs(120));
        assert_eq!(cfg.retry_period, Duration::from_secs(30));
        assert_eq!(cfg.ticker_period, Duration::from_secs(1));
        assert_eq!(cfg.poll_period, Duration::from_millis(10));
        assert_eq!(cfg.initial_database, "template1");
        assert_eq!(cfg.metrics_listen, None);
        assert!(cfg.check().is_ok());
    }
}
