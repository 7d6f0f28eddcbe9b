//! A consumer run as a daemon: control messages become stops and reloads.
//!
//! Stop lets the consumer finish its current batch (the framework stops only between
//! batches) and returns; Quit returns at once, abandoning an open batch (PgQ hands it out
//! again); Reload re-reads the configuration with `load` and, if it is valid and
//! different, restarts the consumer with it at the next batch boundary. A bad file keeps
//! the running configuration and is logged as an ERROR.

use std::fmt::Debug;
use std::future::Future;

use futures_util::future::try_join_all;
use tokio::sync::{mpsc, watch};

use crate::consumer::{self, BatchHandler, ConsumerError, ConsumerOptions};
use crate::signals::Control;

/// A daemon configuration's cap on draining at a stop.
pub trait StopCap {
    fn stop_timeout(&self) -> std::time::Duration;
}

/// What the daemon is told to do after its consumer returned.
enum Next<C> {
    Exit,
    Restart(C),
}

/// Runs the consumers built from `cfg` until Stop/Quit. `load` re-reads the configuration
/// on Reload (None when the daemon was started without a file); `build` makes the consumer
/// options and handler of each consumer of a configuration. A fatal error of any consumer
/// ends them all.
pub async fn run<C, H, L, B>(
    name: &'static str,
    mut cfg: C,
    load: Option<L>,
    build: B,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<(), ConsumerError>
where
    C: Clone + PartialEq + Debug + Send + StopCap,
    H: BatchHandler,
    L: Fn() -> Result<C, String>,
    B: Fn(&C) -> Vec<(ConsumerOptions, H)>,
{
    tracing::info!(daemon = name, "Started");
    loop {
        let (stop_tx, stop) = watch::channel(false);
        let work = try_join_all(build(&cfg).into_iter().map(|(opts, mut handler)| {
            let stop = stop.clone();
            async move { consumer::run(&opts, &mut handler, stop).await }
        }));
        match supervise(name, work, &stop_tx, &mut control, &cfg, load.as_ref()).await? {
            Next::Exit => break,
            Next::Restart(new) => cfg = new,
        }
    }
    tracing::info!(daemon = name, "Stopped");
    Ok(())
}

async fn supervise<C, L>(
    name: &'static str,
    work: impl Future<Output = Result<Vec<u64>, ConsumerError>>,
    stop_tx: &watch::Sender<bool>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    cfg: &C,
    load: Option<&L>,
) -> Result<Next<C>, ConsumerError>
where
    C: PartialEq + Debug + StopCap,
    L: Fn() -> Result<C, String>,
{
    tokio::pin!(work);
    let mut next = None;
    let mut listening = true;
    // Set when a stop was asked for: past it the open batch is abandoned (rolled back with
    // the connection; PgQ hands it out again), so a stuck batch cannot block a shutdown.
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365);
    let mut cap = far;
    loop {
        tokio::select! {
            done = &mut work => {
                done?;
                return Ok(next.unwrap_or(Next::Exit));
            }
            _ = tokio::time::sleep_until(cap), if cap < far => {
                tracing::warn!(daemon = name, "The current batch did not finish within stop_timeout; it is redone after the restart");
                return Ok(Next::Exit);
            }
            msg = control.recv(), if listening => match msg {
                Some(Control::Reload) => {
                    if let Some(new) = reloaded(name, cfg, load) {
                        next = Some(Next::Restart(new));
                        let _ = stop_tx.send(true);
                    }
                }
                Some(Control::Quit) => {
                    tracing::info!(daemon = name, "Quit");
                    return Ok(Next::Exit);
                }
                Some(Control::Stop) | None => {
                    listening = msg.is_some();
                    tracing::info!(daemon = name, "Stopping after the current batch");
                    next = Some(Next::Exit);
                    cap = tokio::time::Instant::now() + cfg.stop_timeout();
                    let _ = stop_tx.send(true);
                }
            }
        }
    }
}

/// The configuration `load` gives on a reload, if it is valid and differs from `cfg`; a bad
/// one is logged at ERROR and the running one kept.
pub(crate) fn reloaded<C, L>(name: &'static str, cfg: &C, load: Option<&L>) -> Option<C>
where
    C: PartialEq + Debug,
    L: Fn() -> Result<C, String>,
{
    let Some(load) = load else {
        tracing::warn!(
            daemon = name,
            "Reload requested, but there is no configuration file"
        );
        return None;
    };
    match load() {
        Ok(new) if new == *cfg => {
            tracing::info!(daemon = name, "Configuration unchanged");
            None
        }
        Ok(new) => {
            tracing::info!(daemon = name, "Configuration reloaded");
            Some(new)
        }
        Err(error) => {
            tracing::error!(
                daemon = name,
                error,
                "Configuration reload failed; keeping the running configuration"
            );
            None
        }
    }
}
