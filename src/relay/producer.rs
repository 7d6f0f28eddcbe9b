//! Routing a producer database's push queue into the master, exactly once.
//!
//! The batch is consumed on the producer database, but its jobs are written on the
//! master, so the two commits are separate. As python-pgq's RemoteConsumer does, the
//! master transaction records the batch in the pgq_ext ledger (`is_batch_done` /
//! `set_batch_done`, keyed by `<consumer>@<producer>`) together with the routed jobs; if
//! the relay dies after that commit but before `finish_batch` on the producer, PgQ hands
//! out the same batch id again and the ledger says it was routed already.

use tokio_postgres::Client;

use super::Relay;
use crate::consumer::HandlerError;
use crate::ledger;
use crate::pgq::Event;

/// The master side of a producer database's consumer.
pub(super) struct Remote {
    master: String,
    ledger: String,
    client: Option<Client>,
    /// The current batch's events; the consumer reads a producer batch in one piece
    /// (`lazy_fetch = 0`), so each attempt of a batch replaces them.
    pending: Vec<Event>,
}

impl Remote {
    pub(super) fn new(master: &str, ledger: String) -> Remote {
        Remote {
            master: master.to_string(),
            ledger,
            client: None,
            pending: Vec::new(),
        }
    }

    pub(super) fn buffer(&mut self, events: &[Event]) {
        self.pending = events.to_vec();
    }

    /// Routes the buffered batch on the master unless the ledger has it already.
    pub(super) async fn route_batch(
        &mut self,
        relay: &Relay,
        batch_id: i64,
    ) -> Result<(), HandlerError> {
        let events = std::mem::take(&mut self.pending);
        let routed = self.try_route(relay, batch_id, &events).await;
        if routed.is_err() {
            // The master session may be broken; open a new one for the redo.
            self.client = None;
        }
        routed
    }

    async fn try_route(
        &mut self,
        relay: &Relay,
        batch_id: i64,
        events: &[Event],
    ) -> Result<(), HandlerError> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self
                .client
                .insert(crate::db::connect_client_to("master", &self.master).await?),
        };
        let tx = client.transaction().await?;
        if ledger::batch_done(&tx, &self.ledger, batch_id).await? {
            tracing::info!(ledger = %self.ledger, batch_id, "Batch was routed before; finishing it");
            tx.commit().await?;
            return Ok(());
        }
        relay.route_all(&tx, events).await?;
        ledger::mark_batch_done(&tx, &self.ledger, batch_id).await?;
        tx.commit().await?;
        Ok(())
    }
}
