//! Typed calls of the PgQ SQL API.
//!
//! The daemons speak only this API (plus COPY into `pgq.current_event_table`), so they run
//! unchanged on pgfan's bundled core and on the real PgQ extension.

use std::time::SystemTime;

use bytes::Bytes;
use futures_util::SinkExt;
use thiserror::Error;
use tokio_postgres::{GenericClient, Row};

/// Errors of PgQ calls.
#[derive(Debug, Error)]
pub enum PgqError {
    #[error("{call}: {}", crate::db::describe(source))]
    Db {
        call: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgqError {
    /// The underlying database error, for reconnect/retry/fatal classification.
    pub fn db_error(&self) -> &tokio_postgres::Error {
        match self {
            PgqError::Db { source, .. } => source,
        }
    }
}

type Result<T> = std::result::Result<T, PgqError>;

fn ctx(call: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgqError {
    move |source| PgqError::Db { call, source }
}

/// One event as `get_batch_events` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub time: SystemTime,
    pub txid: Option<i64>,
    pub retry: Option<i32>,
    pub ev_type: Option<String>,
    pub data: Option<String>,
    pub extra: [Option<String>; 4],
}

impl Event {
    /// Reads the `ev_*` columns of a `get_batch_events` or `get_batch_cursor` row.
    pub fn from_row(row: &Row) -> Event {
        Event {
            id: row.get("ev_id"),
            time: row.get("ev_time"),
            txid: row.get("ev_txid"),
            retry: row.get("ev_retry"),
            ev_type: row.get("ev_type"),
            data: row.get("ev_data"),
            extra: [
                row.get("ev_extra1"),
                row.get("ev_extra2"),
                row.get("ev_extra3"),
                row.get("ev_extra4"),
            ],
        }
    }
}

/// An open batch: its id and the two ticks that bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub id: i64,
    pub cur_tick_id: i64,
    pub prev_tick_id: i64,
}

/// `pgq.create_queue`: true when created, false when it already existed.
pub async fn create_queue(c: &impl GenericClient, queue: &str) -> Result<bool> {
    let row = c
        .query_one("select pgq.create_queue($1)", &[&queue])
        .await
        .map_err(ctx("create_queue"))?;
    Ok(row.get::<_, i32>(0) == 1)
}

/// `pgq.set_queue_config`.
pub async fn set_queue_config(
    c: &impl GenericClient,
    queue: &str,
    param: &str,
    value: &str,
) -> Result<()> {
    c.query_one(
        "select pgq.set_queue_config($1, $2, $3)",
        &[&queue, &param, &value],
    )
    .await
    .map_err(ctx("set_queue_config"))?;
    Ok(())
}

/// `pgq.register_consumer`: true when newly registered.
pub async fn register_consumer(
    c: &impl GenericClient,
    queue: &str,
    consumer: &str,
) -> Result<bool> {
    let row = c
        .query_one("select pgq.register_consumer($1, $2)", &[&queue, &consumer])
        .await
        .map_err(ctx("register_consumer"))?;
    Ok(row.get::<_, i32>(0) == 1)
}

/// `pgq.insert_event` (3-argument form): the new event id.
pub async fn insert_event(
    c: &impl GenericClient,
    queue: &str,
    ev_type: &str,
    data: &str,
) -> Result<i64> {
    let row = c
        .query_one(
            "select pgq.insert_event($1, $2, $3)",
            &[&queue, &ev_type, &data],
        )
        .await
        .map_err(ctx("insert_event"))?;
    Ok(row.get(0))
}

/// Bulk-produces `(ev_type, ev_data)` pairs with COPY into the queue's current event table.
///
/// Must run inside a transaction: the table name is valid only until the queue rotates.
pub async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    queue: &str,
    events: impl IntoIterator<Item = (String, String)>,
) -> Result<u64> {
    let table: String = tx
        .query_one("select pgq.current_event_table($1)", &[&queue])
        .await
        .map_err(ctx("current_event_table"))?
        .get(0);
    // The table name comes from the queue core (schema-qualified, quoted where needed), not from event data.
    let sink = tx
        .copy_in(&format!(
            "copy {table} (ev_time, ev_type, ev_data) from stdin"
        ))
        .await
        .map_err(ctx("copy"))?;
    futures_util::pin_mut!(sink);
    let mut buf = String::new();
    for (ev_type, data) in events {
        buf.push_str("now\t");
        push_copy_text(&mut buf, &ev_type);
        buf.push('\t');
        push_copy_text(&mut buf, &data);
        buf.push('\n');
        if buf.len() > 1 << 16 {
            sink.send(Bytes::from(std::mem::take(&mut buf)))
                .await
                .map_err(ctx("copy"))?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await.map_err(ctx("copy"))?;
    }
    sink.finish().await.map_err(ctx("copy"))
}

/// Escapes a value for COPY's text format.
fn push_copy_text(buf: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

/// `pgq.ticker(queue)`: the new tick id, or None when the thresholds say not yet.
pub async fn ticker(c: &impl GenericClient, queue: &str) -> Result<Option<i64>> {
    let row = c
        .query_one("select pgq.ticker($1)", &[&queue])
        .await
        .map_err(ctx("ticker"))?;
    Ok(row.get(0))
}

/// `pgq.force_tick(queue)`: makes the next `ticker` call tick; returns the last tick id.
pub async fn force_tick(c: &impl GenericClient, queue: &str) -> Result<i64> {
    let row = c
        .query_one("select pgq.force_tick($1)", &[&queue])
        .await
        .map_err(ctx("force_tick"))?;
    Ok(row.get(0))
}

/// `pgq.next_batch_info`: the open (or a newly opened) batch, None when there is nothing new.
pub async fn next_batch(
    c: &impl GenericClient,
    queue: &str,
    consumer: &str,
) -> Result<Option<Batch>> {
    let row = c
        .query_one(
            "select batch_id, cur_tick_id, prev_tick_id from pgq.next_batch_info($1, $2)",
            &[&queue, &consumer],
        )
        .await
        .map_err(ctx("next_batch_info"))?;
    Ok(row.get::<_, Option<i64>>(0).map(|id| Batch {
        id,
        cur_tick_id: row.get(1),
        prev_tick_id: row.get(2),
    }))
}

/// `pgq.get_batch_events`: every event of the batch, in ev_id order.
pub async fn batch_events(c: &impl GenericClient, batch_id: i64) -> Result<Vec<Event>> {
    let rows = c
        .query("select * from pgq.get_batch_events($1)", &[&batch_id])
        .await
        .map_err(ctx("get_batch_events"))?;
    Ok(rows.iter().map(Event::from_row).collect())
}

/// `pgq.finish_batch`: true when the batch was open.
pub async fn finish_batch(c: &impl GenericClient, batch_id: i64) -> Result<bool> {
    let row = c
        .query_one("select pgq.finish_batch($1)", &[&batch_id])
        .await
        .map_err(ctx("finish_batch"))?;
    Ok(row.get::<_, i32>(0) == 1)
}

#[cfg(test)]
mod tests {
    use super::push_copy_text;

    #[test]
    fn copy_text_escapes_control_characters() {
        let mut s = String::new();
        push_copy_text(&mut s, "a\tb\\c\nd\re");
        assert_eq!(s, "a\\tb\\\\c\\nd\\re");
    }
}
