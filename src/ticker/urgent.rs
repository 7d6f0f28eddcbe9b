//! Queues that need a tick although PgQ's rules would say "idle".
//!
//! A producer's events count as new when its INSERT advances the event sequence, not when
//! its transaction commits. A tick taken in between leaves them out (they are invisible in
//! its snapshot) but counts them, so the next `pgq.ticker()` sees no new events and applies
//! the idle back-off (up to twice the previous gap): the events wait for that. Two things
//! end the wait early:
//! - on the bundled core, every insert into a low-latency queue (`ticker_max_lag` 0, which
//!   pgfan's own queues have) sends `NOTIFY pgfan_ticker_wake, '<queue>'` from
//!   `pgq.insert_event_raw`, and pgfan's own producers (`pgfan.enqueue`) send it whatever the
//!   queue; it is delivered at the commit, so the ticker hears of the commit the moment it
//!   happens, and ticks the queue first thing, before its poll;
//! - for other producers (the PgQ extension's C insert, COPY into `current_event_table`),
//!   the ticker looks, on active queues (see ticking.rs), for events written by
//!   transactions that were still open at the queue's last tick and have ended since.
//!
//! Either way the queue is ticked now, with `pgq.force_tick` when `pgq.ticker` declines.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client};

/// Channel on which commits that queued events announce their queue.
pub const WAKE_CHANNEL: &str = "pgfan_ticker_wake";

/// For each given queue: its last tick, its parent event table, and the transactions that
/// were in progress at that tick and have ended since.
const ENDED_SQL: &str = "
    select q.queue_name, t.tick_id, q.queue_data_pfx, x.ended
      from pgq.queue q
     cross join lateral (
            select tick_id, tick_snapshot from pgq.tick
             where tick_queue = q.queue_id
             order by tick_queue desc, tick_id desc limit 1) t
     cross join lateral (
            select array_agg(xid) as ended
              from pg_catalog.txid_snapshot_xip(t.tick_snapshot) xid
             where pg_catalog.txid_visible_in_snapshot(xid, pg_catalog.txid_current_snapshot())) x
     where q.queue_name = any($1) and x.ended is not null";

/// Remembers what was already looked at, so a tick whose ended transactions wrote nothing
/// to the queue is not searched again at every poll.
#[derive(Default)]
pub struct Missed {
    checked: HashMap<String, (i64, usize)>,
}

impl Missed {
    /// Which of `active` have events of transactions that were open at their last tick.
    pub async fn find(
        &mut self,
        client: &Client,
        active: &[String],
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        if active.is_empty() {
            return Ok(Vec::new());
        }
        self.checked.retain(|q, _| active.contains(q));
        let mut found = Vec::new();
        for row in client.query(ENDED_SQL, &[&active]).await? {
            let (queue, tick_id, pfx, ended): (String, i64, String, Vec<i64>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let key = (tick_id, ended.len());
            if self.checked.get(&queue) == Some(&key) {
                continue;
            }
            let sql = format!(
                "select exists (select 1 from {} where ev_txid = any($1))",
                quote_qualified(&pfx)
            );
            let wrote: bool = client.query_one(&sql, &[&ended]).await?.get(0);
            if wrote {
                self.checked.remove(&queue);
                found.push(queue);
            } else {
                self.checked.insert(queue, key);
            }
        }
        Ok(found)
    }
}

/// `schema.table` with each part quoted as an identifier.
fn quote_qualified(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Sleeps for `period`, returning early when a wake-up arrives (its queues are added to
/// `woken`, with any others already waiting) or a stop is requested; true on stop.
pub async fn wait(
    period: Duration,
    messages: &mut mpsc::UnboundedReceiver<AsyncMessage>,
    stop: &mut watch::Receiver<bool>,
    woken: &mut HashSet<String>,
) -> bool {
    if *stop.borrow() {
        return true;
    }
    let deadline = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return *stop.borrow(),
            r = stop.changed() => if r.is_err() || *stop.borrow() { return true },
            msg = messages.recv() => match msg {
                Some(AsyncMessage::Notification(n)) if n.channel() == WAKE_CHANNEL => {
                    woken.insert(n.payload().to_string());
                    while let Ok(more) = messages.try_recv() {
                        if let AsyncMessage::Notification(n) = more {
                            woken.insert(n.payload().to_string());
                        }
                    }
                    return false;
                }
                Some(_) => {}
                // The connection ended; the next query reports it and the session reconnects.
                None => return false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote_qualified;

    #[test]
    fn qualified_names_are_quoted_per_part() {
        assert_eq!(quote_qualified("pgq.event_5"), "\"pgq\".\"event_5\"");
        assert_eq!(quote_qualified("a\"b.c"), "\"a\"\"b\".\"c\"");
    }
}
