//! The pgq_ext ledger: exactly-once for work a consumer applies to another database.
//!
//! In the remote transaction: skip the batch if [`batch_done`] says so, apply the work, call
//! [`mark_batch_done`], commit; only then `finish_batch` on the queue database. After a crash
//! between the two commits PgQ hands out the same batch id again, the ledger says done, and
//! the work is not applied twice.

use tokio_postgres::GenericClient;

/// Whether `consumer` already applied `batch_id` in this database.
pub async fn batch_done(
    c: &impl GenericClient,
    consumer: &str,
    batch_id: i64,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "select pgq_ext.is_batch_done($1, $2)",
        &[&consumer, &batch_id],
    )
    .await?
    .get(0))
}

/// Records that `consumer` applied `batch_id`; false if it was already recorded.
pub async fn mark_batch_done(
    c: &impl GenericClient,
    consumer: &str,
    batch_id: i64,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "select pgq_ext.set_batch_done($1, $2)",
        &[&consumer, &batch_id],
    )
    .await?
    .get(0))
}
