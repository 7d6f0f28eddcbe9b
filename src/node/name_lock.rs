//! One daemon per node name: a session advisory lock on the node database.
//!
//! Two daemons running one node would both claim its queue and both run tasks (the claim
//! ledger keeps each task once, but the work splits silently between them). So the daemon
//! holds a session lock keyed by the node name for as long as it runs. A second daemon
//! started with the same name waits as a standby, says once who holds the name, and takes
//! over when the first one ends. The lock lives on the node database because that is what
//! the daemon's tasks change; it costs one node session and nothing on the master.
//!
//! If the lock's session is lost (the node's server restarted), the daemon takes the lock
//! again on its new session; should another daemon have taken it meanwhile, this one stops.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client};

use super::NodeConfig;
use crate::outage::Outage;
use crate::signals::Control;

/// First key of the two-key advisory lock: pgfan's node names (the second is the name's hash).
const LOCK_CLASS: i32 = 0x7067_666e; // "pgfn"

/// How often a standby looks whether the name became free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The held name: the session the lock lives on.
pub struct NameLock {
    client: Client,
    messages: mpsc::UnboundedReceiver<AsyncMessage>,
}

/// Who holds a name, as `pg_stat_activity` tells it.
async fn holder(c: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "select format('pid %s (%s) from %s since %s', a.pid, a.application_name,
                           coalesce(host(a.client_addr), 'a local socket'),
                           date_trunc('second', a.backend_start))
               from pg_catalog.pg_locks l join pg_catalog.pg_stat_activity a using (pid)
              where l.locktype = 'advisory' and l.granted and l.objsubid = 2
                and l.classid::int8 = $1::int8
                and l.objid::int8 = (pg_catalog.hashtext($2)::int8 & 4294967295)",
            &[&i64::from(LOCK_CLASS), &name],
        )
        .await?;
    Ok(row.map_or_else(|| "another session".to_string(), |r| r.get(0)))
}

async fn try_lock(c: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "select pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))",
        &[&LOCK_CLASS, &name],
    )
    .await?
    .get(0))
}

/// Takes the node's name, waiting as a standby while another daemon holds it; None when
/// told to stop while waiting.
pub async fn take(
    cfg: &NodeConfig,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Option<NameLock> {
    let mut outage = Outage::new("node name lock", cfg.name.clone());
    let mut said = false;
    loop {
        let pause = match attempt(cfg).await {
            Ok(Ok(lock)) => {
                outage.recovered();
                if said {
                    tracing::info!(node = %cfg.name, "The node's name is free: this daemon takes over");
                }
                return Some(lock);
            }
            Ok(Err(who)) => {
                if !said {
                    tracing::warn!(node = %cfg.name, holder = %who, "Another daemon runs this node; waiting as a standby until it ends");
                    said = true;
                }
                STANDBY_POLL
            }
            Err(err) => outage.failed(&err),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            msg = control.recv() => match msg {
                Some(Control::Reload) => {}
                _ => return None,
            },
        }
    }
}

/// One try: the lock, or who holds it.
async fn attempt(cfg: &NodeConfig) -> Result<Result<NameLock, String>, tokio_postgres::Error> {
    let session = crate::db::connect_to("node", &cfg.db).await?;
    if try_lock(&session.client, &cfg.name).await? {
        return Ok(Ok(NameLock {
            client: session.client,
            messages: session.messages,
        }));
    }
    Ok(Err(holder(&session.client, &cfg.name).await?))
}

impl NameLock {
    /// Keeps the name: resolves only when it went to another daemon (Err says which), after
    /// its session was lost and could not take the lock again.
    pub async fn keep(mut self, cfg: watch::Receiver<std::sync::Arc<NodeConfig>>) -> String {
        loop {
            // The session's messages end when its connection does.
            while self.messages.recv().await.is_some() {}
            drop(self.client);
            let cfg = cfg.borrow().clone();
            tracing::warn!(node = %cfg.name, "The session holding the node's name was lost; taking the name again");
            let mut outage = Outage::new("node name lock", cfg.name.clone());
            self = loop {
                match attempt(&cfg).await {
                    Ok(Ok(lock)) => break lock,
                    Ok(Err(who)) => {
                        return format!(
                            "node {} is now run by another daemon ({who}); this one stops",
                            cfg.name
                        )
                    }
                    Err(err) => tokio::time::sleep(outage.failed(&err)).await,
                }
            };
            outage.recovered();
        }
    }
}
