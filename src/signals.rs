//! OS signals as one stream of control messages for a daemon's main loop.
//!
//! SIGTERM/SIGINT ask for a drain (finish the current unit, then exit 0); a second one asks
//! to quit at once; SIGHUP asks to reload the configuration. Daemons take the receiver as an
//! argument so tests can drive them without real signals.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop at the next safe point and exit cleanly.
    Stop,
    /// Stop now, without waiting for the current unit of work.
    Quit,
    /// Re-read and validate the configuration; keep the old one if the new one is bad.
    Reload,
}

/// Installs the signal handlers and returns the control stream.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<Control>> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                let msg = match sig {
                    SIGHUP => Control::Reload,
                    _ if stopping => Control::Quit,
                    _ => {
                        stopping = true;
                        Control::Stop
                    }
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
