//! `pgfan consume --print`: an example consumer that writes events as JSON lines.
//!
//! Handy for operators (what is in this queue?) and for tests of the framework. Output is
//! at-least-once: a batch interrupted after printing is printed again when redone.

use std::io::Write;

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Transaction;

use crate::consumer::{
    self, BatchHandler, BatchRef, ConsumerError, ConsumerOptions, HandlerError, RetryEvent,
};
use crate::pgq::Event;
use crate::signals::Control;

/// Prints every event to a writer, one JSON object per line.
pub struct PrintHandler<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> PrintHandler<W> {
    pub fn new(out: W) -> Self {
        PrintHandler { out }
    }
}

/// One event as a JSON object with PgQ's field names.
pub fn event_json(batch: BatchRef, e: &Event) -> serde_json::Value {
    json!({
        "batch_id": batch.batch_id,
        "ev_id": e.id,
        "ev_time": humantime::format_rfc3339_micros(e.time).to_string(),
        "ev_txid": e.txid,
        "ev_retry": e.retry,
        "ev_type": e.ev_type,
        "ev_data": e.data,
        "ev_extra1": e.extra[0],
        "ev_extra2": e.extra[1],
        "ev_extra3": e.extra[2],
        "ev_extra4": e.extra[3],
    })
}

impl<W: Write + Send> BatchHandler for PrintHandler<W> {
    async fn events<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        batch: BatchRef,
        events: &'a [Event],
    ) -> Result<Vec<RetryEvent>, HandlerError> {
        for e in events {
            writeln!(self.out, "{}", event_json(batch, e))
                .map_err(|err| HandlerError::Other(err.to_string()))?;
        }
        Ok(Vec::new())
    }

    async fn batch_end<'a>(
        &'a mut self,
        _tx: &'a Transaction<'_>,
        _batch: BatchRef,
    ) -> Result<(), HandlerError> {
        self.out
            .flush()
            .map_err(|err| HandlerError::Other(err.to_string()))
    }
}

/// Runs the print consumer until SIGTERM/SIGINT (stopping between batches).
pub async fn run(
    opts: ConsumerOptions,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<u64, ConsumerError> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        while let Some(msg) = control.recv().await {
            if matches!(msg, Control::Stop | Control::Quit) {
                let _ = stop_tx.send(true);
                if msg == Control::Quit {
                    std::process::exit(1);
                }
            }
        }
    });
    let mut handler = PrintHandler::new(std::io::BufWriter::new(std::io::stdout()));
    consumer::run(&opts, &mut handler, stop).await
}
