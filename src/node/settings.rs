//! Configuration of `pgfan node`: section `[node]` of a TOML or INI file.
//!
//! Environment variables override the file: `PGFAN_NODE__WORKERS=8`. Other sections of the
//! file (e.g. `[ticker]`) are ignored, so one file can configure several daemons; unknown
//! keys inside `[node]` are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, ConfigError};

/// A node's key for the master's doors; never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct PoolKey(String);

impl PoolKey {
    pub fn new(key: impl Into<String>) -> PoolKey {
        PoolKey(key.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolKey(..)")
    }
}

/// Settings of one node daemon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name as registered on the master with `pgfan.node_add(name)`. Required.
    pub name: String,
    /// libpq connection string of the master database. Default: libpq's defaults.
    #[serde(default)]
    pub master: String,
    /// libpq connection string of this node's database. Default: libpq's defaults.
    #[serde(default)]
    pub db: String,
    /// Connections to the node database that execute tasks in parallel. Default 4.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Whether `sql` tasks (raw SQL) are accepted. Default true.
    #[serde(default = "default_true")]
    pub allow_sql: bool,
    /// Functions `call` tasks may call, by name as the task writes it. Default: none.
    #[serde(default, deserialize_with = "config::list")]
    pub allow_call: Vec<String>,
    /// Tables `copy` tasks may change; the first is used when a task names none. Default: none.
    #[serde(default, deserialize_with = "config::list")]
    pub copy_tables: Vec<String>,
    /// Key column of copy updates and deletes. Default: the table's primary key.
    #[serde(default)]
    pub copy_key: Option<String>,
    /// Login the task connections use (with `db`'s other settings; its password from the
    /// passfile), so task SQL has only that login's rights for its whole run. It must not
    /// be a superuser or a member of the owner of `pgfan_node` (the daemon refuses to run
    /// tasks otherwise). Default: none (tasks run as the daemon's login: trusted SQL only).
    #[serde(default)]
    pub task_role: Option<String>,
    /// Polling fallback on the node for new tasks, cancellations and results to ship (a
    /// look at the master only when the node has open tasks). Default 1 s.
    #[serde(default = "default_poll_period", deserialize_with = "config::duration")]
    pub poll_period: Duration,
    /// How often the claim looks for a batch of its queue when no tick notification has
    /// come. pgfan's ticker announces every tick over new events; what a look without one
    /// finds is the queue's idle ticks (taken as one batch), so an idle node costs the
    /// master one transaction a period. Pooled (no notifications), this is the latency of
    /// new work: set it (e.g. 20s). Under pgqd, which does not notify, set it to about a
    /// second. Default 10 min.
    #[serde(
        default = "default_claim_poll_period",
        deserialize_with = "config::duration"
    )]
    pub claim_poll_period: Duration,
    /// The master is reached through a pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`): no LISTEN (the claim looks for batches every
    /// `claim_poll_period`, so set it to the latency you accept, e.g. 20s) and no
    /// statement that outlives its transaction. The claim's look also refreshes the
    /// node's heartbeat, so it is the one transaction an idle node costs. Default false.
    #[serde(default)]
    pub pooled: bool,
    /// The node's key on the master (`pgfan.node_set_pool_key`), sent with every master
    /// transaction: behind PgBouncer the daemons of a fleet share one server login (one
    /// pool), and the key is what lets this daemon act as its node and as no other. At
    /// least 32 characters; keep the file readable by the daemon only. Default: none (the
    /// login decides, `pgfan.node_set_login`).
    #[serde(default)]
    pub pool_key: Option<PoolKey>,
    /// How often the node writes its heartbeat (workers, version) on the master. Its
    /// liveness is its master session (pgfan.connected_nodes), so this can be rare: an
    /// idle node costs the master one write a period (and the claim's looks refresh it).
    /// Pooled, with `claim_poll_period` no longer than this, the looks are its heartbeat:
    /// it beats at start and when `workers` changes only. Default 15 min (an idle fleet of
    /// 1,000 direct nodes then writes about one heartbeat a second).
    #[serde(
        default = "default_heartbeat_period",
        deserialize_with = "config::duration"
    )]
    pub heartbeat_period: Duration,
    /// On stop, how long running tasks may finish before they are cancelled. Default 30 s.
    #[serde(
        default = "default_stop_timeout",
        deserialize_with = "config::duration"
    )]
    pub stop_timeout: Duration,
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
}

fn default_true() -> bool {
    true
}
fn default_workers() -> usize {
    4
}
fn default_poll_period() -> Duration {
    Duration::from_secs(1)
}
fn default_claim_poll_period() -> Duration {
    Duration::from_secs(600)
}
fn default_heartbeat_period() -> Duration {
    Duration::from_secs(900)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
struct NodeFile {
    node: NodeConfig,
}

impl NodeConfig {
    /// What `--check-config --connect` opens: the master, the node database, and the node
    /// database as the task login when one is set.
    pub fn connections(&self) -> Vec<crate::db::Planned> {
        let planned = |role, conninfo: &str, user: Option<&String>| crate::db::Planned {
            role,
            conninfo: conninfo.to_string(),
            user: user.cloned(),
        };
        let mut list = vec![
            planned("master", &self.master, None),
            planned("node", &self.db, None),
        ];
        if self.task_role.is_some() {
            list.push(planned("node", &self.db, self.task_role.as_ref()));
        }
        list
    }

    /// A configuration with every default for node `name`.
    pub fn new(name: impl Into<String>, master: &str, db: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            master: master.into(),
            db: db.into(),
            workers: default_workers(),
            allow_sql: true,
            allow_call: Vec::new(),
            copy_tables: Vec::new(),
            copy_key: None,
            task_role: None,
            poll_period: default_poll_period(),
            claim_poll_period: default_claim_poll_period(),
            pooled: false,
            pool_key: None,
            heartbeat_period: default_heartbeat_period(),
            stop_timeout: default_stop_timeout(),
            metrics_listen: None,
            logfile: None,
            pidfile: None,
        }
    }

    /// Reads and checks a TOML or INI file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        config::checked(
            path,
            config::load::<NodeFile>(path, "node")?.node,
            NodeConfig::check,
        )
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(format!(
                "name {:?} must be 1-48 characters of a-z, 0-9 and _",
                self.name
            ));
        }
        if let Some(role) = &self.task_role {
            // PostgreSQL's identifier limit; the name is always quoted as an identifier.
            if role.is_empty() || role.len() > 63 || role.contains('\0') {
                return Err(format!(
                    "task_role {role:?} must be a role name of 1-63 bytes"
                ));
            }
        }
        if self
            .pool_key
            .as_ref()
            .is_some_and(|k| k.expose().len() < 32)
        {
            return Err("pool_key must have at least 32 characters".into());
        }
        if self.workers == 0 || self.workers > 1000 {
            return Err("workers must be between 1 and 1000".into());
        }
        for (key, d) in [
            ("poll_period", self.poll_period),
            ("claim_poll_period", self.claim_poll_period),
            ("heartbeat_period", self.heartbeat_period),
        ] {
            if d.is_zero() {
                return Err(format!("{key} must be greater than zero"));
            }
        }
        crate::metrics::listen_addr(self.metrics_listen.as_deref())?;
        Ok(())
    }

    /// The node's pull queue on the master, which is also its consumer name there.
    pub fn queue(&self) -> String {
        format!("pgfan_node_{}", self.name)
    }

    /// Keys that only take effect after a restart, with whether they differ from `other`.
    pub fn restart_keys_changed(&self, other: &NodeConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for (key, differs) in [
            ("name", self.name != other.name),
            ("master", self.master != other.master),
            ("db", self.db != other.db),
            ("logfile", self.logfile != other.logfile),
            ("pidfile", self.pidfile != other.pidfile),
            (
                "metrics_listen",
                self.metrics_listen != other.metrics_listen,
            ),
        ] {
            if differs {
                changed.push(key);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: ::config::FileFormat) -> Result<NodeConfig, String> {
        ::config::Config::builder()
            .add_source(::config::File::from_str(text, format))
            .build()
            .and_then(|c| c.try_deserialize::<NodeFile>())
            .map(|f| f.node)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse("[node]\nname = \"n1\"\n", ::config::FileFormat::Toml).unwrap();
        assert_eq!(cfg, NodeConfig::new("n1", "", ""));
        assert_eq!(cfg.workers, 4);
        assert!(cfg.allow_sql);
        assert_eq!(cfg.poll_period, Duration::from_secs(1));
        assert_eq!(cfg.claim_poll_period, Duration::from_secs(600));
        assert_eq!(cfg.heartbeat_period, Duration::from_secs(900));
        assert_eq!(cfg.stop_timeout, Duration::from_secs(30));
        assert_eq!(cfg.queue(), "pgfan_node_n1");
        assert!(cfg.check().is_ok());
    }

    #[test]
    fn ini_lists_and_booleans() {
        let cfg = parse(
            "[node]\nname = n2\nallow_sql = false\nallow_call = f, public.g\nworkers = 2\n",
            ::config::FileFormat::Ini,
        )
        .unwrap();
        assert!(!cfg.allow_sql);
        assert_eq!(
            cfg.allow_call,
            vec!["f".to_string(), "public.g".to_string()]
        );
        assert_eq!(cfg.workers, 2);
    }

    #[test]
    fn environment_overrides_the_file_and_other_pgfan_variables_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[node]\nname = \"n\"\nworkers = 2\n").unwrap();
        std::env::set_var("PGFAN_NODE__WORKERS", "7");
        std::env::set_var("PGFAN_LOG", "debug");
        let cfg = NodeConfig::load(&path);
        std::env::remove_var("PGFAN_NODE__WORKERS");
        std::env::remove_var("PGFAN_LOG");
        assert_eq!(cfg.unwrap().workers, 7);
    }

    #[test]
    fn bad_values_are_rejected() {
        let err = parse(
            "[node]\nname = \"n\"\nworkerz = 3\n",
            ::config::FileFormat::Toml,
        );
        assert!(err.unwrap_err().contains("workerz"));
        let mut cfg = NodeConfig::new("Bad-Name", "", "");
        assert!(cfg.check().is_err());
        cfg.name = "ok".into();
        cfg.workers = 0;
        assert!(cfg.check().is_err());
        cfg.workers = 4;
        cfg.task_role = Some(String::new());
        assert!(cfg.check().is_err());
        // Any name PostgreSQL can hold is fine: it is bound as a parameter, never spliced.
        cfg.task_role = Some("Task \"role\"; drop table x".into());
        assert!(cfg.check().is_ok());
    }
}
